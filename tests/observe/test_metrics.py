"""/metrics from the real daemon during a real send to aiosmtpd, checked against the outbox."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from mailer.delivery.domains import OTHER, metric_domain
from mailer.metrics import Metrics, feed_label
from mailer.models import OutboxState
from mailer.schema import outbox
from tests.editions.helpers import add_posts
from tests.observe.receiver import free_port
from tests.scheduler.helpers import make_app, write_config
from tests.scheduler.test_processes import Proc, procs, wait_until  # noqa: F401 (fixture)
from tests.support.smtp import RecordingHandler, SMTPServer


def test_domain_labels_are_public_providers_or_other() -> None:
    assert metric_domain("qq.com") == "qq.com"
    assert metric_domain("Gmail.com.") == "gmail.com"
    assert metric_domain("pku.edu.cn") == OTHER  # rate-limited by pattern, still not a label
    assert metric_domain(OTHER) == OTHER
    m = Metrics()
    m.recorded("pku.edu.cn", OutboxState.SENT, 250, "relay")
    m.recorded("qq.com", OutboxState.DEFERRED, 0, "relay-a")
    text = _scrape_registry(m)
    assert 'newsletter_messages_total{domain="other",outcome="sent"} 1.0' in text
    assert 'newsletter_relay_connection_errors_total{relay="relay-a"} 1.0' in text
    assert "pku" not in text


def test_feed_label_never_shows_a_path_or_query() -> None:
    assert feed_label("https://blog.example/feeds/posts?key=s3cret", None) == "blog.example"
    assert feed_label("https://blog.example/feed", "Our blog") == "Our blog"


def _scrape_registry(m: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.registry).decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _messages(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> Counter[tuple[str, str]]:
    c: Counter[tuple[str, str]] = Counter()
    for (name, labels), value in samples.items():
        if name == "newsletter_messages_total":
            d = dict(labels)
            c[(d["outcome"], d["domain"])] = int(value)
    return c


@pytest.mark.slow
def test_metrics_during_a_real_send_match_the_outbox(tmp_path: Path, db_url: str,
                                                     procs: list[Proc]) -> None:  # noqa: F811
    def fault(step: str, envelope: object, n: int) -> str | None:
        if step != "data":
            return None
        rcpt = str(getattr(envelope, "rcpt_tos", [""])[0])
        if rcpt.startswith("bad"):
            return "550 5.1.1 no such user"
        if rcpt.startswith("later"):
            return "451 4.7.1 try again later"
        return None

    smtp = SMTPServer(RecordingHandler(delay=0.05, fault=fault)).start()
    port = free_port()
    try:
        config = write_config(tmp_path, db_url, digest="0 8 1 1 *", smtp_port=smtp.port,
                              editors=(), extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        app = make_app(config)
        readers = ([f"reader{i}@gmail.com" for i in range(20)]
                   + [f"bad{i}@qq.com" for i in range(5)] + [f"reader{i}@qq.com" for i in range(5)]
                   + [f"later{i}@tiny-ngo.org" for i in range(5)]
                   + [f"reader{i}@tiny-ngo.org" for i in range(5)])
        for r in readers:
            app.subscribers.add(r, "en", confirmed=True)
        add_posts(app.engine, 2)
        eid = app.editions.create()
        assert eid is not None
        app.editions.approve(eid)  # due now: the daemon sends it when it starts

        daemon = Proc(config, tmp_path / "daemon.log")
        procs.append(daemon)
        url = f"http://127.0.0.1:{port}/metrics"
        mid: Counter[tuple[str, str]] | None = None
        rows_mid: dict[str, float] = {}
        end = time.monotonic() + 90
        while time.monotonic() < end:
            try:
                text = httpx.get(url, timeout=5).text
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            samples = _samples(text)
            done = sum(_messages(samples).values())
            if 0 < done < len(readers):
                mid = _messages(samples)
                rows_mid = {dict(lb)["state"]: v for (n, lb), v in samples.items()
                            if n == "newsletter_outbox_rows"}
                break
            if done >= len(readers):
                break
            time.sleep(0.03)
        assert mid is not None, f"never scraped mid-send:\n{daemon.text()}"
        assert rows_mid["queued"] + rows_mid["sending"] > 0  # the queue gauge saw the work left

        def outbox_counts() -> Counter[tuple[str, str]]:
            with app.engine.connect() as conn:
                rows = conn.execute(select(outbox.c.state, outbox.c.domain, func.count())
                                    .where(outbox.c.edition_id == eid)
                                    .group_by(outbox.c.state, outbox.c.domain)).all()
            c: Counter[tuple[str, str]] = Counter()
            for state, domain, n in rows:
                c[(str(state), metric_domain(str(domain)))] += int(n)
            return c

        wait_until(lambda: not any(s in ("queued", "sending") for s, _ in outbox_counts()),
                   "every row answered", daemon)
        final: Counter[tuple[str, str]] = Counter()
        text = ""
        for _ in range(100):  # the last commit's counters land a moment after the rows
            text = httpx.get(url, timeout=5).text
            final = _messages(_samples(text))
            if final == outbox_counts():
                break
            time.sleep(0.05)
        assert final == outbox_counts()
        assert final[("sent", "gmail.com")] == 20
        assert final[("bounced", "qq.com")] == 5
        assert final[("deferred", "other")] == 5
        assert final[("sent", "other")] == 5
        assert all(v <= final[k] for k, v in mid.items())  # counters only grow
        samples = _samples(text)
        assert samples[("newsletter_edition_rows", (("edition", str(eid)), ("state", "deferred")))] == 5
        assert "tiny-ngo" not in text
        assert "@" not in text
        assert "reader" not in text
        assert daemon.stop() == 0
        assert "metrics on http://127.0.0.1:" in daemon.text()
        assert f"edition {eid}: 30 of 40 sent, 5 deferred, next retry" in daemon.text()
    finally:
        smtp.stop()
    app.engine.dispose()


def test_a_bad_listen_address_names_the_key(tmp_path: Path) -> None:
    from mailer.errors import ConfigError

    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'n.db'}",
                          extra='\n[metrics]\nlisten = "localhost"\n')
    with pytest.raises(ConfigError, match=r"metrics\.listen.*is not HOST:PORT") as info:
        make_app(config)
    assert info.value.line is not None


def test_the_docs_and_dashboard_name_only_metrics_that_exist(tmp_path: Path) -> None:
    import json
    import re

    from prometheus_client import generate_latest

    from mailer.metrics import DatabaseCollector
    from mailer.mirrors.state import load_health
    from tests.conftest import REPO

    app = make_app(write_config(tmp_path, f"sqlite:///{tmp_path / 'n.db'}"))
    m = Metrics()
    m.recorded("qq.com", OutboxState.SENT, 250, "r")
    m.recorded("qq.com", OutboxState.DEFERRED, 0, "r")
    m.waited("qq.com", 0.5)
    m.polled("blog", "ok")
    m.webhook("edition.sent", "delivered")
    m.expose(DatabaseCollector(app.engine, lambda: app.config, lambda: load_health(app.engine)))
    families = list(text_string_to_metric_families(generate_latest(m.registry).decode()))
    exposed = {s.name for f in families for s in f.samples} | {f.name for f in families}
    docs = (REPO / "docs" / "monitoring.md").read_text(encoding="utf-8")
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    named = set(re.findall(r"\bnewsletter_[a-z_]+", docs + "\n".join(exprs)))
    assert named, "no metric named in the docs"
    assert named <= exposed, named - exposed
    assert 'newsletter_database_up 1.0' in generate_latest(m.registry).decode()
    app.engine.dispose()


def test_serve_and_a_worker_expose_metrics_too(tmp_path: Path) -> None:
    """``--metrics-listen`` on ``serve`` (beside the pages) and on ``worker``."""
    import subprocess

    from tests.subscribers.support import serve
    from tests.subscribers.support import write_config as web_config
    from tests.support.cli import ENV, newsletter_cmd

    config = web_config(tmp_path / "web")
    port = free_port()
    with serve(config, "--metrics-listen", f"127.0.0.1:{port}"):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert "newsletter_confirmations_pending 0.0" in text
    assert "newsletter_database_up 1.0" in text

    worker_port = free_port()
    done = subprocess.run(newsletter_cmd(config, "worker", "--once", "--metrics-listen",
                                         f"127.0.0.1:{worker_port}"),
                          capture_output=True, text=True, env=ENV, timeout=120, check=False,
                          cwd=config.parent)
    assert done.returncode == 0, done.stderr
    assert f"metrics on http://127.0.0.1:{worker_port}/metrics" in done.stderr
    bad = subprocess.run(newsletter_cmd(config, "worker", "--once", "--metrics-listen", "nope"),
                         capture_output=True, text=True, env=ENV, timeout=120, check=False,
                         cwd=config.parent)
    assert bad.returncode == 2
    assert "--metrics-listen" in bad.stderr


def test_the_queue_gauge_counts_a_welcome_waiting_in_a_sent_edition(tmp_path: Path) -> None:
    """A welcome is a row added to a sent edition: while it waits (or retries), the outbox
    queue gauge must show it, or an operator's "queue stuck" alert never sees it."""
    from prometheus_client import generate_latest

    from mailer.metrics import DatabaseCollector
    from mailer.mirrors.state import load_health
    from mailer.models import EditionState

    app = make_app(write_config(tmp_path, f"sqlite:///{tmp_path / 'n.db'}"))
    try:
        add_posts(app.engine, 1)
        eid = app.editions.create()
        assert eid is not None
        done = app.subscribers.add("early@gmail.com", "en", confirmed=True)
        late = app.subscribers.add("late@gmail.com", "en", confirmed=True)
        readers = app.subscribers.get_recipients([done, late])
        app.outbox.enqueue(eid, [readers[done]])
        with app.engine.begin() as conn:
            conn.execute(outbox.update().values(state="sent"))
        app.editions.approve(eid)
        for state in (EditionState.SENDING, EditionState.SENT):
            app.editions.set_state(eid, state)

        def gauge() -> dict[str, float]:
            m = Metrics()
            m.expose(DatabaseCollector(app.engine, lambda: app.config, lambda: load_health(app.engine)))
            samples = _samples(generate_latest(m.registry).decode())
            return {dict(lb)["state"]: v for (n, lb), v in samples.items() if n == "newsletter_outbox_rows"}

        assert gauge()["queued"] == 0  # a sent edition's sent rows are history, not queue
        app.outbox.enqueue(eid, [readers[late]])  # the welcome
        assert gauge()["queued"] == 1
        assert gauge()["sent"] == 0
    finally:
        app.engine.dispose()
