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
import re
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from pydantic import StringConstraints

from booking import service
from booking.api.bookings import BookingOut, booking_out
from booking.lifecycle import ACTIVE_STATES
from booking.schedule import slots
from wadud import outbox
from wadud.api import ApiModel, Call, Principal, Role, Routes
from wadud.errors import Conflict, Forbidden, NotFound
from wadud.rows import from_row

routes = Routes("instant-queue", "Instant consultations: queue, position, take.")

#: Assumed length of an instant consultation when the queue has no history.
DEFAULT_CONSULT_SECONDS = 15 * 60
#: How many recent consultations the wait estimate averages.
ESTIMATE_SAMPLE = 20
#: A doctor counts as taking from a queue if they took a patient this recently.
ACTIVE_DOCTOR_WINDOW = dt.timedelta(hours=1)
#: Advisory lock class for "one doctor's takes" (ASCII "inst").
_TAKE_LOCK_CLASS = 0x696E7374
_SPECIALTY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_QUEUE = "/api/v1/instant/{clinic_id:uuid}/{specialty:[a-z][a-z0-9_-]*}"


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


class JoinIn(ApiModel):
    #: What the patient wants to talk about (shown to the doctor).
    note: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] = ""


class EntryOut(ApiModel):
    id: UUID
    clinic_id: UUID
    specialty: str
    status: str
    note: str
    enqueued_at: dt.datetime
    #: 1 for the next patient; null once the entry is no longer waiting.
    position: int | None
    #: Rough upper estimate (see the queue's documentation); null unless waiting.
    estimated_wait_seconds: int | None
    booking_id: UUID | None
    taken_at: dt.datetime | None


class QueueOut(ApiModel):
    clinic_id: UUID
    specialty: str
    waiting: int
    oldest_enqueued_at: dt.datetime | None
    doctors_taking: int


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _specialty(call: Call[Any, Any]) -> str:
    specialty = call.path("specialty")
    if not _SPECIALTY.match(specialty):
        raise NotFound("no such queue")
    return specialty


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


def _check_clinic(me: Principal, clinic_id: UUID) -> None:
    # Another clinic's queue does not exist for this caller (no id leaks).
    if me.role is not Role.ADMIN and me.clinic_id != clinic_id:
        raise NotFound("no such queue")


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


async def _entry_out(conn: asyncpg.Connection, row: asyncpg.Record) -> EntryOut:
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
    return from_row(EntryOut, row, position=position, estimated_wait_seconds=wait)


def _entry_event(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "entry_id": str(row["id"]),
        "clinic_id": str(row["clinic_id"]),
        "specialty": row["specialty"],
        "patient_id": str(row["patient_id"]),
        "status": row["status"],
    }


@routes.post(_QUEUE, body=JoinIn, returns=EntryOut, status=201, auth={Role.PATIENT})
async def join_queue(call: Call[JoinIn, None]) -> EntryOut:
    """Join a clinic's instant-consultation queue for a specialty.

    403 ``instant-unavailable`` where the region does not offer instant
    consultations; 404 when the clinic has no published doctor of the
    specialty; 409 ``already-waiting`` if the patient waits there already."""
    clinic_id, specialty = call.path_uuid("clinic_id"), _specialty(call)
    async with call.pool.acquire() as conn, conn.transaction():
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
                call.user.user_id,
                call.body.note,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyWaiting("you are already waiting in this queue") from None
        assert row is not None
        await outbox.emit(conn, "instant.joined", _entry_event(row))
        return await _entry_out(conn, row)


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


@routes.get("/api/v1/instant/entries/{id:uuid}", returns=EntryOut, auth="any")
async def get_entry(call: Call[None, None]) -> EntryOut:
    """A queue entry: the patient's position and estimated wait, or the
    booking once a doctor has taken them."""
    async with call.pool.acquire() as conn:
        row = await _visible_entry(conn, call.path_uuid("id"), call.user)
        return await _entry_out(conn, row)


@routes.delete("/api/v1/instant/entries/{id:uuid}", auth={Role.PATIENT})
async def leave_queue(call: Call[None, None]) -> None:
    """Leave the queue (409 ``not-waiting`` once a doctor has taken you)."""
    async with call.pool.acquire() as conn, conn.transaction():
        row = await _visible_entry(conn, call.path_uuid("id"), call.user, lock=True)
        if row["status"] != "waiting":
            raise NotWaiting(f"this entry is {row['status']}")
        row = await conn.fetchrow(
            "UPDATE instant_queue SET status = 'left' WHERE id = $1 RETURNING *", row["id"]
        )
        assert row is not None
        await outbox.emit(conn, "instant.left", _entry_event(row))


@routes.get(_QUEUE, returns=QueueOut, auth={Role.DOCTOR, Role.CLINIC_STAFF, Role.ADMIN})
async def queue_length(call: Call[None, None]) -> QueueOut:
    """How many patients wait in a queue (the clinic's doctors and staff)."""
    clinic_id, specialty = call.path_uuid("clinic_id"), _specialty(call)
    _check_clinic(call.user, clinic_id)
    async with call.pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT count(*) AS n, min(enqueued_at) AS oldest FROM instant_queue
               WHERE clinic_id = $1 AND specialty = $2 AND status = 'waiting'""",
            clinic_id,
            specialty,
        )
        assert row is not None
        doctors = await _doctors_taking(conn, clinic_id, specialty)
    return QueueOut(
        clinic_id=clinic_id,
        specialty=specialty,
        waiting=row["n"],
        oldest_enqueued_at=row["oldest"],
        doctors_taking=doctors,
    )


@routes.post(f"{_QUEUE}/take", returns=BookingOut, status=201, auth={Role.DOCTOR})
async def take_next(call: Call[None, None]) -> BookingOut:
    """Take the next waiting patient: creates an accepted instant video
    booking with the caller, starting now.

    404 ``queue-empty`` when nobody waits; 409 ``doctor-busy`` when the doctor
    already has a consultation at this time; 403 for a doctor of another
    specialty."""
    me = call.user
    clinic_id, specialty = call.path_uuid("clinic_id"), _specialty(call)
    _check_clinic(me, clinic_id)
    now = _now()
    async with call.pool.acquire() as conn, conn.transaction():
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
        await service.record_event(
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
    return booking_out(row)
