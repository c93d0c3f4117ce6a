"""Issue 12, finding 3: the idempotency layer must not weaken sign-in.

The three attacks of the review, as it ran them: a refresh replayed with the
same Idempotency-Key, the replay table read for tokens, and a second caller
reusing a key on ``/auth/anonymous``."""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bin.assembly import build_app, in_process
from tests.conftest import Api, served
from wadud.config import Settings
from wadud.state import keys
from wadud.web.api import ApiModel, Call, Routes


@dataclasses.dataclass
class Caller:
    """A client of the app under test from its own loopback address."""

    session: aiohttp.ClientSession
    base: str

    async def post(self, path: str, body: Any, headers: dict[str, str]) -> aiohttp.ClientResponse:
        resp = await self.session.post(self.base + path, json=body, headers=headers)
        await resp.read()
        return resp


@pytest.fixture
async def other_caller(api: Api) -> AsyncIterator[Caller]:
    """Someone else: the same server reached from 127.0.0.2."""
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield Caller(session, str(api.client.make_url("")).rstrip("/"))


async def test_replayed_refresh_runs_for_real_and_reuse_revokes_the_session(api: Api) -> None:
    await api.post(
        "/api/v1/auth/register", {"email": "r@example.test", "password": "long enough pw"}
    )
    tokens = await api.post(
        "/api/v1/auth/login",
        {"email": "r@example.test", "password": "long enough pw"},
        expect=200,
    )
    h = {"Idempotency-Key": "refresh-1"}
    body = {"refresh_token": tokens["refresh_token"]}
    first = await api.post("/api/v1/auth/refresh", body, headers=h, expect=200)
    # The thief's copy, sent with the same key: not the first answer again but
    # the spent token presented twice, which ends the whole session.
    resp = await api.client.post("/api/v1/auth/refresh", json=body, headers=h)
    assert resp.status == 401, await resp.text()
    assert "Idempotent-Replayed" not in resp.headers
    assert (await resp.json(content_type=None))["code"] == "refresh-token-reused"
    await api.get("/api/v1/me", token=first["access_token"], expect=401)
    await api.post("/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]}, expect=401)


async def test_replay_table_holds_no_tokens(api: Api) -> None:
    issued: list[str] = []

    async def sign_in(path: str, body: Any, key: str, token: str | None = None) -> Any:
        got = await api.post(path, body, headers={"Idempotency-Key": key}, token=token)
        issued.extend([got["access_token"], got["refresh_token"]])
        return got

    anon = await sign_in("/api/v1/auth/anonymous", {"display_name": "A"}, "k-anon")
    await sign_in(
        "/api/v1/auth/register",
        {"email": "t@example.test", "password": "long enough pw"},
        "k-upgrade",
        token=anon["access_token"],
    )
    await sign_in(
        "/api/v1/auth/register", {"email": "u@example.test", "password": "long enough pw"}, "k-reg"
    )
    login = await sign_in(
        "/api/v1/auth/login", {"email": "u@example.test", "password": "long enough pw"}, "k-login"
    )
    await sign_in("/api/v1/auth/refresh", {"refresh_token": login["refresh_token"]}, "k-ref")
    await api.post(
        "/api/v1/auth/logout",
        token=login["access_token"],
        headers={"Idempotency-Key": "k-out"},
        expect=204,
    )
    rows = await api.app[keys.DB].fetch("SELECT path, body FROM idempotency_keys")
    stored = b"".join(bytes(r["body"] or b"") for r in rows)
    assert not [t for t in issued if t.encode() in stored]
    assert not [r["path"] for r in rows if r["path"].startswith("/api/v1/auth/")]


async def test_another_caller_reusing_a_key_gets_its_own_anonymous_session(
    api: Api, other_caller: Caller
) -> None:
    h = {"Idempotency-Key": "shared-key"}
    mine = await api.post("/api/v1/auth/anonymous", {"display_name": "Guest"}, headers=h)
    resp = await other_caller.post("/api/v1/auth/anonymous", {"display_name": "Guest"}, h)
    assert resp.status == 201
    assert "Idempotent-Replayed" not in resp.headers
    theirs = json.loads(await resp.text())
    assert theirs["user_id"] != mine["user_id"]
    assert mine["access_token"] not in await resp.text()


_echo = Routes("test", "A public route that answers something new each time.")


class _Fresh(ApiModel):
    value: str


@_echo.post("/api/v1/test/fresh", returns=_Fresh, status=201, auth="public")
async def _fresh(call: Call[None, None]) -> _Fresh:
    """Something new each time."""
    return _Fresh(value=secrets.token_hex(8))


async def test_unauthenticated_keys_are_scoped_to_the_caller(
    settings: Settings, other_caller: Caller
) -> None:
    """Where a public endpoint replays, a key replays only to the address that
    first sent it."""
    app = build_app(settings, [*in_process(), _echo.install])
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        other_caller.base = str(client.make_url("")).rstrip("/")
        h = {"Idempotency-Key": "fresh-1"}
        first = await client.post("/api/v1/test/fresh", json={}, headers=h)
        assert first.status == 201, await first.text()
        again = await client.post("/api/v1/test/fresh", json={}, headers=h)
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert await again.json() == await first.json()
        elsewhere = await other_caller.post("/api/v1/test/fresh", {}, h)
        assert "Idempotent-Replayed" not in elsewhere.headers
        assert json.loads(await elsewhere.text()) != await first.json()
    finally:
        await client.close()


async def test_routes_whose_answers_hold_tokens_are_never_stored(api: Api) -> None:
    """The demo's join links (room tokens) with an Idempotency-Key: each call
    runs for real and nothing of it is kept for replay."""
    settings = dataclasses.replace(api.app[keys.SETTINGS], call_demo=True)
    async with served(build_app(settings)) as demo:
        first = await demo.post("/api/v1/calls/demo", headers={"Idempotency-Key": "d1"}, expect=200)
        again = await demo.post("/api/v1/calls/demo", headers={"Idempotency-Key": "d1"}, expect=200)
        assert first["room"] != again["room"]
        stored = await demo.app[keys.DB].fetchval("SELECT count(*) FROM idempotency_keys")
        assert stored == 0
