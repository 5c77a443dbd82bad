"""The confirmation mail's text comes from the one message catalog, in the reader's language
and English, with nothing left untranslated."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

from mailer.render.catalog import catalog_for
from subscribers.languages import KNOWN_LANGUAGES
from subscribers.mail import MSGIDS, confirmation_message


def texts() -> dict[str, dict[str, tuple[str, str]]]:
    catalogs = {lang: catalog_for(lang, strict=True) for lang in KNOWN_LANGUAGES}  # strict: raises
    return {kind: {lang: (c.gettext(s), c.gettext(b)) for lang, c in catalogs.items()}
            for kind, (s, b) in MSGIDS.items()}


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


def test_a_change_of_language_names_the_choice_in_its_own_language() -> None:
    raw = confirmation_message(from_addr="digest@example.org", to="r@example.com",
                               language="zh-Hans", url="https://x.example/language/T",
                               names={"zh-Hans": "公民权利通讯", "en": "Rights"},
                               now=datetime(2026, 12, 2, tzinfo=UTC), texts=texts(),
                               choice="zh-Hant+en")
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg["Subject"] == "请确认更改语言 / Please confirm the change of language"
    assert "改为：繁體中文 + English。" in msg.get_content()
