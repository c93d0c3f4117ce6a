"""The PostgreSQL pool, and the embedded PostgreSQL that ``wadud serve`` uses
when no ``database_url`` is configured."""

from __future__ import annotations

import asyncio
import json
import logging
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from wadud import metrics
from wadud.config import Settings

log = logging.getLogger("wadud.db")


@asynccontextmanager
async def embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """Start (or join) a PostgreSQL cluster under ``data_dir/postgres`` from the
    ``pgserver`` wheel and yield its URL; the data survives restarts. The
    server stops when the last process using it lets go."""
    # Imported late: only the embedded default needs it. Its platformdirs
    # warns when XDG_RUNTIME_DIR is unset (root, containers), which is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from pgserver.postgres_server import get_server

    path = (data_dir / "postgres").resolve()
    path.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    log.info("starting embedded PostgreSQL", extra={"pgdata": str(path)})
    server = await loop.run_in_executor(None, lambda: get_server(path, cleanup_mode="stop"))
    try:
        yield str(server.get_uri())
    finally:
        await loop.run_in_executor(None, server.cleanup)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects, so no handler calls json.dumps itself.
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename,
            encoder=lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":")),
            decoder=json.loads,
            schema="pg_catalog",
        )


async def connect(url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(url)
    await _init_connection(conn)
    return conn


@asynccontextmanager
async def pool(settings: Settings, url: str) -> AsyncIterator[asyncpg.Pool]:
    p: asyncpg.Pool = await asyncpg.create_pool(
        url,
        min_size=settings.database_pool_min,
        max_size=settings.database_pool_max,
        init=_init_connection,
        # Every server-side timestamp is UTC; clients convert for display.
        server_settings={"timezone": "UTC", "application_name": "wadud"},
        command_timeout=30,
    )
    metrics.POOLS.pools.add(p)
    try:
        yield p
    finally:
        metrics.POOLS.pools.discard(p)
        try:
            # A connection some task failed to release must not hold the
            # shutdown hostage: after a grace period, close them by force.
            await asyncio.wait_for(p.close(), 10)
        except TimeoutError:
            log.warning("database pool did not close in 10 s; terminating connections")
            p.terminate()


def record(row: asyncpg.Record | None) -> dict[str, Any] | None:
    return None if row is None else dict(row)
