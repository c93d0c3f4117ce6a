"""Payments persistence: intents in PostgreSQL, verdicts, webhooks, the sweeper.

The pure cores decide (:mod:`.intent` the state machine, :mod:`.ledger` the
postings, the gateway adapters the signatures); this module stores what they
decide, inside the caller's transaction, with the row locks that make
concurrent deliveries safe:

* every change of an intent goes through :func:`~.postings.move_intent` (the
  core's transition table, a ``payment_events`` row, the new state) on a row
  locked ``FOR UPDATE``; a verdict that arrives twice (callback and webhook,
  or two deliveries racing) finds the state already moved and is a no-op;
* :func:`~.postings.post_transaction` is the only writer of
  ``ledger_transactions`` and ``ledger_entries``, each transaction whole in
  one statement; the database's balance trigger judges it at the end of that
  statement, the builders in :mod:`.ledger` already did so in Python;
* refunds (:mod:`.refunds.service`) call the gateway inside the transaction that
  records them; money for a booking no longer held is given back the same
  way, or, where the gateway refuses, owed by hand (:mod:`.refunds.due`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

import asyncpg
from aiohttp import web
from prometheus_client import Counter

from booking import lifecycle
from booking import service as bookings
from booking.payments import ledger
from booking.payments.checkout import settle
from booking.payments.errors import (
    AmountMismatch,
    GatewayError,
    GatewayUnreachable,
    InvalidSignature,
    UnknownReference,
)
from booking.payments.gateway import (
    Gateway,
    GatewayRegistry,
    PaymentStatus,
    Verdict,
    WebhookEvent,
)
from booking.payments.intent import IntentEvent, IntentState, transition
from booking.payments.postings import (
    DuplicatePosting,
    move_intent,
    post_transaction,
    record_intent_event,
)
from booking.payments.refunds import due
from booking.payments.refunds.service import (
    RefundRefused,
    post_refund,
    refund_booking,
    refund_intent,
    refund_posting,
)
from booking.payments.rows import (
    COMMISSION,
    INTENT_COLUMNS,
    capture_of,
    commission,
    money,
    payment_payload,
)
from wadud import outbox
from wadud.errors import BadRequest, NotFound, WadudError

__all__ = [
    "GATEWAYS",
    "INTENT_COLUMNS",
    "LIVE_STATES",
    "CurrencyEarnings",
    "DuplicatePosting",
    "RefundRefused",
    "apply_verdict",
    "choice_body",
    "commission_for",
    "doctor_earnings",
    "form_body",
    "gateway_answered",
    "gateway_unreachable",
    "handle_webhook",
    "ledger_is_balanced",
    "move_intent",
    "payment_payload",
    "post_refund",
    "post_transaction",
    "read_choice",
    "read_form",
    "record_intent_event",
    "refund_booking",
    "refund_intent",
    "refund_posting",
    "sweep_once",
]

log = logging.getLogger("wadud.payments")

UNREACHABLE = Counter(
    "wadud_payments_gateway_unreachable_total",
    "Inquiries that found a payment gateway unreachable (refused, timed out, 5xx), by"
    " gateway; the rounds back off from it until it answers.",
    ["gateway"],
)

#: The app's gateways, built once in :func:`booking.payments.http.gateways_context`.
GATEWAYS: Final = web.AppKey("payments_gateways", GatewayRegistry)

LIVE_STATES: Final = frozenset({IntentState.REQUIRES_PAYMENT, IntentState.PROCESSING})
#: Processing intents younger than this are left to the webhook and callback.
INQUIRE_AFTER: Final = timedelta(minutes=5)
#: Intents handled per sweep round.
SWEEP_BATCH: Final = 100


async def read_form(request: web.Request) -> dict[str, str]:
    """A posted form's text fields (files ignored); a body that is not a
    readable form is a 400, never a 500."""
    try:
        form = await request.post()
    except (ValueError, LookupError, AssertionError) as exc:
        raise BadRequest(f"the body is not a readable form: {exc}") from None
    return {k: v for k, v in form.items() if isinstance(v, str)}


def form_body(**schema: Any) -> dict[str, Any]:
    """The OpenAPI request body of a posted form whose object schema has
    ``schema``'s keys (``required``, ``properties``) besides its type."""
    return {
        "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", **schema}}}
    }


def choice_body(yes: str, no: str) -> dict[str, Any]:
    """:func:`form_body` of a page with two buttons named ``action``."""
    return form_body(
        required=["action"], properties={"action": {"type": "string", "enum": [yes, no]}}
    )


async def read_choice(request: web.Request, yes: str, no: str) -> bool:
    """Which of a :func:`choice_body` form's two buttons was pressed (``yes``:
    true); anything else is a 400."""
    action = (await read_form(request)).get("action")
    if action not in (yes, no):
        raise BadRequest(f"action must be {yes} or {no}")
    return action == yes


# --- the ledger ---------------------------------------------------------------


async def ledger_is_balanced(
    conn: asyncpg.Connection | asyncpg.Pool, clinic_id: UUID | None = None
) -> bool:
    """Whether the ledger (or one clinic's part) holds together: every
    transaction has at least two entries of its own clinic and sums to zero
    per currency, and so the whole sums to zero per currency."""
    return bool(
        await conn.fetchval(
            """SELECT NOT EXISTS (
                       SELECT 1 FROM ledger_entries
                       WHERE $1::uuid IS NULL OR clinic_id = $1
                       GROUP BY currency HAVING sum(amount_minor) <> 0)
                 AND NOT EXISTS (
                       SELECT 1 FROM ledger_entries
                       WHERE $1::uuid IS NULL OR clinic_id = $1
                       GROUP BY transaction_id, currency HAVING sum(amount_minor) <> 0)
                 AND NOT EXISTS (
                       SELECT 1 FROM ledger_transactions t
                       WHERE ($1::uuid IS NULL OR t.clinic_id = $1)
                         AND (SELECT count(*) FROM ledger_entries e
                              WHERE e.transaction_id = t.id AND e.clinic_id = t.clinic_id) < 2)
                 AND NOT EXISTS (
                       SELECT 1 FROM ledger_entries e JOIN ledger_transactions t
                         ON t.id = e.transaction_id
                       WHERE ($1::uuid IS NULL OR t.clinic_id = $1)
                         AND e.clinic_id <> t.clinic_id)""",
            clinic_id,
        )
    )


async def commission_for(
    conn: asyncpg.Connection, clinic_id: UUID, default_bp: int
) -> ledger.Commission:
    """The clinic's own commission, else its region's, else the configured default."""
    row = await conn.fetchrow(f"SELECT {COMMISSION} WHERE c.id = $1", clinic_id)
    if row is None:
        raise NotFound("no such clinic")
    return commission(row, default_bp)


async def _capture(
    conn: asyncpg.Connection, row: asyncpg.Record, default_bp: int, *, terms: bool = False
) -> UUID:
    """Post the capture of the intent ``row``; ``terms``: the row was moved
    with ``capture_terms``, so it carries the doctor and the commission."""
    if terms:
        found: asyncpg.Record | None = row if row["capture_doctor_id"] is not None else None
    else:
        found = await conn.fetchrow(
            f"""SELECT b.doctor_id AS capture_doctor_id, {COMMISSION}
                JOIN bookings b ON b.id = $2 WHERE c.id = $1""",
            row["clinic_id"],
            row["booking_id"],
        )
    if found is None:
        raise NotFound("no such clinic")
    txn = capture_of(row, found["capture_doctor_id"], found, default_bp)
    return await post_transaction(
        conn,
        txn,
        clinic_id=row["clinic_id"],
        payment_intent_id=row["id"],
        booking_id=row["booking_id"],
    )


@dataclass(frozen=True, slots=True)
class CurrencyEarnings:
    """A doctor's money in one currency, from the ledger.

    ``gross - refunds - commission - paid_out == payable``.
    """

    currency: str
    gross_minor: int
    refunds_minor: int
    commission_minor: int
    paid_out_minor: int
    payable_minor: int


async def doctor_earnings(
    conn: asyncpg.Connection | asyncpg.Pool, doctor_id: UUID
) -> list[CurrencyEarnings]:
    """Per currency: captured, refunded, the platform's net commission, paid
    out, and the balance still owed to the doctor."""
    account = ledger.doctor_payable(str(doctor_id))
    rows = await conn.fetch(
        """WITH mine AS (
               -- By booking, not only by account: a capture or refund whose
               -- doctor share rounds to zero has no entry on the doctor's
               -- account but is still the doctor's gross.
               SELECT t.id AS transaction_id FROM ledger_transactions t
                 JOIN bookings b ON b.id = t.booking_id
               WHERE b.doctor_id = $3 AND t.kind IN ('capture', 'refund')
               UNION
               SELECT e.transaction_id FROM ledger_entries e WHERE e.account = $1)
           SELECT e.currency,
                  COALESCE(sum(e.amount_minor) FILTER (
                      WHERE t.kind = 'capture' AND e.account LIKE 'gateway_clearing:%'), 0)
                      AS gross,
                  COALESCE(-sum(e.amount_minor) FILTER (
                      WHERE t.kind = 'refund' AND e.account LIKE 'gateway_clearing:%'), 0)
                      AS refunds,
                  COALESCE(-sum(e.amount_minor) FILTER (
                      WHERE t.kind IN ('capture', 'refund') AND e.account = $2), 0) AS commission,
                  COALESCE(sum(e.amount_minor) FILTER (
                      WHERE t.kind = 'payout' AND e.account = $1), 0) AS paid_out,
                  COALESCE(-sum(e.amount_minor) FILTER (WHERE e.account = $1), 0) AS payable
           FROM mine JOIN ledger_transactions t ON t.id = mine.transaction_id
                JOIN ledger_entries e ON e.transaction_id = t.id
           GROUP BY e.currency ORDER BY e.currency""",
        account,
        ledger.PLATFORM_REVENUE,
        doctor_id,
    )
    return [
        CurrencyEarnings(
            currency=r["currency"],
            gross_minor=int(r["gross"]),
            refunds_minor=int(r["refunds"]),
            commission_minor=int(r["commission"]),
            paid_out_minor=int(r["paid_out"]),
            payable_minor=int(r["payable"]),
        )
        for r in rows
    ]


async def _confirm_booking(conn: asyncpg.Connection, row: asyncpg.Record) -> str | None:
    """Move the paid booking from held to requested; return why not, if not."""
    detail = {"payment_id": str(row["id"])}
    # Lock and change in one statement when the booking is still held;
    # held -> requested is in the table, so nothing refuses half way and no
    # savepoint is needed. Otherwise find out why, the long way.
    if await bookings.apply_event_if(
        conn,
        row["booking_id"],
        lifecycle.State.HELD,
        lifecycle.Event.CONFIRM_PAYMENT,
        actor_id=None,
        detail=detail,
    ):
        return None
    booking = await conn.fetchrow(
        "SELECT status FROM bookings WHERE id = $1 FOR UPDATE", row["booking_id"]
    )
    if booking is None:  # pragma: no cover - a foreign key guarantees it
        return "the booking is gone"
    if booking["status"] != lifecycle.State.HELD.value:
        return f"the booking is {booking['status']}, no longer held for payment"
    try:
        # A savepoint: a refusal must not abort the payment's transaction.
        async with conn.transaction():
            await bookings.transition_booking(
                conn,
                row["booking_id"],
                lifecycle.Event.CONFIRM_PAYMENT,
                actor_id=None,
                detail=detail,
            )
    except WadudError as exc:
        return f"the booking could not be confirmed: {exc}"
    return None


async def apply_verdict(
    conn: asyncpg.Connection,
    verdict: Verdict,
    *,
    default_bp: int,
    registry: GatewayRegistry | None = None,
    intent_id: UUID | None = None,
    locked: asyncpg.Record | None = None,
) -> asyncpg.Record:
    """Apply a proven outcome to its intent, idempotently; return the intent row.

    Success: intent succeeded, ledger capture with the commission split, the
    booking confirmed, or, when the booking can no longer be confirmed, an
    automatic full refund with the reason recorded. Failure: intent failed.
    A repeated verdict is a no-op. ``intent_id``, when given (the redirect
    landing names its intent in the path), must be the intent the verdict is
    about. ``locked``: the intent's row, when the caller has locked it
    already (the webhook does so in its first statement). ``registry``
    (the app's gateways) refunds what came too late; a bank transfer's
    verdict needs none. Call inside a transaction.
    """
    row = locked or await conn.fetchrow(
        f"""SELECT {INTENT_COLUMNS} FROM payment_intents
            WHERE gateway = $1 AND gateway_ref = $2 FOR UPDATE""",
        verdict.gateway,
        verdict.reference,
    )
    if row is None:
        raise UnknownReference(f"no {verdict.gateway} payment {verdict.reference!r}")
    if intent_id is not None and row["id"] != intent_id:
        raise InvalidSignature("the signed result is about another payment")
    event = verdict.event
    if event is None:
        return row
    try:
        verdict.check_amount(money(row))
    except AmountMismatch:
        log.error(
            "gateway confirmed another amount than the intent asked",
            extra={
                "payment_id": str(row["id"]),
                "gateway": verdict.gateway,
                "confirmed": str(verdict.amount),
                "expected": str(money(row)),
                "source": verdict.source,
            },
        )
        raise
    state = IntentState(row["status"])
    detail = verdict.detail
    if state is IntentState.REQUIRES_PAYMENT:
        # A verdict proves the patient reached the checkout we handed out.
        row = await move_intent(conn, row, IntentEvent.REDIRECT, {"implied_by": verdict.source})
        state = IntentState.PROCESSING
    if event is IntentEvent.VERIFIED_SUCCESS and state in (
        IntentState.CANCELLED,
        IntentState.FAILED,
    ):
        return await _late_success(conn, row, detail, default_bp, registry)
    if event is IntentEvent.VERIFIED_FAILURE and state is IntentState.CANCELLED:
        return row  # nobody paid, and the intent already says so
    if transition(state, event) is state:
        return row  # the same verdict again (callback and webhook both report it)
    if event is IntentEvent.VERIFIED_FAILURE:
        reason = f"{verdict.code} {verdict.message}".strip() or "failed"
        return await move_intent(
            conn,
            row,
            event,
            detail,
            announce="payment.failed",
            announce_extra={"reason": reason},
            failure_reason=reason,
        )
    booking = await conn.fetchval("SELECT status FROM bookings WHERE id = $1", row["booking_id"])
    if booking != lifecycle.State.HELD.value:
        late = f"the booking is {booking}, no longer held for payment"
        return await _paid_too_late(conn, row, verdict, default_bp, registry, late)
    row = await move_intent(
        conn, row, event, detail, announce="payment.succeeded", capture_terms=True
    )
    await _capture(conn, row, default_bp, terms=True)
    why = await _confirm_booking(conn, row)
    if why is not None:
        # The hold lapsed since the read above: a refusal rolls everything
        # back, and the gateway's next report takes the way above.
        row = await _refund_whole(conn, row, why, registry)
    return row


async def _refund_whole(
    conn: asyncpg.Connection, row: asyncpg.Record, why: str, registry: GatewayRegistry | None
) -> asyncpg.Record:
    log.warning(
        "paid booking could not be confirmed; refunding",
        extra={"payment_id": str(row["id"]), "reason": why},
    )
    row = await _give_back(conn, row, why, registry)
    await add_booking_refund(conn, row["booking_id"], int(row["amount_minor"]))
    return row


async def _give_back(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    why: str,
    registry: GatewayRegistry | None,
    *,
    move_state: bool = True,
) -> asyncpg.Record:
    """The whole of the intent ``row`` back through its gateway, unasked: the
    refund's reason is ``automatic: why`` (what the booking page reads as
    money going back). A refusal raises :class:`RefundRefused` and writes
    nothing, so the caller owes the money by hand instead. Returns the intent."""
    _, moved = await refund_intent(
        conn,
        row,
        int(row["amount_minor"]),
        f"automatic: {why}",
        registry=registry,
        move_state=move_state,
        keep_refused=False,
    )
    return moved


async def add_booking_refund(conn: asyncpg.Connection, booking_id: UUID, amount_minor: int) -> None:
    """Count ``amount_minor`` more as refunded on the booking (what its page
    and its exports show as given back)."""
    await conn.execute(
        """UPDATE bookings SET refund_minor = refund_minor + $2, updated_at = now()
           WHERE id = $1""",
        booking_id,
        amount_minor,
    )


async def _paid_too_late(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    verdict: Verdict,
    default_bp: int,
    registry: GatewayRegistry | None,
    why: str,
) -> asyncpg.Record:
    """Money for a live intent whose booking is no longer held: captured and
    given back through the gateway; where the gateway refuses, the payment
    closes received late and the money is owed by hand (never kept, never
    left processing for the gateway to report forever)."""
    try:
        # A savepoint: a refusal takes back the capture and the move.
        async with conn.transaction():
            moved = await move_intent(
                conn,
                row,
                IntentEvent.VERIFIED_SUCCESS,
                verdict.detail,
                announce="payment.succeeded",
                capture_terms=True,
            )
            await _capture(conn, moved, default_bp, terms=True)
            return await _refund_whole(conn, moved, why, registry)
    except RefundRefused as refusal:
        row = await move_intent(
            conn,
            row,
            IntentEvent.EXPIRE,
            {**verdict.detail, "reason": why},
            failure_reason=f"received late ({why}); owed back by hand",
        )
        await due.owe_late(conn, row, why, code=refusal.gateway_code, message=refusal.detail)
        await add_booking_refund(conn, row["booking_id"], int(row["amount_minor"]))
        return row


async def _late_success(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    detail: Mapping[str, Any],
    default_bp: int,
    registry: GatewayRegistry | None,
) -> asyncpg.Record:
    """Money taken for an intent already failed or cancelled (the gateway
    changed its mind after our inquiry). The state machine keeps the intent
    where it is; the money is recorded and given back, through the gateway
    or, where it refuses, by hand."""
    if await due.settled_late(conn, row["id"]):
        return row  # handled already
    log.warning("late success on a closed payment; refunding", extra={"payment_id": str(row["id"])})
    why = f"paid after the payment was {row['status']}"
    try:
        # A savepoint: a refusal takes back the capture.
        async with conn.transaction():
            await record_intent_event(
                conn, row, "late_success", row["status"], row["status"], detail
            )
            await _capture(conn, row, default_bp)
            return await _give_back(conn, row, why, registry, move_state=False)
    except RefundRefused as refusal:
        await due.owe_late(conn, row, why, code=refusal.gateway_code, message=refusal.detail)
        return row


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    duplicate: bool
    event_id: str
    payment_id: UUID | None
    status: str | None


async def handle_webhook(
    pool: asyncpg.Pool,
    registry: GatewayRegistry,
    gateway_name: str,
    body: bytes,
    headers: Mapping[str, str],
    now: datetime,
    *,
    default_bp: int,
) -> WebhookOutcome:
    """Verify, deduplicate and apply one webhook delivery, in one transaction.

    A bad signature or stale timestamp raises before anything is stored. A
    delivery whose event id was seen is acknowledged and ignored; the
    ``webhook_events`` insert and the verdict commit together, so a delivery
    that failed half way is applied whole when the gateway redelivers.
    Concurrent deliveries of one event serialise on that row's primary key.
    """
    gateway = registry.get(gateway_name)
    event = await gateway.parse_webhook(body, headers, now)
    async with pool.acquire() as conn:
        if event.reference is not None and event.status is not None:
            # The common case (paid, still held) in two statements; everything
            # else, and a race that case gives way on, the general way below.
            verdict = Verdict.of_webhook(event)
            settled = await settle.settle(
                conn, gateway.name, event, verdict, default_bp=default_bp, now=now
            )
            if settled is not None:
                return WebhookOutcome(
                    settled.duplicate, event.event_id, settled.payment_id, settled.status
                )
        return await _apply_webhook(conn, registry, gateway, event, default_bp)


async def _apply_webhook(
    conn: asyncpg.Connection,
    registry: GatewayRegistry,
    gateway: Gateway,
    event: WebhookEvent,
    default_bp: int,
) -> WebhookOutcome:
    async with conn.transaction():
        # One round trip: record the delivery and lock the intent it is about.
        got = await conn.fetchrow(
            f"""WITH w AS (INSERT INTO webhook_events (gateway, event_id, payload)
                           VALUES ($1, $2, $3::jsonb) ON CONFLICT DO NOTHING RETURNING true),
                     i AS (SELECT {INTENT_COLUMNS} FROM payment_intents
                           WHERE gateway = $5 AND gateway_ref = $4 FOR UPDATE)
                SELECT (SELECT true FROM w) AS fresh, i.* FROM (SELECT 1) AS one
                LEFT JOIN i ON true""",
            gateway.name,
            event.event_id,
            dict(event.payload),
            event.reference,
            event.gateway,
        )
        assert got is not None
        if not got["fresh"]:
            return WebhookOutcome(True, event.event_id, None, None)
        if event.reference is None or event.status is None:
            return WebhookOutcome(False, event.event_id, None, None)
        row = await apply_verdict(
            conn,
            Verdict.of_webhook(event),
            default_bp=default_bp,
            registry=registry,
            locked=got if got["id"] is not None else None,
        )
        return WebhookOutcome(False, event.event_id, row["id"], row["status"])


# --- the sweeper --------------------------------------------------------------


def gateway_unreachable(registry: GatewayRegistry, gateway: str, exc: GatewayUnreachable) -> None:
    """An inquiry round found ``gateway`` unreachable: counted, logged once
    per outage, and left alone until its retry (:mod:`.reach`)."""
    UNREACHABLE.labels(gateway).inc()
    if registry.reach.failed(gateway, time.monotonic()):
        log.warning(
            "payment gateway unreachable; inquiries back off until it answers",
            extra={"gateway": gateway, "error": str(exc)},
        )


def gateway_answered(registry: GatewayRegistry, gateway: str) -> None:
    """``gateway`` answered an inquiry: an outage it was in is over (logged)."""
    outage = registry.reach.answered(gateway)
    if outage is not None:
        log.info(
            "payment gateway reachable again",
            extra={
                "gateway": gateway,
                "down_seconds": round(time.monotonic() - outage.since, 1),
                "failed_inquiries": outage.failures,
            },
        )


async def _expire(conn: asyncpg.Connection, intent_id: UUID, why: str) -> None:
    row = await conn.fetchrow(
        f"SELECT {INTENT_COLUMNS} FROM payment_intents WHERE id = $1 FOR UPDATE", intent_id
    )
    if row is None or IntentState(row["status"]) not in LIVE_STATES:
        return
    row = await move_intent(conn, row, IntentEvent.EXPIRE, {"reason": why}, failure_reason=why)
    await outbox.emit(conn, "payment.expired", payment_payload(row, reason=why))


async def sweep_once(
    pool: asyncpg.Pool, registry: GatewayRegistry, now: datetime, *, default_bp: int
) -> int:
    """One round: expire unpaid intents past their window; ask the gateway
    about processing ones older than :data:`INQUIRE_AFTER` and apply its
    answer (expiring only on a non-success answer past the window, as the
    state machine requires). Returns how many intents changed or were checked.
    """
    done = 0
    async with pool.acquire() as conn, conn.transaction():
        stale = await conn.fetch(
            """SELECT id FROM payment_intents
               WHERE status = 'requires_payment' AND expires_at <= $1
               ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED""",
            now,
            SWEEP_BATCH,
        )
        for r in stale:
            await _expire(conn, r["id"], "checkout window closed unpaid")
        done += len(stale)
    # A gateway with nobody to ask (a bank transfer waits for a statement
    # line) comes up only once its window closed: asked every round, a day's
    # held transfers would fill the batch before the gateways that answer.
    candidates = await pool.fetch(
        """SELECT id, gateway, gateway_ref, expires_at FROM payment_intents
           WHERE status = 'processing' AND gateway_ref IS NOT NULL
             AND ((created_at <= $1 AND gateway = ANY($4::text[])) OR expires_at <= $2)
           ORDER BY created_at LIMIT $3""",
        now - INQUIRE_AFTER,
        now,
        SWEEP_BATCH,
        registry.names(),
    )
    for r in candidates:
        # A gateway in an outage is asked again at its retry time, not once
        # per payment meanwhile (the sweeper's loop wakes for it); nothing is
        # expired while it cannot say whether the patient paid.
        if not registry.reach.may_ask(r["gateway"], time.monotonic()):
            continue
        # The inquiry is I/O and holds no lock; applying its answer locks the
        # row and is idempotent, so a webhook racing with it is harmless.
        try:
            if r["gateway"] not in registry:
                raise UnknownReference(f"gateway {r['gateway']} is not configured")
            answer = await registry.get(r["gateway"]).inquire(r["gateway_ref"])
            status = answer.status
        except UnknownReference:
            status = PaymentStatus.PENDING  # the gateway forgot it; only expiry can close it
            answer = None
        except GatewayUnreachable as exc:
            gateway_unreachable(registry, r["gateway"], exc)
            continue
        except GatewayError:
            log.warning("inquiry failed", extra={"payment_id": str(r["id"])}, exc_info=True)
            gateway_answered(registry, r["gateway"])
            continue
        if r["gateway"] in registry:
            gateway_answered(registry, r["gateway"])
        try:
            async with pool.acquire() as conn, conn.transaction():
                if answer is not None and status is not PaymentStatus.PENDING:
                    await apply_verdict(
                        conn, Verdict.of_inquiry(answer), default_bp=default_bp, registry=registry
                    )
                elif r["expires_at"] <= now:
                    await _expire(
                        conn, r["id"], "checkout window closed; gateway reports no payment"
                    )
        except WadudError:
            log.warning(
                "sweep could not settle a payment",
                extra={"payment_id": str(r["id"])},
                exc_info=True,
            )
            continue
        done += 1
    return done
