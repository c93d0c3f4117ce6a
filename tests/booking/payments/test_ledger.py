"""The double-entry ledger (booking/payments/ledger.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from booking.payments.errors import (
    CurrencyMismatch,
    InvalidAmount,
    RefundExceedsCapture,
    Unbalanced,
)
from booking.payments.intent import Currency, Money
from booking.payments.ledger import (
    PAYOUTS_CLEARING,
    PLATFORM_REVENUE,
    CapturedPayment,
    Commission,
    Leg,
    Transaction,
    balances,
    capture,
    doctor_payable,
    gateway_clearing,
    payout,
    refund,
    refunded_total,
    split,
)

PKR = Currency.PKR
CLEARING = gateway_clearing("jazzcash")
DOCTOR = doctor_payable("d42")

commissions = st.builds(
    Commission,
    percent_bp=st.integers(0, 10_000),
    fixed_minor=st.integers(0, 100_000),
)


def paid(amount: int, currency: Currency = PKR) -> CapturedPayment:
    return CapturedPayment("pay_1", "jazzcash", "d42", Money(amount, currency))


def assert_balanced(txn: Transaction) -> None:
    totals: dict[Currency, int] = {}
    for entry in txn.entries:
        totals[entry.currency] = totals.get(entry.currency, 0) + entry.amount_minor
    assert all(total == 0 for total in totals.values())


def test_split_examples() -> None:
    # 12.5 % of PKR 1,500.00 is PKR 187.50, plus a PKR 20.00 fixed fee.
    assert split(150_000, Commission(1250, 2000)) == (20_750, 129_250)
    # Floor of the percentage favours the doctor: 10 % of 15 paisa is 1.5 -> 1.
    assert split(15, Commission(1000)) == (1, 14)
    # The fixed fee never takes more than the whole payment.
    assert split(500, Commission(0, 2000)) == (500, 0)
    assert split(0, Commission(1250, 2000)) == (0, 0)


@given(st.integers(0, 10**13), commissions)
def test_split_is_exact(amount: int, commission: Commission) -> None:
    platform, doctor = split(amount, commission)
    assert platform + doctor == amount
    assert 0 <= platform <= amount
    assert doctor >= 0
    # Never more than the exact percentage plus the fee.
    assert platform * 10_000 <= amount * commission.percent_bp + commission.fixed_minor * 10_000


@pytest.mark.parametrize(("bp", "fixed"), [(-1, 0), (10_001, 0), (100, -1), (True, 0)])
def test_commission_validation(bp: int, fixed: int) -> None:
    with pytest.raises(InvalidAmount):
        Commission(bp, fixed)


def test_capture_entries() -> None:
    txn = capture(paid(150_000), Commission(1250, 2000))
    assert txn.kind == "capture"
    assert txn.reference == "pay_1"
    assert {(e.account, e.amount_minor) for e in txn.entries} == {
        (CLEARING, 150_000),
        (DOCTOR, -129_250),
        (PLATFORM_REVENUE, -20_750),
    }
    # Zero legs are left out: no commission means two entries.
    assert len(capture(paid(100), Commission(0)).entries) == 2


def test_transaction_must_balance() -> None:
    with pytest.raises(Unbalanced) as info:
        Transaction("capture", "x", (Leg("a", 5, PKR), Leg("b", -4, PKR)))
    assert info.value.http_status == 500
    # Balanced in total but not per currency.
    with pytest.raises(Unbalanced):
        Transaction(
            "capture",
            "x",
            (
                Leg("a", 5, PKR),
                Leg("b", -5, Currency.AED),
            ),
        )
    with pytest.raises(Unbalanced):
        Transaction("capture", "x", (Leg("a", 5, PKR),))
    with pytest.raises(InvalidAmount):
        Leg("a", 0, PKR)


def test_refund_reverses_in_proportion() -> None:
    cap = capture(paid(1000), Commission(1000))  # platform 100, doctor 900
    first = refund(cap, Money(333, PKR))
    # Platform gives back ceil(100 * 333 / 1000) = 34, the doctor 299.
    assert first.amount_of(PLATFORM_REVENUE) == 34
    assert first.amount_of(DOCTOR) == 299
    assert first.amount_of(CLEARING) == -333
    second = refund(cap, Money(667, PKR), [first])
    assert second.amount_of(PLATFORM_REVENUE) == 66
    assert refunded_total(cap, [first, second]) == 1000
    totals = balances([cap, first, second])
    assert all(total == 0 for total in totals.values())
    with pytest.raises(RefundExceedsCapture):
        refund(cap, Money(1, PKR), [first, second])


def test_refund_validation() -> None:
    cap = capture(paid(1000), Commission(1000))
    with pytest.raises(CurrencyMismatch):
        refund(cap, Money(1, Currency.AED))
    with pytest.raises(InvalidAmount):
        refund(cap, Money(0, PKR))
    with pytest.raises(RefundExceedsCapture):
        refund(cap, Money(1001, PKR))
    other = capture(CapturedPayment("pay_2", "jazzcash", "d42", Money(1000, PKR)), Commission(0))
    with pytest.raises(ValueError, match="not a refund of"):
        refund(cap, Money(1, PKR), [refund(other, Money(1, PKR))])
    with pytest.raises(ValueError, match="expected a capture"):
        refund(refund(cap, Money(1, PKR)), Money(1, PKR))


@given(
    amount=st.integers(1, 10**9),
    commission=commissions,
    attempts=st.lists(st.integers(1, 10**9), max_size=12),
)
def test_any_refund_sequence(amount: int, commission: Commission, attempts: list[int]) -> None:
    """Partial refunds never exceed the capture, every transaction balances, and
    neither side ever gives back more than it received."""
    cap = capture(paid(amount), commission)
    platform_in = -cap.amount_of(PLATFORM_REVENUE)
    doctor_in = -cap.amount_of(DOCTOR)
    done: list[Transaction] = []
    for attempt in attempts:
        # Bias toward amounts that fit, so long sequences actually happen.
        want = attempt % amount + 1
        remaining = amount - refunded_total(cap, done)
        if want > remaining:
            with pytest.raises(RefundExceedsCapture):
                refund(cap, Money(want, PKR), done)
            continue
        txn = refund(cap, Money(want, PKR), done)
        assert_balanced(txn)
        assert all(e.amount_minor != 0 for e in txn.entries)
        assert txn.amount_of(PLATFORM_REVENUE) >= 0
        assert txn.amount_of(DOCTOR) >= 0
        done.append(txn)
        total = balances([cap, *done])
        assert -total.get((PLATFORM_REVENUE, PKR), 0) <= platform_in
        assert -total.get((DOCTOR, PKR), 0) <= doctor_in
        assert -total.get((PLATFORM_REVENUE, PKR), 0) >= 0
        assert -total.get((DOCTOR, PKR), 0) >= 0
    assert refunded_total(cap, done) <= amount
    if refunded_total(cap, done) < amount:
        # Refunding the rest always works and leaves every account at zero.
        done.append(refund(cap, Money(amount - refunded_total(cap, done), PKR), done))
    assert all(total == 0 for total in balances([cap, *done]).values())


@given(st.integers(1, 10**9), commissions, st.integers(1, 10**9))
def test_capture_then_payout_balances(amount: int, commission: Commission, out: int) -> None:
    cap = capture(paid(amount), commission)
    assert_balanced(cap)
    owed = -cap.amount_of(DOCTOR)
    if owed == 0:
        return
    txn = payout("d42", Money(out % owed + 1, PKR), "po_1")
    assert_balanced(txn)
    totals = balances([cap, txn])
    assert totals[(DOCTOR, PKR)] + totals[(PAYOUTS_CLEARING, PKR)] == -owed


def test_payout_entries_and_names() -> None:
    txn = payout("d42", Money(500, Currency.QAR), "po_9")
    assert txn.kind == "payout"
    assert {(e.account, e.amount_minor, e.currency) for e in txn.entries} == {
        (DOCTOR, 500, Currency.QAR),
        (PAYOUTS_CLEARING, -500, Currency.QAR),
    }
    with pytest.raises(InvalidAmount):
        payout("d42", Money(0, PKR), "po_0")
    with pytest.raises(ValueError, match="invalid doctor"):
        doctor_payable("a:b")
    assert CLEARING == "gateway_clearing:jazzcash"
