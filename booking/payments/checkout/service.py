"""A booking's payment intent in PostgreSQL: starting one with its gateway's
hosted checkout, handing a live one out again, reading intents as their
viewers may, and the redirect landing's verified result.

One live intent per booking: asking again for a booking's payment while one
is live hands out that intent again (the patient most likely reloaded the
page); asking for another gateway meanwhile is refused
(:class:`~booking.payments.errors.LivePaymentExists`), since money may
already be moving through the first. The ``payment_intents_one_live`` index
refuses a concurrent second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from booking.payments.checkout.verdicts import apply_verdict
from booking.payments.errors import BookingNotPayable, LivePaymentExists
from booking.payments.gateway import GatewayRegistry, Verdict
from booking.payments.intent import IntentEvent, IntentState, Money, PaymentIntent, transition
from booking.payments.postings import move_intent, visible_intent
from booking.payments.refunds.due import owed_by_payment
from booking.payments.rows import INTENT_COLUMNS, payment_payload
from wadud.config import Settings
from wadud.errors import Conflict, NotFound
from wadud.messaging import outbox
from wadud.principal import Principal, Role
from wadud.state.db import Args

__all__ = [
    "NewIntent",
    "Started",
    "land",
    "payment_of",
    "payments_of",
    "start_payment",
]

#: What the read that decides a payment's start knows of its booking.
_BOOKING = """SELECT b.id, b.clinic_id, b.patient_id, b.status, b.hold_expires_at,
                     b.price_minor, b.currency, d.display_name,
                     EXISTS (SELECT 1 FROM payment_intents p WHERE p.booking_id = b.id
                             AND p.status IN ('requires_payment', 'processing')) AS live
              FROM bookings b JOIN doctors d ON d.id = b.doctor_id
              WHERE b.id = $1"""


@dataclass(frozen=True, slots=True)
class NewIntent:
    """A payment intent as :func:`start_payment` stores it: created
    ``requires_payment`` and, its checkout handed out, moved at once by the
    machine's ``redirect``, with both lines of its history."""

    id: UUID
    clinic_id: UUID
    booking_id: UUID
    patient_id: UUID
    amount_minor: int
    currency: str
    gateway: str
    gateway_ref: str
    checkout_url: str
    checkout_method: str
    checkout_fields: dict[str, str]
    return_url: str | None
    expires_at: datetime
    #: When it was asked for: the booking's hold must still run then.
    asked_at: datetime

    @property
    def created(self) -> IntentState:
        return IntentState.REQUIRES_PAYMENT

    @property
    def handed_out(self) -> IntentState:
        return transition(self.created, IntentEvent.REDIRECT)

    def announced(self) -> dict[str, Any]:
        """Its ``payment.created`` event's payload."""
        return payment_payload(
            {
                "id": self.id,
                "booking_id": self.booking_id,
                "clinic_id": self.clinic_id,
                "patient_id": self.patient_id,
                "gateway": self.gateway,
                "status": self.handed_out.value,
                "amount_minor": self.amount_minor,
                "currency": self.currency,
                "refunded_minor": 0,
            }
        )


@dataclass(frozen=True, slots=True)
class Started:
    """The intent :func:`start_payment` gave, and whether it was made now
    (False: the booking's live intent, its checkout handed out again)."""

    intent: asyncpg.Record
    created: bool


async def start_payment(
    pool: asyncpg.Pool,
    registry: GatewayRegistry,
    settings: Settings,
    patient: Principal,
    booking_id: UUID,
    gateway: str | None,
    return_url: str | None,
    now: datetime,
) -> Started:
    """Start paying for ``patient``'s held booking ``booking_id``: an intent
    for the booking's price that expires with the hold, with the hosted
    checkout of ``gateway`` (the configured default when None). While the
    booking has a live intent, that one is handed out again."""
    async with pool.acquire() as conn:
        # No transaction in the common case: this read decides, the gateway
        # opens its checkout, and one statement re-checks the hold under its
        # row lock and stores the intent (the one-live-intent index refuses a
        # concurrent second). Three round trips fewer than lock, read, insert.
        booking = await conn.fetchrow(_BOOKING, booking_id)
        _check_payable(booking, patient, now)
        assert booking is not None
        if booking["live"]:
            return Started(await _hand_out_again(conn, patient, booking_id, gateway, now), False)
        adapter = registry.get(gateway or settings.payments_default_gateway)
        intent_id = uuid4()
        hold = booking["hold_expires_at"]
        session = await adapter.create(
            PaymentIntent(
                id=str(intent_id),
                amount=Money(int(booking["price_minor"]), booking["currency"]),
                description=f"Consultation with {booking['display_name']}"[:200],
                return_url=f"{settings.base_url}/api/v1/payments/{intent_id}/return",
                created_at=now,
                expires_at=hold,
            )
        )
        new = NewIntent(
            id=intent_id,
            clinic_id=booking["clinic_id"],
            booking_id=booking_id,
            patient_id=patient.user_id,
            amount_minor=booking["price_minor"],
            currency=booking["currency"],
            gateway=adapter.name,
            gateway_ref=session.reference,
            checkout_url=session.url,
            checkout_method=session.method,
            checkout_fields=dict(session.fields),
            return_url=return_url,
            expires_at=hold,
            asked_at=now,
        )
        try:
            row = await _store(conn, new)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "payment_intents_one_live":
                # A concurrent request of the patient's stored one first.
                again = await _hand_out_again(conn, patient, booking_id, gateway, now)
                return Started(again, False)
            raise Conflict("the gateway reused a payment reference; try again") from None
        outbox.written(conn)
        if row is None:
            # The hold ended (expired, cancelled) while the checkout opened.
            booking = await conn.fetchrow(
                "SELECT patient_id, status, hold_expires_at, price_minor FROM bookings"
                " WHERE id = $1",
                booking_id,
            )
            _check_payable(booking, patient, now)
            raise BookingNotPayable("the booking is no longer held for payment")
    return Started(row, True)


async def _store(conn: asyncpg.Connection, new: NewIntent) -> asyncpg.Record | None:
    """Store ``new`` while its booking is still held, re-checked under the
    booking's row lock: the intent, its two history lines and its event, in
    one statement. None when the hold ended since it was read."""
    args = Args()
    created, handed_out = args(new.created.value), args(new.handed_out.value)
    sql = f"""
        WITH b AS (
            SELECT id FROM bookings
            WHERE id = {args(new.booking_id)} AND status = 'held'
              AND hold_expires_at > {args(new.asked_at)}
            FOR UPDATE),
        i AS (
            INSERT INTO payment_intents
                (id, clinic_id, booking_id, patient_id, amount_minor, currency,
                 gateway, gateway_ref, status, checkout_url, checkout_method,
                 checkout_fields, return_url, expires_at)
            SELECT {args(new.id)}, {args(new.clinic_id)}, b.id, {args(new.patient_id)},
                   {args(new.amount_minor)}, {args(new.currency)}, {args(new.gateway)},
                   {args(new.gateway_ref)}, {handed_out}, {args(new.checkout_url)},
                   {args(new.checkout_method)}, {args(new.checkout_fields)}::jsonb,
                   {args(new.return_url)}, {args(new.expires_at)}
            FROM b
            RETURNING {INTENT_COLUMNS}),
        e AS (
            INSERT INTO payment_events
                (payment_intent_id, clinic_id, event, from_state, to_state, detail)
            SELECT i.id, i.clinic_id, x.event, x.from_state, x.to_state, x.detail
            FROM i, (VALUES (1, 'create', NULL, {created}, '{{}}'::jsonb),
                            (2, {args(IntentEvent.REDIRECT.value)}, {created}, {handed_out},
                             {args({"url": new.checkout_url})}::jsonb))
                    AS x(n, event, from_state, to_state, detail)
            ORDER BY x.n)"""
    cte, more = outbox.event("payment.created", new.announced(), args.next, source="i")
    args.values.extend(more)
    return await conn.fetchrow(f"{sql},\n        {cte}\n        SELECT i.* FROM i", *args.values)


def _check_payable(booking: asyncpg.Record | None, me: Principal, now: datetime) -> None:
    if booking is None or booking["patient_id"] != me.user_id:
        raise NotFound("no such booking")
    hold = booking["hold_expires_at"]
    if booking["status"] != "held" or hold is None or hold <= now:
        raise BookingNotPayable(f"the booking is {booking['status']}, not held for payment")
    if booking["price_minor"] <= 0:
        raise BookingNotPayable("the booking is free; there is nothing to pay")


async def _hand_out_again(
    conn: asyncpg.Connection, me: Principal, booking_id: UUID, gateway: str | None, now: datetime
) -> asyncpg.Record:
    """The booking's live intent again, its checkout handed out once more.
    Locking the booking first serialises this with other attempts for it."""
    async with conn.transaction():
        booking = await conn.fetchrow(
            """SELECT patient_id, status, hold_expires_at, price_minor FROM bookings
               WHERE id = $1 FOR UPDATE""",
            booking_id,
        )
        _check_payable(booking, me, now)
        live = await conn.fetchrow(
            f"""SELECT {INTENT_COLUMNS} FROM payment_intents
                WHERE booking_id = $1 AND status IN ('requires_payment', 'processing')
                FOR UPDATE""",
            booking_id,
        )
        if live is None:
            raise Conflict("the booking's payment just ended; try again")
        if gateway is not None and gateway != live["gateway"]:
            raise LivePaymentExists(
                f"a {live['gateway']} payment for this booking is under way"
                f" until {live['expires_at'].isoformat()}"
            )
        return await move_intent(conn, live, IntentEvent.REDIRECT, {"again": True})


async def payment_of(
    pool: asyncpg.Pool, me: Principal, payment_id: UUID
) -> tuple[asyncpg.Record, int]:
    """The payment ``payment_id`` if ``me`` may see it, and what its refunds
    still owe by hand."""
    async with pool.acquire() as conn:
        row = await visible_intent(conn, me, payment_id)
        owed = await owed_by_payment(conn, [row["id"]])
    return row, owed.get(row["id"], 0)


async def payments_of(
    pool: asyncpg.Pool, me: Principal, booking_id: UUID | None, limit: int, offset: int
) -> list[tuple[asyncpg.Record, int]]:
    """The payments ``me`` may see (of ``booking_id`` when given), newest
    first, each with what its refunds still owe by hand."""
    where: list[str] = ["($1::uuid IS NULL OR booking_id = $1)"]
    args: list[Any] = [booking_id]
    if me.role == Role.CLINIC_STAFF:
        args.append(me.clinic_id)
        where.append(f"clinic_id = ${len(args)}")
    elif me.role == Role.PATIENT:
        args.append(me.user_id)
        where.append(f"patient_id = ${len(args)}")
    args += [limit, offset]
    rows = await pool.fetch(
        f"""SELECT {INTENT_COLUMNS} FROM payment_intents WHERE {" AND ".join(where)}
            ORDER BY created_at DESC, id LIMIT ${len(args) - 1} OFFSET ${len(args)}""",
        *args,
    )
    owed = await owed_by_payment(pool, [r["id"] for r in rows])
    return [(r, owed.get(r["id"], 0)) for r in rows]


async def land(
    pool: asyncpg.Pool,
    registry: GatewayRegistry,
    payment_id: UUID,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    now: datetime,
    *,
    default_bp: int,
) -> asyncpg.Record:
    """Apply the result the gateway sent the patient's browser back to the
    payment ``payment_id`` with. The parameters came through the browser:
    the gateway proves them (signature or inquiry) or raises, and nothing is
    applied before that. Returns the intent as it now is."""
    known = await pool.fetchrow("SELECT gateway FROM payment_intents WHERE id = $1", payment_id)
    if known is None:
        raise NotFound("no such payment")
    result = await registry.get(known["gateway"]).verify_callback(params, headers, now)
    async with pool.acquire() as conn, conn.transaction():
        return await apply_verdict(
            conn,
            Verdict.of_callback(result),
            default_bp=default_bp,
            registry=registry,
            intent_id=payment_id,
        )
