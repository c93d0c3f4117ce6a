"""Waiting in a test for something that happens in the background: a frame
decoded, a row written, a mail delivered."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    check: Callable[[], T | Awaitable[T]], within: float = 10.0, every: float = 0.02
) -> T:
    """Call ``check`` (plain or async) every ``every`` seconds until it gives
    something truthy and return that; TimeoutError after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            got = check()
            if inspect.isawaitable(got):
                got = await got
            if got:
                return got
            await asyncio.sleep(every)
