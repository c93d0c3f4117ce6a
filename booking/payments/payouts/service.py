"""A doctor's money in PostgreSQL: who may see it, what the ledger says each
doctor earned, gave back, paid in commission, was paid out and is still
owed, money paid out to a doctor by hand, and where a doctor is paid (their
bank details, sealed by :mod:`booking.payments.payouts.details`).

A manual payout locks the doctor's row ``FOR NO KEY UPDATE``, as everything
that changes what a doctor may still be paid does
(:mod:`booking.payments.payouts.batches`), and may take only what is payable
beyond the doctor's pending batch lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from booking import doctors
from booking.payments import ledger
from booking.payments.errors import PayoutExceedsPayable
from booking.payments.intent import Money
from booking.payments.payouts.batches import doctor_lines
from booking.payments.payouts.details import SEALED_COLUMNS, Details, PayoutSealer, SealedDetails
from booking.payments.postings import post_transaction
from wadud.errors import NotFound
from wadud.messaging import outbox
from wadud.principal import Principal
from wadud.state import audit

__all__ = [
    "CurrencyEarnings",
    "doctor_earnings",
    "doctor_of",
    "earnings_of",
    "pay_doctor",
    "payable_and_pending",
    "payout_account",
    "save_account",
    "set_payout_account",
]


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


async def payable_and_pending(
    conn: asyncpg.Connection, doctor_id: UUID, currency: str
) -> tuple[int, int]:
    """What the ledger owes the doctor, and how much of it pending batch lines
    reserve, read in one statement so both come from one snapshot."""
    row = await conn.fetchrow(
        """SELECT (SELECT COALESCE(-sum(amount_minor), 0) FROM ledger_entries
                   WHERE account = $1 AND currency = $2) AS payable,
                  (SELECT COALESCE(sum(amount_minor), 0) FROM payout_batch_lines
                   WHERE doctor_id = $3 AND status = 'pending' AND currency = $2) AS pending""",
        ledger.doctor_payable(str(doctor_id)),
        currency,
        doctor_id,
    )
    assert row is not None
    return int(row["payable"]), int(row["pending"])


async def pay_doctor(
    pool: asyncpg.Pool, me: Principal, doctor_id: UUID, amount_minor: int, reference: str
) -> tuple[asyncpg.Record, int]:
    """Record money paid out to the doctor by ``me``, posted to the ledger;
    refused beyond the doctor's payable balance in the doctor's currency,
    less what pending payout-batch lines reserve. Returns the payout and
    what the doctor is still owed after it."""
    async with pool.acquire() as conn, conn.transaction():
        doctor = await doctor_of(conn, me, doctor_id, lock=True)
        # Pending payout-batch lines reserve their amounts until marked.
        payable, pending = await payable_and_pending(conn, doctor["id"], doctor["currency"])
        if amount_minor > payable - pending:
            held = f" ({Money(pending, doctor['currency'])} in a payout batch)" if pending else ""
            raise PayoutExceedsPayable(
                f"the doctor is owed {Money(payable, doctor['currency'])}{held},"
                f" not {Money(amount_minor, doctor['currency'])}"
            )
        row = await conn.fetchrow(
            """INSERT INTO payouts (clinic_id, doctor_id, amount_minor, currency, reference,
                                    created_by)
               VALUES ($1, $2, $3, $4, $5, $6)
               RETURNING id, clinic_id, doctor_id, amount_minor, currency, reference,
                         created_by, created_at""",
            doctor["clinic_id"],
            doctor["id"],
            amount_minor,
            doctor["currency"],
            reference,
            me.user_id,
        )
        assert row is not None
        txn = ledger.payout(
            str(doctor["id"]), Money(amount_minor, doctor["currency"]), str(row["id"])
        )
        await post_transaction(conn, txn, clinic_id=doctor["clinic_id"])
        await outbox.emit(
            conn,
            "payout.created",
            {
                "payout_id": str(row["id"]),
                "doctor_id": str(doctor["id"]),
                "clinic_id": str(doctor["clinic_id"]),
                "amount_minor": amount_minor,
                "currency": doctor["currency"],
                "account": ledger.PAYOUTS_CLEARING,
            },
        )
    return row, payable - amount_minor


@dataclass(frozen=True, slots=True)
class CurrencyEarnings:
    """A doctor's money in one currency, from the ledger.

    ``gross - refunds - commission - paid_out == payable``.
    """

    currency: str
    gross_minor: int
    refunds_minor: int
    commission_minor: int
    paid_out_minor: int
    payable_minor: int


async def doctor_earnings(
    conn: asyncpg.Connection | asyncpg.Pool, doctor_id: UUID
) -> list[CurrencyEarnings]:
    """Per currency: captured, refunded, the platform's net commission, paid
    out, and the balance still owed to the doctor."""
    account = ledger.doctor_payable(str(doctor_id))
    rows = await conn.fetch(
        """WITH mine AS (
               -- By booking, not only by account: a capture or refund whose
               -- doctor share rounds to zero has no entry on the doctor's
               -- account but is still the doctor's gross.
               SELECT t.id AS transaction_id FROM ledger_transactions t
                 JOIN bookings b ON b.id = t.booking_id
               WHERE b.doctor_id = $3 AND t.kind IN ('capture', 'refund')
               UNION
               SELECT e.transaction_id FROM ledger_entries e WHERE e.account = $1)
           SELECT e.currency,
                  COALESCE(sum(e.amount_minor) FILTER (
                      WHERE t.kind = 'capture' AND e.account LIKE 'gateway_clearing:%'), 0)
                      AS gross,
                  COALESCE(-sum(e.amount_minor) FILTER (
                      WHERE t.kind = 'refund' AND e.account LIKE 'gateway_clearing:%'), 0)
                      AS refunds,
                  COALESCE(-sum(e.amount_minor) FILTER (
                      WHERE t.kind IN ('capture', 'refund') AND e.account = $2), 0) AS commission,
                  COALESCE(sum(e.amount_minor) FILTER (
                      WHERE t.kind = 'payout' AND e.account = $1), 0) AS paid_out,
                  COALESCE(-sum(e.amount_minor) FILTER (WHERE e.account = $1), 0) AS payable
           FROM mine JOIN ledger_transactions t ON t.id = mine.transaction_id
                JOIN ledger_entries e ON e.transaction_id = t.id
           GROUP BY e.currency ORDER BY e.currency""",
        account,
        ledger.PLATFORM_REVENUE,
        doctor_id,
    )
    return [
        CurrencyEarnings(
            currency=r["currency"],
            gross_minor=int(r["gross"]),
            refunds_minor=int(r["refunds"]),
            commission_minor=int(r["commission"]),
            paid_out_minor=int(r["paid_out"]),
            payable_minor=int(r["payable"]),
        )
        for r in rows
    ]


async def earnings_of(
    pool: asyncpg.Pool, me: Principal, doctor_id: UUID
) -> tuple[list[CurrencyEarnings], list[asyncpg.Record]]:
    """The doctor's earnings per currency and latest payout-batch lines, if
    ``me`` may see the doctor's money (404 otherwise)."""
    async with pool.acquire() as conn:
        doctor = await doctor_of(conn, me, doctor_id)
        figures = await doctor_earnings(conn, doctor["id"])
        lines = await doctor_lines(conn, doctor["id"])
    return figures, lines


# --- where a doctor is paid ---------------------------------------------------------


async def save_account(
    conn: asyncpg.Connection,
    doctor: asyncpg.Record,
    *,
    sealed: SealedDetails,
    actor: Principal,
) -> asyncpg.Record:
    """Store the doctor's bank details (checked by :mod:`.batch`, sealed by
    :mod:`.payouts.details`), audited. Lines already in a batch keep the
    details they were made with."""
    row = await conn.fetchrow(
        """INSERT INTO doctor_payout_accounts
               (doctor_id, clinic_id, key_id, nonce, sealed, iban_last4, updated_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (doctor_id) DO UPDATE
               SET iban = NULL, account_title = NULL, key_id = EXCLUDED.key_id,
                   nonce = EXCLUDED.nonce, sealed = EXCLUDED.sealed,
                   iban_last4 = EXCLUDED.iban_last4,
                   updated_by = EXCLUDED.updated_by, updated_at = now()
           RETURNING doctor_id, updated_at""",
        doctor["id"],
        doctor["clinic_id"],
        sealed.key_id,
        sealed.nonce,
        sealed.sealed,
        sealed.iban_last4,
        actor.user_id,
    )
    assert row is not None
    # The details themselves stay out of the chain, which can never be erased.
    await audit.record(
        conn,
        actor=actor,
        action="payout_account.update",
        clinic=doctor["clinic_id"],
        object=f"doctor/{doctor['id']}",
    )
    return row


async def set_payout_account(
    pool: asyncpg.Pool, sealer: PayoutSealer, me: Principal, doctor_id: UUID, details: Details
) -> asyncpg.Record:
    """Seal and store where the doctor is paid, if ``me`` may (404
    otherwise); the row's ``doctor_id`` and ``updated_at``."""
    async with pool.acquire() as conn, conn.transaction():
        doctor = await doctor_of(conn, me, doctor_id)
        sealed = await sealer.seal(conn, doctor["id"], doctor["user_id"], details)
        return await save_account(conn, doctor, sealed=sealed, actor=me)


async def payout_account(
    pool: asyncpg.Pool, sealer: PayoutSealer, me: Principal, doctor_id: UUID
) -> tuple[asyncpg.Record, Details]:
    """Where the doctor is paid, opened, if ``me`` may see it (404
    otherwise, and until it is set)."""
    async with pool.acquire() as conn:
        doctor = await doctor_of(conn, me, doctor_id)
        row = await conn.fetchrow(
            f"""SELECT {SEALED_COLUMNS.format(t="a")}, a.updated_at
                FROM doctor_payout_accounts a WHERE a.doctor_id = $1""",
            doctor["id"],
        )
        if row is None:
            raise NotFound("the doctor has no payout account yet")
        (details,) = await sealer.open_rows(conn, [row])
    return row, details
