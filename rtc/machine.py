"""A sans-I/O core's state machine: one move of its transition table, its
state, and the events it has for its user.

Each machine here and in ``sfu`` (ICE-lite, DTLS, a peer transport, a relay
link) keeps its states in an enum and every move in one ``TRANSITIONS``
table of ``(state, input) -> state``, as h11 does. An input the table has no
move for is the caller's mistake ("we were asked to do something invalid"),
raised as that machine's own state error.

:class:`Machine` is what those cores share: the current state, moved only
through the table, and the queue of events their user reads with
``next_event()`` after each call, as aioquic's ``QuicConnection`` is read.
It knows nothing of its subclass and never calls into it. A core made of
parts wants to be woken at the :func:`earliest` of their deadlines.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

__all__ = ["Machine", "earliest", "move"]

State = TypeVar("State", bound=enum.Enum)
Input = TypeVar("Input", bound=enum.Enum)
Event = TypeVar("Event")


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


def earliest(deadlines: Iterable[float | None]) -> float | None:
    """The earliest of some deadlines (each a part's ``get_timer()``, None when
    it wants no call), or None if none has one."""
    return min((due for due in deadlines if due is not None), default=None)


class Machine(Generic[State, Input, Event]):
    """A core's ``state``, moved by :meth:`_transition` through ``transitions``,
    and its events, oldest first.

    ``changed(old, new, reason)`` makes the event queued when a move changes
    the state; a core that reports its state through other events gives None.
    ``reason`` is the reason given with the last move, which may have kept
    the state.
    """

    def __init__(
        self,
        transitions: Mapping[tuple[State, Input], State],
        state: State,
        error: type[Exception],
        changed: Callable[[State, State, str], Event] | None,
    ) -> None:
        self.state = state
        self.reason = ""
        self._transitions = transitions
        self._state_error = error
        self._changed = changed
        self._events: list[Event] = []

    def next_event(self) -> Event | None:
        """The oldest event not yet read, or None."""
        return self._events.pop(0) if self._events else None

    def _transition(self, event: Input, reason: str) -> None:
        new = move(self._transitions, self.state, event, self._state_error)
        if new is not self.state:
            if self._changed is not None:
                self._events.append(self._changed(self.state, new, reason))
            self.state = new
        self.reason = reason
