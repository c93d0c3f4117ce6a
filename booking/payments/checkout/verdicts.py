"""Verdicts applied: a proven gateway outcome moves its intent, posts its
capture and confirms its booking, whatever brought it (the redirect landing,
a webhook, an inquiry, a bank statement).

The pure cores decide (:mod:`booking.payments.intent` the state machine,
:mod:`booking.payments.ledger` the postings, the gateway adapters the
signatures); this module stores what they decide, inside the caller's
transaction, with the row locks that make concurrent deliveries safe:

* every change of an intent goes through
  :func:`~booking.payments.postings.move_intent` (the core's transition
  table, a ``payment_events`` row, the new state) on a row locked ``FOR
  UPDATE``; a verdict that arrives twice (callback and webhook, or two
  deliveries racing) finds the state already moved and is a no-op;
* :func:`~booking.payments.postings.post_transaction` is the only writer of
  ``ledger_transactions`` and ``ledger_entries``, each transaction whole in
  one statement; the database's balance trigger judges it at the end of that
  statement, the builders in :mod:`booking.payments.ledger` already did so
  in Python;
* money for a booking no longer held is given back through its gateway
  (:mod:`booking.payments.refunds.service`), inside the transaction that
  records it, or, where the gateway refuses, owed by hand
  (:mod:`booking.payments.refunds.due`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import asyncpg

from booking import lifecycle
from booking.bookings import transitions as bookings
from booking.payments.errors import AmountMismatch, InvalidSignature, UnknownReference
from booking.payments.gateway import GatewayRegistry, Verdict
from booking.payments.intent import IntentEvent, IntentState, transition
from booking.payments.postings import move_intent, post_transaction, record_intent_event
from booking.payments.refunds import due
from booking.payments.refunds.service import RefundRefused, add_booking_refund, refund_intent
from booking.payments.rows import COMMISSION, INTENT_COLUMNS, capture_of, money
from wadud.errors import NotFound, WadudError

__all__ = ["apply_verdict"]

log = logging.getLogger("wadud.payments")


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


async def _confirm_booking(conn: asyncpg.Connection, row: asyncpg.Record) -> str | None:
    """Move the paid booking from held to requested; return why not, if not."""
    detail = {"payment_id": str(row["id"])}
    # Lock and change in one statement when the booking is still held;
    # held -> requested is in the table, so nothing refuses half way and no
    # savepoint is needed. Otherwise find out why, the long way.
    if await bookings.apply_event_if(
        conn,
        row["booking_id"],
        lifecycle.BookingState.HELD,
        lifecycle.BookingEvent.CONFIRM_PAYMENT,
        actor_id=None,
        detail=detail,
    ):
        return None
    booking = await conn.fetchrow(
        "SELECT status FROM bookings WHERE id = $1 FOR UPDATE", row["booking_id"]
    )
    if booking is None:  # pragma: no cover - a foreign key guarantees it
        return "the booking is gone"
    if booking["status"] != lifecycle.BookingState.HELD.value:
        return f"the booking is {booking['status']}, no longer held for payment"
    try:
        # A savepoint: a refusal must not abort the payment's transaction.
        async with conn.transaction():
            await bookings.transition_booking(
                conn,
                row["booking_id"],
                lifecycle.BookingEvent.CONFIRM_PAYMENT,
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
    if booking != lifecycle.BookingState.HELD.value:
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
