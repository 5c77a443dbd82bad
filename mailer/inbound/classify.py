"""What one message that came back is: pure, so every rule is tested on fixture files.

Order of the rules, and why:

1. **Reports first.** ``multipart/report; report-type=feedback-report`` (ARF, RFC 5965) is a
   complaint; ``report-type=delivery-status`` (DSN, RFC 3464) is a bounce, per recipient block:
   ``Action: failed`` counts, ``delayed``/``delivered``/``relayed`` are only news. DSNs carry
   ``Auto-Submitted`` themselves, so the auto-reply rule must come after this one.
2. **Mail to a VERP address** (``bounces+TOKEN@``) that is not a report is a provider's own
   bounce shape (QQ, NetEase, Sina and Exchange send these): flufl.bounce (Mailman's detectors)
   says whether it reports a failure and whether that is temporary; the status and reply text
   in it are classified like an SMTP reply, by ``mailer.delivery.classify`` (the one owner of
   the content-rejection patterns and of QQ's ambiguous "access denied").
3. **Auto-replies and loops are ignored, never answered** (RFC 3834): ``Auto-Submitted`` other
   than ``no``, ``Precedence: bulk|junk|list``, vacation markers, and ``MAILER-DAEMON`` mail
   that is not a report.
4. **Readers' commands** (``mailer.inbound.commands``), to the ``[inbound] address`` or a
   plus-address of it.

A status decides the kind of a bounce (RFC 3463): 5.1.x (bad mailbox or destination) and 5.2.1
(mailbox disabled) are hard; 4.x.x and 5.2.2 (mailbox full) are soft; a content verdict is
``content_rejected`` (the reader stays); QQ's "mailbox unavailable or access denied" without a
5.1.x code is soft, since QQ says it when throttling or refusing content. Any other permanent
failure is soft too: it says nothing certain about the mailbox, and the decaying score
suppresses an address that keeps failing.

When the status and the SMTP reply say nothing certain (or there is none), the notice for
people decides, read by :meth:`~mailer.delivery.classify.Classifier.judge_notice` with the
``notice`` rules of ``providers.toml``: QQ, NetEase and Sina often write "用户不存在" or
"被判定为垃圾邮件" only there. Its text is decoded by :func:`decode_text`, which reads a
"gb2312" or "GBK" label as GB18030 (their superset, which Chinese mailers write under those
labels) and guesses UTF-8, then GB18030, for a missing or wrong one.

**A bounce that reaches a plain address** (a relay rewrote the envelope sender, so no VERP
token comes back) is still a bounce when it is a DSN or Mailman's detectors find a failure in
it, or it is a mailer daemon's and returns one of our Message-IDs: rule 2 applies to it as to
mail to a VERP address. Its failed recipients (``Final-Recipient``, ``Original-Recipient``,
``X-Failed-Recipients``, flufl.bounce's) go in ``Verdict.recipients``, for the pipeline to
look up by blind index when no reference names our message; what it then trusts is said
there (``mailer.pipeline.inbound``).
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import email
import email.utils
import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage, Message

from mailer.delivery.classify import Classifier
from mailer.inbound.addresses import InboundAddresses, Reference
from mailer.inbound.commands import Command, parse_command
from mailer.models import OutboxState

__all__ = ["Kind", "Verdict", "classify", "decode_text", "is_auto_reply"]


class Kind(enum.StrEnum):
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    CONTENT_REJECTED = "content_rejected"
    COMPLAINT = "complaint"
    IGNORED = "ignored"  # auto-replies, loops, delay notices: never answered
    COMMAND = "command"  # a reader's command (mailer.inbound.commands)
    UNMATCHED = "unmatched"  # for a person: the .unmatched folder


@dataclass(frozen=True)
class Verdict:
    """The kind of one message and what it points at; never an address except ``sender``
    (the From of a reader's command, needed to answer it) and ``recipients`` (the failed
    recipients a bounce names, looked up by blind index); neither is stored nor shown."""

    kind: Kind
    reason: str = ""
    # Which message a bounce or complaint is about: a VERP token or our Message-ID.
    references: tuple[Reference, ...] = ()
    status: str = ""  # the RFC 3463 status, e.g. "5.1.1"
    reply: str = ""  # the diagnostic text (the caller scrubs it before storing it)
    command: Command | None = None
    tag: Reference | None = None  # the plus-tag of the address a reader wrote to
    # Every spelling of it seen (To as the client wrote it, Delivered-To as the MTA may have
    # folded it): a case-sensitive token is tried in each.
    tags: tuple[Reference, ...] = ()
    sender: str = field(default="", repr=False)
    recipients: tuple[str, ...] = field(default=(), repr=False)


_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE = re.compile(r"\b([245]\d\d)[ -]")
_MESSAGE_ID = re.compile(r"<e(\d+)\.s([0-9a-f]{16})@([^>\s]+)>")
_DAEMON = re.compile(r"(?i)^(mailer-daemon|postmaster|mail-daemon|mailerdaemon|mdaemon)@")
_VACATION_SUBJECT = re.compile(
    r"(?i)^\s*(auto(matic)?[ -]?(reply|response)|out of (the )?office|vacation|自动回复|自動回覆|"
    r"自动答复|自動回復|休假|auto:)")
_BODY_LIMIT = 50_000


# Labels Chinese mailers put on text that is GBK or GB18030 (a superset of both GB2312 and GBK:
# a "gb2312" notice routinely holds GBK-only characters).
_GB_LABELS = frozenset({"gb2312", "gbk", "gb18030", "cp936", "ms936", "windows-936", "x-gbk",
                        "euc-cn", "csgb2312", "x-euc-cn", "gb_2312-80", "chinese"})


def decode_text(data: bytes, charset: str | None) -> str:
    """``data`` (already without its transfer encoding) as text; never raises. A GB label
    reads as GB18030. Another declared charset is tried as declared, then as UTF-8 (mailers
    label UTF-8 wrongly more than anything), then as declared with U+FFFD for the bad bytes.
    No label, an unknown one or "us-ascii" with 8-bit bytes: UTF-8, then GB18030, then UTF-8
    with U+FFFD."""
    label = (charset or "").strip().strip('"').lower()
    codec = ""
    if label:
        with contextlib.suppress(LookupError, ValueError):  # ValueError: a NUL in the label
            codec = codecs.lookup(label).name
    if label in _GB_LABELS or codec in ("gb2312", "gbk", "gb18030"):
        return data.decode("gb18030", errors="replace")
    guesses = ("utf-8", "gb18030") if codec in ("", "ascii") else (codec, "utf-8")
    for guess in guesses:
        with contextlib.suppress(UnicodeError, LookupError):  # LookupError: "hex", "base64"
            return data.decode(guess)
    with contextlib.suppress(UnicodeError, LookupError):
        return data.decode(guesses[0], errors="replace")
    return data.decode("utf-8", errors="replace")


def _text_of(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return decode_text(payload, part.get_content_charset())
    if isinstance(payload, str):
        return payload
    return ""


def _walk_text(msg: Message) -> str:
    """The readable text of a bounce (plain parts first, then HTML with tags dropped)."""
    plain, html = [], []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "text/plain":
            plain.append(_text_of(part))
        elif ctype == "text/html":
            html.append(re.sub(r"<[^>]+>", " ", _text_of(part)))
        elif ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
            break  # the returned message: its text is ours, not the provider's verdict
    return "\n".join(plain or html)[:_BODY_LIMIT]


def is_auto_reply(msg: Message) -> str:
    """Why ``msg`` is an automatic message we must not answer (RFC 3834), or ""."""
    auto = str(msg.get("Auto-Submitted", "")).strip().lower()
    if auto and not auto.startswith("no"):
        return f"Auto-Submitted: {re.sub(r'[^a-z-]', '', auto)[:20]}"
    precedence = str(msg.get("Precedence", "")).strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {precedence}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress", "List-Id",
                 "List-Unsubscribe", "X-Loop"):
        if msg.get(name) is not None:
            return f"{name} header"
    if _VACATION_SUBJECT.search(str(msg.get("Subject", ""))):
        return "a vacation subject"
    sender = email.utils.parseaddr(str(msg.get("From", "")))[1]
    if _DAEMON.match(sender) or not sender:
        return "from a mailer daemon"
    return ""


def _status_kind(status: str, reply: str, rules: Classifier, domain: str = "",
                 notice: str = "") -> tuple[Kind, str]:
    """A failed recipient's kind by its status and diagnostic (RFC 3463 and the delivery
    classifier), with the words that decided it: ``reply``, or the line of ``notice`` (the
    bounce's text for people) when the reply says nothing certain and the notice does."""
    code_match = _SMTP_CODE.search(reply)
    klass = status[:1] if status else (code_match.group(1)[:1] if code_match else "5")
    code = int(code_match.group(1)) if code_match else (450 if klass == "4" else 550)
    if klass == "4":
        return Kind.SOFT_BOUNCE, reply
    if status.startswith("5.2.2") or status.startswith("5.2.0"):  # mailbox full
        return Kind.SOFT_BOUNCE, reply
    if status.startswith("5.2.1"):  # mailbox disabled
        return Kind.HARD_BOUNCE, reply
    # The delivery classifier reads the enhanced code at the start of its text.
    text = (status + " " + reply) if status else reply
    code = code if code >= 500 else 550
    state = rules.state_for(code, text, domain)
    if state is OutboxState.FAILED and notice:  # "any other failure": the notice may know
        found = rules.judge_notice(code, notice, domain)
        if found is not None:
            state, reply = found[0], found[1] or reply
    if state is OutboxState.CONTENT_REJECTED:
        return Kind.CONTENT_REJECTED, reply
    if state is OutboxState.BOUNCED:  # 5.1.x, or the words ("user unknown") alone
        return Kind.HARD_BOUNCE, reply
    return Kind.SOFT_BOUNCE, reply  # deferred (QQ's ambiguous refusal) or any other failure


def _fields(text: str) -> list[dict[str, str]]:
    """RFC 3464 field groups (per-message, then per-recipient), unfolded, lower-case names."""
    groups: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if current:
                groups.append(current)
                current, last = {}, ""
            continue
        if line[:1] in " \t" and last:
            current[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:
            last = name.strip().lower()
            current[last] = value.strip()
    if current:
        groups.append(current)
    return groups


def _report_parts(msg: Message, ctype: str) -> list[str]:
    out = []
    for part in msg.walk():
        if part.get_content_type() == ctype:
            payload = part.get_payload()
            if isinstance(payload, list):  # the email package parses these as messages
                out.append("\n\n".join(p.as_string() for p in payload if isinstance(p, Message)))
            else:
                out.append(_text_of(part) or str(payload))
    return out


def _original_references(msg: Message, addresses: InboundAddresses) -> list[Reference]:
    """Which of our messages a report returns: a VERP token in the returned headers
    (Return-Path, To of a bounce to the envelope), then our deterministic Message-ID, which
    survives in redacted ARF reports."""
    refs: list[Reference] = []
    for part in msg.walk():
        if part.get_content_type() not in ("message/rfc822", "text/rfc822-headers",
                                           "message/rfc822-headers"):
            continue
        text = part.as_string() if part.get_content_type() == "message/rfc822" else _text_of(part)
        refs += addresses.references_in(text)
        refs += [Reference("message-id", f"{m.group(1)}.{m.group(2)}")
                 for m in _MESSAGE_ID.finditer(text) if addresses.is_ours(m.group(3))]
    return list(dict.fromkeys(refs))


def _recipients(msg: Message, envelope: Iterable[str]) -> list[str]:
    out = list(envelope)
    for name in ("To", "Cc", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To"):
        for value in msg.get_all(name, []):
            out += [a for _, a in email.utils.getaddresses([str(value)]) if a]
    return list(dict.fromkeys(a.strip() for a in out))


def _address_field(value: str) -> str:
    """The address of a DSN recipient field (``rfc822; bob@qq.com``, RFC 3464 §2.3.2)."""
    kind, sep, rest = value.partition(";")
    address = (rest if sep else kind).strip().strip("<>").strip()
    return address if "@" in address and (not sep or kind.strip().lower() == "rfc822") else ""


def _dsn(msg: Message, rules: Classifier, refs: Sequence[Reference],
         failed: Iterable[str] = ()) -> Verdict:
    worst: Verdict | None = None
    rank = {Kind.HARD_BOUNCE: 3, Kind.CONTENT_REJECTED: 2, Kind.SOFT_BOUNCE: 1}
    notice = _walk_text(msg)
    recipients: list[str] = []
    for text in _report_parts(msg, "message/delivery-status"):
        for group in _fields(text):
            action = group.get("action", "").lower()
            if not action:
                continue  # the per-message group
            if not action.startswith("failed"):
                continue  # delayed, delivered, relayed, expanded: news, not a failure
            named = [a for name in ("original-recipient", "final-recipient")
                     if (a := _address_field(group.get(name, "")))]
            recipients += named
            status = _STATUS.search(group.get("status", ""))
            code = status.group(0) if status else ""
            reply = group.get("diagnostic-code", "").partition(";")[2].strip() or \
                group.get("diagnostic-code", "")
            domain = named[0].rpartition("@")[2].lower() if named else ""
            kind, words = _status_kind(code, reply, rules, domain, notice)
            verdict = Verdict(kind, f"DSN {code or 'failed'}", tuple(refs), code, words)
            if worst is None or rank[kind] > rank[worst.kind]:
                worst = verdict
    if worst is None:
        return Verdict(Kind.IGNORED, "a delivery notice without a failure", tuple(refs))
    return dataclasses.replace(worst, recipients=tuple(dict.fromkeys([*recipients, *failed])))


def _flufl(msg: Message) -> tuple[list[str], list[str]]:
    """The (temporary, permanent) failed recipients Mailman's detectors find in ``msg``."""
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector tripping over a shape it does not know: no opinion
        return [], []

    def text(found: Iterable[bytes | str]) -> list[str]:
        return sorted(a.decode("utf-8", "replace") if isinstance(a, bytes) else a
                      for a in found)

    return text(temporary), text(permanent)


def _failed_recipients(msg: Message, flufl: tuple[list[str], list[str]]) -> list[str]:
    """Who a bounce says failed: Exim's ``X-Failed-Recipients`` and Mailman's detectors."""
    named = [a for value in msg.get_all("X-Failed-Recipients", [])
             for _, a in email.utils.getaddresses([str(value)]) if "@" in a]
    return list(dict.fromkeys([*named, *flufl[1], *flufl[0]]))


def _from_the_mail_system(msg: Message) -> bool:
    """Whether ``msg`` comes from a mail system rather than a person: a mailer daemon's From,
    Exim's ``X-Failed-Recipients``, or the null sender of every bounce (RFC 5321 §4.5.5) in
    the Return-Path. Mail to a plain address is read for a bounce only then, so a reader's
    mail never goes through Mailman's heuristic detectors."""
    return _daemon_signed(msg) or str(msg.get("Return-Path", "")).strip() == "<>"


def _daemon_signed(msg: Message) -> bool:
    """A mailer daemon's From, or Exim's ``X-Failed-Recipients``: a bounce says so itself."""
    sender = email.utils.parseaddr(str(msg.get("From", "")))[1]
    return bool(_DAEMON.match(sender) or msg.get("X-Failed-Recipients"))


def _provider_bounce(msg: Message, rules: Classifier, refs: Sequence[Reference],
                     flufl: tuple[list[str], list[str]]) -> Verdict | None:
    """A bounce in a provider's own shape (not RFC 3464), or None if it does not look like one:
    it must come from a mailer daemon (or name ``X-Failed-Recipients``), or Mailman's
    detectors must find a failure in it, so that a vacation reply quoting "550" is no bounce;
    and it must carry a failure: flufl's, a status or SMTP code, or a verdict in its notice."""
    text = _walk_text(msg)
    temporary, permanent = bool(flufl[0]), bool(flufl[1])
    sender = email.utils.parseaddr(str(msg.get("From", "")))[1]
    domain = sender.rpartition("@")[2].lower()
    if not (temporary or permanent or _daemon_signed(msg)):
        return None
    status = _STATUS.search(text)
    code = _SMTP_CODE.search(text)
    if not (temporary or permanent or status or code) and \
            rules.judge_notice(550, text, domain) is None:
        return None
    # The reply line: the one with the status or code, where providers put their verdict.
    line = ""
    for candidate in text.splitlines():
        if (status and status.group(0) in candidate) or (code and code.group(0) in candidate):
            line = candidate.strip()
            break
    reply = line or text.strip().splitlines()[0] if text.strip() else ""
    if status is None and temporary and not permanent:
        return Verdict(Kind.SOFT_BOUNCE, "a temporary failure", tuple(refs), "", reply)
    kind, words = _status_kind(status.group(0) if status else "", reply, rules, domain, text)
    # Content verdicts and soft words win over flufl's "permanent", which only means "failed".
    return Verdict(kind, "a provider's bounce", tuple(refs), status.group(0) if status else "",
                   words or reply)


def classify(raw: bytes, *, addresses: InboundAddresses, rules: Classifier,
             envelope: Iterable[str] = ()) -> Verdict:
    """The verdict on ``raw``; ``envelope`` holds the RCPT TO addresses when they are known
    (LMTP), else the Delivered-To/X-Original-To/To headers are read."""
    msg = email.message_from_bytes(raw, policy=policy.default)
    recipients = _recipients(msg, envelope)
    verp = [ref for a in recipients if (ref := addresses.verp_reference(a)) is not None]
    ctype = msg.get_content_type()
    report = str(msg.get_param("report-type", "", header="content-type") or "").lower()
    if ctype == "multipart/report" and report == "feedback-report":
        fields = " ".join(_report_parts(msg, "message/feedback-report"))
        feedback = re.search(r"(?im)^feedback-type:\s*([\w-]+)", fields)
        if feedback and feedback.group(1).lower() == "not-spam":
            return Verdict(Kind.IGNORED, "a not-spam report")
        refs = tuple(dict.fromkeys([*_original_references(msg, addresses), *verp]))
        return Verdict(Kind.COMPLAINT, "ARF " + (feedback.group(1).lower() if feedback else "abuse"),
                       refs)
    if ctype == "multipart/report" and report == "delivery-status":
        flufl = _flufl(msg)
        return _dsn(msg, rules, tuple(verp or _original_references(msg, addresses)),
                    _failed_recipients(msg, flufl))
    if verp:
        found = _provider_bounce(msg, rules, verp, _flufl(msg))
        if found is not None:
            return found
        why = is_auto_reply(msg)
        return Verdict(Kind.IGNORED if why else Kind.UNMATCHED,
                       why or "mail to the bounce address that is not a bounce", tuple(verp))
    if _from_the_mail_system(msg):
        # A bounce at a plain address (a relay rewrote the envelope sender): only with failed
        # recipients, or one of our Message-IDs returned, is it one.
        flufl = _flufl(msg)
        returned = _original_references(msg, addresses)
        failed = _failed_recipients(msg, flufl)
        if returned or failed:
            found = _provider_bounce(msg, rules, returned, flufl)
            if found is not None:
                return dataclasses.replace(found, recipients=tuple(failed))
    why = is_auto_reply(msg)
    if why:
        return Verdict(Kind.IGNORED, why)
    tags = [ref for a in recipients if (ref := addresses.reader_tag(a)) is not None]
    sender = email.utils.parseaddr(str(msg.get("From", "")))[1]
    subject = str(msg.get("Subject", ""))
    body = ""
    if isinstance(msg, EmailMessage):
        part = msg.get_body(preferencelist=("plain", "html"))
        if part is not None:
            with contextlib.suppress(LookupError, ValueError):
                body = str(part.get_content())[:_BODY_LIMIT]
                if part.get_content_type() == "text/html":
                    body = re.sub(r"<[^>]+>", "\n", body)
    command = parse_command(subject, body)
    tag = tags[0] if tags else None
    if command is None and (tag is None or tag.kind not in ("confirm", "language-token",
                                                            "leave")):
        return Verdict(Kind.UNMATCHED, "no command", tag=tag)
    same = tuple(t for t in tags if tag is not None and t.kind == tag.kind)
    return Verdict(Kind.COMMAND, command.name if command else "a reply", command=command,
                   tag=tag, tags=same, sender=sender)
