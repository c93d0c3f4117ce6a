"""The audit trail: the hash chain, the database's refusals, tamper detection
by ``wadud audit verify`` (a real subprocess), and the audit rows that reads
of patient data, sign-ins and admin actions write."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from privacy import audit
from tests.booking.bookings.test_bookings import local, requested
from tests.booking.factories import Clinic, Doctor, make_clinic
from tests.conftest import Api
from wadud.state import db, keys
from wadud.web.api import Role

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


async def _write_rows(url: str, n: int) -> None:
    """``n`` audit rows, on a connection of their own."""
    conn = await _connect(url)
    try:
        await _write(conn, n)
    finally:
        await conn.close()


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


# -- `wadud audit verify`, a real subprocess ---------------------------------------


def wadud(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bin.main", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _as_superuser(url: str, sql: str) -> None:
    """Bypass the table's triggers, as only a superuser can (replica mode)."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(sql)
    finally:
        await conn.close()


async def test_verify_names_an_altered_row(database_url: str, tmp_path: Path) -> None:
    await _write_rows(database_url, 6)
    env = {"WADUD_DATABASE_URL": database_url}
    intact = wadud("audit", "verify", "--data-dir", str(tmp_path), env=env)
    assert intact.returncode == 0, intact.stderr
    assert "intact: 6 rows" in intact.stdout

    await _as_superuser(database_url, """UPDATE audit_log SET detail = '{"i":99}' WHERE seq = 3""")
    broken = wadud("audit", "verify", "--data-dir", str(tmp_path), env=env)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "broken at row 3" in broken.stdout and "altered" in broken.stdout


async def test_verify_names_a_deleted_row(database_url: str, tmp_path: Path) -> None:
    await _write_rows(database_url, 5)
    await _as_superuser(database_url, "DELETE FROM audit_log WHERE seq = 4")
    broken = wadud("audit", "verify", "--data-dir", str(tmp_path),
                   env={"WADUD_DATABASE_URL": database_url})  # fmt: skip
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "broken at row 4: row 4 is missing" in broken.stdout


async def test_verify_names_a_row_whose_hash_was_recomputed(database_url: str) -> None:
    """Rewriting a row and its own hash (as the algorithm is public) breaks
    the next row's link; re-pointing a subject breaks its digest."""
    conn = await _connect(database_url)
    try:
        await _write(conn, 4)
        await _as_superuser(
            database_url,
            """UPDATE audit_log SET action = 'booking.list',
                   hash = sha256(
                       (SELECT hash FROM audit_log WHERE seq = 1)
                       || convert_to(audit_content(seq, at, actor_id, actor_role, 'booking.list',
                                     clinic_id, object, subject_digest, detail), 'UTF8'))
               WHERE seq = 2""",
        )
        verdict = await audit.verify(conn)
        assert (verdict.bad_seq, verdict.count) == (3, 2), verdict
    finally:
        await conn.close()


async def test_verify_with_the_embedded_database_of_a_data_dir(tmp_path: Path) -> None:
    """`--data-dir D` alone: the embedded PostgreSQL under D, as `wadud serve` left it."""
    done = wadud("migrate", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    async with db.embedded_postgres(tmp_path) as url:
        conn = await _connect(url)
        try:
            await _write(conn, 3)
        finally:
            await conn.close()
        intact = wadud("audit", "verify", "--data-dir", str(tmp_path))
        assert intact.returncode == 0, intact.stdout + intact.stderr
        assert "intact: 3 rows" in intact.stdout
        await _as_superuser(url, "UPDATE audit_log SET actor_role = 'admin' WHERE seq = 2")
        broken = wadud("audit", "verify", "--data-dir", str(tmp_path))
        assert broken.returncode == 1 and "broken at row 2" in broken.stdout, broken.stdout


# -- what the API writes ------------------------------------------------------------


async def test_staff_reads_and_changes_are_audited_and_shown(
    api: Api, clinic: Clinic, doctor: Doctor
) -> None:
    other_clinic = await make_clinic(api, name="Other")
    patient, bid, _ = await requested(api, doctor, local(2, "10:00"))
    pool = api.app[keys.DB]
    patient_id = await pool.fetchval("SELECT patient_id FROM bookings WHERE id = $1",
                                     uuid.UUID(bid))  # fmt: skip

    # The patient's own reads are not accesses.
    await api.get(f"/api/v1/bookings/{bid}", token=patient, expect=200)
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE action LIKE 'booking.%'") == 0

    await api.get(f"/api/v1/bookings/{bid}", token=clinic.staff_token, expect=200)
    rows = await pool.fetch("SELECT * FROM audit_log WHERE action = 'booking.read'")
    assert len(rows) == 1
    row = rows[0]
    assert row["subject_id"] == patient_id
    assert str(row["clinic_id"]) == clinic.id
    assert row["object"] == f"booking/{bid}"
    assert row["actor_role"] == "clinic_staff"
    await api.get("/api/v1/bookings", token=doctor.token, expect=200)
    await api.post(f"/api/v1/bookings/{bid}/accept", token=doctor.token, expect=200)

    # The patient sees who accessed their data; nobody else's rows.
    mine = await api.get("/api/v1/me/audit", token=patient, expect=200)
    actions = [r["action"] for r in mine["items"]]
    assert actions == ["booking.accept", "booking.list", "booking.read"]
    assert {r["actor_role"] for r in mine["items"]} == {"doctor", "clinic_staff"}
    page = await api.get("/api/v1/me/audit?limit=2", token=patient, expect=200)
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = await api.get(f"/api/v1/me/audit?limit=2&cursor={page['next_cursor']}",
                         token=patient, expect=200)  # fmt: skip
    assert [r["action"] for r in rest["items"]] == ["booking.read"] and rest["next_cursor"] is None

    # Staff see their clinic's rows, not another clinic's; admins choose.
    theirs = await api.get("/api/v1/audit", token=clinic.staff_token, expect=200)
    assert {r["clinic_id"] for r in theirs["items"]} == {clinic.id}
    # The three accesses, and the staff member's and the doctor's sign-ins.
    assert sorted(r["action"] for r in theirs["items"]) == [
        "auth.signin",
        "auth.signin",
        "booking.accept",
        "booking.list",
        "booking.read",
    ]
    others = await api.get("/api/v1/audit", token=other_clinic.staff_token, expect=200)
    assert all(r["clinic_id"] == other_clinic.id for r in others["items"])
    await api.get(f"/api/v1/audit?clinic_id={clinic.id}", token=other_clinic.staff_token,
                  expect=403)  # fmt: skip
    await api.get("/api/v1/audit", token=doctor.token, expect=403)
    await api.get("/api/v1/audit", token=patient, expect=403)

    async with pool.acquire() as conn:
        assert (await audit.verify(conn)).ok


async def test_admin_actions_and_sign_ins_are_audited(api: Api) -> None:
    admin = await api.user(Role.ADMIN)
    pool = api.app[keys.DB]
    created = await api.post("/api/v1/clinics", {"name": "New", "region": "QA"}, token=admin,
                             expect=201)  # fmt: skip
    await api.post("/api/v1/clinics", {"name": "", "region": "QA"}, token=admin, expect=422)
    rows = await pool.fetch(
        "SELECT object, detail FROM audit_log WHERE action = 'admin.request' ORDER BY seq"
    )
    details = [json.loads(r["detail"]) for r in rows]
    assert [(d["method"], d["route"], d["status"]) for d in details] == [
        ("POST", "/api/v1/clinics", 201),
        ("POST", "/api/v1/clinics", 422),
    ]
    await api.patch(f"/api/v1/clinics/{created['id']}", {"name": "Renamed"}, token=admin,
                    expect=200)  # fmt: skip
    last = await pool.fetchrow("SELECT * FROM audit_log ORDER BY seq DESC LIMIT 1")
    assert last["object"] == f"clinics/{created['id']}"
    # An admin's reads are not admin actions (reads of patient data are
    # audited where they happen).
    before = await pool.fetchval("SELECT count(*) FROM audit_log")
    await api.get("/api/v1/clinics", token=admin, expect=200)
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == before

    # Sign-ins: success and failure, an unknown account by nothing personal.
    await api.post("/api/v1/auth/login", {"email": "nobody@example.test", "password": "x" * 8},
                   expect=401)  # fmt: skip
    failed = await pool.fetchrow(
        "SELECT * FROM audit_log WHERE action = 'auth.signin_failed' ORDER BY seq DESC LIMIT 1"
    )
    assert failed["actor_id"] is None and json.loads(failed["detail"]) == {
        "reason": "unknown-account"
    }
    signins = await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'auth.signin'")
    assert signins == 1  # the admin's
    all_rows = await api.get("/api/v1/audit?limit=500", token=admin, expect=200)
    assert {"admin.request", "auth.signin", "auth.signin_failed"} <= {
        r["action"] for r in all_rows["items"]
    }


async def test_staff_reads_of_a_patient_s_chat_are_audited(api: Api) -> None:
    from tests.chat.conftest import make_world

    w = await make_world(api)
    conv = f"/api/v1/chat/conversations/{w.conversation_id}"
    pool = api.app[keys.DB]
    await api.post(conv + "/messages", {"client_id": "m1", "body": "fever since Monday"},
                   token=w.patient_token, expect=201)  # fmt: skip
    await api.get(conv + "/events?after=0", token=w.patient_token, expect=200)
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE action LIKE 'chat.%'") == 0
    await api.get(conv + "/events?after=0", token=w.doctor.token, expect=200)
    await api.get(conv + "/events", token=w.clinic.staff_token, expect=200)
    rows = await pool.fetch("SELECT * FROM audit_log WHERE action = 'chat.read' ORDER BY seq")
    assert [r["actor_role"] for r in rows] == ["doctor", "clinic_staff"]
    assert {str(r["subject_id"]) for r in rows} == {w.patient_id}
    assert {r["object"] for r in rows} == {f"conversation/{w.conversation_id}"}
    # Nothing of the message itself went into the chain.
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE detail LIKE '%fever%'") == 0
