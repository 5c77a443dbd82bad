"""Reading the one message catalog (``templates/locale/<lang>/LC_MESSAGES/messages.po``).

The emails (``mailer.render.catalog``), the public pages and the confirmation mail all take
their text from these files. The parser lives here, on the ``subscribers`` side, because
``subscribers`` never imports ``mailer`` and the pages need it too. Pure: bytes in, dicts out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from io import BytesIO

from babel.messages.pofile import read_po

from subscribers.languages import KNOWN_LANGUAGES

__all__ = ["BABEL_LOCALES", "ENDONYMS", "PAGE_TEXT", "page_strings", "parse_po", "po_path"]

# Babel locale names for our language codes (used for dates and for the .po header).
BABEL_LOCALES = {"zh-Hans": "zh_Hans_CN", "zh-Hant": "zh_Hant_TW", "en": "en"}

# Each choice named in its own language, the same on every page (not a translation).
ENDONYMS: Mapping[str, str] = {
    "zh-Hans": "简体中文",
    "zh-Hant": "繁體中文",
    "en": "English",
    "zh-Hans+en": "简体中文 + English",
    "zh-Hant+en": "繁體中文 + English",
    "zh-Hans+zh-Hant": "简体中文 + 繁體中文",
}

# The pages' strings by the name the templates use; the English text is the msgid, in the
# context "web" (a page's "Unsubscribe" button need not read like the email's link).
PAGE_TEXT: Mapping[str, str] = {
    "subscribe_title": "Subscribe",
    "subscribe_intro": "Get new posts by email. We keep your address encrypted and never share it.",
    "email_label": "Email address",
    "language_label": "Language",
    "subscribe_button": "Subscribe",
    "check_title": "Check your inbox",
    "check_body": (
        "If this address can receive our newsletter, a message with a confirmation link is on"
        " its way. Open it and press the button on the page to start your subscription."
    ),
    "invalid_email": "That does not look like an email address. Please check it and try again.",
    "bad_form": "This form has expired. Please reload the page and try again.",
    "confirmed_title": "Subscription confirmed",
    "confirmed_body": "Thank you. You will receive the next edition.",
    "confirm_bad_title": "This confirmation link does not work",
    "confirm_bad_body": "It may have expired. Please subscribe again to get a new one.",
    "confirm_title": "Confirm your subscription",
    "confirm_body": "Press the button to start receiving this newsletter.",
    "confirm_button": "Confirm",
    "unsub_title": "Unsubscribe",
    "unsub_body": "Press the button to stop receiving this newsletter.",
    "unsub_button": "Unsubscribe",
    "unsub_already": "You are not receiving this newsletter.",
    "unsub_done_title": "You are unsubscribed",
    "unsub_done_body": (
        "You will not receive any more editions. If this was a mistake, you can subscribe "
        "again."
    ),
    "resubscribe": "Subscribe again",
    "bad_link_title": "This link does not work",
    "bad_link_body": "Please use the link from the most recent email, or write to us.",
    "too_many_title": "Too many requests",
    "too_many_body": "Please wait a minute and try again.",
    "switch_language": "Language",
    "language_title": "Change your language",
    "language_body": (
        "Press the button to receive this newsletter in the language named in the email we sent you."
    ),
    "language_done_title": "Language changed",
    "language_done_body": "You will receive the next edition in the language you chose.",
    "home_title": "A newsletter in your inbox",
    "home_intro": (
        "Our posts, sent to your inbox in full: every post can be read in the email itself,"
        " even where our website is blocked. Choose your language: Simplified or Traditional"
        " Chinese, English, or two at once."
    ),
    "home_by_mail_title": "Subscribe by email",
    "home_by_mail": (
        "If this page does not open for you, send an email with the word \u201csubscribe\u201d"
        " (\u8ba2\u9605) to this address:"
    ),
    "home_mirrors_title": "If this page is blocked",
    "home_mirrors": "The same page is also here:",
    "contact_label": "Contact us:",
}
PAGE_CONTEXT = "web"


def po_path(language: str) -> str:
    """Where a language's catalog is, relative to the templates folder."""
    return f"locale/{language}/LC_MESSAGES/messages.po"


def parse_po(data: bytes, language: str) -> dict[str, str | tuple[str, ...]]:
    """msgid (``context\\x04msgid`` with a context, as gettext keys them) -> translation.
    Fuzzy and empty entries count as missing, as ``msgfmt`` would treat them; a malformed file
    raises ``ValueError``."""
    try:
        catalog = read_po(BytesIO(data), locale=BABEL_LOCALES.get(language, "en"),
                          ignore_obsolete=True)
    except Exception as exc:  # babel raises assorted errors on a malformed file
        raise ValueError(str(exc)) from None
    messages: dict[str, str | tuple[str, ...]] = {}
    for message in catalog:
        if not message.id or message.fuzzy:
            continue
        key = message.id if isinstance(message.id, str) else message.id[0]
        if message.context:
            key = f"{message.context}\x04{key}"
        value = message.string
        if isinstance(value, str):
            if value:
                messages[key] = value
        elif value and all(value):
            messages[key] = tuple(value)
    return messages


def page_strings(read: Callable[[str], bytes]) -> dict[str, dict[str, str]]:
    """What the page templates call ``t``, per language, plus ``language_names``.
    ``read(path)`` returns a catalog's bytes (the Jinja loader, so a deployment's own
    ``locale/`` wins). An untranslated string raises ``KeyError``: a page must never come out
    half in English unnoticed."""
    out: dict[str, dict[str, str]] = {}
    for lang in KNOWN_LANGUAGES:
        messages = parse_po(read(po_path(lang)), lang)
        texts = {"html_lang": lang}
        for name, msgid in PAGE_TEXT.items():
            found = messages.get(f"{PAGE_CONTEXT}\x04{msgid}")
            if lang == "en" and not found:
                found = msgid
            if not isinstance(found, str):
                raise KeyError(f"catalog {lang}: no translation for the page string {name}")
            texts[name] = found
        out[lang] = texts
    out["language_names"] = dict(ENDONYMS)
    return out
