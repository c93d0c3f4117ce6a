"""A booking's changes after it is made: cancellation (or a doctor's
decline) with its refund per policy, rescheduling to another offered slot,
and a fresh manage link. Each works for a signed-in caller (the booking in
their scope, the change audited) and for the holder of the booking's manage
link (as its patient)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Protocol
from uuid import UUID

import asyncpg

from booking import refunds
from booking.bookings.access import (
    audit_access,
    by_manage_token,
    hash_manage_token,
    new_manage_token,
    visible_booking,
)
from booking.bookings.errors import BookingNotFound, SlotTaken
from booking.bookings.holds import taken_or_not_offered
from booking.bookings.transitions import apply_event, lock_booking, next_state
from booking.lifecycle import BookingEvent
from booking.refunds import Canceller
from booking.schedule import slots
from wadud.web.api import Principal

__all__ = [
    "Refunder",
    "amount_paid",
    "cancel_booking",
    "cancel_by_manage_link",
    "cancel_visible",
    "new_manage_link",
    "reschedule_booking",
    "reschedule_by_manage_link",
    "reschedule_visible",
    "rotate_manage_token",
]

_CANCEL_EVENTS: Mapping[Canceller, BookingEvent] = {
    Canceller.PATIENT: BookingEvent.CANCEL_BY_PATIENT,
    Canceller.DOCTOR: BookingEvent.CANCEL_BY_DOCTOR,
    Canceller.CLINIC: BookingEvent.CANCEL_BY_CLINIC,
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- cancellation and refunds ----------------------------------------------------


async def amount_paid(conn: asyncpg.Connection, booking_id: UUID) -> int:
    """Minor units paid for the booking and neither refunded nor owed back
    already (a refund the gateway refused, for finance to pay by hand)."""
    value = await conn.fetchval(
        """SELECT coalesce(sum(p.amount_minor - p.refunded_minor - coalesce(
                      (SELECT sum(r.amount_minor) FROM refunds r
                       WHERE r.payment_intent_id = p.id AND r.kind = 'refund'
                         AND r.status = 'refused_by_gateway'), 0)), 0)
           FROM payment_intents p
           WHERE p.booking_id = $1 AND p.status IN ('succeeded', 'partially_refunded')""",
        booking_id,
    )
    return int(value)


class Refunder(Protocol):
    """Refunds up to ``amount_minor`` of what was paid for a booking, in the
    caller's transaction, and says how much went back or is owed. Payments
    sit above the bookings core: the payments part of the app binds one to
    its gateways, and the caller (booking's HTTP layer) hands it in."""

    async def __call__(
        self,
        conn: asyncpg.Connection,
        booking_id: UUID,
        amount_minor: int,
        reason: str,
        *,
        actor: UUID | None,
    ) -> int: ...


async def cancel_booking(
    conn: asyncpg.Connection,
    booking_id: UUID,
    *,
    by: Canceller,
    actor_id: UUID | None,
    reason: str = "",
    decline: bool = False,
    now: dt.datetime | None = None,
    refund: Refunder | None = None,
) -> asyncpg.Record:
    """Cancel (or, with ``decline``, decline) a booking and refund per policy.

    The refund is :func:`booking.refunds.refund_amount` of what was paid
    (nothing for an unpaid hold), issued through ``refund`` in the same
    transaction; ``cancelled_by``, ``cancel_reason`` and ``refund_minor``
    record the outcome. A paid booking with no ``refund`` is refused whole
    (a programming error: money would be kept without a trace)."""
    now = now or _now()
    event = BookingEvent.DECLINE if decline else _CANCEL_EVENTS[by]
    async with conn.transaction():
        row = await lock_booking(conn, booking_id)
        next_state(row["status"], event)  # refuse before any money moves
        paid = await amount_paid(conn, booking_id)
        due = refunds.refund_amount(
            slot_start=row["starts_at"], cancelled_at=now, cancelled_by=by, amount_paid=paid
        )
        refunded = 0
        if due:
            if refund is None:
                raise RuntimeError("cancelling a paid booking needs a refunder")
            refunded = await refund(conn, booking_id, due, reason or event.value, actor=actor_id)
        row = await conn.fetchrow(
            """UPDATE bookings SET cancelled_by = $2, cancel_reason = $3, refund_minor = $4
               WHERE id = $1 RETURNING *""",
            booking_id,
            by.value,
            reason,
            refunded,
        )
        assert row is not None
        detail = {"cancelled_by": by.value, "reason": reason, "paid_minor": paid}
        detail["refund_minor"] = refunded
        return await apply_event(conn, row, event, actor_id=actor_id, detail=detail, now=now)


# -- rescheduling and manage links -------------------------------------------------


async def reschedule_booking(
    conn: asyncpg.Connection,
    booking_id: UUID,
    starts_at: dt.datetime,
    *,
    actor_id: UUID | None,
    now: dt.datetime | None = None,
) -> asyncpg.Record:
    """Move a booking to another offered slot of the same type, atomically.

    The blocked range is updated in place, so the exclusion constraint judges
    the new time against everyone else's (409 ``slot-taken``), and a failure
    leaves the booking where it was."""
    now = now or _now()
    async with conn.transaction():
        row = await lock_booking(conn, booking_id)
        next_state(row["status"], BookingEvent.RESCHEDULE)
        doctor = await conn.fetchrow("SELECT * FROM doctors WHERE id = $1", row["doctor_id"])
        assert doctor is not None
        slot = await slots.is_offered(conn, row["doctor_id"], row["type"], starts_at, now)
        if slot is None:
            raise await taken_or_not_offered(conn, row["doctor_id"], row["type"], starts_at, now)
        lo, hi = slots.blocked(doctor, slot.start, slot.end)
        try:
            moved = await conn.fetchrow(
                """UPDATE bookings SET starts_at = $2, ends_at = $3, blocked = tstzrange($4, $5)
                   WHERE id = $1 RETURNING *""",
                booking_id,
                slot.start,
                slot.end,
                lo,
                hi,
            )
        except (asyncpg.ExclusionViolationError, asyncpg.DeadlockDetectedError):
            raise SlotTaken("this time was booked by someone else; pick another slot") from None
        assert moved is not None
        detail = {
            "from_starts_at": row["starts_at"].isoformat(),
            "to_starts_at": slot.start.isoformat(),
        }
        return await apply_event(
            conn, moved, BookingEvent.RESCHEDULE, actor_id=actor_id, detail=detail, now=now
        )


async def rotate_manage_token(conn: asyncpg.Connection, booking_id: UUID) -> str:
    """A fresh manage-link secret for the booking; the previous link stops
    working."""
    token = new_manage_token()
    done = await conn.fetchval(
        "UPDATE bookings SET manage_token_hash = $2 WHERE id = $1 RETURNING true",
        booking_id,
        hash_manage_token(token),
    )
    if not done:
        raise BookingNotFound("no such booking")
    return token


# -- for a signed-in caller --------------------------------------------------------


async def cancel_visible(
    pool: asyncpg.Pool,
    booking_id: UUID,
    me: Principal,
    *,
    by: Canceller,
    reason: str,
    decline: bool = False,
    refund: Refunder | None,
) -> asyncpg.Record:
    """:func:`cancel_booking` (or decline) of a booking in ``me``'s scope,
    audited as ``booking.decline`` or ``booking.cancel``."""
    async with pool.acquire() as conn, conn.transaction():
        row = await visible_booking(conn, booking_id, me, lock=True)
        updated = await cancel_booking(
            conn,
            row["id"],
            by=by,
            actor_id=me.user_id,
            reason=reason,
            decline=decline,
            refund=refund,
        )
        await audit_access(conn, me, "booking.decline" if decline else "booking.cancel", row)
    return updated


async def reschedule_visible(
    pool: asyncpg.Pool, booking_id: UUID, me: Principal, starts_at: dt.datetime
) -> asyncpg.Record:
    """:func:`reschedule_booking` of a booking in ``me``'s scope, audited as
    ``booking.reschedule``."""
    async with pool.acquire() as conn, conn.transaction():
        row = await visible_booking(conn, booking_id, me, lock=True)
        updated = await reschedule_booking(conn, row["id"], starts_at, actor_id=me.user_id)
        await audit_access(conn, me, "booking.reschedule", row)
    return updated


async def new_manage_link(pool: asyncpg.Pool, booking_id: UUID, me: Principal) -> str:
    """A fresh manage-link secret for a booking in ``me``'s scope (see
    :func:`rotate_manage_token`)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await visible_booking(conn, booking_id, me, lock=True)
        return await rotate_manage_token(conn, row["id"])


# -- for the holder of a manage link -------------------------------------------------


async def cancel_by_manage_link(
    pool: asyncpg.Pool, token: str, *, reason: str, refund: Refunder | None
) -> asyncpg.Record:
    """Cancel the booking of a manage link, as its patient (same refund policy)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await by_manage_token(conn, token, lock=True)
        return await cancel_booking(
            conn,
            row["id"],
            by=Canceller.PATIENT,
            actor_id=row["patient_id"],
            reason=reason,
            refund=refund,
        )


async def reschedule_by_manage_link(
    pool: asyncpg.Pool, token: str, starts_at: dt.datetime
) -> asyncpg.Record:
    """Reschedule the booking of a manage link, as its patient."""
    async with pool.acquire() as conn, conn.transaction():
        row = await by_manage_token(conn, token, lock=True)
        return await reschedule_booking(conn, row["id"], starts_at, actor_id=row["patient_id"])
