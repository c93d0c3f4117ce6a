"""Schema migrations: ordered SQL files in ``wadud/migrations``, named
``NNNN_what.sql``, each applied once in its own transaction.

Two nodes starting together both call :func:`migrate`; a session-level
advisory lock makes the second wait for the first and then find nothing left to
do. A file that changed after it was applied is an error, not a silent skip:
migrations are history, and history is appended to, never edited.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from wadud.errors import WadudError

log = logging.getLogger("wadud.migrate")

# Any constant works; this one spells "wadud" so it is recognisable in pg_locks.
LOCK_KEY = 0x7761647564
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(WadudError):
    code = "migration-error"
    title = "Database migration failed"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("wadud.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), entry.name, entry.read_text("utf-8")))
        elif entry.name.endswith(".sql"):
            raise MigrationError(f"migration file {entry.name} does not match NNNN_name.sql")
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def applied(conn: asyncpg.Connection) -> dict[int, tuple[str, str]]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    return {r["version"]: (r["name"], r["checksum"]) for r in rows}


async def pending(conn: asyncpg.Connection) -> list[Migration]:
    done = await applied(conn)
    todo = []
    for m in available():
        if m.version in done:
            if done[m.version][1] != m.checksum:
                raise MigrationError(
                    f"migration {m.name} changed after it was applied; add a new one instead"
                )
        else:
            todo.append(m)
    return todo


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply every pending migration; return the names applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(_TABLE)
        names = []
        for m in await pending(conn):
            log.info("applying migration", extra={"migration": m.name})
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.checksum,
                )
            names.append(m.name)
        return names
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
