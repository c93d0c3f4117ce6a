"""Synthetic call clients: raw WebSockets speaking docs/protocol.md, no media.

One :class:`Client` is one participant's signalling connection. It reads
every frame into a queue, answers the server's pings, and waits for the
answer to a frame by its ``ref`` (or for a frame type). Nothing here opens a
peer connection: the control plane benchmark measures joins, leaves,
resumes and forwarded frames, which need none.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
from typing import Any

import aiohttp

from benchmarks.common import signalling_frames
from wadud.config import Settings
from wadud.web.auth import RoomGrant, issue_room_token

_ids = itertools.count(1)


def room_token(secret: str, room: str, identity: str, region: str = "") -> str:
    """A doctor's room token (admin, so nobody waits for admission)."""
    now = dt.datetime.now(dt.UTC)
    grant = RoomGrant(
        room=room, identity=identity, name=identity, role="doctor", admin=True, region=region
    )
    return issue_room_token(
        Settings(secret_key=secret),
        grant,
        not_before=now - dt.timedelta(minutes=5),
        expires=now + dt.timedelta(hours=2),
    )


class ClientError(Exception):
    """The server answered with an error frame, or not at all in time."""


class Client:
    """One call WebSocket on one replica."""

    def __init__(self, http: aiohttp.ClientSession, base: str, room: str, token: str) -> None:
        self.http = http
        self.base = base
        self.room = room
        self.token = token
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.session: str | None = None
        self.participant: str | None = None
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        url = self.base.replace("http", "ws", 1) + f"/ws?room={self.room}"
        self.ws = await self.http.ws_connect(url, autoping=True, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for frame in signalling_frames(self.ws):
            kind = frame.get("type")
            key = frame.get("ref") if kind in ("ok", "error", "joined", "waiting") else None
            fut = self._waiters.pop(key, None) if key else None
            if fut is not None and not fut.done():
                fut.set_result(frame)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(ClientError("connection closed"))
        self._waiters.clear()

    async def request(self, frame: dict[str, Any], within: float = 10.0) -> dict[str, Any]:
        """Send ``frame`` and return the frame that answers it (by ``ref``)."""
        assert self.ws is not None
        rid = str(next(_ids))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        await self.ws.send_str(json.dumps({"v": 1, "id": rid, **frame}))
        try:
            async with asyncio.timeout(within):
                answer = await fut
        except TimeoutError:
            self._waiters.pop(rid, None)
            raise ClientError(f"no answer to {frame['type']} within {within:g} s") from None
        if answer.get("type") == "error":
            raise ClientError(f"{answer.get('code')}: {answer.get('message')}")
        return answer

    async def join(self, resume: str | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "join", "token": self.token}
        if resume:
            frame["resume"] = resume
        answer = await self.request(frame)
        if answer["type"] != "joined":
            raise ClientError(f"join answered {answer['type']}")
        self.session = answer.get("session") or self.session
        self.participant = (answer.get("participant") or {}).get("id") or self.participant
        return answer

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self.ws = None
        self._reader = None
