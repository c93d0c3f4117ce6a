"""Paying doctors over HTTP: a doctor's earnings and bank details, money
paid out by hand, and batches that pay every doctor of a clinic owed at
least a threshold.

Finance is the staff of the clinic and admins, the roles that record manual
payouts. A doctor reads and sets their own bank details, as do the clinic's
staff and admins. Another tenant's batch or doctor is a 404, as elsewhere in
payments. Storage, locking and the ledger are :mod:`.payouts.service` and
:mod:`.payouts.batches`; the bank details' checks, the line's states and the
file are :mod:`.payouts.batch`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from aiohttp import web
from pydantic import Field, StringConstraints, model_validator

from booking.payments.intent import Currency
from booking.payments.paging import OffsetQuery
from booking.payments.payouts import batch, batches, service
from booking.payments.payouts.batch import LineStatus
from booking.payments.payouts.details import Details, seal_clear_rows, sealer_of
from wadud.state import keys
from wadud.state.rows import from_row
from wadud.web.api import ApiModel, Call, Role, Routes

__all__ = ["lifespan", "routes"]

routes = Routes("payouts", "Doctors' bank details and payout batches for the bank's bulk upload.")

_FINANCE = {Role.CLINIC_STAFF, Role.ADMIN}
_ACCOUNT_READERS = {Role.DOCTOR, Role.CLINIC_STAFF, Role.ADMIN}

Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]
Amount = Annotated[int, Field(gt=0, le=10**12)]


# --- models -------------------------------------------------------------------


class PayoutAccountIn(ApiModel):
    iban: Annotated[str, StringConstraints(max_length=64)] = Field(
        description="ISO 13616 IBAN of PK, AE, QA or SA; spaces allowed, checked by mod 97."
    )
    account_title: Annotated[str, StringConstraints(max_length=200)] = Field(
        description="The account holder's name as the bank has it (ASCII, up to 100)."
    )


class PayoutAccount(ApiModel):
    doctor_id: UUID
    iban: str
    account_title: str
    updated_at: datetime


class BatchIn(ApiModel):
    threshold_minor: int = Field(
        gt=0,
        le=10**12,
        description="Doctors owed at least this much (minor units of the clinic's currency).",
    )


class BatchLine(ApiModel):
    id: UUID
    line_no: int
    doctor_id: UUID
    amount_minor: int
    currency: Currency
    iban_last4: str = Field(
        description="The last four characters of the line's IBAN; the whole IBAN and"
        " the account title are in the bank file (export.csv) only."
    )
    reference: str = Field(description="The transfer's reference in the bank file.")
    status: LineStatus
    failure_reason: str | None
    payout_id: UUID | None = Field(description="The payout the paid line posted.")
    settled_at: datetime | None


class SkippedDoctor(ApiModel):
    doctor_id: UUID
    payable_minor: int
    reason: batches.SkipReason


class Batch(ApiModel):
    id: UUID
    clinic_id: UUID
    reference: str
    currency: Currency
    threshold_minor: int
    status: Literal["open", "closed"]
    created_by: UUID | None
    created_at: datetime
    closed_at: datetime | None
    line_count: int
    total_minor: int
    paid_minor: int
    failed_minor: int
    pending_minor: int
    lines: list[BatchLine] | None = Field(
        default=None, description="The lines (one batch; absent in lists)."
    )
    skipped: list[SkippedDoctor] | None = Field(
        default=None, description="On creation: doctors owed the threshold but left out."
    )


class BatchesQuery(OffsetQuery):
    status: Literal["open", "closed"] | None = None


class LineMark(ApiModel):
    line_id: UUID | None = None
    reference: Annotated[str, StringConstraints(max_length=64)] | None = None
    status: Literal["paid", "failed"]
    reason: Reason = ""

    @model_validator(mode="after")
    def _one_name(self) -> LineMark:
        if (self.line_id is None) == (self.reference is None):
            raise ValueError("name the line by line_id or by reference, not both or neither")
        return self


class MarksIn(ApiModel):
    lines: list[LineMark] = Field(min_length=1, max_length=batch.MAX_LINES)


class DoctorBatchLine(ApiModel):
    """A doctor's line in a payout batch, as the earnings show it."""

    batch_id: UUID
    batch_reference: str
    batch_status: Literal["open", "closed"]
    batch_created_at: datetime
    reference: str
    amount_minor: int
    currency: Currency
    status: LineStatus
    failure_reason: str | None
    settled_at: datetime | None


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
    currencies: list[service.CurrencyEarnings]
    payout_batches: list[DoctorBatchLine] = Field(
        default=[], description="The doctor's latest payout-batch lines, newest first."
    )


# --- helpers --------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _line(row: Mapping[str, Any]) -> BatchLine:
    return from_row(BatchLine, row)


def _batch_out(
    row: Mapping[str, Any],
    lines: Sequence[Mapping[str, Any]] | None = None,
    skipped: Sequence[batches.Skipped] | None = None,
) -> Batch:
    return from_row(
        Batch,
        row,
        **batches.summary(row),
        lines=None if lines is None else [_line(r) for r in lines],
        skipped=None
        if skipped is None
        else [
            SkippedDoctor(doctor_id=s.doctor_id, payable_minor=s.payable_minor, reason=s.reason)
            for s in skipped
        ],
    )


# --- a doctor's bank details --------------------------------------------------------


def _account_out(row: Mapping[str, Any], details: Details) -> PayoutAccount:
    return PayoutAccount(
        doctor_id=row["doctor_id"],
        iban=details.iban,
        account_title=details.account_title,
        updated_at=row["updated_at"],
    )


@routes.put(
    "/api/v1/doctors/{doctor_id:uuid}/payout-account",
    body=PayoutAccountIn,
    returns=PayoutAccount,
    auth=_ACCOUNT_READERS,
    responses={422: "Not a valid IBAN of a supported country, or a title a bank file cannot carry"},
)
async def put_payout_account(call: Call[PayoutAccountIn, None]) -> PayoutAccount:
    """Set where a doctor is paid (the doctor, staff of the clinic, admins).

    The IBAN is checked (country, length, BBAN shape, ISO 13616 mod 97) and
    stored without spaces. Audited; lines already in a batch keep the details
    they were made with."""
    details = Details(batch.iban(call.body.iban), batch.account_title(call.body.account_title))
    row = await service.set_payout_account(
        call.pool, sealer_of(call.request.app), call.user, call.path_uuid("doctor_id"), details
    )
    return _account_out(row, details)


@routes.get(
    "/api/v1/doctors/{doctor_id:uuid}/payout-account",
    returns=PayoutAccount,
    auth=_ACCOUNT_READERS,
    responses={410: "The doctor's account was erased, and their sealed bank details with it"},
)
async def get_payout_account(call: Call[None, None]) -> PayoutAccount:
    """Where a doctor is paid; 404 until it is set."""
    row, details = await service.payout_account(
        call.pool, sealer_of(call.request.app), call.user, call.path_uuid("doctor_id")
    )
    return _account_out(row, details)


# --- batches ------------------------------------------------------------------------


@routes.post(
    "/api/v1/clinics/{clinic_id:uuid}/payout-batches",
    body=BatchIn,
    returns=Batch,
    status=201,
    auth=_FINANCE,
    responses={409: "No doctor of the clinic can be paid the threshold now"},
)
async def create_payout_batch(call: Call[BatchIn, None]) -> Batch:
    """Make a payout batch (staff of the clinic, admins).

    One line per doctor of the clinic whose payable balance, in the clinic's
    currency, is at least ``threshold_minor``, for that whole balance, to the
    doctor's payout account. Left out, and listed in ``skipped``: doctors
    without a payout account, doctors with a line in a batch still open, and
    doctors beyond the batch's 5,000 lines. Nothing is posted to the ledger
    until a line is marked paid; until then its amount is reserved (a manual
    payout cannot take it)."""
    me = call.user
    clinic_id = call.overseen_clinic()
    row, lines, skipped = await batches.create_batch(
        call.pool, me, clinic_id, call.body.threshold_minor, _now()
    )
    return _batch_out(row, lines, skipped)


@routes.get(
    "/api/v1/clinics/{clinic_id:uuid}/payout-batches",
    query=BatchesQuery,
    returns=list[Batch],
    auth=_FINANCE,
)
async def list_payout_batches(call: Call[None, BatchesQuery]) -> list[Batch]:
    """A clinic's payout batches with their totals, newest first (staff of the
    clinic, admins)."""
    q = call.query
    clinic_id = call.overseen_clinic()
    rows = await batches.batches_of(call.pool, clinic_id, q.status, q.limit, q.offset)
    return [_batch_out(r) for r in rows]


@routes.get("/api/v1/payout-batches/{batch_id:uuid}", returns=Batch, auth=_FINANCE)
async def get_payout_batch(call: Call[None, None]) -> Batch:
    """A payout batch with its lines (staff of its clinic, admins)."""
    row, lines = await batches.batch_with_lines(call.pool, call.user, call.path_uuid("batch_id"))
    return _batch_out(row, lines)


@routes.get(
    "/api/v1/payout-batches/{batch_id:uuid}/export.csv",
    returns={
        "content": {"text/csv": {"schema": {"type": "string"}}},
        "headers": {
            "Wadud-Batch-Lines": {"schema": {"type": "integer"}},
            "Wadud-Batch-Total-Minor": {"schema": {"type": "integer"}},
        },
    },
    auth=_FINANCE,
    responses={410: "A line's doctor was erased, and their sealed bank details with them"},
)
async def export_payout_batch(call: Call[None, None]) -> web.Response:
    """The batch as the bank's bulk-upload CSV (staff of its clinic, admins).

    Columns ``iban,account_title,amount,currency,reference``, amounts in major
    units (``1234.50``), one row per line in line order, every line whatever
    its status, CRLF line ends. The headers ``Wadud-Batch-Lines`` and
    ``Wadud-Batch-Total-Minor`` carry the count and the total to check the
    bank's summary against."""
    row, lines, details = await batches.bank_file_lines(
        call.pool, sealer_of(call.request.app), call.user, call.path_uuid("batch_id")
    )
    text = batch.bank_file(
        batch.FileLine(
            iban=d.iban,
            account_title=d.account_title,
            amount_minor=int(r["amount_minor"]),
            currency=Currency(r["currency"]),
            reference=r["reference"],
        )
        for r, d in zip(lines, details, strict=True)
    )
    return web.Response(
        text=text,
        content_type="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="{row["reference"]}.csv"',
            "Wadud-Batch-Lines": str(len(lines)),
            "Wadud-Batch-Total-Minor": str(sum(int(r["amount_minor"]) for r in lines)),
        },
    )


@routes.post(
    "/api/v1/payout-batches/{batch_id:uuid}/marks",
    body=MarksIn,
    returns=Batch,
    auth=_FINANCE,
    responses={
        409: "A line is settled the other way already",
        422: "A line the batch does not have, or one named twice",
    },
)
async def mark_payout_lines(call: Call[MarksIn, None]) -> Batch:
    """Record the bank's verdict on lines (staff of its clinic, admins).

    ``paid``: the ledger posts a payout of exactly the line's amount. ``failed``:
    nothing is posted and the amount is payable again. Repeating a verdict
    changes nothing; contradicting one is a 409. All lines of the request or
    none; the batch closes when no line is pending. Audited per line."""
    me = call.user
    marks = [
        batches.Mark(
            status=LineStatus(m.status), line_id=m.line_id, reference=m.reference, reason=m.reason
        )
        for m in call.body.lines
    ]
    row, lines = await batches.mark_lines(call.pool, me, call.path_uuid("batch_id"), marks, _now())
    return _batch_out(row, lines)


# --- a doctor's money -------------------------------------------------------------------


@routes.post(
    "/api/v1/doctors/{doctor_id:uuid}/payouts",
    body=PayoutIn,
    returns=Payout,
    status=201,
    auth=_FINANCE,
    responses={409: "More than the doctor's payable balance"},
)
async def create_payout(call: Call[PayoutIn, None]) -> Payout:
    """Record money paid out to a doctor (staff of the clinic, admins).

    Posts a payout to the ledger; refused beyond the doctor's payable balance
    in the doctor's currency, less what pending payout-batch lines reserve."""
    body = call.body
    row, payable = await service.pay_doctor(
        call.pool, call.user, call.path_uuid("doctor_id"), body.amount_minor, body.reference
    )
    return Payout(**dict(row), payable_minor=payable)


@routes.get(
    "/api/v1/doctors/{doctor_id:uuid}/earnings",
    returns=Earnings,
    auth={Role.DOCTOR, Role.CLINIC_STAFF, Role.ADMIN},
)
async def doctor_earnings(call: Call[None, None]) -> Earnings:
    """A doctor's earnings per currency, from the ledger (the doctor, staff of
    the clinic, admins): gross, refunds, commission, paid out, payable."""
    doctor_id = call.path_uuid("doctor_id")
    figures, lines = await service.earnings_of(call.pool, call.user, doctor_id)
    return Earnings(
        doctor_id=doctor_id,
        currencies=figures,
        payout_batches=[from_row(DoctorBatchLine, r) for r in lines],
    )


# --- lifespan ---------------------------------------------------------------------------


async def lifespan(app: web.Application) -> AsyncIterator[None]:
    """Bank details stored in clear before migration 0024 are sealed at start."""
    await seal_clear_rows(app[keys.DB], sealer_of(app))
    yield
