"""Call reports' part of a patient's data rights and of retention
(:mod:`privacy.rights`, :mod:`privacy.retention`)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import asyncpg

from privacy.retention import RoundContext, Rule
from privacy.rights import Erased, Part, Subject

__all__ = ["CallReportProvider", "retention_rules"]


async def _reports(conn: asyncpg.Connection, ctx: RoundContext, days: float) -> int:
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
