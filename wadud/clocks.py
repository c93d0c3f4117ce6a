"""The wall clock's lead on the monotonic clock, read so that a preemption
does not move it.

Kernel receive stamps (:mod:`rtc.stamps`) are on the wall clock; the event
loops' clock is the monotonic one (asyncio's, and uvloop's to the
millisecond). Read plainly, ``time.time() - time.monotonic()`` is off by as
long as the process was descheduled between its two reads, and a busy
machine's scheduler may hold it 100 ms there: every arrival converted with
it then moves by that much (ci172: a datagram's arrival 99 ms after it was
sent). So the wall clock is read between two monotonic reads, kept only
when they are close together, and reused for a while: it moves against the
monotonic clock by at most 500 ppm (``adjtime``'s slew).
"""

from __future__ import annotations

import time

__all__ = ["WallLead"]

#: Seconds between two monotonic reads within which a wall clock read
#: between them dates their midpoint well enough (each read is a vDSO call
#: of well under a microsecond; a wider pair was descheduled).
TIGHT = 0.0005

#: Tries for a pair that tight before the tightest one is taken.
TRIES = 4

#: Seconds a lead is kept: the slew moves it by at most 50 us over this, and
#: a step of the wall clock shows within it.
KEEP = 0.1


class WallLead:
    """The wall clock's lead on ``time.monotonic()``, read afresh each
    :data:`KEEP` seconds of the caller's monotonic ``now``."""

    __slots__ = ("_at", "_lead")

    def __init__(self) -> None:
        self._at = -KEEP
        self._lead = 0.0

    def __call__(self, now: float) -> float:
        """The lead at ``now`` (the caller's monotonic time, as its loop reads it)."""
        if not 0.0 <= now - self._at < KEEP:
            self._lead = read_lead()
            self._at = now
        return self._lead


def read_lead() -> float:
    """The wall clock's lead on the monotonic clock, from the tightest of up
    to :data:`TRIES` pairs of monotonic reads around a wall clock read."""
    widest = float("inf")
    lead = 0.0
    for _ in range(TRIES):
        before = time.monotonic()
        wall = time.time()
        after = time.monotonic()
        if after - before < widest:
            widest = after - before
            lead = wall - (before + after) / 2
        if widest < TIGHT:
            break
    return lead
