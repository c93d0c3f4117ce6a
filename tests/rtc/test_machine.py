"""rtc.machine: a table's move, or the machine's own error for a missing one;
a Machine's state moves only by its table, and a change queues one event."""

from __future__ import annotations

from typing import Any

import pytest

from rtc import dtls, ice
from rtc.dtls import DtlsState
from rtc.errors import DtlsStateError, IceStateError
from rtc.ice import IceState, StateChanged
from rtc.machine import Machine, earliest, move

# ICE's inputs by name (its input enum is the agent's own).
ICE = {event.value: event for _, event in ice.TRANSITIONS}


def test_a_move_in_the_table_is_taken_and_a_missing_one_raises_the_given_error() -> None:
    (state, event), new = next(iter(dtls.TRANSITIONS.items()))
    assert move(dtls.TRANSITIONS, state, event, DtlsStateError) is new
    with pytest.raises(DtlsStateError, match=f"no transition from closed on {event.value}"):
        move(dtls.TRANSITIONS, DtlsState.CLOSED, event, DtlsStateError)


def test_a_change_queues_one_event_and_a_kept_state_queues_none() -> None:
    agent = Machine(ice.TRANSITIONS, IceState.NEW, IceStateError, StateChanged)
    agent._transition(ICE["check"], "first check")
    agent._transition(ICE["check"], "another check")
    agent._transition(ICE["nominate"], "USE-CANDIDATE")
    assert agent.next_event() == StateChanged(IceState.NEW, IceState.CHECKING, "first check")
    assert agent.next_event() == StateChanged(
        IceState.CHECKING, IceState.CONNECTED, "USE-CANDIDATE"
    )
    assert agent.next_event() is None
    assert (agent.state, agent.reason) == (IceState.CONNECTED, "USE-CANDIDATE")


def test_a_kept_state_records_its_reason_and_a_missing_move_changes_nothing() -> None:
    agent = Machine(ice.TRANSITIONS, IceState.NEW, IceStateError, StateChanged)
    agent._transition(ICE["check"], "first check")
    agent._transition(ICE["check"], "another check")
    assert (agent.state, agent.reason) == (IceState.CHECKING, "another check")
    with pytest.raises(IceStateError, match="no transition from checking on consent"):
        agent._transition(ICE["consent"], "consent")
    assert (agent.state, agent.reason) == (IceState.CHECKING, "another check")


def test_without_a_changed_factory_a_move_queues_nothing() -> None:
    agent: Machine[IceState, Any, StateChanged]
    agent = Machine(ice.TRANSITIONS, IceState.NEW, IceStateError, None)
    agent._transition(ICE["check"], "first check")
    assert (agent.state, agent.reason, agent.next_event()) == (
        IceState.CHECKING,
        "first check",
        None,
    )


def test_earliest_skips_parts_that_want_no_call() -> None:
    assert earliest([None, 3.0, None, 1.5, 2.0]) == 1.5
    assert earliest(iter([None, None])) is None
    assert earliest([]) is None
