"""Bank transfer over HTTP: the patient's transfer and proofs, and finance
staff's reconciliation (statement import, confirmation by hand, refunds due).

Who may ask: a transfer's patient, staff of its clinic and admins see it;
only its patient starts it or uploads proofs. Reconciliation is for clinic
staff (their clinic's transfers and credits) and admins. Another tenant's
row is a 404, as everywhere in payments. A staff member's read of a
patient's transfer or proof is audited, as their reads of bookings are.

The rules live in :mod:`.transfers.service` and :mod:`.transfers.reconcile`
(the database) and :mod:`.transfers.core` (references, statements);
handlers check who asks and shape the answer. The patient's page
(:mod:`.transfers.pages`) is served beside them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from aiohttp import web
from pydantic import Field, StringConstraints

from booking.payments.intent import IntentState
from booking.payments.paging import OffsetQuery
from booking.payments.transfers import pages, reconcile, service
from booking.payments.transfers.core import (
    BankAccount,
    ProofNotAccepted,
    ProofTooLarge,
    UnknownTransfer,
    normalise_reference,
    page_url,
)
from booking.payments.transfers.privacy import subject_keys_of
from privacy.subject_keys import SubjectKeys
from wadud.errors import PayloadTooLarge, UnsupportedMediaType
from wadud.state.rows import from_row
from wadud.state.storage import sniff_type, storage_of
from wadud.web.api import ApiModel, Call, Role, Routes
from wadud.web.http import read_upload

__all__ = ["routes"]

routes = Routes("bank-transfer", "Bank transfer: references, proofs and reconciliation.")
routes.endpoints.extend(pages.routes.endpoints)

_STAFF = {Role.CLINIC_STAFF, Role.ADMIN}
_VIEWERS = {Role.PATIENT, Role.CLINIC_STAFF, Role.ADMIN}
_PROOF_TYPES: Final = ("application/pdf", "image/gif", "image/jpeg", "image/png", "image/webp")
_CSV_TYPES: Final = ("text/csv", "text/plain", "application/octet-stream")
_BINARY: Final = {"schema": {"type": "string", "format": "binary"}}

Note = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
CreditStatus = Literal["unmatched", "matched", "refund_due", "refunded"]


# --- models -------------------------------------------------------------------------


class Proof(ApiModel):
    id: UUID
    content_type: str
    size_bytes: int
    created_at: dt.datetime


class BankTransfer(ApiModel):
    """A booking's bank transfer: what to pay, where, with which reference."""

    payment_id: UUID
    booking_id: UUID
    clinic_id: UUID
    patient_id: UUID
    reference: str = Field(description="Write this on the transfer (description/remarks).")
    amount_minor: int
    currency: str
    status: IntentState
    expires_at: dt.datetime = Field(
        description="The booking is held until then; a transfer matched later is refunded."
    )
    bank: BankAccount | None = Field(description="Null when bank transfer is no longer offered.")
    proofs: list[Proof]
    page_url: str = Field(description="The patient's page for it (a signed link, no token needed).")
    created_at: dt.datetime


class CreditOut(ApiModel):
    """Money that reached the platform's account: a statement line or a
    transfer confirmed by hand."""

    id: UUID
    clinic_id: UUID
    source: Literal["statement", "manual"]
    statement_id: UUID | None
    line_no: int | None
    booked_on: dt.date
    amount_minor: int
    currency: str
    narration: str
    bank_txn_id: str | None
    reference: str | None
    status: CreditStatus
    reason: str | None = Field(
        description="Why unmatched (no_reference, several_references, unknown_reference,"
        " amount_differs) or owed back (arrived_after_expiry, paid_already, ...)."
    )
    payment_id: UUID | None
    note: str
    resolved_by: UUID | None
    resolved_at: dt.datetime | None
    created_at: dt.datetime


class Rejected(ApiModel):
    line: int = Field(description="Line number in the file (the header is line 1).")
    error: str


class StatementImport(ApiModel):
    statement_id: UUID
    matched: list[CreditOut]
    unmatched: list[CreditOut]
    refund_due: list[CreditOut]
    rejected: list[Rejected]
    duplicates: int = Field(description="Lines imported before (the same statement again).")


class CreditsQuery(OffsetQuery):
    status: list[CreditStatus] = Field(default_factory=list)


class TransferConfirmIn(ApiModel):
    amount_minor: int = Field(gt=0, le=10**12, description="Must be the transfer's amount.")
    note: Note
    credit_id: UUID | None = Field(
        default=None, description="The unmatched statement credit that paid it, if any."
    )


class Confirmation(ApiModel):
    credit: CreditOut
    payment_status: IntentState
    booking_status: str


class NoteIn(ApiModel):
    note: Note


# --- helpers -------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _subjects(call: Call[Any, Any]) -> SubjectKeys:
    return subject_keys_of(call.request.app)


def _proof(row: Mapping[str, Any]) -> Proof:
    return from_row(Proof, row)


def _credit(row: Mapping[str, Any]) -> CreditOut:
    data = {k: row[k] for k in CreditOut.model_fields if k != "payment_id"}
    return CreditOut(**data, payment_id=row["payment_intent_id"])


def _out(transfer: service.Transfer, settings: Any) -> BankTransfer:
    """The transfer as the API shows it."""
    row = transfer.intent
    return from_row(
        BankTransfer,
        row,
        payment_id=row["id"],
        reference=row["gateway_ref"],
        bank=BankAccount.of(settings),
        proofs=[_proof(p) for p in transfer.proofs],
        page_url=page_url(settings, row["id"]),
    )


# --- the patient's side ------------------------------------------------------------------


@routes.post(
    "/api/v1/bookings/{booking_id:uuid}/bank-transfer",
    returns=BankTransfer,
    status=201,
    auth={Role.PATIENT},
    responses={
        200: "The booking's bank transfer, handed out again",
        409: "Not payable now, another payment is under way, or the slot is too soon",
    },
)
async def start_bank_transfer(call: Call[None, None]) -> BankTransfer | web.Response:
    """Pay a held booking by bank transfer.

    Holds the booking for ``payments_bank_transfer_hold_hours`` (never past
    the slot's start) and returns the platform's bank account and the
    payment reference to write on the transfer. The patient is sent the same
    in a notification. Asking again returns the same transfer (200)."""
    transfer, created = await service.start_transfer(
        call.pool, call.path_uuid("booking_id"), call.user.user_id, call.settings, _now()
    )
    out = _out(transfer, call.settings)
    if created:
        return out
    return web.Response(body=out.model_dump_json(), status=200, content_type="application/json")


@routes.post(
    "/api/v1/bookings/{booking_id:uuid}/bank-transfer/cancel",
    returns=BankTransfer,
    auth={Role.PATIENT},
    responses={409: "No bank transfer is waiting for money"},
)
async def cancel_bank_transfer(call: Call[None, None]) -> BankTransfer:
    """Pay another way after all: the transfer is cancelled and the hold
    shrinks back to a card hold (``booking_hold_minutes`` from now). Money
    that still arrives under the reference is refunded, never kept."""
    transfer = await service.cancel_transfer(
        call.pool, call.path_uuid("booking_id"), call.user.user_id, call.settings, _now()
    )
    return _out(transfer, call.settings)


@routes.get("/api/v1/bookings/{booking_id:uuid}/bank-transfer", returns=BankTransfer, auth=_VIEWERS)
async def get_bank_transfer(call: Call[None, None]) -> BankTransfer:
    """A booking's bank transfer: reference, amount, account, state and proofs
    (its patient, staff of its clinic, admins)."""
    transfer = await service.transfer_for(call.pool, call.user, call.path_uuid("booking_id"))
    return _out(transfer, call.settings)


@routes.post(
    "/api/v1/bookings/{booking_id:uuid}/bank-transfer/proofs",
    returns=Proof,
    status=201,
    auth={Role.PATIENT},
    raw_body={
        "required": True,
        "description": "The receipt itself (JPEG, PNG, GIF, WebP or PDF); judged by its bytes.",
        "content": {t: _BINARY for t in _PROOF_TYPES},
    },
    responses={
        409: "The transfer is no longer waiting for money",
        413: "Larger than payments_bank_transfer_proof_max_bytes",
        415: "Not an image or a PDF",
    },
)
async def upload_proof(call: Call[None, None]) -> Proof:
    """Upload a proof of payment (a photo or PDF of the bank's receipt).

    Stored encrypted under the patient's own data key (erasure destroys it);
    finance staff see it beside the transfer."""
    request = call.request
    declared = request.content_type
    if declared not in _PROOF_TYPES and declared != "application/octet-stream":
        raise ProofNotAccepted("send an image (JPEG, PNG, GIF, WebP) or a PDF")
    limit = call.settings.payments_bank_transfer_proof_max_bytes
    # The body is read before a connection is taken: a phone on a slow link
    # may take a while to send a photo.
    try:
        data = await read_upload(request, limit, "a proof of payment")
    except PayloadTooLarge as exc:
        raise ProofTooLarge(exc.detail) from None
    found = sniff_type(data)
    if found is None or (declared != "application/octet-stream" and found != declared):
        raise ProofNotAccepted("the content is not an image (JPEG, PNG, GIF, WebP) or a PDF")
    proof = await service.upload_proof(
        call.pool,
        _subjects(call),
        storage_of(request.app),
        call.user,
        call.path_uuid("booking_id"),
        data,
        found,
    )
    return _proof(proof)


@routes.get(
    "/api/v1/bookings/{booking_id:uuid}/bank-transfer/proofs/{proof_id:uuid}",
    returns={"content": {t: _BINARY for t in _PROOF_TYPES}},
    auth=_VIEWERS,
    responses={410: "Erased at the patient's request"},
)
async def get_proof(call: Call[None, None]) -> web.Response:
    """A proof's bytes (its patient, staff of the clinic, admins; staff reads
    are audited)."""
    proof, data = await service.proof_for(
        call.pool,
        _subjects(call),
        storage_of(call.request.app),
        call.user,
        call.path_uuid("booking_id"),
        call.path_uuid("proof_id"),
    )
    disposition = "inline" if proof["content_type"].startswith("image/") else "attachment"
    return web.Response(
        body=data,
        content_type=proof["content_type"],
        headers={
            "Content-Disposition": disposition,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        },
    )


# --- finance: reconciliation ---------------------------------------------------------------


@routes.post(
    "/api/v1/clinics/{clinic_id:uuid}/bank-statements",
    returns=StatementImport,
    status=201,
    auth=_STAFF,
    raw_body={
        "required": True,
        "description": "A CSV bank statement with a header row naming date, amount and"
        " description columns (docs/api.md, Bank transfer).",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    },
    responses={
        413: "Larger than payments_bank_transfer_statement_max_bytes",
        415: "Not sent as text/csv",
        422: "Not a statement (no header, not UTF-8); nothing imported",
    },
)
async def import_statement(call: Call[None, None]) -> StatementImport:
    """Import a bank statement and match its credits to transfers.

    A credit naming one of the clinic's transfers by reference, for its
    amount, confirms the booking; one for a transfer that expired or was
    paid already becomes refund-due; the rest are listed unmatched with the
    reason. Malformed lines are rejected with their line numbers while the
    good lines import; a line imported before is counted, not repeated.
    Every confirmation and the import itself are audited."""
    me = call.user
    clinic_id = call.overseen_clinic()
    request = call.request
    if request.content_type not in _CSV_TYPES:
        raise UnsupportedMediaType("send the statement as text/csv")
    limit = call.settings.payments_bank_transfer_statement_max_bytes
    data = await read_upload(request, limit, "a statement")
    done = await reconcile.import_statement(
        call.pool,
        clinic_id,
        data,
        me,
        _now(),
        default_bp=call.settings.payments_platform_commission_bp,
    )
    by: dict[str, list[CreditOut]] = {"matched": [], "unmatched": [], "refund_due": []}
    for c in done.credits:
        by[c["status"]].append(_credit(c))
    return StatementImport(
        statement_id=done.statement_id,
        matched=by["matched"],
        unmatched=by["unmatched"],
        refund_due=by["refund_due"],
        rejected=[Rejected(line=r.line_no, error=r.error) for r in done.rejected],
        duplicates=done.duplicates,
    )


@routes.get(
    "/api/v1/clinics/{clinic_id:uuid}/bank-credits",
    query=CreditsQuery,
    returns=list[CreditOut],
    auth=_STAFF,
)
async def list_credits(call: Call[None, CreditsQuery]) -> list[CreditOut]:
    """The clinic's bank credits, newest first; filter by ``status``
    (repeatable: ``unmatched`` lines to look at, ``refund_due`` money to send
    back)."""
    clinic_id = call.overseen_clinic()
    q = call.query
    rows = await reconcile.credits_of(call.pool, clinic_id, q.status, q.limit, q.offset)
    return [_credit(r) for r in rows]


@routes.post(
    "/api/v1/bank-transfers/{reference:[A-Za-z0-9-]{1,40}}/confirm",
    body=TransferConfirmIn,
    returns=Confirmation,
    auth=_STAFF,
    responses={
        404: "No such transfer (unknown reference)",
        409: "Another amount, confirmed already, or the credit is not unmatched",
    },
)
async def confirm_transfer(call: Call[TransferConfirmIn, None]) -> Confirmation:
    """Confirm a transfer by hand, with a note (finance saw the money).

    The amount must be the transfer's. Name ``credit_id`` to settle an
    unmatched statement credit with it (a reference the patient mistyped).
    A transfer whose hold has expired is not confirmed: the money becomes
    refund-due. Audited."""
    reference = normalise_reference(call.path("reference"))
    if reference is None:
        raise UnknownTransfer("that is not a payment reference (WD and eight characters)")
    body = call.body
    credit, intent, booking_status = await reconcile.confirm_by_hand(
        call.pool,
        reference,
        body.amount_minor,
        body.note,
        call.user,
        _now(),
        credit_id=body.credit_id,
        default_bp=call.settings.payments_platform_commission_bp,
    )
    return Confirmation(
        credit=_credit(credit),
        payment_status=IntentState(intent["status"]),
        booking_status=booking_status,
    )


@routes.post(
    "/api/v1/bank-credits/{credit_id:uuid}/refund-due",
    body=NoteIn,
    returns=CreditOut,
    auth=_STAFF,
    responses={409: "The credit is not unmatched"},
)
async def credit_refund_due(call: Call[NoteIn, None]) -> CreditOut:
    """Mark an unmatched credit as owed back (nobody's payment: another
    amount, no reference). Audited."""
    row = await reconcile.mark_refund_due(
        call.pool, call.path_uuid("credit_id"), call.body.note, call.user, _now()
    )
    return _credit(row)


@routes.post(
    "/api/v1/bank-credits/{credit_id:uuid}/refunded",
    body=NoteIn,
    returns=CreditOut,
    auth=_STAFF,
    responses={409: "The credit is not refund-due"},
)
async def credit_refunded(call: Call[NoteIn, None]) -> CreditOut:
    """Record that a refund-due credit was sent back; the ledger clears it.
    Audited."""
    row = await reconcile.mark_refunded(
        call.pool, call.path_uuid("credit_id"), call.body.note, call.user, _now()
    )
    return _credit(row)
