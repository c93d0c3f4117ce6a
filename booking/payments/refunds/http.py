"""Refunds over HTTP: a payment's refunds, a clinic's refunds owed by hand,
and finance recording one paid.

A refund the gateway refused, and money that came after its booking lapsed
on a gateway that cannot send it back, are kept as refund rows
``refused_by_gateway`` (:mod:`.refunds.due`). Finance (the clinic's staff,
and admins) list them, pay them outside the gateway (EasyPaisa's merchant
portal, a bank transfer) and mark them ``refunded_by_hand`` with a note:
the ledger then posts what a gateway refund would have, and the patient is
told, as for any refund. Another clinic's refund is a 404.

Routes join :mod:`.checkout.http`'s list, as the checkout's do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final, Literal
from uuid import UUID

import asyncpg
from pydantic import Field, StringConstraints

from booking.payments import ledger
from booking.payments.errors import PaymentError
from booking.payments.intent import IntentState, Money
from booking.payments.paging import OffsetQuery
from booking.payments.postings import post_transaction, record_intent_event
from booking.payments.refunds import due
from booking.payments.refunds.service import post_refund, refund_posting
from booking.payments.rows import INTENT_COLUMNS, payment_payload
from wadud import audit, outbox
from wadud.api import ApiModel, Call, Principal, Role, Routes
from wadud.errors import Conflict, NotFound

__all__ = ["Refund", "mark_refunded", "owed_by_payment", "refund_out", "routes"]

routes = Routes("refunds", "Refunds, and those owed by hand when a gateway cannot make them.")

_STAFF = {Role.CLINIC_STAFF, Role.ADMIN}
_VIEWERS = {Role.PATIENT, Role.CLINIC_STAFF, Role.ADMIN}

RefundStatus = Literal["pending", "succeeded", "failed", "refused_by_gateway", "refunded_by_hand"]
RefundKind = Literal["refund", "late_payment"]
Note = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]

_COLUMNS: Final = frozenset(c.strip() for c in due.REFUND_COLUMNS.split(","))
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


class Refund(ApiModel):
    """Money going back to a patient: through the gateway, or by hand."""

    id: UUID
    payment_id: UUID
    clinic_id: UUID
    kind: RefundKind = Field(
        description="refund: asked for (staff, a cancellation); late_payment: the whole of"
        " a payment received after its booking was no longer held."
    )
    amount_minor: int
    currency: str
    status: RefundStatus = Field(
        description="succeeded: the gateway refunded it; refused_by_gateway: the gateway"
        " said no and finance owes it by hand; refunded_by_hand: finance paid it."
    )
    gateway_ref: str | None
    reason: str
    gateway_code: str = Field(description="The gateway's answer to a refused refund.")
    gateway_message: str
    requested_by: UUID | None
    note: str = Field(description="Finance's note when it was refunded by hand.")
    resolved_by: UUID | None
    resolved_at: dt.datetime | None
    created_at: dt.datetime
    payment_status: IntentState
    payment_refunded_minor: int


class ClinicRefundsQuery(OffsetQuery):
    status: list[RefundStatus] = Field(default_factory=list)
    kind: RefundKind | None = None


class RefundedIn(ApiModel):
    note: Note = Field(description="How it was paid back (the portal's or bank's reference).")


def refund_out(refund: Mapping[str, Any], intent: Mapping[str, Any]) -> Refund:
    """A refund row and its payment's (current) row as the API shows them."""
    fields = {k: refund[k] for k in Refund.model_fields if k in _COLUMNS}
    return Refund(
        **fields,
        payment_id=refund["payment_intent_id"],
        currency=intent["currency"],
        payment_status=IntentState(intent["status"]),
        payment_refunded_minor=intent["refunded_minor"],
    )


def _joined(row: asyncpg.Record) -> Refund:
    return refund_out(
        row,
        {
            "currency": row["currency"],
            "status": row["payment_status"],
            "refunded_minor": row["payment_refunded_minor"],
        },
    )


async def owed_by_payment(
    conn: asyncpg.Connection | asyncpg.Pool, payment_ids: Sequence[UUID]
) -> dict[UUID, int]:
    """What each payment's refunds still owe by hand (absent: nothing)."""
    rows = await conn.fetch(
        """SELECT payment_intent_id, sum(amount_minor) AS owed FROM refunds
           WHERE payment_intent_id = ANY($1::uuid[]) AND status = $2
           GROUP BY payment_intent_id""",
        list(payment_ids),
        due.OWED,
    )
    return {r["payment_intent_id"]: int(r["owed"]) for r in rows}


async def mark_refunded(
    conn: asyncpg.Connection, refund_id: UUID, note: str, me: Principal, now: dt.datetime
) -> tuple[asyncpg.Record, asyncpg.Record]:
    """Finance paid a refund owed by hand: post what a gateway refund would
    have and close it. Returns (refund, intent). 404 for another clinic's,
    409 ``refund_not_owed`` unless it is ``refused_by_gateway``."""
    async with conn.transaction():
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


# --- routes -----------------------------------------------------------------------------


@routes.get("/api/v1/payments/{payment_id:uuid}/refunds", returns=list[Refund], auth=_VIEWERS)
async def payment_refunds(call: Call[None, None]) -> list[Refund]:
    """A payment's refunds, oldest first: made by the gateway, refused by it
    and owed by hand, or refunded by hand (its patient, staff of its clinic,
    admins)."""
    me = call.user
    intent = await call.pool.fetchrow(
        "SELECT clinic_id, patient_id FROM payment_intents WHERE id = $1",
        call.path_uuid("payment_id"),
    )
    visible = intent is not None and (
        me.oversees(intent["clinic_id"])
        or (me.role == Role.PATIENT and intent["patient_id"] == me.user_id)
    )
    if intent is None or not visible:
        raise NotFound("no such payment")
    rows = await call.pool.fetch(
        f"{_SELECT} WHERE r.payment_intent_id = $1 ORDER BY r.created_at, r.id",
        call.path_uuid("payment_id"),
    )
    return [_joined(r) for r in rows]


@routes.get(
    "/api/v1/clinics/{clinic_id:uuid}/refunds",
    query=ClinicRefundsQuery,
    returns=list[Refund],
    auth=_STAFF,
)
async def clinic_refunds(call: Call[None, ClinicRefundsQuery]) -> list[Refund]:
    """The clinic's refunds, newest first; ``status=refused_by_gateway`` is
    what finance still owes by hand (repeatable ``status``; ``kind``
    ``late_payment`` for money that arrived after its booking lapsed)."""
    clinic_id = call.path_uuid("clinic_id")
    if not call.user.oversees(clinic_id):
        raise NotFound("no such clinic")
    q = call.query
    rows = await call.pool.fetch(
        f"""{_SELECT} WHERE r.clinic_id = $1
              AND (cardinality($2::text[]) = 0 OR r.status = ANY($2))
              AND ($3::text IS NULL OR r.kind = $3)
            ORDER BY r.created_at DESC, r.id LIMIT $4 OFFSET $5""",
        clinic_id,
        list(q.status),
        q.kind,
        q.limit,
        q.offset,
    )
    return [_joined(r) for r in rows]


@routes.post(
    "/api/v1/refunds/{refund_id:uuid}/refunded",
    body=RefundedIn,
    returns=Refund,
    auth=_STAFF,
    responses={409: "Not owed by hand (refunded already, or made by the gateway)"},
)
async def refund_refunded(call: Call[RefundedIn, None]) -> Refund:
    """Record that a refund owed by hand was paid (staff of the clinic,
    admins), with a note. The ledger posts what a gateway refund would have
    (a late payment's money leaves ``patient_refunds_due``), the patient is
    told, and it is audited."""
    async with call.pool.acquire() as conn:
        refund, intent = await mark_refunded(
            conn, call.path_uuid("refund_id"), call.body.note, call.user, dt.datetime.now(dt.UTC)
        )
    return refund_out(refund, intent)
