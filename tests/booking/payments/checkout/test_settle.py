"""A paid checkout settled in one statement (booking.payments.checkout.settle) against
a real PostgreSQL: it writes exactly what the general path writes, and when
the booking or the intent moves between its read and its write, or the same
delivery lands meanwhile, it writes nothing and leaves the case to the
general path."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid
from collections.abc import Awaitable
from typing import Any

import asyncpg
import pytest

from booking.payments.checkout import settle, webhooks
from booking.payments.gateway import Verdict, WebhookEvent
from booking.payments.keys import GATEWAYS
from booking.payments.postings import ledger_is_balanced
from tests.booking.factories import Doctor, make_clinic, make_doctor
from tests.booking.payments.checkout.test_payments_api import (
    anon_patient,
    booking_status,
    held_booking,
    pool_of,
    set_commission,
    start_payment,
)
from tests.booking.payments.checkout.test_webhooks import (
    count,
    deliver,
    paid_webhook,
    sandbox,
    status_of,
)
from tests.conftest import Api

BP = 1500


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _settle(conn: asyncpg.Connection, event: WebhookEvent) -> Awaitable[settle.Settled | None]:
    """Settle a sandbox webhook as the webhook path does, with no commission."""
    return settle.settle(
        conn, "sandbox", event, Verdict.of_webhook(event), default_bp=0, now=_now()
    )


async def _paid_event(api: Api, doctor: Doctor) -> tuple[str, dict[str, Any], WebhookEvent]:
    """A live payment of a held booking, and the verified webhook saying it
    was paid: (booking id, payment, event)."""
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    payment = await start_payment(api, token, booking)
    body, headers = paid_webhook(api, payment)
    return booking, payment, await sandbox(api).parse_webhook(body, headers, _now())


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_EVT = re.compile(r"evt_[0-9a-f]+")
_SBX = re.compile(r"sbx_[A-Za-z0-9_-]+")
#: Payload keys whose values differ between two bookings by design.
_VARY = frozenset({"starts_at", "ends_at", "phone_pin"})


def _shape(value: Any, names: dict[str, str]) -> Any:
    """``value`` with every id replaced by its role in the test (``names``)
    or a placeholder, so two settlements of two payments compare equal."""
    if isinstance(value, dict):
        return {
            k: "varies" if k in _VARY else _shape(v, names)
            for k, v in value.items()
            if k != "manage_token"
        }
    if isinstance(value, list | tuple):
        return [_shape(v, names) for v in value]
    if isinstance(value, uuid.UUID):
        value = str(value)
    if isinstance(value, str):
        value = _SBX.sub("sbx", _EVT.sub("evt", value))
        return _UUID.sub(lambda m: names.get(m.group(0), "id"), value)
    return value


async def _written(conn: asyncpg.Connection, booking: str, payment: dict[str, Any]) -> Any:
    """Everything a settlement writes about one payment, in order."""
    bid, pid = uuid.UUID(booking), uuid.UUID(payment["id"])
    names = {booking: "booking", payment["id"]: "payment"}
    intent = await conn.fetchrow(
        "SELECT status, amount_minor, refunded_minor FROM payment_intents WHERE id = $1", pid
    )
    moved = await conn.fetchrow(
        "SELECT status, manage_token_hash IS NOT NULL AS token FROM bookings WHERE id = $1", bid
    )
    history = await conn.fetch(
        """SELECT event, from_state, to_state, detail FROM payment_events
           WHERE payment_intent_id = $1 ORDER BY id""",
        pid,
    )
    lines = await conn.fetch(
        """SELECT event, from_state, to_state, actor_id, detail FROM booking_events
           WHERE booking_id = $1 ORDER BY id""",
        bid,
    )
    entries = await conn.fetch(
        """SELECT t.kind, t.reference, t.booking_id, e.account, e.amount_minor, e.currency
           FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id
           WHERE t.payment_intent_id = $1 ORDER BY e.id""",
        pid,
    )
    events = await conn.fetch(
        """SELECT o.topic, o.payload, o.payload ? 'manage_token' AS token,
                  i.event_id IS NOT NULL AS inboxed
           FROM outbox o LEFT JOIN notify_inbox i ON i.event_id = o.id
           WHERE o.payload->>'booking_id' = $1 AND o.topic NOT IN ('payment.created')
           ORDER BY o.id""",
        booking,
    )
    deliveries = await conn.fetch(
        "SELECT gateway, payload->'data'->>'intent' AS intent FROM webhook_events"
        " WHERE payload->'data'->>'intent' = $1",
        payment["id"],
    )
    return _shape(
        {
            "intent": dict(intent),
            "booking": dict(moved),
            "history": [dict(r) for r in history],
            "lines": [dict(r) for r in lines],
            "ledger": [dict(r) for r in entries],
            "events": [dict(r) for r in events],
            "deliveries": [dict(r) for r in deliveries],
        },
        names,
    )


@pytest.mark.parametrize("from_state", ["processing", "requires_payment"])
async def test_one_statement_writes_what_the_general_path_writes(api: Api, from_state: str) -> None:
    clinic = await make_clinic(api)
    await set_commission(api, clinic, BP, 250)
    doctor = await make_doctor(api, clinic, fee_minor=99_999)
    pool = pool_of(api)
    short = await _paid_event(api, doctor)
    general = await _paid_event(api, doctor)
    for _, payment, _ in (short, general):
        await pool.execute(
            "UPDATE payment_intents SET status = $2 WHERE id = $1",
            uuid.UUID(payment["id"]),
            from_state,
        )
    registry = api.app[GATEWAYS]
    async with pool.acquire() as conn:
        done = await _settle(conn, short[2])
        assert done == settle.Settled(False, uuid.UUID(short[1]["id"]), "succeeded")
        outcome = await webhooks._apply_webhook(
            conn, registry, registry.get("sandbox"), general[2], 0
        )
        assert (outcome.duplicate, outcome.status) == (False, "succeeded")
        one = await _written(conn, short[0], short[1])
        other = await _written(conn, general[0], general[1])
        assert one == other
        assert await ledger_is_balanced(conn)
    # What the comparison covered, spelled out once.
    assert one["intent"]["status"] == "succeeded"
    assert one["booking"] == {"status": "requested", "token": True}
    assert [h["event"] for h in one["history"]] == (
        ["create", "redirect", "redirect", "verified_success"]
        if from_state == "requires_payment"
        else ["create", "redirect", "verified_success"]
    )
    assert [(e["topic"], e["token"], e["inboxed"]) for e in one["events"]] == [
        ("payment.succeeded", False, True),
        ("booking.requested", True, True),
    ]
    fee = 99_999
    platform = fee * BP // 10_000 + 250
    assert [e["amount_minor"] for e in one["ledger"]] == [fee, -(fee - platform), -platform]
    # A second delivery of either is a duplicate, found by the read alone.
    async with pool.acquire() as conn:
        again = await _settle(conn, short[2])
        assert again == settle.Settled(True)
        again = await _settle(conn, general[2])
        assert again == settle.Settled(True)


async def _blocked_on_a_lock(pool: asyncpg.Pool) -> None:
    """Until a settling statement waits for a row lock."""
    for _ in range(200):
        waiting = await pool.fetchval(
            """SELECT count(*) FROM pg_stat_activity
               WHERE wait_event_type = 'Lock' AND query LIKE '%WITH held AS%'"""
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the settling statement never waited")


async def _meanwhile(
    api: Api, lock_sql: str, change: str, key: uuid.UUID, event: WebhookEvent
) -> settle.Settled | None:
    """Settle ``event`` while another transaction holds a row lock
    (``lock_sql``) and, once the statement waits for it, commits
    ``change``."""
    pool = pool_of(api)
    async with pool.acquire() as other, pool.acquire() as conn:
        tx = other.transaction()
        await tx.start()
        await other.execute(lock_sql, key)
        task: Awaitable[settle.Settled | None] = asyncio.ensure_future(_settle(conn, event))
        await _blocked_on_a_lock(pool)
        if change:
            await other.execute(change, key)
        await tx.commit()
        return await task


@pytest.mark.parametrize("booking_now", ["cancelled", "expired"])
async def test_a_booking_that_moves_meanwhile_is_left_to_the_general_path(
    api: Api, booking_now: str
) -> None:
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic, fee_minor=120_000)
    booking, payment, event = await _paid_event(api, doctor)
    bid = uuid.UUID(booking)
    done = await _meanwhile(
        api,
        "SELECT 1 FROM bookings WHERE id = $1 FOR UPDATE",
        f"UPDATE bookings SET status = '{booking_now}' WHERE id = $1",
        bid,
        event,
    )
    assert done is None
    pool = pool_of(api)
    assert await status_of(api, payment["id"]) == "processing"
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == 0
    assert await pool.fetchval("SELECT count(*) FROM webhook_events") == 0
    assert await count(api, "SELECT count(*) FROM payment_events WHERE to_state = 'succeeded'") == 0
    # The general path takes it from there: the money goes back.
    body, headers = paid_webhook(api, payment)
    status, ack = await deliver(api, body, headers)
    assert (status, ack["status"]) == (200, "refunded")
    assert await booking_status(api, booking) == booking_now


async def test_an_intent_that_moves_meanwhile_is_left_to_the_general_path(
    api: Api, doctor: Doctor
) -> None:
    booking, payment, event = await _paid_event(api, doctor)
    done = await _meanwhile(
        api,
        "SELECT 1 FROM payment_intents WHERE id = $1 FOR UPDATE",
        "UPDATE payment_intents SET status = 'cancelled' WHERE id = $1",
        uuid.UUID(payment["id"]),
        event,
    )
    assert done is None
    pool = pool_of(api)
    assert await booking_status(api, booking) == "held"
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == 0
    assert await pool.fetchval("SELECT count(*) FROM webhook_events") == 0
    assert await count(api, "SELECT count(*) FROM outbox WHERE topic = 'booking.requested'") == 0


async def test_the_same_delivery_landing_meanwhile_aborts_the_whole_statement(
    api: Api, doctor: Doctor
) -> None:
    booking, payment, event = await _paid_event(api, doctor)
    pool = pool_of(api)
    pid = uuid.UUID(payment["id"])
    async with pool.acquire() as other, pool.acquire() as conn:
        # Hold the intent so the statement waits with its snapshot taken,
        # record this very delivery meanwhile, then let the intent go as it
        # was: the insert of the delivery is what stops it.
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT 1 FROM payment_intents WHERE id = $1 FOR UPDATE", pid)
        task = asyncio.ensure_future(_settle(conn, event))
        await _blocked_on_a_lock(pool)
        await pool.execute(
            "INSERT INTO webhook_events (gateway, event_id, payload) VALUES ('sandbox', $1, '{}')",
            event.event_id,
        )
        await tx.commit()
        assert await task is None
    assert await status_of(api, payment["id"]) == "processing"
    assert await booking_status(api, booking) == "held"
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == 0
    assert await count(api, "SELECT count(*) FROM payment_events WHERE to_state = 'succeeded'") == 0


async def test_what_is_not_the_common_case_is_left_to_the_general_path(
    api: Api, doctor: Doctor
) -> None:
    pool = pool_of(api)
    gw = sandbox(api)
    async with pool.acquire() as conn:
        # A failure.
        token, patient = await anon_patient(api)
        booking = await held_booking(api, doctor, patient)
        payment = await start_payment(api, token, booking)
        body, headers = paid_webhook(api, payment, paid=False)
        declined = await gw.parse_webhook(body, headers, _now())
        assert await _settle(conn, declined) is None
        # A booking no longer held when read.
        booking, payment, event = await _paid_event(api, doctor)
        await pool.execute(
            "UPDATE bookings SET status = 'cancelled' WHERE id = $1", uuid.UUID(booking)
        )
        assert await _settle(conn, event) is None
        # Another amount than the intent's.
        booking, payment, event = await _paid_event(api, doctor)
        await pool.execute(
            "UPDATE payment_intents SET amount_minor = amount_minor + 1 WHERE id = $1",
            uuid.UUID(payment["id"]),
        )
        assert await _settle(conn, event) is None
        assert await status_of(api, payment["id"]) == "processing"
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == 0
