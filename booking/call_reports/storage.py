"""What goes into each video visit's call report, and reading it back.

Every ``SAMPLE_EVERY`` seconds the media worker's look at each participant's
legs (``sfu.rooms.call_samples``: loss, RTT, jitter, bitrates, the simulcast layer
of each video they receive, the quality level shown) and the participant's
page's own ``getStats()`` (freezes, concealed audio, TURN use, ICE
restarts), plus the worker's transport changes (docs/calls.md, "Call
reports"). Signalling batches them (``signalling.call_reports``) and writes
them here with :func:`store`; when the room closes, :func:`finish` marks the
report ready and emits the room webhook event ``call_report_ready``
(``hooks.events``, topic ``room.call_report_ready``) in the same
transaction. :func:`recorded` reads a visit's rows back for
:mod:`booking.call_reports.assembly`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from hooks import events

__all__ = [
    "READY_EVENT",
    "CallParticipant",
    "Recorded",
    "Row",
    "TransportEvent",
    "finish",
    "recorded",
    "store",
]

#: The room webhook event of a finished report (one of hooks.events.EVENTS).
READY_EVENT = "call_report_ready"


@dataclass(frozen=True)
class CallParticipant:
    """Who a participant id is (from their page's stats)."""

    booking_id: UUID
    participant: str
    name: str
    role: str


@dataclass(frozen=True)
class Row:
    """One sample: ``source`` media or page, its JSON data."""

    booking_id: UUID
    participant: str
    source: str
    at: dt.datetime
    data: Mapping[str, Any]


@dataclass(frozen=True)
class TransportEvent:
    """A transport change (connected, failed, closed) or a page's reconnect."""

    booking_id: UUID
    participant: str
    at: dt.datetime
    kind: str
    direction: str = ""
    detail: str = ""


async def store(
    conn: asyncpg.Connection,
    rows: Sequence[Row],
    events: Sequence[TransportEvent] = (),
    people: Sequence[CallParticipant] = (),
) -> None:
    """Write one batch (a few seconds of a replica's rooms) in one transaction.
    A booking that is gone (erased, deleted) takes its rows with it: they are
    dropped, never an error."""
    bookings = {r.booking_id for r in rows} | {e.booking_id for e in events}
    bookings |= {p.booking_id for p in people}
    if not bookings:
        return
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO call_reports (booking_id, clinic_id)
               SELECT b.id, b.clinic_id FROM bookings b WHERE b.id = ANY($1::uuid[])
               ON CONFLICT (booking_id) DO NOTHING""",
            list(bookings),
        )
        if people:
            await conn.executemany(
                """INSERT INTO call_participants (booking_id, clinic_id, participant, name, role)
                   SELECT booking_id, clinic_id, $2, $3, $4 FROM call_reports
                   WHERE booking_id = $1
                   ON CONFLICT (booking_id, participant)
                   DO UPDATE SET name = EXCLUDED.name, role = EXCLUDED.role""",
                [(p.booking_id, p.participant, p.name, p.role) for p in people],
            )
        if rows:
            await conn.execute(
                """INSERT INTO call_samples (booking_id, clinic_id, participant, source, at, data)
                   SELECT r.booking_id, r.clinic_id, s.participant, s.source, s.at, s.data
                   FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[],
                               $5::jsonb[]) AS s(booking_id, participant, source, at, data)
                   JOIN call_reports r ON r.booking_id = s.booking_id""",
                [r.booking_id for r in rows],
                [r.participant for r in rows],
                [r.source for r in rows],
                [r.at for r in rows],
                [json.dumps(r.data) for r in rows],
            )
        if events:
            await conn.execute(
                """INSERT INTO call_events (booking_id, clinic_id, participant, at, kind,
                                            direction, detail)
                   SELECT r.booking_id, r.clinic_id, e.participant, e.at, e.kind,
                          e.direction, e.detail
                   FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[],
                               $5::text[], $6::text[])
                        AS e(booking_id, participant, at, kind, direction, detail)
                   JOIN call_reports r ON r.booking_id = e.booking_id""",
                [e.booking_id for e in events],
                [e.participant for e in events],
                [e.at for e in events],
                [e.kind for e in events],
                [e.direction for e in events],
                [e.detail for e in events],
            )


async def finish(conn: asyncpg.Connection, booking_id: UUID, ended_at: dt.datetime) -> bool:
    """The visit's room closed and its last batch is written: the report is
    ready, once (False when it already was or there is none), with the
    room webhook event ``call_report_ready`` in the same transaction."""
    async with conn.transaction():
        row = await conn.fetchrow(
            """UPDATE call_reports SET ended_at = $2, ready_at = now()
               WHERE booking_id = $1 AND ready_at IS NULL
               RETURNING ready_at""",
            booking_id,
            ended_at,
        )
        if row is None:
            return False
        # Emitted as every room event is (it was once a bare outbox topic,
        # which the webhook trigger, matching ``room.*``, never delivered).
        await events.emit(
            conn,
            READY_EVENT,
            booking_id=str(booking_id),
            room=f"booking-{booking_id}",
            at=row["ready_at"].isoformat(),
            data={
                "ended_at": ended_at.isoformat(),
                "report": f"/api/v1/bookings/{booking_id}/call-report",
            },
        )
    return True


# -- reading back ----------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """A visit's stored rows: the report's own row, who each participant is
    (by participant id), and the samples and events in time order."""

    report: Mapping[str, Any]
    people: Mapping[str, Mapping[str, Any]]
    samples: Sequence[Mapping[str, Any]]
    events: Sequence[Mapping[str, Any]]


async def recorded(conn: asyncpg.Connection, booking_id: UUID) -> Recorded | None:
    """What was stored of the visit's call, None when no call took place.
    Each sample's ``data`` comes back as its JSON value."""
    report = await conn.fetchrow("SELECT * FROM call_reports WHERE booking_id = $1", booking_id)
    if report is None:
        return None
    people = {
        r["participant"]: dict(r)
        for r in await conn.fetch(
            "SELECT participant, name, role FROM call_participants WHERE booking_id = $1",
            booking_id,
        )
    }
    samples = await conn.fetch(
        "SELECT participant, source, at, data FROM call_samples WHERE booking_id = $1"
        " ORDER BY at, id",
        booking_id,
    )
    events = await conn.fetch(
        "SELECT participant, at, kind, direction, detail FROM call_events"
        " WHERE booking_id = $1 ORDER BY at, id",
        booking_id,
    )
    return Recorded(
        report,
        people,
        [
            {
                "participant": r["participant"],
                "source": r["source"],
                "at": r["at"],
                "data": json.loads(r["data"]) if isinstance(r["data"], str) else r["data"],
            }
            for r in samples
        ],
        [dict(e) for e in events],
    )
