"""The TURN credentials endpoint, with the relay ``wadud serve`` embeds:
credentials from the API let aioice's TURN client relay for real."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aioice import stun as aioice_stun
from aioice import turn as aioice_turn

from bin.assembly import build_app, installers
from tests.conftest import Api, served
from tests.turn.test_turn_server import Collect, EchoPeer, echoed
from wadud.config import Settings
from wadud.web.api import Role


@pytest.fixture
async def serve_api(settings: Settings) -> AsyncIterator[Api]:
    settings = dataclasses.replace(settings, turn_embedded_port=0)
    app = build_app(settings, installers("serve"))
    async with served(app) as api:
        yield api


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
    assert await echoed(transport, proto, echo_peer.address, b"consultation") == b"consultation"


async def test_api_role_hands_out_configured_relay(settings: Settings) -> None:
    settings = dataclasses.replace(
        settings, turn_secrets=["s" * 32], turn_urls=["turn:turn.example.com:3478"]
    )
    async with served(build_app(settings)) as api:
        token = await api.user(Role.PATIENT)
        body = await api.get("/api/v1/turn/credentials", token=token, expect=200)
        assert body["ice_servers"][0]["urls"] == ["turn:turn.example.com:3478"]


async def test_no_relay_configured_gives_empty_list(api: Api) -> None:
    token = await api.user(Role.PATIENT)
    assert await api.get("/api/v1/turn/credentials", token=token, expect=200) == {"ice_servers": []}


async def test_turn_credentials_per_user(api: Api) -> None:
    token = await api.user(Role.PATIENT)
    auth = {"Authorization": f"Bearer {token}"}
    statuses = [
        (await api.client.get("/api/v1/turn/credentials", headers=auth)).status for _ in range(25)
    ]
    assert statuses[:20] == [200] * 20 and set(statuses[20:]) == {429}
    other = await api.user(Role.PATIENT)
    await api.get("/api/v1/turn/credentials", token=other, expect=200)


async def test_anonymous_sessions_from_one_address_cannot_take_120_relays(
    serve_api: Api, echo_peer: EchoPeer
) -> None:
    """Issue 12, finding 5: 120 relay allocations from one IP in 0.4 s, each
    from a fresh anonymous session with its own quota. Now sessions are
    limited per address and each holds a small quota of its own."""
    relays: list[Any] = []
    refusals: list[int] = []
    refused_sessions = 0
    try:
        for _ in range(120):
            resp = await serve_api.client.post("/api/v1/auth/anonymous", json={})
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
                refused_sessions += 1
                continue
            token = (await resp.json())["access_token"]
            body = await serve_api.get("/api/v1/turn/credentials", token=token, expect=200)
            (entry,) = body["ice_servers"]
            assert re.fullmatch(r"\d+:anon-[0-9a-f-]{36}", entry["username"])
            udp = next(u for u in entry["urls"] if u.endswith("transport=udp"))
            host, port = re.fullmatch(r"turn:([\d.]+):(\d+)\?transport=udp", udp).groups()  # type: ignore[union-attr]
            # More than its quota from every session, each with the same
            # credential or a fresh one: the count is per user.
            for fresh in (False, True, True):
                if fresh:
                    again = await serve_api.get("/api/v1/turn/credentials", token=token)
                    entry = again["ice_servers"][0]
                try:
                    transport, _ = await aioice_turn.create_turn_endpoint(
                        Collect, (host, int(port)), entry["username"], entry["credential"]
                    )
                except aioice_stun.TransactionFailed as exc:
                    refusals.append(exc.response.attributes["ERROR-CODE"][0])
                else:
                    relays.append(transport)
        assert refused_sessions >= 100
        assert len(relays) <= 10 * 2 < 120
        assert refusals == [486] * (len(relays) // 2)
        # What was granted still relays.
        relays[0].sendto(b"still works", echo_peer.address)
        await asyncio.sleep(0.2)
        assert any(data == b"still works" for data, _ in echo_peer.seen)
    finally:
        for t in relays:
            t.close()
