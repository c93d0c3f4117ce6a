"""The ledger in PostgreSQL: the one writer, the balance trigger, append-only
rows, the consistency check, commission precedence, and (hypothesis) that
any sequence of refunds and payouts persisted through the builders keeps
every transaction balanced and the earnings identity true."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from booking.payments import ledger
from booking.payments.intent import Currency, Money
from booking.payments.payouts.service import doctor_earnings
from booking.payments.postings import (
    DuplicatePosting,
    commission_for,
    ledger_is_balanced,
    post_transaction,
)
from tests.booking.factories import make_clinic
from tests.booking.payments.checkout.test_payments_api import pool_of
from tests.conftest import Api


class _Rollback(Exception):
    pass


def _capture(gross: int, commission: ledger.Commission, doctor: str) -> ledger.Transaction:
    payment = ledger.CapturedPayment(
        payment_id=str(uuid.uuid4()),
        gateway="sandbox",
        doctor_id=doctor,
        amount=Money(gross, Currency.PKR),
    )
    return ledger.capture(payment, commission)


async def _balances(conn: asyncpg.Connection, clinic_id: uuid.UUID) -> dict[str, int]:
    rows = await conn.fetch(
        """SELECT account, sum(amount_minor) AS total FROM ledger_entries
           WHERE clinic_id = $1 GROUP BY account""",
        clinic_id,
    )
    return {r["account"]: int(r["total"]) for r in rows}


async def _post_one_legged(conn: asyncpg.Connection, cid: uuid.UUID) -> None:
    async with conn.transaction():
        bad = await conn.fetchval(
            """INSERT INTO ledger_transactions (clinic_id, kind, reference)
               VALUES ($1, 'adjustment', 'oops') RETURNING id""",
            cid,
        )
        await conn.execute(
            """INSERT INTO ledger_entries (transaction_id, clinic_id, account,
                                          amount_minor, currency)
               VALUES ($1, $2, 'platform_revenue', 5, 'PKR')""",
            bad,
            cid,
        )


async def _post_two_one_off(conn: asyncpg.Connection, cid: uuid.UUID) -> None:
    async with conn.transaction():
        a, b = await conn.fetchval(
            """WITH t AS (INSERT INTO ledger_transactions (clinic_id, kind, reference)
                          VALUES ($1, 'adjustment', 'pair-a'), ($1, 'adjustment', 'pair-b')
                          RETURNING id, reference)
               SELECT array_agg(id ORDER BY reference) FROM t""",
            cid,
        )
        await conn.execute(
            """INSERT INTO ledger_entries (transaction_id, clinic_id, account,
                                          amount_minor, currency)
               VALUES ($1, $3, 'platform_revenue', 5, 'PKR'),
                      ($1, $3, 'payouts_clearing', -5, 'PKR'),
                      ($2, $3, 'platform_revenue', 5, 'PKR'),
                      ($2, $3, 'payouts_clearing', -4, 'PKR')""",
            a,
            b,
            cid,
        )


async def _post_in_halves(conn: asyncpg.Connection, cid: uuid.UUID) -> None:
    async with conn.transaction():
        tid = await conn.fetchval(
            """INSERT INTO ledger_transactions (clinic_id, kind, reference)
               VALUES ($1, 'adjustment', 'halves') RETURNING id""",
            cid,
        )
        for amount in (5, -5):
            await conn.execute(
                """INSERT INTO ledger_entries (transaction_id, clinic_id, account,
                                              amount_minor, currency)
                   VALUES ($1, $2, 'platform_revenue', $3, 'PKR')""",
                tid,
                cid,
                amount,
            )


async def _check_empty_header(conn: asyncpg.Connection, cid: uuid.UUID) -> None:
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO ledger_transactions (clinic_id, kind, reference)
               VALUES ($1, 'adjustment', 'empty')""",
            cid,
        )
        assert not await ledger_is_balanced(conn)
        assert not await ledger_is_balanced(conn, cid)
        raise _Rollback


async def _booking(conn: asyncpg.Connection) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A clinic, a doctor and a booking to hang postings on (in the caller's
    transaction, rolled back with it)."""
    cid = await conn.fetchval(
        "INSERT INTO clinics (name, region, currency) VALUES ('L', 'PK', 'PKR') RETURNING id"
    )
    did, key = await conn.fetchrow(
        """INSERT INTO doctors (clinic_id, display_name, specialty, fee_minor, currency, region)
           VALUES ($1, 'Dr. L', 'general', 1, 'PKR', 'PK') RETURNING id, key""",
        cid,
    )
    patient = await conn.fetchval(
        "INSERT INTO users (role, anonymous) VALUES ('patient', true) RETURNING id"
    )
    bid = await conn.fetchval(
        """INSERT INTO bookings (clinic_id, doctor_id, doctor_key, patient_id, type, starts_at,
               ends_at, blocked, status, price_minor, currency)
           VALUES ($1, $2, $3, $4, 'video', now(), now() + interval '20 minutes',
                   tstzrange(now(), now() + interval '20 minutes'), 'requested', 1, 'PKR')
           RETURNING id""",
        cid,
        did,
        key,
        patient,
    )
    return cid, did, bid


async def test_post_transaction_is_checked_whole(api: Api) -> None:
    clinic = await make_clinic(api)
    cid = uuid.UUID(clinic.id)
    doctor = str(uuid.uuid4())
    pool = pool_of(api)
    txn = _capture(10_000, ledger.Commission(1000), doctor)
    async with pool.acquire() as conn:
        async with conn.transaction():
            tid = await post_transaction(conn, txn, clinic_id=cid)
        entries = await conn.fetch(
            """SELECT account, amount_minor FROM ledger_entries
               WHERE transaction_id = $1 ORDER BY id""",
            tid,
        )
        assert [(e["account"], e["amount_minor"]) for e in entries] == [
            ("gateway_clearing:sandbox", 10_000),
            (f"doctor_payable:{doctor}", -9_000),
            ("platform_revenue", -1_000),
        ]
        assert await ledger_is_balanced(conn)
        assert await ledger_is_balanced(conn, cid)

        # The same kind and reference twice is refused, with a typed error.
        with pytest.raises(DuplicatePosting):
            async with conn.transaction():
                await post_transaction(conn, txn, clinic_id=cid)

        # Entries that do not balance are refused by the database, at the
        # end of the statement that wrote them.
        with pytest.raises(asyncpg.CheckViolationError):
            await _post_one_legged(conn, cid)
        # One statement writing two transactions: one of them off is enough,
        # and the error names it.
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            await _post_two_one_off(conn, cid)
        assert "does not balance" in str(refused.value)
        # Nor may two statements balance each other's halves.
        with pytest.raises(asyncpg.CheckViolationError):
            await _post_in_halves(conn, cid)
        assert await ledger_is_balanced(conn)

        # Append-only: corrections are new transactions, never edits.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE ledger_entries SET amount_minor = 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM ledger_transactions")

        # A header without entries escapes the trigger (it fires per entry);
        # the check function catches it.
        with pytest.raises(_Rollback):
            await _check_empty_header(conn, cid)
        assert await ledger_is_balanced(conn)


async def test_history_and_ledger_rows_belong_to_their_parents_clinic(api: Api) -> None:
    """Booking and payment events, intents and ledger entries name their
    parent's clinic (migration 0013): another clinic's id is refused."""
    pool = pool_of(api)
    async with pool.acquire() as conn:
        other = uuid.UUID((await make_clinic(api)).id)
        with pytest.raises(_Rollback):
            await _tenant_checks(conn, other)


async def _tenant_checks(conn: asyncpg.Connection, other: uuid.UUID) -> None:
    async with conn.transaction():
        cid, _, bid = await _booking(conn)
        iid = await conn.fetchval(
            """INSERT INTO payment_intents (clinic_id, booking_id, patient_id, amount_minor,
                   currency, gateway, status, expires_at)
               SELECT $1, id, patient_id, 1, 'PKR', 'sandbox', 'requires_payment',
                      now() + interval '1 hour'
               FROM bookings WHERE id = $2 RETURNING id""",
            cid,
            bid,
        )
        tid = await conn.fetchval(
            """INSERT INTO ledger_transactions (clinic_id, kind, reference)
               VALUES ($1, 'adjustment', 'tenant') RETURNING id""",
            cid,
        )
        refused = {
            "booking_events": (
                """INSERT INTO booking_events (booking_id, clinic_id, event, to_state)
                   VALUES ($1, $2, 'note', 'requested')""",
                bid,
            ),
            "payment_intents": (
                """INSERT INTO payment_intents (clinic_id, booking_id, patient_id,
                       amount_minor, currency, gateway, status, expires_at)
                   SELECT $2, id, patient_id, 1, 'PKR', 'other', 'failed', now()
                   FROM bookings WHERE id = $1""",
                bid,
            ),
            "payment_events": (
                """INSERT INTO payment_events (payment_intent_id, clinic_id, event, to_state)
                   VALUES ($1, $2, 'note', 'requires_payment')""",
                iid,
            ),
            "ledger_entries": (
                # Two legs: each statement must leave its transactions balanced.
                """INSERT INTO ledger_entries (transaction_id, clinic_id, account,
                       amount_minor, currency)
                   VALUES ($1, $2, 'platform_revenue', 5, 'PKR'),
                          ($1, $2, 'payouts_clearing', -5, 'PKR')""",
                tid,
            ),
        }
        for sql, parent in refused.values():
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                async with conn.transaction():
                    await conn.execute(sql, parent, other)
            # The parent's own clinic is accepted (and rolled back with the rest).
            await conn.execute(sql, parent, cid)
        raise _Rollback


async def test_commission_precedence(api: Api) -> None:
    clinic = await make_clinic(api, region="AE")
    cid = uuid.UUID(clinic.id)
    pool = pool_of(api)
    async with pool.acquire() as conn:
        assert await commission_for(conn, cid, 1500) == ledger.Commission(1500, 0)
        await conn.execute(
            "INSERT INTO region_commissions (region, commission_bp, commission_fixed_minor)"
            " VALUES ('AE', 900, 250)"
        )
        assert await commission_for(conn, cid, 1500) == ledger.Commission(900, 250)
        await conn.execute(
            "UPDATE clinics SET commission_bp = 0, commission_fixed_minor = 0 WHERE id = $1", cid
        )
        assert await commission_for(conn, cid, 1500) == ledger.Commission(0, 0)


_steps = st.lists(
    st.tuples(st.sampled_from(["refund", "payout"]), st.integers(min_value=1, max_value=10**6)),
    max_size=6,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    gross=st.integers(min_value=1, max_value=10**7),
    bp=st.integers(min_value=0, max_value=10_000),
    fixed=st.integers(min_value=0, max_value=10**5),
    steps=_steps,
    refund_all=st.booleans(),
)
async def test_persisted_postings_keep_the_books(
    api: Api, gross: int, bp: int, fixed: int, steps: list[tuple[str, int]], refund_all: bool
) -> None:
    pool = pool_of(api)
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                cid, did, bid = await _booking(conn)
                doctor = str(did)
                account = ledger.doctor_payable(doctor)
                capture = _capture(gross, ledger.Commission(bp, fixed), doctor)
                await post_transaction(conn, capture, clinic_id=cid, booking_id=bid)
                refunds: list[ledger.Transaction] = []
                refunded = 0
                if refund_all:
                    steps = [*steps, ("refund", gross)]
                for kind, amount in steps:
                    if kind == "refund":
                        amount = min(amount, gross - refunded)
                        if amount == 0:
                            continue
                        txn = ledger.refund(capture, Money(amount, Currency.PKR), refunds)
                        await post_transaction(
                            conn, txn, clinic_id=cid, reference=str(uuid.uuid4()), booking_id=bid
                        )
                        refunds.append(txn)
                        refunded += amount
                    else:
                        payable = -(await _balances(conn, cid)).get(account, 0)
                        amount = min(amount, payable)
                        if amount <= 0:
                            continue
                        txn = ledger.payout(doctor, Money(amount, Currency.PKR), str(uuid.uuid4()))
                        await post_transaction(conn, txn, clinic_id=cid)
                    assert await ledger_is_balanced(conn, cid)
                    balances = await _balances(conn, cid)
                    assert sum(balances.values()) == 0
                (figures,) = await doctor_earnings(conn, did)
                assert figures.gross_minor == gross
                assert figures.refunds_minor == refunded
                assert (
                    figures.gross_minor
                    - figures.refunds_minor
                    - figures.commission_minor
                    - figures.paid_out_minor
                    == figures.payable_minor
                )
                assert figures.payable_minor == -(await _balances(conn, cid)).get(account, 0)
                if refunded == gross and figures.paid_out_minor == 0:
                    # Fully refunded: both sides gave back exactly what they got.
                    assert figures.commission_minor == 0
                    assert figures.payable_minor == 0
                raise _Rollback
        except _Rollback:
            pass
