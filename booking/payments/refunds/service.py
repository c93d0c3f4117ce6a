"""Refunds: through the gateway, or owed by hand when it says no.

Gateway calls that move money happen inside the transaction that records
them. For the built-in sandbox that is a dict lookup; for a remote gateway it
holds the intent's row lock for one HTTP round trip (bounded by the adapter's
timeout). The alternative, calling first and recording in a second
transaction, loses the record when the process dies in between; here a lost
commit is repaired by the retry, because the refund's idempotency key is
derived from the intent's state (:func:`_refund_key`) and the gateway answers
the retry with its first result instead of refunding twice.

A gateway that answers "no" leaves a refund that is owed all the same: it is
kept ``refused_by_gateway`` for finance to pay by hand (:mod:`.refunds.due`),
and a refund paid by hand later (:func:`mark_refunded`) posts through
:func:`post_refund`, exactly as one the gateway made. Finance lists them
(:func:`refunds_of_clinic`) and marks them paid; another clinic's refund is
a 404.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from typing import Final
from uuid import UUID

import asyncpg

from booking.payments import ledger
from booking.payments.errors import (
    GatewayError,
    InvalidPaymentTransition,
    PaymentError,
    RefundExceedsCapture,
)
from booking.payments.gateway import BANK_TRANSFER, GatewayRegistry, RefundResult
from booking.payments.intent import Currency, IntentEvent, IntentState, Money, refund_event
from booking.payments.postings import (
    load_ledger,
    move_intent,
    post_transaction,
    record_intent_event,
    visible_intent,
)
from booking.payments.refunds import due
from booking.payments.rows import INTENT_COLUMNS, money, payment_payload, visible_to
from wadud.errors import Conflict, NotFound
from wadud.messaging import outbox
from wadud.principal import Principal
from wadud.state import audit

__all__ = [
    "RefundNotOwed",
    "RefundRefused",
    "add_booking_refund",
    "mark_refunded",
    "post_refund",
    "refund_booking",
    "refund_intent",
    "refund_payment",
    "refund_posting",
    "refunds_of_clinic",
    "refunds_of_payment",
]

log = logging.getLogger("wadud.payments")

_REFUNDABLE: Final = frozenset({IntentState.SUCCEEDED, IntentState.PARTIALLY_REFUNDED})
_REFUND_NS: Final = uuid.UUID("6f1d7c9e-3b0a-4c55-9a51-2f4b8f0f7d31")


#: A refund's columns, prefixed ``r.``, and its payment's, for one answer.
_SELECT: Final = (
    "SELECT "
    + ", ".join(f"r.{c.strip()}" for c in due.REFUND_COLUMNS.split(","))
    + ", p.currency, p.status AS payment_status, p.refunded_minor AS payment_refunded_minor,"
    " p.patient_id FROM refunds r JOIN payment_intents p ON p.id = r.payment_intent_id"
)


class RefundNotOwed(PaymentError, Conflict):
    """The refund is not one finance still owes (refunded already, or made by
    the gateway)."""

    http_status = 409
    code = "refund_not_owed"


class RefundRefused(GatewayError):
    """The gateway answered a refund request with a refusal."""

    code = "refund_refused"

    def __init__(self, detail: str, gateway_code: str = "") -> None:
        super().__init__(detail)
        self.gateway_code = gateway_code


def _refund_key(row: asyncpg.Record, amount_minor: int, owed: int) -> UUID:
    # Deterministic in the intent's committed state: a retry after a lost
    # commit asks the gateway with the same key and gets its first answer;
    # a later, legitimate refund of the same amount sees another
    # refunded_minor, or (after a refusal) another amount owed by hand.
    key = f"{row['id']}:{row['refunded_minor']}:{amount_minor}"
    return uuid.uuid5(_REFUND_NS, f"{key}:{owed}" if owed else key)


async def refund_intent(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    amount_minor: int,
    reason: str,
    *,
    registry: GatewayRegistry | None = None,
    move_state: bool = True,
    keep_refused: bool = True,
    actor: Principal | UUID | None = None,
) -> tuple[asyncpg.Record, asyncpg.Record]:
    """Refund ``amount_minor`` of the intent ``row`` (locked ``FOR UPDATE`` by
    the caller): gateway refund, ``refunds`` row, intent state, reversing
    ledger posting, outbox event. Returns (refund row, intent row).

    A gateway that says no leaves the refund owed: with ``keep_refused`` it
    is kept ``refused_by_gateway`` for finance (:mod:`.refunds.due`: no
    posting, the state stays, ``actor`` is audited as asking), otherwise
    :class:`RefundRefused` (502) is raised and nothing is written.
    Raises :class:`RefundExceedsCapture` (409) beyond the capture less what
    is owed by hand already, :class:`InvalidPaymentTransition` (409) for an intent
    that was never captured. ``registry`` is the app's gateways: only a bank
    transfer, sent back by hand, is refunded without one. ``move_state=False``
    is for a capture recorded on an intent whose state cannot take it (a late
    success on a cancelled intent): the money goes back and the state stays.
    """
    state = IntentState(row["status"])
    if move_state and state not in _REFUNDABLE:
        raise InvalidPaymentTransition(state.value, "refund")
    owed = await due.owed_minor(conn, row["id"])
    if owed and int(row["refunded_minor"]) + owed + amount_minor > int(row["amount_minor"]):
        raise RefundExceedsCapture(
            f"refunding {amount_minor} after {row['refunded_minor']} refunded and {owed}"
            f" owed by hand exceeds the capture of {row['amount_minor']}"
        )
    # Built before the gateway is asked, so a posting the ledger would refuse
    # never leaves money moved and unrecorded.
    txn, event = await refund_posting(conn, row, amount_minor)
    refund_id = _refund_key(row, amount_minor, owed)
    amount = Money(amount_minor, Currency(row["currency"]))
    if row["gateway"] == BANK_TRANSFER:
        # No gateway sends a bank transfer back: finance does, by hand.
        result = RefundResult.refused(
            BANK_TRANSFER,
            row["gateway_ref"] or "",
            amount,
            "by_hand",
            "a bank transfer is sent back by hand",
        )
    else:
        if registry is None:
            raise PaymentError(f"refunding a {row['gateway']} payment needs the app's gateways")
        result = await registry.get(row["gateway"]).refund(
            row["gateway_ref"], amount, idempotency_key=str(refund_id)
        )
    if not result.succeeded:
        log.warning(
            "gateway refused a refund",
            extra={"payment_id": str(row["id"]), "code": result.gateway_code},
        )
        if not keep_refused:
            said = f"{result.gateway_code} {result.message}".strip()
            raise RefundRefused(f"{row['gateway']} refused the refund: {said}", result.gateway_code)
        refund = await due.record_refused(
            conn,
            row,
            refund_id,
            amount_minor,
            reason,
            code=result.gateway_code,
            message=result.message,
            actor=actor,
        )
        return refund, row
    refund = await conn.fetchrow(
        f"""INSERT INTO refunds (id, payment_intent_id, clinic_id, amount_minor, status,
                                gateway_ref, reason, requested_by)
            VALUES ($1, $2, $3, $4, 'succeeded', $5, $6, $7)
            RETURNING {due.REFUND_COLUMNS}""",
        refund_id,
        row["id"],
        row["clinic_id"],
        amount_minor,
        result.refund_id,
        reason,
        actor.user_id if isinstance(actor, Principal) else actor,
    )
    assert refund is not None
    row = await post_refund(
        conn, row, refund_id, amount_minor, reason, txn=txn, event=event, move_state=move_state
    )
    return refund, row


async def refund_posting(
    conn: asyncpg.Connection, row: asyncpg.Record, amount_minor: int
) -> tuple[ledger.Transaction, IntentEvent]:
    """The ledger's reversal of ``amount_minor`` of the intent's capture
    (proportional to its split, after the refunds posted so far) and the
    intent's refund event."""
    amount = Money(amount_minor, Currency(row["currency"]))
    event = refund_event(money(row), money(row, "refunded_minor"), amount)
    captures = await load_ledger(conn, row["id"], "capture")
    if len(captures) != 1:
        raise PaymentError(f"payment {row['id']} has {len(captures)} capture postings")
    previous = await load_ledger(conn, row["id"], "refund")
    return ledger.refund(captures[0], amount, previous), event


async def post_refund(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    refund_id: UUID,
    amount_minor: int,
    reason: str,
    *,
    txn: ledger.Transaction,
    event: IntentEvent,
    move_state: bool = True,
) -> asyncpg.Record:
    """What a refund that happened writes, by the gateway or by hand: the
    intent's state and ``refunded_minor``, the reversing posting (``txn``
    of :func:`refund_posting`) and ``payment.refunded``."""
    state = IntentState(row["status"])
    refunded = int(row["refunded_minor"]) + amount_minor
    detail = {"refund_id": str(refund_id), "amount_minor": amount_minor, "reason": reason}
    if move_state:
        row = await move_intent(conn, row, event, detail, refunded_minor=refunded)
    else:
        row = await conn.fetchrow(
            f"""UPDATE payment_intents SET refunded_minor = $2, updated_at = now()
                WHERE id = $1 RETURNING {INTENT_COLUMNS}""",
            row["id"],
            refunded,
        )
        assert row is not None
        await record_intent_event(
            conn, row, "refund_after_late_capture", state.value, state.value, detail
        )
    await post_transaction(
        conn,
        txn,
        clinic_id=row["clinic_id"],
        reference=str(refund_id),
        payment_intent_id=row["id"],
        booking_id=row["booking_id"],
    )
    await outbox.emit(
        conn,
        "payment.refunded",
        payment_payload(row, refund_id=str(refund_id), refund_minor=amount_minor, reason=reason),
    )
    return row


async def add_booking_refund(conn: asyncpg.Connection, booking_id: UUID, amount_minor: int) -> None:
    """Count ``amount_minor`` more as refunded on the booking (what its page
    and its exports show as given back)."""
    await conn.execute(
        """UPDATE bookings SET refund_minor = refund_minor + $2, updated_at = now()
           WHERE id = $1""",
        booking_id,
        amount_minor,
    )


async def refund_booking(
    conn: asyncpg.Connection,
    booking_id: UUID,
    amount_minor: int,
    reason: str,
    *,
    registry: GatewayRegistry,
    actor: Principal | UUID | None = None,
) -> int:
    """Refund up to ``amount_minor`` of what was paid for a booking; return
    the amount refunded (0 when nothing was paid or ``amount_minor <= 0``).

    Call inside the caller's transaction (the cancellation's). The request is
    capped at what is still refundable, so a policy computed from the price
    cannot fail on a booking already partly refunded; the return value says
    went back or is owed. ``bookings.refund_minor`` is the caller's to
    update. A refund the gateway refuses is kept ``refused_by_gateway`` for
    finance to pay by hand (and counted), so a cancellation is never held
    hostage by a gateway that cannot refund; a gateway that cannot be
    reached raises, and the cancellation rolls back to be retried.
    """
    if amount_minor <= 0:
        return 0
    rows = await conn.fetch(
        f"""SELECT {INTENT_COLUMNS} FROM payment_intents
            WHERE booking_id = $1 AND status IN ('succeeded', 'partially_refunded')
            ORDER BY created_at, id FOR UPDATE""",
        booking_id,
    )
    left, done = amount_minor, 0
    for row in rows:
        owed = await due.owed_minor(conn, row["id"])
        take = min(left, int(row["amount_minor"]) - int(row["refunded_minor"]) - owed)
        if take <= 0:
            continue
        await refund_intent(conn, row, take, reason, registry=registry, actor=actor)
        left -= take
        done += take
        if left == 0:
            break
    return done


async def refund_payment(
    pool: asyncpg.Pool,
    registry: GatewayRegistry,
    me: Principal,
    payment_id: UUID,
    amount_minor: int,
    reason: str,
) -> tuple[asyncpg.Record, asyncpg.Record]:
    """Refund ``amount_minor`` of the captured payment ``payment_id``, asked
    for by ``me`` (404 if ``me`` may not see it), and count it on its booking.
    Returns (refund, intent); a refund the gateway refused is kept owed by
    hand (:func:`refund_intent`)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await visible_intent(conn, me, payment_id, lock=True)
        refund, row = await refund_intent(
            conn, row, amount_minor, reason, registry=registry, actor=me
        )
        await add_booking_refund(conn, row["booking_id"], amount_minor)
    return refund, row


async def refunds_of_payment(
    pool: asyncpg.Pool, me: Principal, payment_id: UUID
) -> list[asyncpg.Record]:
    """The payment's refunds with its own state, oldest first, if ``me`` may
    see the payment (404 otherwise)."""
    intent = await pool.fetchrow(
        "SELECT clinic_id, patient_id FROM payment_intents WHERE id = $1", payment_id
    )
    if intent is None or not visible_to(me, intent):
        raise NotFound("no such payment")
    return list(
        await pool.fetch(
            f"{_SELECT} WHERE r.payment_intent_id = $1 ORDER BY r.created_at, r.id", payment_id
        )
    )


async def refunds_of_clinic(
    pool: asyncpg.Pool,
    clinic_id: UUID,
    statuses: Sequence[str],
    kind: str | None,
    limit: int,
    offset: int,
) -> list[asyncpg.Record]:
    """The clinic's refunds in ``statuses`` (all when empty) and of ``kind``
    (any when None), with their payments' state, newest first."""
    return list(
        await pool.fetch(
            f"""{_SELECT} WHERE r.clinic_id = $1
                  AND (cardinality($2::text[]) = 0 OR r.status = ANY($2))
                  AND ($3::text IS NULL OR r.kind = $3)
                ORDER BY r.created_at DESC, r.id LIMIT $4 OFFSET $5""",
            clinic_id,
            list(statuses),
            kind,
            limit,
            offset,
        )
    )


async def mark_refunded(
    pool: asyncpg.Pool, refund_id: UUID, note: str, me: Principal, now: dt.datetime
) -> tuple[asyncpg.Record, asyncpg.Record]:
    """Finance paid a refund owed by hand: post what a gateway refund would
    have and close it. Returns (refund, intent). 404 for another clinic's,
    409 ``refund_not_owed`` unless it is ``refused_by_gateway``."""
    async with pool.acquire() as conn, conn.transaction():
        found = await conn.fetchrow(
            "SELECT payment_intent_id, clinic_id FROM refunds WHERE id = $1", refund_id
        )
        if found is None or not me.oversees(found["clinic_id"]):
            raise NotFound("no such refund")
        # The intent first, then the refund: the order refunds are made in.
        intent = await conn.fetchrow(
            f"SELECT {INTENT_COLUMNS} FROM payment_intents WHERE id = $1 FOR UPDATE",
            found["payment_intent_id"],
        )
        refund = await conn.fetchrow(
            f"SELECT {due.REFUND_COLUMNS} FROM refunds WHERE id = $1 FOR UPDATE", refund_id
        )
        assert intent is not None
        assert refund is not None
        if refund["status"] != due.OWED:
            raise RefundNotOwed(f"the refund is {refund['status']}, not owed by hand")
        amount = int(refund["amount_minor"])
        if refund["kind"] == "refund":
            # Exactly the gateway refund's posting, state and event.
            txn, event = await refund_posting(conn, intent, amount)
            intent = await post_refund(
                conn,
                intent,
                refund_id,
                amount,
                f"by hand: {refund['reason']}",
                txn=txn,
                event=event,
            )
        else:
            intent = await _late_payment_returned(conn, intent, refund_id, amount)
        refund = await conn.fetchrow(
            f"""UPDATE refunds SET status = 'refunded_by_hand', note = $2, resolved_by = $3,
                       resolved_at = $4
                WHERE id = $1 RETURNING {due.REFUND_COLUMNS}""",
            refund_id,
            note,
            me.user_id,
            now,
        )
        assert refund is not None
        await audit.record(
            conn,
            actor=me,
            action="payment.refund.by_hand",
            subject=intent["patient_id"],
            clinic=intent["clinic_id"],
            object=f"refund/{refund_id}",
            detail={
                "payment_id": str(intent["id"]),
                "amount_minor": amount,
                "kind": refund["kind"],
            },
        )
    return refund, intent


async def _late_payment_returned(
    conn: asyncpg.Connection, intent: asyncpg.Record, refund_id: UUID, amount: int
) -> asyncpg.Record:
    """A late payment's money left the gateway's account: clear what
    :func:`.ledger.owed_back` parked; the intent keeps its (closed) state."""
    await post_transaction(
        conn,
        ledger.owed_back_sent(intent["gateway"], Money(amount, intent["currency"]), str(refund_id)),
        clinic_id=intent["clinic_id"],
        payment_intent_id=intent["id"],
        booking_id=intent["booking_id"],
    )
    row = await conn.fetchrow(
        f"""UPDATE payment_intents SET refunded_minor = refunded_minor + $2, updated_at = now()
            WHERE id = $1 RETURNING {INTENT_COLUMNS}""",
        intent["id"],
        amount,
    )
    assert row is not None
    detail = {"refund_id": str(refund_id), "amount_minor": amount}
    await record_intent_event(conn, row, "refunded_by_hand", row["status"], row["status"], detail)
    await outbox.emit(
        conn,
        "payment.refunded",
        payment_payload(row, refund_id=str(refund_id), refund_minor=amount, reason="by hand"),
    )
    return row
