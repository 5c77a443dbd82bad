"""The pure helpers behind the editors' fixes: notes, subjects, test addresses, reused posts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.cli.preview import image_file_name
from mailer.editions.store import PostUse, describe_uses, reuse_problem
from mailer.editions.testsend import MAX_TEST_ADDRESSES, check_test_addresses
from mailer.errors import InputError
from mailer.models import EditionState as S
from mailer.render.variant import IntroNote, edition_subject, intro_notes


def test_notes_follow_the_readers_languages_in_order() -> None:
    notes = {"en": "Hello\nthere\n\n\nSecond", "zh-Hans": "你好", "zh-Hant": "  "}
    assert intro_notes(notes, "en") == (IntroNote("en", (("Hello", "there"), ("Second",))),)
    assert [n.lang for n in intro_notes(notes, "zh-Hans+en")] == ["zh-Hans", "en"]
    assert intro_notes(notes, "zh-Hant") == ()  # blank is none, and notes are not converted
    assert intro_notes({}, "en") == ()


@given(st.text())
def test_a_note_never_carries_a_slot_or_an_empty_line(text: str) -> None:
    for note in intro_notes({"en": text + "@@SLOT_TO@@"}, "en"):
        for paragraph in note.paragraphs:
            assert paragraph
            for line in paragraph:
                assert "@@SLOT_" not in line
                assert line == line.strip()
                assert line
                assert "\n" not in line
                assert "\r" not in line


@given(st.text())
def test_a_subject_is_always_one_line(text: str) -> None:
    subject = edition_subject({"en": text}, "en", "derived")
    assert "\n" not in subject
    assert "\r" not in subject
    assert "@@SLOT_" not in subject or "@@SLOT_" in "derived"


def test_subjects_per_language_and_pair() -> None:
    subjects = {"en": "Our week", "zh-Hant": "本週"}
    assert edition_subject(subjects, "en", "d") == "Our week"
    assert edition_subject(subjects, "zh-Hant+en", "d") == "本週 / Our week"
    assert edition_subject(subjects, "zh-Hans", "d") == "d"
    assert edition_subject({"en": "X", "zh-Hans": "X"}, "zh-Hans+en", "d") == "X"


def test_test_addresses_are_plain_checked_and_each_once() -> None:
    assert check_test_addresses(["a@example.org", " b@example.net ", "A@example.org"]) == (
        "a@example.org", "b@example.net")
    for bad in ("a@b.org, c@d.org", "Ed <ed@example.org>", "ed@example.org\r\nBcc: x@y.org",
                "no-at-sign", "@example.net", "ed@localhost"):
        with pytest.raises(InputError) as info:
            check_test_addresses([bad])
        assert bad not in str(info.value)  # the error never repeats an address
    with pytest.raises(InputError, match="at least one"):
        check_test_addresses([])
    with pytest.raises(InputError, match=f"at most {MAX_TEST_ADDRESSES}"):
        check_test_addresses([f"e{i}@example.org" for i in range(MAX_TEST_ADDRESSES + 1)])


def test_reused_posts_are_named_with_their_edition() -> None:
    assert reuse_problem([]) is None
    assert describe_uses([]) is None
    uses = [PostUse(2, 5, S.SCHEDULED), PostUse(1, 3, S.SENT), PostUse(4, 6, S.SENDING)]
    assert describe_uses(uses) == ("already sent: post 1 (edition 3, sent), post 4 (edition 6, "
                                   "sending); already in another edition: post 2 (edition 5, "
                                   "scheduled)")
    problem = reuse_problem(uses)
    assert problem is not None
    assert "--include-sent" in problem


@pytest.mark.parametrize(("cid", "ctype", "filename", "name"), [
    ("img0.3f2a@newsletter", "image/png", "image1.png", "en-img0.3f2a.png"),
    ("img1.aa@newsletter", "image/jpeg", None, "en-img1.aa.jpg"),
    ("img2.bb@newsletter", "image/webp", "x.../", "en-img2.bb.webp"),
    ("../../etc/passwd@x", "application/x-unknown", None, "en-.._.._etc_passwd.bin"),
])
def test_image_file_names_have_an_extension_and_no_path(cid: str, ctype: str,
                                                        filename: str | None, name: str) -> None:
    assert image_file_name("en", cid, ctype, filename) == name
