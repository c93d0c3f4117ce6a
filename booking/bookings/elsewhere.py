"""Visits a clinic books in its own system (``POST /api/v1/visits``,
docs/guests.md "Visits booked elsewhere").

A clinic that schedules in its own EHR still wants a Wadud video visit
with all a booked one has: its room's webhooks, its call report, its
recordings and invites. So such a visit is a booking row (migration 0031):

* ``external_ref``: the clinic's own reference, one visit per reference;
* accepted from the start, free, and outside the overlap rule (the clinic's
  system keeps its doctor's time, not Wadud's schedule);
* its doctor one of the clinic's doctors here, its patient an account with
  no credentials made once per clinic patient reference
  (``external_patients``), so recordings and data rights gather under one
  person;
* no ``booking.accepted`` event, so nothing a Wadud booking tells its
  patient and doctor (confirmation, reminders) goes out: the clinic's own
  system does that. Its history row is written, and cancelling it is a
  clinic's cancellation like any other (its call ends).

Consent for the consultation is the clinic's to collect in its own system,
so the join asks the patient for none (signalling.edge.http); a recording
is still asked of everyone in the call.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from booking.bookings.changes import cancel_booking
from booking.errors import BookingError
from booking.refunds import Canceller
from wadud.errors import Conflict, NotFound
from wadud.state import audit

__all__ = [
    "People",
    "UnknownDoctor",
    "VisitExists",
    "VisitNotFound",
    "cancel",
    "create",
    "get",
    "people",
]


class VisitExists(BookingError, Conflict):
    code = "visit-exists"
    title = "The clinic already has a visit with this reference"


class UnknownDoctor(BookingError, NotFound):
    code = "doctor-not-found"
    title = "No such doctor in this clinic"


class VisitNotFound(BookingError, NotFound):
    code = "visit-not-found"
    title = "No such visit"


async def _patient(conn: asyncpg.Connection, clinic: UUID, reference: str, name: str) -> UUID:
    """The account of the clinic's patient ``reference``, made the first time."""
    found = await conn.fetchval(
        "SELECT user_id FROM external_patients WHERE clinic_id = $1 AND reference = $2",
        clinic,
        reference,
    )
    if found is not None:
        await conn.execute(
            "UPDATE users SET display_name = $2 WHERE id = $1 AND display_name <> $2", found, name
        )
        return UUID(str(found))
    user = await conn.fetchval(
        "INSERT INTO users (role, display_name, anonymous) VALUES ('patient', $1, true)"
        " RETURNING id",
        name,
    )
    await conn.execute(
        "INSERT INTO external_patients (clinic_id, reference, user_id) VALUES ($1, $2, $3)",
        clinic,
        reference,
        user,
    )
    return UUID(str(user))


async def create(
    conn: asyncpg.Connection,
    *,
    clinic: UUID,
    reference: str,
    doctor: UUID,
    starts_at: dt.datetime,
    ends_at: dt.datetime,
    patient_ref: str,
    patient_name: str,
    key_id: str,
) -> asyncpg.Record:
    """Keep a new visit of ``clinic`` (its booking row); :class:`VisitExists`
    for a reference it already used, :class:`UnknownDoctor` for a doctor
    not of the clinic."""
    async with conn.transaction():
        doc = await conn.fetchrow(
            "SELECT key FROM doctors WHERE id = $1 AND clinic_id = $2", doctor, clinic
        )
        if doc is None:
            raise UnknownDoctor(f"no doctor {doctor} in this clinic")
        currency = await conn.fetchval("SELECT currency FROM clinics WHERE id = $1", clinic)
        patient = await _patient(conn, clinic, patient_ref, patient_name)
        try:
            row = await conn.fetchrow(
                """INSERT INTO bookings (clinic_id, doctor_id, doctor_key, patient_id, type,
                       starts_at, ends_at, blocked, status, price_minor, currency, external_ref)
                   VALUES ($1, $2, $3, $4, 'video', $5, $6, tstzrange($5, $6), 'accepted',
                       0, $7, $8)
                   RETURNING *""",
                clinic,
                doctor,
                doc["key"],
                patient,
                starts_at,
                ends_at,
                currency,
                reference,
            )
        except asyncpg.UniqueViolationError:
            raise VisitExists(f"the clinic's visit {reference!r} exists already") from None
        assert row is not None
        await conn.execute(
            """INSERT INTO booking_events
                   (booking_id, clinic_id, event, from_state, to_state, actor_id, detail)
               VALUES ($1, $2, 'booked_elsewhere', NULL, 'accepted', NULL, $3::jsonb)""",
            row["id"],
            clinic,
            {"reference": reference, "key": key_id},
        )
        await audit.record_about(
            conn,
            row,
            "booking",
            actor=None,
            action="visit.created",
            detail={"reference": reference, "key": key_id},
        )
        return row


@dataclass(frozen=True)
class People:
    """Who a visit's own links name, and where its clinic is."""

    doctor_name: str
    #: The doctor's account, if they have one here.
    doctor_user: UUID | None
    patient_name: str
    region: str


async def people(conn: asyncpg.Connection | asyncpg.Pool, row: asyncpg.Record) -> People:
    found = await conn.fetchrow(
        """SELECT d.display_name AS doctor_name, d.user_id AS doctor_user,
                  u.display_name AS patient_name, c.region
           FROM bookings b JOIN doctors d ON d.id = b.doctor_id
                JOIN users u ON u.id = b.patient_id JOIN clinics c ON c.id = b.clinic_id
           WHERE b.id = $1""",
        row["id"],
    )
    assert found is not None
    return People(**dict(found))


async def get(conn: asyncpg.Connection | asyncpg.Pool, clinic: UUID, visit: UUID) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT * FROM bookings WHERE id = $1 AND clinic_id = $2 AND external_ref IS NOT NULL",
        visit,
        clinic,
    )
    if row is None:
        raise VisitNotFound(f"no visit {visit} in this clinic")
    return row


async def cancel(conn: asyncpg.Connection, clinic: UUID, visit: UUID, reason: str) -> Any:
    """The clinic calls the visit off: a clinic's cancellation (its call ends)."""
    async with conn.transaction():
        await get(conn, clinic, visit)
        return await cancel_booking(conn, visit, by=Canceller.CLINIC, actor_id=None, reason=reason)
