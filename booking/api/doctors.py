"""Doctors over HTTP: onboarding, profile, credential documents,
verification and publication, availability, and free slots.

Who sees what, and a doctor's life from draft to published, are told in
:mod:`booking.doctors`; the handlers here parse, call it and render.
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from aiohttp import web
from pydantic import AwareDatetime, Field, StringConstraints

from booking.doctors import documents, hours, profiles, reviews
from wadud.errors import NotFound, Unprocessable, UnsupportedMediaType
from wadud.state.rows import from_row
from wadud.state.storage import storage_of
from wadud.web import accounts, auth
from wadud.web.api import ApiModel, Call, Role, Routes, file_body
from wadud.web.http import read_upload

routes = Routes("doctors", "Doctor profiles, credentials, availability and slots.")

_DOCTOR = "/api/v1/doctors/{doctor_id:uuid}"
_DOCUMENT = _DOCTOR + "/documents/{document_id:uuid}"
# Braces cannot appear in a path pattern (the route syntax uses them).
_DAY = "{day:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]}"
#: Longest range one slots query may cover.
MAX_SLOT_RANGE = timedelta(days=31)
DEFAULT_SLOT_RANGE = timedelta(days=7)
_SLOT_REACH = timedelta(days=731)

Specialty = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
Language = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}$")]
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Bio = Annotated[str, StringConstraints(max_length=5000)]
Fee = Annotated[int, Field(ge=0, le=10**12)]
Languages = Annotated[list[Language], Field(max_length=20)]
ConsultType = Literal["video", "in_person"]
Status = Literal["draft", "pending_verification", "published", "suspended"]
WallTime = Annotated[str, StringConstraints(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")]


def _video_only() -> list[ConsultType]:
    return ["video"]


def _default_lengths() -> dict[ConsultType, int]:
    return {"video": 20, "in_person": 30}


# -- models ------------------------------------------------------------------------


class DoctorIn(ApiModel):
    email: accounts.Email
    password: accounts.Password
    display_name: DisplayName
    specialty: Specialty
    languages: Languages = Field(default_factory=list)
    bio: Bio = ""
    fee_minor: Fee


class DoctorPatch(ApiModel):
    display_name: DisplayName | None = None
    specialty: Specialty | None = None
    languages: Languages | None = None
    bio: Bio | None = None
    fee_minor: Fee | None = None


class Doctor(ApiModel):
    id: UUID
    clinic_id: UUID
    display_name: str
    specialty: str
    languages: list[str]
    bio: str
    fee_minor: int
    currency: str
    region: str
    status: Status
    time_zone: str
    consultation_types: list[str]
    rating_average: float | None
    rating_count: int
    next_free_at: dt.datetime | None
    published_at: dt.datetime | None
    created_at: dt.datetime


class DocumentQuery(ApiModel):
    kind: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
    filename: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None


class Document(ApiModel):
    id: UUID
    doctor_id: UUID
    kind: str
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    status: Literal["pending", "verified", "rejected"]
    review_note: str | None
    reviewed_at: dt.datetime | None
    created_at: dt.datetime


class ReviewNote(ApiModel):
    note: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] = ""


class RejectNote(ApiModel):
    note: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class Window(ApiModel):
    start: WallTime = Field(description="Local wall time HH:MM.")
    end: WallTime = Field(description="Local wall time HH:MM; 24:00 is midnight at day end.")
    types: Annotated[list[ConsultType], Field(min_length=1, max_length=2)] = Field(
        default_factory=_video_only
    )


class WeeklyWindow(Window):
    weekday: Annotated[int, Field(ge=0, le=6, description="0 = Monday.")]


class Override(ApiModel):
    day: dt.date
    closed: bool
    windows: list[Window]


class OverrideIn(ApiModel):
    """A date's windows, replacing the weekly ones; no windows is a day off."""

    windows: Annotated[list[Window], Field(max_length=24)] = Field(default_factory=list)


class AvailabilityIn(ApiModel):
    time_zone: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    buffer_before_min: Annotated[int, Field(ge=0, le=240)] = 0
    buffer_after_min: Annotated[int, Field(ge=0, le=240)] = 0
    min_notice_min: Annotated[int, Field(ge=0, le=43_200)] = 60
    horizon_days: Annotated[int, Field(ge=1, le=365)] = 60
    slot_minutes: Annotated[
        dict[ConsultType, Annotated[int, Field(ge=5, le=480)]], Field(min_length=1)
    ] = Field(default_factory=_default_lengths)
    weekly: Annotated[list[WeeklyWindow], Field(max_length=100)] = Field(default_factory=list)


class AvailabilityOut(ApiModel):
    time_zone: str
    buffer_before_min: int
    buffer_after_min: int
    min_notice_min: int
    horizon_days: int
    slot_minutes: dict[str, int]
    weekly: list[WeeklyWindow]
    overrides: list[Override]
    next_free_at: dt.datetime | None


class SlotQuery(ApiModel):
    type: ConsultType = "video"
    from_: AwareDatetime | None = Field(default=None, alias="from")
    to: AwareDatetime | None = None


class SlotOut(ApiModel):
    start: dt.datetime
    end: dt.datetime
    local_start: str = Field(description="Start in the doctor's time zone, ISO 8601.")
    local_end: str


class Slots(ApiModel):
    doctor_id: UUID
    type: ConsultType
    time_zone: str
    range_start: dt.datetime
    range_end: dt.datetime
    slots: list[SlotOut]


# -- rendering -----------------------------------------------------------------


def doctor_out(row: Mapping[str, Any]) -> Doctor:
    return from_row(
        Doctor,
        row,
        languages=list(row["languages"]),
        consultation_types=sorted(row["slot_minutes"]),
        rating_average=reviews.rating_average(row),
    )


def _now() -> datetime:
    return datetime.now(UTC)


# -- onboarding and profile ----------------------------------------------------------


@routes.post(
    "/api/v1/clinics/{clinic_id:uuid}/doctors",
    body=DoctorIn,
    returns=Doctor,
    status=201,
    auth={Role.ADMIN, Role.CLINIC_STAFF},
)
async def onboard_doctor(call: Call[DoctorIn, None]) -> Doctor:
    """Onboard a doctor: their login and a draft profile.

    Clinic staff onboard into their own clinic, admins into any. The fee is in
    the clinic's currency (minor units); region and currency follow the clinic."""
    me, body, clinic_id = call.user, call.body, call.path_uuid("clinic_id")
    if me.role != Role.ADMIN and me.clinic_id != clinic_id:
        raise NotFound("no such clinic")
    row = await profiles.onboard(
        call.pool,
        call.request.app[auth.PASSWORDS],
        clinic_id,
        email=body.email,
        password=body.password,
        display_name=body.display_name,
        specialty=body.specialty,
        languages=body.languages,
        bio=body.bio,
        fee_minor=body.fee_minor,
    )
    return doctor_out(row)


@routes.get(_DOCTOR, returns=Doctor, auth="optional")
async def get_doctor(call: Call[None, None]) -> Doctor:
    """A doctor's profile.

    Published doctors are public; staff of the clinic, admins and the doctor
    see any status."""
    return doctor_out(await profiles.read(call.pool, call.principal, call.path_uuid("doctor_id")))


@routes.patch(
    _DOCTOR, body=DoctorPatch, returns=Doctor, auth={Role.ADMIN, Role.CLINIC_STAFF, Role.DOCTOR}
)
async def update_doctor(call: Call[DoctorPatch, None]) -> Doctor:
    """Edit a doctor's profile (staff of the clinic, admins, the doctor).

    Only the fields sent change."""
    body = call.body
    fields = {k: getattr(body, k) for k in body.model_fields_set}
    if any(v is None for v in fields.values()):
        raise Unprocessable("profile fields cannot be null")
    row = await profiles.update(call.pool, call.user, call.path_uuid("doctor_id"), fields)
    return doctor_out(row)


# -- lifecycle ---------------------------------------------------------------------


@routes.post(_DOCTOR + "/submit", returns=Doctor, auth={Role.ADMIN, Role.CLINIC_STAFF})
async def submit_doctor(call: Call[None, None]) -> Doctor:
    """Submit a draft profile for verification (draft -> pending_verification)."""
    return doctor_out(await profiles.submit(call.pool, call.user, call.path_uuid("doctor_id")))


@routes.post(_DOCTOR + "/publish", returns=Doctor, auth={Role.ADMIN})
async def publish_doctor(call: Call[None, None]) -> Doctor:
    """Publish a doctor: visible in search and bookable.

    Needs at least one verified credential document and some availability
    (a weekly window or an upcoming date with windows)."""
    return doctor_out(await profiles.publish(call.pool, call.user, call.path_uuid("doctor_id")))


@routes.post(_DOCTOR + "/suspend", returns=Doctor, auth={Role.ADMIN})
async def suspend_doctor(call: Call[None, None]) -> Doctor:
    """Suspend a doctor: hidden from the public and no longer bookable.

    Existing bookings are left to the bookings API."""
    return doctor_out(await profiles.suspend(call.pool, call.user, call.path_uuid("doctor_id")))


# -- credential documents --------------------------------------------------------------


@routes.post(
    _DOCTOR + "/documents",
    query=DocumentQuery,
    returns=Document,
    status=201,
    auth={Role.ADMIN, Role.CLINIC_STAFF, Role.DOCTOR},
    raw_body=file_body(documents.ACCEPTED),
    responses={413: "Document too large", 415: "Not a PDF, PNG or JPEG"},
)
async def upload_document(call: Call[None, DocumentQuery]) -> Document:
    """Upload a credential document (PDF, PNG or JPEG) as the raw body.

    ``?kind=license`` names what it is; ``?filename=`` is kept for downloads.
    The type is checked against the file's first bytes, not its name."""
    request, query = call.request, call.query
    doctor_id = call.path_uuid("doctor_id")
    await documents.check_upload_allowed(call.pool, call.user, doctor_id)
    if request.content_type not in documents.ACCEPTED:
        raise UnsupportedMediaType("send a PDF, PNG or JPEG with its Content-Type")
    data = await read_upload(request, call.settings.booking_upload_max_bytes, "a document")
    if not data:
        raise Unprocessable("the document is empty")
    found = documents.sniff(data)
    if found is None or found[0] != request.content_type:
        raise UnsupportedMediaType(f"the content is not {request.content_type}")
    doc = await documents.upload(
        call.pool,
        storage_of(request.app),
        call.user,
        doctor_id,
        kind=query.kind,
        filename=query.filename,
        data=data,
        found=found,
    )
    return Document(**dict(doc))


@routes.get(
    _DOCTOR + "/documents",
    returns=list[Document],
    auth={Role.ADMIN, Role.CLINIC_STAFF, Role.DOCTOR},
)
async def list_documents(call: Call[None, None]) -> list[Document]:
    """A doctor's credential documents (staff of the clinic, admins, the doctor)."""
    docs = await documents.listed(call.pool, call.user, call.path_uuid("doctor_id"))
    return [Document(**dict(d)) for d in docs]


@routes.get(
    _DOCUMENT + "/content",
    returns={
        "content": {
            t: {"schema": {"type": "string", "format": "binary"}}
            for t in sorted(documents.ACCEPTED)
        }
    },
    auth={Role.ADMIN, Role.CLINIC_STAFF},
)
async def download_document(call: Call[None, None]) -> web.Response:
    """Download a credential document (staff of the clinic, admins)."""
    doc, data = await documents.content(
        call.pool,
        storage_of(call.request.app),
        call.user,
        call.path_uuid("doctor_id"),
        call.path_uuid("document_id"),
    )
    filename = documents.safe_filename(doc["filename"], "document")
    return web.Response(
        body=data,
        content_type=doc["content_type"],
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        },
    )


async def _review_document(call: Call[Any, None], status: str, note: str) -> Document:
    new = await documents.review(
        call.pool,
        call.user,
        call.path_uuid("doctor_id"),
        call.path_uuid("document_id"),
        status,
        note,
    )
    return Document(**dict(new))


@routes.post(_DOCUMENT + "/verify", body=ReviewNote, returns=Document, auth={Role.ADMIN})
async def verify_document(call: Call[ReviewNote, None]) -> Document:
    """Mark a pending credential document verified."""
    return await _review_document(call, "verified", call.body.note)


@routes.post(_DOCUMENT + "/reject", body=RejectNote, returns=Document, auth={Role.ADMIN})
async def reject_document(call: Call[RejectNote, None]) -> Document:
    """Reject a pending credential document, saying why."""
    return await _review_document(call, "rejected", call.body.note)


# -- availability --------------------------------------------------------------------


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _wall(t: dt.time, *, is_end: bool) -> str:
    return "24:00" if is_end and t == dt.time(0) else t.strftime("%H:%M")


def _time_of(text: str) -> dt.time:
    return dt.time(0) if text == "24:00" else dt.time.fromisoformat(text)


def _window_json(w: Window) -> dict[str, Any]:
    return {"start": w.start, "end": w.end, "types": sorted(set(w.types))}


def _day_of(text: str) -> dt.date:
    """A ``YYYY-MM-DD`` path segment as a date (422 if no such date)."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise Unprocessable(f"{text!r} is not a calendar date YYYY-MM-DD") from None


def _availability_out(found: hours.Hours) -> AvailabilityOut:
    row = found.doctor
    return from_row(
        AvailabilityOut,
        row,
        slot_minutes=dict(row["slot_minutes"]),
        weekly=[
            WeeklyWindow(
                weekday=r["weekday"],
                start=_wall(r["start_local"], is_end=False),
                end=_wall(r["end_local"], is_end=True),
                types=sorted(r["types"]),
            )
            for r in found.rules
        ],
        overrides=[
            Override(
                day=o["day"],
                closed=o["closed"],
                windows=[Window(**w) for w in o["windows"]],
            )
            for o in found.overrides
        ],
    )


@routes.get(
    _DOCTOR + "/availability",
    returns=AvailabilityOut,
    auth={Role.ADMIN, Role.CLINIC_STAFF, Role.DOCTOR},
)
async def get_availability(call: Call[None, None]) -> AvailabilityOut:
    """A doctor's schedule: settings, weekly windows and upcoming date overrides."""
    return _availability_out(await hours.read(call.pool, call.user, call.path_uuid("doctor_id")))


@routes.put(
    _DOCTOR + "/availability",
    body=AvailabilityIn,
    returns=AvailabilityOut,
    auth={Role.ADMIN, Role.CLINIC_STAFF, Role.DOCTOR},
)
async def put_availability(call: Call[AvailabilityIn, None]) -> AvailabilityOut:
    """Replace a doctor's schedule settings and all weekly windows.

    Windows are local wall times in ``time_zone`` (an IANA name); windows of
    one weekday may not overlap; each window's types need a slot length that
    fits in it. Existing bookings are kept; date overrides are kept."""
    body = call.body
    if body.time_zone not in _zones():
        raise Unprocessable(f"{body.time_zone!r} is not an IANA time zone")
    settings = {
        "time_zone": body.time_zone,
        "buffer_before_min": body.buffer_before_min,
        "buffer_after_min": body.buffer_after_min,
        "min_notice_min": body.min_notice_min,
        "horizon_days": body.horizon_days,
        "slot_minutes": dict(body.slot_minutes),
    }
    rules = [
        {
            "weekday": w.weekday,
            "start_local": _time_of(w.start),
            "end_local": _time_of(w.end),
            "types": sorted(set(w.types)),
        }
        for w in body.weekly
    ]
    found = await hours.replace_weekly(
        call.pool, call.user, call.path_uuid("doctor_id"), settings, rules
    )
    return _availability_out(found)


@routes.put(
    _DOCTOR + f"/availability/overrides/{_DAY}",
    body=OverrideIn,
    returns=Override,
    auth={Role.ADMIN, Role.CLINIC_STAFF, Role.DOCTOR},
)
async def put_override(call: Call[OverrideIn, None]) -> Override:
    """Set one local date's windows, replacing the weekly ones; no windows
    makes the date a day off."""
    day = _day_of(call.path("day"))
    windows = [_window_json(w) for w in call.body.windows]
    await hours.set_override(call.pool, call.user, call.path_uuid("doctor_id"), day, windows)
    return Override(day=day, closed=not windows, windows=list(call.body.windows))


@routes.delete(
    _DOCTOR + f"/availability/overrides/{_DAY}",
    auth={Role.ADMIN, Role.CLINIC_STAFF, Role.DOCTOR},
)
async def delete_override(call: Call[None, None]) -> None:
    """Remove a date override; the weekly windows apply again that day."""
    day = _day_of(call.path("day"))
    await hours.remove_override(call.pool, call.user, call.path_uuid("doctor_id"), day)


# -- slots -----------------------------------------------------------------------


@routes.get(_DOCTOR + "/slots", query=SlotQuery, returns=Slots, auth="optional")
async def list_slots(call: Call[None, SlotQuery]) -> Slots:
    """Free slots of a published doctor.

    ``from`` (default now) and ``to`` (default a week later) bound the slot
    starts, at most 31 days apart. Times are UTC, with the doctor's local
    time alongside for display."""
    q = call.query
    now = _now()
    # Far-off instants have no slots and would overflow date arithmetic.
    for given in (q.from_, q.to):
        if given is not None and not now - _SLOT_REACH < given < now + _SLOT_REACH:
            raise Unprocessable("`from` and `to` must lie within two years of now")
    start = q.from_ or now
    end = q.to or start + DEFAULT_SLOT_RANGE
    if end <= start:
        raise Unprocessable("`to` must be after `from`")
    if end - start > MAX_SLOT_RANGE:
        raise Unprocessable(f"ask for at most {MAX_SLOT_RANGE.days} days at a time")
    row, found = await hours.free_slots(
        call.pool, call.principal, call.path_uuid("doctor_id"), q.type, start, end, now
    )
    tz = zoneinfo.ZoneInfo(row["time_zone"])
    return Slots(
        doctor_id=row["id"],
        type=q.type,
        time_zone=row["time_zone"],
        range_start=start.astimezone(UTC),
        range_end=end.astimezone(UTC),
        slots=[
            SlotOut(
                start=s.start,
                end=s.end,
                local_start=s.start.astimezone(tz).isoformat(),
                local_end=s.end.astimezone(tz).isoformat(),
            )
            for s in found
        ],
    )
