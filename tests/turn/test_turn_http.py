"""The TURN credentials endpoint, with the relay ``wadud serve`` embeds:
credentials from the API let aioice's TURN client relay for real."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aioice import turn as aioice_turn

from bin.assembly import build_app, installers
from tests.conftest import Api
from tests.turn.test_turn_server import Collect, EchoPeer
from wadud.api import Role
from wadud.config import Settings


@pytest.fixture
async def serve_api(settings: Settings) -> AsyncIterator[Api]:
    settings = dataclasses.replace(settings, turn_embedded_port=0)
    app = build_app(settings, installers("serve"))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Api(client, app)
    finally:
        await client.close()


async def test_credentials_from_the_api_relay_through_the_embedded_relay(
    serve_api: Api, echo_peer: EchoPeer
) -> None:
    await serve_api.get("/api/v1/turn/credentials", expect=401)
    token = await serve_api.user(Role.PATIENT)
    body = await serve_api.get("/api/v1/turn/credentials", token=token, expect=200)
    (entry,) = body["ice_servers"]
    assert re.fullmatch(r"\d+:[0-9a-f-]{36}", entry["username"])
    assert entry["ttl"] == 14_400
    udp = next(u for u in entry["urls"] if u.endswith("transport=udp"))
    host, port = re.fullmatch(r"turn:([\d.]+):(\d+)\?transport=udp", udp).groups()  # type: ignore[union-attr]
    transport, proto = await aioice_turn.create_turn_endpoint(
        Collect, (host, int(port)), entry["username"], entry["credential"]
    )
    try:
        transport.sendto(b"consultation", echo_peer.address)
        data, _ = await asyncio.wait_for(proto.queue.get(), 2)
        assert data == b"consultation"
    finally:
        transport.close()


async def test_api_role_hands_out_configured_relay(settings: Settings) -> None:
    settings = dataclasses.replace(
        settings, turn_secrets=["s" * 32], turn_urls=["turn:turn.example.com:3478"]
    )
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings)))
    await client.start_server()
    try:
        api = Api(client, client.app)
        token = await api.user(Role.PATIENT)
        body = await api.get("/api/v1/turn/credentials", token=token, expect=200)
        assert body["ice_servers"][0]["urls"] == ["turn:turn.example.com:3478"]
    finally:
        await client.close()


async def test_no_relay_configured_gives_empty_list(api: Api) -> None:
    token = await api.user(Role.PATIENT)
    assert await api.get("/api/v1/turn/credentials", token=token, expect=200) == {"ice_servers": []}
