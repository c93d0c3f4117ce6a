"""Waiting in a test for something that happens in the background: a frame
decoded, a row written, a mail delivered."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    check: Callable[[], T | Awaitable[T]], within: float = 10.0, every: float = 0.02
) -> T:
    """Call ``check`` (plain or async) every ``every`` seconds until it gives
    something truthy and return that; TimeoutError after ``within`` seconds,
    naming the check (a bare one says nothing in a rerun's one-line report:
    ci160 and ci169 reran tests on one)."""
    try:
        async with asyncio.timeout(within):
            while True:
                got = check()
                if inspect.isawaitable(got):
                    got = await got
                if got:
                    return got
                await asyncio.sleep(every)
    except TimeoutError as exc:
        raise TimeoutError(f"not true within {within:g} s: {_named(check)}") from exc


def _named(check: Callable[..., object]) -> str:
    """Where ``check`` is written and its first line, or its name."""
    with contextlib.suppress(OSError, TypeError):
        lines, number = inspect.getsourcelines(check)
        where = f"{os.path.basename(inspect.getsourcefile(check) or '?')}:{number}"
        return f"{where} {lines[0].strip()}"
    return getattr(check, "__qualname__", repr(check))


class Steps:
    """Where a bounded block is: ``steps.at("name")`` before each wait."""

    def __init__(self) -> None:
        self.now = "start"

    def at(self, name: str) -> None:
        self.now = name


def _task_stacks() -> str:
    """Every task's whole stack, also written to a file in the temporary
    directory: a failure's summary line (and a rerun's report) cuts the
    message, and a hang is found by the one task whose stack is unexpected."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(file=out)
    text = out.getvalue()
    fd, path = tempfile.mkstemp(prefix="bounded-stacks-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return f"(every task's stack is also in {path})\n{text}"


@contextlib.asynccontextmanager
async def bounded(seconds: float) -> AsyncIterator[Steps]:
    """Run the block within ``seconds``; past that, fail naming the step it
    was at and what every task was awaiting at that moment. pytest-timeout,
    the only other bound, ends the whole xdist worker and so says nothing."""
    loop = asyncio.get_running_loop()
    steps = Steps()
    bound = asyncio.timeout(None)
    stacks: list[str] = []

    def expire() -> None:
        stacks.append(_task_stacks())  # before the cancel unwinds them
        bound.reschedule(loop.time())

    timer = loop.call_later(seconds, expire)
    try:
        async with bound:
            yield steps
    except TimeoutError:
        if bound.expired():
            raise AssertionError(
                f"stuck for {seconds:g} s at: {steps.now}\n{''.join(stacks)}"
            ) from None
        raise
    finally:
        timer.cancel()
