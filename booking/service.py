"""Bookings in the database: holds, lifecycle transitions, cancellation with
refunds, rescheduling, manage tokens and the hold sweeper.

Every function here runs on the caller's connection, inside the caller's
transaction (each also opens one of its own, which nests as a savepoint), so
an HTTP handler, the payments service and the sweeper all get the same rules:

* the row is locked ``FOR UPDATE`` before its state is read, and the pure
  table in :mod:`booking.lifecycle` decides the next state;
* every change writes a ``booking_events`` row and an outbox event
  ``booking.<new state>`` in the same transaction, so the event exists if and
  only if the change committed;
* time is arbitrated by the ``bookings_no_overlap`` exclusion constraint, never
  by a check in Python: a check can only be a courtesy that gives a clearer
  error, the constraint is what makes a race impossible.

Lock order, to keep deadlocks out: booking rows first (a doctor's lapsed holds
ordered by ``(hold_expires_at, id)``, or the one booking acted on), then the
doctor's row last (``refresh_next_free`` updates it just before commit).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID, uuid4

import asyncpg

from booking import refunds
from booking.errors import InvalidTransition
from booking.lifecycle import ACTIVE_STATES, Event, State, transition
from booking.refunds import Canceller
from booking.schedule import cache, free_time, slots
from wadud import outbox
from wadud.db import Args
from wadud.errors import Conflict, NotFound, WadudError

__all__ = [
    "HOLD_SWEEP_BATCH",
    "BookingNotFound",
    "HoldCheck",
    "SlotNotOffered",
    "SlotTaken",
    "TooEarly",
    "TooLate",
    "TransitionRefused",
    "amount_paid",
    "cancel_booking",
    "confirm_paid",
    "create_hold",
    "expire_lapsed_holds",
    "hash_manage_token",
    "new_manage_token",
    "reschedule_booking",
    "sweep_holds",
    "transition_booking",
]

log = logging.getLogger("booking.service")

#: Lapsed holds expired per sweeper transaction.
HOLD_SWEEP_BATCH = 200
_EPSILON = dt.timedelta(microseconds=1)

_CANCEL_EVENTS: Mapping[Canceller, Event] = {
    Canceller.PATIENT: Event.CANCEL_BY_PATIENT,
    Canceller.DOCTOR: Event.CANCEL_BY_DOCTOR,
    Canceller.CLINIC: Event.CANCEL_BY_CLINIC,
}


class BookingNotFound(NotFound):
    code = "booking-not-found"
    title = "No such booking"


class SlotTaken(Conflict):
    code = "slot-taken"
    title = "Someone else has this time"


class SlotNotOffered(Conflict):
    code = "slot-not-offered"
    title = "The doctor does not offer this slot now"


class TransitionRefused(Conflict):
    code = "invalid-transition"
    title = "Not allowed in the booking's current state"


class TooEarly(Conflict):
    code = "too-early"
    title = "Too early for this action"


class TooLate(Conflict):
    code = "too-late"
    title = "Too late for this action"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def next_state(state: str, event: Event) -> State:
    """The lifecycle's next state, as a typed HTTP 409 when it refuses."""
    try:
        return transition(State(state), event)
    except (InvalidTransition, ValueError):
        raise TransitionRefused(f"cannot {event.value} a booking that is {state}") from None


# -- manage tokens -------------------------------------------------------------


def new_manage_token() -> str:
    """A fresh secret for a patient's manage link (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def hash_manage_token(token: str) -> bytes:
    """What ``bookings.manage_token_hash`` stores: the secret is never kept."""
    return hashlib.sha256(token.encode()).digest()


# -- events --------------------------------------------------------------------


def event_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """The booking as outbox events carry it (JSON-ready)."""
    return {
        "booking_id": str(row["id"]),
        "clinic_id": str(row["clinic_id"]),
        "doctor_id": str(row["doctor_id"]),
        "patient_id": str(row["patient_id"]),
        "type": row["type"],
        "status": row["status"],
        "starts_at": row["starts_at"].isoformat(),
        "ends_at": row["ends_at"].isoformat(),
        "price_minor": row["price_minor"],
        "currency": row["currency"],
        "instant": row["instant"],
    }


def _event(
    row: Mapping[str, Any],
    event: str,
    from_state: str | None,
    actor_id: UUID | None,
    detail: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    payload = event_payload(row)
    payload.update(
        event=event,
        from_state=from_state,
        actor_id=str(actor_id) if actor_id else None,
        detail=detail or {},
        **(extra or {}),
    )
    return payload


async def record_event(
    conn: asyncpg.Connection,
    row: Mapping[str, Any],
    event: str,
    from_state: str | None,
    *,
    actor_id: UUID | None,
    detail: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the audit row and the outbox event ``booking.<row's state>``.

    ``extra`` goes to the outbox event only (secrets such as a fresh manage
    token must reach the notifier but never the audit table)."""
    payload = _event(row, event, from_state, actor_id, detail, extra)
    # The history row rides with the outbox row: one round trip.
    await outbox.emit(
        conn,
        f"booking.{row['status']}",
        payload,
        also="""INSERT INTO booking_events
                    (booking_id, clinic_id, event, from_state, to_state, actor_id, detail)
                VALUES ($4, $5, $6, $7, $8, $9, $10::jsonb)""",
        args=(
            row["id"],
            row["clinic_id"],
            event,
            from_state,
            row["status"],
            actor_id,
            detail or {},
        ),
    )


# -- transitions ---------------------------------------------------------------


async def _lock(conn: asyncpg.Connection, booking_id: UUID) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM bookings WHERE id = $1 FOR UPDATE", booking_id)
    if row is None:
        raise BookingNotFound("no such booking")
    return row


async def transition_booking(
    conn: asyncpg.Connection,
    booking_id: UUID,
    event: Event,
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
        row = await _lock(conn, booking_id)
        return await apply_event(conn, row, event, actor_id=actor_id, detail=detail)


async def apply_event(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    event: Event,
    *,
    actor_id: UUID | None,
    detail: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
    refresh: bool = True,
) -> asyncpg.Record:
    """:func:`transition_booking` on a row the caller has locked already."""
    now = now or _now()
    old = State(row["status"])
    new = next_state(row["status"], event)
    token: str | None = None
    if new is State.REQUESTED and old is not State.REQUESTED:
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
    expected: State,
    event: Event,
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
    token = new_manage_token() if new is State.REQUESTED and expected is not new else None
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
    old, event = State.HELD, Event.CONFIRM_PAYMENT
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
    payload = _event(
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
    old: State,
    new: State,
    event: Event,
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
    elif refresh and event is Event.RESCHEDULE:
        await slots.refresh_next_free(conn, updated["doctor_id"], now)


# -- holds -----------------------------------------------------------------------


async def expire_lapsed_holds(
    conn: asyncpg.Connection,
    now: dt.datetime,
    *,
    doctor_id: UUID | None = None,
    limit: int = HOLD_SWEEP_BATCH,
    skip_locked: bool = True,
    refresh: bool = True,
) -> int:
    """Expire up to ``limit`` holds whose time ran out (of one doctor, or all).

    The sweeper skips rows another transaction holds (``SKIP LOCKED``), so
    several API replicas share the work. A booking request expiring its
    doctor's holds waits for them instead (``skip_locked=False``): a hold
    another transaction is expiring still counts against the exclusion
    constraint until that commits, and waiting here, before inserting anything,
    keeps the lock order the same for every request of that doctor."""
    where = "status = 'held' AND hold_expires_at <= $1"
    args: list[Any] = [now, limit]
    if doctor_id is not None:
        where += " AND doctor_id = $3"
        args.append(doctor_id)
    rows = await conn.fetch(
        f"""SELECT * FROM bookings WHERE {where}
            ORDER BY hold_expires_at, id LIMIT $2
            FOR UPDATE{" SKIP LOCKED" if skip_locked else ""}""",
        *args,
    )
    for row in rows:
        await apply_event(
            conn,
            row,
            Event.EXPIRE_HOLD,
            actor_id=None,
            detail={"hold_expires_at": row["hold_expires_at"].isoformat()},
            now=now,
            refresh=False,
        )
    if refresh:
        for did in sorted({r["doctor_id"] for r in rows}):
            await slots.refresh_next_free(conn, did, now)
    return len(rows)


async def sweep_holds(
    pool: asyncpg.Pool, *, now: dt.datetime | None = None, batch: int = HOLD_SWEEP_BATCH
) -> int:
    """Expire every lapsed hold, one batch per transaction; return how many."""
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            n = await expire_lapsed_holds(conn, now or _now(), limit=batch)
        total += n
        if n < batch:
            return total


async def _taken_or_not_offered(
    conn: asyncpg.Connection,
    doctor_id: UUID,
    consultation_type: str,
    starts_at: dt.datetime,
    now: dt.datetime,
) -> Conflict:
    # is_offered says None both for a time outside the schedule and for a time
    # somebody holds. Asking the pure core again with nobody busy tells them
    # apart, so a loser of the race hears "taken" whether it lost at this
    # check or at the constraint, and a bad time is called a bad time.
    _, availability = await slots.load_availability(conn, doctor_id)
    with slots.booking_errors():
        free = free_time.free_slots(
            availability, consultation_type, starts_at, starts_at + _EPSILON, now
        )
    if any(s.start == starts_at for s in free):
        return SlotTaken("this time was booked by someone else; pick another slot")
    return SlotNotOffered("the doctor does not offer a slot at this time")


async def create_hold(
    conn: asyncpg.Connection,
    *,
    patient_id: UUID,
    doctor_id: UUID,
    consultation_type: str,
    starts_at: dt.datetime,
    hold_minutes: int,
    now: dt.datetime | None = None,
    check: HoldCheck | None = None,
) -> asyncpg.Record:
    """Hold an offered slot for ``hold_minutes`` while the patient pays.

    ``check``: a condition read with the doctor (the consent check rides
    this way), see :class:`HoldCheck`.

    Raises 404 for an unknown or unpublished doctor, 409 ``slot-not-offered``
    when the slot is not offered now, 409 ``slot-taken`` when the time is
    (or, racing, becomes) someone else's.

    One statement when this process knows the doctor's schedule
    (:mod:`booking.schedule.cache`) and nothing is in the way; otherwise, and for
    every refusal, the long way below, which reads everything afresh."""
    now = now or _now()
    known = cache.known(doctor_id)
    if known is not None:
        row = await _hold_on_known_schedule(
            conn, known, patient_id, consultation_type, starts_at, hold_minutes, now, check
        )
        if row is not None:
            return row
    # No transaction of its own: the read below decides, the insert commits,
    # and the exclusion constraint on bookings refuses whatever raced in
    # between. Two round trips in the common case (a caller's transaction,
    # if any, still holds both).
    view = await slots.view_for_hold(
        conn,
        doctor_id,
        starts_at,
        now,
        also=None if check is None else (check.columns, check.args),
    )
    doctor, busy = view.doctor, view.busy
    if check is not None:
        check.refuse(doctor)
    if view.lapsed:
        # Lapsed holds still count against the constraint until expired;
        # expiring them here frees their time at once rather than at the
        # next sweep, and the busy time is read again after.
        async with conn.transaction():
            await expire_lapsed_holds(
                conn, now, doctor_id=doctor_id, skip_locked=False, refresh=False
            )
            busy = await slots.busy_intervals(
                conn, doctor_id, *slots.offered_window(starts_at), now=now
            )
    slot = await slots.is_offered(
        conn,
        doctor_id,
        consultation_type,
        starts_at,
        now,
        availability=view.availability,
        busy=busy,
    )
    if slot is None:
        raise await _taken_or_not_offered(conn, doctor_id, consultation_type, starts_at, now)
    lo, hi = slots.blocked(doctor, slot.start, slot.end)
    args = Args()
    insert = _hold_insert(
        doctor, doctor_id, patient_id, slot, (lo, hi), now, hold_minutes, args, source=None
    )
    try:
        row = await conn.fetchrow(f"WITH {insert} SELECT b.* FROM b", *args.values)
    except (asyncpg.ExclusionViolationError, asyncpg.DeadlockDetectedError):
        # Deadlock: two requests that each expire and insert can, in rare
        # interleavings, wait on each other; PostgreSQL aborts one, which
        # lost the race just as surely as at the constraint.
        raise SlotTaken("this time was booked by someone else; pick another slot") from None
    assert row is not None
    outbox.written(conn)
    await slots.refresh_next_free(conn, doctor_id, now, changed=(lo, hi), doctor=doctor)
    return row


def _hold_insert(
    doctor: Mapping[str, Any],
    doctor_id: UUID,
    patient_id: UUID,
    slot: free_time.Slot,
    blocked: tuple[dt.datetime, dt.datetime],
    now: dt.datetime,
    hold_minutes: int,
    args: Args,
    *,
    source: str | None,
) -> str:
    """The hold's writes as CTEs of the caller's statement: the booking
    (``b``), its history row and its outbox event, whose every column is
    known before the insert. ``source``: ``FROM`` text the insert selects
    from (inserting once per row it yields); None inserts once."""
    held = {
        "id": uuid4(),
        "clinic_id": doctor["clinic_id"],
        "doctor_id": doctor_id,
        "patient_id": patient_id,
        "type": slot.consultation_type.value,
        "status": State.HELD.value,
        "starts_at": slot.start,
        "ends_at": slot.end,
        "price_minor": doctor["fee_minor"],
        "currency": doctor["currency"],
        "instant": False,
    }
    values = f"""{args(held["clinic_id"])}::uuid, {args(doctor_id)}::uuid,
                 {args(doctor["key"])}::bigint, {args(patient_id)}::uuid, {args(held["type"])},
                 {args(slot.start)}::timestamptz, {args(slot.end)}::timestamptz,
                 tstzrange({args(blocked[0])}, {args(blocked[1])}), 'held',
                 {args(now + dt.timedelta(minutes=hold_minutes))}::timestamptz,
                 {args(held["price_minor"])}::bigint, {args(held["currency"])},
                 {args(now)}::timestamptz, {args(now)}::timestamptz, {args(held["id"])}::uuid"""
    rows = f"SELECT {values} FROM {source}" if source else f"VALUES ({values})"
    event_cte, event_args = outbox.event(
        f"booking.{State.HELD.value}",
        _event(held, "hold", None, patient_id, None),
        args.next,
        source="b",
    )
    args.values.extend(event_args)
    return f"""b AS (
                    INSERT INTO bookings
                        (clinic_id, doctor_id, doctor_key, patient_id, type, starts_at,
                         ends_at, blocked, status, hold_expires_at, price_minor, currency,
                         created_at, updated_at, id)
                    {rows}
                    RETURNING *),
                h AS (
                    INSERT INTO booking_events
                        (booking_id, clinic_id, event, from_state, to_state, actor_id, detail)
                    SELECT id, clinic_id, 'hold', NULL, status, patient_id, '{{}}'::jsonb
                    FROM b),
                {event_cte}"""


@dataclass(frozen=True, slots=True)
class HoldCheck:
    """A condition a hold reads with the doctor's row: select-list SQL
    (``columns``, its parameters ``args`` numbered from ``$2``; ``$1`` is the
    doctor), the same test as a boolean SQL expression over those columns
    (``passes``), and a function of the row that raises to refuse the hold
    (``refuse``, which must raise whenever ``passes`` is false)."""

    columns: str
    args: Sequence[Any]
    passes: str
    refuse: Callable[[Mapping[str, Any]], None]


async def _hold_on_known_schedule(
    conn: asyncpg.Connection,
    known: cache.Schedule,
    patient_id: UUID,
    consultation_type: str,
    starts_at: dt.datetime,
    hold_minutes: int,
    now: dt.datetime,
    check: HoldCheck | None,
) -> asyncpg.Record | None:
    """The hold in one statement, on a remembered schedule: the core finds
    the slot offered (other bookings aside: the exclusion constraint judges
    those, as it does anyway), and the insert happens only if the doctor's
    row still matches what the schedule was built from, the doctor is
    published and ``check`` passes. None when anything is in the way (the
    schedule changed, a refusal, an overlap, a lapsed hold): the long way
    then decides, with the error it gives."""
    try:
        slot = await slots.is_offered(
            conn,
            known.doctor_id,
            consultation_type,
            starts_at,
            now,
            availability=known.availability,
            busy=(),
        )
    except WadudError:
        return None  # which error wins is the long way's business
    if slot is None:
        return None
    doctor = known.doctor
    lo, hi = slots.blocked(doctor, slot.start, slot.end)
    args = Args()
    args(known.doctor_id)  # $1, as HoldCheck.columns expects
    columns, passes = "", "true"
    if check is not None:
        args.values.extend(check.args)
        columns, passes = f", {check.columns}", check.passes
    guards = " AND ".join(
        f"d.{column} = {args(doctor[column])}{'::jsonb' if column == 'slot_minutes' else ''}"
        for column in cache.GUARDED
    )
    insert = _hold_insert(
        doctor,
        known.doctor_id,
        patient_id,
        slot,
        (lo, hi),
        now,
        hold_minutes,
        args,
        source=f"d WHERE {passes}",
    )
    try:
        row = await conn.fetchrow(
            f"""WITH d AS (
                    SELECT d.next_free_at AS doctor_next_free_at{columns}
                    FROM doctors d
                    WHERE d.id = $1 AND d.status = 'published' AND {guards}),
                {insert}
            SELECT d.*, b.* FROM d LEFT JOIN b ON true""",
            *args.values,
        )
    except (asyncpg.ExclusionViolationError, asyncpg.DeadlockDetectedError):
        return None  # taken, or a lapsed hold in the way: the long way sorts it out
    if row is None:
        cache.forget(known.doctor_id)  # the row moved on (or was unpublished)
        return None
    if row["id"] is None:
        assert check is not None
        check.refuse(row)
        return None  # pragma: no cover - refuse raises whenever passes is false
    outbox.written(conn)
    await slots.refresh_next_free(
        conn,
        known.doctor_id,
        now,
        changed=(lo, hi),
        doctor={**doctor, "next_free_at": row["doctor_next_free_at"]},
    )
    return row


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
    event = Event.DECLINE if decline else _CANCEL_EVENTS[by]
    async with conn.transaction():
        row = await _lock(conn, booking_id)
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


# -- rescheduling ----------------------------------------------------------------


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
        row = await _lock(conn, booking_id)
        next_state(row["status"], Event.RESCHEDULE)
        doctor = await conn.fetchrow("SELECT * FROM doctors WHERE id = $1", row["doctor_id"])
        assert doctor is not None
        slot = await slots.is_offered(conn, row["doctor_id"], row["type"], starts_at, now)
        if slot is None:
            raise await _taken_or_not_offered(conn, row["doctor_id"], row["type"], starts_at, now)
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
            conn, moved, Event.RESCHEDULE, actor_id=actor_id, detail=detail, now=now
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
