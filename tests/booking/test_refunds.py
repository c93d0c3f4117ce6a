from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from booking.errors import InvalidRefundPolicy, InvalidRefundRequest
from booking.lifecycle import TRANSITIONS, BookingEvent, BookingState
from booking.refunds import (
    CANCELLERS,
    DEFAULT_REFUND_POLICY,
    FULL,
    Canceller,
    RefundPolicy,
    RefundTier,
    refund_amount,
)

START = datetime(2024, 6, 3, 10, tzinfo=UTC)


def patient_refund(
    notice: timedelta, amount: int = 10_000, policy: RefundPolicy = DEFAULT_REFUND_POLICY
) -> int:
    return refund_amount(
        slot_start=START,
        cancelled_at=START - notice,
        cancelled_by=Canceller.PATIENT,
        amount_paid=amount,
        policy=policy,
    )


@pytest.mark.parametrize(
    ("notice", "refund"),
    [
        (timedelta(days=3), 10_000),
        (timedelta(hours=24), 10_000),  # bounds are inclusive, in the patient's favour
        (timedelta(hours=24) - timedelta(microseconds=1), 5_000),
        (timedelta(hours=2), 5_000),
        (timedelta(hours=2) - timedelta(seconds=1), 0),
        (timedelta(0), 0),
        (timedelta(hours=-1), 0),  # after the start
    ],
)
def test_default_policy_tiers(notice: timedelta, refund: int) -> None:
    assert patient_refund(notice) == refund


@pytest.mark.parametrize("who", [Canceller.DOCTOR, Canceller.CLINIC])
def test_doctor_and_clinic_cancellations_refund_in_full(who: Canceller) -> None:
    for notice in (timedelta(days=2), timedelta(minutes=5), timedelta(hours=-1)):
        assert (
            refund_amount(
                slot_start=START, cancelled_at=START - notice, cancelled_by=who, amount_paid=12_345
            )
            == 12_345
        )


@pytest.mark.parametrize(("amount", "refund"), [(101, 51), (1, 1), (0, 0), (99_999, 50_000)])
def test_half_refund_rounds_up(amount: int, refund: int) -> None:
    assert patient_refund(timedelta(hours=5), amount) == refund


def test_custom_policy() -> None:
    policy = RefundPolicy(
        (
            RefundTier(timedelta(days=7), FULL),
            RefundTier(timedelta(days=1), 3_333),
            RefundTier(timedelta(hours=-1), 1_000),  # even a little after the start
        )
    )
    assert patient_refund(timedelta(days=2), 100, policy) == 34  # 33.33 rounded up
    assert patient_refund(timedelta(minutes=-30), 100, policy) == 10
    assert patient_refund(timedelta(hours=-2), 100, policy) == 0
    assert patient_refund(timedelta(days=30), 100, RefundPolicy(())) == 0


def test_zones_of_the_datetimes_do_not_matter() -> None:
    karachi = ZoneInfo("Asia/Karachi")
    assert (
        refund_amount(
            slot_start=START.astimezone(karachi),
            cancelled_at=START - timedelta(hours=23, minutes=59),
            cancelled_by=Canceller.PATIENT,
            amount_paid=1000,
        )
        == 500
    )


@pytest.mark.parametrize(
    "tiers",
    [
        (RefundTier(timedelta(hours=2), 5_000), RefundTier(timedelta(hours=24), FULL)),  # unordered
        (
            RefundTier(timedelta(hours=24), FULL),
            RefundTier(timedelta(hours=24), 5_000),
        ),  # duplicate
        (
            RefundTier(timedelta(hours=24), 5_000),
            RefundTier(timedelta(hours=2), FULL),
        ),  # later pays more
    ],
)
def test_invalid_policies(tiers: tuple[RefundTier, ...]) -> None:
    with pytest.raises(InvalidRefundPolicy) as info:
        RefundPolicy(tiers)
    assert isinstance(info.value, ValueError)
    assert info.value.http_status == 422


@pytest.mark.parametrize("bp", [-1, FULL + 1, True, 50.0])
def test_invalid_tier(bp: int) -> None:
    with pytest.raises(InvalidRefundPolicy):
        RefundTier(timedelta(hours=1), bp)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"amount_paid": -1},
        {"amount_paid": 10.5},
        {"amount_paid": True},
        {"slot_start": datetime(2024, 6, 3, 10)},
        {"cancelled_at": datetime(2024, 6, 3, 10)},
        {"cancelled_by": "nurse"},
    ],
)
def test_invalid_requests(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "slot_start": START,
        "cancelled_at": START,
        "cancelled_by": Canceller.PATIENT,
        "amount_paid": 100,
    }
    with pytest.raises(InvalidRefundRequest):
        refund_amount(**(args | kwargs))  # type: ignore[arg-type]


def test_every_cancelling_event_has_a_canceller() -> None:
    cancelling = {
        e for row in TRANSITIONS.values() for e, s in row.items() if s is BookingState.CANCELLED
    }
    assert cancelling == set(CANCELLERS)
    assert CANCELLERS[BookingEvent.DECLINE] is Canceller.DOCTOR


notices = st.timedeltas(min_value=timedelta(days=-3), max_value=timedelta(days=30))
amounts = st.integers(0, 10**12)


@given(notices, notices, amounts)
def test_refund_bounds_rounding_and_monotonicity(a: timedelta, b: timedelta, amount: int) -> None:
    refund = patient_refund(a, amount)
    assert 0 <= refund <= amount
    bp = DEFAULT_REFUND_POLICY.basis_points_for(a)
    # Ceiling: never below the exact share, and less than one minor unit above it.
    assert 0 <= refund * FULL - amount * bp < FULL
    shorter, longer = sorted((a, b))
    assert patient_refund(shorter, amount) <= patient_refund(longer, amount)
