"""Bookings over HTTP: holds, the lifecycle, cancellation and rescheduling,
the patient's tokenised manage links, and a booking's video links.

Who sees what: a patient their own bookings, a doctor theirs, clinic staff
their clinic's, admins all (:mod:`booking.bookings.access`). The rules
themselves (locks, the lifecycle table, refunds, the exclusion constraint)
live in :mod:`booking.bookings`; handlers decide who may act and translate
the caller into the service's terms.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, Literal
from uuid import UUID

from aiohttp import web
from pydantic import Field, StringConstraints

from booking import calls, pages
from booking.bookings import access, changes, holds, transitions, visits
from booking.bookings.changes import Refunder
from booking.lifecycle import BookingEvent, BookingState, allowed_events
from booking.refunds import CANCELLERS, Canceller
from wadud.messaging import loops
from wadud.state import keys
from wadud.web import cursor
from wadud.web.api import ApiModel, Call, Instant, Principal, Role, Routes

routes = Routes("bookings", "Bookings, their lifecycle, manage links and video links.")

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
    status: BookingState
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
    allowed_events: list[BookingEvent]


class BookingPage(ApiModel):
    items: list[BookingOut]
    #: Pass as ``cursor`` for the next page; null on the last page.
    next_cursor: str | None


class BookingQuery(ApiModel):
    status: list[BookingState] = Field(default_factory=list)
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


def booking_out(row: Mapping[str, Any]) -> BookingOut:
    data = {k: row[k] for k in BookingOut.model_fields if k != "allowed_events"}
    events = sorted(allowed_events(BookingState(row["status"])))
    return BookingOut(**data, allowed_events=events)


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
    row = await holds.hold_for_patient(
        call.pool,
        call.settings,
        patient_id=call.user.user_id,
        doctor_id=body.doctor_id,
        consultation_type=body.type,
        starts_at=body.starts_at,
    )
    return booking_out(row)


@routes.get("/api/v1/bookings", query=BookingQuery, returns=BookingPage, auth="any")
async def list_bookings(call: Call[None, BookingQuery]) -> BookingPage:
    """List bookings the caller may see, by start time.

    Patients see their own, doctors theirs, clinic staff their clinic's,
    admins all. Filter by ``status`` (repeatable), ``doctor_id`` and a
    ``from``/``to`` start-time range; page with ``cursor``."""
    q = call.query
    after = None
    if q.cursor is not None:
        after = cursor.decode_instant_id(call.settings.secret_key, "bookings", q.cursor)
    rows, more = await access.list_visible(
        call.pool,
        call.user,
        statuses=q.status,
        doctor_id=q.doctor_id,
        start_from=q.start_from,
        to=q.to,
        after=after,
        limit=q.limit,
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
    return booking_out(await access.read_visible(call.pool, call.path_uuid("id"), call.user))


# -- the doctor's side of the lifecycle ------------------------------------------


async def _act(call: Call[Any, Any], event: BookingEvent) -> BookingOut:
    return booking_out(await transitions.act(call.pool, call.path_uuid("id"), call.user, event))


@routes.post("/api/v1/bookings/{id:uuid}/accept", returns=BookingOut, auth=STAFF)
async def accept_booking(call: Call[None, None]) -> BookingOut:
    """Accept a requested booking (its doctor, or staff of its clinic)."""
    return await _act(call, BookingEvent.ACCEPT)


@routes.post("/api/v1/bookings/{id:uuid}/decline", returns=BookingOut, auth=STAFF)
async def decline_booking(call: Call[None, None]) -> BookingOut:
    """Decline a requested booking; the patient is refunded in full."""
    return await _cancel(call, CANCELLERS[BookingEvent.DECLINE], "declined", decline=True)


@routes.post("/api/v1/bookings/{id:uuid}/start", returns=BookingOut, auth=STAFF)
async def start_booking(call: Call[None, None]) -> BookingOut:
    """Start the consultation (from 10 minutes before the slot to its end)."""
    return await _act(call, BookingEvent.START)


@routes.post("/api/v1/bookings/{id:uuid}/complete", returns=BookingOut, auth=STAFF)
async def complete_booking(call: Call[None, None]) -> BookingOut:
    """Complete a consultation in progress (once its slot has begun)."""
    return await _act(call, BookingEvent.COMPLETE)


@routes.post("/api/v1/bookings/{id:uuid}/no-show", returns=BookingOut, auth=STAFF)
async def no_show_booking(call: Call[None, None]) -> BookingOut:
    """Record that the patient did not turn up (once the slot has started).

    A doctor who does not turn up is a cancellation by the doctor, never a
    no-show."""
    return await _act(call, BookingEvent.MARK_NO_SHOW)


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
    updated = await changes.cancel_visible(
        call.pool,
        call.path_uuid("id"),
        call.user,
        by=by,
        reason=reason,
        decline=decline,
        refund=call.request.app.get(REFUNDER),
    )
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
    updated = await changes.reschedule_visible(
        call.pool, call.path_uuid("id"), call.user, call.body.starts_at
    )
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
    booking_id = call.path_uuid("id")
    token = await changes.new_manage_link(call.pool, booking_id, call.user)
    return ManageLink(booking_id=booking_id, token=token, url=_manage_url(call, token))


@routes.get(f"/api/v1/manage/{ManageToken}", returns=BookingOut, auth="public")
async def manage_view(call: Call[None, None]) -> BookingOut | web.Response:
    """The booking a manage link is for.

    A browser that opens the link (``Accept: text/html``, as navigations
    send) gets a page in the patient's language instead: the booking, the
    way into the visit once it is accepted, and buttons that cancel or
    reschedule it through the two ``POST``s below."""
    token = call.path("token")
    if not pages.wants_html(call.request):
        return booking_out(await access.read_by_manage_link(call.pool, token))
    found = await visits.manage_visit(call.pool, token)
    if found is None:
        return pages.manage_gone()
    return pages.manage(call.settings, *found)


@routes.post(f"/api/v1/manage/{ManageToken}/cancel", body=CancelIn, returns=BookingOut,
             auth="public")  # fmt: skip
async def manage_cancel(call: Call[CancelIn, None]) -> BookingOut:
    """Cancel the booking of a manage link, as its patient (same refund policy)."""
    updated = await changes.cancel_by_manage_link(
        call.pool,
        call.path("token"),
        reason=call.body.reason,
        refund=call.request.app.get(REFUNDER),
    )
    return booking_out(updated)


@routes.post(f"/api/v1/manage/{ManageToken}/reschedule", body=RescheduleIn,
             returns=BookingOut, auth="public")  # fmt: skip
async def manage_reschedule(call: Call[RescheduleIn, None]) -> BookingOut:
    """Reschedule the booking of a manage link, as its patient."""
    updated = await changes.reschedule_by_manage_link(
        call.pool, call.path("token"), call.body.starts_at
    )
    return booking_out(updated)


# -- video links -----------------------------------------------------------------


@routes.get("/api/v1/bookings/{id:uuid}/video-link", returns=calls.VideoLink,
            auth={Role.PATIENT, Role.DOCTOR, Role.CLINIC_STAFF})  # fmt: skip
async def video_link(call: Call[None, None]) -> calls.VideoLink:
    """The caller's link into the booking's consultation room.

    For an accepted or in-progress video booking. The patient's link publishes
    and subscribes; the doctor's (and clinic staff's) also has admin rights
    (admit, mute, end). The room token is valid from 10 minutes before the
    slot until its end. The URL names the caller's language (``lang``) when
    their notification settings give one."""
    return await access.video_link_for(call.pool, call.settings, call.path_uuid("id"), call.user)


# -- background ------------------------------------------------------------------


async def lifespan(app: web.Application) -> AsyncIterator[None]:
    """Expire lapsed holds every ``HOLD_SWEEP_INTERVAL`` seconds (a booking
    request also expires its doctor's at once, so this only tidies up)."""
    sweeper = holds.sweep_holds_forever(app[keys.DB], HOLD_SWEEP_INTERVAL)
    async with loops.background(sweeper, "booking-hold-sweeper"):
        yield
