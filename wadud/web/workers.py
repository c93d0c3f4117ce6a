"""The worker roles' life (``wadud hooks``, ``notify``, ``recorder``).

Each role's work is one object with ``start`` and ``close``. It runs in a
process of its own until SIGTERM or SIGINT (:func:`stop_on_signals`,
:func:`start_worker`), or inside an HTTP role for the app's life
(:func:`in_app`, where ``wadud serve`` does the work itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Protocol, TypeVar

import asyncpg
from aiohttp import web

from wadud.config import Settings
from wadud.messaging import outbox
from wadud.web.ops import worker_listener

__all__ = ["Worker", "in_app", "start_worker", "stop_on_signals"]


class Worker(Protocol):
    """What a worker role runs: started once, closed once on the way out."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


W = TypeVar("W", bound=Worker)


def stop_on_signals() -> asyncio.Event:
    """The event a worker role's process waits on: set by SIGTERM or SIGINT,
    so the role unwinds what it opened."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def start_worker(
    stack: contextlib.AsyncExitStack, settings: Settings, pool: asyncpg.Pool, worker: Worker
) -> None:
    """Start ``worker`` and then its :func:`~wadud.web.ops.worker_listener`, each
    undone as ``stack`` unwinds (the listener first): the last steps of a
    worker role's start, before it waits for its stop. The role runs no
    outbox relay, so the events it writes wake the relays of the API's
    processes (:func:`wadud.messaging.outbox.announcing`)."""
    await stack.enter_async_context(outbox.announcing(pool))
    await worker.start()
    stack.push_async_callback(worker.close)
    await stack.enter_async_context(worker_listener(settings, pool))


@contextlib.asynccontextmanager
async def in_app(app: web.Application, key: web.AppKey[W], worker: W) -> AsyncIterator[W]:
    """Run ``worker`` inside an HTTP role: started, kept under ``key`` for
    the handlers, and closed on the way out, where a failure to close does
    not stop the rest of the shutdown."""
    await worker.start()
    app[key] = worker
    try:
        yield worker
    finally:
        with contextlib.suppress(Exception):
            await worker.close()
