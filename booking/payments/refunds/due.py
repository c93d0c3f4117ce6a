"""Refunds owed by hand: those a gateway refused, and money that came too late.

Not every gateway sends money back through its API: EasyPaisa's merchant
API has no refund call (refunds are made in its merchant portal), and any
gateway may answer a refund request with "no". A patient is owed the money
all the same, so nothing here is dropped or left stuck; it becomes a refund
row finance pays back by hand (``refunds``, migration 0019):

* **kind ``refund``, status ``refused_by_gateway``**: a refund someone asked
  for (staff, a cancellation's policy) that the gateway refused. The
  ledger is untouched (no money moved) and the payment keeps its state; the
  amount is reserved, so what is refunded plus what is owed never exceeds
  the capture.
* **kind ``late_payment``, status ``refused_by_gateway``**: a payment that
  arrived after its booking was no longer held, on a gateway that refused
  the automatic refund. As a late bank transfer's credit does
  (:mod:`.transfers.core`), the money is posted from the gateway's clearing
  account to ``patient_refunds_due`` (:func:`.ledger.owed_back`): no revenue,
  nothing to the doctor, never a silent credit. The payment is closed
  (``cancelled``), with a ``received_late`` line in its history.

Finance marks either ``refunded_by_hand`` with a note
(:mod:`.refunds.http`), which posts what a gateway refund would have. Every
step is an audit row, written in the transaction that makes it; notes stay
out of the audit detail, as the bank transfer's do.

Below :mod:`.refunds.service` and :mod:`.checkout.verdicts`, which call it when
a gateway says no.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from uuid import UUID, uuid4

import asyncpg

from booking.payments import ledger
from booking.payments.postings import post_transaction, record_intent_event
from booking.payments.rows import money, payment_payload
from wadud.messaging import outbox
from wadud.principal import Principal
from wadud.state import audit

__all__ = [
    "OWED",
    "REFUND_COLUMNS",
    "owe_late",
    "owed_by_payment",
    "owed_minor",
    "record_refused",
    "settled_late",
]

REFUND_COLUMNS: Final = (
    "id, payment_intent_id, clinic_id, kind, amount_minor, status, gateway_ref, reason,"
    " gateway_code, gateway_message, requested_by, note, resolved_by, resolved_at, created_at"
)
#: The status of a refund finance still has to pay.
OWED: Final = "refused_by_gateway"


async def owed_minor(conn: asyncpg.Connection, intent_id: UUID) -> int:
    """What refused refunds of the payment still owe (reserved against its capture)."""
    value = await conn.fetchval(
        """SELECT coalesce(sum(amount_minor), 0) FROM refunds
           WHERE payment_intent_id = $1 AND kind = 'refund' AND status = $2""",
        intent_id,
        OWED,
    )
    return int(value)


async def owed_by_payment(
    conn: asyncpg.Connection | asyncpg.Pool, payment_ids: Sequence[UUID]
) -> dict[UUID, int]:
    """What each payment's refunds still owe by hand (absent: nothing)."""
    rows = await conn.fetch(
        """SELECT payment_intent_id, sum(amount_minor) AS owed FROM refunds
           WHERE payment_intent_id = ANY($1::uuid[]) AND status = $2
           GROUP BY payment_intent_id""",
        list(payment_ids),
        OWED,
    )
    return {r["payment_intent_id"]: int(r["owed"]) for r in rows}


async def settled_late(conn: asyncpg.Connection, intent_id: UUID) -> bool:
    """Whether money that came after the payment closed was recorded already
    (a capture refunded through the gateway, or an item owed by hand)."""
    return bool(
        await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM ledger_transactions
                              WHERE kind = 'capture' AND payment_intent_id = $1)
                   OR EXISTS (SELECT 1 FROM refunds
                              WHERE kind = 'late_payment' AND payment_intent_id = $1)""",
            intent_id,
        )
    )


async def record_refused(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    refund_id: UUID,
    amount_minor: int,
    reason: str,
    *,
    code: str,
    message: str,
    actor: Principal | UUID | None,
) -> asyncpg.Record:
    """Keep a refund the gateway refused (the intent ``row`` locked by the
    caller): a ``refused_by_gateway`` row, a history line, an outbox event
    and an audit row. Nothing is posted: no money moved."""
    requested_by = actor.user_id if isinstance(actor, Principal) else actor
    refund = await conn.fetchrow(
        f"""INSERT INTO refunds (id, payment_intent_id, clinic_id, kind, amount_minor, status,
                                 reason, gateway_code, gateway_message, requested_by)
            VALUES ($1, $2, $3, 'refund', $4, $5, $6, $7, $8, $9)
            RETURNING {REFUND_COLUMNS}""",
        refund_id,
        row["id"],
        row["clinic_id"],
        amount_minor,
        OWED,
        reason,
        code[:100],
        message[:500],
        requested_by,
    )
    assert refund is not None
    detail = {"refund_id": str(refund_id), "amount_minor": amount_minor, "code": code}
    await record_intent_event(conn, row, "refund_refused", row["status"], row["status"], detail)
    await outbox.emit(
        conn,
        "payment.refund_refused",
        payment_payload(row, refund_id=str(refund_id), refund_minor=amount_minor, code=code),
    )
    await audit.record(
        conn,
        actor=actor,
        role=None if actor is not None else "system",
        action="payment.refund.refused_by_gateway",
        subject=row["patient_id"],
        clinic=row["clinic_id"],
        object=f"refund/{refund_id}",
        detail={"payment_id": str(row["id"]), "amount_minor": amount_minor, "code": code},
    )
    return refund


async def owe_late(
    conn: asyncpg.Connection, row: asyncpg.Record, why: str, *, code: str, message: str
) -> asyncpg.Record:
    """Money for the (closed, locked) intent ``row`` that arrived after its
    booking lapsed, which the gateway would not send back: owed by hand.
    Posts :func:`.ledger.owed_back` and records the item; returns it."""
    amount = money(row)
    refund_id = uuid4()
    refund = await conn.fetchrow(
        f"""INSERT INTO refunds (id, payment_intent_id, clinic_id, kind, amount_minor, status,
                                 reason, gateway_code, gateway_message)
            VALUES ($1, $2, $3, 'late_payment', $4, $5, $6, $7, $8)
            RETURNING {REFUND_COLUMNS}""",
        refund_id,
        row["id"],
        row["clinic_id"],
        amount.amount_minor,
        OWED,
        f"automatic: {why}",
        code[:100],
        message[:500],
    )
    assert refund is not None
    await post_transaction(
        conn,
        ledger.owed_back(row["gateway"], amount, str(refund_id)),
        clinic_id=row["clinic_id"],
        payment_intent_id=row["id"],
        booking_id=row["booking_id"],
    )
    detail = {"refund_id": str(refund_id), "amount_minor": amount.amount_minor, "reason": why}
    await record_intent_event(conn, row, "received_late", row["status"], row["status"], detail)
    await outbox.emit(
        conn, "payment.received_late", payment_payload(row, refund_id=str(refund_id), reason=why)
    )
    await audit.record(
        conn,
        actor=None,
        role="system",
        action="payment.received_late",
        subject=row["patient_id"],
        clinic=row["clinic_id"],
        object=f"refund/{refund_id}",
        detail={"payment_id": str(row["id"]), "amount_minor": amount.amount_minor, "code": code},
    )
    return refund
