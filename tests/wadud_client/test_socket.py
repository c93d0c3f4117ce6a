"""wadud_client.socket: a request the server leaves unanswered says which."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from wadud_client.socket import CallSocket


async def test_an_unanswered_request_times_out_naming_itself() -> None:
    heard: list[str] = []

    async def silent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                heard.append(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", silent)

    async def on_frame(frame: dict[str, Any]) -> None:
        pass

    async with TestServer(app) as server:
        socket = CallSocket(
            str(server.make_url("/ws")),
            on_frame=on_frame,
            on_closed=lambda code: None,
            request_timeout=0.2,
            label="pt-1",
        )
        await socket.connect()
        try:
            with pytest.raises(TimeoutError, match=r"^pt-1: no answer to 'publish' within 0.2 s$"):
                await socket.request("publish", {"sdp": "v=0"})
        finally:
            await socket.drop()
            await socket.close()
    assert len(heard) == 1 and '"type": "publish"' in heard[0]
