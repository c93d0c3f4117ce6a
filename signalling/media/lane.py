"""A room's media calls, one at a time, in the order asked.

A ``leave`` queued by a replacement is done before the newcomer's
``publish``: every call for one room goes through its :class:`MediaLane`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sfu.errors import SfuStateError
from wadud.messaging import loops

log = logging.getLogger("wadud.signalling")
T = TypeVar("T")

__all__ = ["MediaLane"]


class MediaLane:
    """A room's media calls, one at a time, in the order asked (FIFO).

    The caller that needs the result awaits the future; background work
    (``leave`` after a replacement) does not, and its failure is logged. A
    caller that goes away does not cancel a call already queued: the worker
    still has to hear it."""

    def __init__(self, on_idle: Callable[[MediaLane], None]) -> None:
        self._queue: deque[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._on_idle = on_idle

    @property
    def busy(self) -> bool:
        return self._task is not None

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def submit(self, call: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((call, fut))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="media-lane")
        return fut

    def background(self, what: str, call: Callable[[], Awaitable[Any]]) -> None:
        def done(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            if isinstance(exc, SfuStateError):
                # Already gone on the media side (the worker timed it out).
                log.debug("media %s: %s", what, exc)
            elif exc is not None:
                log.error("media %s failed", what, exc_info=exc)

        self.submit(call).add_done_callback(done)

    async def _run(self) -> None:
        try:
            while self._queue:
                call, fut = self._queue.popleft()
                await loops.settle(fut, call)
        finally:
            self._task = None
            for _, fut in self._queue:
                fut.cancel()
            self._queue.clear()
            self._on_idle(self)
