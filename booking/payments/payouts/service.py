"""A doctor's money in PostgreSQL: what the ledger says each doctor earned,
gave back, paid in commission, was paid out and is still owed."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from booking.payments import ledger

__all__ = ["CurrencyEarnings", "doctor_earnings"]


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
