"""The editors' "sent" report and the ``edition.sent`` event come from whoever finishes an
edition, once: here the real ``newsletter send``, whose first run leaves a deferred reader and
whose second run, after the backoff, finishes the edition (issue 18's report, issue 22's event).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailer.app import App
from tests.editions.helpers import add_posts
from tests.observe.receiver import Receiver
from tests.scheduler.helpers import write_config
from tests.support.cli import ENV, newsletter
from tests.support.smtp import RecordingHandler, SMTPServer

EDITOR = "eds@example.net"
SLOW = "slow@corp.example.net"


class DeferOnce(RecordingHandler):
    """The relay: 451 for ``SLOW`` the first time, then like any relay."""

    def __init__(self) -> None:
        super().__init__()
        self.deferred = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address == SLOW and not self.deferred:
            self.deferred += 1
            return "451 4.3.0 try again later"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


def test_newsletter_send_reports_the_edition_once_when_a_retry_finishes_it(
        tmp_path: Path, sqlite_url: str) -> None:
    handler = DeferOnce()
    relay = SMTPServer(handler).start()
    receiver = Receiver().start()
    try:
        config = write_config(tmp_path, sqlite_url, smtp_port=relay.port, editors=(EDITOR,),
                              extra=f'\n[[webhooks]]\nurl = "{receiver.url()}"\n'
                                    'events = ["edition.sent"]\nsecret_env = "HOOK_SECRET"\n')
        text = config.read_text(encoding="utf-8")
        config.write_text(text.replace('transport = "smtp"\n',
                                       'transport = "smtp"\nbackoff_base = "1s"\n'), encoding="utf-8")
        app = App.from_path(config, environ={"HOOK_SECRET": "s3cret"})
        for reader in ("fast@corp.example.net", SLOW):
            app.subscribers.add(reader, "en", confirmed=True)
        add_posts(app.engine, 1)
        app.engine.dispose()
        env = {**ENV, "HOOK_SECRET": "s3cret"}

        first = newsletter(config, "send", env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "1 sent, 1 deferred" in first.stdout
        assert reports(relay) == []  # not finished: nobody is told yet
        assert receiver.posted == []

        time.sleep(2.5)  # past the 1 s backoff
        second = newsletter(config, "send", env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "resumed edition 1: 1 left" in second.stdout
        [report] = reports(relay)
        assert "sent" in report.lower()
        [posted] = receiver.posted
        doc = json.loads(posted.body)
        assert doc["event"] == "edition.sent"
        assert doc["data"]["counts"]["sent"] == 2
        assert doc["data"]["total"] == 2

        third = newsletter(config, "send", env=env)
        assert third.stdout.startswith("nothing to send")
        assert len(reports(relay)) == 1  # once
        assert len(receiver.posted) == 1
    finally:
        receiver.stop()
        relay.stop()


def reports(relay: SMTPServer) -> list[str]:
    return [str(r.message()["Subject"]) for r in relay.received if EDITOR in r.rcpt_tos]
