"""The audit trail: the hash chain, the database's refusals, tamper detection
by ``wadud audit verify`` (a real subprocess), and the audit rows that reads
of patient data, sign-ins and admin actions write."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from privacy import audit
from wadud import db

ROOT = Path(__file__).resolve().parents[2]


async def _connect(url: str) -> asyncpg.Connection:
    return await db.connect(url)


async def _write(
    conn: asyncpg.Connection | asyncpg.Pool, n: int, subject: uuid.UUID | None = None
) -> None:
    for i in range(n):
        await audit.record(
            conn,
            actor=uuid.uuid4(),
            role="clinic_staff",
            action="booking.read",
            subject=subject or uuid.uuid4(),
            clinic=uuid.uuid4(),
            object=f"booking/{uuid.uuid4()}",
            detail={"i": i},
        )


async def test_an_intact_chain_verifies(database_url: str) -> None:
    conn = await _connect(database_url)
    try:
        empty = await audit.verify(conn)
        assert empty.ok and empty.count == 0
        await _write(conn, 5)
        verdict = await audit.verify(conn)
        assert verdict.ok, verdict.problem
        assert verdict.count == 5 and verdict.head_seq == 5
        seqs = [r["seq"] for r in await conn.fetch("SELECT seq FROM audit_log ORDER BY seq")]
        assert seqs == [1, 2, 3, 4, 5]
    finally:
        await conn.close()


async def test_the_database_refuses_update_delete_and_truncate(database_url: str) -> None:
    conn = await _connect(database_url)
    try:
        subject = uuid.uuid4()
        await _write(conn, 2, subject)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE audit_log SET action = 'booking.list' WHERE seq = 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE audit_log SET subject_id = gen_random_uuid() WHERE seq = 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM audit_log WHERE seq = 2")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("TRUNCATE audit_log")
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == 2
        # Erasure's one change is allowed, and the chain still verifies.
        assert await audit.forget_subject(conn, subject) == 2
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE subject_id IS NULL") == 2
        assert (await audit.verify(conn)).ok
    finally:
        await conn.close()


async def test_concurrent_writers_keep_one_chain(database_url: str) -> None:
    """Writers on many connections at once, some rolling back: the chain has
    no gap, no fork, and verifies. Prints the rate (rows/s, one row per
    transaction) as a figure for docs/privacy.md."""
    pool = await asyncpg.create_pool(database_url, min_size=16, max_size=16)
    try:

        async def writer(k: int) -> None:
            for i in range(25):
                async with pool.acquire() as conn:
                    if (k + i) % 7 == 0:
                        tx = conn.transaction()
                        await tx.start()
                        await _write(conn, 1)
                        await tx.rollback()
                    else:
                        await _write(conn, 1)

        start = time.perf_counter()
        await asyncio.gather(*(writer(k) for k in range(16)))
        elapsed = time.perf_counter() - start
        async with pool.acquire() as conn:
            verdict = await audit.verify(conn)
        rolled_back = sum(1 for k in range(16) for i in range(25) if (k + i) % 7 == 0)
        assert verdict.ok, verdict.problem
        assert verdict.count == 16 * 25 - rolled_back
        print(
            f"\naudit rows: {verdict.count} in {elapsed:.2f}s = {verdict.count / elapsed:.0f}/s"
            " from 16 connections"
        )
    finally:
        await pool.close()
