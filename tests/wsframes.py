"""A test WebSocket client for the JSON frame protocols (chat, call signalling):
every frame received is kept, and tests wait for the first one matching a
predicate, already received or still to come."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Self

import aiohttp


@dataclass
class FrameSocket:
    ws: aiohttp.ClientWebSocketResponse
    frames: list[dict[str, Any]] = field(default_factory=list)
    new: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    closed: bool = False

    @classmethod
    @contextlib.asynccontextmanager
    async def opened(cls, session: aiohttp.ClientSession, url: str) -> AsyncIterator[Self]:
        """A socket of this kind to ``url``, reading from the start, closed at the end."""
        client = cls(await session.ws_connect(url, max_msg_size=0))
        client.start()
        try:
            yield client
        finally:
            await client.close()

    def start(self) -> None:
        self.task = asyncio.create_task(self._read())

    async def received(self, frame: dict[str, Any]) -> None:
        """Called with each frame after it is kept; protocols add their habits."""

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = json.loads(msg.data)
                self.frames.append(frame)
                await self.received(frame)
                self.new.set()
        finally:
            self.closed = True
            self.new.set()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(frame, ensure_ascii=False))

    async def wait_for(self, pred: Any, within: float = 10.0) -> dict[str, Any]:
        """The first frame (from now on or already received) matching ``pred``."""
        seen = 0

        async def find() -> dict[str, Any]:
            nonlocal seen
            while True:
                for frame in self.frames[seen:]:
                    if pred(frame):
                        return frame
                seen = len(self.frames)
                if self.closed:
                    raise AssertionError(f"closed before a match; last: {self.frames[-3:]}")
                self.new.clear()
                await self.new.wait()

        return await asyncio.wait_for(find(), within)

    async def reply(self, ref: str, within: float = 10.0) -> dict[str, Any]:
        return await self.wait_for(lambda f: f.get("ref") == ref, within)

    async def close(self) -> None:
        await self.ws.close()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
