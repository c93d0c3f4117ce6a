"""Instant consultations: a waiting queue per clinic and specialty.

A patient joins the queue of a clinic's specialty; a doctor of that clinic and
specialty takes the next patient, which creates an instant video booking
starting now, already ``accepted``. Instant consultations exist only where the
clinic's region has the ``instant`` feature enabled (``region_features``).

Concurrency: takes claim the oldest waiting entry with ``FOR UPDATE SKIP
LOCKED``, so any number of doctors (on any number of API replicas) take
different patients without waiting on each other, and a patient is taken
exactly once. One doctor's takes are serialised by a transaction-scoped
advisory lock, so a doctor's concurrent clicks cannot grab (and then release)
queue entries other doctors skipped; the exclusion constraint on bookings
still keeps a busy doctor from a second consultation at the same time.

Payment policy: an instant consultation is priced at the doctor's fee but is
not paid up front. Queueing is free and the booking is created ``accepted``
with ``price_minor`` set and no payment; the clinic collects the fee for the
booking afterwards (a payment intent may be created for it like for any
booking). Nobody pays for a consultation that never happens, and the queue is
not held up by a checkout. Cancelling such a booking refunds only what was
paid, as for any booking.

Wait estimate: ``ceil(position / doctors) * average``, where ``average`` is
the mean duration (start to completion) of the clinic's last
:data:`ESTIMATE_SAMPLE` completed instant consultations of the specialty, or
:data:`DEFAULT_CONSULT_SECONDS` when there are none, and ``doctors`` the
number of distinct doctors who took a patient from this queue in the last
:data:`ACTIVE_DOCTOR_WINDOW` (at least one). It is a rough upper estimate:
it assumes every doctor is busy when the patient joins.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from booking.bookings.events import record_event
from booking.lifecycle import ACTIVE_STATES
from booking.schedule import slots
from wadud.errors import Conflict, Forbidden, NotFound
from wadud.messaging import outbox
from wadud.web.api import Principal, Role

__all__ = [
    "ACTIVE_DOCTOR_WINDOW",
    "DEFAULT_CONSULT_SECONDS",
    "ESTIMATE_SAMPLE",
    "AlreadyWaiting",
    "DoctorBusy",
    "Entry",
    "InstantUnavailable",
    "NotWaiting",
    "QueueEmpty",
    "Waiting",
    "average_consult_seconds",
    "entry",
    "join",
    "leave",
    "take_next",
    "waiting",
]

#: Assumed length of an instant consultation when the queue has no history.
DEFAULT_CONSULT_SECONDS = 15 * 60
#: How many recent consultations the wait estimate averages.
ESTIMATE_SAMPLE = 20
#: A doctor counts as taking from a queue if they took a patient this recently.
ACTIVE_DOCTOR_WINDOW = dt.timedelta(hours=1)
#: Advisory lock class for "one doctor's takes" (ASCII "inst").
_TAKE_LOCK_CLASS = 0x696E7374


class InstantUnavailable(Forbidden):
    code = "instant-unavailable"
    title = "Instant consultations are not offered in this region"


class AlreadyWaiting(Conflict):
    code = "already-waiting"
    title = "You are already waiting in this queue"


class QueueEmpty(NotFound):
    code = "queue-empty"
    title = "Nobody is waiting"


class DoctorBusy(Conflict):
    code = "doctor-busy"
    title = "You have a consultation at this time"


class NotWaiting(Conflict):
    code = "not-waiting"
    title = "This queue entry is no longer waiting"


@dataclass(frozen=True, slots=True)
class Entry:
    """A queue entry (its row) and, while it waits, its place."""

    row: asyncpg.Record
    #: 1 for the next patient; None once the entry is no longer waiting.
    position: int | None
    #: Rough upper estimate (see the module's documentation); None unless waiting.
    estimated_wait_seconds: int | None


@dataclass(frozen=True, slots=True)
class Waiting:
    """How a queue stands."""

    waiting: int
    oldest_enqueued_at: dt.datetime | None
    doctors_taking: int


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _require_instant(conn: asyncpg.Connection, clinic_id: UUID) -> None:
    row = await conn.fetchrow(
        """SELECT c.region, coalesce(f.enabled, false) AS enabled FROM clinics c
           LEFT JOIN region_features f ON f.region = c.region AND f.feature = 'instant'
           WHERE c.id = $1""",
        clinic_id,
    )
    if row is None:
        raise NotFound("no such clinic")
    if not row["enabled"]:
        raise InstantUnavailable(f"instant consultations are not enabled in {row['region']}")


async def _doctors_taking(conn: asyncpg.Connection, clinic_id: UUID, specialty: str) -> int:
    n = await conn.fetchval(
        """SELECT count(DISTINCT taken_by) FROM instant_queue
           WHERE clinic_id = $1 AND specialty = $2 AND taken_at > now() - $3::interval""",
        clinic_id,
        specialty,
        ACTIVE_DOCTOR_WINDOW,
    )
    return int(n)


async def average_consult_seconds(
    conn: asyncpg.Connection, clinic_id: UUID, specialty: str
) -> float:
    """Mean start-to-completion time of recent instant consultations."""
    value = await conn.fetchval(
        """SELECT avg(EXTRACT(EPOCH FROM c.at - s.at)) FROM (
               SELECT b.id FROM bookings b JOIN doctors d ON d.id = b.doctor_id
               WHERE b.clinic_id = $1 AND b.instant AND b.status = 'completed'
                 AND d.specialty = $2
               ORDER BY b.updated_at DESC LIMIT $3) r
           JOIN booking_events s ON s.booking_id = r.id AND s.to_state = 'in_progress'
           JOIN booking_events c ON c.booking_id = r.id AND c.to_state = 'completed'""",
        clinic_id,
        specialty,
        ESTIMATE_SAMPLE,
    )
    return float(value) if value is not None else float(DEFAULT_CONSULT_SECONDS)


async def _entry(conn: asyncpg.Connection, row: asyncpg.Record) -> Entry:
    position = wait = None
    if row["status"] == "waiting":
        ahead = await conn.fetchval(
            """SELECT count(*) FROM instant_queue
               WHERE clinic_id = $1 AND specialty = $2 AND status = 'waiting'
                 AND (enqueued_at, id) < ($3, $4)""",
            row["clinic_id"],
            row["specialty"],
            row["enqueued_at"],
            row["id"],
        )
        position = int(ahead) + 1
        doctors = max(1, await _doctors_taking(conn, row["clinic_id"], row["specialty"]))
        average = await average_consult_seconds(conn, row["clinic_id"], row["specialty"])
        wait = math.ceil(position / doctors) * round(average)
    return Entry(row, position, wait)


def _entry_event(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "entry_id": str(row["id"]),
        "clinic_id": str(row["clinic_id"]),
        "specialty": row["specialty"],
        "patient_id": str(row["patient_id"]),
        "status": row["status"],
    }


async def join(
    pool: asyncpg.Pool, clinic_id: UUID, specialty: str, patient_id: UUID, note: str
) -> Entry:
    """The patient joins the clinic's queue for ``specialty``.

    403 ``instant-unavailable`` where the region does not offer instant
    consultations; 404 when the clinic has no published doctor of the
    specialty; 409 ``already-waiting`` if the patient waits there already."""
    async with pool.acquire() as conn, conn.transaction():
        await _require_instant(conn, clinic_id)
        offered = await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM doctors WHERE clinic_id = $1 AND specialty = $2
                              AND status = 'published')""",
            clinic_id,
            specialty,
        )
        if not offered:
            raise NotFound(f"the clinic has no {specialty} doctor")
        try:
            row = await conn.fetchrow(
                """INSERT INTO instant_queue (clinic_id, specialty, patient_id, note)
                   VALUES ($1, $2, $3, $4) RETURNING *""",
                clinic_id,
                specialty,
                patient_id,
                note,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyWaiting("you are already waiting in this queue") from None
        assert row is not None
        await outbox.emit(conn, "instant.joined", _entry_event(row))
        return await _entry(conn, row)


async def _visible_entry(
    conn: asyncpg.Connection, entry_id: UUID, me: Principal, *, lock: bool = False
) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT * FROM instant_queue WHERE id = $1" + (" FOR UPDATE" if lock else ""), entry_id
    )
    if row is None or not (
        me.role is Role.ADMIN
        or (me.role is Role.PATIENT and row["patient_id"] == me.user_id)
        or (me.role in (Role.DOCTOR, Role.CLINIC_STAFF) and row["clinic_id"] == me.clinic_id)
    ):
        raise NotFound("no such queue entry")
    return row


async def entry(pool: asyncpg.Pool, entry_id: UUID, me: Principal) -> Entry:
    """A queue entry ``me`` may see (else 404), with its place."""
    async with pool.acquire() as conn:
        row = await _visible_entry(conn, entry_id, me)
        return await _entry(conn, row)


async def leave(pool: asyncpg.Pool, entry_id: UUID, me: Principal) -> None:
    """The patient leaves the queue (409 ``not-waiting`` once taken)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await _visible_entry(conn, entry_id, me, lock=True)
        if row["status"] != "waiting":
            raise NotWaiting(f"this entry is {row['status']}")
        row = await conn.fetchrow(
            "UPDATE instant_queue SET status = 'left' WHERE id = $1 RETURNING *", row["id"]
        )
        assert row is not None
        await outbox.emit(conn, "instant.left", _entry_event(row))


async def waiting(pool: asyncpg.Pool, clinic_id: UUID, specialty: str) -> Waiting:
    """How many patients wait in a queue, since when, and how many doctors
    take from it."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT count(*) AS n, min(enqueued_at) AS oldest FROM instant_queue
               WHERE clinic_id = $1 AND specialty = $2 AND status = 'waiting'""",
            clinic_id,
            specialty,
        )
        assert row is not None
        doctors = await _doctors_taking(conn, clinic_id, specialty)
    return Waiting(row["n"], row["oldest"], doctors)


async def take_next(
    pool: asyncpg.Pool,
    me: Principal,
    clinic_id: UUID,
    specialty: str,
    *,
    now: dt.datetime | None = None,
) -> asyncpg.Record:
    """The doctor ``me`` takes the next waiting patient: an accepted instant
    video booking with them, starting now (returned).

    404 ``queue-empty`` when nobody waits; 409 ``doctor-busy`` when the doctor
    already has a consultation at this time; 403 for a doctor of another
    specialty."""
    now = now or _now()
    async with pool.acquire() as conn, conn.transaction():
        doctor = await conn.fetchrow(
            "SELECT * FROM doctors WHERE user_id = $1 AND clinic_id = $2", me.user_id, clinic_id
        )
        if doctor is None:
            raise NotFound("no such queue")
        if doctor["specialty"] != specialty or doctor["status"] != "published":
            raise Forbidden("only a published doctor of this specialty takes from this queue")
        await _require_instant(conn, clinic_id)
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            _TAKE_LOCK_CLASS,
            int(doctor["key"]) % 2_147_483_647,
        )
        minutes = int(doctor["slot_minutes"].get("video", 20))
        end = now + dt.timedelta(minutes=minutes)
        lo, hi = slots.blocked(doctor, now, end)
        busy = await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM bookings
                   WHERE doctor_id = $1 AND status = ANY($2::text[])
                     AND NOT (status = 'held' AND hold_expires_at <= $5)
                     AND blocked && tstzrange($3, $4))""",
            doctor["id"],
            sorted(s.value for s in ACTIVE_STATES),
            lo,
            hi,
            now,
        )
        if busy:
            waiting = await conn.fetchval(
                """SELECT EXISTS (SELECT 1 FROM instant_queue
                       WHERE clinic_id = $1 AND specialty = $2 AND status = 'waiting')""",
                clinic_id,
                specialty,
            )
            if not waiting:
                raise QueueEmpty("nobody is waiting")
            raise DoctorBusy("finish or cancel your current consultation first")
        entry = await conn.fetchrow(
            """SELECT * FROM instant_queue
               WHERE clinic_id = $1 AND specialty = $2 AND status = 'waiting'
               ORDER BY enqueued_at, id LIMIT 1
               FOR UPDATE SKIP LOCKED""",
            clinic_id,
            specialty,
        )
        if entry is None:
            raise QueueEmpty("nobody is waiting")
        try:
            row = await conn.fetchrow(
                """INSERT INTO bookings
                       (clinic_id, doctor_id, doctor_key, patient_id, type, starts_at, ends_at,
                        blocked, status, price_minor, currency, instant, created_at, updated_at)
                   VALUES ($1, $2, $3, $4, 'video', $5, $6, tstzrange($7, $8), 'accepted',
                           $9, $10, true, $5, $5)
                   RETURNING *""",
                clinic_id,
                doctor["id"],
                doctor["key"],
                entry["patient_id"],
                now,
                end,
                lo,
                hi,
                doctor["fee_minor"],
                doctor["currency"],
            )
        except asyncpg.ExclusionViolationError:
            # A booking of the doctor's committed since the check above.
            raise DoctorBusy("you have a consultation at this time") from None
        assert row is not None
        taken = await conn.fetchrow(
            """UPDATE instant_queue SET status = 'taken', taken_by = $2, taken_at = $3,
                      booking_id = $4
               WHERE id = $1 RETURNING *""",
            entry["id"],
            doctor["id"],
            now,
            row["id"],
        )
        assert taken is not None
        await record_event(
            conn,
            row,
            "instant_take",
            None,
            actor_id=me.user_id,
            detail={"queue_entry_id": str(entry["id"])},
        )
        await outbox.emit(
            conn, "instant.taken", {**_entry_event(taken), "booking_id": str(row["id"])}
        )
        await slots.refresh_next_free(conn, doctor["id"], now)
    return row
