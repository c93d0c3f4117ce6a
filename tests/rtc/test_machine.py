"""rtc.machine.move: a table's move, or the machine's own error for a missing one."""

from __future__ import annotations

import pytest

from rtc.dtls import TRANSITIONS, DtlsState
from rtc.errors import DtlsStateError
from rtc.machine import move


def test_a_move_in_the_table_is_taken_and_a_missing_one_raises_the_given_error() -> None:
    (state, event), new = next(iter(TRANSITIONS.items()))
    assert move(TRANSITIONS, state, event, DtlsStateError) is new
    with pytest.raises(DtlsStateError, match=f"no transition from closed on {event.value}"):
        move(TRANSITIONS, DtlsState.CLOSED, event, DtlsStateError)
