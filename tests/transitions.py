"""What the tests of a transition table (a mapping of state to event to next
state) share: walking it."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, TypeVar

State = TypeVar("State", bound=Hashable)


def reachable(table: Mapping[State, Mapping[Any, State]], start: State) -> set[State]:
    """Every state some sequence of events leads to from ``start``, ``start`` included."""
    seen = {start}
    frontier = [start]
    while frontier:
        for nxt in table[frontier.pop()].values():
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen
