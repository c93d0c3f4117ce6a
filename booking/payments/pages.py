"""The pages a patient sees while paying: the sandbox's checkout and the
confirmation after the gateway sends the browser back.

Each is a small HTML shell: the words are keys (``data-i18n``) that the
call page's own translations (``/static/call/i18n.js``, English, Urdu,
Arabic) fill in, and the facts (doctor, slot, amount, hold) travel as one
JSON block that ``/static/call/pay.js`` formats for the patient's language
and time zone with the browser's ``Intl``. The language is ``?lang=``, else
the patient's saved ``locale`` (notification settings), else the browser's;
the time zone is the patient's saved one, else the browser's.

A program that asks for JSON (``Accept: application/json``) at the return
still gets the payment's result as JSON, as before these pages.
"""

from __future__ import annotations

import html
import json
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp import web

__all__ = ["VISIT", "confirmation", "page", "visit_facts", "wants_html"]

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


async def visit_facts(conn: asyncpg.Connection, intent_id: UUID) -> dict[str, Any] | None:
    """What the pages say about a payment's visit, as plain JSON values."""
    row = await conn.fetchrow(
        """SELECT p.status AS payment_status, p.amount_minor, p.currency, p.expires_at,
                  b.status AS booking_status, b.type, b.starts_at, b.ends_at,
                  d.display_name AS doctor, u.locale, u.time_zone
           FROM payment_intents p
           JOIN bookings b ON b.id = p.booking_id
           JOIN doctors d ON d.id = b.doctor_id
           JOIN users u ON u.id = p.patient_id
           WHERE p.id = $1""",
        intent_id,
    )
    if row is None:
        return None
    return {
        "payment_status": row["payment_status"],
        "booking_status": row["booking_status"],
        "type": row["type"],
        "doctor": row["doctor"],
        "amount_minor": row["amount_minor"],
        "currency": row["currency"],
        "starts_at": row["starts_at"].isoformat(),
        "ends_at": row["ends_at"].isoformat(),
        "expires_at": row["expires_at"].isoformat(),
        "locale": row["locale"],
        "time_zone": row["time_zone"],
    }


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


#: The confirmation after paying, by the payment's status: what happened
#: and what comes next (keys of i18n.js).
_OUTCOMES = {"succeeded": "paid", "processing": "pending", "requires_payment": "pending"}

_CONFIRMATION = """<h1 data-i18n="done.{outcome}.title">Payment received</h1>
<p class="lead" data-i18n="done.{outcome}.text{accepted}"></p>
{visit}
<p class="muted" data-i18n="done.{outcome}.next"></p>"""


def confirmation(facts: dict[str, Any]) -> web.Response:
    """The page a patient lands on after the gateway: the booking, its
    doctor and time in the patient's zone, and what happens next."""
    outcome = _OUTCOMES.get(facts["payment_status"], "failed")
    accepted = ".accepted" if facts["booking_status"] in ("accepted", "in_progress") else ""
    body = _CONFIRMATION.format(outcome=outcome, accepted=accepted, visit=VISIT)
    return page("done.page.title", body, facts)
