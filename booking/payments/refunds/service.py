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
and a refund paid by hand later posts through :func:`post_refund`, exactly
as one the gateway made.
"""

from __future__ import annotations

import logging
import uuid
from typing import Final
from uuid import UUID

import asyncpg

from booking.payments import ledger
from booking.payments.errors import (
    GatewayError,
    InvalidTransition,
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
)
from booking.payments.refunds import due
from booking.payments.rows import INTENT_COLUMNS, money, payment_payload
from wadud import outbox
from wadud.principal import Principal

__all__ = [
    "RefundRefused",
    "add_booking_refund",
    "post_refund",
    "refund_booking",
    "refund_intent",
    "refund_posting",
]

log = logging.getLogger("wadud.payments")

_REFUNDABLE: Final = frozenset({IntentState.SUCCEEDED, IntentState.PARTIALLY_REFUNDED})
_REFUND_NS: Final = uuid.UUID("6f1d7c9e-3b0a-4c55-9a51-2f4b8f0f7d31")


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
    is owed by hand already, :class:`InvalidTransition` (409) for an intent
    that was never captured. ``registry`` is the app's gateways: only a bank
    transfer, sent back by hand, is refunded without one. ``move_state=False``
    is for a capture recorded on an intent whose state cannot take it (a late
    success on a cancelled intent): the money goes back and the state stays.
    """
    state = IntentState(row["status"])
    if move_state and state not in _REFUNDABLE:
        raise InvalidTransition(state.value, "refund")
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
