"""One move of a state machine's transition table.

Each machine here and in ``sfu`` (ICE-lite, DTLS, a peer transport, a relay
link) keeps its states in an enum and every move in one ``TRANSITIONS``
table of ``(state, input) -> state``, as h11 does. An input the table has no
move for is the caller's mistake ("we were asked to do something invalid"),
raised as that machine's own state error.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

__all__ = ["move"]

State = TypeVar("State", bound=enum.Enum)
Input = TypeVar("Input", bound=enum.Enum)


def move(
    table: Mapping[tuple[State, Input], State],
    state: State,
    event: Input,
    error: type[Exception],
) -> State:
    """The state ``event`` leads to from ``state``; raises ``error`` if the
    table has no such move."""
    try:
        return table[(state, event)]
    except KeyError:
        raise error(f"no transition from {state.value} on {event.value}") from None
