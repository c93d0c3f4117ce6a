"""Payout batches over HTTP: a doctor's bank details, and batches that pay
every doctor of a clinic owed at least a threshold.

Finance is the staff of the clinic and admins, the roles that record manual
payouts. A doctor reads and sets their own bank details, as do the clinic's
staff and admins. Another tenant's batch or doctor is a 404, as elsewhere in
payments. Storage, locking and the ledger are :mod:`.payouts.batches`; the bank
details' checks, the line's states and the file are :mod:`.batch`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

import asyncpg
from aiohttp import web
from pydantic import Field, StringConstraints, model_validator

from booking.api import doctors
from booking.payments.intent import Currency
from booking.payments.paging import OffsetQuery
from booking.payments.payouts import batch, batches
from booking.payments.payouts.batch import LineStatus
from booking.payments.payouts.details import SEALED_COLUMNS, Details, sealer_of
from wadud.api import ApiModel, Call, Principal, Role, Routes
from wadud.errors import NotFound
from wadud.rows import from_row

__all__ = ["DoctorBatchLine", "doctor_batch_lines", "routes"]

routes = Routes("payouts", "Doctors' bank details and payout batches for the bank's bulk upload.")

_FINANCE = {Role.CLINIC_STAFF, Role.ADMIN}
_ACCOUNT_READERS = {Role.DOCTOR, Role.CLINIC_STAFF, Role.ADMIN}

Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]


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


# --- helpers --------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


async def doctor_of(
    conn: asyncpg.Connection, me: Principal, doctor_id: UUID, *, lock: bool = False
) -> asyncpg.Record:
    """The doctor ``doctor_id`` (id, clinic, user, currency) if ``me`` may see
    its money: the doctor, staff of its clinic, admins; 404 for anyone else."""
    # NO KEY UPDATE: serialises payouts of one doctor without blocking the
    # KEY SHARE locks that booking inserts take on the doctor row.
    row = await conn.fetchrow(
        "SELECT id, clinic_id, user_id, currency FROM doctors WHERE id = $1"
        + (" FOR NO KEY UPDATE" if lock else ""),
        doctor_id,
    )
    if row is None or not doctors.may_manage(me, row):
        raise NotFound("no such doctor")
    return row


async def _batch(
    conn: asyncpg.Connection, me: Principal, batch_id: UUID, *, lock: bool = False
) -> asyncpg.Record:
    if lock:
        # Marks of one batch wait for each other (batches.mark_lines).
        await conn.execute("SELECT 1 FROM payout_batches WHERE id = $1 FOR UPDATE", batch_id)
    row = await conn.fetchrow(
        f"SELECT {batches.BATCH_COLUMNS} FROM payout_batches b WHERE b.id = $1", batch_id
    )
    if row is None or not me.oversees(row["clinic_id"]):
        raise NotFound("no such payout batch")
    return row


def _line(row: asyncpg.Record) -> BatchLine:
    return from_row(BatchLine, row)


def _batch_out(
    row: asyncpg.Record,
    lines: list[asyncpg.Record] | None = None,
    skipped: list[batches.Skipped] | None = None,
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


async def _lines(conn: asyncpg.Connection, batch_id: UUID) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            f"""SELECT {batches.LINE_COLUMNS} FROM payout_batch_lines l
                WHERE l.batch_id = $1 ORDER BY l.line_no""",
            batch_id,
        )
    )


async def doctor_batch_lines(
    conn: asyncpg.Connection | asyncpg.Pool, doctor_id: UUID
) -> list[DoctorBatchLine]:
    """The doctor's latest batch lines, newest batch first (for the earnings)."""
    return [from_row(DoctorBatchLine, r) for r in await batches.doctor_lines(conn, doctor_id)]


# --- a doctor's bank details --------------------------------------------------------


def _account_out(row: asyncpg.Record, details: Details) -> PayoutAccount:
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
    sealer = sealer_of(call.request.app)
    async with call.pool.acquire() as conn, conn.transaction():
        doctor = await doctor_of(conn, call.user, call.path_uuid("doctor_id"))
        sealed = await sealer.seal(conn, doctor["id"], doctor["user_id"], details)
        row = await batches.save_account(conn, doctor, sealed=sealed, actor=call.user)
    return _account_out(row, details)


@routes.get(
    "/api/v1/doctors/{doctor_id:uuid}/payout-account",
    returns=PayoutAccount,
    auth=_ACCOUNT_READERS,
    responses={410: "The doctor's account was erased, and their sealed bank details with it"},
)
async def get_payout_account(call: Call[None, None]) -> PayoutAccount:
    """Where a doctor is paid; 404 until it is set."""
    async with call.pool.acquire() as conn:
        doctor = await doctor_of(conn, call.user, call.path_uuid("doctor_id"))
        row = await conn.fetchrow(
            f"""SELECT {SEALED_COLUMNS.format(t="a")}, a.updated_at
                FROM doctor_payout_accounts a WHERE a.doctor_id = $1""",
            doctor["id"],
        )
        if row is None:
            raise NotFound("the doctor has no payout account yet")
        (details,) = await sealer_of(call.request.app).open_rows(conn, [row])
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
    clinic_id = call.path_uuid("clinic_id")
    if not me.oversees(clinic_id):
        raise NotFound("no such clinic")
    async with call.pool.acquire() as conn:
        async with conn.transaction():
            created = await batches.create_batch(
                conn,
                clinic_id=clinic_id,
                threshold_minor=call.body.threshold_minor,
                actor=me,
                now=_now(),
            )
        row = await _batch(conn, me, created.batch_id)
        lines = await _lines(conn, created.batch_id)
    return _batch_out(row, lines, created.skipped)


@routes.get(
    "/api/v1/clinics/{clinic_id:uuid}/payout-batches",
    query=BatchesQuery,
    returns=list[Batch],
    auth=_FINANCE,
)
async def list_payout_batches(call: Call[None, BatchesQuery]) -> list[Batch]:
    """A clinic's payout batches with their totals, newest first (staff of the
    clinic, admins)."""
    me, q = call.user, call.query
    clinic_id = call.path_uuid("clinic_id")
    if not me.oversees(clinic_id):
        raise NotFound("no such clinic")
    rows = await call.pool.fetch(
        f"""SELECT {batches.BATCH_COLUMNS} FROM payout_batches b
            WHERE b.clinic_id = $1 AND ($2::text IS NULL OR b.status = $2)
            ORDER BY b.created_at DESC, b.id LIMIT $3 OFFSET $4""",
        clinic_id,
        q.status,
        q.limit,
        q.offset,
    )
    return [_batch_out(r) for r in rows]


@routes.get("/api/v1/payout-batches/{batch_id:uuid}", returns=Batch, auth=_FINANCE)
async def get_payout_batch(call: Call[None, None]) -> Batch:
    """A payout batch with its lines (staff of its clinic, admins)."""
    async with call.pool.acquire() as conn:
        row = await _batch(conn, call.user, call.path_uuid("batch_id"))
        lines = await _lines(conn, row["id"])
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
    async with call.pool.acquire() as conn:
        row = await _batch(conn, call.user, call.path_uuid("batch_id"))
        lines = await _lines(conn, row["id"])
        details = await sealer_of(call.request.app).open_rows(conn, lines)
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
    async with call.pool.acquire() as conn:
        async with conn.transaction():
            row = await _batch(conn, me, call.path_uuid("batch_id"), lock=True)
            await batches.mark_lines(conn, row, marks, actor=me, now=_now())
        row = await _batch(conn, me, row["id"])
        lines = await _lines(conn, row["id"])
    return _batch_out(row, lines)
