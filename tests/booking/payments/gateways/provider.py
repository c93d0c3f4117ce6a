"""A payment provider's fake served over loopback, so a gateway under test
talks HTTP to it as it does to the real provider."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer


@contextlib.asynccontextmanager
async def provider_at(
    routes: Iterable[web.AbstractRouteDef],
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """``routes`` served on a free loopback port for the length of the block:
    their base URL (no trailing slash) and a client session for the gateway."""
    app = web.Application()
    app.add_routes(routes)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        yield str(server.make_url("")).rstrip("/"), http
