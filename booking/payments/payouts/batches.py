"""Payout batches in PostgreSQL: creating a batch, reading batches as
finance may (the staff of their clinic, admins; another tenant's batch is a
404), the bank's file, and marking its lines.

The ledger posts a batch line only when it is marked paid, as a ``payout``
exactly like a manual one (a ``payouts`` row whose id is the posting's
reference), so the ledger holds what the bank paid and nothing else. A
pending line reserves its amount instead: a manual payout may take only what
is payable beyond the doctor's pending lines
(:func:`booking.payments.payouts.service.payable_and_pending`). A
failed line posts nothing and stops reserving, so its amount is payable again.

Concurrency. Everything that changes what a doctor may still be paid locks
the doctor's row ``FOR NO KEY UPDATE`` (the manual payout's lock, which does
not block the ``KEY SHARE`` locks bookings take), several doctors in id order
so two writers never wait on each other crosswise. Creating a batch locks its
candidates first and then reads their balances and open batches in a fresh
statement, so a second creation that waited for the first sees the first's
lines and leaves those doctors out. Marking locks the batch, then its
doctors. The unique index on a doctor's pending line backs this up in the
database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal
from uuid import UUID, uuid4

import asyncpg

from booking.payments import ledger
from booking.payments.errors import PaymentError
from booking.payments.intent import Currency, Money
from booking.payments.payouts.batch import (
    MAX_LINES,
    LineSettled,
    LineStatus,
    batch_reference,
    line_reference,
    settle,
)
from booking.payments.payouts.details import Details, PayoutSealer
from booking.payments.postings import post_transaction
from wadud.errors import Conflict, NotFound
from wadud.messaging import outbox
from wadud.principal import Principal
from wadud.state import audit

__all__ = [
    "BATCH_COLUMNS",
    "LINE_COLUMNS",
    "Created",
    "DuplicateLine",
    "Mark",
    "NoPayableDoctors",
    "SkipReason",
    "Skipped",
    "UnknownLine",
    "bank_file_lines",
    "batch_of",
    "batch_with_lines",
    "batches_of",
    "create_batch",
    "doctor_lines",
    "lines_of",
    "lock_doctors",
    "mark_lines",
    "summary",
]

#: A batch with its lines' totals (``FROM payout_batches b``, grouped by b.id).
BATCH_COLUMNS: Final = """b.id, b.clinic_id, b.reference, b.currency, b.threshold_minor,
    b.status, b.created_by, b.created_at, b.closed_at,
    (SELECT count(*) FROM payout_batch_lines l WHERE l.batch_id = b.id) AS line_count,
    (SELECT COALESCE(sum(l.amount_minor), 0) FROM payout_batch_lines l
       WHERE l.batch_id = b.id) AS total_minor,
    (SELECT COALESCE(sum(l.amount_minor), 0) FROM payout_batch_lines l
       WHERE l.batch_id = b.id AND l.status = 'paid') AS paid_minor,
    (SELECT COALESCE(sum(l.amount_minor), 0) FROM payout_batch_lines l
       WHERE l.batch_id = b.id AND l.status = 'failed') AS failed_minor"""

#: A line, its bank details still sealed (:mod:`.payouts.details` opens them).
LINE_COLUMNS: Final = """l.id, l.batch_id, l.line_no, l.doctor_id, l.amount_minor, l.currency,
    COALESCE(l.iban_last4, right(l.iban, 4)) AS iban_last4, l.key_id, l.nonce, l.sealed,
    l.iban, l.account_title, l.reference, l.status, l.failure_reason, l.payout_id,
    l.settled_at"""

# What the ledger says a doctor is owed, in the doctor's currency.
_PAYABLE: Final = """(SELECT COALESCE(-sum(e.amount_minor), 0) FROM ledger_entries e
    WHERE e.account = 'doctor_payable:' || d.id::text AND e.currency = d.currency)"""


class NoPayableDoctors(PaymentError, Conflict):
    """No doctor of the clinic is owed the threshold and can be put in a batch."""

    http_status = 409
    code = "no_payable_doctors"


class UnknownLine(PaymentError, LookupError):
    """A line the batch does not have."""

    http_status = 422
    code = "unknown_payout_line"


class DuplicateLine(PaymentError, ValueError):
    """One request names a line twice."""

    http_status = 422
    code = "duplicate_payout_line"


SkipReason = Literal["no_payout_account", "in_open_batch", "batch_full"]


@dataclass(frozen=True, slots=True)
class Skipped:
    """A doctor owed the threshold but left out of the batch, and why:
    ``no_payout_account``, ``in_open_batch`` or ``batch_full``."""

    doctor_id: UUID
    payable_minor: int
    reason: SkipReason


@dataclass(frozen=True, slots=True)
class Created:
    batch_id: UUID
    skipped: list[Skipped]


@dataclass(frozen=True, slots=True)
class Mark:
    """The bank's verdict on one line, named by its id or its reference."""

    status: LineStatus
    line_id: UUID | None = None
    reference: str | None = None
    reason: str = ""


async def lock_doctors(conn: asyncpg.Connection, doctor_ids: Sequence[UUID]) -> list[UUID]:
    """Lock doctors' rows in id order (see the module docstring); the ids found."""
    rows = await conn.fetch(
        "SELECT id FROM doctors WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE",
        list(doctor_ids),
    )
    return [r["id"] for r in rows]


async def create_batch(
    pool: asyncpg.Pool, me: Principal, clinic_id: UUID, threshold_minor: int, now: datetime
) -> tuple[asyncpg.Record, list[asyncpg.Record], list[Skipped]]:
    """A batch of every doctor of the clinic owed at least ``threshold_minor``
    in the clinic's currency, with bank details and no line in an open batch,
    made by ``me``: the batch, its lines, and the doctors left out.
    :class:`NoPayableDoctors` when nobody qualifies."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            created = await _insert_batch(
                conn, clinic_id=clinic_id, threshold_minor=threshold_minor, actor=me, now=now
            )
        row = await batch_of(conn, me, created.batch_id)
        lines = await lines_of(conn, created.batch_id)
    return row, lines, created.skipped


async def _insert_batch(
    conn: asyncpg.Connection,
    *,
    clinic_id: UUID,
    threshold_minor: int,
    actor: Principal,
    now: datetime,
) -> Created:
    """:func:`create_batch`'s writes, inside the caller's transaction."""
    clinic = await conn.fetchrow("SELECT id, currency FROM clinics WHERE id = $1", clinic_id)
    if clinic is None:
        raise NotFound("no such clinic")
    currency = Currency(clinic["currency"])
    candidates = await conn.fetch(
        f"""SELECT d.id FROM doctors d
            WHERE d.clinic_id = $1 AND d.currency = $2 AND {_PAYABLE} >= $3""",
        clinic_id,
        currency.value,
        threshold_minor,
    )
    locked = await lock_doctors(conn, [r["id"] for r in candidates])
    # A fresh statement after the locks: it sees what a creation we waited
    # for committed (READ COMMITTED takes a snapshot per statement).
    rows = await conn.fetch(
        f"""SELECT d.id, {_PAYABLE} AS payable, a.doctor_id IS NOT NULL AS has_account,
                   EXISTS (SELECT 1 FROM payout_batch_lines l
                             JOIN payout_batches b ON b.id = l.batch_id
                           WHERE l.doctor_id = d.id AND b.status = 'open') AS in_open_batch
            FROM doctors d LEFT JOIN doctor_payout_accounts a ON a.doctor_id = d.id
            WHERE d.id = ANY($1::uuid[]) ORDER BY d.id""",
        locked,
    )
    batch_id = uuid4()
    reference = batch_reference(now.strftime("%Y%m%d"), batch_id.hex)
    taken: list[asyncpg.Record] = []
    skipped: list[Skipped] = []
    for r in rows:
        payable = int(r["payable"])
        if payable < threshold_minor:
            continue  # paid or refunded since the candidates were read
        if r["in_open_batch"]:
            skipped.append(Skipped(r["id"], payable, "in_open_batch"))
        elif not r["has_account"]:
            skipped.append(Skipped(r["id"], payable, "no_payout_account"))
        elif len(taken) >= MAX_LINES:
            skipped.append(Skipped(r["id"], payable, "batch_full"))
        else:
            taken.append(r)
    if not taken:
        raise NoPayableDoctors(
            f"no doctor can be paid {Money(threshold_minor, currency)} or more now"
            f" ({len(skipped)} owed it but skipped)",
            skipped=[{"doctor_id": str(s.doctor_id), "reason": s.reason} for s in skipped],
        )
    try:
        # Each line copies its doctor's bank details as they are, sealed
        # (they open as the doctor's, payouts.details), read under the locks.
        await conn.execute(
            """WITH b AS (
                   INSERT INTO payout_batches
                       (id, clinic_id, reference, currency, threshold_minor, created_by,
                        created_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id)
               INSERT INTO payout_batch_lines
                   (batch_id, clinic_id, line_no, doctor_id, amount_minor, currency, iban,
                    account_title, key_id, nonce, sealed, iban_last4, reference)
               SELECT b.id, $2, x.n, x.doctor_id, x.amount, $4, a.iban, a.account_title,
                      a.key_id, a.nonce, a.sealed, a.iban_last4, x.ref
               FROM b, unnest($8::int[], $9::uuid[], $10::bigint[], $11::text[])
                       AS x(n, doctor_id, amount, ref)
                   JOIN doctor_payout_accounts a ON a.doctor_id = x.doctor_id""",
            batch_id,
            clinic_id,
            reference,
            currency.value,
            threshold_minor,
            actor.user_id,
            now,
            list(range(1, len(taken) + 1)),
            [r["id"] for r in taken],
            [int(r["payable"]) for r in taken],
            [line_reference(reference, n) for n in range(1, len(taken) + 1)],
        )
    except asyncpg.UniqueViolationError:
        # The locks make this unreachable; the index makes it harmless.
        raise Conflict("a concurrent batch took one of these doctors; try again") from None
    total = sum(int(r["payable"]) for r in taken)
    await outbox.emit(
        conn,
        "payout_batch.created",
        {
            "batch_id": str(batch_id),
            "clinic_id": str(clinic_id),
            "reference": reference,
            "lines": len(taken),
            "total_minor": total,
            "currency": currency.value,
        },
    )
    await audit.record(
        conn,
        actor=actor,
        action="payout_batch.create",
        clinic=clinic_id,
        object=f"payout_batch/{batch_id}",
        detail={
            "lines": len(taken),
            "total_minor": total,
            "currency": currency.value,
            "threshold_minor": threshold_minor,
            "skipped": len(skipped),
        },
    )
    return Created(batch_id, skipped)


def _resolve(lines: Sequence[asyncpg.Record], marks: Sequence[Mark]) -> list[asyncpg.Record]:
    by_id = {r["id"]: r for r in lines}
    by_ref = {r["reference"]: r for r in lines}
    found: list[asyncpg.Record] = []
    unknown: list[str] = []
    for m in marks:
        line = by_id.get(m.line_id) if m.line_id is not None else by_ref.get(m.reference or "")
        if line is None:
            unknown.append(str(m.line_id) if m.line_id is not None else str(m.reference))
        else:
            found.append(line)
    if unknown:
        raise UnknownLine(f"the batch has no line {', '.join(unknown[:10])}", lines=unknown)
    seen: set[UUID] = set()
    twice: list[str] = []
    for r in found:
        if r["id"] in seen:
            twice.append(r["reference"])
        seen.add(r["id"])
    if twice:
        raise DuplicateLine(f"line {', '.join(twice[:10])} named twice", lines=twice)
    return found


async def mark_lines(
    pool: asyncpg.Pool, me: Principal, batch_id: UUID, marks: Sequence[Mark], now: datetime
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """Apply the bank's verdicts to lines of the batch ``batch_id``, as
    ``me`` (404 for a batch ``me`` may not see), all or none. Paid lines post
    their payouts; the batch closes with its last line. Returns the batch and
    its lines as they now are."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            row = await batch_of(conn, me, batch_id, lock=True)
            await _apply_marks(conn, row, marks, actor=me, now=now)
        row = await batch_of(conn, me, row["id"])
        lines = await lines_of(conn, row["id"])
    return row, lines


async def _apply_marks(
    conn: asyncpg.Connection,
    batch: asyncpg.Record,
    marks: Sequence[Mark],
    *,
    actor: Principal,
    now: datetime,
) -> int:
    """:func:`mark_lines`'s writes on ``batch`` (its row locked by the
    caller's transaction); the number of lines that changed."""
    lines = await conn.fetch(
        f"SELECT {LINE_COLUMNS} FROM payout_batch_lines l WHERE l.batch_id = $1", batch["id"]
    )
    found = _resolve(lines, marks)
    changes: list[tuple[asyncpg.Record, LineStatus, str]] = []
    refused: list[str] = []
    for line, mark in zip(found, marks, strict=True):
        current = LineStatus(line["status"])
        try:
            to = settle(current, mark.status)
        except LineSettled:
            refused.append(f"{line['reference']} is {current.value}")
            continue
        if to is not current:
            changes.append((line, to, mark.reason))
    if refused:
        raise LineSettled(f"settled lines cannot change: {'; '.join(refused[:10])}", lines=refused)
    if not changes:
        return 0
    await lock_doctors(conn, sorted({line["doctor_id"] for line, _, _ in changes}))
    paying = [line for line, to, _ in changes if to is LineStatus.PAID]
    payout_of: dict[UUID, UUID] = {line["id"]: uuid4() for line in paying}
    if paying:
        await conn.execute(
            """INSERT INTO payouts (id, clinic_id, doctor_id, amount_minor, currency, reference,
                                    created_by, created_at)
               SELECT x.id, $1, x.doctor_id, x.amount, $2, x.ref, $3, $4
               FROM unnest($5::uuid[], $6::uuid[], $7::bigint[], $8::text[])
                    AS x(id, doctor_id, amount, ref)""",
            batch["clinic_id"],
            batch["currency"],
            actor.user_id,
            now,
            [payout_of[line["id"]] for line in paying],
            [line["doctor_id"] for line in paying],
            [line["amount_minor"] for line in paying],
            [line["reference"] for line in paying],
        )
        for line in paying:
            txn = ledger.payout(
                str(line["doctor_id"]),
                Money(int(line["amount_minor"]), Currency(line["currency"])),
                str(payout_of[line["id"]]),
            )
            await post_transaction(conn, txn, clinic_id=batch["clinic_id"])
    await conn.execute(
        """UPDATE payout_batch_lines l
           SET status = x.status, payout_id = x.payout_id,
               failure_reason = NULLIF(x.reason, ''), settled_by = $1, settled_at = $2
           FROM unnest($3::uuid[], $4::text[], $5::uuid[], $6::text[])
                AS x(id, status, payout_id, reason)
           WHERE l.id = x.id""",
        actor.user_id,
        now,
        [line["id"] for line, _, _ in changes],
        [to.value for _, to, _ in changes],
        [payout_of.get(line["id"]) for line, _, _ in changes],
        [reason for _, _, reason in changes],
    )
    await conn.execute(
        """UPDATE payout_batches SET status = 'closed', closed_at = $2
           WHERE id = $1 AND status = 'open' AND NOT EXISTS (
               SELECT 1 FROM payout_batch_lines WHERE batch_id = $1 AND status = 'pending')""",
        batch["id"],
        now,
    )
    by_status: dict[LineStatus, list[asyncpg.Record]] = {}
    for line, to, _ in changes:
        by_status.setdefault(to, []).append(line)
    await outbox.emit(
        conn,
        "payout_batch.marked",
        {
            "batch_id": str(batch["id"]),
            "clinic_id": str(batch["clinic_id"]),
            **{
                f"{status.value}_minor": sum(int(r["amount_minor"]) for r in rows)
                for status, rows in by_status.items()
            },
            "lines": len(changes),
        },
    )
    for status, rows in sorted(by_status.items()):
        await audit.record_many(
            conn,
            actor=actor,
            action=f"payout_line.{status.value}",
            entries=[
                audit.AuditEntry(object=f"payout_line/{r['id']}", clinic=batch["clinic_id"])
                for r in rows
            ],
            detail={"batch_id": str(batch["id"])},
        )
    return len(changes)


async def batch_of(
    conn: asyncpg.Connection, me: Principal, batch_id: UUID, *, lock: bool = False
) -> asyncpg.Record:
    """The batch ``batch_id`` with its totals, if ``me`` may see it (404
    otherwise); ``lock``: marks of one batch wait for each other."""
    if lock:
        await conn.execute("SELECT 1 FROM payout_batches WHERE id = $1 FOR UPDATE", batch_id)
    row = await conn.fetchrow(
        f"SELECT {BATCH_COLUMNS} FROM payout_batches b WHERE b.id = $1", batch_id
    )
    if row is None or not me.oversees(row["clinic_id"]):
        raise NotFound("no such payout batch")
    return row


async def lines_of(conn: asyncpg.Connection, batch_id: UUID) -> list[asyncpg.Record]:
    """The batch's lines in line order, their bank details still sealed."""
    return list(
        await conn.fetch(
            f"""SELECT {LINE_COLUMNS} FROM payout_batch_lines l
                WHERE l.batch_id = $1 ORDER BY l.line_no""",
            batch_id,
        )
    )


async def batch_with_lines(
    pool: asyncpg.Pool, me: Principal, batch_id: UUID
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """The batch and its lines, if ``me`` may see it (404 otherwise)."""
    async with pool.acquire() as conn:
        row = await batch_of(conn, me, batch_id)
        lines = await lines_of(conn, row["id"])
    return row, lines


async def bank_file_lines(
    pool: asyncpg.Pool, sealer: PayoutSealer, me: Principal, batch_id: UUID
) -> tuple[asyncpg.Record, list[asyncpg.Record], list[Details]]:
    """The batch, its lines, and each line's bank details opened, for the
    bank's file (404 for a batch ``me`` may not see;
    :class:`~booking.payments.payouts.details.DetailsErased` when a line's
    doctor was erased)."""
    async with pool.acquire() as conn:
        row = await batch_of(conn, me, batch_id)
        lines = await lines_of(conn, row["id"])
        details = await sealer.open_rows(conn, lines)
    return row, lines, details


async def batches_of(
    pool: asyncpg.Pool, clinic_id: UUID, status: str | None, limit: int, offset: int
) -> list[asyncpg.Record]:
    """The clinic's batches with their totals (of ``status`` when given),
    newest first."""
    return list(
        await pool.fetch(
            f"""SELECT {BATCH_COLUMNS} FROM payout_batches b
                WHERE b.clinic_id = $1 AND ($2::text IS NULL OR b.status = $2)
                ORDER BY b.created_at DESC, b.id LIMIT $3 OFFSET $4""",
            clinic_id,
            status,
            limit,
            offset,
        )
    )


async def doctor_lines(
    conn: asyncpg.Connection | asyncpg.Pool, doctor_id: UUID, *, limit: int = 20
) -> list[asyncpg.Record]:
    """The doctor's latest batch lines with their batch's reference and status."""
    return list(
        await conn.fetch(
            f"""SELECT {LINE_COLUMNS}, b.reference AS batch_reference,
                       b.status AS batch_status, b.created_at AS batch_created_at
                FROM payout_batch_lines l JOIN payout_batches b ON b.id = l.batch_id
                WHERE l.doctor_id = $1
                ORDER BY b.created_at DESC, l.id LIMIT $2""",
            doctor_id,
            limit,
        )
    )


def summary(row: asyncpg.Record) -> dict[str, Any]:
    """A batch row's totals, with what is still pending."""
    total, paid, failed = int(row["total_minor"]), int(row["paid_minor"]), int(row["failed_minor"])
    return {
        "line_count": int(row["line_count"]),
        "total_minor": total,
        "paid_minor": paid,
        "failed_minor": failed,
        "pending_minor": total - paid - failed,
    }
