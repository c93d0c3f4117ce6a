"""The pages a patient sees outside the call: the sandbox's checkout, the
confirmation after the gateway sends the browser back, and the page a
manage link opens.

Each is a small HTML shell: the words are keys (``data-i18n``) that the
call page's own translations (``/static/call/i18n.js``, English, Urdu,
Arabic) fill in, and the facts (doctor, slot, amount, hold) travel as one
JSON block that ``/static/call/pay.js`` formats for the patient's language
and time zone with the browser's ``Intl``. The language is ``?lang=``, else
the patient's saved ``locale`` (notification settings), else the browser's;
the time zone is the patient's saved one, else the browser's.

The same URLs answer programs as before these pages: a client that asks for
JSON (``Accept: application/json``) at the payment's return or at a manage
link gets JSON; only a browser's navigation (:func:`wants_html`) gets a page.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from aiohttp import web

from booking import calls, refunds
from booking.bookings import visits
from booking.lifecycle import BookingState, allowed_events
from wadud.config import Settings

__all__ = [
    "VISIT",
    "confirmation",
    "manage",
    "manage_gone",
    "page",
    "visit_facts",
    "wants_html",
]

#: What the pages may load: our own script and style, nothing inline but
#: the JSON block (which is data, never run); forms post, and the manage
#: page's script calls the API, only to us.
_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

#: What the visit is, in slots pay.js fills for the patient's language.
VISIT = """<dl class="facts">
<dt data-i18n="pay.doctor">Doctor</dt><dd data-fill="doctor" dir="auto"></dd>
<dt data-i18n="pay.when">When</dt><dd data-fill="starts"></dd>
<dt data-i18n="pay.amount">Amount</dt><dd class="amount" data-fill="amount"></dd>
</dl>"""

_SHELL = """<!doctype html>
<html lang="en"{locale}>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title data-i18n="{title}">Wadud</title>
<link rel="stylesheet" href="/static/call/call.css">
<link rel="stylesheet" href="/static/call/pay.css">
<link rel="stylesheet" href="/static/call/i18n.css">
<script type="module" src="/static/call/pay.js"></script>{scripts}
<script type="application/json" id="facts">{facts}</script>
</head>
<body>
<main class="card">
{body}
</main>
</body>
</html>
"""


def _quality(accept: str, kind: str) -> float:
    """The q a client's ``Accept`` gives ``kind`` by name (no wildcards)."""
    for item in accept.split(","):
        mime, *params = (part.strip() for part in item.split(";"))
        if mime.lower() != kind:
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    return float(value)
                except ValueError:
                    return 0.0
        return 1.0
    return 0.0


def wants_html(request: web.Request) -> bool:
    """A browser's navigation (``text/html`` named, and not below JSON);
    ``*/*`` alone or ``application/json`` is a program, which gets JSON."""
    accept = request.headers.get("Accept", "")
    page = _quality(accept, "text/html")
    return page > 0 and page >= _quality(accept, "application/json")


def _booking_facts(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "booking_status": row["status"],
        "type": row["type"],
        "doctor": row["doctor"],
        "starts_at": row["starts_at"].isoformat(),
        "ends_at": row["ends_at"].isoformat(),
        "locale": row["locale"],
        "time_zone": row["time_zone"],
    }


def _patient_link(settings: Settings, row: Mapping[str, Any]) -> str | None:
    """The patient's video link, made as the booking API makes it, when
    the booking has one now."""
    if not calls.has_video_link(row):
        return None
    link = calls.video_link(
        settings,
        row,
        identity=str(row["patient_id"]),
        name=row["patient_name"] or "",
        role="patient",
        locale=row["locale"],
        clinic_region=row["clinic_region"] or "",
    )
    return link.url


async def _visit(
    conn: visits.Conn, intent_id: UUID
) -> tuple[Mapping[str, Any], dict[str, Any]] | None:
    found = await visits.payment_visit(conn, intent_id)
    if found is None:
        return None
    row, pay = found
    facts = _booking_facts(row) | {
        "payment_status": pay["status"],
        "payment_late": pay["late"],
        "amount_minor": pay["amount_minor"],
        "currency": pay["currency"],
        "expires_at": pay["expires_at"].isoformat(),
    }
    return row, facts


async def visit_facts(conn: visits.Conn, intent_id: UUID) -> dict[str, Any] | None:
    """What the pages say about a payment's visit, as plain JSON values."""
    found = await _visit(conn, intent_id)
    return None if found is None else found[1]


def page(
    title: str,
    body: str,
    facts: dict[str, Any],
    *,
    status: int = 200,
    script: str | None = None,
) -> web.Response:
    """An HTML page from its title key, its body (keys and slots) and the
    facts ``pay.js`` fills them with; ``script`` names one more of
    ``/static/call/``'s modules the page runs."""
    locale = facts.get("locale")
    scripts = (
        f'\n<script type="module" src="/static/call/{html.escape(script)}"></script>'
        if script
        else ""
    )
    text = _SHELL.format(
        title=html.escape(title),
        locale=f' data-locale="{html.escape(locale)}"' if locale else "",
        scripts=scripts,
        # Inside <script>, only "</" could end the block early.
        facts=json.dumps(facts, ensure_ascii=False).replace("</", "<\\/"),
        body=body,
    )
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={
            "Content-Security-Policy": _CSP,
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


#: The way into the visit, when the booking has one (its URL is the
#: patient's own video link, escaped into the page).
_JOIN = """<p class="row"><a class="button primary" id="join-visit" href="{url}"
data-i18n="visit.join">Open your video visit</a></p>"""
_JOIN_HINT = """<p class="muted" data-i18n="done.paid.next.link"></p>"""

#: The confirmation after paying, by the payment's status: what happened
#: and what comes next (keys of i18n.js).
_OUTCOMES = {"succeeded": "paid", "processing": "pending", "requires_payment": "pending"}

_CONFIRMATION = """<h1 data-i18n="done.{outcome}.title">Payment received</h1>
<p class="lead" data-i18n="done.{outcome}.text{accepted}"></p>
{visit}
{join}<p class="muted" data-i18n="done.{outcome}.next{link}"></p>
{onward}"""

#: Back to the client that sent the patient to pay (its ``return_url``).
_ONWARD = """<p class="row onward"><a class="button" id="continue" href="{url}"
data-fill="continue">Continue</a></p>"""


async def confirmation(
    conn: visits.Conn, settings: Settings, intent_id: UUID, *, onward: str | None
) -> web.Response | None:
    """The page a patient lands on after the gateway: the booking, its
    doctor and time in the patient's zone, what happens next, and the link
    to the visit once the doctor has confirmed it. ``onward`` is where the
    client asked the browser to go next (its ``return_url`` with the
    payment's id and status): the page links there, naming its host."""
    found = await _visit(conn, intent_id)
    if found is None:
        return None
    row, facts = found
    outcome = "late" if facts["payment_late"] else _OUTCOMES.get(facts["payment_status"], "failed")
    accepted = ".accepted" if facts["booking_status"] in calls.OPEN_STATES else ""
    url = _patient_link(settings, row) if outcome == "paid" else None
    if onward is not None:
        facts["continue_host"] = urlsplit(onward).hostname or onward
    body = _CONFIRMATION.format(
        outcome=outcome,
        accepted=accepted,
        visit=VISIT,
        join=_JOIN.format(url=html.escape(url)) + "\n" if url else "",
        link=".link" if url else "",
        onward=_ONWARD.format(url=html.escape(onward)) if onward else "",
    )
    return page("done.page.title", body, facts)


_MANAGE = """<h1 data-i18n="manage.title">Your visit</h1>
<p class="lead" id="notice" role="status" hidden></p>
<dl class="facts">
<dt data-i18n="pay.doctor">Doctor</dt><dd data-fill="doctor" dir="auto"></dd>
<dt data-i18n="pay.when">When</dt><dd data-fill="starts"></dd>
<dt data-i18n="manage.status">Status</dt><dd id="status"></dd>
</dl>
{join}
<div class="row" id="actions">
<button type="button" id="reschedule-open" data-i18n="manage.reschedule" hidden></button>
<button type="button" id="cancel-open" class="danger" data-i18n="manage.cancel" hidden></button>
</div>
<p class="muted" id="closed" data-i18n="manage.closed" hidden></p>
<section id="reschedule" class="step" hidden>
<h2 data-i18n="manage.pick">Pick a new time</h2>
<p class="muted" id="slots-note" role="status"></p>
<label class="field" id="day-field" hidden><span data-i18n="manage.day">Day</span>
<select id="day"></select></label>
<div class="slots" id="slots" role="radiogroup" data-i18n-label="manage.pick"></div>
<p class="picked" id="picked" hidden></p>
<div class="row">
<button type="button" id="reschedule-confirm" class="primary" disabled
 data-i18n="manage.move"></button>
<button type="button" id="reschedule-back" data-i18n="manage.keep"></button>
</div>
</section>
<section id="cancel" class="step" hidden>
<h2 data-i18n="manage.cancel.ask">Cancel this visit?</h2>
<p data-fill="refund"></p>
<label class="field"><span data-i18n="manage.reason">Why are you cancelling?</span>
<textarea id="cancel-reason" rows="2" maxlength="500" dir="auto"></textarea></label>
<div class="row">
<button type="button" id="cancel-confirm" class="danger" data-i18n="manage.cancel.yes"></button>
<button type="button" id="cancel-back" data-i18n="manage.keep.visit"></button>
</div>
</section>
<p class="error" id="failed" role="alert" hidden></p>"""


def manage(settings: Settings, row: Mapping[str, Any], paid: int) -> web.Response:
    """The page a manage link opens in a browser, for the booking ``row``
    (:func:`booking.bookings.visits.manage_visit`) with ``paid`` paid for
    it: the booking (doctor, time in the patient's zone, status), the way
    into the visit when it has one, and what the link may do to it
    (``/static/call/manage.js`` does it through the link's own API: cancel,
    reschedule to a free slot)."""
    now = dt.datetime.now(dt.UTC)
    facts = _booking_facts(row) | {
        "doctor_id": str(row["doctor_id"]),
        "allowed_events": sorted(allowed_events(BookingState(row["status"]))),
        # What a cancellation now gives back, by the same policy it applies.
        "paid_minor": paid,
        "refund_now_minor": refunds.refund_amount(
            slot_start=row["starts_at"],
            cancelled_at=now,
            cancelled_by=refunds.Canceller.PATIENT,
            amount_paid=paid,
        ),
        "refunded_minor": row["refund_minor"],
        "currency": row["currency"],
    }
    url = _patient_link(settings, row)
    join = _JOIN.format(url=html.escape(url)) + _JOIN_HINT if url else ""
    body = _MANAGE.format(join=join)
    return page("done.page.title", body, facts, script="manage.js")


_GONE = """<h1 data-i18n="manage.gone.title">This link no longer works</h1>
<p class="lead" data-i18n="manage.gone.text"></p>"""


def manage_gone() -> web.Response:
    """A manage link that names no booking (replaced by a newer one, or
    mistyped), said to a person in the browser's language."""
    return page("done.page.title", _GONE, {}, status=404)
