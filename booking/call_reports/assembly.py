"""What comes out of each video visit's call report: the stored rows
(:mod:`booking.call_reports.storage`) folded into one report per visit, as
plain data: per participant join and leave times, reconnects and ICE
restarts with their times, seconds on each layer, TURN use, freezes and
concealment, and the series over time that the report page plots
(:mod:`booking.call_reports.page`).

Who reads it: clinic staff of the booking's clinic and admins (the API's
roles); a booking outside the reader's clinic is a 404, as for every
booking, and each read is an audit row, as reading a booking is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import asyncpg

from booking.bookings.access import visible_booking
from booking.call_reports.storage import Recorded, recorded
from privacy import audit
from wadud.errors import NotFound
from wadud.web.api import Principal

__all__ = ["NoCallReport", "assemble", "fold", "read_visible"]

#: Simulcast layers (rids), lowest first; ``single``: a track without simulcast.
_LAYER_RANK = {"paused": 0, "q": 1, "h": 2, "f": 3, "single": 3}
_ROLE_RANK = {"doctor": 0, "patient": 1}


class NoCallReport(NotFound):
    code = "call-report-not-found"
    title = "This booking has no call report"


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


def fold(booking_id: UUID, stored: Recorded) -> dict[str, Any]:
    """The visit's report as plain data (see the module docstring)."""
    report, people = stored.report, stored.people
    by: dict[str, tuple[list[Any], list[Any], list[Any]]] = {}
    for r in stored.samples:
        entry = by.setdefault(r["participant"], ([], [], []))
        (entry[0] if r["source"] == "media" else entry[1]).append(
            {"at": r["at"], "data": r["data"]}
        )
    for e in stored.events:
        by.setdefault(e["participant"], ([], [], []))[2].append(dict(e))
    moments = [r["at"] for r in stored.samples] + [e["at"] for e in stored.events]
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


async def assemble(conn: asyncpg.Connection, booking_id: UUID) -> dict[str, Any] | None:
    """The visit's report (:func:`fold` of what was stored), None when no
    call took place."""
    stored = await recorded(conn, booking_id)
    return None if stored is None else fold(booking_id, stored)


async def read_visible(pool: asyncpg.Pool, booking_id: UUID, me: Principal) -> dict[str, Any]:
    """The report of a booking in ``me``'s scope (404 otherwise, and 404
    ``call-report-not-found`` when no one joined its call), the read audited
    as ``call_report.read``."""
    async with pool.acquire() as conn:
        row = await visible_booking(conn, booking_id, me)
        report = await assemble(conn, row["id"])
        if report is None:
            raise NoCallReport("no call took place for this booking")
        await audit.record_about(conn, row, "booking", actor=me, action="call_report.read")
    return report
