"""Delivery speed: one edition to N subscribers through our SMTP pool, against smtp-source.

    .venv/bin/python -m bench.smtp [--subscribers 100000] [--connections 16] [--profile]
                                   [--dkim none|rsa|ed25519|both]

Server: Postfix's ``smtp-sink`` on 127.0.0.1 (install the ``postfix`` package for its tools;
the service is not started). Reference, same run, same sink: ``smtp-source -s 4 -l SIZE -m M``
with SIZE our message size. Our side: subscribers in the encrypted store (SQLite), an edition of
3 posts rendered once per variant, enqueued into the outbox (decrypting as it streams), then
``DeliveryEngine.run``: claim -> decrypt recipients -> personalise (mirrors, unsubscribe token)
-> pipelined SMTP -> group commit of the replies. Prints counts, rates, sizes; never an address.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import resource
import shutil
import sys
import tempfile
import time
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from bench import postfix, posts

__all__ = ["main"]

def seed(app: Any, n: int) -> None:
    from subscribers.lifecycle import Event

    langs = ("zh-Hans", "zh-Hant", "en")
    domains = ("qq.com", "163.com", "126.com", "gmail.com", "example.org")
    for start in range(0, n, 5000):
        rows = [(f"r{i}@{domains[i % len(domains)]}", langs[i % 3])
                for i in range(start, min(n, start + 5000))]
        app.subscribers.add_batch(rows, Event.IMPORT_CONFIRMED)


def use_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=100_000)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--reference-messages", type=int, default=20_000)
    ap.add_argument("--profile", action="store_true", help="cProfile the send, print the top")
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--dkim", choices=("none", "rsa", "ed25519", "both"), default="none",
                    help="sign every message (SigningTransport, process pool) with these keys")
    ap.add_argument("--dkim-workers", type=int, default=None,
                    help="[dkim] workers: signing processes (default: the config's default)")
    args = ap.parse_args(argv)
    if not postfix.available():
        print("bench.smtp: SKIPPED: smtp-sink/smtp-source not found; install Debian's postfix "
              "package for its tools (do not start the service)")
        return

    loop_name = "asyncio" if args.no_uvloop else use_uvloop()
    from mailer.app import App
    from mailer.delivery.engine import DeliveryEngine
    from mailer.delivery.outbox import OutboxRow
    from mailer.models import EditionState
    from mailer.pipeline import personaliser, prepare_edition

    port = postfix.free_port()
    sink = postfix.start_sink(port)
    tmp = Path(tempfile.mkdtemp(prefix="bench-smtp-"))
    try:
        config = postfix.write_config(tmp, port, args.connections)
        if args.dkim != "none":
            from mailer.delivery.dkim import create_key_file

            files = {"rsa": ["rsa"], "ed25519": ["ed25519"], "both": ["rsa", "ed25519"]}[args.dkim]
            for f in files:
                create_key_file(tmp / f"dkim-{f}.pem", "rsa-sha256" if f == "rsa" else "ed25519-sha256")
            names = ", ".join(f'"dkim-{f}.pem"' for f in files)
            with config.open("a", encoding="utf-8") as fh:
                fh.write(f'\n[dkim]\ndomain = "example.org"\nselector = "bench"\nkey_file = [{names}]\n')
                if args.dkim_workers is not None:
                    fh.write(f"workers = {args.dkim_workers}\n")
        app = App.from_path(config, environ={})
        t0 = time.perf_counter()
        seed(app, args.subscribers)
        t_seed = time.perf_counter() - t0
        post_ids = posts.add_posts(app.engine, 3)
        created = app.editions.create(post_ids)
        assert created is not None
        eid: int = created
        app.editions.approve(eid)
        app.editions.set_state(eid, EditionState.SENDING)
        t0 = time.perf_counter()
        prepared = prepare_edition(app, eid)
        t_render = time.perf_counter() - t0
        message_for = personaliser(app, prepared)
        rid = next(iter(app.subscribers.stream_active_ids()))
        rcpt = app.subscribers.get_recipients([rid])[rid]
        size = len(message_for(OutboxRow(eid, rid, rcpt.language, rcpt.domain, 1, None), rcpt))

        ref_before = postfix.reference(port, size, args.reference_messages)

        t0 = time.perf_counter()
        enqueued = app.outbox.enqueue(eid, app.subscribers.stream_active())
        t_enqueue = time.perf_counter() - t0
        engine = DeliveryEngine(
            app.outbox, app.transport, recipients=app.subscribers.get_recipients,
            message_for=message_for,
            envelope_from=parseaddr(app.config.newsletter.from_addr)[1],
            settings=app.config.delivery, clock=app.clock,
        )
        profiler = cProfile.Profile() if args.profile else None

        async def send() -> Any:
            try:
                return await engine.run(eid)
            finally:
                await app.transport.aclose()

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if profiler:
            profiler.enable()
        report = asyncio.run(send())
        if profiler:
            profiler.disable()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the signing pool, reaped at aclose
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        cpu += (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
        # The machine is shared: measure the reference on both sides of our send, use the mean.
        ref_after = postfix.reference(port, size, args.reference_messages)
        ref = (ref_before + ref_after) / 2
        ours = report.sent / report.elapsed
        whole = report.sent / (report.elapsed + t_enqueue)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        load = os.getloadavg()[0]
        print(f"bench.smtp ({loop_name}, {os.cpu_count()} cores, load average {load:.1f}, "
              f"dkim {args.dkim})")
        print(f"  subscribers seeded (encrypted store): {args.subscribers} in {t_seed:.1f}s")
        print(f"  render 3 variants: {t_render:.2f}s; message size {size} bytes")
        print(f"  reference smtp-source -s 4 -l {size} -m {args.reference_messages}: "
              f"{ref:,.0f} msg/s (mean of {ref_before:,.0f} before and {ref_after:,.0f} after)")
        print(f"  enqueue {enqueued} rows (streamed, decrypted): {t_enqueue:.1f}s")
        print(f"  send: {report.sent} sent, {report.deferred} deferred, {report.failed} failed "
              f"in {report.elapsed:.1f}s = {ours:,.0f} msg/s "
              f"(with enqueue: {whole:,.0f} msg/s)")
        per = 1e6 / max(report.sent, 1)
        own = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        print(f"  CPU per message: sending process {own * per:.0f} µs, signing workers "
              f"{(cpu - own) * per:.0f} µs")
        print(f"  our CPU during the send: {cpu:.1f}s = {cpu / max(report.sent, 1) * 1e6:.0f} µs "
              f"per message (user+system, all threads; {cpu / report.elapsed:.0%} of one core)")
        print(f"  messages in flight: {engine.concurrency} (connections, plus those signed ahead; the "
              "duplicate bound)")
        print(f"  peak RSS: {rss_mb:.0f} MB")
        print(f"  RATIO ours / smtp-source: {ours / ref:.2f}x "
              f"(with enqueue {whole / ref:.2f}x); "
              + ("goal 0.35x (issue 21, RSA-2048)" if args.dkim != "none" else "bar 0.2x, goal 0.5x"))
        if profiler:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue())
        if report.sent != args.subscribers:
            sys.exit(f"only {report.sent} of {args.subscribers} sent")
    finally:
        sink.kill()
        sink.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
