"""``/api/v1/visits``: a clinic that books in its own system asks, with its
API key, for a video visit and everyone's links (:mod:`booking.bookings.elsewhere`;
docs/guests.md, "Visits booked elsewhere").

The visit is a booking of the clinic's: its room (``booking-<id>``) has the
webhooks, the call report, the recordings and the invites of a booked one.
Links are room tokens valid from shortly before ``starts_at`` to
``ends_at``, made afresh on each read; cancelling ends the call.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import Field, StringConstraints, model_validator

from booking import calls
from booking.bookings import elsewhere
from wadud.errors import Forbidden
from wadud.web.api import ApiModel, Call, Routes
from wadud.web.api_keys import ApiKey, Scope
from wadud.web.roles import ROLES

routes = Routes("visits", "Video visits a clinic books in its own system.")

_REF = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$"
#: The longest visit.
LONGEST = dt.timedelta(hours=12)
#: The roles a visit's extra participants may have (a patient and a doctor
#: are the visit's own).
GUEST_ROLES = tuple(r for r in ROLES if r not in ("patient", "doctor"))

Name = Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]


class NotAClinicKey(Forbidden):
    code = "not-a-clinic-key"
    title = "Only a clinic's key books visits"


class PatientIn(ApiModel):
    #: The clinic's own reference for the patient (a record number): their
    #: visits gather under one person here.
    reference: Annotated[str, Field(pattern=_REF)]
    name: Name


class PersonIn(ApiModel):
    #: interpreter, family, clinician, observer or staff.
    role: Literal["interpreter", "family", "clinician", "observer", "staff"]
    name: Name


class VisitIn(ApiModel):
    #: The clinic's own reference for the visit: one visit per reference.
    reference: Annotated[str, Field(pattern=_REF)]
    #: One of the clinic's doctors here (``/api/v1/clinics/{id}/doctors``).
    doctor_id: UUID
    starts_at: dt.datetime
    ends_at: dt.datetime
    patient: PatientIn
    #: Others in the visit from the start, each with a link of their own.
    #: Guests added later come by invite (``/api/v1/invites``).
    participants: Annotated[list[PersonIn], Field(max_length=10)] = []
    #: The language of the call page's links.
    locale: Literal["en", "ur", "ar"] | None = None

    @model_validator(mode="after")
    def _window(self) -> VisitIn:
        if self.starts_at.tzinfo is None or self.ends_at.tzinfo is None:
            raise ValueError("give starts_at and ends_at with a time zone")
        if not self.starts_at < self.ends_at <= self.starts_at + LONGEST:
            raise ValueError("ends_at must be after starts_at, and at most 12 hours on")
        return self


class Link(calls.VideoLink):
    #: The participant's name as the room shows it.
    name: str


class Visit(ApiModel):
    id: UUID
    reference: str
    room: str
    #: accepted, in_progress, completed, cancelled, no_show.
    status: str
    starts_at: dt.datetime
    ends_at: dt.datetime
    #: The doctor's, the patient's, then each participant's, in order.
    links: list[Link]


class CancelIn(ApiModel):
    reason: Annotated[str, StringConstraints(max_length=500)] = ""


def _clinic(key: ApiKey) -> UUID:
    if key.scope is not Scope.CLINIC or key.clinic_id is None:
        raise NotAClinicKey("use a clinic key (wadud key create --scope clinic)")
    return key.clinic_id


def _out(
    call: Call[Any, Any],
    row: Mapping[str, Any],
    who: elsewhere.People,
    people: list[PersonIn],
    locale: str | None,
) -> Visit:
    settings = call.settings
    region = who.region
    whom = [
        (str(who.doctor_user or f"doctor-{row['doctor_id']}"), who.doctor_name, "doctor"),
        (str(row["patient_id"]), who.patient_name, "patient"),
        *((f"guest-{row['id'].hex[:12]}-{i}", p.name, p.role) for i, p in enumerate(people)),
    ]
    links = []
    for identity, name, role in whom:
        made = calls.video_link(
            settings,
            row,
            identity=identity,
            name=name,
            role=role,
            locale=locale,
            clinic_region=region or "",
        )
        links.append(Link(**made.model_dump(), name=name))
    return Visit(
        id=row["id"],
        reference=row["external_ref"],
        room=calls.room_of(str(row["id"])),
        status=row["status"],
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        links=links,
    )


@routes.post(
    "/api/v1/visits",
    body=VisitIn,
    returns=Visit,
    status=201,
    auth="api_key",
    responses={
        403: "Not a clinic's key (not-a-clinic-key)",
        404: "The doctor is not one of the clinic's (doctor-not-found)",
        409: "The clinic already has a visit with this reference (visit-exists)",
    },
    # The answer holds links: never replayed from the idempotency store.
    replay=False,
)
async def create_visit(call: Call[VisitIn, None]) -> Visit:
    """Book a video visit the clinic scheduled in its own system, and get
    the doctor's, the patient's and each participant's link."""
    body = call.body
    clinic = _clinic(call.api_key)
    async with call.pool.acquire() as conn:
        row = await elsewhere.create(
            conn,
            clinic=clinic,
            reference=body.reference,
            doctor=body.doctor_id,
            starts_at=body.starts_at,
            ends_at=body.ends_at,
            patient_ref=body.patient.reference,
            patient_name=body.patient.name,
            key_id=call.api_key.id,
        )
        who = await elsewhere.people(conn, row)
    return _out(call, row, who, body.participants, body.locale)


@routes.get(
    "/api/v1/visits/{visit_id:uuid}",
    returns=Visit,
    auth="api_key",
    responses={404: "No such visit of this clinic (visit-not-found)"},
)
async def get_visit(call: Call[None, None]) -> Visit:
    """The visit, with the doctor's and the patient's links made afresh."""
    clinic = _clinic(call.api_key)
    row = await elsewhere.get(call.pool, clinic, call.path_uuid("visit_id"))
    return _out(call, row, await elsewhere.people(call.pool, row), [], None)


@routes.post(
    "/api/v1/visits/{visit_id:uuid}/cancel",
    body=CancelIn,
    returns=None,
    auth="api_key",
    responses={
        404: "No such visit of this clinic (visit-not-found)",
        409: "The visit is over already",
    },
)
async def cancel_visit(call: Call[CancelIn, None]) -> None:
    """Call the visit off: its links stop working and its call ends."""
    clinic = _clinic(call.api_key)
    async with call.pool.acquire() as conn:
        await elsewhere.cancel(conn, clinic, call.path_uuid("visit_id"), call.body.reason)


__all__ = ["CancelIn", "Link", "PatientIn", "PersonIn", "Visit", "VisitIn", "routes"]
