"""Payments over HTTP: a booking's payment and its hosted checkout, the
redirect landing, and gateway webhooks.

The rules live in :mod:`booking.payments.checkout.service` (intents) and
:mod:`booking.payments.checkout.verdicts` (what a proven outcome does);
these handlers check who may ask and shape the answer. Tenancy: clinic
staff see their clinic's payments, patients their own; another tenant's row
is a 404, not a 403, so ids do not leak. Admins see everything.

One live intent per booking: asking again for a booking's payment while one
is live returns that intent and its checkout (200, not 201), since the patient
most likely reloaded the page. Asking for another gateway meanwhile is a 409:
money may already be moving through the first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

from aiohttp import web
from pydantic import Field, StringConstraints

from booking import pages
from booking.payments.checkout import service
from booking.payments.checkout.forms import form_body, read_form
from booking.payments.checkout.http_webhooks import WebhookAck, deliver
from booking.payments.checkout.sweeper import sweep_once
from booking.payments.gateway import with_query
from booking.payments.intent import LIVE_STATES, IntentState
from booking.payments.keys import GATEWAYS
from booking.payments.paging import OffsetQuery
from wadud.errors import NotFound, Unprocessable
from wadud.messaging import loops
from wadud.state import keys
from wadud.state.rows import from_row
from wadud.web.api import ApiModel, Call, Principal, Role, Routes

__all__ = ["SWEEP_INTERVAL", "lifespan", "routes"]

log = logging.getLogger("wadud.payments")

routes = Routes("payments", "Payment intents, hosted checkout and gateway webhooks.")

#: Seconds between sweeps of stale intents.
SWEEP_INTERVAL = 30.0

_VIEWERS = {Role.PATIENT, Role.CLINIC_STAFF, Role.ADMIN}

GatewayName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]


# --- models -------------------------------------------------------------------


class CreatePayment(ApiModel):
    gateway: GatewayName | None = Field(
        default=None, description="Gateway name; the configured default when absent."
    )
    return_url: Annotated[str, StringConstraints(max_length=2000)] | None = Field(
        default=None,
        description="Where the browser goes once the result is verified (http or https).",
    )


class Checkout(ApiModel):
    """Where to send the patient: redirect to ``url`` (GET), or POST ``fields``
    there as a form (an auto-submitting form for gateways such as JazzCash)."""

    url: str
    method: Literal["GET", "POST"]
    fields: dict[str, str]


class Payment(ApiModel):
    id: UUID
    booking_id: UUID
    clinic_id: UUID
    patient_id: UUID
    amount_minor: int
    currency: str
    gateway: str
    status: IntentState
    refunded_minor: int
    refund_due_minor: int = Field(
        default=0,
        description="Owed back by hand: refunds the gateway refused, or the whole of a"
        " payment received after its booking lapsed (GET .../refunds lists them).",
    )
    failure_reason: str | None
    expires_at: datetime
    created_at: datetime
    updated_at: datetime
    checkout: Checkout | None = Field(
        default=None, description="Present for the patient while the payment is live."
    )


class PaymentsQuery(OffsetQuery):
    booking_id: UUID | None = None


class PaymentResult(ApiModel):
    """The verified outcome the redirect landing reports."""

    payment_id: UUID
    booking_id: UUID
    status: IntentState


# --- helpers --------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _payment(row: Mapping[str, Any], me: Principal | None = None, owed: int = 0) -> Payment:
    live = IntentState(row["status"]) in LIVE_STATES
    show = live and me is not None and me.user_id == row["patient_id"] and row["checkout_url"]
    return from_row(
        Payment,
        row,
        refund_due_minor=owed,
        checkout=Checkout(
            url=row["checkout_url"],
            method=row["checkout_method"],
            fields=dict(row["checkout_fields"] or {}),
        )
        if show
        else None,
    )


def _check_return_url(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Unprocessable("return_url must be an absolute http or https URL")
    return url


# --- intents --------------------------------------------------------------------


@routes.post(
    "/api/v1/bookings/{booking_id:uuid}/payments",
    body=CreatePayment,
    returns=Payment,
    status=201,
    auth={Role.PATIENT},
    responses={200: "The booking's live payment, handed out again", 409: "Not payable now"},
)
async def create_payment(call: Call[CreatePayment, None]) -> Payment | web.Response:
    """Start paying for a held booking.

    Creates a payment intent for the booking's price that expires with the
    hold, opens the gateway's hosted checkout and returns where to send the
    patient. Asking again while the intent is live returns it (200)."""
    me, body = call.user, call.body
    booking_id = call.path_uuid("booking_id")
    return_url = _check_return_url(body.return_url)
    started = await service.start_payment(
        call.pool,
        call.request.app[GATEWAYS],
        call.settings,
        me,
        booking_id,
        body.gateway,
        return_url,
        _now(),
    )
    out = _payment(started.intent, me)
    if started.created:
        return out
    return web.Response(body=out.model_dump_json(), status=200, content_type="application/json")


@routes.get("/api/v1/payments/{payment_id:uuid}", returns=Payment, auth=_VIEWERS)
async def get_payment(call: Call[None, None]) -> Payment:
    """A payment: its patient, staff of its clinic, or an admin."""
    row, owed = await service.payment_of(call.pool, call.user, call.path_uuid("payment_id"))
    return _payment(row, call.user, owed)


@routes.get("/api/v1/payments", query=PaymentsQuery, returns=list[Payment], auth=_VIEWERS)
async def list_payments(call: Call[None, PaymentsQuery]) -> list[Payment]:
    """Payments the caller may see, newest first, optionally of one booking."""
    me, q = call.user, call.query
    found = await service.payments_of(call.pool, me, q.booking_id, q.limit, q.offset)
    return [_payment(row, me, owed) for row, owed in found]


# --- the redirect landing -----------------------------------------------------------


async def _landing(call: Call[None, None], params: Mapping[str, str]) -> web.StreamResponse:
    payment_id = call.path_uuid("payment_id")
    row = await service.land(
        call.pool,
        call.request.app[GATEWAYS],
        payment_id,
        params,
        call.request.headers,
        _now(),
        default_bp=call.settings.payments_platform_commission_bp,
    )
    outcome = PaymentResult(
        payment_id=row["id"], booking_id=row["booking_id"], status=row["status"]
    )
    onward = None
    if row["return_url"]:
        onward = with_query(
            row["return_url"], {"payment_id": str(row["id"]), "status": row["status"]}
        )
    if pages.wants_html(call.request):
        # A patient's browser: our own page says what happened, and links
        # on to the client's page when it gave one.
        async with call.pool.acquire() as conn:
            page = await pages.confirmation(conn, call.settings, payment_id, onward=onward)
        if page is not None:
            return page
    if onward is not None:
        return web.Response(status=303, headers={"Location": onward})
    return web.Response(body=outcome.model_dump_json(), content_type="application/json")


@routes.get(
    "/api/v1/payments/{payment_id:uuid}/return",
    returns=PaymentResult,
    auth="public",
    responses={303: "Verified; a program (not a browser) on to the client's return_url"},
)
async def payment_return(call: Call[None, None]) -> web.StreamResponse:
    """Where the gateway sends the browser back after checkout.

    The query is verified by the gateway (signature or inquiry) before
    anything is applied; a forged result is a 400 and changes nothing.
    A browser (``Accept: text/html``) gets a confirmation page in the
    patient's language, with a "Continue to <host>" link to the client's
    ``return_url`` (carrying ``payment_id`` and ``status``) when it gave
    one. Any other caller is redirected (303) to that ``return_url``, or,
    without one, gets the payment's status as JSON."""
    return await _landing(call, dict(call.request.query))


@routes.post(
    "/api/v1/payments/{payment_id:uuid}/return",
    returns=PaymentResult,
    auth="public",
    raw_body=form_body(),
    responses={303: "Verified; a program (not a browser) on to the client's return_url"},
)
async def payment_return_post(call: Call[None, None]) -> web.StreamResponse:
    """The same landing for gateways that post the result back (JazzCash)."""
    return await _landing(call, await read_form(call.request))


@routes.post(
    "/api/v1/webhooks/{gateway:[a-z0-9_-]+}",
    returns=WebhookAck,
    auth="public",
    raw_body={
        "description": "The gateway's notification exactly as signed.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    headers={
        "Wadud-Signature": {
            "type": "string",
            "pattern": "^t=[0-9]+,v1=[0-9a-f]+$",
            "description": "t=UNIX_SECONDS,v1=HEX_HMAC_SHA256 (Stripe's recipe).",
        }
    },
)
async def webhook(call: Call[None, None]) -> WebhookAck:
    """A gateway's server-to-server notification.

    Verified against the raw body and signature header (timestamp tolerance,
    any current or previous secret), deduplicated by the gateway's event id
    (a repeat answers 200 and does nothing), applied in one transaction."""
    name = call.path("gateway")
    registry = call.request.app[GATEWAYS]
    if name not in registry:
        raise NotFound(f"no payment gateway named {name!r}")
    body = await call.request.read()
    return await deliver(call, name, body, call.request.headers, _now())


# --- lifespan: the sweeper ------------------------------------------------------


async def lifespan(app: web.Application) -> AsyncIterator[None]:
    """Run the sweeper of stale intents over the app's gateways."""
    settings = app[keys.SETTINGS]
    registry = app[GATEWAYS]

    async def sweep() -> None:
        delay = SWEEP_INTERVAL
        while True:
            loops.go_on()
            await asyncio.sleep(delay)
            try:
                await sweep_once(
                    app[keys.DB],
                    registry,
                    _now(),
                    default_bp=settings.payments_platform_commission_bp,
                )
            except Exception:
                log.exception("payments sweep failed")
            # A gateway in an outage is tried again at its retry time.
            retry = registry.reach.retry_in(time.monotonic())
            delay = SWEEP_INTERVAL if retry is None else min(SWEEP_INTERVAL, retry + 0.01)

    task = asyncio.create_task(sweep(), name="payments-sweeper")
    try:
        yield
    finally:
        await loops.stopped(task)
