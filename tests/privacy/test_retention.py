"""Retention: each rule deletes exactly what is past its period (a dry run
only counts), stored files go with their rows, one process at a time holds
the round's advisory lock, the scheduled task runs inside the app, and
``wadud retention run`` works as a command."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from bin.assembly import build_app, retention_rules
from privacy import retention
from tests.booking.factories import make_clinic, make_doctor
from tests.chat.conftest import make_booking, make_patient
from tests.conftest import Api
from wadud.config import Settings
from wadud.state import keys
from wadud.state.storage import storage_of

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n" + b"retention " * 30
DAY = dt.timedelta(days=1)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        retention_chat_days=7,
        retention_expired_holds_days=30,
        retention_webhook_days=180,
        retention_sessions_days=30,
        retention_notify_days=90,
        outbox_retention=86400.0,
        retention_batch=2,  # several batches for a handful of rows
        retention_interval=0,
    )


_slot = iter(range(1, 1000))


async def _booking(pool: asyncpg.Pool, doctor_id: str, patient_id: str) -> str:
    """An accepted booking of the doctor, each at a time of its own."""
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + next(_slot) * DAY
    return await make_booking(pool, doctor_id, patient_id, start)


async def _conversation(api: Api, doctor: Any, *, attach: bool) -> tuple[str, str | None]:
    token, pid = await make_patient(api)
    bid = await _booking(api.app[keys.DB], doctor.id, pid)
    conv = await api.post("/api/v1/chat/conversations", {"booking_id": bid}, token=token)
    base = f"/api/v1/chat/conversations/{conv['id']}"
    await api.post(f"{base}/messages", {"client_id": "1", "body": "hello"}, token=token, expect=201)
    key = None
    if attach:
        headers = {"Content-Type": "image/png"}
        att = await api.post(
            f"{base}/attachments", data=PNG, headers=headers, token=token, expect=201
        )
        key = await api.app[keys.DB].fetchval(
            "SELECT storage_key FROM chat_attachments WHERE id = $1", uuid.UUID(att["id"])
        )
    return conv["id"], key


@dataclasses.dataclass
class Aged:
    old: dict[str, list[Any]]
    fresh: dict[str, list[Any]]
    files: dict[str, str]


async def _age_world(api: Api) -> Aged:
    """Of each data class, rows past their period and rows within it."""
    pool: asyncpg.Pool = api.app[keys.DB]
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic)
    now = dt.datetime.now(dt.UTC)
    old_conv, old_file = await _conversation(api, doctor, attach=True)
    new_conv, new_file = await _conversation(api, doctor, attach=True)
    await pool.execute(
        "UPDATE chat_conversations SET last_event_at = $2 WHERE id = $1",
        uuid.UUID(old_conv),
        now - 8 * DAY,
    )
    # Booking holds: one lapsed long ago, one lapsed yesterday, one lapsed
    # long ago but paid for (a payment intent points at it: kept).
    _, pid = await make_patient(api)
    holds = []
    for days_ago in (40, 1, 40):
        bid = await _booking(pool, doctor.id, pid)
        await pool.execute(
            "UPDATE bookings SET status = 'expired', updated_at = $2 WHERE id = $1",
            uuid.UUID(bid),
            now - days_ago * DAY,
        )
        holds.append(bid)
    await pool.execute(
        """INSERT INTO payment_intents (clinic_id, booking_id, patient_id, amount_minor, currency,
               gateway, status, expires_at)
           SELECT clinic_id, id, patient_id, price_minor, currency, 'sandbox', 'cancelled', now()
           FROM bookings WHERE id = $1""",
        uuid.UUID(holds[2]),
    )
    hooks = []
    for days_ago in (200, 10):
        ev = f"evt-{uuid.uuid4().hex[:8]}"
        await pool.execute(
            """INSERT INTO webhook_events (gateway, event_id, received_at, payload)
               VALUES ('sandbox', $1, $2, '{}')""",
            ev,
            now - days_ago * DAY,
        )
        hooks.append(ev)
    uid = uuid.UUID(pid)
    fams = []
    for days_ago in (40, 2):
        fams.append(
            await pool.fetchval(
                """INSERT INTO token_families (user_id, created_at, revoked_at, revoked_reason)
                   VALUES ($1, $2, $2, 'logout') RETURNING id""",
                uid,
                now - days_ago * DAY,
            )
        )
    outbox = []
    for age in (3 * DAY, DAY / 10):
        outbox.append(
            await pool.fetchval(
                """INSERT INTO outbox (topic, payload, published_at)
                   VALUES ('test.retention', '{}', $1) RETURNING id""",
                now - age,
            )
        )
    jobs = []
    for age in (100 * DAY, 5 * DAY):
        key = f"event:{uuid.uuid4().hex}"
        await pool.execute(
            """INSERT INTO notify_jobs (key, event_id, recipient_id, template, params, due_at,
                   state, created_at, done_at)
               VALUES ($1, $1, $2, 'payment_receipt', '{}', $3, 'done', $3, $3)""",
            key,
            uid,
            now - age,
        )
        jobs.append(key)
    reports = []
    for days_ago in (100, 10):
        bid = uuid.UUID(await _booking(pool, doctor.id, pid))
        await pool.execute(
            """INSERT INTO call_reports (booking_id, clinic_id, started_at, ended_at, ready_at)
               SELECT id, clinic_id, $2, $2, $2 FROM bookings WHERE id = $1""",
            bid,
            now - days_ago * DAY,
        )
        reports.append(bid)
    recordings = []
    for days_ago in (100, 10):
        bid = uuid.UUID(await _booking(pool, doctor.id, pid))
        recordings.append(
            await pool.fetchval(
                """INSERT INTO recordings (id, booking_id, clinic_id, patient_id, room, state,
                       key_id, key_nonce, key_sealed, created_at, stopped_at, ready_at)
                   SELECT gen_random_uuid(), id, clinic_id, patient_id, 'booking-x', 'ready',
                          's:00', '\\x00', '\\x00', $2, $2, $2
                   FROM bookings WHERE id = $1 RETURNING id""",
                bid,
                now - days_ago * DAY,
            )
        )
    assert old_file is not None and new_file is not None
    return Aged(
        old={
            "chat": [uuid.UUID(old_conv)],
            "expired_holds": [uuid.UUID(holds[0])],
            "webhook_events": [hooks[0]],
            "sessions": [fams[0]],
            "outbox": [outbox[0]],
            "notify_log": [jobs[0]],
            "call_reports": [reports[0]],
            "recordings": [recordings[0]],
        },
        fresh={
            "chat": [uuid.UUID(new_conv)],
            "expired_holds": [uuid.UUID(holds[1]), uuid.UUID(holds[2])],
            "webhook_events": [hooks[1]],
            "sessions": [fams[1]],
            "outbox": [outbox[1]],
            "notify_log": [jobs[1]],
            "call_reports": [reports[1]],
            "recordings": [recordings[1]],
        },
        files={"old": old_file, "new": new_file},
    )


_EXISTS = {
    "chat": "SELECT count(*) FROM chat_conversations WHERE id = ANY($1::uuid[])",
    "expired_holds": "SELECT count(*) FROM bookings WHERE id = ANY($1::uuid[])",
    "webhook_events": "SELECT count(*) FROM webhook_events WHERE event_id = ANY($1::text[])",
    "sessions": "SELECT count(*) FROM token_families WHERE id = ANY($1::uuid[])",
    "outbox": "SELECT count(*) FROM outbox WHERE id = ANY($1::bigint[])",
    "notify_log": "SELECT count(*) FROM notify_jobs WHERE key = ANY($1::text[])",
    "call_reports": "SELECT count(*) FROM call_reports WHERE booking_id = ANY($1::uuid[])",
    "recordings": "SELECT count(*) FROM recordings WHERE id = ANY($1::uuid[])",
}


async def _count(pool: asyncpg.Pool, rule: str, ids: list[Any]) -> int:
    n: int = await pool.fetchval(_EXISTS[rule], ids)
    return n


def _rules() -> list[retention.Rule]:
    return [*retention.core_rules(), *retention_rules()]


async def test_each_rule_deletes_what_is_past_its_period(api: Api, settings: Settings) -> None:
    w = await _age_world(api)
    pool: asyncpg.Pool = api.app[keys.DB]
    store = storage_of(api.app)
    assert {r.name for r in _rules()} == set(_EXISTS)

    async with pool.acquire() as conn:
        dry = await retention.run(conn, _rules(), settings, storage=store, dry_run=True)
    assert dry is not None
    assert {o.rule: o.rows for o in dry} == dict.fromkeys(_EXISTS, 1)
    for rule, ids in w.old.items():
        assert await _count(pool, rule, ids) == len(ids), f"dry run deleted {rule}"

    async with pool.acquire() as conn:
        done = await retention.run(conn, _rules(), settings, storage=store)
    assert done is not None
    assert {o.rule: o.rows for o in done} == dict.fromkeys(_EXISTS, 1)
    for rule in _EXISTS:
        assert await _count(pool, rule, w.old[rule]) == 0, rule
        assert await _count(pool, rule, w.fresh[rule]) == len(w.fresh[rule]), rule
    # The idle conversation's attachment left the store; the live one's stayed.
    uploads = settings.data_dir / "uploads"
    names = {p.name for p in uploads.rglob("*") if p.is_file()}
    assert w.files["new"] in names and w.files["old"] not in names
    # Nothing left to do: a second round deletes nothing.
    async with pool.acquire() as conn:
        again = await retention.run(conn, _rules(), settings, storage=store)
    assert again is not None and all(o.rows == 0 for o in again)


async def test_zero_days_keeps_the_class(api: Api, settings: Settings) -> None:
    w = await _age_world(api)
    pool: asyncpg.Pool = api.app[keys.DB]
    kept = dataclasses.replace(settings, retention_chat_days=0)
    async with pool.acquire() as conn:
        done = await retention.run(conn, _rules(), kept, storage=storage_of(api.app))
    assert done is not None
    assert {o.rule: o.days for o in done}["chat"] == 0
    assert await _count(pool, "chat", w.old["chat"]) == 1


async def test_one_round_at_a_time(api: Api, settings: Settings) -> None:
    pool: asyncpg.Pool = api.app[keys.DB]
    async with pool.acquire() as holder, pool.acquire() as other:
        await holder.execute("SELECT pg_advisory_lock($1)", retention.LOCK_KEY)
        # Another replica's scheduled round skips ...
        skipped = await retention.run(other, _rules(), settings, storage=None, wait=False)
        assert skipped is None
        # ... and `wadud retention run` waits for the lock.
        waiting = asyncio.create_task(retention.run(other, _rules(), settings, storage=None))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await holder.execute("SELECT pg_advisory_unlock($1)", retention.LOCK_KEY)
        assert await asyncio.wait_for(waiting, 10) is not None


async def test_the_scheduled_round_runs_inside_the_app(settings: Settings) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    app: web.Application = build_app(dataclasses.replace(settings, retention_interval=0.2))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        pool: asyncpg.Pool = app[keys.DB]
        old = await pool.fetchval(
            """INSERT INTO outbox (topic, payload, published_at)
               VALUES ('test.retention', '{}', now() - interval '3 days') RETURNING id"""
        )
        for _ in range(100):
            if not await pool.fetchval("SELECT count(*) FROM outbox WHERE id = $1", old):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the scheduled retention round never deleted the old row")
    finally:
        await client.close()


def test_wadud_retention_run_command(settings: Settings, database_url: str) -> None:
    env = {
        **os.environ,
        "WADUD_DATABASE_URL": database_url,
        "WADUD_SECRET_KEY": settings.secret_key,
        "WADUD_DATA_DIR": str(settings.data_dir),
        "WADUD_RETENTION_CHAT_DAYS": "7",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bin.main", "retention", "run", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert {line.split()[0] for line in lines} == set(_EXISTS)
    assert all("would delete" in line for line in lines)
    chat = next(line for line in lines if line.startswith("chat "))
    assert "7 days" in chat
