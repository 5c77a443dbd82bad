"""A sending process for the crash tests: ``python -m tests.delivery.sender_proc URL PORT N C``.

It sends edition 1 to N deterministic recipients over C connections until nothing is left,
printing one line per run. The tests kill it (SIGKILL or SIGTERM) and start it again.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from mailer.cli.base import on_signals
from mailer.clock import utcnow
from mailer.db import open_engine
from mailer.delivery.engine import DeliveryEngine
from mailer.delivery.outbox import Outbox
from mailer.delivery.smtp import SMTPTransport
from tests.delivery.helpers import directory, message, recipients, relay, settings

LEASE = timedelta(seconds=1)


async def main(url: str, port: int, n: int, connections: int) -> None:
    engine = open_engine(url)
    box = Outbox(engine, utcnow)
    people = recipients(n)
    box.enqueue(1, people)  # idempotent: a restart adds nobody twice
    transport = SMTPTransport([relay(port, connections=connections)])
    try:
        while True:
            delivery = DeliveryEngine(
                box, transport, recipients=directory(people), message_for=message,
                envelope_from="b@example.org", settings=settings(max_attempts=50),
                clock=utcnow, lease=LEASE, batch_size=8,
            )
            # The engine installs no signal handler; like the CLI, this process owns SIGTERM.
            with on_signals(delivery.stop):
                report = await delivery.run(1)
            print(report.summary(), flush=True)
            if report.stopped != "done" and report.stopped != "deferred":
                return
            if box.unfinished(1) == 0:
                return
            await asyncio.sleep(0.2)  # a dead run's leases expire after LEASE
    finally:
        await transport.aclose()
        engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
