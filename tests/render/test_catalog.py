"""Message catalogs: every string the templates and the renderer use is translated everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir

from mailer.errors import RenderError
from mailer.inbound import replies
from mailer.render import variant
from mailer.render.catalog import BilingualCatalog, Lazy, MessageCatalog, catalog_for, load_catalog
from mailer.render.env import TEMPLATES_DIR
from mailer.web.admin.text import ADMIN_CONTEXT
from subscribers import mail
from subscribers.catalog import PAGE_TEXT
from tests.web.test_admin_catalog import admin_msgids

REPO = Path(__file__).resolve().parents[2]
LANGUAGES = ["zh-Hans", "zh-Hant", "en"]


def used_msgids() -> set[str]:
    """What the email templates and the render package ask the catalogs for."""
    ids: set[str] = set()
    method_map = [("email/**.html", "jinja2"), ("email/**.txt", "jinja2"),
                  ("archive/**.html", "jinja2"), ("archive/**.xml", "jinja2")]
    for _, _, message, _, _ in extract_from_dir(
        str(TEMPLATES_DIR), method_map, options_map={"**": {"extensions": "jinja2.ext.i18n"}}
    ):
        ids.add(message if isinstance(message, str) else message[0])
    for _, _, message, _, _ in extract_from_dir(str(REPO / "mailer" / "render"), [("**.py", "python")]):
        ids.add(message if isinstance(message, str) else message[0])
    ids.update(variant._LANGUAGE_NAMES.values())
    ids.update(m for pair in mail.MSGIDS.values() for m in pair)  # the confirmation mails' text
    ids.update(replies.MSGIDS)  # the answers to readers who write (mailer/inbound)
    ids.update(f"web\x04{v}" for v in PAGE_TEXT.values())  # the public pages' text
    ids.update(f"{ADMIN_CONTEXT}\x04{m}" for m in admin_msgids())  # the editors' admin
    return ids


def test_extraction_finds_the_chrome() -> None:
    ids = used_msgids()
    assert {
        "In this edition",
        "Unsubscribe",
        "How to reach us",
        "Read online",
        "mirror %(n)s",
        "Image: %(alt)s",
        "Simplified Chinese",
    } <= ids


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_used_string_is_translated(language: str) -> None:
    path = TEMPLATES_DIR / "locale" / language / "LC_MESSAGES" / "messages.po"
    catalog = load_catalog(path, language, strict=True)
    missing = sorted(used_msgids() - set(catalog.messages))
    assert missing == [], f"{language} catalog lacks translations for {missing}"
    stale = sorted(set(catalog.messages) - used_msgids())
    assert stale == [], f"{language} catalog has entries nothing uses: {stale}"


def test_placeholders_survive_translation() -> None:
    for language in LANGUAGES:
        cat = catalog_for(language, strict=True)
        assert isinstance(cat, MessageCatalog)
        for msgid, msgstr in cat.messages.items():
            assert isinstance(msgstr, str)
            for name in ("%(n)s", "%(name)s", "%(alt)s", "%(language)s", "%(address)s",
                         "%(subject)s"):
                assert (name in msgid) == (name in msgstr), (language, msgid)


def test_fuzzy_and_empty_entries_count_as_missing(tmp_path: Path) -> None:
    po = tmp_path / "messages.po"
    po.write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
        '#, fuzzy\nmsgid "Unsubscribe"\nmsgstr "退订"\n\n'
        'msgid "Read online"\nmsgstr ""\n\n'
        'msgid "Links"\nmsgstr "链接"\n',
        encoding="utf-8",
    )
    strict = load_catalog(po, "zh-Hans", strict=True)
    assert strict.gettext("Links") == "链接"
    with pytest.raises(RenderError, match="Unsubscribe"):
        strict.gettext("Unsubscribe")
    with pytest.raises(RenderError, match="Read online"):
        strict.gettext("Read online")
    lenient = load_catalog(po, "zh-Hans")
    assert lenient.gettext("Read online") == "Read online"


def test_missing_catalog_file_is_a_render_error(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="no message catalog"):
        load_catalog(tmp_path / "nope.po", "zh-Hans")


def test_bilingual_translates_each_half_in_its_own_language() -> None:
    cat = catalog_for("zh-Hant+en", strict=True)
    assert isinstance(cat, BilingualCatalog)
    assert cat.gettext("Unsubscribe") == "取消訂閱 / Unsubscribe"
    text = cat.translate("Written in %(language)s", {"language": Lazy("English")})
    assert text == "英文文章 / Written in English"


def test_override_folder_catalog_wins(tmp_path: Path) -> None:
    po = tmp_path / "locale" / "en" / "LC_MESSAGES" / "messages.po"
    po.parent.mkdir(parents=True)
    po.write_text('msgid "Unsubscribe"\nmsgstr "Leave the list"\n', encoding="utf-8")
    assert catalog_for("en", override_dir=tmp_path).gettext("Unsubscribe") == "Leave the list"
    assert catalog_for("en").gettext("Unsubscribe") == "Unsubscribe"
