"""Behind a load balancer (trusted_proxies): per-address limits count the
client's address from X-Forwarded-For, not the balancer's, and a request that
bypasses the balancer is refused."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bin.assembly import build_app
from tests.conftest import served
from wadud.config import Settings


@pytest.fixture
async def behind(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    proxied = dataclasses.replace(settings, trusted_proxies=["127.0.0.1"], limits_anonymous_burst=3)
    async with served(build_app(proxied)) as api:
        yield api.client


async def _anonymous(client: TestClient[Any, Any], forwarded: str | None) -> int:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    resp = await client.post("/api/v1/auth/anonymous", json={}, headers=headers)
    return resp.status


async def test_limits_count_the_forwarded_client_not_the_balancer(
    behind: TestClient[Any, Any],
) -> None:
    # Three patients behind the same balancer each get their own allowance.
    for patient in ("198.51.100.7", "203.0.113.9", "192.0.2.44"):
        assert [await _anonymous(behind, patient) for _ in range(3)] == [201] * 3
    assert await _anonymous(behind, "198.51.100.7") == 429
    # What a client wrote itself (left of the hop the balancer added) does
    # not count: a forged address buys no fresh allowance.
    assert await _anonymous(behind, "10.9.9.9, 203.0.113.9") == 429


async def test_behind_an_untrusted_peer_the_header_is_ignored(settings: Settings) -> None:
    """A request straight from a client (not through the balancer) cannot
    pick its address with a header."""
    elsewhere = dataclasses.replace(
        settings, trusted_proxies=["192.0.2.1"], limits_anonymous_burst=2
    )
    async with served(build_app(elsewhere)) as api:
        statuses = [await _anonymous(api.client, f"198.51.100.{n}") for n in range(3)]
        assert statuses == [201, 201, 429]
