"""A booking's lifecycle transitions in the database: the row locked, the
pure table (:mod:`booking.lifecycle`) asked for the next state, the change
stored with its history row and outbox event, and the doctor's next free
slot refreshed when the booking starts or stops occupying time. The doctor's
and staff's steps (accept, start, complete, no-show) keep to the slot's
times here too."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import asyncpg

from booking import calls
from booking.bookings.access import (
    audit_access,
    hash_manage_token,
    new_manage_token,
    visible_booking,
)
from booking.bookings.errors import BookingNotFound, TooEarly, TooLate, TransitionRefused
from booking.bookings.events import outbox_payload, record_event
from booking.errors import InvalidTransition
from booking.lifecycle import ACTIVE_STATES, BookingEvent, BookingState, transition
from booking.schedule import slots
from wadud.state.db import Args
from wadud.web.api import Principal

__all__ = [
    "act",
    "apply_event",
    "apply_event_if",
    "confirm_paid",
    "lock_booking",
    "next_state",
    "transition_booking",
]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def next_state(state: str, event: BookingEvent) -> BookingState:
    """The lifecycle's next state, as a typed HTTP 409 when it refuses."""
    try:
        return transition(BookingState(state), event)
    except (InvalidTransition, ValueError):
        raise TransitionRefused(f"cannot {event.value} a booking that is {state}") from None


async def lock_booking(conn: asyncpg.Connection, booking_id: UUID) -> asyncpg.Record:
    """The booking locked ``FOR UPDATE`` (:class:`BookingNotFound` if none)."""
    row = await conn.fetchrow("SELECT * FROM bookings WHERE id = $1 FOR UPDATE", booking_id)
    if row is None:
        raise BookingNotFound("no such booking")
    return row


async def transition_booking(
    conn: asyncpg.Connection,
    booking_id: UUID,
    event: BookingEvent,
    *,
    actor_id: UUID | None,
    detail: dict[str, Any] | None = None,
) -> asyncpg.Record:
    """Apply ``event`` to a booking and return the updated row.

    Locks the row ``FOR UPDATE``, asks :func:`booking.lifecycle.transition`
    for the next state (:class:`TransitionRefused`, HTTP 409, when the table
    has no entry), stores it, writes a ``booking_events`` row and the outbox
    event ``booking.<new state>``, and refreshes the doctor's
    ``next_free_at`` when the booking starts or stops occupying time. A
    booking entering ``requested`` gets a new manage token, whose secret
    travels only in that outbox event (``manage_token``) so the notifier can
    send the patient their link. Raises :class:`BookingNotFound` for an
    unknown id. Call inside the caller's transaction."""
    async with conn.transaction():
        row = await lock_booking(conn, booking_id)
        return await apply_event(conn, row, event, actor_id=actor_id, detail=detail)


async def apply_event(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    event: BookingEvent,
    *,
    actor_id: UUID | None,
    detail: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
    refresh: bool = True,
) -> asyncpg.Record:
    """:func:`transition_booking` on a row the caller has locked already."""
    now = now or _now()
    old = BookingState(row["status"])
    new = next_state(row["status"], event)
    token: str | None = None
    if new is BookingState.REQUESTED and old is not BookingState.REQUESTED:
        token = new_manage_token()
    updated = await conn.fetchrow(
        """UPDATE bookings
           SET status = $2, updated_at = $3,
               manage_token_hash = coalesce($4, manage_token_hash)
           WHERE id = $1 RETURNING *""",
        row["id"],
        new.value,
        now,
        hash_manage_token(token) if token else None,
    )
    assert updated is not None
    await _recorded(conn, updated, old, new, event, actor_id, detail, token, now, refresh)
    return updated


async def apply_event_if(
    conn: asyncpg.Connection,
    booking_id: UUID,
    expected: BookingState,
    event: BookingEvent,
    *,
    actor_id: UUID | None,
    detail: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> asyncpg.Record | None:
    """:func:`transition_booking` of a booking that must be in state
    ``expected``: the lock and the change are one statement (the payment
    webhook's confirmation). None, with nothing changed, when the booking is
    in another state or gone; refuses (409) before any statement when the
    table has no such move."""
    now = now or _now()
    new = next_state(expected.value, event)
    token = new_manage_token() if new is BookingState.REQUESTED and expected is not new else None
    updated = await conn.fetchrow(
        """UPDATE bookings
           SET status = $2, updated_at = $3,
               manage_token_hash = coalesce($4, manage_token_hash)
           WHERE id = $1 AND status = $5 RETURNING *""",
        booking_id,
        new.value,
        now,
        hash_manage_token(token) if token else None,
        expected.value,
    )
    if updated is not None:
        await _recorded(conn, updated, expected, new, event, actor_id, detail, token, now, True)
    return updated


def confirm_paid(
    booking: Mapping[str, Any],
    detail: dict[str, Any],
    now: dt.datetime,
    args: Args,
    *,
    gate: str,
) -> tuple[str, tuple[str, dict[str, Any]]]:
    """The payment's confirmation of a held booking (:func:`apply_event_if`
    with ``held`` and ``confirm_payment``) as parts of the caller's statement:
    CTEs that move the booking and write its ``booking_events`` line, and the
    outbox event (topic, payload) for the caller to write with its own.

    ``gate``: a CTE of the statement yielding the booking's ``id`` only when
    the caller holds the row's lock with the booking still held; nothing
    moves otherwise. ``booking``: the row as read (its payload's columns).
    Held and requested both occupy the doctor's time, so next-free is
    unchanged and not refreshed."""
    old, event = BookingState.HELD, BookingEvent.CONFIRM_PAYMENT
    new = next_state(old.value, event)
    assert (old in ACTIVE_STATES) == (new in ACTIVE_STATES)
    token = new_manage_token()
    sql = f"""confirmed AS (
            UPDATE bookings SET status = {args(new.value)}, updated_at = {args(now)},
                   manage_token_hash = {args(hash_manage_token(token))}
            FROM {gate} WHERE bookings.id = {gate}.id
            RETURNING bookings.id, bookings.clinic_id, bookings.status),
        confirmed_history AS (
            INSERT INTO booking_events
                (booking_id, clinic_id, event, from_state, to_state, actor_id, detail)
            SELECT id, clinic_id, {args(event.value)}, {args(old.value)}, status, NULL,
                   {args(detail)}::jsonb
            FROM confirmed)"""
    payload = outbox_payload(
        {**booking, "status": new.value},
        event.value,
        old.value,
        None,
        detail,
        {"manage_token": token},
    )
    return sql, (f"booking.{new.value}", payload)


async def _recorded(
    conn: asyncpg.Connection,
    updated: asyncpg.Record,
    old: BookingState,
    new: BookingState,
    event: BookingEvent,
    actor_id: UUID | None,
    detail: dict[str, Any] | None,
    token: str | None,
    now: dt.datetime,
    refresh: bool,
) -> None:
    """A transition's history row, outbox event and next-free refresh."""
    await record_event(
        conn,
        updated,
        event.value,
        old.value,
        actor_id=actor_id,
        detail=detail,
        extra={"manage_token": token} if token else None,
    )
    occupancy_changed = (old in ACTIVE_STATES) != (new in ACTIVE_STATES)
    if refresh and occupancy_changed:
        blocked = updated["blocked"]
        await slots.refresh_next_free(
            conn,
            updated["doctor_id"],
            now,
            changed=(blocked.lower, blocked.upper),
            occupied=new in ACTIVE_STATES,
        )
    elif refresh and event is BookingEvent.RESCHEDULE:
        await slots.refresh_next_free(conn, updated["doctor_id"], now)


# -- the doctor's side -------------------------------------------------------------


async def act(
    pool: asyncpg.Pool,
    booking_id: UUID,
    me: Principal,
    event: BookingEvent,
    *,
    now: dt.datetime | None = None,
) -> asyncpg.Record:
    """A doctor's or staff member's step in the booking's lifecycle (accept,
    start, complete, no-show) at ``now``, audited as ``booking.<event>``.

    The start window is the video links' window: from
    :data:`booking.calls.EARLY_JOIN` before the slot to its end. A
    consultation is complete, and can be reviewed, only once its slot has
    begun: nothing is over before the time it was booked for; and a patient
    is absent only once the slot has started."""
    now = now or _now()
    async with pool.acquire() as conn, conn.transaction():
        row = await visible_booking(conn, booking_id, me, lock=True)
        if event is BookingEvent.START and now < row["starts_at"] - calls.EARLY_JOIN:
            raise TooEarly(f"the consultation can start from {row['starts_at'] - calls.EARLY_JOIN}")
        if event is BookingEvent.START and now >= row["ends_at"]:
            raise TooLate("the slot is over: mark the patient absent (no-show) or cancel instead")
        if event is BookingEvent.COMPLETE and now < row["starts_at"]:
            raise TooEarly(f"the consultation can be completed from {row['starts_at']}")
        if event is BookingEvent.MARK_NO_SHOW and now < row["starts_at"]:
            raise TooEarly("a patient is absent only once the slot has started")
        updated = await apply_event(conn, row, event, actor_id=me.user_id, now=now)
        await audit_access(conn, me, f"booking.{event.value}", row)
    return updated
