"""Gateway webhooks over HTTP against a real PostgreSQL: signatures, freshness,
secret rotation, deduplication (sequential and concurrent), amount checks,
automatic refunds when a paid booking cannot be confirmed, and the sweeper."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

from booking.payments.checkout.sweeper import sweep_once
from booking.payments.gateways.sandbox import SandboxGateway
from booking.payments.keys import GATEWAYS
from booking.payments.postings import ledger_is_balanced
from tests.booking.factories import Clinic, Doctor, make_clinic, make_doctor
from tests.booking.payments.checkout.test_payments_api import (
    account_balances,
    anon_patient,
    booking_status,
    held_booking,
    pool_of,
    start_payment,
)
from tests.conftest import Api
from wadud import signing
from wadud.config import Settings
from wadud.state import keys

CARD_SECRETS = ["whsec_new_" + "n" * 24, "whsec_old_" + "o" * 24]


def with_card_webhooks(settings: Settings, secrets: list[str]) -> Settings:
    """``settings`` with the card gateway configured to verify webhooks
    signed with any of ``secrets`` (nothing listens at its API base)."""
    return dataclasses.replace(
        settings,
        payments_card_api_base="http://127.0.0.1:9",
        payments_card_api_key="sk_test_" + "k" * 24,
        payments_card_webhook_secrets=list(secrets),
    )


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Two secrets mid-rotation.
    return with_card_webhooks(settings, CARD_SECRETS)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def sandbox(api: Api) -> SandboxGateway:
    gateway = api.app[GATEWAYS].get("sandbox")
    assert isinstance(gateway, SandboxGateway)
    return gateway


def reference(payment: dict[str, Any]) -> str:
    return str(urlsplit(payment["checkout"]["url"]).path.rsplit("/", 1)[1])


async def live_payment(api: Api, doctor: Doctor) -> tuple[str, str, dict[str, Any]]:
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    return token, booking, await start_payment(api, token, booking)


def paid_webhook(
    api: Api, payment: dict[str, Any], paid: bool = True
) -> tuple[bytes, dict[str, str]]:
    """What the sandbox sends once the patient paid (or declined)."""
    gw = sandbox(api)
    gw.complete(reference(payment), paid, now())
    return gw.webhook(reference(payment), now())


async def deliver(api: Api, body: bytes, headers: dict[str, str], gateway: str = "sandbox") -> Any:
    resp = await api.client.post(f"/api/v1/webhooks/{gateway}", data=body, headers=headers)
    return resp.status, await resp.json()


async def status_of(api: Api, payment_id: str) -> str:
    return str(
        await pool_of(api).fetchval(
            "SELECT status FROM payment_intents WHERE id = $1", uuid.UUID(payment_id)
        )
    )


async def count(api: Api, sql: str, *args: Any) -> int:
    return int(await pool_of(api).fetchval(sql, *args))


async def test_webhook_applies_once(api: Api, doctor: Doctor) -> None:
    _token, booking, payment = await live_payment(api, doctor)
    body, headers = paid_webhook(api, payment)
    status, ack = await deliver(api, body, headers)
    assert status == 200
    assert ack["duplicate"] is False
    assert ack["status"] == "succeeded"
    assert ack["payment_id"] == payment["id"]
    assert await booking_status(api, booking) == "requested"
    status, ack = await deliver(api, body, headers)
    assert status == 200
    assert ack["duplicate"] is True
    assert await count(api, "SELECT count(*) FROM ledger_transactions") == 1
    assert await count(api, "SELECT count(*) FROM outbox WHERE topic = 'payment.succeeded'") == 1


async def test_concurrent_duplicate_webhooks_capture_once(api: Api, doctor: Doctor) -> None:
    _token, booking, payment = await live_payment(api, doctor)
    body, headers = paid_webhook(api, payment)
    # Same event id eight times at once, plus the same verdict under another
    # event id (a gateway's second notification of one payment).
    other_body = body.replace(b'"id":"evt_', b'"id":"evt_x')
    other = {
        **headers,
        "Wadud-Signature": signing.sign(
            other_body, sandbox(api)._webhook_secrets[0], int(now().timestamp())
        ),
    }
    results = await asyncio.gather(
        *[deliver(api, body, headers) for _ in range(8)], deliver(api, other_body, other)
    )
    assert {status for status, _ in results} == {200}
    assert sum(1 for _, ack in results[:8] if not ack["duplicate"]) == 1
    assert await count(api, "SELECT count(*) FROM ledger_transactions WHERE kind = 'capture'") == 1
    assert await count(api, "SELECT count(*) FROM webhook_events") == 2
    assert await status_of(api, payment["id"]) == "succeeded"
    assert await booking_status(api, booking) == "requested"
    async with pool_of(api).acquire() as conn:
        assert await ledger_is_balanced(conn)


async def test_signature_failures_change_nothing(api: Api, clinic: Clinic, doctor: Doctor) -> None:
    _token, booking, payment = await live_payment(api, doctor)
    body, headers = paid_webhook(api, payment)
    secret = sandbox(api)._webhook_secrets[0]
    ts = int(now().timestamp())

    tampered = body.replace(b'"status":"succeeded"', b'"status":"succeeded" ')
    cases = {
        "tampered body": (tampered, headers, "invalid_signature"),
        "wrong secret": (
            body,
            {**headers, "Wadud-Signature": signing.sign(body, "nope", ts)},
            "invalid_signature",
        ),
        "no header": (body, {"Content-Type": "application/json"}, "invalid_signature"),
        "garbage header": (body, {**headers, "Wadud-Signature": "t=x,v1=é"}, "invalid_signature"),
        "stale": (
            body,
            {**headers, "Wadud-Signature": signing.sign(body, secret, ts - 3600)},
            "stale_webhook",
        ),
        "future": (
            body,
            {**headers, "Wadud-Signature": signing.sign(body, secret, ts + 3600)},
            "stale_webhook",
        ),
    }
    for name, (raw, hdrs, code) in cases.items():
        status, problem = await deliver(api, raw, hdrs)
        assert (status, problem.get("code")) == (400, code), name
    status, problem = await deliver(
        api, b"{not json", {**headers, "Wadud-Signature": signing.sign(b"{not json", secret, ts)}
    )
    assert (status, problem["code"]) == (400, "malformed_payload")
    status, _ = await deliver(api, body, headers, gateway="paypal")
    assert status == 404

    assert await status_of(api, payment["id"]) == "processing"
    assert await booking_status(api, booking) == "held"
    assert await count(api, "SELECT count(*) FROM webhook_events") == 0
    assert await account_balances(api, clinic) == {}


async def test_rotated_card_secret_is_accepted(api: Api) -> None:
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic, fee_minor=150_000)
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    # A card intent as the card create() would leave it (its API is not run here).
    pid = await pool_of(api).fetchval(
        """INSERT INTO payment_intents (clinic_id, booking_id, patient_id, amount_minor, currency,
               gateway, gateway_ref, status, checkout_url, expires_at)
           VALUES ($1, $2, $3, 150000, 'PKR', 'card', 'cs_test_1', 'processing',
                   'https://card.example/pay/cs_test_1', now() + interval '10 minutes')
           RETURNING id""",
        uuid.UUID(clinic.id),
        uuid.UUID(booking),
        uuid.UUID(patient),
    )
    event = {
        "id": "evt_card_1",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "object": "checkout.session",
                "id": "cs_test_1",
                "status": "complete",
                "payment_status": "paid",
                "amount_total": 150_000,
                "currency": "pkr",
                "payment_intent": "pi_1",
            }
        },
    }
    body = json.dumps(event).encode()
    ts = int(now().timestamp())
    unknown = signing.sign(body, "whsec_retired_" + "r" * 20, ts)
    status, problem = await deliver(api, body, {"Stripe-Signature": unknown}, gateway="card")
    assert (status, problem["code"]) == (400, "invalid_signature")
    assert await status_of(api, str(pid)) == "processing"
    # Signed with the previous secret only: still accepted during the rotation.
    old = signing.sign(body, CARD_SECRETS[1], ts)
    status, ack = await deliver(api, body, {"Stripe-Signature": old}, gateway="card")
    assert status == 200, ack
    assert ack["status"] == "succeeded"
    assert await booking_status(api, booking) == "requested"
    balances = await account_balances(api, clinic)
    assert balances["gateway_clearing:card"] == 150_000
    got = await api.get(f"/api/v1/payments/{pid}", token=token, expect=200)
    assert got["gateway"] == "card"


async def test_amount_mismatch_is_refused(api: Api, doctor: Doctor) -> None:
    _token, booking, payment = await live_payment(api, doctor)
    await pool_of(api).execute(
        "UPDATE payment_intents SET amount_minor = amount_minor + 1 WHERE id = $1",
        uuid.UUID(payment["id"]),
    )
    body, headers = paid_webhook(api, payment)
    status, problem = await deliver(api, body, headers)
    assert (status, problem["code"]) == (409, "amount_mismatch")
    assert await status_of(api, payment["id"]) == "processing"
    assert await booking_status(api, booking) == "held"
    # Not recorded as seen: the whole event rolled back.
    assert await count(api, "SELECT count(*) FROM webhook_events") == 0


async def test_unknown_reference_is_not_acknowledged(api: Api, doctor: Doctor) -> None:
    _token, _booking, payment = await live_payment(api, doctor)
    body, headers = paid_webhook(api, payment)
    await pool_of(api).execute(
        "UPDATE payment_intents SET gateway_ref = 'sbx_elsewhere' WHERE id = $1",
        uuid.UUID(payment["id"]),
    )
    status, problem = await deliver(api, body, headers)
    assert (status, problem["code"]) == (404, "unknown_reference")
    assert await count(api, "SELECT count(*) FROM webhook_events") == 0


@pytest.mark.parametrize("booking_now", ["expired", "cancelled"])
async def test_paid_but_unconfirmable_booking_is_refunded(api: Api, booking_now: str) -> None:
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic, fee_minor=120_000)
    token, booking, payment = await live_payment(api, doctor)
    await pool_of(api).execute(
        "UPDATE bookings SET status = $2 WHERE id = $1", uuid.UUID(booking), booking_now
    )
    body, headers = paid_webhook(api, payment)
    status, ack = await deliver(api, body, headers)
    assert status == 200
    assert ack["status"] == "refunded"
    assert await booking_status(api, booking) == booking_now
    refund = await pool_of(api).fetchrow(
        "SELECT amount_minor, status, reason FROM refunds WHERE payment_intent_id = $1",
        uuid.UUID(payment["id"]),
    )
    assert refund["amount_minor"] == 120_000
    assert refund["status"] == "succeeded"
    assert refund["reason"].startswith("automatic:")
    assert booking_now in refund["reason"]
    assert set((await account_balances(api, clinic)).values()) == {0}
    kinds = [
        r["kind"]
        for r in await pool_of(api).fetch("SELECT kind FROM ledger_transactions ORDER BY kind")
    ]
    assert kinds == ["capture", "refund"]
    assert (await sandbox(api).inquire(reference(payment))).status.value == "succeeded"
    assert sandbox(api).checkout(reference(payment)).refunded.amount_minor == 120_000
    got = await api.get(f"/api/v1/payments/{payment['id']}", token=token)
    assert got["refunded_minor"] == 120_000


async def test_sweeper_expires_and_settles(api: Api, doctor: Doctor) -> None:
    pool = pool_of(api)
    registry = api.app[GATEWAYS]
    _t1, _b1, abandoned = await live_payment(api, doctor)
    _t2, paid_booking, lost_webhook = await live_payment(api, doctor)
    _t3, _b3, unpaid = await live_payment(api, doctor)
    _t4, _b4, fresh = await live_payment(api, doctor)
    sandbox(api).complete(reference(lost_webhook), True, now())
    await pool.execute(
        """UPDATE payment_intents SET created_at = now() - interval '20 minutes',
                  expires_at = now() - interval '1 minute' WHERE id = $1""",
        uuid.UUID(abandoned["id"]),
    )
    await pool.execute(
        "UPDATE payment_intents SET created_at = now() - interval '20 minutes' WHERE id = $1",
        uuid.UUID(lost_webhook["id"]),
    )
    await pool.execute(
        """UPDATE payment_intents SET status = 'requires_payment',
                  expires_at = now() - interval '1 minute' WHERE id = $1""",
        uuid.UUID(unpaid["id"]),
    )
    bp = api.app[keys.SETTINGS].payments_platform_commission_bp
    await sweep_once(pool, registry, now(), default_bp=bp)
    assert await status_of(api, abandoned["id"]) == "cancelled"
    assert await status_of(api, unpaid["id"]) == "cancelled"
    assert await status_of(api, lost_webhook["id"]) == "succeeded"
    assert await booking_status(api, paid_booking) == "requested"
    assert await status_of(api, fresh["id"]) == "processing"
    # A second round has nothing left to do.
    await sweep_once(pool, registry, now(), default_bp=bp)
    assert await count(api, "SELECT count(*) FROM ledger_transactions") == 1


async def test_sweeper_asks_no_gateway_it_cannot_reach_until_the_window_closes(
    api: Api,
) -> None:
    """A payment whose gateway has nobody to ask (a bank transfer waits for a
    statement line) is not taken up by every round, crowding out the
    gateways that answer; once its window closed it is expired as before."""
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic)
    pool = pool_of(api)
    registry = api.app[GATEWAYS]
    _t, _b, waiting = await live_payment(api, doctor)
    await pool.execute(
        """UPDATE payment_intents SET gateway = 'nobody_to_ask',
                  created_at = now() - interval '20 minutes' WHERE id = $1""",
        uuid.UUID(waiting["id"]),
    )
    bp = api.app[keys.SETTINGS].payments_platform_commission_bp
    assert await sweep_once(pool, registry, now(), default_bp=bp) == 0
    assert await status_of(api, waiting["id"]) == "processing"
    await pool.execute(
        "UPDATE payment_intents SET expires_at = now() - interval '1 minute' WHERE id = $1",
        uuid.UUID(waiting["id"]),
    )
    assert await sweep_once(pool, registry, now(), default_bp=bp) == 1
    assert await status_of(api, waiting["id"]) == "cancelled"
