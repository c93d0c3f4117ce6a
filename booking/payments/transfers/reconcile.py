"""Bank transfer reconciliation: money that reached the platform's account,
from a bank statement or confirmed by hand, settled against its transfer or
owed back, and finance's record of sending it back.

The intent moves through :mod:`booking.payments.checkout.verdicts`, as
every gateway's does. Rules kept here:

* **Lock order**: the booking row, then its intent, then a credit, as
  cancellation does (booking first). A transfer is confirmed only while its
  booking is ``held`` and its hold has not lapsed, checked under those locks,
  so the confirmation can never be refused half way.
* **Never a silent credit**: money that arrives for a transfer that expired,
  was cancelled or was paid already becomes a ``refund_due`` credit with a
  ledger posting (:func:`booking.payments.transfers.core.refund_due`) that
  owes it back to the patient; nothing goes to revenue or to the doctor.
* **Audit**: every confirmation (statement or by hand), every manual match,
  every refund-due and refund-sent decision is an audit row, written last in
  its transaction (:mod:`wadud.state.audit`). Notes are free text and stay out of
  the audit detail (the chain can never be erased).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from uuid import UUID, uuid4

import asyncpg

from booking.bookings import transitions as bookings
from booking.lifecycle import BookingEvent, BookingState
from booking.payments.checkout import settle
from booking.payments.checkout.verdicts import apply_verdict
from booking.payments.gateway import BANK_TRANSFER, PaymentStatus, Verdict
from booking.payments.intent import Currency, IntentEvent, IntentState, Money
from booking.payments.postings import move_intent, post_transaction
from booking.payments.rows import INTENT_COLUMNS, money, payment_payload
from booking.payments.transfers.core import (
    LIVE,
    CreditNotOpen,
    RejectedLine,
    StatementLine,
    TransferAmountMismatch,
    TransferError,
    UnknownTransfer,
    parse_statement,
    refund_due,
    refund_sent,
)
from wadud.errors import Conflict, NotFound
from wadud.messaging import outbox
from wadud.principal import Principal
from wadud.state import audit

__all__ = [
    "CONFIRMED",
    "CREDIT_COLUMNS",
    "AlreadyConfirmed",
    "Imported",
    "confirm_by_hand",
    "credits_of",
    "import_statement",
    "mark_refund_due",
    "mark_refunded",
]

CREDIT_COLUMNS: Final = (
    "id, clinic_id, source, statement_id, line_no, booked_on, amount_minor, currency,"
    " narration, bank_txn_id, reference, status, reason, payment_intent_id, note,"
    " resolved_by, resolved_at, created_at"
)


class AlreadyConfirmed(TransferError, Conflict):
    """The transfer was confirmed already; a second confirmation by hand is refused."""

    http_status = 409
    code = "already_confirmed"


# --- settling: confirmed, or owed back --------------------------------------------------

#: The event of a confirmed transfer (beside payment.succeeded): the
#: receipt names the reference the patient wrote on the transfer.
CONFIRMED: Final = "payment.bank_transfer.confirmed"


@dataclass(frozen=True, slots=True)
class _Target:
    """A transfer and its booking, both locked."""

    intent: asyncpg.Record
    booking: asyncpg.Record


async def _lock_transfer(
    conn: asyncpg.Connection, reference: str, clinic_id: UUID | None
) -> _Target | None:
    """Lock the booking, then the intent, of the transfer ``reference``
    (of ``clinic_id`` when given)."""
    found = await conn.fetchrow(
        """SELECT id, booking_id FROM payment_intents
           WHERE gateway = $1 AND gateway_ref = $2 AND ($3::uuid IS NULL OR clinic_id = $3)""",
        BANK_TRANSFER,
        reference,
        clinic_id,
    )
    if found is None:
        return None
    booking = await conn.fetchrow(
        "SELECT * FROM bookings WHERE id = $1 FOR UPDATE", found["booking_id"]
    )
    intent = await conn.fetchrow(
        f"SELECT {INTENT_COLUMNS} FROM payment_intents WHERE id = $1 FOR UPDATE", found["id"]
    )
    assert booking is not None
    assert intent is not None
    return _Target(intent, booking)


async def _settle(
    conn: asyncpg.Connection,
    target: _Target,
    now: dt.datetime,
    *,
    default_bp: int,
    source: str,
) -> tuple[str, str | None, asyncpg.Record]:
    """Apply money that arrived for ``target`` (amount already checked):
    ("matched", None, intent) when it confirms the booking, or
    ("refund_due", why, intent) when the transfer can no longer take it."""
    intent, booking = target.intent, target.booking
    live = intent["status"] in LIVE
    hold = booking["hold_expires_at"]
    if live and booking["status"] == BookingState.HELD.value and hold is not None and hold > now:
        verdict = Verdict(
            BANK_TRANSFER,
            intent["gateway_ref"],
            PaymentStatus.SUCCEEDED,
            money(intent),
            "",
            "",
            source,
        )
        row = await apply_verdict(conn, verdict, default_bp=default_bp, locked=intent)
        # The receipt names the reference the patient wrote on the transfer.
        await outbox.emit(
            conn, CONFIRMED, payment_payload(row, reference=row["gateway_ref"], source=source)
        )
        return "matched", None, row
    if live:
        # The hold lapsed and no sweep has closed it yet: close it now, so
        # the intent and the booking say what happened.
        why = "bank transfer window closed unpaid"
        intent = await move_intent(
            conn,
            intent,
            IntentEvent.EXPIRE,
            {"reason": why},
            announce="payment.expired",
            announce_extra={"reason": why},
            failure_reason=why,
        )
        if booking["status"] == BookingState.HELD.value:
            await bookings.apply_event(
                conn,
                booking,
                BookingEvent.EXPIRE_HOLD,
                actor_id=None,
                detail={"hold_expires_at": hold.isoformat() if hold else None},
                now=now,
            )
        return "refund_due", "arrived_after_expiry", intent
    if intent["status"] in (IntentState.SUCCEEDED.value, IntentState.PARTIALLY_REFUNDED.value):
        return "refund_due", "paid_already", intent
    return "refund_due", f"arrived_after_{intent['status']}", intent


async def _post_refund_due(
    conn: asyncpg.Connection,
    credit_id: UUID,
    amount: Money,
    clinic_id: UUID,
    intent: asyncpg.Record | None,
) -> None:
    await post_transaction(
        conn,
        refund_due(amount, str(credit_id)),
        clinic_id=clinic_id,
        payment_intent_id=intent["id"] if intent is not None else None,
        booking_id=intent["booking_id"] if intent is not None else None,
    )
    await outbox.emit(
        conn,
        "payment.bank_transfer.refund_due",
        _credit_payload(credit_id, amount, clinic_id, intent),
    )


def _credit_payload(
    credit_id: UUID, amount: Money, clinic_id: UUID, intent: asyncpg.Record | None
) -> dict[str, Any]:
    """A credit's outbox event: the patient's too when it paid their transfer."""
    payload: dict[str, Any] = {
        "credit_id": str(credit_id),
        "clinic_id": str(clinic_id),
        "amount_minor": amount.amount_minor,
        "currency": amount.currency.value,
    }
    if intent is not None:
        payload.update(
            payment_id=str(intent["id"]),
            booking_id=str(intent["booking_id"]),
            patient_id=str(intent["patient_id"]),
            reference=intent["gateway_ref"],
        )
    return payload


# --- statements ---------------------------------------------------------------------------


@dataclass
class Imported:
    """What an import did: the statement's id, its credits by outcome, the
    lines it rejected and how many it had seen before."""

    statement_id: UUID
    credits: list[asyncpg.Record] = field(default_factory=list)
    rejected: list[RejectedLine] = field(default_factory=list)
    duplicates: int = 0

    def count(self, status: str) -> int:
        return sum(1 for c in self.credits if c["status"] == status)


async def import_statement(
    pool: asyncpg.Pool,
    clinic_id: UUID,
    data: bytes,
    actor: Principal,
    now: dt.datetime,
    *,
    default_bp: int,
) -> Imported:
    """Import a CSV statement for ``clinic_id`` in one transaction: every
    credit is stored; a credit naming exactly one of the clinic's live
    transfers, for its amount and currency, confirms it; one naming a
    transfer that can no longer take it is owed back; the rest stay
    ``unmatched`` with the reason. Malformed lines are listed, not stored.
    Raises :class:`.transfers.core.MalformedStatement` (422) for a file that is
    not a statement at all, with nothing stored."""
    async with pool.acquire() as conn:
        currency = await conn.fetchval("SELECT currency FROM clinics WHERE id = $1", clinic_id)
        if currency is None:
            raise NotFound("no such clinic")
        parsed = parse_statement(data, Currency(currency))
        async with conn.transaction():
            statement_id = uuid4()
            await conn.execute(
                """INSERT INTO bank_statements (id, clinic_id, imported_by, lines, matched,
                       unmatched, refund_due, duplicates, rejected)
                   VALUES ($1, $2, $3, $4, 0, 0, 0, 0, '[]')""",
                statement_id,
                clinic_id,
                actor.user_id,
                len(parsed.lines) + len(parsed.rejected),
            )
            out = Imported(statement_id, rejected=parsed.rejected)
            confirmed: list[audit.AuditEntry] = []
            owed: list[audit.AuditEntry] = []
            for line in parsed.lines:
                credit = await _import_line(conn, clinic_id, statement_id, line, now, default_bp)
                if credit is None:
                    out.duplicates += 1
                    continue
                out.credits.append(credit)
                if credit["payment_intent_id"] is not None:
                    entry = audit.AuditEntry(
                        f"payment/{credit['payment_intent_id']}",
                        subject=credit["patient_id"],
                        clinic=clinic_id,
                    )
                    (confirmed if credit["status"] == "matched" else owed).append(entry)
            await conn.execute(
                """UPDATE bank_statements SET matched = $2, unmatched = $3, refund_due = $4,
                       duplicates = $5, rejected = $6::jsonb WHERE id = $1""",
                statement_id,
                out.count("matched"),
                out.count("unmatched"),
                out.count("refund_due"),
                out.duplicates,
                [{"line": r.line_no, "error": r.error} for r in parsed.rejected],
            )
            detail = {"statement_id": str(statement_id), "source": "statement"}
            for action, entries in (
                ("payment.bank_transfer.confirm", confirmed),
                ("payment.bank_transfer.refund_due", owed),
            ):
                await audit.record_many(
                    conn, actor=actor, action=action, entries=entries, detail=detail
                )
            await audit.record(
                conn,
                actor=actor,
                action="payment.bank_statement.import",
                clinic=clinic_id,
                object=f"bank_statement/{statement_id}",
                detail={
                    "lines": len(parsed.lines) + len(parsed.rejected),
                    "matched": out.count("matched"),
                    "unmatched": out.count("unmatched"),
                    "refund_due": out.count("refund_due"),
                    "duplicates": out.duplicates,
                    "rejected": len(parsed.rejected),
                },
            )
        return out


async def _import_line(
    conn: asyncpg.Connection,
    clinic_id: UUID,
    statement_id: UUID,
    line: StatementLine,
    now: dt.datetime,
    default_bp: int,
) -> asyncpg.Record | None:
    """Store one credit and settle it if it can be; None if seen before."""
    credit_id = await conn.fetchval(
        """INSERT INTO bank_credits (clinic_id, source, statement_id, line_no, fingerprint,
               booked_on, amount_minor, currency, narration, bank_txn_id, status)
           VALUES ($1, 'statement', $2, $3, $4, $5, $6, $7, $8, $9, 'unmatched')
           ON CONFLICT (clinic_id, fingerprint) DO NOTHING RETURNING id""",
        clinic_id,
        statement_id,
        line.line_no,
        line.fingerprint,
        line.booked_on,
        line.amount.amount_minor,
        line.amount.currency.value,
        line.narration,
        line.bank_txn_id,
    )
    if credit_id is None:
        return None
    status, reason, intent_id = "unmatched", None, None
    reference = line.references[0] if len(line.references) == 1 else None
    source = f"statement line {line.line_no}"
    if not line.references:
        reason = "no_reference"
    elif reference is None:
        reason = "several_references"
    elif (
        settled := await settle.settle(
            conn,
            BANK_TRANSFER,
            settle.Credit(clinic_id, CONFIRMED, {"reference": reference, "source": source}),
            Verdict(BANK_TRANSFER, reference, PaymentStatus.SUCCEEDED, line.amount, source=source),
            default_bp=default_bp,
            now=now,
        )
    ) is not None:
        # The common case in two statements. Nothing in it can trip a
        # constraint (no delivery row; the intent moves only while live), so
        # it needs no savepoint of its own inside the import's transaction.
        status, intent_id = "matched", settled.payment_id
    else:
        target = await _lock_transfer(conn, reference, clinic_id)
        if target is None:
            reason = "unknown_reference"
        elif money(target.intent) != line.amount:
            reason = "amount_differs"
        else:
            status, reason, intent = await _settle(
                conn, target, now, default_bp=default_bp, source=source
            )
            intent_id = intent["id"]
            if status == "refund_due":
                await _post_refund_due(conn, credit_id, line.amount, clinic_id, intent)
    row = await conn.fetchrow(
        f"""UPDATE bank_credits c SET status = $2, reason = $3, reference = $4,
                   payment_intent_id = $5,
                   resolved_at = CASE WHEN $2 <> 'unmatched' THEN $6::timestamptz END
            WHERE id = $1
            RETURNING {_prefixed("c")},
                      (SELECT patient_id FROM payment_intents p
                       WHERE p.id = c.payment_intent_id) AS patient_id""",
        credit_id,
        status,
        reason,
        reference,
        intent_id,
        now,
    )
    assert row is not None
    return row


def _prefixed(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in CREDIT_COLUMNS.split(","))


# --- by hand -----------------------------------------------------------------------------


async def confirm_by_hand(
    pool: asyncpg.Pool,
    reference: str,
    amount_minor: int,
    note: str,
    actor: Principal,
    now: dt.datetime,
    *,
    credit_id: UUID | None,
    default_bp: int,
) -> tuple[asyncpg.Record, asyncpg.Record, str]:
    """Finance staff saw the money: confirm the transfer ``reference``
    (canonical) with a note, optionally naming the unmatched statement
    credit that paid it. Returns (credit, intent, the booking's status as it
    now is). The amount must be the
    transfer's (409 otherwise, nothing changed). A transfer that can no
    longer take it makes the credit ``refund_due``; a transfer confirmed
    already is refused (409) unless a statement credit is named (the
    patient paid twice: that credit is owed back)."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            target = await _lock_transfer(conn, reference, _scope(actor))
            if target is None:
                raise UnknownTransfer(f"no bank transfer with reference {reference}")
            intent = target.intent
            expected = money(intent)
            if amount_minor != expected.amount_minor:
                raise TransferAmountMismatch(
                    f"the transfer {reference} asks for {expected},"
                    f" not {Money(amount_minor, expected.currency)}"
                )
            if credit_id is None and intent["status"] == IntentState.SUCCEEDED.value:
                raise AlreadyConfirmed(f"the transfer {reference} is confirmed already")
            if credit_id is not None:
                credit = await _open_credit(conn, credit_id, intent["clinic_id"], "unmatched")
                if (credit["amount_minor"], credit["currency"]) != (
                    expected.amount_minor,
                    expected.currency.value,
                ):
                    raise TransferAmountMismatch(
                        f"the credit is {Money(credit['amount_minor'], credit['currency'])},"
                        f" the transfer asks for {expected}"
                    )
                cid = credit_id
            else:
                cid = await conn.fetchval(
                    """INSERT INTO bank_credits (clinic_id, source, booked_on, amount_minor,
                           currency, reference, status)
                       VALUES ($1, 'manual', $2, $3, $4, $5, 'unmatched') RETURNING id""",
                    intent["clinic_id"],
                    now.date(),
                    expected.amount_minor,
                    expected.currency.value,
                    reference,
                )
            status, reason, intent = await _settle(
                conn, target, now, default_bp=default_bp, source=f"confirmed by {actor.user_id}"
            )
            if status == "refund_due":
                await _post_refund_due(conn, cid, expected, intent["clinic_id"], intent)
            row = await conn.fetchrow(
                f"""UPDATE bank_credits SET status = $2, reason = $3, reference = $4,
                           payment_intent_id = $5, note = $6, resolved_by = $7, resolved_at = $8
                    WHERE id = $1 RETURNING {CREDIT_COLUMNS}""",
                cid,
                status,
                reason,
                reference,
                intent["id"],
                note,
                actor.user_id,
                now,
            )
            assert row is not None
            await audit.record_about(
                conn,
                intent,
                "payment",
                actor=actor,
                action="payment.bank_transfer.manual_match",
                detail={
                    "credit_id": str(cid),
                    "outcome": status,
                    "reason": reason,
                    "statement_credit": credit_id is not None,
                },
            )
        booking = await conn.fetchval(
            "SELECT status FROM bookings WHERE id = $1", intent["booking_id"]
        )
        return row, intent, str(booking)


def _scope(actor: Principal) -> UUID | None:
    """The clinic whose transfers and credits ``actor`` may handle (None: any)."""
    return None if actor.role.value == "admin" else actor.clinic_id


async def _open_credit(
    conn: asyncpg.Connection, credit_id: UUID, clinic_scope: UUID | None, status: str
) -> asyncpg.Record:
    """The credit, locked, if it is ``clinic_scope``'s (None: any clinic's)
    and in ``status``."""
    credit = await conn.fetchrow(
        f"""SELECT {CREDIT_COLUMNS} FROM bank_credits
            WHERE id = $1 AND ($2::uuid IS NULL OR clinic_id = $2) FOR UPDATE""",
        credit_id,
        clinic_scope,
    )
    if credit is None:
        raise NotFound("no such bank credit")
    if credit["status"] != status:
        raise CreditNotOpen(f"the credit is {credit['status']}, not {status}")
    return credit


async def _patient_of(conn: asyncpg.Connection, credit: asyncpg.Record) -> asyncpg.Record | None:
    if credit["payment_intent_id"] is None:
        return None
    return await conn.fetchrow(
        f"SELECT {INTENT_COLUMNS} FROM payment_intents WHERE id = $1",
        credit["payment_intent_id"],
    )


async def _resolve(
    conn: asyncpg.Connection,
    credit: asyncpg.Record,
    changes: str,
    note: str,
    actor: Principal,
    now: dt.datetime,
    *,
    action: str,
    subject: UUID | None = None,
    detail: Mapping[str, Any] | None = None,
) -> asyncpg.Record:
    """Finance closes an open ``credit`` with a note, audited as ``action``.

    ``changes`` is the rest of the SET clause (``$2`` is the note); who and
    when are stamped here. Returns the credit as it now is."""
    row = await conn.fetchrow(
        f"""UPDATE bank_credits SET {changes}, resolved_by = $3, resolved_at = $4
            WHERE id = $1 RETURNING {CREDIT_COLUMNS}""",
        credit["id"],
        note,
        actor.user_id,
        now,
    )
    assert row is not None
    await audit.record(
        conn,
        actor=actor,
        action=action,
        subject=subject,
        clinic=credit["clinic_id"],
        object=f"bank_credit/{credit['id']}",
        detail=detail,
    )
    return row


async def mark_refund_due(
    pool: asyncpg.Pool, credit_id: UUID, note: str, actor: Principal, now: dt.datetime
) -> asyncpg.Record:
    """An unmatched credit that is nobody's payment (another amount, no
    reference): owed back to whoever sent it."""
    async with pool.acquire() as conn, conn.transaction():
        credit = await _open_credit(conn, credit_id, _scope(actor), "unmatched")
        amount = money(credit)
        await _post_refund_due(conn, credit_id, amount, credit["clinic_id"], None)
        return await _resolve(
            conn,
            credit,
            "status = 'refund_due', note = $2, reason = coalesce(reason, 'by_hand')",
            note,
            actor,
            now,
            action="payment.bank_transfer.refund_due",
            detail={"source": "manual"},
        )


async def mark_refunded(
    pool: asyncpg.Pool, credit_id: UUID, note: str, actor: Principal, now: dt.datetime
) -> asyncpg.Record:
    """Finance sent a refund-due credit back: the ledger says so."""
    async with pool.acquire() as conn, conn.transaction():
        credit = await _open_credit(conn, credit_id, _scope(actor), "refund_due")
        intent = await _patient_of(conn, credit)
        amount = money(credit)
        await post_transaction(
            conn,
            refund_sent(amount, str(credit_id)),
            clinic_id=credit["clinic_id"],
            payment_intent_id=intent["id"] if intent is not None else None,
            booking_id=intent["booking_id"] if intent is not None else None,
        )
        row = await _resolve(
            conn,
            credit,
            "status = 'refunded', note = CASE WHEN note = '' THEN $2 ELSE note || E'\\n' || $2 END",
            note,
            actor,
            now,
            action="payment.bank_transfer.refund_sent",
            subject=intent["patient_id"] if intent is not None else None,
        )
        await outbox.emit(
            conn,
            "payment.bank_transfer.refunded",
            _credit_payload(credit_id, amount, credit["clinic_id"], intent),
        )
    return row


async def credits_of(
    conn: asyncpg.Connection | asyncpg.Pool,
    clinic_id: UUID,
    statuses: Sequence[str],
    limit: int,
    offset: int,
) -> list[asyncpg.Record]:
    """A clinic's credits in ``statuses`` (all when empty), newest first."""
    return list(
        await conn.fetch(
            f"""SELECT {CREDIT_COLUMNS} FROM bank_credits
                WHERE clinic_id = $1 AND (cardinality($2::text[]) = 0 OR status = ANY($2))
                ORDER BY created_at DESC, line_no NULLS LAST, id LIMIT $3 OFFSET $4""",
            clinic_id,
            list(statuses),
            limit,
            offset,
        )
    )
