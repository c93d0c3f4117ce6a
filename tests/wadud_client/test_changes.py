"""wadud_client.changes: waiting for a client's state, cancellable whenever."""

from __future__ import annotations

import asyncio

import pytest

from wadud_client.changes import Changes


async def test_a_wait_cancelled_as_it_is_woken_ends_cancelled() -> None:
    # On Python 3.11 asyncio.wait_for returns normally when its task is
    # cancelled in the same turn as the future it waits on is set: the wait
    # would go on with its cancellation lost, and a client being closed
    # (its resume watcher in such a wait) would never finish (ci59).
    for _ in range(20):
        changes = Changes(lambda: "client")
        task = asyncio.create_task(changes.wait_until(lambda: False, within=10))
        await asyncio.sleep(0)
        changes.notify()
        task.cancel()
        await asyncio.wait({task}, timeout=2)
        assert task.cancelled()


async def test_a_wait_ends_when_its_condition_holds_or_says_it_timed_out() -> None:
    changes = Changes(lambda: "client c")
    state = {"ready": False}
    waiting = asyncio.create_task(changes.wait_until(lambda: state["ready"], within=5))
    await asyncio.sleep(0)
    state["ready"] = True
    changes.notify()
    await asyncio.wait_for(waiting, 1)
    with pytest.raises(TimeoutError, match=r"^client c: condition not met within 0\.1 s$"):
        await changes.wait_until(lambda: False, within=0.1)
