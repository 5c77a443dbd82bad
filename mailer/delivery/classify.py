"""Classify a relay's answer into an outbox outcome: pure, so every rule is tested without a server.

Why each rule (issue 7):

- 4xx, a dropped connection and a timeout are *deferred*: the relay or the provider may accept
  later (greylisting, QQ/163 throttling). Retries back off exponentially with jitter, and stop
  after ``max_attempts`` or once the row is older than ``max_age`` (then *failed*).
- 5.1.x (RFC 3463: bad mailbox / bad destination) and the providers' "user unknown" wording
  are *bounced*: the address is bad, so the subscriber is suppressed.
- Each provider's own wording is data, in ``mailer/delivery/providers.toml`` (operators extend
  it): its rules say *defer*, *slow down* (deferred, and the engine halves that domain's pace),
  *content* (QQ ``550 Mail content denied``, 163 ``554 DT:SPM``: the reader did nothing wrong,
  so the subscriber stays; a 4xx such as 163 ``451 DT:SPM`` is retried first, after the rule's
  ``retry_after``), *bounce*, or *blocklisted* (163 ``450 DT:RBL``: the row is held for the
  rule's ``hold`` whatever the retry limits, and the engine stops sending to that provider).
  QQ's ``550 Mailbox unavailable or access denied`` is *defer* there: QQ answers it when it
  throttles or dislikes the content (issues 17 and 21), and a bounce would suppress a reader.
- A 5.1.x code outranks a provider rule: the mailbox is gone whatever else the reply says.
- ``content_rejections`` (config) are the operator's own content patterns, for any provider.
- Any other 5xx is *failed*.
- A bounce that comes back by mail has a notice for people besides its SMTP reply, and QQ,
  NetEase and Sina often give their verdict only there, in Chinese ("邮件内容被系统判定为垃圾
  邮件", "收件人地址不存在"). :meth:`Classifier.judge_notice` reads it with the rules marked
  ``notice`` in ``providers.toml``, after :func:`notice_text` undid the width and spacing of
  such notices; ``mailer.inbound.classify`` asks it only when the reply says nothing certain.

Replies are stored and logged only after :func:`scrub_reply` removed any address from them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

from mailer.delivery.providers import ProviderRules, Rule, Verdict
from mailer.models import OutboxState

__all__ = [
    "NO_REPLY",
    "Classifier",
    "Decision",
    "SendResult",
    "backoff",
    "dot_stuff",
    "notice_text",
    "scrub_reply",
]

# The code a transport reports when there was no SMTP reply at all: connection refused or lost,
# timeout, TLS failure. It is treated like a 4xx (the message may be retried).
NO_REPLY = 0

# A 5.1.x enhanced status code anywhere near the start of the reply (RFC 3463 §3.2).
_ENHANCED_51 = re.compile(r"^\s*5\.1\.\d{1,3}\b")
_USER_UNKNOWN = re.compile(
    r"(?i)(user unknown|unknown user|no such (user|mailbox|recipient)|user not found|"
    r"mailbox (not found|unavailable|does not exist)|recipient (address )?rejected: "
    r"(user unknown|undeliverable)|address rejected|does not exist|invalid recipient|"
    r"account (has been )?disabled)"
)
# Generous on purpose: any run of non-space around an "@" goes (RFC 5322 atext is wide).
_ADDRESS = re.compile(r"[^\s<>@:;,()\[\]]+@[^\s<>@:;,()\[\]]+")
_MAX_BACKOFF = timedelta(hours=6)
# Ideographs and CJK punctuation: providers space out their labels ("收 件 人", "主　　题")
# and sometimes their verdicts; between two of these a space carries no meaning.
# (No kana, no combining tone marks: joining those could compose them, and the text change.)
_HAN = r"[\u3001-\u3029\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
_HAN_GAP = re.compile(rf"(?<={_HAN})[^\S\n]+(?={_HAN})")


@dataclass(frozen=True)
class SendResult:
    """What a transport learned about one message: the final SMTP reply, or NO_REPLY."""

    code: int
    reply: str = ""
    relay: str = ""

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300


@dataclass(frozen=True)
class Decision:
    """The outcome for one row; ``retry_in`` is set only for deferred rows. ``verdict`` and
    ``family`` name the provider rule that matched, if one did (the engine slows a domain
    down or stops a blocklisted provider on them)."""

    state: OutboxState
    retry_in: timedelta | None = None
    verdict: Verdict | None = None
    family: str | None = None

    @property
    def suppress(self) -> bool:
        """Only a bounce says the address is bad; a content rejection says nothing about it."""
        return self.state is OutboxState.BOUNCED


def _spelling(part: str) -> str:
    """A pattern for ``part`` in any case, each character also as its %XX UTF-8 escapes."""
    out = []
    for ch in part:
        escaped = "".join(f"%{b:02x}" for b in ch.encode("utf-8"))
        out.append(f"(?:{re.escape(ch)}|{escaped})")
    return "".join(out)


@lru_cache(maxsize=4096)
def _recipient_pattern(recipient: str) -> re.Pattern[str] | None:
    """The recipient's local part and domain, each anywhere in a reply, in every spelling that
    relays were seen to use: case changed, percent-encoded (``bob%40qq.com``), split by " at "
    or quoted (``"bob"@qq.com``), the domain also in its IDNA form. Each part goes on its own,
    so any joining between them is covered. A local part shorter than four characters is only
    taken as a whole word (scrubbing every "a" would leave nothing to read)."""
    local, _, domain = recipient.rpartition("@")
    parts = []
    if local:
        pattern = _spelling(local)
        parts.append(pattern if len(local) >= 4 else rf"(?<![\w%]){pattern}(?!\w)")
    if domain:
        parts.append(_spelling(domain))
        try:
            ascii_domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_domain = domain
        if ascii_domain.lower() != domain.lower():
            parts.append(_spelling(ascii_domain))
    if not parts:
        return None
    # Longest first, so a domain inside a local part (or the reverse) is removed whole.
    parts.sort(key=len, reverse=True)
    return re.compile("|".join(parts), re.IGNORECASE)


def _may_name(text: str, recipient: str) -> bool:
    """False only when no spelling ``_recipient_pattern`` knows can be in ``text``: with both
    in ASCII and no ``%`` in the text, that is plain case-insensitive substrings. Every message's
    recipient differs, so compiling its pattern for a "250 Ok" (about 2 ms) cost more than
    sending it; this check costs a microsecond."""
    if "%" in text or not (text.isascii() and recipient.isascii()):
        return True
    low = text.lower()
    local, _, domain = recipient.lower().rpartition("@")
    return bool((local and local in low) or (domain and domain in low))


def scrub_reply(reply: str, limit: int = 500, *, recipient: str = "") -> str:
    """Remove addresses from a relay's words before they reach the database or a log.

    Relays echo the recipient (``550 5.1.1 <bob@qq.com>: Recipient address rejected``) and
    not always in that form: ``550 mailbox bob unavailable``, ``(bob at qq.com)``,
    ``bob%40qq.com``. Anything shaped like an address goes; with ``recipient``, so does its
    local part and its domain in any spelling (issue 15). Our privacy rule is that no
    plaintext address is stored anywhere.
    """
    text = _ADDRESS.sub("<address>", reply.replace("\r", " ").replace("\n", " "))
    pattern = (_recipient_pattern(recipient)
               if recipient and _may_name(text, recipient) else None)
    if pattern is not None:
        text = pattern.sub("<recipient>", text)
    return text[:limit]


def notice_text(text: str) -> str:
    """A bounce notice as the ``notice`` rules read it: NFKC (full-width "：" and letters become
    ASCII, the ideographic space a space) and no spaces between two Chinese characters, so
    "收件人地址 不存在" and "邮件内容被系统判定为垃圾　邮件" match their rule. Lines stay lines;
    ASCII text is unchanged."""
    return _HAN_GAP.sub("", unicodedata.normalize("NFKC", text))


def backoff(attempts: int, base: timedelta, rand: float, cap: timedelta = _MAX_BACKOFF) -> timedelta:
    """Exponential backoff with "equal jitter": half fixed, half random, so retries spread out.

    ``attempts`` counts the attempts made so far (1 after the first); ``rand`` is in [0, 1).
    """
    exp = base * (2 ** max(0, min(attempts - 1, 30)))
    delay: timedelta = min(exp, cap)
    half = delay / 2
    return half + half * max(0.0, min(rand, 1.0))


def dot_stuff(data: bytes) -> bytes:
    """The DATA payload for CRLF message bytes: leading dots doubled, ``.CRLF`` appended (RFC 5321
    §4.5.2). ``bytes.replace`` runs in C; aiosmtplib's per-message regexes were a measured cost.
    """
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


_NO_RULES = ProviderRules()


class Classifier:
    """The content-rejection patterns (``DeliverySettings.content_rejections``), the provider
    rules (``DeliverySettings.providers``) and the retry bounds, applied to one reply."""

    def __init__(self, content_rejections: Iterable[str], *, max_attempts: int,
                 max_age: timedelta, backoff_base: timedelta,
                 providers: ProviderRules = _NO_RULES) -> None:
        self._content = tuple(re.compile(p) for p in content_rejections)
        self.providers = providers
        self.max_attempts = max_attempts
        self.max_age = max_age
        self.backoff_base = backoff_base

    def judge(self, code: int, reply: str, domain: str = "") -> tuple[OutboxState, str | None,
                                                                      Rule | None]:
        """The outcome class of one reply, ignoring retry limits, with the provider family and
        rule that decided it (if any). ``domain``: the recipient's, tried first."""
        if 200 <= code < 300:
            return OutboxState.SENT, None, None
        temporary = code == NO_REPLY or 400 <= code < 500 or code < 200 or code >= 600
        if not temporary and _ENHANCED_51.match(reply):
            return OutboxState.BOUNCED, None, None
        hit = self.providers.match(code, reply, domain) if 400 <= code < 600 else None
        if hit is not None:
            family, rule = hit
            return _RULE_STATE[rule.verdict][temporary], family.name, rule
        if temporary:
            # 1xx/3xx as a final reply, or garbage, is a protocol fault: try again later.
            return OutboxState.DEFERRED, None, None
        if any(p.search(reply) for p in self._content):
            return OutboxState.CONTENT_REJECTED, None, None
        if _USER_UNKNOWN.search(reply):
            return OutboxState.BOUNCED, None, None
        return OutboxState.FAILED, None, None

    def judge_notice(self, code: int, notice: str,
                     domain: str = "") -> tuple[OutboxState, str] | None:
        """What a bounce notice's text says by the ``notice`` rules, with the line that said
        it; None if no such rule matches. ``code`` is the notice's SMTP code if it has one,
        else 550 (the message came back). A temporary code never proves a bounce or a content
        verdict, as in :meth:`judge`."""
        text = notice_text(notice)
        hit = self.providers.match(code, text, domain, notice=True)
        if hit is None:
            return None
        _, rule = hit
        temporary = not 500 <= code < 600
        line = next((ln.strip() for ln in text.splitlines() if rule.pattern.search(ln)), "")
        return _RULE_STATE[rule.verdict][temporary], line

    def state_for(self, code: int, reply: str, domain: str = "") -> OutboxState:
        """The outcome class of one reply, ignoring retry limits."""
        return self.judge(code, reply, domain)[0]

    def decide(self, result: SendResult, *, attempts: int, age: timedelta, rand: float,
               domain: str = "") -> Decision:
        """Apply the retry bounds: a deferral past ``max_attempts`` or ``max_age`` is a failure
        (a content rejection, for a provider's temporary content refusal). A blocklisted
        provider's row is held for the rule's ``hold``, whatever the bounds: it is not failed."""
        state, family, rule = self.judge(result.code, result.reply, domain)
        verdict = rule.verdict if rule is not None else None
        if state is not OutboxState.DEFERRED:
            return Decision(state, verdict=verdict, family=family)
        if rule is not None and verdict is Verdict.BLOCKLISTED:
            return Decision(OutboxState.DEFERRED, rule.hold, verdict, family)
        delay = (rule.retry_after if rule is not None and rule.retry_after is not None
                 else backoff(attempts, self.backoff_base, rand))
        if attempts >= self.max_attempts or age + delay > self.max_age:
            final = (OutboxState.CONTENT_REJECTED if verdict is Verdict.CONTENT
                     else OutboxState.FAILED)
            return Decision(final, verdict=verdict, family=family)
        return Decision(OutboxState.DEFERRED, delay, verdict, family)


# A rule's verdict as an outcome, for a permanent (5xx) and a temporary (4xx) reply: a
# temporary reply never proves an address bad nor the content refused for good.
_RULE_STATE: dict[Verdict, dict[bool, OutboxState]] = {
    Verdict.DEFER: {False: OutboxState.DEFERRED, True: OutboxState.DEFERRED},
    Verdict.SLOW_DOWN: {False: OutboxState.DEFERRED, True: OutboxState.DEFERRED},
    Verdict.CONTENT: {False: OutboxState.CONTENT_REJECTED, True: OutboxState.DEFERRED},
    Verdict.BOUNCE: {False: OutboxState.BOUNCED, True: OutboxState.DEFERRED},
    Verdict.BLOCKLISTED: {False: OutboxState.DEFERRED, True: OutboxState.DEFERRED},
}
