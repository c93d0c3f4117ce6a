"""Bookings over HTTP: holds, the lifecycle, cancellation and rescheduling,
the patient's tokenised manage links, and a booking's video links.

Who sees what: a patient their own bookings, a doctor theirs, clinic staff
their clinic's, admins all. A booking outside the caller's scope is a 404, the
same as one that does not exist, so ids do not leak across tenants.

The rules themselves (locks, the lifecycle table, refunds, the exclusion
constraint) live in :mod:`booking.service`; handlers decide who may act and
translate the caller into the service's terms.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
from aiohttp import web
from pydantic import Field, StringConstraints

from booking import calls, pages, service
from booking.lifecycle import Event, State, allowed_events
from booking.refunds import CANCELLERS, Canceller
from booking.service import BookingNotFound, Refunder, TooEarly, TooLate
from privacy import audit, consent
from wadud import cursor, keys, loops
from wadud.api import ApiModel, Call, Instant, Principal, Role, Routes
from wadud.errors import Conflict, NotFound

routes = Routes("bookings", "Bookings, their lifecycle, manage links and video links.")
log = logging.getLogger("booking.bookings")

#: Seconds between sweeps that expire lapsed holds.
HOLD_SWEEP_INTERVAL = 15.0

STAFF = {Role.DOCTOR, Role.CLINIC_STAFF, Role.ADMIN}

Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]
ManageToken = "{token:[A-Za-z0-9_-]+}"

#: What refunds a cancelled booking's payment: set by the payments part of
#: the app (:mod:`booking.payments.http`), bound to its gateways. With no
#: payments installed, a paid booking cannot be cancelled.
REFUNDER: web.AppKey[Refunder] = web.AppKey("booking_refunder")


class BookingIn(ApiModel):
    doctor_id: UUID
    type: Literal["video", "in_person"]
    starts_at: Instant


class CancelIn(ApiModel):
    reason: Reason = ""


class RescheduleIn(ApiModel):
    starts_at: Instant


class BookingOut(ApiModel):
    id: UUID
    clinic_id: UUID
    doctor_id: UUID
    patient_id: UUID
    type: Literal["video", "in_person"]
    status: State
    starts_at: dt.datetime
    ends_at: dt.datetime
    hold_expires_at: dt.datetime | None
    price_minor: int
    currency: str
    cancelled_by: str | None
    cancel_reason: str | None
    refund_minor: int
    instant: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    #: Lifecycle events the booking's state accepts (whoever may send them).
    allowed_events: list[Event]


class BookingPage(ApiModel):
    items: list[BookingOut]
    #: Pass as ``cursor`` for the next page; null on the last page.
    next_cursor: str | None


class BookingQuery(ApiModel):
    status: list[State] = Field(default_factory=list)
    doctor_id: UUID | None = None
    #: Bookings starting at or after this instant.
    start_from: Instant | None = Field(default=None, alias="from")
    #: Bookings starting before this instant.
    to: Instant | None = None
    limit: int = Field(default=50, ge=1, le=200)
    cursor: Annotated[str, StringConstraints(max_length=400)] | None = None


class ManageLink(ApiModel):
    booking_id: UUID
    token: str
    #: The public manage resource for this token (GET, and POST .../cancel or
    #: .../reschedule).
    url: str


def booking_out(row: asyncpg.Record) -> BookingOut:
    data = {k: row[k] for k in BookingOut.model_fields if k != "allowed_events"}
    events = sorted(allowed_events(State(row["status"])))
    return BookingOut(**data, allowed_events=events)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def scope(me: Principal, args: list[Any], alias: str = "b") -> str:
    """The SQL condition restricting bookings ``alias`` to what ``me`` may
    see; appends its parameters to ``args``."""
    if me.role is Role.ADMIN:
        return "true"
    if me.role is Role.PATIENT:
        args.append(me.user_id)
        return f"{alias}.patient_id = ${len(args)}"
    if me.clinic_id is None:  # a doctor or staff token always names a clinic
        return "false"
    args.append(me.clinic_id)
    clinic = f"{alias}.clinic_id = ${len(args)}"
    if me.role is Role.DOCTOR:
        args.append(me.user_id)
        return (
            f"{clinic} AND {alias}.doctor_id IN "
            f"(SELECT id FROM doctors WHERE user_id = ${len(args)})"
        )
    return clinic


async def visible_booking(
    conn: asyncpg.Connection, booking_id: UUID, me: Principal, *, lock: bool = False
) -> asyncpg.Record:
    """The booking if ``me`` may see it (locked ``FOR UPDATE`` with ``lock``),
    else :class:`BookingNotFound`."""
    args: list[Any] = [booking_id]
    cond = scope(me, args)
    row = await conn.fetchrow(
        f"SELECT b.* FROM bookings b WHERE b.id = $1 AND {cond}"
        + (" FOR UPDATE OF b" if lock else ""),
        *args,
    )
    if row is None:
        raise BookingNotFound("no such booking")
    return row


async def _audit(
    conn: asyncpg.Connection | asyncpg.Pool, me: Principal, action: str, row: asyncpg.Record
) -> None:
    await audit.record_access(conn, me, action, row, f"booking/{row['id']}")


#: The region whose consent rules apply to a hold with doctor $1 (read with
#: the doctor by the hold's first statement).
_DOCTOR_REGION = (
    "SELECT c.region FROM doctors dr JOIN clinics c ON c.id = dr.clinic_id WHERE dr.id = $1"
)


# -- holds and reading -----------------------------------------------------------


@routes.post("/api/v1/bookings", body=BookingIn, returns=BookingOut, status=201,
             auth={Role.PATIENT})  # fmt: skip
async def create_booking(call: Call[BookingIn, None]) -> BookingOut:
    """Hold a slot while the patient pays.

    The slot must be offered now (see the doctor's slots). The booking starts
    as ``held`` until ``hold_expires_at``; a successful payment turns it into a
    request for the doctor. Two patients racing for overlapping time: exactly
    one gets the hold, the other a 409 ``slot-taken``. Anonymous patient
    sessions may book. Refused with 403 ``consent_required``, naming the
    purposes, until the patient has accepted the consents the doctor's
    region requires (docs/privacy.md)."""
    body = call.body
    # The consent check rides the hold's first statement (with the doctor).
    cols = consent.columns(call.settings, call.user.user_id, _DOCTOR_REGION, 2)
    async with call.pool.acquire() as conn:
        row = await service.create_hold(
            conn,
            patient_id=call.user.user_id,
            doctor_id=body.doctor_id,
            consultation_type=body.type,
            starts_at=body.starts_at,
            hold_minutes=call.settings.booking_hold_minutes,
            check=None
            if cols is None
            else service.HoldCheck(cols[0], cols[1], consent.PASSES, consent.raise_missing),
        )
    return booking_out(row)


@routes.get("/api/v1/bookings", query=BookingQuery, returns=BookingPage, auth="any")
async def list_bookings(call: Call[None, BookingQuery]) -> BookingPage:
    """List bookings the caller may see, by start time.

    Patients see their own, doctors theirs, clinic staff their clinic's,
    admins all. Filter by ``status`` (repeatable), ``doctor_id`` and a
    ``from``/``to`` start-time range; page with ``cursor``."""
    q = call.query
    args: list[Any] = []
    where = [scope(call.user, args)]
    if q.status:
        args.append([s.value for s in q.status])
        where.append(f"b.status = ANY(${len(args)}::text[])")
    if q.doctor_id is not None:
        args.append(q.doctor_id)
        where.append(f"b.doctor_id = ${len(args)}")
    if q.start_from is not None:
        args.append(q.start_from)
        where.append(f"b.starts_at >= ${len(args)}")
    if q.to is not None:
        args.append(q.to)
        where.append(f"b.starts_at < ${len(args)}")
    if q.cursor is not None:
        at, ident = cursor.decode_instant_id(call.settings.secret_key, "bookings", q.cursor)
        args.extend([at, ident])
        where.append(f"(b.starts_at, b.id) > (${len(args) - 1}, ${len(args)})")
    args.append(q.limit + 1)
    rows = await call.pool.fetch(
        f"""SELECT b.* FROM bookings b WHERE {" AND ".join(where)}
            ORDER BY b.starts_at, b.id LIMIT ${len(args)}""",
        *args,
    )
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    if call.user.role is not Role.PATIENT:
        await audit.record_many(
            call.pool,
            actor=call.user,
            action="booking.list",
            entries=[
                audit.Entry(f"booking/{r['id']}", subject=r["patient_id"], clinic=r["clinic_id"])
                for r in rows
            ],
        )
    next_cursor = None
    if more:
        last = rows[-1]
        next_cursor = cursor.encode_instant_id(
            call.settings.secret_key, "bookings", last["starts_at"], last["id"]
        )
    return BookingPage(items=[booking_out(r) for r in rows], next_cursor=next_cursor)


@routes.get("/api/v1/bookings/{id:uuid}", returns=BookingOut, auth="any")
async def get_booking(call: Call[None, None]) -> BookingOut:
    """One booking (404 unless the caller may see it). A doctor's, staff
    member's or admin's read is written to the audit trail."""
    async with call.pool.acquire() as conn:
        row = await visible_booking(conn, call.path_uuid("id"), call.user)
        await _audit(conn, call.user, "booking.read", row)
    return booking_out(row)


# -- the doctor's side of the lifecycle ------------------------------------------


async def _act(call: Call[Any, Any], event: Event) -> BookingOut:
    me = call.user
    now = _now()
    async with call.pool.acquire() as conn, conn.transaction():
        row = await visible_booking(conn, call.path_uuid("id"), me, lock=True)
        # The start window is the video links' window: from 10 minutes
        # before the slot to its end. A consultation is complete, and can be
        # reviewed, only once its slot has begun: nothing is over before
        # the time it was booked for.
        if event is Event.START and now < row["starts_at"] - calls.EARLY_JOIN:
            raise TooEarly(f"the consultation can start from {row['starts_at'] - calls.EARLY_JOIN}")
        if event is Event.START and now >= row["ends_at"]:
            raise TooLate(
                "the slot is over: mark the patient absent (no-show) or cancel instead"
            )
        if event is Event.COMPLETE and now < row["starts_at"]:
            raise TooEarly(f"the consultation can be completed from {row['starts_at']}")
        if event is Event.MARK_NO_SHOW and now < row["starts_at"]:
            raise TooEarly("a patient is absent only once the slot has started")
        updated = await service.apply_event(conn, row, event, actor_id=me.user_id, now=now)
        await _audit(conn, me, f"booking.{event.value}", row)
    return booking_out(updated)


@routes.post("/api/v1/bookings/{id:uuid}/accept", returns=BookingOut, auth=STAFF)
async def accept_booking(call: Call[None, None]) -> BookingOut:
    """Accept a requested booking (its doctor, or staff of its clinic)."""
    return await _act(call, Event.ACCEPT)


@routes.post("/api/v1/bookings/{id:uuid}/decline", returns=BookingOut, auth=STAFF)
async def decline_booking(call: Call[None, None]) -> BookingOut:
    """Decline a requested booking; the patient is refunded in full."""
    return await _cancel(call, CANCELLERS[Event.DECLINE], "declined", decline=True)


@routes.post("/api/v1/bookings/{id:uuid}/start", returns=BookingOut, auth=STAFF)
async def start_booking(call: Call[None, None]) -> BookingOut:
    """Start the consultation (from 10 minutes before the slot to its end)."""
    return await _act(call, Event.START)


@routes.post("/api/v1/bookings/{id:uuid}/complete", returns=BookingOut, auth=STAFF)
async def complete_booking(call: Call[None, None]) -> BookingOut:
    """Complete a consultation in progress (once its slot has begun)."""
    return await _act(call, Event.COMPLETE)


@routes.post("/api/v1/bookings/{id:uuid}/no-show", returns=BookingOut, auth=STAFF)
async def no_show_booking(call: Call[None, None]) -> BookingOut:
    """Record that the patient did not turn up (once the slot has started).

    A doctor who does not turn up is a cancellation by the doctor, never a
    no-show."""
    return await _act(call, Event.MARK_NO_SHOW)


# -- cancel and reschedule -------------------------------------------------------


def _canceller(me: Principal) -> Canceller:
    if me.role is Role.PATIENT:
        return Canceller.PATIENT
    if me.role is Role.DOCTOR:
        return Canceller.DOCTOR
    return Canceller.CLINIC


async def _cancel(
    call: Call[Any, Any], by: Canceller, reason: str, *, decline: bool = False
) -> BookingOut:
    """Cancel (or decline) the booking in the path and refund per policy;
    audited as ``booking.decline`` or ``booking.cancel``."""
    me = call.user
    async with call.pool.acquire() as conn, conn.transaction():
        row = await visible_booking(conn, call.path_uuid("id"), me, lock=True)
        updated = await service.cancel_booking(
            conn,
            row["id"],
            by=by,
            actor_id=me.user_id,
            reason=reason,
            decline=decline,
            refund=call.request.app.get(REFUNDER),
        )
        await _audit(conn, me, "booking.decline" if decline else "booking.cancel", row)
    return booking_out(updated)


@routes.post("/api/v1/bookings/{id:uuid}/cancel", body=CancelIn, returns=BookingOut, auth="any")
async def cancel_booking(call: Call[CancelIn, None]) -> BookingOut:
    """Cancel a booking (its patient, its doctor, or staff of its clinic).

    The refund follows the cancellation policy: a patient cancelling 24 h or
    more ahead gets everything back, from 2 h half, later nothing; a doctor or
    clinic cancelling refunds in full; an unpaid hold refunds nothing. The
    booking records who cancelled, why, and ``refund_minor``."""
    return await _cancel(call, _canceller(call.user), call.body.reason)


@routes.post("/api/v1/bookings/{id:uuid}/reschedule", body=RescheduleIn, returns=BookingOut,
             auth={Role.PATIENT, Role.CLINIC_STAFF, Role.ADMIN})  # fmt: skip
async def reschedule_booking(call: Call[RescheduleIn, None]) -> BookingOut:
    """Move a requested or accepted booking to another offered slot.

    Atomic: the booking moves only if the new slot is offered and nobody holds
    the time (409 ``slot-taken``); otherwise it stays where it was."""
    me = call.user
    async with call.pool.acquire() as conn, conn.transaction():
        row = await visible_booking(conn, call.path_uuid("id"), me, lock=True)
        updated = await service.reschedule_booking(
            conn, row["id"], call.body.starts_at, actor_id=me.user_id
        )
        await _audit(conn, me, "booking.reschedule", row)
    return booking_out(updated)


# -- manage links ----------------------------------------------------------------


def _manage_url(call: Call[Any, Any], token: str) -> str:
    return f"{call.settings.base_url}/api/v1/manage/{token}"


@routes.post("/api/v1/bookings/{id:uuid}/manage-link", returns=ManageLink,
             auth={Role.PATIENT}, replay=False)  # fmt: skip
async def new_manage_link(call: Call[None, None]) -> ManageLink:
    """A fresh manage link for one of the patient's bookings.

    Anyone holding the link can view, cancel and reschedule that booking (and
    nothing else) without signing in, so it can be emailed. A new link
    replaces the previous one, which stops working. Bookings get a first link
    automatically when they become requested (sent with the
    ``booking.requested`` event)."""
    me = call.user
    async with call.pool.acquire() as conn, conn.transaction():
        row = await visible_booking(conn, call.path_uuid("id"), me, lock=True)
        token = await service.rotate_manage_token(conn, row["id"])
    return ManageLink(booking_id=row["id"], token=token, url=_manage_url(call, token))


async def _by_token(conn: asyncpg.Connection, token: str, *, lock: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT * FROM bookings WHERE manage_token_hash = $1" + (" FOR UPDATE" if lock else ""),
        service.hash_manage_token(token),
    )
    if row is None:
        raise NotFound("no booking has this manage link; ask for a new one")
    return row


@routes.get(f"/api/v1/manage/{ManageToken}", returns=BookingOut, auth="public")
async def manage_view(call: Call[None, None]) -> BookingOut | web.Response:
    """The booking a manage link is for.

    A browser that opens the link (``Accept: text/html``, as navigations
    send) gets a page in the patient's language instead: the booking, the
    way into the visit once it is accepted, and buttons that cancel or
    reschedule it through the two ``POST``s below."""
    async with call.pool.acquire() as conn:
        if not pages.wants_html(call.request):
            return booking_out(await _by_token(conn, call.path("token")))
        try:
            row = await _by_token(conn, call.path("token"))
        except NotFound:
            return pages.manage_gone()
        return await pages.manage(conn, call.settings, row["id"])


@routes.post(f"/api/v1/manage/{ManageToken}/cancel", body=CancelIn, returns=BookingOut,
             auth="public")  # fmt: skip
async def manage_cancel(call: Call[CancelIn, None]) -> BookingOut:
    """Cancel the booking of a manage link, as its patient (same refund policy)."""
    async with call.pool.acquire() as conn, conn.transaction():
        row = await _by_token(conn, call.path("token"), lock=True)
        updated = await service.cancel_booking(
            conn,
            row["id"],
            by=Canceller.PATIENT,
            actor_id=row["patient_id"],
            reason=call.body.reason,
            refund=call.request.app.get(REFUNDER),
        )
    return booking_out(updated)


@routes.post(f"/api/v1/manage/{ManageToken}/reschedule", body=RescheduleIn,
             returns=BookingOut, auth="public")  # fmt: skip
async def manage_reschedule(call: Call[RescheduleIn, None]) -> BookingOut:
    """Reschedule the booking of a manage link, as its patient."""
    async with call.pool.acquire() as conn, conn.transaction():
        row = await _by_token(conn, call.path("token"), lock=True)
        updated = await service.reschedule_booking(
            conn, row["id"], call.body.starts_at, actor_id=row["patient_id"]
        )
    return booking_out(updated)


# -- video links -----------------------------------------------------------------


class NoVideoLink(Conflict):
    code = "video-link-unavailable"
    title = "This booking has no video consultation now"


@routes.get("/api/v1/bookings/{id:uuid}/video-link", returns=calls.VideoLink,
            auth={Role.PATIENT, Role.DOCTOR, Role.CLINIC_STAFF})  # fmt: skip
async def video_link(call: Call[None, None]) -> calls.VideoLink:
    """The caller's link into the booking's consultation room.

    For an accepted or in-progress video booking. The patient's link publishes
    and subscribes; the doctor's (and clinic staff's) also has admin rights
    (admit, mute, end). The room token is valid from 10 minutes before the
    slot until its end. The URL names the caller's language (``lang``) when
    their notification settings give one."""
    me = call.user
    async with call.pool.acquire() as conn:
        row = await visible_booking(conn, call.path_uuid("id"), me)
        if row["status"] not in calls.OPEN_STATES:
            raise NoVideoLink(f"the booking is {row['status']}; links open once it is accepted")
        if not calls.has_video_link(row):
            raise NoVideoLink("this is an in-person consultation")
        user = await conn.fetchrow(
            "SELECT display_name, locale FROM users WHERE id = $1", me.user_id
        )
        region = await conn.fetchval("SELECT region FROM clinics WHERE id = $1", row["clinic_id"])
        if me.role is Role.DOCTOR:
            name = await conn.fetchval(
                "SELECT display_name FROM doctors WHERE id = $1", row["doctor_id"]
            )
        else:
            name = user["display_name"] if user else ""
    is_patient = me.role is Role.PATIENT
    return calls.video_link(
        call.settings,
        row,
        identity=str(me.user_id),
        name=name or "",
        role="patient" if is_patient else ("doctor" if me.role is Role.DOCTOR else "staff"),
        locale=user["locale"] if user is not None else None,
        sid=str(me.family_id) if me.family_id else "",
        clinic_region=region or "",
    )


# -- background ------------------------------------------------------------------


async def _sweep_forever(pool: asyncpg.Pool, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            n = await service.sweep_holds(pool)
            if n:
                log.info("expired lapsed holds", extra={"count": n})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("hold sweep failed; retrying next round")


async def lifespan(app: web.Application) -> AsyncIterator[None]:
    """Expire lapsed holds every ``HOLD_SWEEP_INTERVAL`` seconds (a booking
    request also expires its doctor's at once, so this only tidies up)."""
    sweeper = _sweep_forever(app[keys.DB], HOLD_SWEEP_INTERVAL)
    async with loops.background(sweeper, "booking-hold-sweeper"):
        yield
