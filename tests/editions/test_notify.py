"""Editors' reports through the real SMTP transport: sent, and the content-rejection alert."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailer.editions.notify import Notifier
from mailer.models import EditionState as S
from tests.editions.helpers import add_posts
from tests.scheduler.helpers import make_app, write_config
from tests.support.smtp import SMTPServer

EDITORS = ("one@example.net", "two@example.net")


async def test_rejections_above_the_threshold_alert_the_editors(
        tmp_path: Path, sqlite_url: str, smtp_server: SMTPServer) -> None:
    app = make_app(write_config(tmp_path, sqlite_url, smtp_port=smtp_server.port,
                                editors=EDITORS))
    add_posts(app.engine, 2)
    eid = app.editions.create()
    assert eid is not None
    app.editions.set_state(eid, S.SENDING)
    app.editions.set_state(eid, S.SENT)
    counts = {"sent": 90, "content_rejected": 10}  # 10% > the default 5% threshold
    base = Notifier.for_app(app)
    notifier = Notifier(app.config, base.send, app.clock, counts=lambda _: counts,
                        titles=base.titles)
    await notifier.sent(app.editions.info(eid))
    await app.transport.aclose()
    subjects = sorted((r.rcpt_tos[0], str(r.message()["Subject"])) for r in smtp_server.received)
    assert [s for _, s in subjects if "sent" in s] == [f"[Newsletter] Edition {eid} sent"] * 2
    alert = [s for _, s in subjects if "rejected" in s]
    assert alert == [f"[Newsletter] Edition {eid}: providers rejected the content of 10.0% of "
                     "messages"] * 2
    body = smtp_server.received[0].message().get_content()
    assert "Deliveries: content_rejected 10, sent 90" in body
    assert "Post 1" in body  # titles of the posts it carried
    assert {r.rcpt_tos[0] for r in smtp_server.received} == set(EDITORS)
    app.engine.dispose()


async def test_below_threshold_only_the_sent_report(
        tmp_path: Path, sqlite_url: str, smtp_server: SMTPServer) -> None:
    app = make_app(write_config(tmp_path, sqlite_url, smtp_port=smtp_server.port,
                                editors=EDITORS[:1]))
    add_posts(app.engine, 1)
    eid = app.editions.create()
    assert eid is not None
    base = Notifier.for_app(app)
    notifier = Notifier(app.config, base.send, app.clock,
                        counts=lambda _: {"sent": 99, "content_rejected": 1})
    await notifier.sent(app.editions.info(eid))
    await app.transport.aclose()
    assert [str(r.message()["Subject"]) for r in smtp_server.received] == [
        f"[Newsletter] Edition {eid} sent"]
    app.engine.dispose()


async def test_the_sent_report_goes_out_once_whoever_sees_the_edition_finish(
        tmp_path: Path, sqlite_url: str, smtp_server: SMTPServer) -> None:
    # The daemon and two workers (three processes, three Apps on one database) each see the
    # edition finish and each call ``sent``: each editor gets one report.
    config = write_config(tmp_path, sqlite_url, smtp_port=smtp_server.port, editors=EDITORS)
    apps = [make_app(config) for _ in range(3)]
    add_posts(apps[0].engine, 1)
    eid = apps[0].editions.create()
    assert eid is not None
    apps[0].editions.set_state(eid, S.SENDING)
    apps[0].editions.set_state(eid, S.SENT)
    await asyncio.gather(*(Notifier.for_app(a).sent(a.editions.info(eid)) for a in apps))
    await Notifier.for_app(apps[1]).sent(apps[1].editions.info(eid))  # and once more, later
    for a in apps:
        await a.transport.aclose()
    got = sorted((r.rcpt_tos[0], str(r.message()["Subject"])) for r in smtp_server.received)
    assert got == [(e, f"[Newsletter] Edition {eid} sent") for e in EDITORS]
    for a in apps:
        a.engine.dispose()
