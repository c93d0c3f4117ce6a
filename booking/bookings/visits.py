"""A booking as the patient's pages tell it (:mod:`booking.pages`): the
booking's own columns a video link needs, its doctor's name, its patient's
language and zone, and what was paid for it."""

from __future__ import annotations

from typing import TypeAlias
from uuid import UUID

import asyncpg

from booking.bookings.access import by_manage_token
from booking.bookings.changes import amount_paid
from wadud.errors import NotFound

__all__ = ["Conn", "manage_visit", "payment_visit"]

#: The connection the pages' readers run on (the payment pages read inside
#: their own handler's connection).
Conn: TypeAlias = asyncpg.Connection

_BOOKING = """SELECT b.id, b.status, b.type, b.starts_at, b.ends_at, b.doctor_id,
                     b.patient_id, b.refund_minor, b.currency,
                     d.display_name AS doctor, u.display_name AS patient_name,
                     u.locale, u.time_zone,
                     (SELECT c.region FROM clinics c WHERE c.id = b.clinic_id) AS clinic_region
              FROM bookings b
              JOIN doctors d ON d.id = b.doctor_id
              JOIN users u ON u.id = b.patient_id
              WHERE b.id = $1"""


async def payment_visit(
    conn: Conn, intent_id: UUID
) -> tuple[asyncpg.Record, asyncpg.Record] | None:
    """The booking a payment is for, and the payment (its status, amount,
    expiry, and ``late``: the money came after the booking was no longer held
    and is going back, by an automatic refund or one owed by hand); None for
    no such payment."""
    pay = await conn.fetchrow(
        """SELECT p.booking_id, p.status, p.amount_minor, p.currency, p.expires_at,
                  EXISTS (SELECT 1 FROM refunds r WHERE r.payment_intent_id = p.id
                          AND (r.kind = 'late_payment' OR r.reason LIKE 'automatic:%')) AS late
           FROM payment_intents p WHERE p.id = $1""",
        intent_id,
    )
    if pay is None:
        return None
    row = await conn.fetchrow(_BOOKING, pay["booking_id"])
    assert row is not None  # a payment's booking is never deleted
    return row, pay


async def manage_visit(pool: asyncpg.Pool, token: str) -> tuple[asyncpg.Record, int] | None:
    """The booking a manage link is for and what is paid for it (not
    refunded or owed back); None when the link names no booking (replaced
    by a newer one, or mistyped)."""
    async with pool.acquire() as conn:
        try:
            found = await by_manage_token(conn, token)
        except NotFound:
            return None
        row = await conn.fetchrow(_BOOKING, found["id"])
        assert row is not None  # found by its manage token just now
        paid = await amount_paid(conn, found["id"])
    return row, paid
