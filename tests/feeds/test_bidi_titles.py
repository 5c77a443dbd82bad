"""Bidirectional controls in a hostile feed's titles never reach a Subject or a table of
contents (issue 15): ``poll`` and ``send`` run as the operator runs them."""

from __future__ import annotations

import email
from email import policy
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mailer.feeds.sanitise import strip_bidi, strip_tags
from tests.subscribers.support import REPO, run, write_config

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
TITLE = "家庭教会聚会被驱散，三名信徒仍未获释"


def test_no_bidi_control_reaches_the_subject_or_the_contents(tmp_path: Path) -> None:
    feed = (REPO / "examples" / "sample-feed.atom.xml").read_text(encoding="utf-8")
    # One raw override, and one written as a character reference, as a hostile feed may.
    hostile = f"\u202e{TITLE[:4]}&amp;#x2067;{TITLE[4:]}\u2069gpj.exe"
    assert f">{TITLE}</title>" in feed
    (tmp_path / "feed.xml").write_text(feed.replace(f">{TITLE}</title>", f">{hostile}</title>"),
                                       encoding="utf-8")
    config = write_config(tmp_path)
    config.write_text(config.read_text(encoding="utf-8").replace(
        str(REPO / "examples" / "sample-feed.atom.xml"), str(tmp_path / "feed.xml")),
        encoding="utf-8")
    (tmp_path / "list.csv").write_text("email,language\nreader@example.org,zh-Hans\n",
                                       encoding="utf-8")
    for args in (("keys", "init"), ("subscribers", "import", "list.csv", "--confirmed"),
                 ("poll",), ("send",)):
        result = run(config, *args)
        assert result.code == 0, result.err
    [path] = (tmp_path / "data" / "outbox" / "new").glob("*")
    msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    subject = str(msg["Subject"])
    bodies = [part.get_content() for part in msg.walk()  # type: ignore[attr-defined]
              if part.get_content_type() in ("text/plain", "text/html")]
    assert "gpj.exe" in subject or any("gpj.exe" in b for b in bodies)  # the title is there
    for text in (subject, *bodies):
        assert not set(text) & set(BIDI), [hex(ord(c)) for c in set(text) & set(BIDI)]
        assert "#x2067" not in text


@given(st.text())
def test_strip_bidi_leaves_no_control_and_nothing_else_changed(text: str) -> None:
    out = strip_bidi(text)
    assert not set(out) & set(BIDI)
    assert out == "".join(c for c in text if c not in BIDI)
    assert not set(strip_tags(text)) & set(BIDI)
