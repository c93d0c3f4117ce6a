"""Instant consultations over HTTP: a patient joins a clinic's queue for a
specialty and watches their place; the clinic's doctors see the queue and
take the next patient. The queue's rules (concurrency, payment, the wait
estimate) are told in :mod:`booking.bookings.queue`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any
from uuid import UUID

from pydantic import StringConstraints

from booking.api.bookings import BookingOut, booking_out
from booking.bookings import queue
from wadud.errors import NotFound
from wadud.state.rows import from_row
from wadud.web.api import ApiModel, Call, Principal, Role, Routes

routes = Routes("instant-queue", "Instant consultations: queue, position, take.")

_SPECIALTY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_QUEUE = "/api/v1/instant/{clinic_id:uuid}/{specialty:[a-z][a-z0-9_-]*}"


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


def _specialty(call: Call[Any, Any]) -> str:
    specialty = call.path("specialty")
    if not _SPECIALTY.match(specialty):
        raise NotFound("no such queue")
    return specialty


def _check_clinic(me: Principal, clinic_id: UUID) -> None:
    # Another clinic's queue does not exist for this caller (no id leaks).
    if me.role is not Role.ADMIN and me.clinic_id != clinic_id:
        raise NotFound("no such queue")


def _entry_out(entry: queue.Entry) -> EntryOut:
    return from_row(
        EntryOut,
        entry.row,
        position=entry.position,
        estimated_wait_seconds=entry.estimated_wait_seconds,
    )


@routes.post(_QUEUE, body=JoinIn, returns=EntryOut, status=201, auth={Role.PATIENT})
async def join_queue(call: Call[JoinIn, None]) -> EntryOut:
    """Join a clinic's instant-consultation queue for a specialty.

    403 ``instant-unavailable`` where the region does not offer instant
    consultations; 404 when the clinic has no published doctor of the
    specialty; 409 ``already-waiting`` if the patient waits there already."""
    clinic_id, specialty = call.path_uuid("clinic_id"), _specialty(call)
    entry = await queue.join(call.pool, clinic_id, specialty, call.user.user_id, call.body.note)
    return _entry_out(entry)


@routes.get("/api/v1/instant/entries/{id:uuid}", returns=EntryOut, auth="any")
async def get_entry(call: Call[None, None]) -> EntryOut:
    """A queue entry: the patient's position and estimated wait, or the
    booking once a doctor has taken them."""
    return _entry_out(await queue.entry(call.pool, call.path_uuid("id"), call.user))


@routes.delete("/api/v1/instant/entries/{id:uuid}", auth={Role.PATIENT})
async def leave_queue(call: Call[None, None]) -> None:
    """Leave the queue (409 ``not-waiting`` once a doctor has taken you)."""
    await queue.leave(call.pool, call.path_uuid("id"), call.user)


@routes.get(_QUEUE, returns=QueueOut, auth={Role.DOCTOR, Role.CLINIC_STAFF, Role.ADMIN})
async def queue_length(call: Call[None, None]) -> QueueOut:
    """How many patients wait in a queue (the clinic's doctors and staff)."""
    clinic_id, specialty = call.path_uuid("clinic_id"), _specialty(call)
    _check_clinic(call.user, clinic_id)
    found = await queue.waiting(call.pool, clinic_id, specialty)
    return QueueOut(
        clinic_id=clinic_id,
        specialty=specialty,
        waiting=found.waiting,
        oldest_enqueued_at=found.oldest_enqueued_at,
        doctors_taking=found.doctors_taking,
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
    return booking_out(await queue.take_next(call.pool, me, clinic_id, specialty))
