"""Running an HTTP role (``wadud serve``, ``wadud api``) until SIGINT or
SIGTERM, and a stop that ends within bounds whatever its peers do.

A stop asked for is a clean stop: exit status 0 and nothing above a
warning in the log. It goes in three steps:

1. the listening sockets close, WebSockets are closed with 1001
   (``on_shutdown``) and requests in flight get up to ``shutdown_timeout``
   to finish (an idle server skips this at once);
2. the cleanup contexts unwind, newest first (:mod:`wadud.web.app`), for at most
   :data:`CLEANUP_WITHIN` seconds. A step still waiting then (on a database
   or a Redis that died or stopped answering, whose connections only time
   out after tens of seconds) is cancelled, and so is each one after it
   that waits: their resources go with the process. A step that must not
   be left half done sees it through despite the cut (the embedded
   PostgreSQL is told to stop, :func:`wadud.state.db.embedded_postgres`);
3. the process ends at once (:func:`exit_now`), without the interpreter's
   own teardown, which spent more than a second collecting the garbage of
   a large heap on a loaded two-core host and can wait on threads and
   tasks that the cut-short steps left behind.

aiohttp's ``run_app`` is not used: its handlers raise ``GracefulExit``, a
``SystemExit`` with status 1, from whatever the loop runs at that moment,
so a second Ctrl-C during a slow cleanup ended the process with status 1
(``make: *** [run] Error 1``) and left the rest of the cleanup undone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["CLEANUP_WITHIN", "bounded", "exit_now", "run"]

log = logging.getLogger("wadud.serving")

#: Seconds the cleanup contexts get, all together, once requests are done:
#: with every peer answering they take a few tens of milliseconds.
CLEANUP_WITHIN = 1.2
#: Seconds between two cancellations of a cleanup past its time: each one
#: ends the step that waits at that moment, and the next step begins.
_CUT_EVERY = 0.01
#: Seconds after which cleanup is abandoned, however many steps are left:
#: longer than what a step sees through despite a cut (the embedded
#: PostgreSQL's stop: wadud.state.db._STOP_WAIT, after pgserver's lock on its
#: list of users, which other processes on a busy host held for seconds).
_ABANDON_AFTER = 5.0


def run(
    app: web.Application,
    host: str,
    port: int,
    announce: Callable[[], None],
    shutdown_timeout: float,
) -> int:
    """Serve ``app`` on ``host``:``port`` on a uvloop until SIGINT or
    SIGTERM; then stop (module docstring) and give 0. An error that stops
    the app from starting is raised, once what had started is undone."""
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(_serve(app, host, port, announce, shutdown_timeout))


async def _serve(
    app: web.Application,
    host: str,
    port: int,
    announce: Callable[[], None],
    shutdown_timeout: float,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    asked: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        if asked:
            log.info("already stopping", extra={"signal": sig.name})
            return
        asked.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    # Imported here: a media worker uses bounded and exit_now, never aiohttp.
    from aiohttp import web

    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    started = asyncio.create_task(_start(runner, host, port), name="start")
    stopping = asyncio.create_task(stop.wait(), name="stop-signal")
    await asyncio.wait({started, stopping}, return_when=asyncio.FIRST_COMPLETED)
    failed = started.exception() if started.done() else None
    if failed is not None:
        stopping.cancel()
    elif not started.done():
        # Asked to stop while starting (a database that is slow to come up):
        # what started is undone below, as after a full start.
        started.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await started
    else:
        announce()
        await stopping
    if asked:
        log.info("stopping", extra={"signal": asked[0]})
    await _stop(runner, app, shutdown_timeout)
    if failed is not None:
        # What started is undone above; the caller says why it failed.
        raise failed
    log.info("stopped")
    return 0


async def _start(runner: web.AppRunner, host: str, port: int) -> None:
    from aiohttp import web

    await runner.setup()
    await web.TCPSite(runner, host, port).start()


async def _stop(runner: web.AppRunner, app: web.Application, shutdown_timeout: float) -> None:
    for site in list(runner.sites):
        await site.stop()
    server = runner.server
    if server is not None:
        # Requests accepted just before the sockets closed begin first.
        await asyncio.sleep(0)
        server.pre_shutdown()
        await runner.shutdown()
        await server.shutdown(shutdown_timeout)
    await bounded(app.cleanup(), CLEANUP_WITHIN)


async def bounded(cleanup: Coroutine[Any, Any, Any], within: float) -> None:
    """Await ``cleanup`` (step 2 of the module docstring, for any process
    that stops: an HTTP role's cleanup contexts, a media worker's exit
    stack); past ``within`` seconds, cancel the step it waits on, again and
    again, until it is done or :data:`_ABANDON_AFTER` more seconds have
    passed. The first cut logs where the step waited."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(cleanup, name="cleanup")
    done, _ = await asyncio.wait({task}, timeout=within)
    cut = 0
    if not done:
        log.warning("stop: cleanup waits past %.1f s at %s", within, _waiting_at(task))
    give_up = loop.time() + _ABANDON_AFTER
    while not done and loop.time() < give_up:
        task.cancel()
        cut += 1
        done, _ = await asyncio.wait({task}, timeout=_CUT_EVERY)
    if not done:
        log.warning(
            "stop: cleanup abandoned after %.1f s; the process ends with it",
            within + _ABANDON_AFTER,
        )
        return
    failed = task.exception() if not task.cancelled() else None
    if cut:
        # The peers are gone or frozen: what waited on them is cut short.
        log.warning(
            "stop: cleanup took more than %.1f s; %d waiting step(s) cut short",
            within,
            cut,
        )
    elif failed is not None:
        log.warning("stop: a cleanup step failed: %r", failed)


def _waiting_at(task: asyncio.Task[Any]) -> str:
    """Where ``task`` waits: each coroutine it awaits through, outermost
    first, as ``function (file:line)``, down to the first awaitable that is
    not a coroutine (a future, a lock's waiter). A suspended task's own
    stack shows only its outermost frame."""
    frames: list[str] = []
    awaited: Any = task.get_coro()
    while (frame := getattr(awaited, "cr_frame", None)) is not None and len(frames) < 40:
        code = frame.f_code
        frames.append(f"{code.co_name} ({os.path.basename(code.co_filename)}:{frame.f_lineno})")
        awaited = awaited.cr_await
    return " > ".join(frames) or "?"


def exit_now(code: int) -> None:
    """End the process with ``code`` now, logs and output flushed (module
    docstring, step 3)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
