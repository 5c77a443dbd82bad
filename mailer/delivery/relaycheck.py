"""``newsletter relay check``: open a session with each relay step by step and say in plain
words which step failed (connect, TLS, STARTTLS, AUTH, the test message), instead of the
engine's one-line "refused" after the fact."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import aiosmtplib

from mailer.config import RelaySettings
from mailer.delivery.classify import scrub_reply
from mailer.delivery.dnscheck import Finding
from mailer.delivery.smtp import RelayPool, is_loopback

__all__ = ["check_relay"]

Sign = Callable[[bytes], bytes]


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate is not trusted ({exc.verify_message}); set ca_file if it uses a private CA"
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake failed ({exc.reason or exc}); is security right for this port?"
    if isinstance(exc, ConnectionRefusedError):
        return "nothing listens there (connection refused)"
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return "no answer in time"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"it answered {exc.code} {scrub_reply(exc.message, 200)}"
    return f"{type(exc).__name__}: {scrub_reply(str(exc), 200)}"


async def check_relay(relay: RelaySettings, *, to: str | None = None, envelope_from: str = "",
                      message: bytes | None = None, sign: Sign | None = None) -> list[Finding]:
    """The steps one session takes, each reported; stops at the first failure."""
    name = relay.label
    out: list[Finding] = []
    tls = RelayPool(relay)._tls_context() if relay.security != "none" else None
    smtp = aiosmtplib.SMTP(hostname=relay.host, port=relay.port, timeout=relay.timeout,
                           use_tls=relay.security == "tls", start_tls=False, tls_context=tls)
    try:
        try:
            await smtp.connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            cause = exc.__cause__ or exc.__context__ or exc
            out.append(Finding("problem", f"{name}: cannot connect to {relay.host}:{relay.port}: "
                                          f"{_why(cause if isinstance(cause, OSError) else exc)}"))
            return out
        how = "implicit TLS" if relay.security == "tls" else "plain TCP"
        out.append(Finding("ok", f"{name}: connected ({how})"))
        await smtp.ehlo()
        if relay.security == "starttls":
            if not smtp.supports_extension("starttls"):
                out.append(Finding("problem", f"{name}: the relay does not offer STARTTLS; the password and "
                                              f"mail would cross the network in clear. Enable TLS on the "
                                              f"relay, or set security = \"none\" only for a relay on this "
                                              f"machine"))
                return out
            try:
                await smtp.starttls()
            except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
                cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc
                out.append(Finding("problem", f"{name}: STARTTLS failed: {_why(cause)}"))
                return out
            await smtp.ehlo()
        if relay.security != "none":
            info = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
            version = info.version() if info else "?"
            out.append(Finding("ok", f"{name}: TLS {version}, certificate verified for {relay.host}"))
        elif not is_loopback(relay.host):
            out.append(Finding("note", f"{name}: security = \"none\" to a relay off this machine: "
                                       f"mail and password cross the network in clear"))
        mechanisms = smtp.server_auth_methods
        if relay.username:
            if not smtp.supports_extension("auth") or not mechanisms:
                out.append(Finding("problem", f"{name}: a username is set but the relay offers no AUTH"
                                              f"{' after STARTTLS' if relay.security == 'starttls' else ''}; "
                                              f"enable SASL on the relay or remove username"))
                return out
            # One mechanism, not aiosmtplib's try-them-all login(): its last error hides the 535.
            if "plain" in mechanisms:
                auth = smtp.auth_plain
            elif "login" in mechanisms:
                auth = smtp.auth_login
            else:
                out.append(Finding("problem", f"{name}: the relay offers AUTH only as {', '.join(mechanisms)}; "
                                              f"we speak PLAIN and LOGIN (over TLS)"))
                return out
            try:
                await auth(relay.username, relay.password or "")
            except aiosmtplib.SMTPException as exc:
                out.append(Finding("problem", f"{name}: the relay refused the username or password: {_why(exc)}"))
                return out
            out.append(Finding("ok", f"{name}: logged in ({', '.join(mechanisms) or 'AUTH'})"))
        elif mechanisms:
            out.append(Finding("note", f"{name}: the relay offers AUTH ({', '.join(mechanisms)}) but no username "
                                       f"is set; it may refuse to relay to other domains"))
        if to is not None and message is not None:
            data = sign(message) if sign else message
            try:
                _, reply = await smtp.sendmail(envelope_from, [to], data)  # aiosmtplib dot-stuffs
            except aiosmtplib.SMTPException as exc:
                out.append(Finding("problem", f"{name}: the test message was refused: {_why(exc)}"))
                return out
            out.append(Finding("ok", f"{name}: test message accepted ({scrub_reply(reply.strip(), 120)})"))
        return out
    except (aiosmtplib.SMTPException, OSError) as exc:
        out.append(Finding("problem", f"{name}: the session failed: {_why(exc)}"))
        return out
    finally:
        smtp.close()
