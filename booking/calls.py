"""A booking's video consultation as calls see it: whether a link still
opens the room, and which booking events end the call.

A video link (``GET /api/v1/bookings/{id}/video-link``) is a room token for
room ``booking-<id>`` that names the booking and the slot it was issued for.
Its token alone would keep working until the slot ends; signalling asks
:func:`link_refusal` at every join and resume, so a link stops working as soon
as its booking is cancelled, completed, marked no-show or moved to another
slot. A cancellation also ends a call in progress (:data:`ENDING_TOPICS`,
outbox events relayed on the bus).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from booking.lifecycle import State

__all__ = [
    "ENDING_TOPICS",
    "OPEN_STATES",
    "ROOM_PREFIX",
    "LinkRefusal",
    "link_refusal",
    "room_of",
]

ROOM_PREFIX = "booking-"
#: Booking states in which its video links open the room.
OPEN_STATES = frozenset({State.ACCEPTED, State.IN_PROGRESS})
#: Outbox topics after which whoever is in the booking's call is sent away.
ENDING_TOPICS = (f"booking.{State.CANCELLED}",)


def room_of(booking_id: str) -> str:
    return ROOM_PREFIX + booking_id


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
