"""Background loops: a cancelled loop ends, even when it is woken as it is
cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging

import pytest

from wadud.messaging import loops


async def _forever(wake: asyncio.Event, rounds: list[int]) -> None:
    while True:
        rounds.append(1)
        wake.clear()
        await loops.woken(wake, 10)


async def test_a_loop_woken_as_it_is_cancelled_still_ends() -> None:
    # On Python 3.11, asyncio.wait_for returns normally when its task is
    # cancelled in the same turn as the event it waits on is set: the loop
    # would go round again with its cancellation lost, and ``await task``
    # would never return.
    for _ in range(50):
        wake, rounds = asyncio.Event(), []
        task = asyncio.create_task(_forever(wake, rounds))
        await asyncio.sleep(0)
        assert rounds == [1]
        wake.set()
        await asyncio.sleep(0)  # the waiter's wake-up is now scheduled
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2)
        assert done == {task} and task.cancelled()


async def test_woken_says_whether_the_event_came() -> None:
    wake = asyncio.Event()
    assert not await loops.woken(wake, 0.01)
    asyncio.get_running_loop().call_later(0.01, wake.set)
    assert await loops.woken(wake, 5)


async def test_drain_steps_while_there_is_work_then_waits_for_a_wake() -> None:
    wake, steps = asyncio.Event(), []
    work = [True, True, False]

    async def step() -> bool:
        steps.append(1)
        return work.pop(0) if work else False

    task = asyncio.create_task(
        loops.drain(step, wake, 30, "step failed", __import__("logging").getLogger("t"))
    )
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(steps) == 3:
            break
    assert len(steps) == 3  # two that did something, one that did not
    wake.set()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(steps) == 4:
            break
    assert len(steps) == 4
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert done == {task}


async def test_drain_keeps_a_wake_that_comes_while_a_step_runs() -> None:
    # A wake during a step that then finds nothing (a webhook enqueued just
    # after the sender's claim looked) is not lost until the next interval.
    wake, steps = asyncio.Event(), []
    looking = asyncio.Event()
    finish = asyncio.Event()

    async def step() -> bool:
        steps.append(1)
        if len(steps) == 1:
            looking.set()
            await finish.wait()
        return False

    task = asyncio.create_task(
        loops.drain(step, wake, 3600, "step failed", __import__("logging").getLogger("t"))
    )
    try:
        await asyncio.wait_for(looking.wait(), 5)
        wake.set()  # while the first step runs
        finish.set()
        for _ in range(500):
            if len(steps) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(steps) == 2
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=2)


async def test_settle_gives_a_request_s_outcome_to_its_answer() -> None:
    loop = asyncio.get_running_loop()

    async def answer() -> int:
        return 7

    async def fail() -> int:
        raise ValueError("no")

    ok: asyncio.Future[int] = loop.create_future()
    await loops.settle(ok, answer)
    assert ok.result() == 7
    failed: asyncio.Future[int] = loop.create_future()
    await loops.settle(failed, fail)
    assert isinstance(failed.exception(), ValueError)
    # A caller that gave up already keeps its answer; nothing is raised here.
    gave_up: asyncio.Future[int] = loop.create_future()
    gave_up.cancel()
    await loops.settle(gave_up, fail)
    assert gave_up.cancelled()


async def test_settle_cancelled_cancels_the_answer_too() -> None:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[None] = loop.create_future()
    task = asyncio.create_task(loops.settle(answer, lambda: asyncio.sleep(10)))
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert done == {task} and task.cancelled()
    assert answer.cancelled()


async def test_stopped_ends_its_tasks_and_keeps_its_callers_own_cancellation() -> None:
    # A close that awaits a cancelled task inside suppress(CancelledError)
    # swallows its own cancellation too: whoever cancels the close (a test's
    # clean-up, a drain's deadline) waits for ever (ci59's region cut).
    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)
            raise

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    closer = asyncio.create_task(loops.stopped(task, None))
    await asyncio.sleep(0.05)
    closer.cancel()
    await asyncio.wait({closer}, timeout=2)
    assert closer.cancelled()
    await asyncio.wait({task}, timeout=2)
    assert task.cancelled()


async def test_stopped_raises_what_a_task_ended_with() -> None:
    async def fails() -> None:
        raise ValueError("broken")

    ended = asyncio.create_task(fails())
    await asyncio.sleep(0)
    running = asyncio.create_task(asyncio.sleep(10))
    with pytest.raises(ValueError, match=r"^broken$"):
        await loops.stopped(ended, running)
    assert running.cancelled()


class _Queue:
    """A queue as drain sees it: ``step`` finds nothing, ``due`` answers
    from ``answers`` (then None), and both are logged in ``calls``."""

    def __init__(self, *answers: float | None) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []
        self.at: list[float] = []
        self._steps: dict[int, asyncio.Event] = {}

    async def due(self) -> float | None:
        self.calls.append("due")
        return self.answers.pop(0) if self.answers else None

    async def step(self) -> bool:
        self.calls.append("step")
        self.at.append(asyncio.get_running_loop().time())
        self._steps.setdefault(self.calls.count("step"), asyncio.Event()).set()
        return False

    async def reached(self, n: int) -> None:
        await asyncio.wait_for(self._steps.setdefault(n, asyncio.Event()).wait(), 5)


def _drain(queue: _Queue, wake: asyncio.Event, interval: float) -> asyncio.Task[None]:
    log = __import__("logging").getLogger("t")
    return asyncio.create_task(
        loops.drain(queue.step, wake, interval, "step failed", log, due=queue.due)
    )


async def test_drain_asks_when_work_is_due_before_a_poll_no_one_woke_but_not_after_a_wake() -> None:
    # An idle poll is one cheap statement (due), not a claim's transaction; a
    # wake means work came, so the step runs at once.
    queue = _Queue(None, None, 0)
    polls = _drain(queue, asyncio.Event(), 0.01)
    try:
        await queue.reached(2)
        # After the first step, "when is the next?"; two polls find nothing
        # waiting, the third finds something due.
        assert queue.calls[:5] == ["step", "due", "due", "due", "step"]
    finally:
        polls.cancel()
        await asyncio.wait([polls], timeout=2)
    queue, wake = _Queue(), asyncio.Event()
    woken = _drain(queue, wake, 3600)
    try:
        await queue.reached(1)
        wake.set()
        await queue.reached(2)
        assert queue.calls[:3] == ["step", "due", "step"]
    finally:
        woken.cancel()
        await asyncio.wait([woken], timeout=2)


async def test_drain_steps_when_the_next_piece_of_work_comes_due_not_at_the_poll() -> None:
    # A retry due in 50 ms runs then, under an hour's poll interval, and the
    # step runs without asking again: the wait ended at the due time.
    queue = _Queue(0.05)
    task = _drain(queue, asyncio.Event(), 3600)
    try:
        await queue.reached(2)
        assert queue.calls[:3] == ["step", "due", "step"]
        assert queue.at[1] - queue.at[0] >= 0.05
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=2)


async def test_drain_waits_its_interval_after_due_work_the_step_did_not_find() -> None:
    # "Due now" that the step misses (a row another replica holds, or one
    # the claim leaves for later) must not spin the loop.
    queue = _Queue(*[0.0] * 10)
    task = _drain(queue, asyncio.Event(), 0.2)
    try:
        await queue.reached(3)
        gaps = [b - a for a, b in itertools.pairwise(queue.at[:3])]
        assert min(gaps) >= 0.2, gaps
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=2)


def test_seconds_until_says_how_far_ahead_work_is_due_or_none() -> None:
    now = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
    assert loops.seconds_until(now + dt.timedelta(seconds=90), now) == 90.0
    assert loops.seconds_until(now - dt.timedelta(milliseconds=250), now) == -0.25
    assert loops.seconds_until(None, now) is None


async def test_a_loop_whose_step_lost_its_cancellation_still_ends() -> None:
    """A step that returns normally although its task was cancelled, as a
    library's asyncio.wait_for does on Python 3.11 when its result comes in
    the same turn as the cancel (aiosmtplib waits for each SMTP reply so):
    drain, every and a listener's round end at their next round, and
    stopped returns, where before the loop slept its hour and stopped waited."""
    inside = asyncio.Event()

    async def lossy() -> bool:
        inside.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        return False

    log = logging.getLogger("test")
    for loop in (
        loops.drain(lossy, asyncio.Event(), 3600.0, "failed", log),
        loops.drain(lossy, asyncio.Event(), 3600.0, "failed", log, due=_never_due),
        loops.every(0.0, lossy, "failed", log),
    ):
        inside.clear()
        task = asyncio.create_task(loop)
        await inside.wait()
        async with asyncio.timeout(5):
            await loops.stopped(task)
        assert task.cancelled()


async def _never_due() -> float | None:
    return None


async def test_go_on_raises_only_for_a_task_asked_to_stop() -> None:
    loops.go_on()  # not cancelled: nothing happens
    # asyncio.timeout takes back its own cancellation: the loop goes on.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)
    loops.go_on()


async def test_every_waits_its_interval_first_unless_told_a_first_wait() -> None:
    ran = asyncio.Event()
    rounds: list[float] = []

    async def step() -> None:
        rounds.append(asyncio.get_running_loop().time())
        ran.set()

    log = logging.getLogger("test")
    waiting = asyncio.create_task(loops.every(3600.0, step, "failed", log))
    at_once = asyncio.create_task(loops.every(3600.0, step, "failed", log, first=0))
    async with asyncio.timeout(5):
        await ran.wait()
    for _ in range(10):
        await asyncio.sleep(0)
    # The one told first=0 stepped once and waits its hour; the other still
    # waits its first.
    assert len(rounds) == 1
    await loops.stopped(waiting, at_once)
