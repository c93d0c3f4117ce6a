"""The signalling WebSocket of one participant: the "Calls (signalling)"
protocol's frames in docs/protocol.md, on the client's side.

:class:`CallSocket` opens and drops the WebSocket (a resume opens a new one),
numbers requests and matches the server's answers to them, and reads every
frame the server sends, handing each to its owner (``on_frame``) in order.
What a frame means to the call (the room, the media) is the owner's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from wadud_client.errors import ConnectionClosed, RequestFailed

__all__ = ["PROTOCOL_VERSION", "CallSocket"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1


class CallSocket:
    """One participant's signalling WebSocket.

    ``on_frame`` gets every frame the server sends, one at a time, before the
    next is read; it resolves the request a frame answers with
    :meth:`answered`. ``on_closed`` hears the close code when the server or
    the network ends the socket (not when :meth:`drop` does). ``http``: the
    aiohttp session to connect with (else one of its own, closed by
    :meth:`close`)."""

    def __init__(
        self,
        url: str,
        *,
        on_frame: Callable[[dict[str, Any]], Awaitable[None]],
        on_closed: Callable[[int | None], None],
        request_timeout: float = 10.0,
        label: str = "",
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url
        self.request_timeout = request_timeout
        self.label = label
        self.close_code: int | None = None
        self._on_frame = on_frame
        self._on_closed = on_closed
        self._http = http
        self._own_http = http is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        #: Run on the answer to a request, before the next frame is read.
        self._on_answer: dict[str, Callable[[dict[str, Any]], None]] = {}

    @property
    def connected(self) -> bool:
        """Whether the WebSocket is open."""
        return self._ws is not None and not self._ws.closed

    async def connect(self) -> None:
        """Open the WebSocket and start reading it."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self.close_code = None
        # Bounded: a connect into a cut network would otherwise wait out
        # TCP's retries (minutes).
        async with asyncio.timeout(self.request_timeout):
            self._ws = await self._http.ws_connect(self.url, heartbeat=None, autoping=True)
        self._reader = asyncio.create_task(self._read(self._ws), name=f"call-read {self.label}")

    async def drop(self) -> None:
        """Close the WebSocket (if open); requests waiting for an answer fail."""
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        if ws is not None:
            await ws.close()
        if reader is not None:
            reader.cancel()
            # Not `await reader` under suppress(CancelledError): that would
            # swallow a cancellation of the caller as well, and a client
            # being closed would resume instead (a test's clean-up hung).
            await asyncio.wait({reader})
            error = None if reader.cancelled() else reader.exception()
            if error is not None:
                raise error
        self._fail_pending(ConnectionClosed(ws.close_code if ws else None, "dropped by client"))

    async def close(self) -> None:
        """Close the aiohttp session if it is our own (after :meth:`drop`)."""
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    async def request(
        self,
        type: str,
        fields: dict[str, Any],
        on_answer: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Send a frame with a fresh ``id`` and return the server's answer to
        it; an ``error`` answer raises :class:`RequestFailed`, no answer
        within :attr:`request_timeout` raises TimeoutError. ``on_answer``
        runs on an answer that is not an error, before the next frame is
        read."""
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionClosed(self.close_code, "not connected")
        rid = str(next(self._ids))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        if on_answer is not None:
            self._on_answer[rid] = on_answer
        try:
            await ws.send_str(
                json.dumps({"v": PROTOCOL_VERSION, "type": type, "id": rid, **fields})
            )
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns
            # the answer when the caller is cancelled as it arrives, and the
            # cancellation is lost.
            try:
                async with asyncio.timeout(self.request_timeout):
                    return await fut
            except TimeoutError as exc:
                # Named: a bare TimeoutError (ci168) says nothing of what waited.
                raise TimeoutError(
                    f"{self.label}: no answer to {type!r} within {self.request_timeout:g} s"
                ) from exc
        finally:
            self._pending.pop(rid, None)
            self._on_answer.pop(rid, None)

    async def send(self, type: str, **fields: Any) -> None:
        """Send a frame that has no answer (``pong``)."""
        if self._ws is None or self._ws.closed:
            raise ConnectionClosed(self.close_code, "not connected")
        await self._ws.send_str(json.dumps({"v": PROTOCOL_VERSION, "type": type, **fields}))

    def answered(self, frame: dict[str, Any]) -> None:
        """Resolve the request ``frame`` answers (its ``ref``), if any."""
        kind = frame["type"]
        ref = frame.get("ref")
        fut = self._pending.get(str(ref)) if ref is not None else None
        hook = self._on_answer.pop(str(ref), None) if ref is not None else None
        if hook is not None and kind != "error":
            hook(frame)
        if fut is not None and not fut.done():
            if kind == "error":
                fut.set_exception(
                    RequestFailed(
                        str(frame.get("code")),
                        str(frame.get("message", "")),
                        fatal=bool(frame.get("fatal")),
                        frame=frame,
                    )
                )
            else:
                fut.set_result(frame)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    log.warning("server sent a frame that is not JSON")
                    continue
                if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
                    log.warning("server sent a frame without a type")
                    continue
                await self._on_frame(frame)
        finally:
            if ws is self._ws:
                code = self.close_code = ws.close_code
                self._fail_pending(ConnectionClosed(code))
                self._on_closed(code)

    def _fail_pending(self, exc: BaseException) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
