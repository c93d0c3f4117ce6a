"""Each video visit's call report: storage, assembly, the API and its retention.

What goes in (docs/calls.md, "Call reports"): every ``SAMPLE_EVERY`` seconds
the media worker's look at each participant's legs (``sfu.rooms.call_samples``:
loss, RTT, jitter, bitrates, the simulcast layer of each video they receive,
the quality level shown) and the participant's page's own ``getStats()``
(freezes, concealed audio, TURN use, ICE restarts), plus the worker's
transport changes. Signalling batches them (``signalling.call_reports``) and
writes them here with :func:`store`; when the room closes, :func:`finish`
marks the report ready and emits the outbox event ``call_report_ready`` in
the same transaction.

What comes out: :func:`assemble` folds the rows into one report per visit:
per participant join and leave times, reconnects and ICE restarts with
their times, seconds on each layer, TURN use, freezes and concealment, and
the series over time that the report page plots
(:mod:`booking.call_report_page`).

Who sees it: clinic staff of the booking's clinic and admins; anyone else
gets the API's usual answers (403 for a role that never may, 404 for a
booking outside the caller's clinic, as for every booking).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from privacy.retention import Context, Rule
from privacy.rights import Erased, Part, Subject
from wadud import outbox

__all__ = [
    "READY_TOPIC",
    "CallReportProvider",
    "Event",
    "Participant",
    "Row",
    "assemble",
    "finish",
    "retention_rules",
    "store",
]

#: The outbox topic of a finished report.
READY_TOPIC = "call_report_ready"
#: Simulcast layers (rids), lowest first; ``single``: a track without simulcast.
_LAYER_RANK = {"paused": 0, "q": 1, "h": 2, "f": 3, "single": 3}
_ROLE_RANK = {"doctor": 0, "patient": 1}


@dataclass(frozen=True)
class Participant:
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
class Event:
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
    events: Sequence[Event] = (),
    people: Sequence[Participant] = (),
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
    outbox event ``call_report_ready`` in the same transaction."""
    async with conn.transaction():
        row = await conn.fetchrow(
            """UPDATE call_reports SET ended_at = $2, ready_at = now()
               WHERE booking_id = $1 AND ready_at IS NULL
               RETURNING clinic_id""",
            booking_id,
            ended_at,
        )
        if row is None:
            return False
        await outbox.emit(
            conn,
            READY_TOPIC,
            {
                "booking_id": str(booking_id),
                "clinic_id": str(row["clinic_id"]),
                "room": f"booking-{booking_id}",
                "ended_at": ended_at.isoformat(),
            },
        )
    return True


# -- assembly --------------------------------------------------------------------


def _seconds(a: dt.datetime, b: dt.datetime) -> float:
    return round((b - a).total_seconds(), 1)


def _participant(
    pid: str,
    who: Mapping[str, Any] | None,
    media: list[Mapping[str, Any]],
    page: list[Mapping[str, Any]],
    events: list[Mapping[str, Any]],
    start: dt.datetime,
) -> dict[str, Any]:
    times = [r["at"] for r in media] + [r["at"] for r in page] + [e["at"] for e in events]
    connected = [e["at"] for e in events if e["kind"] == "connected"]
    closed = [e["at"] for e in events if e["kind"] == "closed"]
    joined = min(connected or times)
    left = max(closed or times) if closed or times else None
    # A reconnect: the worker saw a transport fail and come back, or the
    # page restarted ICE / made new peer connections (its own count).
    reconnects: list[dict[str, Any]] = []
    failed: dict[str, dt.datetime] = {}
    for e in events:
        if e["kind"] == "failed":
            failed[e["direction"]] = e["at"]
        elif e["kind"] == "connected" and e["direction"] in failed:
            at = failed.pop(e["direction"])
            reconnects.append(
                {"at": at, "back_at": e["at"], "by": "media", "direction": e["direction"]}
            )
        elif e["kind"] == "reconnect":
            reconnects.append({"at": e["at"], "by": "page", "how": e["detail"]})
    reconnects.sort(key=lambda r: r["at"])
    layers: dict[str, float] = {}
    quality: dict[str, float] = {}
    series: list[dict[str, Any]] = []
    for i, r in enumerate(media):
        d = r["data"]
        step = _seconds(r["at"], media[i + 1]["at"]) if i + 1 < len(media) else 5.0
        step = min(step, 10.0)
        # Time on a layer: the lowest of the videos they receive (what the
        # worst-served picture on their screen was).
        rids = ["paused" if r is None else r for r in (d.get("layers") or {}).values()]
        if rids:
            key = min(rids, key=lambda r: _LAYER_RANK.get(r, 0))
            layers[key] = round(layers.get(key, 0.0) + step, 1)
        q = str(d.get("quality", ""))
        quality[q] = round(quality.get(q, 0.0) + step, 1)
        series.append(
            {
                "t": _seconds(start, r["at"]),
                "loss": d.get("loss"),
                "rtt": d.get("rtt"),
                "jitter": d.get("jitter"),
                "sent": d.get("sent"),
                "received": d.get("received"),
                "available": d.get("available"),
                "layers": d.get("layers") or {},
                "quality": q,
            }
        )
    last_page = page[-1]["data"] if page else {}
    turn = any(bool(r["data"].get("relay")) for r in page)
    page_series = [
        {
            "t": _seconds(start, r["at"]),
            "relay": bool(r["data"].get("relay")),
            "rtt": r["data"].get("rtt"),
            "loss": r["data"].get("loss"),
            "freezes": r["data"].get("freeze_count"),
            "concealed": r["data"].get("concealed"),
            "quality_shown": r["data"].get("quality_shown"),
        }
        for r in page
    ]
    return {
        "participant_id": pid,
        "name": (who or {}).get("name") or "",
        "role": (who or {}).get("role") or "",
        "joined_at": joined,
        "left_at": left,
        "reconnects": reconnects,
        "ice_restarts": int(last_page.get("ice_restarts") or 0),
        "turn": turn,
        "candidate": last_page.get("candidate") or "",
        "freezes": int(last_page.get("freeze_count") or 0),
        "freeze_seconds": float(last_page.get("freeze_seconds") or 0.0),
        "concealed_seconds": float(last_page.get("concealed_seconds") or 0.0),
        # The worse of what the worker measured and what the page lost.
        "peak_loss": max(
            [float(s["loss"] or 0) for s in series] + [float(s["loss"] or 0) for s in page_series],
            default=0.0,
        ),
        "seconds_on_layer": layers,
        "seconds_at_quality": quality,
        "media": series,
        "page": page_series,
    }


async def assemble(conn: asyncpg.Connection, booking_id: UUID) -> dict[str, Any] | None:
    """The visit's report as plain data (see the module docstring), None
    when no call took place."""
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
    by: dict[str, tuple[list[Any], list[Any], list[Any]]] = {}
    for r in samples:
        entry = by.setdefault(r["participant"], ([], [], []))
        data = json.loads(r["data"]) if isinstance(r["data"], str) else r["data"]
        (entry[0] if r["source"] == "media" else entry[1]).append({"at": r["at"], "data": data})
    for e in events:
        by.setdefault(e["participant"], ([], [], []))[2].append(dict(e))
    moments = [r["at"] for r in samples] + [e["at"] for e in events]
    start = min(moments) if moments else report["started_at"]
    end = report["ended_at"] or (max(moments) if moments else start)
    parts = [_participant(pid, people.get(pid), *lists, start) for pid, lists in by.items()]
    parts.sort(key=lambda p: (_ROLE_RANK.get(p["role"], 2), p["joined_at"], p["name"]))
    return {
        "booking_id": booking_id,
        "started_at": start,
        "ended_at": report["ended_at"],
        "ready": report["ready_at"] is not None,
        "duration_seconds": _seconds(start, end),
        "participants": parts,
    }


# -- retention -------------------------------------------------------------------


async def _reports(conn: asyncpg.Connection, ctx: Context, days: float) -> int:
    # Samples and events go with their report (ON DELETE CASCADE).
    return await ctx.delete_batched(
        conn, "call_reports", "coalesce(ended_at, started_at) < $1", ctx.days_ago(days)
    )


def retention_rules() -> list[Rule]:
    return [
        Rule(
            "call_reports",
            "Video visits' call reports (quality samples, transport events)",
            "retention_call_report_days",
            _reports,
        )
    ]


# -- data rights -----------------------------------------------------------------


class CallReportProvider:
    """A patient's part of call reports (docs/privacy.md): the export holds
    what was recorded of their own participation in their visits (never the
    other participants'); erasure deletes their visits' reports whole."""

    name = "call_reports"

    async def export(self, conn: asyncpg.Connection, subject: Subject) -> Sequence[Part]:
        rows = await conn.fetch(
            """SELECT s.booking_id, s.participant, p.name, s.source, s.at, s.data
               FROM call_samples s
               JOIN bookings b ON b.id = s.booking_id
               JOIN call_participants p
                    ON p.booking_id = s.booking_id AND p.participant = s.participant
               WHERE b.patient_id = $1 AND p.role = 'patient'
               ORDER BY s.at, s.id""",
            subject.user_id,
        )
        records = [
            {
                "booking_id": str(r["booking_id"]),
                "participant": r["participant"],
                "name": r["name"],
                "source": r["source"],
                "at": r["at"].isoformat(),
                "data": json.loads(r["data"]) if isinstance(r["data"], str) else r["data"],
            }
            for r in rows
        ]
        return [Part("samples", records)] if records else []

    async def erase(self, conn: asyncpg.Connection, subject: Subject) -> Erased:
        status = await conn.execute(
            """DELETE FROM call_reports
               WHERE booking_id IN (SELECT id FROM bookings WHERE patient_id = $1)""",
            subject.user_id,
        )
        out = Erased()
        out.count("call_reports", status)
        return out
