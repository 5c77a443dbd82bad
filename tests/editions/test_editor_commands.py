"""What a new editor trips over, through the real ``newsletter`` commands in subprocesses.

The intro note and subject reach the sent mail in every language, and can be changed after
``create``; test sends go to several addresses, on Maildir into a folder of their own; posts
already sent need a confirmation; ``approve`` says when approval is off; ``preview`` renders
every language at once and says when there is nothing new; ``send`` names its edition by the
mode; a cancelled send shows no ``queued`` rows; read-only commands need no relay password.
"""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest

from mailer.app import App
from mailer.models import EditionState
from mailer.pipeline.send import start_edition
from tests.editions.helpers import add_posts
from tests.scheduler.helpers import make_app
from tests.scheduler.helpers import write_config as small_config
from tests.support.cli import ENV, newsletter, write_config
from tests.support.smtp import SMTPServer

CHOICES = ("zh-Hans", "zh-Hant", "en", "zh-Hans+en", "zh-Hant+en")
NOTES = {
    "zh-Hans": "本期导读：编辑的话。\n\n第二段。",
    "zh-Hant": "本期導讀：編輯的話。",
    "en": "Welcome <b>readers</b> & friends, @@SLOT_TO@@.\nA second line.\n\nA second paragraph.",
}


def ok(result: object) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return str(result.stdout)


def bodies(msg: EmailMessage) -> tuple[str, str]:
    html, text = msg.get_body(("html",)), msg.get_body(("plain",))
    assert html is not None
    assert text is not None
    return str(html.get_content()), str(text.get_content())


def reader(choice: str) -> str:
    return f"reader-{choice.lower().replace('+', '-and-')}@example.com"


def test_the_intro_note_and_subject_reach_the_sent_mail_in_every_language(
        tmp_path: Path, sqlite_url: str, smtp_server: SMTPServer) -> None:
    config = write_config(tmp_path, sqlite_url, smtp_server.port)
    ok(newsletter(config, "poll"))
    app = App.from_path(config, environ=ENV)
    for choice in CHOICES:
        app.subscribers.add(reader(choice), choice, confirmed=True)
    files = []
    for lang, note in NOTES.items():
        path = tmp_path / f"{lang}.txt"
        path.write_text("an old note, replaced below" if lang == "en" else note, encoding="utf-8")
        files += ["--note-file", f"{lang}={path}"]
    ok(newsletter(config, "editions", "create", *files, "--subject", "en=Our week, in brief"))
    # The editor changes the English note after create, and gives zh-Hant its own subject.
    (tmp_path / "en-new.txt").write_text(NOTES["en"], encoding="utf-8")
    out = ok(newsletter(config, "editions", "edit", "1", "--note-file",
                        f"en={tmp_path / 'en-new.txt'}", "--subject", "zh-Hant=本週要聞"))
    assert "subject (zh-Hant): 本週要聞" in out
    assert "note (en): Welcome <b>readers</b>" in out
    ok(newsletter(config, "editions", "approve", "1"))  # no time: it goes at the next pass
    ok(newsletter(config, "run", "--once"))
    assert app.editions.info(1).state.value == "sent"
    mails = {r.rcpt_tos[0]: r.message() for r in smtp_server.received
             if r.rcpt_tos != ["editors@example.org"]}  # the editors' "sent" report
    assert sorted(mails) == sorted(reader(c) for c in CHOICES)
    for choice in CHOICES:
        msg = mails[reader(choice)]
        html, text = bodies(msg)
        halves = choice.split("+")
        for lang, words in (("zh-Hans", "本期导读"), ("zh-Hant", "本期導讀"), ("en", "Welcome")):
            if lang in halves:
                assert f'class="intro" lang="{lang}"' in html, (choice, lang)
                assert words in html, (choice, lang)
                assert words in text, (choice, lang)
            else:  # a note is for the readers of its language only
                assert words not in html + text, (choice, lang)
        if "zh-Hans" in halves:
            assert "第二段。" in text
        if "en" in halves:
            # Plain text from the editor: escaped, never markup, never a slot filled per reader.
            assert "Welcome &lt;b&gt;readers&lt;/b&gt; &amp; friends" in html
            assert "<b>readers" not in html
            assert "Welcome <b>readers</b> & friends" in text
            assert reader(choice) not in html + text
            assert "A second line." in text
            assert "A second paragraph." in text
            assert "an old note" not in html + text
        subject = str(msg["Subject"])
        expected = {"en": "Our week, in brief", "zh-Hant": "本週要聞",
                    "zh-Hant+en": "本週要聞 / Our week, in brief",
                    "zh-Hans+en": "Our week, in brief"}.get(choice)
        if expected is not None:
            assert subject == expected, choice
        else:
            assert subject.startswith("公民权利通讯 · "), subject
    # Once sent, neither the note nor the subject can change, with a clear error.
    refused = newsletter(config, "editions", "edit", "1", "--subject", "en=Too late")
    assert refused.returncode == 2
    assert "edition 1: is sent; its subject and intro note can change only before" in refused.stderr
    app.engine.dispose()


def test_edit_refuses_bad_input_with_one_clear_line(tmp_path: Path, sqlite_url: str) -> None:
    config = small_config(tmp_path, sqlite_url)
    app = make_app(config)
    add_posts(app.engine, 1)
    ok(newsletter(config, "editions", "create"))
    for args, said in (
        (["--subject", "fr=Bonjour"], "'fr' is not one of the configured languages"),
        (["--subject", "en"], "write it as LANG=…"),
        ([], "give --subject LANG=TEXT or --note-file LANG=FILE"),
        (["--note-file", f"en={tmp_path / 'missing.txt'}"], "cannot read"),
        (["--subject", "en=" + "x" * 201], "at most 200 are allowed"),
    ):
        r = newsletter(config, "editions", "edit", "1", *args)
        assert r.returncode == 2, args
        assert said in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    # An approved edition that is edited must be approved again.
    ok(newsletter(config, "editions", "approve", "1"))
    out = ok(newsletter(config, "editions", "edit", "1", "--subject", "en=Fixed typo"))
    assert "the approval was withdrawn" in out
    assert app.editions.info(1).approved_at is None
    # An empty subject goes back to the derived one.
    ok(newsletter(config, "editions", "edit", "1", "--subject", "en="))
    assert dict(app.editions.info(1).subjects) == {}
    app.engine.dispose()


def test_test_send_to_several_addresses_on_maildir_goes_to_its_own_folder(
        tmp_path: Path, sqlite_url: str) -> None:
    config = small_config(tmp_path, sqlite_url)
    app = make_app(config)
    add_posts(app.engine, 2)
    app.subscribers.add("subscriber@example.com", "en", confirmed=True)
    ok(newsletter(config, "editions", "create"))
    r = newsletter(config, "editions", "test-send", "1", "--to", "ed-one@example.net",
                   "--to", "ed-two@example.org")
    out = ok(r)
    for address in ("ed-one@example.net", "ed-two@example.org"):
        assert f"test of edition 1 (en) sent to {address} (Maildir {tmp_path / 'outbox-tests' / 'new'})" in out
        assert address not in r.stderr  # echoed to the editor, never logged
    tests = sorted((tmp_path / "outbox-tests" / "new").iterdir())
    assert len(tests) == 2
    assert sorted(b"To: ed-" in f.read_bytes() and b"Subject: [TEST]" in f.read_bytes()
                  for f in tests) == [True, True]
    # No subscriber's address in the test folder or the output (a byte search, as elsewhere).
    for f in (tmp_path / "outbox-tests").rglob("*"):
        assert not f.is_file() or b"subscriber@example.com" not in f.read_bytes()
    assert "subscriber@example.com" not in r.stdout + r.stderr
    # Nothing among the subscribers' mail, and no outbox row.
    outbox_new = tmp_path / "outbox" / "new"
    assert not outbox_new.exists() or list(outbox_new.iterdir()) == []
    assert app.outbox.total(1) == 0
    bad = newsletter(config, "editions", "test-send", "1", "--to", "one@example.net, two@x.org")
    assert bad.returncode == 2
    assert "test address 1: give one plain email address" in bad.stderr
    assert "one@example.net" not in bad.stderr
    app.engine.dispose()


def test_test_send_to_several_addresses_through_the_relay(
        tmp_path: Path, sqlite_url: str, smtp_server: SMTPServer) -> None:
    config = small_config(tmp_path, sqlite_url, smtp_port=smtp_server.port)
    app = make_app(config)
    add_posts(app.engine, 1)
    ok(newsletter(config, "editions", "create"))
    out = ok(newsletter(config, "editions", "test-send", "1", "--to", "a@example.net",
                        "--to", "b@example.net", "--to", "A@example.net", "--language", "zh-Hans"))
    assert [r.rcpt_tos for r in smtp_server.received] == [["a@example.net"], ["b@example.net"]]
    assert "sent to a@example.net" in out
    assert "sent to b@example.net" in out
    assert all(str(r.message()["Subject"]).startswith("[TEST]") for r in smtp_server.received)
    app.engine.dispose()


def test_posts_already_sent_need_a_confirmation(tmp_path: Path, sqlite_url: str) -> None:
    config = small_config(tmp_path, sqlite_url)
    app = make_app(config)
    a, b, c = add_posts(app.engine, 3)
    ok(newsletter(config, "editions", "create", "--posts", str(a)))
    ok(newsletter(config, "editions", "create", "--posts", str(b)))  # edition 2, a draft
    ok(newsletter(config, "editions", "approve", "1"))
    ok(newsletter(config, "run", "--once"))  # sends edition 1, then c as edition 3
    assert app.editions.info(1).state.value == "sent"
    refused = newsletter(config, "editions", "create", "--posts", f"{a},{b},{c}")
    assert refused.returncode == 2
    assert f"already sent: post {a} (edition 1, sent)" in refused.stderr
    assert f"already in another edition: post {b} (edition 2, draft)" in refused.stderr
    assert f"post {c} (edition 3, sent)" in refused.stderr
    assert "--include-sent" in refused.stderr
    assert len(app.editions.find()) == 3  # nothing was created
    r = newsletter(config, "editions", "create", "--posts", f"{a},{b}", "--include-sent")
    assert "edition 4 created (draft) with 2 post(s)" in ok(r)
    assert f"warning: already sent: post {a} (edition 1, sent)" in r.stderr
    app.engine.dispose()


def test_approval_off_is_stated(tmp_path: Path, sqlite_url: str) -> None:
    shipped = (Path(__file__).resolve().parents[2] / "newsletter.toml").read_text(encoding="utf-8")
    assert "require_approval = false" in shipped
    assert "`editions approve` changes nothing" in shipped
    config = small_config(tmp_path, sqlite_url)
    app = make_app(config)
    add_posts(app.engine, 1)
    ok(newsletter(config, "editions", "create"))
    out = ok(newsletter(config, "editions", "schedule", "1", "--at", "2099-01-01 08:00"))
    assert "without an approval ([newsletter] require_approval = false)" in out
    out = ok(newsletter(config, "editions", "approve", "1"))
    assert "approval is not required ([newsletter] require_approval = false)" in out
    (tmp_path / "gated").mkdir()
    gated = small_config(tmp_path / "gated", f"sqlite:///{tmp_path / 'gated.db'}",
                         require_approval=True)
    add_posts(make_app(gated).engine, 1)
    ok(newsletter(gated, "editions", "create"))
    assert "approval is not required" not in ok(newsletter(gated, "editions", "approve", "1"))
    app.engine.dispose()


def test_preview_renders_every_language_in_one_run_and_says_when_nothing_is_new(
        tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path, sqlite_url, 2525)
    ok(newsletter(config, "poll"))
    out = ok(newsletter(config, "preview", "--out", str(tmp_path / "all")))
    assert "not yet sent, zh-Hans, zh-Hant, en, zh-Hans+en, zh-Hant+en:" in out
    for choice in CHOICES:
        for ext in ("html", "txt", "eml"):
            assert (tmp_path / "all" / f"{choice}.{ext}").is_file(), (choice, ext)
    ok(newsletter(config, "preview", "--lang", "zh-Hant", "--out", str(tmp_path / "one")))
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        "zh-Hant.eml", "zh-Hant.html", "zh-Hant.txt"]
    # Every post is now in an edition (a draft): nothing unsent, nothing scheduled.
    ok(newsletter(config, "editions", "create"))
    r = newsletter(config, "preview", "--out", str(tmp_path / "none"))
    assert "nothing to preview: no edition is scheduled" in ok(r)
    assert not (tmp_path / "none").exists()
    # The editor can still preview that edition by its id.
    ok(newsletter(config, "preview", "--edition", "1", "--lang", "en", "--out", str(tmp_path / "e")))
    assert (tmp_path / "e" / "en.html").is_file()


@pytest.mark.parametrize(("mode", "kind"), [("digest", "digest"), ("per-post", "per-post")])
def test_send_names_its_edition_by_the_configured_mode(
        tmp_path: Path, sqlite_url: str, mode: str, kind: str) -> None:
    config = small_config(tmp_path, sqlite_url, mode=mode)
    app = make_app(config)
    add_posts(app.engine, 1)
    ok(newsletter(config, "send"))
    listed = ok(newsletter(config, "editions", "list"))
    assert f"    1  sent       {kind:<8}" in listed
    app.engine.dispose()


def test_a_cancelled_send_leaves_no_row_queued_in_the_report(
        tmp_path: Path, sqlite_url: str) -> None:
    config = small_config(tmp_path, sqlite_url)
    app = make_app(config)
    add_posts(app.engine, 1)
    for i in range(5):
        app.subscribers.add(f"r{i}@example.com", "en", confirmed=True)
    eid = app.editions.create()
    assert eid is not None
    start_edition(app, eid)  # sending, all five queued (a send interrupted before delivering)
    assert "edition 1 cancelled; 5 message(s) not sent" in ok(newsletter(config, "editions",
                                                                         "cancel", "1"))
    lines = ok(newsletter(config, "editions", "report", "1")).splitlines()
    head = next(line for line in lines if line.startswith("domain"))
    totals = next(line for line in lines if line.startswith("total"))
    total = dict(zip(head.split()[1:], totals.split()[1:], strict=True))
    assert total["queued"] == "0"
    assert total["sending"] == "0"
    assert total["cancelled"] == "5"
    app.engine.dispose()


RELAY_WITH_LOGIN = """
[[delivery.relays]]
host = "127.0.0.1"
port = 2525
security = "none"
username = "digest"
password_env = "RELAY_PASSWORD_FOR_TEST"
"""


def test_read_only_commands_need_no_relay_password(tmp_path: Path, sqlite_url: str) -> None:
    config = small_config(tmp_path, sqlite_url)
    text = config.read_text(encoding="utf-8").replace(
        f'transport = "maildir"\nmaildir = "{tmp_path / "outbox"}"\n', 'transport = "smtp"\n')
    config.write_text(text.replace("[mirrors]", RELAY_WITH_LOGIN + "\n[mirrors]"), encoding="utf-8")
    assert "RELAY_PASSWORD_FOR_TEST" not in ENV
    app = make_app(config)
    add_posts(app.engine, 2)
    ok(newsletter(config, "editions", "create"))
    app.editions.set_state(1, EditionState.SENDING)
    for args in (["editions", "list"], ["editions", "show", "1"], ["editions", "report", "1"],
                 ["preview", "--out", str(tmp_path / "p")], ["posts"], ["subscribers", "count"]):
        ok(newsletter(config, *args))
    # Sending needs it: one clear line that names the file, the key and the variable.
    for args in (["send"], ["editions", "test-send", "1", "--to", "ed@example.net"],
                 ["serve", "--port", "0"]):
        r = newsletter(config, *args)
        assert r.returncode == 2, args
        assert "key 'delivery.relays[0].password_env'" in r.stderr, r.stderr
        assert "RELAY_PASSWORD_FOR_TEST" in r.stderr
    app.engine.dispose()
