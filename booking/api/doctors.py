"""Doctors: onboarding, profile, credential documents, verification and
publication, availability, and free slots.

A doctor's life: clinic staff onboard them (``draft``), upload credentials and
submit (``pending_verification``); an admin verifies a document and publishes
(``published``: visible to the public and bookable) or suspends. Who sees what:

* the public sees published doctors only;
* staff of the doctor's clinic and admins see and manage any status;
* a doctor sees and edits their own profile and availability.

Another clinic's unpublished doctor is a 404, so ids do not leak.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import zoneinfo
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
from aiohttp import web
from pydantic import AwareDatetime, Field, StringConstraints

from booking.schedule import slots as slot_db
from wadud import accounts, auth, outbox
from wadud.api import ApiModel, Call, Principal, Role, Routes, file_body
from wadud.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Unprocessable,
    UnsupportedMediaType,
)
from wadud.http import read_upload
from wadud.rows import from_row
from wadud.storage import sniff_type, storage_of

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


# -- access --------------------------------------------------------------------


def is_staff_of(me: Principal | None, row: Mapping[str, Any]) -> bool:
    """An admin, or clinic staff of the doctor's clinic."""
    return me is not None and me.oversees(row["clinic_id"])


def may_manage(me: Principal | None, row: Mapping[str, Any]) -> bool:
    """Staff of the doctor's clinic, an admin, or the doctor."""
    return is_staff_of(me, row) or (
        me is not None and me.role == Role.DOCTOR and row["user_id"] == me.user_id
    )


async def fetch_doctor(
    conn: asyncpg.Connection,
    me: Principal | None,
    doctor_id: UUID,
    *,
    need: Literal["view", "manage", "staff"] = "view",
    lock: bool = False,
) -> asyncpg.Record:
    """The doctors row if ``me`` may ``need`` it. A doctor ``me`` may not even
    see is a 404 (ids of unpublished doctors do not leak); a visible one ``me``
    may not change is a 403."""
    row = await conn.fetchrow(
        "SELECT * FROM doctors WHERE id = $1" + (" FOR UPDATE" if lock else ""), doctor_id
    )
    if row is None:
        raise NotFound("no such doctor")
    allowed = {"view": may_manage, "manage": may_manage, "staff": is_staff_of}[need](me, row)
    if allowed:
        return row
    if row["status"] == "published":
        if need == "view":
            return row
        raise Forbidden("you may not change this doctor")
    raise NotFound("no such doctor")


async def _doctor_to_change(
    call: Call[Any, Any], conn: asyncpg.Connection, need: Literal["manage", "staff"]
) -> asyncpg.Record:
    """The doctor the path names, locked for a change the caller may ``need``."""
    return await fetch_doctor(conn, call.user, call.path_uuid("doctor_id"), need=need, lock=True)


def doctor_out(row: Mapping[str, Any]) -> Doctor:
    count = int(row["rating_count"])
    return from_row(
        Doctor,
        row,
        languages=list(row["languages"]),
        consultation_types=sorted(row["slot_minutes"]),
        rating_average=round(row["rating_sum"] / count, 2) if count else None,
        rating_count=count,
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
    async with call.pool.acquire() as conn, conn.transaction():
        clinic = await conn.fetchrow(
            "SELECT region, currency FROM clinics WHERE id = $1", clinic_id
        )
        if clinic is None:
            raise NotFound("no such clinic")
        user = await accounts.create_user(
            conn,
            email=body.email,
            password=body.password,
            role=Role.DOCTOR,
            clinic_id=clinic_id,
            display_name=body.display_name,
            passwords=call.request.app[auth.PASSWORDS],
        )
        row = await conn.fetchrow(
            """INSERT INTO doctors (clinic_id, user_id, display_name, specialty, languages, bio,
                                    fee_minor, currency, region)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *""",
            clinic_id,
            user.id,
            body.display_name,
            body.specialty,
            sorted(set(body.languages)),
            body.bio,
            body.fee_minor,
            clinic["currency"],
            clinic["region"],
        )
        assert row is not None
        await outbox.emit(
            conn,
            "doctor.created",
            {"doctor_id": str(row["id"]), "clinic_id": str(clinic_id), "user_id": str(user.id)},
        )
    return doctor_out(row)


@routes.get(_DOCTOR, returns=Doctor, auth="optional")
async def get_doctor(call: Call[None, None]) -> Doctor:
    """A doctor's profile.

    Published doctors are public; staff of the clinic, admins and the doctor
    see any status."""
    async with call.pool.acquire() as conn:
        row = await fetch_doctor(conn, call.principal, call.path_uuid("doctor_id"))
    return doctor_out(row)


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
    if "languages" in fields:
        fields["languages"] = sorted(set(fields["languages"]))
    async with call.pool.acquire() as conn, conn.transaction():
        row = await _doctor_to_change(call, conn, "manage")
        if fields:
            # Column names come from the model's own field names, never input.
            sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(fields, start=2))
            row = await conn.fetchrow(
                f"UPDATE doctors SET {sets}, updated_at = now() WHERE id = $1 RETURNING *",
                row["id"],
                *fields.values(),
            )
            assert row is not None
            await outbox.emit(
                conn,
                "doctor.updated",
                {
                    "doctor_id": str(row["id"]),
                    "clinic_id": str(row["clinic_id"]),
                    "fields": sorted(fields),
                },
            )
    return doctor_out(row)


# -- lifecycle ---------------------------------------------------------------------


_STATUS_TOPICS = {
    "pending_verification": "doctor.submitted",
    "published": "doctor.published",
    "suspended": "doctor.suspended",
}


async def _set_status(
    conn: asyncpg.Connection, row: Mapping[str, Any], allowed_from: set[str], to: str
) -> asyncpg.Record:
    if row["status"] not in allowed_from:
        raise Conflict(f"a {row['status']} doctor cannot become {to}")
    new = await conn.fetchrow(
        """UPDATE doctors SET status = $2, updated_at = now(),
                  published_at = CASE WHEN $2 = 'published' THEN now() ELSE published_at END
           WHERE id = $1 RETURNING *""",
        row["id"],
        to,
    )
    assert new is not None
    await outbox.emit(
        conn,
        _STATUS_TOPICS[to],
        {"doctor_id": str(row["id"]), "clinic_id": str(row["clinic_id"]), "status": to},
    )
    return new


@routes.post(_DOCTOR + "/submit", returns=Doctor, auth={Role.ADMIN, Role.CLINIC_STAFF})
async def submit_doctor(call: Call[None, None]) -> Doctor:
    """Submit a draft profile for verification (draft -> pending_verification)."""
    async with call.pool.acquire() as conn, conn.transaction():
        row = await _doctor_to_change(call, conn, "staff")
        row = await _set_status(conn, row, {"draft"}, "pending_verification")
    return doctor_out(row)


@routes.post(_DOCTOR + "/publish", returns=Doctor, auth={Role.ADMIN})
async def publish_doctor(call: Call[None, None]) -> Doctor:
    """Publish a doctor: visible in search and bookable.

    Needs at least one verified credential document and some availability
    (a weekly window or an upcoming date with windows)."""
    async with call.pool.acquire() as conn, conn.transaction():
        row = await _doctor_to_change(call, conn, "staff")
        verified = await conn.fetchval(
            "SELECT count(*) FROM doctor_documents WHERE doctor_id = $1 AND status = 'verified'",
            row["id"],
        )
        if not verified:
            raise Conflict("publishing needs at least one verified credential document")
        has_hours = await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM availability_rules WHERE doctor_id = $1)
                   OR EXISTS (SELECT 1 FROM availability_overrides
                              WHERE doctor_id = $1 AND NOT closed AND windows <> '[]'
                                AND day >= (now() AT TIME ZONE 'UTC')::date - 1)""",
            row["id"],
        )
        if not has_hours:
            raise Conflict("publishing needs some availability")
        row = await _set_status(conn, row, {"pending_verification", "suspended"}, "published")
        await slot_db.refresh_next_free(conn, row["id"], _now())
        row = await conn.fetchrow("SELECT * FROM doctors WHERE id = $1", row["id"])
        assert row is not None
    return doctor_out(row)


@routes.post(_DOCTOR + "/suspend", returns=Doctor, auth={Role.ADMIN})
async def suspend_doctor(call: Call[None, None]) -> Doctor:
    """Suspend a doctor: hidden from the public and no longer bookable.

    Existing bookings are left to the bookings API."""
    async with call.pool.acquire() as conn, conn.transaction():
        row = await _doctor_to_change(call, conn, "staff")
        row = await _set_status(
            conn, row, {"draft", "pending_verification", "published"}, "suspended"
        )
    return doctor_out(row)


# -- credential documents --------------------------------------------------------------

#: Accepted credential document types and the extension each is stored with.
_EXTENSIONS = {"application/pdf": ".pdf", "image/png": ".png", "image/jpeg": ".jpg"}
_ACCEPTED = set(_EXTENSIONS)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]")


def sniff(data: bytes) -> tuple[str, str] | None:
    """``(content type, extension)`` of ``data`` judged by its first bytes,
    for the document types we accept."""
    ctype = sniff_type(data)
    if ctype not in _EXTENSIONS:
        return None
    return ctype, _EXTENSIONS[ctype]


def _safe_filename(name: str | None, default: str) -> str:
    if not name:
        return default
    # Keep the last path component only, and only characters that are safe in
    # a Content-Disposition header and on any file system.
    base = re.split(r"[\\/]", name)[-1]
    base = _UNSAFE_NAME.sub("_", base).strip(" .")[:255]
    return base or default


_DOC_COLS = """id, doctor_id, kind, filename, content_type, size_bytes, sha256, status,
               review_note, reviewed_at, created_at"""


@routes.post(
    _DOCTOR + "/documents",
    query=DocumentQuery,
    returns=Document,
    status=201,
    auth={Role.ADMIN, Role.CLINIC_STAFF, Role.DOCTOR},
    raw_body=file_body(_ACCEPTED),
    responses={413: "Document too large", 415: "Not a PDF, PNG or JPEG"},
)
async def upload_document(call: Call[None, DocumentQuery]) -> Document:
    """Upload a credential document (PDF, PNG or JPEG) as the raw body.

    ``?kind=license`` names what it is; ``?filename=`` is kept for downloads.
    The type is checked against the file's first bytes, not its name."""
    request, query = call.request, call.query
    doctor_id = call.path_uuid("doctor_id")
    async with call.pool.acquire() as conn:
        await fetch_doctor(conn, call.user, doctor_id, need="manage")
    if request.content_type not in _ACCEPTED:
        raise UnsupportedMediaType("send a PDF, PNG or JPEG with its Content-Type")
    data = await read_upload(request, call.settings.booking_upload_max_bytes, "a document")
    if not data:
        raise Unprocessable("the document is empty")
    found = sniff(data)
    if found is None or found[0] != request.content_type:
        raise UnsupportedMediaType(f"the content is not {request.content_type}")
    ctype, ext = found
    key = await storage_of(request.app).put(data)
    async with call.pool.acquire() as conn, conn.transaction():
        row = await fetch_doctor(conn, call.user, doctor_id, need="manage", lock=True)
        doc = await conn.fetchrow(
            f"""INSERT INTO doctor_documents (doctor_id, clinic_id, kind, filename,
                       content_type, size_bytes, sha256, storage_key)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING {_DOC_COLS}""",
            doctor_id,
            row["clinic_id"],
            query.kind,
            _safe_filename(query.filename, query.kind + ext),
            ctype,
            len(data),
            key,
        )
        assert doc is not None
        await outbox.emit(
            conn,
            "doctor.document_uploaded",
            {
                "doctor_id": str(doctor_id),
                "clinic_id": str(row["clinic_id"]),
                "document_id": str(doc["id"]),
                "kind": query.kind,
            },
        )
    return Document(**dict(doc))


@routes.get(
    _DOCTOR + "/documents",
    returns=list[Document],
    auth={Role.ADMIN, Role.CLINIC_STAFF, Role.DOCTOR},
)
async def list_documents(call: Call[None, None]) -> list[Document]:
    """A doctor's credential documents (staff of the clinic, admins, the doctor)."""
    async with call.pool.acquire() as conn:
        row = await fetch_doctor(conn, call.user, call.path_uuid("doctor_id"), need="manage")
        docs = await conn.fetch(
            f"SELECT {_DOC_COLS} FROM doctor_documents WHERE doctor_id = $1 ORDER BY created_at",
            row["id"],
        )
    return [Document(**dict(d)) for d in docs]


async def _document(
    conn: asyncpg.Connection, call: Call[Any, Any], *, lock: bool = False
) -> tuple[asyncpg.Record, asyncpg.Record]:
    row = await fetch_doctor(conn, call.user, call.path_uuid("doctor_id"), need="staff")
    doc = await conn.fetchrow(
        "SELECT * FROM doctor_documents WHERE id = $1 AND doctor_id = $2"
        + (" FOR UPDATE" if lock else ""),
        call.path_uuid("document_id"),
        row["id"],
    )
    if doc is None:
        raise NotFound("no such document")
    return row, doc


@routes.get(
    _DOCUMENT + "/content",
    returns={
        "content": {
            t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(_ACCEPTED)
        }
    },
    auth={Role.ADMIN, Role.CLINIC_STAFF},
)
async def download_document(call: Call[None, None]) -> web.Response:
    """Download a credential document (staff of the clinic, admins)."""
    async with call.pool.acquire() as conn:
        _, doc = await _document(conn, call)
    data = await storage_of(call.request.app).get(doc["storage_key"])
    filename = _safe_filename(doc["filename"], "document")
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
    async with call.pool.acquire() as conn, conn.transaction():
        row, doc = await _document(conn, call, lock=True)
        if doc["status"] != "pending":
            raise Conflict(f"the document was already {doc['status']}")
        new = await conn.fetchrow(
            f"""UPDATE doctor_documents
                SET status = $2, review_note = $3, reviewed_by = $4, reviewed_at = now()
                WHERE id = $1 RETURNING {_DOC_COLS}""",
            doc["id"],
            status,
            note or None,
            call.user.user_id,
        )
        assert new is not None
        await outbox.emit(
            conn,
            f"doctor.document_{status}",
            {
                "doctor_id": str(row["id"]),
                "clinic_id": str(row["clinic_id"]),
                "document_id": str(doc["id"]),
            },
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


async def _availability_out(conn: asyncpg.Connection, doctor_id: UUID) -> AvailabilityOut:
    row = await conn.fetchrow("SELECT * FROM doctors WHERE id = $1", doctor_id)
    assert row is not None
    rules = await conn.fetch(
        """SELECT weekday, start_local, end_local, types FROM availability_rules
           WHERE doctor_id = $1 ORDER BY weekday, start_local""",
        doctor_id,
    )
    overrides = await conn.fetch(
        """SELECT day, windows, closed FROM availability_overrides
           WHERE doctor_id = $1 AND day >= (now() AT TIME ZONE 'UTC')::date - 1 ORDER BY day""",
        doctor_id,
    )
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
            for r in rules
        ],
        overrides=[
            Override(
                day=o["day"],
                closed=o["closed"],
                windows=[Window(**w) for w in o["windows"]],
            )
            for o in overrides
        ],
    )


async def _after_availability_change(conn: asyncpg.Connection, row: Mapping[str, Any]) -> None:
    await slot_db.refresh_next_free(conn, row["id"], _now())
    await outbox.emit(
        conn,
        "doctor.availability_changed",
        {"doctor_id": str(row["id"]), "clinic_id": str(row["clinic_id"])},
    )


@routes.get(
    _DOCTOR + "/availability",
    returns=AvailabilityOut,
    auth={Role.ADMIN, Role.CLINIC_STAFF, Role.DOCTOR},
)
async def get_availability(call: Call[None, None]) -> AvailabilityOut:
    """A doctor's schedule: settings, weekly windows and upcoming date overrides."""
    async with call.pool.acquire() as conn:
        row = await fetch_doctor(conn, call.user, call.path_uuid("doctor_id"), need="manage")
        return await _availability_out(conn, row["id"])


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
    async with call.pool.acquire() as conn, conn.transaction():
        row = await _doctor_to_change(call, conn, "manage")
        overrides = await conn.fetch(
            """SELECT day, windows, closed FROM availability_overrides
               WHERE doctor_id = $1 AND day >= (now() AT TIME ZONE 'UTC')::date - 2""",
            row["id"],
        )
        # Validate the whole schedule with the core before writing anything.
        slot_db.build_availability(settings, rules, overrides)
        await conn.execute(
            """UPDATE doctors SET time_zone = $2, buffer_before_min = $3, buffer_after_min = $4,
                      min_notice_min = $5, horizon_days = $6, slot_minutes = $7,
                      updated_at = now()
               WHERE id = $1""",
            row["id"],
            *settings.values(),
        )
        await conn.execute("DELETE FROM availability_rules WHERE doctor_id = $1", row["id"])
        await conn.executemany(
            """INSERT INTO availability_rules
                   (doctor_id, clinic_id, weekday, start_local, end_local, types)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            [
                (
                    row["id"],
                    row["clinic_id"],
                    r["weekday"],
                    r["start_local"],
                    r["end_local"],
                    r["types"],
                )
                for r in rules
            ],
        )
        await _after_availability_change(conn, row)
        return await _availability_out(conn, row["id"])


@routes.put(
    _DOCTOR + f"/availability/overrides/{_DAY}",
    body=OverrideIn,
    returns=Override,
    auth={Role.ADMIN, Role.CLINIC_STAFF, Role.DOCTOR},
)
async def put_override(call: Call[OverrideIn, None]) -> Override:
    """Set one local date's windows, replacing the weekly ones; no windows
    makes the date a day off."""
    day = slot_db.day_of(call.path("day"))
    windows = [_window_json(w) for w in call.body.windows]
    closed = not windows
    async with call.pool.acquire() as conn, conn.transaction():
        row = await _doctor_to_change(call, conn, "manage")
        await conn.execute(
            """INSERT INTO availability_overrides (doctor_id, clinic_id, day, windows, closed)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (doctor_id, day) DO UPDATE
                   SET windows = EXCLUDED.windows, closed = EXCLUDED.closed""",
            row["id"],
            row["clinic_id"],
            day,
            windows,
            closed,
        )
        # Validate with the core (overlaps, slot lengths) inside the
        # transaction: a 422 rolls the write back.
        slot_db.build_availability(row, [], [{"day": day, "windows": windows, "closed": closed}])
        await _after_availability_change(conn, row)
    return Override(day=day, closed=closed, windows=list(call.body.windows))


@routes.delete(
    _DOCTOR + f"/availability/overrides/{_DAY}",
    auth={Role.ADMIN, Role.CLINIC_STAFF, Role.DOCTOR},
)
async def delete_override(call: Call[None, None]) -> None:
    """Remove a date override; the weekly windows apply again that day."""
    day = slot_db.day_of(call.path("day"))
    async with call.pool.acquire() as conn, conn.transaction():
        row = await _doctor_to_change(call, conn, "manage")
        deleted = await conn.fetchval(
            "DELETE FROM availability_overrides WHERE doctor_id = $1 AND day = $2 RETURNING 1",
            row["id"],
            day,
        )
        if deleted is None:
            raise NotFound(f"no override on {day.isoformat()}")
        await _after_availability_change(conn, row)


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
    async with call.pool.acquire() as conn:
        # Only published doctors are public (fetch_doctor's "view").
        row = await fetch_doctor(conn, call.principal, call.path_uuid("doctor_id"))
        found = await slot_db.free_slots(conn, row["id"], q.type, start, end, now)
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
