from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.conftest import PgCluster
from wadud.state import db, migrate


async def test_concurrent_migrations_apply_once(pg_cluster: PgCluster) -> None:
    admin = await asyncpg.connect(pg_cluster.url())
    await admin.execute("DROP DATABASE IF EXISTS mig_race WITH (FORCE)")
    await admin.execute("CREATE DATABASE mig_race")
    try:
        url = pg_cluster.url("mig_race")
        conns = [await db.connect(url) for _ in range(4)]
        results = await asyncio.gather(*(migrate.migrate(c) for c in conns))
        applied = [name for r in results for name in r]
        assert sorted(applied) == sorted(m.name for m in migrate.available())
        assert await migrate.pending(conns[0]) == []
        rows = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert rows == len(migrate.available())
        # A migration edited after it was applied is refused.
        await conns[0].execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
        with pytest.raises(migrate.MigrationError, match="changed"):
            await migrate.migrate(conns[0])
        for c in conns:
            await c.close()
    finally:
        await admin.execute("DROP DATABASE IF EXISTS mig_race WITH (FORCE)")
        await admin.close()
