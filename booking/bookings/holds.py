"""Holds: a patient's claim on an offered slot while they pay, and their
expiry (a booking request expires its doctor's lapsed holds at once; the
sweeper, :func:`sweep_holds_forever`, tidies up the rest)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from booking.bookings.errors import SlotNotOffered, SlotTaken
from booking.bookings.events import outbox_payload
from booking.bookings.transitions import apply_event
from booking.lifecycle import BookingEvent, BookingState
from booking.schedule import cache, free_time, slots
from privacy import consent
from wadud.config import Settings
from wadud.errors import Conflict, WadudError
from wadud.messaging import loops, outbox
from wadud.state.db import Args

__all__ = [
    "HOLD_SWEEP_BATCH",
    "HoldCheck",
    "create_hold",
    "expire_lapsed_holds",
    "hold_for_patient",
    "sweep_holds",
    "sweep_holds_forever",
    "taken_or_not_offered",
]

log = logging.getLogger("booking.bookings")

#: Lapsed holds expired per sweeper transaction.
HOLD_SWEEP_BATCH = 200
_EPSILON = dt.timedelta(microseconds=1)

#: The region whose consent rules apply to a hold with doctor $1 (read with
#: the doctor by the hold's first statement).
_DOCTOR_REGION = (
    "SELECT c.region FROM doctors dr JOIN clinics c ON c.id = dr.clinic_id WHERE dr.id = $1"
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
            BookingEvent.EXPIRE_HOLD,
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


async def sweep_holds_forever(pool: asyncpg.Pool, interval: float) -> None:
    """:func:`sweep_holds` every ``interval`` seconds, for ever; a failed
    round is logged and the next one tries again."""

    async def step() -> None:
        n = await sweep_holds(pool)
        if n:
            log.info("expired lapsed holds", extra={"count": n})

    await loops.every(interval, step, "hold sweep failed; retrying next round", log)


async def taken_or_not_offered(
    conn: asyncpg.Connection,
    doctor_id: UUID,
    consultation_type: str,
    starts_at: dt.datetime,
    now: dt.datetime,
) -> Conflict:
    """Why ``starts_at`` cannot be had: :class:`SlotTaken` when the doctor
    offers it and someone holds it, else :class:`SlotNotOffered`."""
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
        raise await taken_or_not_offered(conn, doctor_id, consultation_type, starts_at, now)
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


async def hold_for_patient(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    patient_id: UUID,
    doctor_id: UUID,
    consultation_type: str,
    starts_at: dt.datetime,
) -> asyncpg.Record:
    """:func:`create_hold` for a patient, for the configured hold time, with
    the consent check riding the hold's first statement (with the doctor):
    403 ``consent_required``, naming the purposes, until the patient has
    accepted the consents the doctor's region requires."""
    cols = consent.columns(settings, patient_id, _DOCTOR_REGION, 2)
    async with pool.acquire() as conn:
        return await create_hold(
            conn,
            patient_id=patient_id,
            doctor_id=doctor_id,
            consultation_type=consultation_type,
            starts_at=starts_at,
            hold_minutes=settings.booking_hold_minutes,
            check=None
            if cols is None
            else HoldCheck(cols[0], cols[1], consent.PASSES, consent.raise_missing),
        )


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
        "status": BookingState.HELD.value,
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
        f"booking.{BookingState.HELD.value}",
        outbox_payload(held, "hold", None, patient_id, None),
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
