"""Waiting for a client's state to change.

The pieces of a :class:`~wadud_client.call.CallClient` (its signalling
socket's frames, its peer connections, its received tracks) each call
:meth:`Changes.notify` when what they hold changes; :meth:`Changes.wait_until`
waits for any condition on that state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Changes"]


class Changes:
    """Who waits for a change, woken on each. ``describe`` names the client
    in a timeout's message."""

    def __init__(self, describe: Callable[[], str]) -> None:
        self.describe = describe
        self._waiters: list[asyncio.Future[None]] = []

    def notify(self) -> None:
        """Something changed: every waiter looks at its condition again."""
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_until(self, predicate: Callable[[], object], within: float = 10.0) -> None:
        """Wait until ``predicate()`` is true; it is checked whenever
        :meth:`notify` is called, and every 50 ms."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{self.describe()}: condition not met within {within} s")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            # Frames are counted without a notification each (only the
            # first one notifies), so poll as well. asyncio.wait, not
            # wait_for: on Python 3.11 wait_for returns normally when the
            # caller is cancelled just as the future is set (a notify), and
            # the cancellation is lost.
            try:
                await asyncio.wait({fut}, timeout=min(remaining, 0.05))
            finally:
                fut.cancel()
