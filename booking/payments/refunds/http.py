"""Refunds over HTTP: refunding a payment, a payment's refunds, a clinic's
refunds owed by hand, and finance recording one paid.

A refund the gateway refused, and money that came after its booking lapsed
on a gateway that cannot send it back, are kept as refund rows
``refused_by_gateway`` (:mod:`booking.payments.refunds.due`). Finance (the
clinic's staff, and admins) list them, pay them outside the gateway
(EasyPaisa's merchant portal, a bank transfer) and mark them
``refunded_by_hand`` with a note: the ledger then posts what a gateway
refund would have, and the patient is told, as for any refund
(:mod:`booking.payments.refunds.service`). Another clinic's refund is a 404.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from aiohttp import web
from pydantic import Field, StringConstraints

from booking.payments.intent import IntentState
from booking.payments.keys import GATEWAYS
from booking.payments.paging import OffsetQuery
from booking.payments.refunds import due, service
from wadud.web.api import ApiModel, Call, Role, Routes

__all__ = ["Refund", "refund_out", "routes"]

routes = Routes("refunds", "Refunds, and those owed by hand when a gateway cannot make them.")

_STAFF = {Role.CLINIC_STAFF, Role.ADMIN}
_VIEWERS = {Role.PATIENT, Role.CLINIC_STAFF, Role.ADMIN}

RefundStatus = Literal["pending", "succeeded", "failed", "refused_by_gateway", "refunded_by_hand"]
RefundKind = Literal["refund", "late_payment"]
Note = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]
Amount = Annotated[int, Field(gt=0, le=10**12)]

_COLUMNS: Final = frozenset(c.strip() for c in due.REFUND_COLUMNS.split(","))


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


class RefundIn(ApiModel):
    amount_minor: Amount
    reason: Reason = ""


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


def _joined(row: Mapping[str, Any]) -> Refund:
    return refund_out(
        row,
        {
            "currency": row["currency"],
            "status": row["payment_status"],
            "refunded_minor": row["payment_refunded_minor"],
        },
    )


# --- routes -----------------------------------------------------------------------------


@routes.get("/api/v1/payments/{payment_id:uuid}/refunds", returns=list[Refund], auth=_VIEWERS)
async def payment_refunds(call: Call[None, None]) -> list[Refund]:
    """A payment's refunds, oldest first: made by the gateway, refused by it
    and owed by hand, or refunded by hand (its patient, staff of its clinic,
    admins)."""
    rows = await service.refunds_of_payment(call.pool, call.user, call.path_uuid("payment_id"))
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
    clinic_id = call.overseen_clinic()
    q = call.query
    rows = await service.refunds_of_clinic(
        call.pool, clinic_id, q.status, q.kind, q.limit, q.offset
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
    refund, intent = await service.mark_refunded(
        call.pool, call.path_uuid("refund_id"), call.body.note, call.user, dt.datetime.now(dt.UTC)
    )
    return refund_out(refund, intent)


@routes.post(
    "/api/v1/payments/{payment_id:uuid}/refunds",
    body=RefundIn,
    returns=Refund,
    status=201,
    auth=_STAFF,
    responses={
        202: "The gateway refused: kept as refused_by_gateway, owed by hand",
        409: "More than captured (less what is owed by hand), or nothing captured",
        502: "The gateway could not be reached; nothing changed",
    },
)
async def refund_payment(call: Call[RefundIn, None]) -> Refund | web.Response:
    """Refund part or all of a captured payment (staff of its clinic, admins).

    The ledger posts the exact reverse of the capture's split, proportionally;
    the total refunded never exceeds what was captured (409). A gateway that
    refuses (EasyPaisa has no refund call) leaves the refund owed: 202 with
    ``status: refused_by_gateway``, nothing posted, for finance to pay by hand
    (``POST /api/v1/refunds/{id}/refunded``)."""
    body = call.body
    refund, intent = await service.refund_payment(
        call.pool,
        call.request.app[GATEWAYS],
        call.user,
        call.path_uuid("payment_id"),
        body.amount_minor,
        body.reason,
    )
    out = refund_out(refund, intent)
    if refund["status"] == due.OWED:
        return web.Response(body=out.model_dump_json(), status=202, content_type="application/json")
    return out
