"""The room events a clinic's webhook endpoint may receive, and how a
feature sends one: an outbox row with topic ``room.<event>`` written in the
feature's own transaction (:func:`emit`), so an event is delivered if and
only if what it reports committed.

The payload names the booking (which decides the clinic, hence the
endpoints) and the room, and otherwise only ids and roles: participant ids
are the room's own (``p-...``), never names, identities or emails.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from wadud.messaging import outbox

__all__ = ["EVENTS", "PREFIX", "emit", "topic"]

#: Every event name, in the order a visit usually produces them; the last
#: five are emitted by recording, call reports and the phone bridge
#: (``phone_call``: each step of a call it places, ``data.state``).
EVENTS = (
    "room_started",
    "participant_waiting",
    "participant_admitted",
    "participant_denied",
    "participant_joined",
    "track_published",
    "track_unpublished",
    "participant_left",
    "room_finished",
    "recording_started",
    "recording_ready",
    "recording_failed",
    "call_report_ready",
    "phone_call",
)
PREFIX = "room."


def topic(name: str) -> str:
    if name not in EVENTS:
        raise ValueError(f"unknown webhook event {name!r}")
    return PREFIX + name


async def emit(
    conn: asyncpg.Connection,
    name: str,
    *,
    booking_id: str,
    room: str,
    at: str,
    data: dict[str, Any] | None = None,
) -> None:
    """Write webhook event ``name`` (one of :data:`EVENTS`) in ``conn``'s
    transaction. ``at``: when it happened (ISO 8601); ``data``: ids and
    roles only."""
    payload = {"booking_id": booking_id, "room": room, "at": at, "data": data or {}}
    await outbox.emit(conn, topic(name), payload)
