"""Background work that drains its queue, then waits to be woken."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["drain"]


async def drain(
    step: Callable[[], Awaitable[bool]],
    wake: asyncio.Event,
    interval: float,
    failed: str,
    log: logging.Logger,
) -> None:
    """Run ``step`` for as long as it says it did something; then wait until
    ``wake`` is set or ``interval`` seconds pass, and go again, forever. A
    step that raises is logged (``failed``) and waited out the same way;
    cancellation ends the loop."""
    while True:
        try:
            if await step():
                continue
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(failed)
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), interval)
