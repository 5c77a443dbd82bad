"""The confirmation mail's text comes from the one message catalog, in the reader's language
and English, with nothing left untranslated."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

from mailer.render.catalog import catalog_for
from subscribers.languages import KNOWN_LANGUAGES
from subscribers.mail import CONFIRM_BODY, CONFIRM_SUBJECT, confirmation_message


def texts() -> dict[str, tuple[str, str]]:
    out = {}
    for lang in KNOWN_LANGUAGES:
        catalog = catalog_for(lang, strict=True)  # strict: a missing translation raises
        out[lang] = (catalog.gettext(CONFIRM_SUBJECT), catalog.gettext(CONFIRM_BODY))
    return out


def test_a_confirmation_is_in_the_readers_language_and_english() -> None:
    raw = confirmation_message(from_addr="digest@example.org", to="r@example.com",
                               language="zh-Hant", url="https://x.example/confirm/T",
                               names={"zh-Hant": "公民權利通訊", "en": "Rights"},
                               now=datetime(2026, 12, 2, tzinfo=UTC), texts=texts())
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg["Subject"] == "請確認您的訂閱 / Please confirm your subscription"
    body = msg.get_content()
    assert "訂閱了「公民權利通訊」" in body
    assert "subscribed this address to Rights." in body
    assert body.count("https://x.example/confirm/T") == 2
