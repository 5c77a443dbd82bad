"""Every word the admin shows is in the one catalog, in zh-Hans, zh-Hant and en."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailer.render.env import make_environment
from mailer.web.admin.text import ADMIN_CONTEXT, load_admin_text
from subscribers.catalog import parse_po, po_path
from tests.conftest import REPO

_TEMPLATE_CALL = re.compile(r"""\bt\(\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""")
_MARKED = re.compile(r'\bN_\(((?:\s*"(?:[^"\\]|\\.)*"\s*)+)\)')


def admin_msgids() -> set[str]:
    found: set[str] = set()
    for path in (REPO / "templates" / "admin").glob("*.html"):
        for m in _TEMPLATE_CALL.finditer(path.read_text(encoding="utf-8")):
            found.add(m.group(1) if m.group(1) is not None else m.group(2))
    for path in (REPO / "mailer" / "web" / "admin").glob("*.py"):
        for m in _MARKED.finditer(path.read_text(encoding="utf-8")):
            found.add("".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))))
    return found


def test_the_scan_finds_the_admins_words() -> None:
    ids = admin_msgids()
    assert {"Log in", "Wrong name, password or code.", "content_rejected", "Approve"} <= ids
    assert len(ids) > 100


@pytest.mark.parametrize("language", ["zh-Hans", "zh-Hant", "en"])
def test_every_admin_string_is_translated(language: str) -> None:
    data = (REPO / "templates" / po_path(language)).read_bytes()
    messages = parse_po(data, language)
    missing = sorted(m for m in admin_msgids() if f"{ADMIN_CONTEXT}\x04{m}" not in messages)
    assert not missing, f"{language}: no translation for {missing}"


def test_the_pages_speak_each_language(tmp_path: Path) -> None:
    text = load_admin_text(make_environment())
    assert text.for_language("zh-Hans")("Log in") == "登录"
    assert text.for_language("zh-Hant")("Log in") == "登入"
    assert text.for_language("en")("Log in") == "Log in"
