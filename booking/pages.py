"""The pages a patient sees outside the call: the sandbox's checkout and
the confirmation after the gateway sends the browser back.

Each is a small HTML shell: the words are keys (``data-i18n``) that the
call page's own translations (``/static/call/i18n.js``, English, Urdu,
Arabic) fill in, and the facts (doctor, slot, amount, hold) travel as one
JSON block that ``/static/call/pay.js`` formats for the patient's language
and time zone with the browser's ``Intl``. The language is ``?lang=``, else
the patient's saved ``locale`` (notification settings), else the browser's;
the time zone is the patient's saved one, else the browser's.

The same URLs answer programs as before these pages: a client that asks for
JSON (``Accept: application/json``) at the payment's return gets JSON; only
a browser's navigation (:func:`wants_html`) gets a page.
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
from aiohttp import web

from booking import calls
from wadud.config import Settings

__all__ = [
    "VISIT",
    "confirmation",
    "page",
    "visit_facts",
    "wants_html",
]

#: What the pages may load: our own script and style, nothing inline but
#: the JSON block (which is data, never run); forms post only to us.
_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
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
<script type="module" src="/static/call/pay.js"></script>
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


#: A booking as the pages tell it: the booking's own columns a video link
#: needs, its doctor's name and its patient's language and zone.
_BOOKING = """SELECT b.id, b.status, b.type, b.starts_at, b.ends_at, b.doctor_id,
                     b.patient_id,
                     d.display_name AS doctor, u.display_name AS patient_name,
                     u.locale, u.time_zone
              FROM bookings b
              JOIN doctors d ON d.id = b.doctor_id
              JOIN users u ON u.id = b.patient_id
              WHERE b.id = $1"""


def _booking_facts(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "booking_status": row["status"],
        "type": row["type"],
        "doctor": row["doctor"],
        "starts_at": row["starts_at"].isoformat(),
        "ends_at": row["ends_at"].isoformat(),
        "locale": row["locale"],
        "time_zone": row["time_zone"],
    }


def _patient_link(settings: Settings, row: asyncpg.Record) -> str | None:
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
    )
    return link.url


async def _visit(
    conn: asyncpg.Connection, intent_id: UUID
) -> tuple[asyncpg.Record, dict[str, Any]] | None:
    pay = await conn.fetchrow(
        """SELECT booking_id, status, amount_minor, currency, expires_at
           FROM payment_intents WHERE id = $1""",
        intent_id,
    )
    if pay is None:
        return None
    row = await conn.fetchrow(_BOOKING, pay["booking_id"])
    assert row is not None  # a payment's booking is never deleted
    facts = _booking_facts(row) | {
        "payment_status": pay["status"],
        "amount_minor": pay["amount_minor"],
        "currency": pay["currency"],
        "expires_at": pay["expires_at"].isoformat(),
    }
    return row, facts


async def visit_facts(conn: asyncpg.Connection, intent_id: UUID) -> dict[str, Any] | None:
    """What the pages say about a payment's visit, as plain JSON values."""
    found = await _visit(conn, intent_id)
    return None if found is None else found[1]


def page(title: str, body: str, facts: dict[str, Any], *, status: int = 200) -> web.Response:
    """An HTML page from its title key, its body (keys and slots) and the
    facts ``pay.js`` fills them with."""
    locale = facts.get("locale")
    text = _SHELL.format(
        title=html.escape(title),
        locale=f' data-locale="{html.escape(locale)}"' if locale else "",
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
    conn: asyncpg.Connection, settings: Settings, intent_id: UUID, *, onward: str | None
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
    outcome = _OUTCOMES.get(facts["payment_status"], "failed")
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
