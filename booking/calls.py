"""A booking's video consultation as calls see it: its links, whether a
link still opens the room, and which booking events end the call.

A video link (:func:`video_link`, handed out by ``GET
/api/v1/bookings/{id}/video-link`` and shown on the patient's confirmation
page after paying) is a room token for room ``booking-<id>`` that names the
booking and the slot it was issued for.
Its token alone would keep working until the slot ends; signalling asks
:func:`link_refusal` at every join and resume, so a link stops working as soon
as its booking is cancelled, completed, marked no-show or moved to another
slot. A cancellation also ends a call in progress (:data:`ENDING_TOPICS`,
outbox events relayed on the bus).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from booking.lifecycle import BookingState
from wadud.config import Settings
from wadud.web import auth
from wadud.web.api import ApiModel

__all__ = [
    "EARLY_JOIN",
    "ENDING_TOPICS",
    "OPEN_STATES",
    "ROOM_PREFIX",
    "LinkRefusal",
    "VideoLink",
    "booking_of",
    "has_video_link",
    "is_open",
    "link_refusal",
    "room_of",
    "video_link",
]

ROOM_PREFIX = "booking-"
#: Booking states in which its video links open the room.
OPEN_STATES = frozenset({BookingState.ACCEPTED, BookingState.IN_PROGRESS})
#: Outbox topics after which whoever is in the booking's call is sent away.
ENDING_TOPICS = (f"booking.{BookingState.CANCELLED}",)


#: A booking's video links open this long before its slot (and its
#: consultation may start from then).
EARLY_JOIN = dt.timedelta(minutes=10)


def is_open(booking: Mapping[str, Any], now: dt.datetime) -> bool:
    """Whether ``booking``'s video visit can be joined at ``now``: it has
    video links (:func:`has_video_link`), from :data:`EARLY_JOIN` before its
    slot until its end."""
    return has_video_link(booking) and (
        booking["starts_at"] - EARLY_JOIN <= now <= booking["ends_at"]
    )


def room_of(booking_id: str) -> str:
    return ROOM_PREFIX + booking_id


def booking_of(room: str) -> UUID | None:
    """The booking whose video consultation ``room`` is (None: a room of no booking)."""
    if not room.startswith(ROOM_PREFIX):
        return None
    try:
        return UUID(room[len(ROOM_PREFIX) :])
    except ValueError:
        return None


class PhoneDialIn(ApiModel):
    """How to join the visit from a plain phone: call ``number``, key ``pin`` and #."""

    number: str
    pin: str


class VideoLink(ApiModel):
    booking_id: UUID
    room: str
    role: str
    url: str
    token: str
    not_before: dt.datetime
    expires_at: dt.datetime
    admin: bool
    #: Absent where the deployment offers no dial-in (``sip_dial_in``).
    phone: PhoneDialIn | None = None


def has_video_link(booking: Mapping[str, Any]) -> bool:
    """Whether the booking (a ``bookings`` row) has video links now."""
    return booking["type"] == "video" and booking["status"] in OPEN_STATES


def video_link(
    settings: Settings,
    booking: Mapping[str, Any],
    *,
    identity: str,
    name: str,
    role: str,
    locale: str | None = None,
    sid: str = "",
    clinic_region: str = "",
    device: str = "",
) -> VideoLink:
    """One person's link into ``booking``'s room (a ``bookings`` row with a
    video link, :func:`has_video_link`).

    ``role`` is ``patient`` (publish and subscribe), ``doctor`` or ``staff``
    (also admin: admit, mute, end), or a guest's (wadud.web.roles) for a
    visit booked elsewhere. The token is valid from
    :data:`EARLY_JOIN` before the slot to its end; the URL names the person's
    language (``lang``) when ``locale`` is given, and ``sid`` binds it to a
    sign-in session (signing out ends it); ``device`` is ``phone`` for the
    phone bridge's caller (the room shows it). A clinic in one of
    ``call_home_regions`` (``clinic_region``) has the visit held in that
    region's own control plane (the token's ``home``, docs/operations.md)."""
    room = room_of(str(booking["id"]))
    grant = auth.RoomGrant(
        room=room,
        identity=identity,
        name=name,
        # What the role grants (wadud.web.roles): a doctor's and staff's
        # links also administer the room.
        role=role,
        booking=str(booking["id"]),
        slot=booking["starts_at"].isoformat(),
        sid=sid,
        device=device,
        # Clinics' regions are upper case (PK), media regions lower (pk).
        home=region if (region := clinic_region.lower()) in settings.call_home_regions else "",
    )
    not_before = booking["starts_at"] - EARLY_JOIN
    expires = booking["ends_at"]
    token = auth.issue_room_token(settings, grant, not_before=not_before, expires=expires)
    # The call page speaks the person's own language (notification settings).
    lang = f"&lang={locale}" if locale else ""
    return VideoLink(
        booking_id=booking["id"],
        room=room,
        role=role,
        url=f"{settings.base_url}/call/{room}?token={token}{lang}",
        token=token,
        not_before=not_before,
        expires_at=expires,
        admin=grant.admin,
        phone=(
            PhoneDialIn(number=settings.sip_dial_in, pin=pin)
            if settings.sip_dial_in and (pin := booking.get("phone_pin"))
            else None
        ),
    )


@dataclass(frozen=True, slots=True)
class LinkRefusal:
    """Why a booking's video link no longer opens its room: ``reason`` for
    programs (the call page words it for the patient), ``detail`` for people.

    Reasons: ``cancelled``, ``completed``, ``no_show``, ``moved`` (another
    slot; a new link works), ``not_open`` (not accepted, or the hold lapsed)
    and ``unknown`` (the link names no video consultation)."""

    reason: str
    detail: str


async def link_refusal(pool: asyncpg.Pool, booking_id: str, slot: str) -> LinkRefusal | None:
    """Why a video link for ``booking_id`` issued for the slot starting at
    ``slot`` (ISO 8601) no longer opens the room, or None when it does."""
    try:
        key = UUID(booking_id)
        issued_for = dt.datetime.fromisoformat(slot)
    except ValueError:
        return LinkRefusal("unknown", "the link names no booking")
    row = await pool.fetchrow("SELECT status, type, starts_at FROM bookings WHERE id = $1", key)
    if row is None or row["type"] != "video":
        return LinkRefusal("unknown", "the link names no video consultation")
    status = row["status"]
    if status not in OPEN_STATES:
        said = status if status in ("cancelled", "completed", "no_show") else "not_open"
        return LinkRefusal(said, f"the consultation is {status.replace('_', ' ')}")
    if row["starts_at"] != issued_for:
        return LinkRefusal(
            "moved", "the consultation was moved to another time; ask for a new link"
        )
    return None
