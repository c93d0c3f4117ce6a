"""The payments tables' writers, and the readers every part of payments shares.

Every change of an intent goes through :func:`move_intent` (the core's
transition table, a ``payment_events`` row, the new state) on a row locked
``FOR UPDATE``; :func:`post_transaction` is the only writer of
``ledger_transactions`` and ``ledger_entries`` (each transaction whole in one
statement; the database's balance trigger judges it as the statement ends);
:func:`record_intent_event` writes a history line that moves nothing. Below
the payments service, refunds and the refund-due book, which all write
through them.

Refund rows are stored in the ledger with their own id as ``reference``
(``ledger_transactions`` is unique on ``(kind, reference)`` and one payment
may be refunded several times); :func:`load_ledger` rebuilds the core's
:class:`~booking.payments.ledger.Transaction` with the payment id as
reference, which is what :func:`booking.payments.ledger.refund` expects.
:func:`ledger_is_balanced` checks the whole of it, or one clinic's part;
:func:`ledger_page` pages through a clinic's; :func:`visible_intent` is
an intent as the one asking may see it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

import asyncpg

from booking.payments import ledger
from booking.payments.errors import PaymentError
from booking.payments.intent import Currency, IntentEvent, IntentState, transition
from booking.payments.rows import (
    COMMISSION,
    INTENT_COLUMNS,
    commission,
    ledger_posting,
    payment_payload,
    visible_to,
)
from wadud.errors import Conflict, NotFound
from wadud.messaging import outbox
from wadud.principal import Principal
from wadud.state.db import Args

__all__ = [
    "DuplicatePosting",
    "commission_for",
    "ledger_is_balanced",
    "ledger_page",
    "load_ledger",
    "move_intent",
    "post_transaction",
    "record_intent_event",
    "visible_intent",
]


class DuplicatePosting(PaymentError, Conflict):
    """A ledger transaction of that kind and reference exists already."""

    http_status = 409
    code = "duplicate_posting"


async def record_intent_event(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    event: str,
    before: str | None,
    after: str,
    detail: Mapping[str, Any] | None,
) -> None:
    await conn.execute(
        """INSERT INTO payment_events
               (payment_intent_id, clinic_id, event, from_state, to_state, detail)
           VALUES ($1, $2, $3, $4, $5, $6::jsonb)""",
        row["id"],
        row["clinic_id"],
        event,
        before,
        after,
        dict(detail or {}),
    )


async def post_transaction(
    conn: asyncpg.Connection,
    txn: ledger.Transaction,
    *,
    clinic_id: UUID,
    reference: str | None = None,
    payment_intent_id: UUID | None = None,
    booking_id: UUID | None = None,
) -> UUID:
    """Persist a balanced ``txn`` (header and entries); the ledger's only writer.

    ``reference`` overrides ``txn.reference`` in the table (refunds: their own
    id). The balance trigger checks the entries as the statement ends.
    """
    # One round trip, and no savepoint: a duplicate (kind, reference) inserts
    # nothing (ON CONFLICT) rather than aborting the caller's transaction.
    args = Args()
    posting = ledger_posting(
        txn,
        args,
        clinic_id=clinic_id,
        reference=reference or txn.reference,
        payment_intent_id=payment_intent_id,
        booking_id=booking_id,
    )
    txn_id: UUID | None = await conn.fetchval(f"WITH {posting} SELECT id FROM posted", *args.values)
    if txn_id is None:
        raise DuplicatePosting(f"{txn.kind} {reference or txn.reference} is posted already")
    return txn_id


async def load_ledger(
    conn: asyncpg.Connection, payment_intent_id: UUID, kind: str
) -> list[ledger.Transaction]:
    """A payment's postings of ``kind``, rebuilt as core transactions whose
    reference is the payment id (see the module docstring)."""
    rows = await conn.fetch(
        """SELECT t.id, e.account, e.amount_minor, e.currency
           FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id
           WHERE t.payment_intent_id = $1 AND t.kind = $2
           ORDER BY t.created_at, t.id, e.id""",
        payment_intent_id,
        kind,
    )
    grouped: dict[UUID, list[ledger.Leg]] = {}
    for r in rows:
        grouped.setdefault(r["id"], []).append(
            ledger.Leg(r["account"], int(r["amount_minor"]), Currency(r["currency"]))
        )
    return [ledger.Transaction(kind, str(payment_intent_id), tuple(e)) for e in grouped.values()]


async def ledger_is_balanced(
    conn: asyncpg.Connection | asyncpg.Pool, clinic_id: UUID | None = None
) -> bool:
    """Whether the ledger (or one clinic's part) holds together: every
    transaction has at least two entries of its own clinic and sums to zero
    per currency, and so the whole sums to zero per currency."""
    return bool(
        await conn.fetchval(
            """SELECT NOT EXISTS (
                       SELECT 1 FROM ledger_entries
                       WHERE $1::uuid IS NULL OR clinic_id = $1
                       GROUP BY currency HAVING sum(amount_minor) <> 0)
                 AND NOT EXISTS (
                       SELECT 1 FROM ledger_entries
                       WHERE $1::uuid IS NULL OR clinic_id = $1
                       GROUP BY transaction_id, currency HAVING sum(amount_minor) <> 0)
                 AND NOT EXISTS (
                       SELECT 1 FROM ledger_transactions t
                       WHERE ($1::uuid IS NULL OR t.clinic_id = $1)
                         AND (SELECT count(*) FROM ledger_entries e
                              WHERE e.transaction_id = t.id AND e.clinic_id = t.clinic_id) < 2)
                 AND NOT EXISTS (
                       SELECT 1 FROM ledger_entries e JOIN ledger_transactions t
                         ON t.id = e.transaction_id
                       WHERE ($1::uuid IS NULL OR t.clinic_id = $1)
                         AND e.clinic_id <> t.clinic_id)""",
            clinic_id,
        )
    )


async def commission_for(
    conn: asyncpg.Connection, clinic_id: UUID, default_bp: int
) -> ledger.Commission:
    """The clinic's own commission, else its region's, else the configured default."""
    row = await conn.fetchrow(f"SELECT {COMMISSION} WHERE c.id = $1", clinic_id)
    if row is None:
        raise NotFound("no such clinic")
    return commission(row, default_bp)


async def ledger_page(
    pool: asyncpg.Pool, clinic_id: UUID, kind: str | None, limit: int, offset: int
) -> tuple[list[asyncpg.Record], list[asyncpg.Record], bool]:
    """A page of the clinic's ledger transactions, newest first (of ``kind``
    when given): their headers, all their entries in order, and whether a
    later page has more. 404 for a clinic that does not exist."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT 1 FROM clinics WHERE id = $1", clinic_id):
            raise NotFound("no such clinic")
        headers = await conn.fetch(
            """SELECT id, kind, reference, payment_intent_id, booking_id, created_at
               FROM ledger_transactions
               WHERE clinic_id = $1 AND ($2::text IS NULL OR kind = $2)
               ORDER BY created_at DESC, id LIMIT $3 OFFSET $4""",
            clinic_id,
            kind,
            limit + 1,
            offset,
        )
        page = headers[:limit]
        entries = await conn.fetch(
            """SELECT transaction_id, account, amount_minor, currency FROM ledger_entries
               WHERE transaction_id = ANY($1::uuid[]) ORDER BY id""",
            [h["id"] for h in page],
        )
    return list(page), list(entries), len(headers) > limit


async def visible_intent(
    conn: asyncpg.Connection, me: Principal, payment_id: UUID, *, lock: bool = False
) -> asyncpg.Record:
    """The intent ``payment_id`` if ``me`` may see it
    (:func:`~booking.payments.rows.visible_to`), locked ``FOR UPDATE`` with
    ``lock``; 404 otherwise."""
    row = await conn.fetchrow(
        f"SELECT {INTENT_COLUMNS} FROM payment_intents WHERE id = $1"
        + (" FOR UPDATE" if lock else ""),
        payment_id,
    )
    if row is None or not visible_to(me, row):
        raise NotFound("no such payment")
    return row


#: The rest of :func:`move_intent`'s final SELECT with ``capture_terms``.
_TERMS = f""", t.capture_doctor_id, t.commission_bp, t.commission_fixed_minor,
                   t.region_bp, t.region_fixed
            FROM u LEFT JOIN LATERAL (
                SELECT b.doctor_id AS capture_doctor_id, {COMMISSION}
                JOIN bookings b ON b.id = u.booking_id WHERE c.id = u.clinic_id) AS t ON true"""


async def move_intent(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    event: IntentEvent,
    detail: Mapping[str, Any] | None = None,
    *,
    announce: str = "",
    announce_extra: Mapping[str, Any] | None = None,
    capture_terms: bool = False,
    **updates: Any,
) -> asyncpg.Record:
    """Apply ``event`` to a locked intent row: the core's table decides, the
    row and a ``payment_events`` line record it. Extra columns in ``updates``.
    ``announce``: an outbox topic whose event (:func:`payment_payload` of the
    moved row, plus ``announce_extra``) is written in the same statement.
    ``capture_terms``: the row also carries what a capture needs (the
    booking's doctor and the commission, see :func:`.checkout.verdicts._capture`)."""
    before = IntentState(row["status"])
    after = transition(before, event)
    args: list[Any] = [row["id"], after.value, event.value, before.value, dict(detail or {})]
    sets = ["status = $2", "updated_at = now()"]
    for column, value in updates.items():
        args.append(value)
        sets.append(f"{column} = ${len(args)}")
    ctes = ""
    if announce:
        # Every column of the payload but the state is the locked row's own.
        moved = {**dict(row), **updates, "status": after.value}
        cte, more = outbox.event(
            announce, payment_payload(moved, **(announce_extra or {})), len(args) + 1
        )
        ctes = f", {cte}"
        args.extend(more)
    # One round trip: the row, its payment_events line (and its event).
    new = await conn.fetchrow(
        f"""WITH u AS (UPDATE payment_intents SET {", ".join(sets)} WHERE id = $1
                       RETURNING {INTENT_COLUMNS}),
                 e AS (INSERT INTO payment_events
                           (payment_intent_id, clinic_id, event, from_state, to_state, detail)
                       SELECT id, clinic_id, $3, $4, $2, $5::jsonb FROM u){ctes}
            SELECT u.*{_TERMS if capture_terms else " FROM u"}""",
        *args,
    )
    assert new is not None
    if announce:
        outbox.written(conn)
    return new
