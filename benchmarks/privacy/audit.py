"""Audit trail write rate against a real PostgreSQL (the pgserver wheel).

The chain's trigger serialises audited transactions (privacy/audit.py), so
this measures what that costs: C connections each committing one-row
transactions, into ``audit_log`` through ``privacy.audit.record`` and, for
comparison, into a plain table with a bigserial key; then ``verify`` over
what was written. Figures, not assertions: quote medians of a few runs.

    .venv/bin/python -m benchmarks.privacy.audit [--clients 16] [--rows 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.common import ROOT
from privacy import audit
from wadud.state import (
    db,
    migrate,
)


async def _rate(pool: asyncpg.Pool, clients: int, rows: int, write: Any) -> float:
    per = rows // clients

    async def client() -> None:
        for _ in range(per):
            await write(pool)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return per * clients / (time.perf_counter() - start)


async def _audit_row(pool: asyncpg.Pool) -> None:
    await audit.record(
        pool,
        actor=uuid.uuid4(),
        role="clinic_staff",
        action="booking.read",
        subject=uuid.uuid4(),
        clinic=uuid.uuid4(),
        object=f"booking/{uuid.uuid4()}",
    )


async def _plain_row(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO bench_plain (v) VALUES ($1)", str(uuid.uuid4()))


async def run(url: str, clients: int, rows: int) -> dict[str, Any]:
    conn = await db.connect(url)
    try:
        await migrate.migrate(conn)
        await conn.execute("CREATE TABLE bench_plain (id bigserial PRIMARY KEY, v text)")
        settings = {k: await conn.fetchval(f"SHOW {k}") for k in ("fsync", "synchronous_commit")}
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(url, min_size=clients, max_size=clients)
    try:
        plain = await _rate(pool, clients, rows, _plain_row)
        audited = await _rate(pool, clients, rows, _audit_row)
        async with pool.acquire() as c:
            start = time.perf_counter()
            verdict = await audit.verify(c)
            verify_s = time.perf_counter() - start
    finally:
        await pool.close()
    assert verdict.ok, verdict.problem
    return {
        "clients": clients,
        "rows": rows,
        "postgres": settings,
        "plain_rows_per_s": round(plain),
        "audit_rows_per_s": round(audited),
        "verify_rows": verdict.count,
        "verify_rows_per_s": round(verdict.count / verify_s),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/audit.json"))
    args = ap.parse_args()
    from pgserver.postgres_server import get_server

    with tempfile.TemporaryDirectory(prefix="wadud-audit-bench-") as tmp:
        server = get_server(Path(tmp) / "pg", cleanup_mode="stop")
        try:
            result = asyncio.run(run(server.get_uri(), args.clients, args.rows))
        finally:
            server.cleanup()
    for key, value in result.items():
        print(f"{key:>20}: {value}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
