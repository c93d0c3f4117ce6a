"""The payment intent state machine and money (booking/payments/intent.py)."""

from __future__ import annotations

import contextlib
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from booking.payments.errors import (
    CurrencyMismatch,
    InvalidAmount,
    InvalidPaymentTransition,
    PaymentError,
    RefundExceedsCapture,
    UnsupportedCurrency,
)
from booking.payments.intent import (
    TERMINAL_STATES,
    TRANSITIONS,
    Currency,
    IntentEvent,
    IntentState,
    Money,
    PaymentIntent,
    refund_event,
    transition,
)
from tests.transitions import reachable

S, E = IntentState, IntentEvent
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
PAID_STATES = {S.SUCCEEDED, S.PARTIALLY_REFUNDED, S.REFUNDED}


def intent(**overrides: object) -> PaymentIntent:
    fields: dict[str, object] = {
        "id": "pi_1",
        "amount": Money(150_000, Currency.PKR),
        "description": "consultation",
        "return_url": "https://api.example/pay/return",
        "created_at": T0,
        "expires_at": T0 + timedelta(minutes=30),
    }
    fields.update(overrides)
    return PaymentIntent(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "event", "after"),
    [
        (S.REQUIRES_PAYMENT, E.REDIRECT, S.PROCESSING),
        (S.PROCESSING, E.REDIRECT, S.PROCESSING),
        (S.PROCESSING, E.VERIFIED_SUCCESS, S.SUCCEEDED),
        (S.PROCESSING, E.VERIFIED_FAILURE, S.FAILED),
        (S.REQUIRES_PAYMENT, E.CANCEL, S.CANCELLED),
        (S.REQUIRES_PAYMENT, E.EXPIRE, S.CANCELLED),
        (S.PROCESSING, E.EXPIRE, S.CANCELLED),
        (S.SUCCEEDED, E.VERIFIED_SUCCESS, S.SUCCEEDED),
        (S.SUCCEEDED, E.REFUND_PARTIAL, S.PARTIALLY_REFUNDED),
        (S.SUCCEEDED, E.REFUND_FULL, S.REFUNDED),
        (S.PARTIALLY_REFUNDED, E.REFUND_PARTIAL, S.PARTIALLY_REFUNDED),
        (S.PARTIALLY_REFUNDED, E.REFUND_FULL, S.REFUNDED),
    ],
)
def test_allowed(state: IntentState, event: IntentEvent, after: IntentState) -> None:
    assert transition(state, event) is after


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.REQUIRES_PAYMENT, E.VERIFIED_SUCCESS),  # never paid without a checkout
        (S.PROCESSING, E.CANCEL),  # money may be moving at the gateway
        (S.SUCCEEDED, E.VERIFIED_FAILURE),  # conflicting verdicts
        (S.SUCCEEDED, E.CANCEL),
        (S.FAILED, E.VERIFIED_SUCCESS),
        (S.FAILED, E.REDIRECT),  # a retry is a new intent
        (S.REFUNDED, E.REFUND_PARTIAL),
        (S.CANCELLED, E.VERIFIED_SUCCESS),
    ],
)
def test_forbidden(state: IntentState, event: IntentEvent) -> None:
    with pytest.raises(InvalidPaymentTransition) as info:
        transition(state, event)
    assert info.value.http_status == 409
    assert info.value.code == "invalid_transition"
    assert (info.value.state, info.value.event) == (state.value, event.value)
    assert isinstance(info.value, PaymentError)


def test_unknown_names_are_invalid_transitions() -> None:
    with pytest.raises(InvalidPaymentTransition):
        transition("nope", E.REDIRECT)  # type: ignore[arg-type]
    with pytest.raises(InvalidPaymentTransition):
        transition(S.PROCESSING, "teleport")  # type: ignore[arg-type]


def test_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(IntentState)


@given(st.sampled_from(IntentState), st.sampled_from(IntentEvent))
def test_transition_is_the_table(state: IntentState, event: IntentEvent) -> None:
    expected = TRANSITIONS[state].get(event)
    if expected is None:
        with pytest.raises(InvalidPaymentTransition):
            transition(state, event)
    else:
        assert transition(state, event) is expected


@given(st.sampled_from(sorted(TERMINAL_STATES)), st.sampled_from(IntentEvent))
def test_terminal_states_are_never_left(state: IntentState, event: IntentEvent) -> None:
    with contextlib.suppress(InvalidPaymentTransition):
        assert transition(state, event) is state


@given(st.lists(st.sampled_from(IntentEvent), max_size=30))
def test_random_walks_keep_the_money_invariants(events: list[IntentEvent]) -> None:
    """Whatever arrives, in any order: once paid, never unpaid; no refund before payment."""
    state = S.REQUIRES_PAYMENT
    seen = [state]
    for event in events:
        try:
            state = transition(state, event)
        except InvalidPaymentTransition:
            continue
        seen.append(state)
    for before, after in itertools.pairwise(seen):
        if before in PAID_STATES:
            assert after in PAID_STATES
        if after in PAID_STATES and before not in PAID_STATES:
            assert before is S.PROCESSING  # only a verified result pays
        if before in TERMINAL_STATES:
            assert after is before


def test_every_state_is_reachable() -> None:
    assert reachable(TRANSITIONS, S.REQUIRES_PAYMENT) == set(IntentState)


def test_intent_apply_and_validation() -> None:
    paid = intent().apply(E.REDIRECT).apply(E.VERIFIED_SUCCESS)
    assert paid.state is S.SUCCEEDED
    with pytest.raises(InvalidPaymentTransition):
        paid.apply(E.CANCEL)
    with pytest.raises(InvalidAmount):
        intent(amount=Money(0, Currency.PKR))
    with pytest.raises(ValueError, match="aware"):
        intent(created_at=datetime(2025, 3, 1, 9, 0))  # naive on purpose
    with pytest.raises(ValueError, match="after"):
        intent(expires_at=T0)


def test_money() -> None:
    assert Money(150_050, Currency.PKR) + Money(50, Currency.PKR) == Money(150_100, Currency.PKR)
    assert str(Money(150_005, Currency.AED)) == "AED 1500.05"
    assert str(Money(-5, Currency.SAR)) == "SAR -0.05"
    assert Money(1, "QAR").currency is Currency.QAR  # type: ignore[arg-type]
    assert Money.parse_minor("0012", "PKR") == Money(12, Currency.PKR)
    with pytest.raises(CurrencyMismatch):
        _ = Money(1, Currency.PKR) + Money(1, Currency.AED)
    with pytest.raises(UnsupportedCurrency):
        Money(1, "USD")  # type: ignore[arg-type]
    for bad in (1.5, True, "1"):
        with pytest.raises(InvalidAmount):
            Money(bad, Currency.PKR)  # type: ignore[arg-type]
    for text in ("", "-1", "1.00", " 1", "١٢"):
        with pytest.raises(InvalidAmount):
            Money.parse_minor(text, Currency.PKR)


def test_refund_event() -> None:
    captured = Money(1000, Currency.PKR)
    zero = Money(0, Currency.PKR)
    assert refund_event(captured, zero, Money(400, Currency.PKR)) is E.REFUND_PARTIAL
    rest = refund_event(captured, Money(400, Currency.PKR), Money(600, Currency.PKR))
    assert rest is E.REFUND_FULL
    with pytest.raises(RefundExceedsCapture):
        refund_event(captured, Money(400, Currency.PKR), Money(601, Currency.PKR))
    with pytest.raises(InvalidAmount):
        refund_event(captured, zero, zero)
    with pytest.raises(CurrencyMismatch):
        refund_event(captured, zero, Money(1, Currency.AED))
