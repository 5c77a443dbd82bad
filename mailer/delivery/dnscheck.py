"""``newsletter dns check``: are the From domain's SPF, DKIM and DMARC records there and aligned?

Gmail, Yahoo (2024) and Outlook.com (May 2025) refuse bulk mail without them; QQ answers
``550 DMARC check failed``. ``names`` says what to ask, ``lookup`` asks DNS (dnspython), and
``assess`` is pure: records in, plain-language findings out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from mailer.delivery.dkim import DKIMKey

__all__ = ["Finding", "assess", "lookup", "names", "org_domain"]

# A name's TXT strings (joined per record), or the reason it could not be asked.
Answer = tuple[str, ...] | str


@dataclass(frozen=True)
class Finding:
    level: Literal["ok", "note", "problem"]
    text: str


def org_domain(domain: str) -> str:
    """The organisational domain for DMARC relaxed alignment (RFC 7489 §3.2), approximated
    as the last two labels: right for .org/.com/.net, not for public suffixes like .co.uk."""
    return ".".join(domain.lower().rstrip(".").split(".")[-2:])


def names(from_domain: str, keys: Sequence[DKIMKey]) -> list[str]:
    out = [from_domain, f"_dmarc.{from_domain}"]
    if org_domain(from_domain) != from_domain:
        out.append(f"_dmarc.{org_domain(from_domain)}")
    out += [k.record_name for k in keys]
    return out


def lookup(names: Sequence[str], nameserver: str | None = None, timeout: float = 5.0) -> dict[str, Answer]:
    """Ask DNS for each name's TXT records; ``nameserver`` is ``HOST[:PORT]`` (default: the
    system resolver)."""
    import dns.exception
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=nameserver is None)
    if nameserver is not None:
        host, _, port = nameserver.rpartition(":") if nameserver.count(":") == 1 else (nameserver, "", "53")
        resolver.nameservers = [host]
        resolver.port = int(port or 53)
    resolver.lifetime = timeout
    out: dict[str, Answer] = {}
    for name in names:
        try:
            answer = resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            out[name] = ()
        except dns.exception.Timeout:
            out[name] = "no answer from DNS in time"
        except dns.exception.DNSException as exc:
            out[name] = f"DNS error: {exc.__class__.__name__}"
        else:
            out[name] = tuple(b"".join(r.strings).decode("utf-8", "replace") for r in answer)
    return out


def _tags(record: str) -> dict[str, str]:
    out = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip().lower()] = "".join(value.split())
    return out


def _spf(domain: str, answer: Answer) -> list[Finding]:
    if isinstance(answer, str):
        return [Finding("problem", f"SPF: could not look up {domain}: {answer}")]
    spf = [r for r in answer if r.lower().startswith("v=spf1")]
    if not spf:
        return [Finding("problem", f"SPF: {domain} has no SPF record; publish a TXT record like "
                                   f"\"v=spf1 ip4:<your relay's address> -all\" (or your provider's include:)")]
    if len(spf) > 1:
        # RFC 7208 §4.5: more than one SPF record is a permanent error; receivers ignore both.
        return [Finding("problem", f"SPF: {domain} has {len(spf)} SPF records; receivers treat that as no "
                                   f"SPF at all (RFC 7208 §4.5); merge them into one")]
    terms = spf[0].split()
    if "+all" in terms or "all" in terms:
        return [Finding("problem", f"SPF: {domain}'s record ends in +all, which lets anyone send as you")]
    return [Finding("ok", f"SPF: {domain} has \"{spf[0]}\"")]


def _dkim(from_domain: str, keys: Sequence[DKIMKey], records: Mapping[str, Answer]) -> list[Finding]:
    if not keys:
        return [Finding("problem", "DKIM: no [dkim] section, so nothing is signed here; unless your relay "
                                   "signs for you, set [dkim] and run `newsletter dkim init`")]
    out = []
    for key in keys:
        answer = records.get(key.record_name, ())
        if isinstance(answer, str):
            out.append(Finding("problem", f"DKIM: could not look up {key.record_name}: {answer}"))
            continue
        published = [_tags(r) for r in answer if "p" in _tags(r)]
        if not published:
            out.append(Finding("problem", f"DKIM: nothing published at {key.record_name}; publish the record "
                                          f"`newsletter dkim init` prints"))
        elif not any(t["p"] == key.public_b64 for t in published):
            out.append(Finding("problem", f"DKIM: the key at {key.record_name} is not the one in key_file; "
                                          f"receivers will fail every signature (publish the record "
                                          f"`newsletter dkim init` prints)"))
        else:
            out.append(Finding("ok", f"DKIM: {key.record_name} publishes our {key.algorithm} key"))
        if org_domain(key.domain) != org_domain(from_domain):
            out.append(Finding("problem", f"DKIM: we sign as {key.domain} but mail is from {from_domain}; "
                                          f"DMARC needs the same organisational domain (set [dkim] domain)"))
    return out


def _dmarc(from_domain: str, keys: Sequence[DKIMKey], records: Mapping[str, Answer]) -> list[Finding]:
    for name in (f"_dmarc.{from_domain}", f"_dmarc.{org_domain(from_domain)}"):
        answer = records.get(name, ())
        if isinstance(answer, str):
            return [Finding("problem", f"DMARC: could not look up {name}: {answer}")]
        found = [r for r in answer if r.lower().startswith("v=dmarc1")]
        if found:
            break
    else:
        return [Finding("problem", f"DMARC: no record at _dmarc.{from_domain}; Gmail, Yahoo and Outlook refuse "
                                   f"bulk mail without one: publish \"v=DMARC1; p=none; rua=mailto:<you>\" "
                                   f"to start")]
    tags = _tags(found[0])
    out = [Finding("ok", f"DMARC: {name} has \"{found[0]}\"")]
    if tags.get("p", "").lower() == "none":
        out.append(Finding("note", "DMARC: p=none only monitors; move to quarantine once reports look clean"))
    if tags.get("adkim", "r").lower() == "s" and any(k.domain != from_domain.lower() for k in keys):
        out.append(Finding("problem", f"DMARC: adkim=s needs the DKIM domain to be exactly {from_domain}, "
                                      f"but we sign as {keys[0].domain}"))
    return out


def assess(from_domain: str, keys: Sequence[DKIMKey], records: Mapping[str, Answer]) -> list[Finding]:
    """Plain-language findings for the From domain; pure (records come from ``lookup``)."""
    return (_spf(from_domain, records.get(from_domain, ()))
            + _dkim(from_domain, keys, records) + _dmarc(from_domain, keys, records))

