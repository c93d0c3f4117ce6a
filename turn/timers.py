"""The TURN core's timers: one heap of deadlines, shared by its parts.

Allocations, permissions and channels expire and a channel's cooldown ends
(RFC 8656 sections 6, 9 and 12), a reserved port lapses (section 7.1), the
bandwidth budget starts a new period, the unauthenticated rate limiter is
pruned: each is a :class:`Timer` kind armed here by the part that owns it,
and :meth:`turn.core.TurnCore.handle_timer` hands each due one back to its
owner. No clock is read: a deadline is the ``now`` a part was given plus a
lifetime.
"""

from __future__ import annotations

import enum
import heapq
from typing import Any

__all__ = ["Timer", "Timers"]


class Timer(enum.IntEnum):
    """What a deadline is for."""

    ALLOCATION = 0
    PERMISSION = 1
    CHANNEL = 2
    COOLDOWN = 3
    RESERVATION = 4
    TICK = 5
    PRUNE = 6


class Timers:
    """Deadlines in order; ties keep the order they were armed in."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer, Any, Any]] = []
        self._seq = 0

    def at(self, when: float, kind: Timer, obj: Any = None, key: Any = None) -> None:
        """Arm ``kind`` for ``when``; ``obj`` and ``key`` come back with it."""
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, obj, key))

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> tuple[Timer, Any, Any] | None:
        """``(kind, obj, key)`` of the earliest deadline at or before ``now``, or None."""
        heap = self._heap
        if heap and heap[0][0] <= now:
            _, _, kind, obj, key = heapq.heappop(heap)
            return kind, obj, key
        return None

    def clear(self) -> None:
        """Forget every deadline."""
        self._heap.clear()
