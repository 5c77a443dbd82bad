"""Which mirrors a subscriber receives: rendezvous hashing keyed by a secret (pure).

After BridgeDB and rdsys: a censor who subscribes (or reads a leaked email) learns only that
subscriber's few mirrors, not the whole set. Rendezvous (highest-random-weight) hashing gives
the properties we need without any stored assignment:

* stable: the same (secret, period, subscriber) always yields the same mirrors, in the same order;
* minimal moves: removing one candidate changes only the subscribers who had it (everyone else's
  top-k is untouched), and adding one takes about k/n of the subscribers;
* unguessable: without the secret nobody can tell which subscriber holds which mirror, so a
  burned mirror does not point back at a subscriber.

The period index is part of the key, so everyone's subset reshuffles once per period: a censor
who keeps one subscription sees about k fresh mirrors per period rather than a fixed k.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

__all__ = ["EPOCH", "Partitioner", "choose_mirrors", "period_index"]

# Periods turn over on Wednesdays 12:00 UTC (20:00 in Beijing), well away from the usual send
# times (the default digest goes at 08:00 Beijing, Mon and Thu), so an edition's recipients
# rarely straddle two periods.
EPOCH = datetime(1970, 1, 7, 12, tzinfo=UTC)


def period_index(now: datetime, period: timedelta) -> int:
    """Number of whole rotation periods since ``EPOCH``; ``now`` must be aware."""
    if period <= timedelta(0):
        raise ValueError("the rotation period must be positive")
    return int((now - EPOCH) // period)


def _subscriber_key(secret: bytes, period: int, subscriber_id: int) -> bytes:
    msg = b"mirror-partition/v1/%d/%d" % (period, subscriber_id)
    return hmac.new(secret, msg, hashlib.sha256).digest()


def _score(key: bytes, candidate: bytes) -> bytes:
    # Keyed BLAKE2b is a MAC in its own right and several times cheaper than HMAC per call; the
    # per-subscriber key already binds the secret, the period and the subscriber.
    return hashlib.blake2b(candidate, key=key, digest_size=8).digest()


def choose_mirrors(
    secret: bytes, period: int, subscriber_id: int, candidates: Sequence[str], k: int,
) -> tuple[str, ...]:
    """The ``k`` candidates with the highest keyed score for this subscriber in this period.

    Fewer than ``k`` candidates: all of them, best first. Order is by score, so it is as stable
    as the set. Duplicates in ``candidates`` are ignored.
    """
    if k <= 0 or not candidates:
        return ()
    key = _subscriber_key(secret, period, subscriber_id)
    unique = dict.fromkeys(candidates)
    ranked = sorted(unique, key=lambda c: _score(key, c.encode()), reverse=True)
    return tuple(ranked[:k])


class Partitioner:
    """``choose_mirrors`` for one fixed candidate set, with the encodings done once.

    The delivery loop asks for every recipient, so the per-call work is one HMAC plus one short
    BLAKE2b per candidate. Results equal ``choose_mirrors`` exactly.
    """

    __slots__ = ("_encoded", "_k", "_secret", "candidates")

    def __init__(self, secret: bytes, candidates: Sequence[str], k: int) -> None:
        self.candidates = tuple(dict.fromkeys(candidates))
        self._encoded = tuple((c.encode(), c) for c in self.candidates)
        self._secret = secret
        self._k = k

    def choose(self, period: int, subscriber_id: int) -> tuple[str, ...]:
        if self._k <= 0 or not self._encoded:
            return ()
        key = _subscriber_key(self._secret, period, subscriber_id)
        blake = hashlib.blake2b
        scored = sorted(
            ((blake(enc, key=key, digest_size=8).digest(), c) for enc, c in self._encoded),
            reverse=True,
        )
        return tuple(c for _, c in scored[: self._k])
