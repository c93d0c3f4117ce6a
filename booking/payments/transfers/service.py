"""Bank transfer in the database: starting one, cancelling it, and a
transfer and its proofs as the ones who may see them do.

The pure part (references, statements, the bank details patients see) is
:mod:`booking.payments.transfers.core`; what finance does with the money
that arrives is :mod:`booking.payments.transfers.reconcile`. Starting a
transfer holds the booking for the transfer window and stores the intent in
one statement when it can; either way it locks the booking before the
intent, as cancellation does.

A transfer's patient, staff of its clinic and admins see it; anyone else is
told it does not exist. A staff member's read of a patient's transfer or
proof is audited, as their reads of bookings are.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID, uuid4

import asyncpg

from booking.lifecycle import BookingState
from booking.payments.errors import BookingNotPayable, LivePaymentExists
from booking.payments.gateway import BANK_TRANSFER
from booking.payments.intent import IntentEvent, IntentState
from booking.payments.postings import move_intent, record_intent_event
from booking.payments.rows import INTENT_COLUMNS, payment_payload, visible_to
from booking.payments.transfers.core import (
    LIVE,
    BankAccount,
    TransferNotOffered,
    new_reference,
    page_url,
)
from booking.payments.transfers.proofs import PROOF_COLUMNS, add_proof, proofs_of, read_proof
from privacy.audit import record_access
from privacy.subject_keys import SubjectKeys
from wadud.config import Settings
from wadud.errors import Conflict, NotFound
from wadud.messaging import outbox
from wadud.principal import Principal
from wadud.state.db import Args
from wadud.state.storage import Storage

__all__ = [
    "MIN_WINDOW",
    "Transfer",
    "cancel_transfer",
    "page_intent",
    "proof_for",
    "start_transfer",
    "transfer_for",
    "transfer_of",
    "upload_proof",
]

#: A slot this close offers no bank transfer: the money would not arrive in time.
MIN_WINDOW: Final = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Transfer:
    """A bank transfer as its viewers see it: the intent and its proofs
    (their records; the files stay sealed)."""

    intent: asyncpg.Record
    proofs: list[asyncpg.Record]


# --- starting a transfer ----------------------------------------------------------


async def start_transfer(
    pool: asyncpg.Pool,
    booking_id: UUID,
    patient_id: UUID,
    settings: Settings,
    now: dt.datetime,
) -> tuple[Transfer, bool]:
    """The booking's bank transfer and whether it was created now.

    Extends the hold to ``payments_bank_transfer_hold_hours`` (never past the
    slot's start) and hands out a fresh reference; asking again returns the
    same transfer. Refused (409) when another gateway's payment is live, the
    booking is not held, or the slot starts within :data:`MIN_WINDOW`."""
    async with pool.acquire() as conn:
        row, created = await _start(conn, booking_id, patient_id, settings, now)
        # A transfer made now has no proofs yet.
        return Transfer(row, [] if created else await proofs_of(conn, row["id"])), created


async def _start(
    conn: asyncpg.Connection,
    booking_id: UUID,
    patient_id: UUID,
    settings: Settings,
    now: dt.datetime,
) -> tuple[asyncpg.Record, bool]:
    """:func:`start_transfer`'s intent row, and whether it was created now."""
    details = BankAccount.of(settings)
    if details is None:
        raise TransferNotOffered("bank transfer is not offered: no bank account is configured")
    # The common case as the card checkout does it (booking.payments.checkout.service's
    # start_payment): a plain read decides, and one statement re-checks the
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
        await record_intent_event(
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
    if booking["status"] != BookingState.HELD.value or hold is None or hold <= now:
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
            WHERE id = {args(booking["id"])} AND status = {args(BookingState.HELD.value)}
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
    pool: asyncpg.Pool,
    booking_id: UUID,
    patient_id: UUID,
    settings: Settings,
    now: dt.datetime,
) -> Transfer:
    """The patient pays another way after all: the transfer is cancelled
    and the hold shrinks back to a card hold (``booking_hold_minutes`` from
    now, never longer than it was), so the slot is not kept for a day on a
    transfer nobody will send. Money that still arrives for the reference is
    owed back. Returns the cancelled transfer."""
    async with pool.acquire() as conn:
        row = await _cancel(conn, booking_id, patient_id, settings, now)
        return Transfer(row, await proofs_of(conn, row["id"]))


async def _cancel(
    conn: asyncpg.Connection,
    booking_id: UUID,
    patient_id: UUID,
    settings: Settings,
    now: dt.datetime,
) -> asyncpg.Record:
    """:func:`cancel_transfer`'s cancelled intent."""
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
        row = await move_intent(
            conn,
            live,
            event,
            {"reason": why},
            announce="payment.cancelled",
            announce_extra={"reason": why},
            failure_reason=why,
        )
        hold = booking["hold_expires_at"]
        if booking["status"] == BookingState.HELD.value and hold is not None:
            shorter = min(hold, now + dt.timedelta(minutes=settings.booking_hold_minutes))
            await conn.execute(
                "UPDATE bookings SET hold_expires_at = $2, updated_at = $3 WHERE id = $1",
                booking_id,
                shorter,
                now,
            )
    return row


# --- a transfer as its viewers see it ------------------------------------------------


async def transfer_of(conn: asyncpg.Connection, me: Principal, booking_id: UUID) -> asyncpg.Record:
    """The booking's newest bank transfer, if ``me`` may see it (404
    otherwise)."""
    row = await conn.fetchrow(
        f"""SELECT {INTENT_COLUMNS} FROM payment_intents
            WHERE booking_id = $1 AND gateway = $2 ORDER BY created_at DESC LIMIT 1""",
        booking_id,
        BANK_TRANSFER,
    )
    if row is None or not visible_to(me, row):
        raise NotFound("no bank transfer for this booking")
    return row


async def transfer_for(pool: asyncpg.Pool, me: Principal, booking_id: UUID) -> Transfer:
    """The booking's bank transfer and its proofs, if ``me`` may see them;
    a staff member's read is audited."""
    async with pool.acquire() as conn:
        row = await transfer_of(conn, me, booking_id)
        transfer = Transfer(row, await proofs_of(conn, row["id"]))
        await record_access(conn, me, "payment.bank_transfer.read", row, "payment")
    return transfer


async def upload_proof(
    pool: asyncpg.Pool,
    subjects: SubjectKeys,
    storage: Storage,
    me: Principal,
    booking_id: UUID,
    data: bytes,
    content_type: str,
) -> asyncpg.Record:
    """Keep ``data`` as a proof of payment of the booking's transfer, sealed
    under its patient's key (:func:`.proofs.add_proof`), while the transfer
    still waits for money."""
    async with pool.acquire() as conn:
        row = await transfer_of(conn, me, booking_id)
        async with conn.transaction():
            locked = await conn.fetchrow(
                f"SELECT {INTENT_COLUMNS} FROM payment_intents WHERE id = $1 FOR UPDATE",
                row["id"],
            )
            assert locked is not None
            return await add_proof(conn, subjects, storage, locked, data, content_type)


async def proof_for(
    pool: asyncpg.Pool,
    subjects: SubjectKeys,
    storage: Storage,
    me: Principal,
    booking_id: UUID,
    proof_id: UUID,
) -> tuple[asyncpg.Record, bytes]:
    """A proof of the booking's transfer and its bytes, opened, if ``me`` may
    see them (404 otherwise; 410 once erased); a staff member's read is
    audited."""
    async with pool.acquire() as conn:
        row = await transfer_of(conn, me, booking_id)
        proof = await conn.fetchrow(
            f"""SELECT {PROOF_COLUMNS}, storage_key, key_id, nonce
                FROM bank_transfer_proofs WHERE id = $1 AND payment_intent_id = $2""",
            proof_id,
            row["id"],
        )
        if proof is None:
            raise NotFound("no such proof")
        data = await read_proof(conn, subjects, storage, proof)
        await record_access(conn, me, "payment.bank_transfer.proof_read", row, "proof", proof["id"])
    return proof, data


async def page_intent(pool: asyncpg.Pool, payment_id: UUID) -> asyncpg.Record | None:
    """What the patient's page shows of the payment ``payment_id``: its
    gateway, reference and state."""
    return await pool.fetchrow(
        "SELECT gateway, gateway_ref, status FROM payment_intents WHERE id = $1", payment_id
    )
