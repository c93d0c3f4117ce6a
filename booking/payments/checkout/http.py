"""Payments over HTTP: intents and their checkout, the redirect landing,
gateway webhooks, refunds, payouts, a doctor's earnings and a clinic's ledger.

The services (:mod:`booking.payments.checkout.verdicts` and its neighbours) move money;
these handlers check who may ask, open the transaction and shape the answer.
Tenancy: clinic staff see their clinic's payments, doctors their own
earnings, patients their own payments; another tenant's row is a 404, not a
403, so ids do not leak. Admins see everything.

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
from uuid import UUID, uuid4

import asyncpg
from aiohttp import web
from pydantic import Field, StringConstraints

import booking.payments.checkout.pages
import booking.payments.easypaisa.http
import booking.payments.easypaisa.http_simulator
import booking.payments.payouts.http
import booking.payments.payouts.service
import booking.payments.refunds.http
import booking.payments.transfers.http
from booking import pages
from booking.payments.checkout.forms import form_body, read_form
from booking.payments.checkout.http_webhooks import WebhookAck, deliver
from booking.payments.checkout.sweeper import sweep_once
from booking.payments.checkout.verdicts import apply_verdict
from booking.payments.errors import BookingNotPayable, LivePaymentExists, PayoutExceedsPayable
from booking.payments.gateway import GatewayRegistry, Verdict, with_query
from booking.payments.intent import (
    LIVE_STATES,
    IntentEvent,
    IntentState,
    Money,
    PaymentIntent,
    transition,
)
from booking.payments.keys import GATEWAYS
from booking.payments.ledger import PAYOUTS_CLEARING, payout
from booking.payments.paging import OffsetQuery
from booking.payments.payouts import batches, details
from booking.payments.postings import move_intent, post_transaction
from booking.payments.refunds import due
from booking.payments.refunds.service import add_booking_refund, refund_intent
from booking.payments.rows import INTENT_COLUMNS, payment_payload
from wadud import keys, loops, outbox
from wadud.api import ApiModel, Call, Principal, Role, Routes
from wadud.errors import Conflict, NotFound, Unprocessable
from wadud.rows import from_row

__all__ = ["SWEEP_INTERVAL", "lifespan", "routes"]

log = logging.getLogger("wadud.payments")

routes = Routes(
    "payments",
    "Payment intents, hosted checkout, gateway webhooks, refunds, payouts and the ledger.",
)
routes.endpoints.extend(booking.payments.checkout.pages.routes.endpoints)
routes.endpoints.extend(booking.payments.easypaisa.http.routes.endpoints)
routes.endpoints.extend(booking.payments.easypaisa.http_simulator.simulator_routes.endpoints)
routes.endpoints.extend(booking.payments.payouts.http.routes.endpoints)
routes.endpoints.extend(booking.payments.transfers.http.routes.endpoints)
routes.endpoints.extend(booking.payments.refunds.http.routes.endpoints)

#: Seconds between sweeps of stale intents.
SWEEP_INTERVAL = 30.0

_STAFF = {Role.CLINIC_STAFF, Role.ADMIN}
_VIEWERS = {Role.PATIENT, Role.CLINIC_STAFF, Role.ADMIN}

GatewayName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]
Amount = Annotated[int, Field(gt=0, le=10**12)]


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


class RefundIn(ApiModel):
    amount_minor: Amount
    reason: Reason = ""


class PayoutIn(ApiModel):
    amount_minor: Amount
    reference: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""


class Payout(ApiModel):
    id: UUID
    clinic_id: UUID
    doctor_id: UUID
    amount_minor: int
    currency: str
    reference: str
    created_by: UUID | None
    created_at: datetime
    payable_minor: int = Field(description="What is still owed to the doctor after this payout.")


class Earnings(ApiModel):
    """``gross - refunds - commission - paid_out == payable``, per currency."""

    doctor_id: UUID
    currencies: list[booking.payments.payouts.service.CurrencyEarnings]
    payout_batches: list[booking.payments.payouts.http.DoctorBatchLine] = Field(
        default=[], description="The doctor's latest payout-batch lines, newest first."
    )


class LedgerQuery(OffsetQuery):
    kind: Literal["capture", "refund", "payout", "adjustment"] | None = None


class LedgerEntry(ApiModel):
    account: str
    amount_minor: int = Field(description="Debit positive, credit negative.")
    currency: str


class LedgerTransaction(ApiModel):
    id: UUID
    kind: str
    reference: str
    payment_id: UUID | None
    booking_id: UUID | None
    created_at: datetime
    entries: list[LedgerEntry]


class LedgerPage(ApiModel):
    items: list[LedgerTransaction]
    next_offset: int | None


# --- helpers --------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _registry(call: Call[Any, Any]) -> GatewayRegistry:
    return call.request.app[GATEWAYS]


def _sees(me: Principal, row: asyncpg.Record) -> bool:
    return me.oversees(row["clinic_id"]) or (
        me.role == Role.PATIENT and bool(row["patient_id"] == me.user_id)
    )


def _payment(row: asyncpg.Record, me: Principal | None = None, owed: int = 0) -> Payment:
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


async def _visible_intent(
    conn: asyncpg.Connection, me: Principal, payment_id: UUID, *, lock: bool = False
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {INTENT_COLUMNS} FROM payment_intents WHERE id = $1"
        + (" FOR UPDATE" if lock else ""),
        payment_id,
    )
    if row is None or not _sees(me, row):
        raise NotFound("no such payment")
    return row


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
    me, body, settings = call.user, call.body, call.settings
    booking_id = call.path_uuid("booking_id")
    return_url = _check_return_url(body.return_url)
    registry = _registry(call)
    now = _now()
    async with call.pool.acquire() as conn:
        # No transaction in the common case: this read decides, the gateway
        # opens its checkout, and one statement re-checks the hold under its
        # row lock and stores the intent (the one-live-intent index refuses a
        # concurrent second). Three round trips fewer than lock, read, insert.
        booking = await conn.fetchrow(
            """SELECT b.id, b.clinic_id, b.patient_id, b.status, b.hold_expires_at,
                      b.price_minor, b.currency, d.display_name,
                      EXISTS (SELECT 1 FROM payment_intents p WHERE p.booking_id = b.id
                              AND p.status IN ('requires_payment', 'processing')) AS live
               FROM bookings b JOIN doctors d ON d.id = b.doctor_id
               WHERE b.id = $1""",
            booking_id,
        )
        _check_payable(booking, me, now)
        assert booking is not None
        if booking["live"]:
            return await _hand_out_again(conn, me, booking_id, body.gateway, now)
        gateway = registry.get(body.gateway or settings.payments_default_gateway)
        intent_id = uuid4()
        hold = booking["hold_expires_at"]
        intent = PaymentIntent(
            id=str(intent_id),
            amount=Money(int(booking["price_minor"]), booking["currency"]),
            description=f"Consultation with {booking['display_name']}"[:200],
            return_url=f"{settings.base_url}/api/v1/payments/{intent_id}/return",
            created_at=now,
            expires_at=hold,
        )
        session = await gateway.create(intent)
        # Handing the checkout out is the machine's ``redirect``: the intent is
        # stored in the state that follows, with both lines of its history.
        created = IntentState.REQUIRES_PAYMENT
        handed_out = transition(created, IntentEvent.REDIRECT)
        announced = {
            "id": intent_id,
            "booking_id": booking_id,
            "clinic_id": booking["clinic_id"],
            "patient_id": me.user_id,
            "gateway": gateway.name,
            "status": handed_out.value,
            "amount_minor": booking["price_minor"],
            "currency": booking["currency"],
            "refunded_minor": 0,
        }
        event_cte, event_args = outbox.event(
            "payment.created", payment_payload(announced), 19, source="i"
        )
        try:
            row = await conn.fetchrow(
                f"""WITH b AS (
                        SELECT id FROM bookings
                        WHERE id = $3 AND status = 'held' AND hold_expires_at > $18
                        FOR UPDATE),
                    i AS (
                        INSERT INTO payment_intents
                            (id, clinic_id, booking_id, patient_id, amount_minor, currency,
                             gateway, gateway_ref, status, checkout_url, checkout_method,
                             checkout_fields, return_url, expires_at)
                        SELECT $1, $2, b.id, $4, $5, $6, $7, $8, $15, $9, $10,
                               $11::jsonb, $12, $13
                        FROM b
                        RETURNING {INTENT_COLUMNS}),
                    e AS (
                        INSERT INTO payment_events
                            (payment_intent_id, clinic_id, event, from_state, to_state, detail)
                        SELECT i.id, i.clinic_id, x.event, x.from_state, x.to_state, x.detail
                        FROM i, (VALUES (1, 'create', NULL, $14, '{{}}'::jsonb),
                                        (2, $16, $14, $15, $17::jsonb))
                                AS x(n, event, from_state, to_state, detail)
                        ORDER BY x.n),
                    {event_cte}
                    SELECT i.* FROM i""",
                intent_id,
                booking["clinic_id"],
                booking_id,
                me.user_id,
                booking["price_minor"],
                booking["currency"],
                gateway.name,
                session.reference,
                session.url,
                session.method,
                dict(session.fields),
                return_url,
                hold,
                created.value,
                handed_out.value,
                IntentEvent.REDIRECT.value,
                {"url": session.url},
                now,
                *event_args,
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "payment_intents_one_live":
                # A concurrent request of the patient's stored one first.
                return await _hand_out_again(conn, me, booking_id, body.gateway, now)
            raise Conflict("the gateway reused a payment reference; try again") from None
        outbox.written(conn)
        if row is None:
            # The hold ended (expired, cancelled) while the checkout opened.
            booking = await conn.fetchrow(
                "SELECT patient_id, status, hold_expires_at, price_minor FROM bookings"
                " WHERE id = $1",
                booking_id,
            )
            _check_payable(booking, me, now)
            raise BookingNotPayable("the booking is no longer held for payment")
    return _payment(row, me)


def _check_payable(booking: asyncpg.Record | None, me: Principal, now: datetime) -> None:
    if booking is None or booking["patient_id"] != me.user_id:
        raise NotFound("no such booking")
    hold = booking["hold_expires_at"]
    if booking["status"] != "held" or hold is None or hold <= now:
        raise BookingNotPayable(f"the booking is {booking['status']}, not held for payment")
    if booking["price_minor"] <= 0:
        raise BookingNotPayable("the booking is free; there is nothing to pay")


async def _hand_out_again(
    conn: asyncpg.Connection, me: Principal, booking_id: UUID, gateway: str | None, now: datetime
) -> web.Response:
    """The booking's live intent again (200), its checkout handed out once more.
    Locking the booking first serialises this with other attempts for it."""
    async with conn.transaction():
        booking = await conn.fetchrow(
            """SELECT patient_id, status, hold_expires_at, price_minor FROM bookings
               WHERE id = $1 FOR UPDATE""",
            booking_id,
        )
        _check_payable(booking, me, now)
        live = await conn.fetchrow(
            f"""SELECT {INTENT_COLUMNS} FROM payment_intents
                WHERE booking_id = $1 AND status IN ('requires_payment', 'processing')
                FOR UPDATE""",
            booking_id,
        )
        if live is None:
            raise Conflict("the booking's payment just ended; try again")
        if gateway is not None and gateway != live["gateway"]:
            raise LivePaymentExists(
                f"a {live['gateway']} payment for this booking is under way"
                f" until {live['expires_at'].isoformat()}"
            )
        live = await move_intent(conn, live, IntentEvent.REDIRECT, {"again": True})
    return web.Response(
        body=_payment(live, me).model_dump_json(), status=200, content_type="application/json"
    )


@routes.get("/api/v1/payments/{payment_id:uuid}", returns=Payment, auth=_VIEWERS)
async def get_payment(call: Call[None, None]) -> Payment:
    """A payment: its patient, staff of its clinic, or an admin."""
    async with call.pool.acquire() as conn:
        row = await _visible_intent(conn, call.user, call.path_uuid("payment_id"))
        owed = await booking.payments.refunds.http.owed_by_payment(conn, [row["id"]])
    return _payment(row, call.user, owed.get(row["id"], 0))


@routes.get("/api/v1/payments", query=PaymentsQuery, returns=list[Payment], auth=_VIEWERS)
async def list_payments(call: Call[None, PaymentsQuery]) -> list[Payment]:
    """Payments the caller may see, newest first, optionally of one booking."""
    me, q = call.user, call.query
    where: list[str] = ["($1::uuid IS NULL OR booking_id = $1)"]
    args: list[Any] = [q.booking_id]
    if me.role == Role.CLINIC_STAFF:
        args.append(me.clinic_id)
        where.append(f"clinic_id = ${len(args)}")
    elif me.role == Role.PATIENT:
        args.append(me.user_id)
        where.append(f"patient_id = ${len(args)}")
    args += [q.limit, q.offset]
    rows = await call.pool.fetch(
        f"""SELECT {INTENT_COLUMNS} FROM payment_intents WHERE {" AND ".join(where)}
            ORDER BY created_at DESC, id LIMIT ${len(args) - 1} OFFSET ${len(args)}""",
        *args,
    )
    owed = await booking.payments.refunds.http.owed_by_payment(call.pool, [r["id"] for r in rows])
    return [_payment(r, me, owed.get(r["id"], 0)) for r in rows]


# --- the redirect landing -----------------------------------------------------------


async def _landing(call: Call[None, None], params: Mapping[str, str]) -> web.StreamResponse:
    payment_id = call.path_uuid("payment_id")
    registry = _registry(call)
    known = await call.pool.fetchrow(
        "SELECT gateway FROM payment_intents WHERE id = $1", payment_id
    )
    if known is None:
        raise NotFound("no such payment")
    gateway = registry.get(known["gateway"])
    # The parameters came through the patient's browser: the gateway proves
    # them (signature or inquiry) or raises; nothing is applied before that.
    result = await gateway.verify_callback(params, call.request.headers, _now())
    async with call.pool.acquire() as conn, conn.transaction():
        row = await apply_verdict(
            conn,
            Verdict.of_callback(result),
            default_bp=call.settings.payments_platform_commission_bp,
            registry=registry,
            intent_id=payment_id,
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


# --- webhooks -------------------------------------------------------------------------


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
    registry = _registry(call)
    if name not in registry:
        raise NotFound(f"no payment gateway named {name!r}")
    body = await call.request.read()
    return await deliver(call, name, body, call.request.headers, _now())


# --- refunds --------------------------------------------------------------------------


@routes.post(
    "/api/v1/payments/{payment_id:uuid}/refunds",
    body=RefundIn,
    returns=booking.payments.refunds.http.Refund,
    status=201,
    auth=_STAFF,
    responses={
        202: "The gateway refused: kept as refused_by_gateway, owed by hand",
        409: "More than captured (less what is owed by hand), or nothing captured",
        502: "The gateway could not be reached; nothing changed",
    },
)
async def refund_payment(
    call: Call[RefundIn, None],
) -> booking.payments.refunds.http.Refund | web.Response:
    """Refund part or all of a captured payment (staff of its clinic, admins).

    The ledger posts the exact reverse of the capture's split, proportionally;
    the total refunded never exceeds what was captured (409). A gateway that
    refuses (EasyPaisa has no refund call) leaves the refund owed: 202 with
    ``status: refused_by_gateway``, nothing posted, for finance to pay by hand
    (``POST /api/v1/refunds/{id}/refunded``)."""
    me, body = call.user, call.body
    async with call.pool.acquire() as conn, conn.transaction():
        row = await _visible_intent(conn, me, call.path_uuid("payment_id"), lock=True)
        refund, row = await refund_intent(
            conn, row, body.amount_minor, body.reason, registry=_registry(call), actor=me
        )
        await add_booking_refund(conn, row["booking_id"], body.amount_minor)
    out = booking.payments.refunds.http.refund_out(refund, row)
    if refund["status"] == due.OWED:
        return web.Response(body=out.model_dump_json(), status=202, content_type="application/json")
    return out


# --- doctors: payouts and earnings -----------------------------------------------------


@routes.post(
    "/api/v1/doctors/{doctor_id:uuid}/payouts",
    body=PayoutIn,
    returns=Payout,
    status=201,
    auth=_STAFF,
    responses={409: "More than the doctor's payable balance"},
)
async def create_payout(call: Call[PayoutIn, None]) -> Payout:
    """Record money paid out to a doctor (staff of the clinic, admins).

    Posts a payout to the ledger; refused beyond the doctor's payable balance
    in the doctor's currency, less what pending payout-batch lines reserve."""
    me, body = call.user, call.body
    async with call.pool.acquire() as conn, conn.transaction():
        doctor = await booking.payments.payouts.http.doctor_of(
            conn, me, call.path_uuid("doctor_id"), lock=True
        )
        # Pending payout-batch lines reserve their amounts until marked.
        payable, pending = await batches.payable_and_pending(conn, doctor["id"], doctor["currency"])
        if body.amount_minor > payable - pending:
            held = f" ({Money(pending, doctor['currency'])} in a payout batch)" if pending else ""
            raise PayoutExceedsPayable(
                f"the doctor is owed {Money(payable, doctor['currency'])}{held},"
                f" not {Money(body.amount_minor, doctor['currency'])}"
            )
        row = await conn.fetchrow(
            """INSERT INTO payouts (clinic_id, doctor_id, amount_minor, currency, reference,
                                    created_by)
               VALUES ($1, $2, $3, $4, $5, $6)
               RETURNING id, clinic_id, doctor_id, amount_minor, currency, reference,
                         created_by, created_at""",
            doctor["clinic_id"],
            doctor["id"],
            body.amount_minor,
            doctor["currency"],
            body.reference,
            me.user_id,
        )
        assert row is not None
        txn = payout(
            str(doctor["id"]), Money(body.amount_minor, doctor["currency"]), str(row["id"])
        )
        await post_transaction(conn, txn, clinic_id=doctor["clinic_id"])
        await outbox.emit(
            conn,
            "payout.created",
            {
                "payout_id": str(row["id"]),
                "doctor_id": str(doctor["id"]),
                "clinic_id": str(doctor["clinic_id"]),
                "amount_minor": body.amount_minor,
                "currency": doctor["currency"],
                "account": PAYOUTS_CLEARING,
            },
        )
    return Payout(**dict(row), payable_minor=payable - body.amount_minor)


@routes.get(
    "/api/v1/doctors/{doctor_id:uuid}/earnings",
    returns=Earnings,
    auth={Role.DOCTOR, Role.CLINIC_STAFF, Role.ADMIN},
)
async def doctor_earnings(call: Call[None, None]) -> Earnings:
    """A doctor's earnings per currency, from the ledger (the doctor, staff of
    the clinic, admins): gross, refunds, commission, paid out, payable."""
    async with call.pool.acquire() as conn:
        doctor = await booking.payments.payouts.http.doctor_of(
            conn, call.user, call.path_uuid("doctor_id")
        )
        figures = await booking.payments.payouts.service.doctor_earnings(conn, doctor["id"])
        batch_lines = await booking.payments.payouts.http.doctor_batch_lines(conn, doctor["id"])
    return Earnings(
        doctor_id=doctor["id"],
        currencies=figures,
        payout_batches=batch_lines,
    )


# --- the clinic's ledger ----------------------------------------------------------------


@routes.get(
    "/api/v1/clinics/{clinic_id:uuid}/ledger",
    query=LedgerQuery,
    returns=LedgerPage,
    auth=_STAFF,
)
async def clinic_ledger(call: Call[None, LedgerQuery]) -> LedgerPage:
    """A clinic's ledger transactions with their entries, newest first (staff
    of the clinic, admins). Page with ``offset``/``limit``."""
    me, q = call.user, call.query
    clinic_id = call.path_uuid("clinic_id")
    if not me.oversees(clinic_id):
        raise NotFound("no such clinic")
    async with call.pool.acquire() as conn:
        if not await conn.fetchval("SELECT 1 FROM clinics WHERE id = $1", clinic_id):
            raise NotFound("no such clinic")
        headers = await conn.fetch(
            """SELECT id, kind, reference, payment_intent_id, booking_id, created_at
               FROM ledger_transactions
               WHERE clinic_id = $1 AND ($2::text IS NULL OR kind = $2)
               ORDER BY created_at DESC, id LIMIT $3 OFFSET $4""",
            clinic_id,
            q.kind,
            q.limit + 1,
            q.offset,
        )
        page = headers[: q.limit]
        entries = await conn.fetch(
            """SELECT transaction_id, account, amount_minor, currency FROM ledger_entries
               WHERE transaction_id = ANY($1::uuid[]) ORDER BY id""",
            [h["id"] for h in page],
        )
    by_txn: dict[UUID, list[LedgerEntry]] = {}
    for e in entries:
        by_txn.setdefault(e["transaction_id"], []).append(from_row(LedgerEntry, e))
    return LedgerPage(
        items=[
            from_row(
                LedgerTransaction,
                h,
                payment_id=h["payment_intent_id"],
                entries=by_txn.get(h["id"], []),
            )
            for h in page
        ],
        next_offset=q.offset + q.limit if len(headers) > q.limit else None,
    )


# --- lifespan: the sweeper ------------------------------------------------------


async def lifespan(app: web.Application) -> AsyncIterator[None]:
    """Run the sweeper of stale intents over the app's gateways."""
    settings = app[keys.SETTINGS]
    registry = app[GATEWAYS]
    # Bank details stored in clear before migration 0024 are sealed now.
    await details.seal_clear_rows(app[keys.DB], details.sealer_of(app))

    async def sweep() -> None:
        delay = SWEEP_INTERVAL
        while True:
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
