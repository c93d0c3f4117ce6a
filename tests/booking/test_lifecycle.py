from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from booking.errors import BookingError
from booking.lifecycle import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    BookingEvent,
    BookingState,
    InvalidTransition,
    allowed_events,
    is_terminal,
    transition,
)
from tests.transitions import reachable
from wadud.errors import Conflict, WadudError

S = BookingState
E = BookingEvent


def run(state: BookingState, *events: BookingEvent) -> BookingState:
    for event in events:
        state = transition(state, event)
    return state


def test_happy_path() -> None:
    assert run(S.HELD, E.CONFIRM_PAYMENT, E.ACCEPT, E.START, E.COMPLETE) is S.COMPLETED


@pytest.mark.parametrize(
    ("events", "end"),
    [
        ((E.EXPIRE_HOLD,), S.EXPIRED),
        ((E.CANCEL_BY_PATIENT,), S.CANCELLED),
        ((E.CONFIRM_PAYMENT, E.DECLINE), S.CANCELLED),
        ((E.CONFIRM_PAYMENT, E.RESCHEDULE, E.ACCEPT, E.RESCHEDULE), S.ACCEPTED),
        ((E.CONFIRM_PAYMENT, E.ACCEPT, E.MARK_NO_SHOW), S.NO_SHOW),
        ((E.CONFIRM_PAYMENT, E.ACCEPT, E.START, E.MARK_NO_SHOW), S.NO_SHOW),
        ((E.CONFIRM_PAYMENT, E.ACCEPT, E.START, E.CANCEL_BY_DOCTOR), S.CANCELLED),
        ((E.CONFIRM_PAYMENT, E.ACCEPT, E.CANCEL_BY_CLINIC), S.CANCELLED),
    ],
)
def test_paths(events: tuple[BookingEvent, ...], end: BookingState) -> None:
    assert run(S.HELD, *events) is end


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.HELD, E.ACCEPT),  # not paid yet
        (S.HELD, E.RESCHEDULE),  # drop the hold and hold the new slot instead
        (S.REQUESTED, E.START),  # the doctor has not accepted
        (S.REQUESTED, E.EXPIRE_HOLD),
        (S.ACCEPTED, E.DECLINE),  # too late to decline; cancel instead
        (S.IN_PROGRESS, E.CANCEL_BY_PATIENT),  # leaving a call is not cancelling
        (S.IN_PROGRESS, E.RESCHEDULE),
        (S.COMPLETED, E.CANCEL_BY_CLINIC),
        (S.EXPIRED, E.CONFIRM_PAYMENT),  # a payment that lands after the hold lapsed
    ],
)
def test_refused(state: BookingState, event: BookingEvent) -> None:
    with pytest.raises(InvalidTransition) as info:
        transition(state, event)
    err = info.value
    assert (err.state, err.event) == (state, event)
    assert isinstance(err, BookingError)
    assert isinstance(err, Conflict)
    assert isinstance(err, WadudError)
    assert not isinstance(err, ValueError)
    assert err.extra == {"state": state.value, "event": event.value}
    assert err.http_status == 409
    assert err.code == "invalid_transition"


def test_values_are_what_the_database_stores() -> None:
    assert [s.value for s in BookingState] == [
        "held",
        "requested",
        "accepted",
        "in_progress",
        "completed",
        "cancelled",
        "no_show",
        "expired",
    ]
    # Raw strings read from a row work as their members do.
    assert transition("held", "confirm_payment") is S.REQUESTED  # type: ignore[arg-type]
    with pytest.raises(InvalidTransition):
        transition("paused", "accept")  # type: ignore[arg-type]


def test_table_is_total_and_closed() -> None:
    assert set(TRANSITIONS) == set(BookingState)
    for row in TRANSITIONS.values():
        assert set(row) <= set(BookingEvent)
        assert set(row.values()) <= set(BookingState)
    with pytest.raises(TypeError):
        TRANSITIONS[S.HELD][E.ACCEPT] = S.ACCEPTED  # type: ignore[index]


def test_active_and_terminal_states() -> None:
    assert {S.HELD, S.REQUESTED, S.ACCEPTED, S.IN_PROGRESS} == ACTIVE_STATES
    assert {S.COMPLETED, S.CANCELLED, S.NO_SHOW, S.EXPIRED} == TERMINAL_STATES
    assert set(BookingState) == ACTIVE_STATES | TERMINAL_STATES
    assert all(is_terminal(s) == (s in TERMINAL_STATES) for s in BookingState)


def test_reschedule_keeps_state_where_allowed() -> None:
    allowed = {s for s in BookingState if E.RESCHEDULE in allowed_events(s)}
    assert allowed == {S.REQUESTED, S.ACCEPTED}
    assert all(transition(s, E.RESCHEDULE) is s for s in allowed)


def test_every_state_reachable_and_every_active_state_can_end() -> None:
    assert reachable(TRANSITIONS, S.HELD) == set(BookingState)
    for state in ACTIVE_STATES:
        assert any(target in TERMINAL_STATES for target in TRANSITIONS[state].values())


@given(st.sampled_from(BookingState), st.lists(st.sampled_from(BookingEvent), max_size=40))
@settings(max_examples=300)
def test_random_event_sequences(start: BookingState, events: list[BookingEvent]) -> None:
    state = start
    for event in events:
        try:
            nxt = transition(state, event)
        except InvalidTransition:
            assert event not in allowed_events(state)
            continue
        assert isinstance(nxt, BookingState)
        assert event in allowed_events(state)
        # Only reschedule loops; no other event leaves a state unchanged.
        assert (nxt is state) == (event is E.RESCHEDULE)
        state = nxt
    if state in TERMINAL_STATES:
        assert allowed_events(state) == frozenset()


@given(st.sampled_from(sorted(TERMINAL_STATES)), st.sampled_from(BookingEvent))
def test_terminal_states_have_no_exits(state: BookingState, event: BookingEvent) -> None:
    with pytest.raises(InvalidTransition):
        transition(state, event)
