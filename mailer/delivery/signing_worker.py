"""The signing worker's process (``python -m mailer.delivery.signing_worker``): keys once, then
one ``DKIM-Signature`` per message, in the framing ``signing_pool`` owns.

A module of its own so that the pool knows only the framing and ``dkim`` only the signing: the
worker is the one place that needs both.
"""

from __future__ import annotations

import signal
import sys
from typing import IO

from mailer.delivery.dkim import DKIMSigner, keys_from_json
from mailer.delivery.signing_pool import ANSWER, LENGTH, read_exactly


def serve(source: IO[bytes], sink: IO[bytes]) -> None:
    """Sign each message until the parent closes its end."""
    head = read_exactly(source, LENGTH.size)
    if head is None:
        return
    keys = read_exactly(source, LENGTH.unpack(head)[0])
    if keys is None:
        return
    signer = DKIMSigner(keys_from_json(keys))
    while (head := read_exactly(source, LENGTH.size)) is not None:
        data = read_exactly(source, LENGTH.unpack(head)[0])
        if data is None:
            return
        try:
            status, answer = 0, signer.signature(data)
        except Exception as exc:  # one bad message must not take the worker down
            status, answer = 1, f"{type(exc).__name__}: {exc}".encode()
        sink.write(ANSWER.pack(status, len(answer)) + answer)
        sink.flush()


def main() -> None:
    # Ctrl-C reaches the whole process group; the parent decides when signing stops (it
    # closes our stdin), so a daemon pausing on SIGINT still has its signers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
