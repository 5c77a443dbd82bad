"""Address validation and normalisation: pure functions, no DNS, no I/O.

Two forms of an address matter:

* the *delivery form*, what we encrypt and send to: the local part as the subscriber typed it
  (Unicode NFC), the domain lower-cased and IDNA-encoded (``xn--``), since a relay without
  SMTPUTF8 can still route to an ASCII domain;
* the *index form*, what the blind index hashes: the delivery form, plus provider-specific
  folding only when the config asks for it (``normalise_gmail_dots``: Gmail ignores dots and
  ``+tags``; ``case_insensitive_domains``: providers such as QQ, 163 and 126 deliver
  ``Li.Wei@`` and ``li.wei@`` to one mailbox). Mail providers treat the domain
  case-insensitively (RFC 5321 §2.4); the local part belongs to the receiving server, so by
  default we leave it alone.

The folding rules decide every blind index, so they are recorded with the list and a change
needs ``newsletter subscribers reindex`` (``subscribers.reindex``).

Most real addresses are plain ASCII; they take a fast path that is provably a subset of what
email-validator accepts (the tests check this with hypothesis), and everything else goes
through email-validator itself.
"""

from __future__ import annotations

import re
import unicodedata

import email_validator
import idna

__all__ = [
    "GMAIL_DOMAINS",
    "InvalidAddress",
    "ascii_domain",
    "delivery_form",
    "domain_of",
    "fold",
    "index_form",
    "validate",
]

GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})

# A dot-atom local part of the common characters and an ASCII host name with a letter TLD.
# Lengths are checked separately (local <= 64, total <= 254, labels <= 63).
_FAST = re.compile(
    r"([A-Za-z0-9_%+\-]+(?:\.[A-Za-z0-9_%+\-]+)*)"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,63}))"
)
_SPECIAL = frozenset(getattr(email_validator, "SPECIAL_USE_DOMAIN_NAMES", ()))


class InvalidAddress(ValueError):
    """Not a deliverable-looking address. The message never repeats the address."""


def ascii_domain(domain: str) -> str:
    """Lower-case and IDNA-encode a domain: ``Bücher.DE`` -> ``xn--bcher-kva.de``."""
    domain = domain.strip().rstrip(".")
    if domain.isascii():
        return domain.lower()
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise InvalidAddress("the domain is not a valid internationalised domain name") from None


def _split(address: str) -> tuple[str, str]:
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise InvalidAddress("an address needs a local part, '@' and a domain")
    return local, domain


def delivery_form(address: str) -> str:
    """NFC, domain lower-cased and IDNA-encoded; the local part as given."""
    local, domain = _split(unicodedata.normalize("NFC", address.strip()))
    return f"{local}@{ascii_domain(domain)}"


def index_form(address: str, *, gmail_dots: bool = False,
               fold_case: frozenset[str] = frozenset()) -> str:
    """What the blind index hashes: the delivery form, folded further only if configured.

    ``fold_case`` holds ASCII domains (as ``ascii_domain`` gives them) whose local parts are
    case-insensitive.
    """
    return fold(delivery_form(address), gmail_dots=gmail_dots, fold_case=fold_case)


def fold(delivery: str, *, gmail_dots: bool = False,
         fold_case: frozenset[str] = frozenset()) -> str:
    """``index_form`` of an address already in delivery form (what ``validate`` returns): the
    configured provider folding alone. The one place the folding rules are applied."""
    local, _, domain = delivery.rpartition("@")
    if gmail_dots and domain in GMAIL_DOMAINS:
        return f"{local.split('+', 1)[0].replace('.', '').lower()}@gmail.com"
    if domain in fold_case:
        return f"{local.lower()}@{domain}"
    return delivery


def domain_of(address: str) -> str:
    """The part after the last ``@`` (already ASCII in the delivery form)."""
    return address.rpartition("@")[2]


def _fast(address: str) -> str | None:
    """The delivery form of a plain ASCII address, or None to take the careful path."""
    if len(address) > 254:
        return None
    m = _FAST.fullmatch(address)
    if m is None or len(m[1]) > 64 or m[3].lower() in _SPECIAL:
        return None
    domain = m[2]
    return address if domain.islower() else f"{m[1]}@{domain.lower()}"


def _fast_ok(address: str) -> bool:
    return _fast(address) is not None


def validate(address: str) -> str:
    """Check ``address`` (syntax only, no DNS) and return its delivery form.

    Raises ``InvalidAddress`` with a message that does not contain the address, so it can be
    reported by line number without leaking it.
    """
    address = address.strip()
    fast = _fast(address)
    if fast is not None:
        return fast
    try:
        info = email_validator.validate_email(
            address, check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError:
        raise InvalidAddress("not a valid email address") from None
    local, _, _ = info.normalized.rpartition("@")
    if len(local.encode("utf-8")) > 64:  # RFC 5321 §4.5.3.1.1; relays refuse longer ones
        raise InvalidAddress("the part before '@' is longer than 64 octets")
    return f"{local}@{info.ascii_domain.lower()}"
