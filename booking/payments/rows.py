"""How payments look in SQL: the intent's columns and its event payload, the
commission terms a capture reads, and the statement part that writes a ledger
posting.

Shared by :mod:`.checkout.verdicts` (the general path, one change per statement inside
a transaction) and :mod:`.checkout.settle` (a paid checkout settled in one statement),
so both write the same rows the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from uuid import UUID

from booking.payments import ledger
from booking.payments.intent import Currency, Money
from wadud.principal import Principal, Role
from wadud.state.db import Args

__all__ = [
    "COMMISSION",
    "INTENT_COLUMNS",
    "capture_of",
    "commission",
    "ledger_posting",
    "money",
    "payment_payload",
    "visible_to",
]

INTENT_COLUMNS: Final = (
    "id, clinic_id, booking_id, patient_id, amount_minor, currency, gateway, gateway_ref,"
    " status, checkout_url, checkout_method, checkout_fields, return_url, refunded_minor,"
    " failure_reason, expires_at, created_at, updated_at"
)

#: The clinic's and its region's commission (``FROM clinics c ...``), read
#: into the columns :func:`commission` takes.
COMMISSION: Final = """c.commission_bp, c.commission_fixed_minor,
       r.commission_bp AS region_bp, r.commission_fixed_minor AS region_fixed
    FROM clinics c LEFT JOIN region_commissions r ON r.region = c.region"""


def commission(row: Mapping[str, Any], default_bp: int) -> ledger.Commission:
    """The clinic's own commission, else its region's, else the default."""
    if row["commission_bp"] is not None:
        return ledger.Commission(row["commission_bp"], int(row["commission_fixed_minor"]))
    if row["region_bp"] is not None:
        return ledger.Commission(row["region_bp"], int(row["region_fixed"]))
    return ledger.Commission(default_bp, 0)


def capture_of(
    row: Mapping[str, Any], doctor_id: UUID | str, terms: Mapping[str, Any], default_bp: int
) -> ledger.Transaction:
    """The ledger capture of the intent ``row``, paid for a booking of
    ``doctor_id``, split by the commission ``terms`` (:func:`commission`)."""
    return ledger.capture(
        ledger.CapturedPayment(
            payment_id=str(row["id"]),
            gateway=row["gateway"],
            doctor_id=str(doctor_id),
            amount=money(row),
        ),
        commission(terms, default_bp),
    )


def payment_payload(row: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The intent as its outbox events carry it (JSON-ready)."""
    return {
        "payment_id": str(row["id"]),
        "booking_id": str(row["booking_id"]),
        "clinic_id": str(row["clinic_id"]),
        "patient_id": str(row["patient_id"]),
        "gateway": row["gateway"],
        "status": row["status"],
        "amount_minor": row["amount_minor"],
        "currency": row["currency"],
        "refunded_minor": row["refunded_minor"],
        **extra,
    }


def money(row: Mapping[str, Any], column: str = "amount_minor") -> Money:
    return Money(int(row[column]), Currency(row["currency"]))


def ledger_posting(
    txn: ledger.Transaction,
    args: Args,
    *,
    clinic_id: UUID | str,
    reference: str,
    payment_intent_id: UUID | str | None,
    booking_id: UUID | str | None,
    source: str = "",
    skip_duplicate: bool = True,
) -> str:
    """Data-modifying CTEs that write ``txn``: its header (``posted``, which
    yields the new id) and its entries, in order. ``source``: a CTE of the
    statement; the posting is written once if it yields a row, not at all
    otherwise. ``skip_duplicate``: a posting of that kind and reference
    already there writes nothing and ``posted`` yields no row (the caller
    then knows, without an aborted transaction); otherwise the statement
    fails on the unique key. Either way the database's balance trigger
    checks the entries at the end of the statement."""
    header = (
        f"{args(clinic_id)}::uuid, {args(txn.kind)}, {args(reference)},"
        f" {args(payment_intent_id)}::uuid, {args(booking_id)}::uuid"
    )
    rows = f"SELECT {header} FROM {source}" if source else f"VALUES ({header})"
    conflict = " ON CONFLICT DO NOTHING" if skip_duplicate else ""
    return f"""posted AS (
            INSERT INTO ledger_transactions
                (clinic_id, kind, reference, payment_intent_id, booking_id)
            {rows}{conflict} RETURNING id, clinic_id),
        posted_entries AS (
            INSERT INTO ledger_entries (transaction_id, clinic_id, account, amount_minor, currency)
            SELECT p.id, p.clinic_id, x.account, x.amount_minor, x.currency
            FROM posted AS p,
                 unnest({args([e.account for e in txn.entries])}::text[],
                        {args([e.amount_minor for e in txn.entries])}::bigint[],
                        {args([e.currency.value for e in txn.entries])}::text[])
                     WITH ORDINALITY AS x(account, amount_minor, currency, n)
            ORDER BY x.n)"""


def visible_to(me: Principal, row: Mapping[str, Any]) -> bool:
    """Whether ``me`` may see the payment ``row`` (its ``clinic_id`` and
    ``patient_id``): staff of its clinic, admins, and its patient. Anyone
    else is told it does not exist, so ids do not leak."""
    return me.oversees(row["clinic_id"]) or (
        me.role == Role.PATIENT and bool(row["patient_id"] == me.user_id)
    )
