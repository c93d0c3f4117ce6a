"""``GET /api/v1/bookings/{id}/call-report`` and its page
(:mod:`booking.call_reports`).

For clinic staff of the booking's clinic and admins: patients and doctors
get 403 (the report names every participant's network), staff of another
clinic 404 (as for any booking outside their scope). Each read is an audit
row, as reading a booking is.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any
from uuid import UUID

from aiohttp import web

from booking.call_reports import assembly, page
from wadud.web.api import ApiModel, Call, Role, Routes

routes = Routes("call reports", "Each video visit's call-quality report.")

READERS = {Role.CLINIC_STAFF, Role.ADMIN}


class CallReport(ApiModel):
    booking_id: UUID
    started_at: dt.datetime
    ended_at: dt.datetime | None
    #: True once the call ended and every sample was written.
    ready: bool
    duration_seconds: float
    #: Per participant: name, role, joined_at, left_at, reconnects (each with
    #: ``at``), ice_restarts, turn, freezes, freeze_seconds,
    #: concealed_seconds, seconds_on_layer, seconds_at_quality, and the
    #: series ``media`` (t, loss, rtt, jitter, sent, received, available,
    #: layers, quality) and ``page`` (t, relay, rtt, freezes, concealed,
    #: quality_shown); docs/calls.md, "Call reports".
    participants: list[dict[str, Any]]


async def _load(call: Call[None, None]) -> dict[str, Any]:
    return await assembly.read_visible(call.pool, call.path_uuid("id"), call.user)


@routes.get("/api/v1/bookings/{id:uuid}/call-report", returns=CallReport, auth=READERS)
async def call_report(call: Call[None, None]) -> CallReport:
    """The visit's call report: per participant, join and leave, reconnects,
    layers, loss, RTT, jitter, bitrates, TURN use, freezes and concealment.

    404 ``call-report-not-found`` when no one joined the booking's call."""
    return CallReport(**await _load(call))


@routes.get("/api/v1/bookings/{id:uuid}/call-report/page", auth=READERS)
async def call_report_page_(call: Call[None, None]) -> web.Response:
    """The call report as a page (HTML with SVG plots of the visit's timeline)."""
    report = await _load(call)
    nonce = secrets.token_urlsafe(12)
    html = page.render(report, "Call report", nonce)
    return web.Response(
        text=html,
        content_type="text/html",
        headers={
            "Content-Security-Policy": (
                f"default-src 'none'; style-src 'nonce-{nonce}'; frame-ancestors 'none'"
            ),
            "Cache-Control": "no-store",
        },
    )
