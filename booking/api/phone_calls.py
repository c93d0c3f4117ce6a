"""``/api/v1/bookings/{id}/phone-calls``: a visit's doctor or its clinic's
staff ask the phone bridge to call the patient into the room, and follow
the calls; ``/api/v1/phone-calls``: a clinic's server asks, with its API key
(:mod:`booking.phone_calls`; docs/phone.md, "Calling the patient")."""

from __future__ import annotations

import datetime as dt
from typing import Literal
from uuid import UUID

from pydantic import Field

from booking import phone_calls
from wadud.web.api import ApiModel, Call, Role, Routes

routes = Routes("phone calls", "Calls the phone bridge places to a visit's patient.")

CALLERS = {Role.DOCTOR, Role.CLINIC_STAFF, Role.ADMIN}


class PhoneCallIn(ApiModel):
    #: Absent: the patient's own number. Otherwise a number on the trunk's
    #: ``dial_allow`` (an interpreter's line), in E.164 form.
    number: str | None = Field(default=None, max_length=16)


class PhoneCall(ApiModel):
    id: UUID
    booking_id: UUID
    #: ``patient`` (their number on file) or ``other`` (the request's number).
    to: Literal["patient", "other"]
    #: The number's last two digits (``••34``).
    number: str
    #: requested, dialling, ringing, answered, joined; then ended, busy,
    #: no_answer, declined or failed.
    state: str
    #: Why it failed, as the bridge or the phone network said.
    reason: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


@routes.post("/api/v1/bookings/{id:uuid}/phone-calls", body=PhoneCallIn, returns=PhoneCall,
             status=202, auth=CALLERS)  # fmt: skip
async def place(call: Call[PhoneCallIn, None]) -> PhoneCall:
    """Call the visit's patient (or an allowed number) into its room through
    the phone bridge. The call is ``requested`` at first; follow it here, on
    the call page, or by the ``room.phone_*`` webhooks.

    409 ``phone_call_refused`` when the visit is not open now or the patient
    has no number; 409 ``phone_call_live`` while another call of the visit
    is being placed; 422 for a number not in E.164 form."""
    made = await phone_calls.request_as(
        call.pool, call.path_uuid("id"), call.user, call.body.number
    )
    return PhoneCall(**made)


@routes.get("/api/v1/bookings/{id:uuid}/phone-calls", returns=list[PhoneCall], auth=CALLERS)
async def listed(call: Call[None, None]) -> list[PhoneCall]:
    """The visit's phone calls, oldest first."""
    return [
        PhoneCall(**c)
        for c in await phone_calls.of_booking_as(call.pool, call.path_uuid("id"), call.user)
    ]


class KeyPhoneCallIn(PhoneCallIn):
    booking_id: UUID


@routes.post("/api/v1/phone-calls", body=KeyPhoneCallIn, returns=PhoneCall, status=202,
             auth="api_key")  # fmt: skip
async def place_by_key(call: Call[KeyPhoneCallIn, None]) -> PhoneCall:
    """As ``POST /api/v1/bookings/{id}/phone-calls``, for a clinic's server
    with its API key (HTTP Basic): a booking of the key's clinic, else 404;
    a load key gets 403. Follow the call by the ``room.phone_call`` webhooks."""
    made = await phone_calls.request_by_key(
        call.pool, call.body.booking_id, call.api_key, call.body.number
    )
    return PhoneCall(**made)
