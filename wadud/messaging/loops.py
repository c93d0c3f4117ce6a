"""Background work that drains its queue, then waits to be woken."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

__all__ = [
    "background",
    "drain",
    "every",
    "go_on",
    "seconds_until",
    "settle",
    "stopped",
    "woken",
]

T = TypeVar("T")


def go_on() -> None:
    """Raise CancelledError if the running task was asked to stop and goes on
    all the same; a loop calls this once a round.

    On Python 3.11 ``asyncio.wait_for`` returns its result, and the task
    goes on, when the task is cancelled in the same turn that the result
    arrives: the cancellation is lost. Our own code does not use it
    (:func:`woken`), but libraries do (aiosmtplib waits for every SMTP reply
    so, asyncpg some of its calls), and a loop that lost its cancellation
    runs for ever while whoever stops it (:func:`stopped`) waits. The
    request is still counted (``Task.cancelling()``), since nothing took it
    back: asyncio.timeout and TaskGroup take back only their own."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def seconds_until(at: dt.datetime | None, now: dt.datetime) -> float | None:
    """What a queue's ``due`` tells :func:`drain`: the seconds from ``now``
    until its next piece of work comes due at ``at`` (0 or less: due now),
    None when nothing waits (``at`` is None)."""
    return None if at is None else (at - now).total_seconds()


async def drain(
    step: Callable[[], Awaitable[bool]],
    wake: asyncio.Event,
    interval: float,
    failed: str,
    log: logging.Logger,
    due: Callable[[], Awaitable[float | None]] | None = None,
) -> None:
    """Run ``step`` for as long as it says it did something; then wait until
    ``wake`` is set or ``interval`` seconds pass, and go again, forever. A
    step that raises is logged (``failed``) and waited out the same way;
    cancellation ends the loop. A wake that comes while a step runs brings
    another step: the event is cleared before each step, not after it.

    With ``due``, the queue says when its next piece of work comes due: the
    seconds until then (0 or less: now), or None when nothing waits. Work
    that waits for its time (a retry after a backoff) is then done at that
    time, not at the next poll, and ``interval`` only bounds how long work
    no wake announced waits. A wait that ran out with no wake asks ``due``
    first, and the step runs only if something is due: an idle poll is one
    cheap statement instead of a claim's transaction. ``due`` may say "now"
    when the step then finds nothing (a row another replica holds), never
    later than the step would find work; after such a miss the loop waits
    ``interval``, not 0."""
    run = True
    while True:
        wake.clear()
        wait = interval
        try:
            if not run and due is not None:
                ahead = await due()
                run = ahead is not None and ahead <= 0
                if ahead is not None and ahead > 0:
                    wait = min(interval, ahead)
            if run or due is None:
                if await step():
                    run = True
                    continue
                if due is not None:
                    # The queue is drained of what is due: sleep until the next.
                    ahead = await due()
                    if ahead is not None and ahead > 0:
                        wait = min(interval, ahead)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(failed)
        go_on()
        # Woken, or the wait ended at a due time: the step runs at once.
        run = await woken(wake, wait) or wait < interval


async def every(
    interval: float,
    step: Callable[[], Awaitable[object]],
    failed: str,
    log: logging.Logger,
    *,
    first: float | None = None,
) -> None:
    """Wait ``interval`` seconds, run ``step``, and go again, forever. A step
    that raises is logged (``failed``) and the next one runs on time;
    cancellation ends the loop. ``first``: the wait before the first step
    instead (0: at once)."""
    wait = interval if first is None else first
    while True:
        go_on()
        await asyncio.sleep(wait)
        wait = interval
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(failed)


async def woken(event: asyncio.Event, within: float) -> bool:
    """Wait until ``event`` is set or ``within`` seconds pass; whether it was set.

    Not ``asyncio.wait_for``: on Python 3.11 it returns normally when the
    waiting task is cancelled just as the event is set, so a loop around it
    never sees its cancellation and whoever cancelled it waits forever (seen
    in a test's outbox relay on a busy machine). ``asyncio.timeout`` cancels
    only its own scope."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await event.wait()
    return event.is_set()


async def settle(fut: asyncio.Future[T], call: Callable[[], Awaitable[T]]) -> None:
    """Run ``call``, a queued request, and give its outcome to ``fut``, the
    request's answer, unless that is done already (its caller gave up).
    Cancelled meanwhile, ``fut`` is cancelled too and the cancellation goes on."""
    try:
        result = await call()
    except asyncio.CancelledError:
        fut.cancel()
        raise
    except Exception as exc:
        if not fut.done():
            fut.set_exception(exc)
    else:
        if not fut.done():
            fut.set_result(result)


async def stopped(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel every task (a None is skipped), then wait until each has
    finished: its cancellation ends here, any other error it ends with is
    raised. A cancellation of the caller itself goes on: awaiting a
    cancelled task inside ``suppress(CancelledError)`` would swallow it too,
    and a close that cannot be cancelled hangs whoever waits for it."""
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    if not running:
        return
    await asyncio.wait(running)
    for task in running:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


@contextlib.asynccontextmanager
async def background(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """Run ``work`` as a task named ``name`` for the life of the ``async
    with`` block (an aiohttp cleanup context's span); stopped on the way out."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        await stopped(task)
