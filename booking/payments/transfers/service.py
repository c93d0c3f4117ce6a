"""Bank transfer in the database: starting one, proofs, reconciliation.

The pure part (references, statements, the refund-due postings) is
:mod:`.transfers.core`; the intent moves through :mod:`.checkout.service`, as every
gateway's does. Rules kept here:

* **Lock order**: the booking row, then its intent, then a credit, as
  cancellation does (booking first). A transfer is confirmed only while its
  booking is ``held`` and its hold has not lapsed, checked under those locks,
  so the confirmation can never be refused half way.
* **Never a silent credit**: money that arrives for a transfer that expired,
  was cancelled or was paid already becomes a ``refund_due`` credit with a
  ledger posting (:func:`.transfers.core.refund_due`) that owes it back to the
  patient; nothing goes to revenue or to the doctor.
* **Audit**: every confirmation (statement or by hand), every manual match,
  every refund-due and refund-sent decision is an audit row, written last in
  its transaction (:mod:`wadud.audit`). Notes are free text and stay out of
  the audit detail (the chain can never be erased).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from uuid import UUID, uuid4

import asyncpg

from booking import service as bookings
from booking.lifecycle import Event, State
from booking.payments.checkout import service, settle
from booking.payments.errors import BookingNotPayable, LivePaymentExists
from booking.payments.gateway import BANK_TRANSFER, PaymentStatus, Verdict
from booking.payments.intent import Currency, IntentEvent, IntentState, Money
from booking.payments.rows import INTENT_COLUMNS, money, payment_payload
from booking.payments.transfers.core import (
    BankAccount,
    CreditNotOpen,
    RejectedLine,
    StatementLine,
    TransferAmountMismatch,
    TransferError,
    TransferNotOffered,
    UnknownTransfer,
    new_reference,
    parse_statement,
    refund_due,
    refund_sent,
)
from booking.payments.transfers.pages import page_url
from wadud import audit, outbox
from wadud.config import Settings
from wadud.db import Args
from wadud.errors import Conflict, NotFound
from wadud.principal import Principal

__all__ = [
    "LIVE",
    "MIN_WINDOW",
    "Imported",
    "cancel_transfer",
    "confirm_by_hand",
    "credits_of",
    "import_statement",
    "mark_refund_due",
    "mark_refunded",
    "start_transfer",
]

log = logging.getLogger("wadud.payments.transfer")

#: A slot this close offers no bank transfer: the money would not arrive in time.
MIN_WINDOW: Final = dt.timedelta(hours=1)
#: A transfer's intent states while it waits for money.
LIVE: Final = (IntentState.REQUIRES_PAYMENT.value, IntentState.PROCESSING.value)
CREDIT_COLUMNS: Final = (
    "id, clinic_id, source, statement_id, line_no, booked_on, amount_minor, currency,"
    " narration, bank_txn_id, reference, status, reason, payment_intent_id, note,"
    " resolved_by, resolved_at, created_at"
)


class AlreadyConfirmed(TransferError, Conflict):
    """The transfer was confirmed already; a second confirmation by hand is refused."""

    http_status = 409
    code = "already_confirmed"


# --- starting a transfer ----------------------------------------------------------


async def start_transfer(
    conn: asyncpg.Connection,
    booking_id: UUID,
    patient_id: UUID,
    settings: Settings,
    now: dt.datetime,
) -> tuple[asyncpg.Record, bool]:
    """The booking's bank transfer (intent row) and whether it was created now.

    Extends the hold to ``payments_bank_transfer_hold_hours`` (never past the
    slot's start) and hands out a fresh reference; asking again returns the
    same transfer. Refused (409) when another gateway's payment is live, the
    booking is not held, or the slot starts within :data:`MIN_WINDOW`."""
    details = BankAccount.of(settings)
    if details is None:
        raise TransferNotOffered("bank transfer is not offered: no bank account is configured")
    # The common case as the card checkout does it (booking.payments.checkout.http's
    # create_payment): a plain read decides, and one statement re-checks the
    # hold under the booking's row lock, extends it, and stores the intent,
    # its history line and both events. Anything else (a live payment, a
    # race) takes the locking path below.
    booking = await conn.fetchrow(
        """SELECT b.*, d.display_name AS doctor_name,
                  EXISTS (SELECT 1 FROM payment_intents p WHERE p.booking_id = b.id
                          AND p.status = ANY($2::text[])) AS live
           FROM bookings b JOIN doctors d ON d.id = b.doctor_id WHERE b.id = $1""",
        booking_id,
        list(LIVE),
    )
    if booking is None or booking["patient_id"] != patient_id:
        raise NotFound("no such booking")
    if not booking["live"]:
        until = _payable_until(booking, settings, now)
        for _ in range(5):
            try:
                row = await _start_at_once(conn, booking, until, details, settings, now)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "payment_intents_one_live":
                    break  # a concurrent request stored one first: the path below
                continue  # the reference was taken: draw another
            if row is None:
                break  # the hold moved since the read: the path below says how
            outbox.written(conn)
            return row, True
    async with conn.transaction():
        booking = await conn.fetchrow(
            """SELECT b.*, d.display_name AS doctor_name FROM bookings b
               JOIN doctors d ON d.id = b.doctor_id WHERE b.id = $1 FOR UPDATE OF b""",
            booking_id,
        )
        if booking is None or booking["patient_id"] != patient_id:
            raise NotFound("no such booking")
        live = await conn.fetchrow(
            f"""SELECT {INTENT_COLUMNS} FROM payment_intents
                WHERE booking_id = $1 AND status = ANY($2::text[]) FOR UPDATE""",
            booking_id,
            list(LIVE),
        )
        if live is not None:
            if live["gateway"] == BANK_TRANSFER:
                return live, False
            raise LivePaymentExists(
                f"a {live['gateway']} payment for this booking is under way"
                f" until {live['expires_at'].isoformat()}"
            )
        until = _payable_until(booking, settings, now)
        await conn.execute(
            "UPDATE bookings SET hold_expires_at = $2, updated_at = $3 WHERE id = $1",
            booking_id,
            until,
            now,
        )
        row = await _insert_intent(conn, booking, until)
        detail = {"reference": row["gateway_ref"], "hold_expires_at": until.isoformat()}
        await service.record_intent_event(
            conn, row, "create", None, IntentState.REQUIRES_PAYMENT.value, detail
        )
        for topic, payload in _started_events(row, booking, until, details, settings):
            await outbox.emit(conn, topic, payload)
    return row, True


def _payable_until(booking: Mapping[str, Any], settings: Settings, now: dt.datetime) -> dt.datetime:
    """When a transfer for ``booking`` must have arrived: the hold extended to
    the transfer window, never past the slot's start. Refuses a booking
    that is not held or is free (409), and a slot too soon for a transfer."""
    hold: dt.datetime | None = booking["hold_expires_at"]
    if booking["status"] != State.HELD.value or hold is None or hold <= now:
        raise BookingNotPayable(f"the booking is {booking['status']}, not held for payment")
    if booking["price_minor"] <= 0:
        raise BookingNotPayable("the booking is free; there is nothing to pay")
    window = dt.timedelta(hours=settings.payments_bank_transfer_hold_hours)
    starts: dt.datetime = booking["starts_at"]
    until = min(now + window, starts)
    if until - now < MIN_WINDOW:
        raise TransferNotOffered(
            "the visit starts too soon for a bank transfer to arrive; pay by card or wallet"
        )
    return max(until, hold)


def _started_events(
    row: Mapping[str, Any],
    booking: Mapping[str, Any],
    until: dt.datetime,
    details: BankAccount,
    settings: Settings,
) -> list[tuple[str, dict[str, Any]]]:
    """A new transfer's outbox events: created, and the patient's instructions."""
    return [
        ("payment.created", payment_payload(row)),
        (
            "payment.bank_transfer.requested",
            payment_payload(
                row,
                reference=row["gateway_ref"],
                expires_at=until.isoformat(),
                starts_at=booking["starts_at"].isoformat(),
                doctor_name=booking["doctor_name"],
                bank=details.as_dict(),
                link=page_url(settings, row["id"]),
            ),
        ),
    ]


async def _start_at_once(
    conn: asyncpg.Connection,
    booking: asyncpg.Record,
    until: dt.datetime,
    details: BankAccount,
    settings: Settings,
    now: dt.datetime,
) -> asyncpg.Record | None:
    """The transfer in one statement, or None when the booking is no longer
    held (under its lock) as it was read."""
    intent_id = uuid4()
    reference = new_reference()
    state = IntentState.REQUIRES_PAYMENT
    # The payloads name the intent as it will be stored.
    row = {
        "id": intent_id,
        "clinic_id": booking["clinic_id"],
        "booking_id": booking["id"],
        "patient_id": booking["patient_id"],
        "amount_minor": booking["price_minor"],
        "currency": booking["currency"],
        "gateway": BANK_TRANSFER,
        "gateway_ref": reference,
        "status": state.value,
        "refunded_minor": 0,
    }
    args = Args()
    detail = {"reference": reference, "hold_expires_at": until.isoformat()}
    sql = f"""
        WITH b AS (
            UPDATE bookings SET hold_expires_at = {args(until)}, updated_at = {args(now)}
            WHERE id = {args(booking["id"])} AND status = {args(State.HELD.value)}
              AND hold_expires_at > {args(now)}
            RETURNING id),
        i AS (
            INSERT INTO payment_intents
                (id, clinic_id, booking_id, patient_id, amount_minor, currency,
                 gateway, gateway_ref, status, expires_at)
            SELECT {args(intent_id)}, {args(booking["clinic_id"])}, b.id,
                   {args(booking["patient_id"])}, {args(booking["price_minor"])},
                   {args(booking["currency"])}, {args(BANK_TRANSFER)}, {args(reference)},
                   {args(state.value)}, {args(until)}
            FROM b
            RETURNING {INTENT_COLUMNS}),
        e AS (
            INSERT INTO payment_events
                (payment_intent_id, clinic_id, event, from_state, to_state, detail)
            SELECT i.id, i.clinic_id, 'create', NULL, {args(state.value)},
                   {args(detail)}::jsonb
            FROM i)"""
    cte, more = outbox.events(
        _started_events(row, booking, until, details, settings), args.next, source="i"
    )
    args.values.extend(more)
    return await conn.fetchrow(f"{sql},\n        {cte}\n        SELECT i.* FROM i", *args.values)


async def _insert_intent(
    conn: asyncpg.Connection, booking: asyncpg.Record, until: dt.datetime
) -> asyncpg.Record:
    for _ in range(5):
        try:
            # A savepoint: a reference collision must not end the transaction.
            async with conn.transaction():
                row = await conn.fetchrow(
                    f"""INSERT INTO payment_intents
                            (clinic_id, booking_id, patient_id, amount_minor, currency,
                             gateway, gateway_ref, status, expires_at)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                        RETURNING {INTENT_COLUMNS}""",
                    booking["clinic_id"],
                    booking["id"],
                    booking["patient_id"],
                    booking["price_minor"],
                    booking["currency"],
                    BANK_TRANSFER,
                    new_reference(),
                    IntentState.REQUIRES_PAYMENT.value,
                    until,
                )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "payment_intents_one_live":
                raise Conflict("another payment for this booking just started") from None
            continue  # the reference was taken: draw another
        assert row is not None
        return row
    raise Conflict("no free payment reference was found; try again")


async def cancel_transfer(
    conn: asyncpg.Connection,
    booking_id: UUID,
    patient_id: UUID,
    settings: Settings,
    now: dt.datetime,
) -> asyncpg.Record:
    """The patient pays another way after all: the transfer is cancelled
    and the hold shrinks back to a card hold (``booking_hold_minutes`` from
    now, never longer than it was), so the slot is not kept for a day on a
    transfer nobody will send. Money that still arrives for the reference is
    owed back. Returns the cancelled intent."""
    async with conn.transaction():
        booking = await conn.fetchrow("SELECT * FROM bookings WHERE id = $1 FOR UPDATE", booking_id)
        if booking is None or booking["patient_id"] != patient_id:
            raise NotFound("no such booking")
        live = await conn.fetchrow(
            f"""SELECT {INTENT_COLUMNS} FROM payment_intents
                WHERE booking_id = $1 AND gateway = $2 AND status = ANY($3::text[])
                FOR UPDATE""",
            booking_id,
            BANK_TRANSFER,
            list(LIVE),
        )
        if live is None:
            raise BookingNotPayable("the booking has no bank transfer waiting for money")
        why = "the patient chose another way to pay"
        if live["status"] == IntentState.PROCESSING.value:
            # Handed out again through the generic payments endpoint: the
            # machine cancels only before a checkout, so it expires instead.
            event = IntentEvent.EXPIRE
        else:
            event = IntentEvent.CANCEL
        row = await service.move_intent(
            conn,
            live,
            event,
            {"reason": why},
            announce="payment.cancelled",
            announce_extra={"reason": why},
            failure_reason=why,
        )
        hold = booking["hold_expires_at"]
        if booking["status"] == State.HELD.value and hold is not None:
            shorter = min(hold, now + dt.timedelta(minutes=settings.booking_hold_minutes))
            await conn.execute(
                "UPDATE bookings SET hold_expires_at = $2, updated_at = $3 WHERE id = $1",
                booking_id,
                shorter,
                now,
            )
    return row


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
    if live and booking["status"] == State.HELD.value and hold is not None and hold > now:
        verdict = Verdict(
            BANK_TRANSFER,
            intent["gateway_ref"],
            PaymentStatus.SUCCEEDED,
            money(intent),
            "",
            "",
            source,
        )
        row = await service.apply_verdict(conn, verdict, default_bp=default_bp, locked=intent)
        # The receipt names the reference the patient wrote on the transfer.
        await outbox.emit(
            conn, CONFIRMED, payment_payload(row, reference=row["gateway_ref"], source=source)
        )
        return "matched", None, row
    if live:
        # The hold lapsed and no sweep has closed it yet: close it now, so
        # the intent and the booking say what happened.
        why = "bank transfer window closed unpaid"
        intent = await service.move_intent(
            conn,
            intent,
            IntentEvent.EXPIRE,
            {"reason": why},
            announce="payment.expired",
            announce_extra={"reason": why},
            failure_reason=why,
        )
        if booking["status"] == State.HELD.value:
            await bookings.apply_event(
                conn,
                booking,
                Event.EXPIRE_HOLD,
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
    await service.post_transaction(
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
    conn: asyncpg.Connection,
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
        confirmed: list[audit.Entry] = []
        owed: list[audit.Entry] = []
        for line in parsed.lines:
            credit = await _import_line(conn, clinic_id, statement_id, line, now, default_bp)
            if credit is None:
                out.duplicates += 1
                continue
            out.credits.append(credit)
            if credit["payment_intent_id"] is not None:
                entry = audit.Entry(
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
    conn: asyncpg.Connection,
    reference: str,
    amount_minor: int,
    note: str,
    actor: Principal,
    now: dt.datetime,
    *,
    credit_id: UUID | None,
    default_bp: int,
) -> tuple[asyncpg.Record, asyncpg.Record]:
    """Finance staff saw the money: confirm the transfer ``reference``
    (canonical) with a note, optionally naming the unmatched statement
    credit that paid it. Returns (credit, intent). The amount must be the
    transfer's (409 otherwise, nothing changed). A transfer that can no
    longer take it makes the credit ``refund_due``; a transfer confirmed
    already is refused (409) unless a statement credit is named (the
    patient paid twice: that credit is owed back)."""
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
    return row, intent


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
    conn: asyncpg.Connection, credit_id: UUID, note: str, actor: Principal, now: dt.datetime
) -> asyncpg.Record:
    """An unmatched credit that is nobody's payment (another amount, no
    reference): owed back to whoever sent it."""
    async with conn.transaction():
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
    conn: asyncpg.Connection, credit_id: UUID, note: str, actor: Principal, now: dt.datetime
) -> asyncpg.Record:
    """Finance sent a refund-due credit back: the ledger says so."""
    async with conn.transaction():
        credit = await _open_credit(conn, credit_id, _scope(actor), "refund_due")
        intent = await _patient_of(conn, credit)
        amount = money(credit)
        await service.post_transaction(
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
