"""A stop's cleanup ends within bounds whatever one step waits on
(wadud.web.serving.bounded), and says where that step waited.

A drained media worker's exit stack is unwound through ``bounded``, like an
HTTP role's cleanup contexts: a close that waits on a peer must not hold the
drain until the supervisor kills the worker and the node exits 1, and the
log must say what it waited on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from wadud.web import serving


async def _peer_that_never_answers(never: asyncio.Event) -> None:
    await never.wait()


async def _close_the_client(never: asyncio.Event) -> None:
    await _peer_that_never_answers(never)


async def test_a_step_that_never_ends_is_cut_and_the_steps_after_it_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = asyncio.Event()
    closed: list[str] = []

    async def close(name: str) -> None:
        closed.append(name)

    stack = contextlib.AsyncExitStack()
    stack.push_async_callback(close, "opened first")
    stack.push_async_callback(_close_the_client, never)
    stack.push_async_callback(close, "opened last")
    loop = asyncio.get_running_loop()
    began = loop.time()
    with caplog.at_level(logging.WARNING, logger="wadud.serving"):
        await serving.bounded(stack.aclose(), 0.2)
    took = loop.time() - began
    # Newest first, the hung step cut, and the one opened before it closed too.
    assert closed == ["opened last", "opened first"]
    assert took < 0.2 + 1.0, took
    waits = [r.getMessage() for r in caplog.records if "waits past" in r.getMessage()]
    assert len(waits) == 1, caplog.text
    # Where: through the exit stack into the step, down to what it awaited.
    assert "_close_the_client (test_serving_bounded.py:" in waits[0], waits[0]
    where = f"_peer_that_never_answers (test_serving_bounded.py:{_LINE_OF_THE_WAIT}) > wait ("
    assert where in waits[0], waits[0]
    assert "cut short" in caplog.text


async def test_a_cleanup_that_ends_in_time_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    stack = contextlib.AsyncExitStack()
    stack.push_async_callback(asyncio.sleep, 0.01)
    with caplog.at_level(logging.INFO, logger="wadud.serving"):
        await serving.bounded(stack.aclose(), 1.0)
    assert caplog.records == []


#: The line of ``never.wait()`` above.
_LINE_OF_THE_WAIT = _peer_that_never_answers.__code__.co_firstlineno + 1
