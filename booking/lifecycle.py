"""The booking lifecycle: one enum of states, one transition table (h11 style).

How the machine runs (``cancel_by_*`` is any of the three cancel events;
``reschedule`` loops on ``requested`` and ``accepted``)::

          confirm_payment           accept            start                complete
    held ------------> requested -------> accepted -------> in_progress ---------> completed
     |                   |                  |                 |
     | expire_hold       | decline          | mark_no_show    | mark_no_show
     |   -> expired      | cancel_by_*      |   -> no_show    |   -> no_show
     | cancel_by_*       |   -> cancelled   | cancel_by_*     | cancel_by_doctor/clinic
     |   -> cancelled    |                  |   -> cancelled  |   -> cancelled

* ``held``: a patient picked a slot and is paying. The slot is held for a few
  minutes so nobody else can take it; the hold either turns into a request
  (``confirm_payment``), lapses (``expire_hold``), or is dropped by anyone
  (``cancel_by_*``; nothing was paid, so nothing is refunded).
* ``requested``: paid, waiting for the doctor, who accepts or declines. A
  decline lands in ``cancelled`` like any other cancellation; who cancelled is
  the event's business (see :data:`booking.refunds.CANCELLERS`), not the state's.
* ``accepted``: confirmed on both sides. Either the consultation starts, the
  patient does not turn up (``mark_no_show``), or someone cancels.
* ``in_progress``: the doctor has started the consultation. It completes; or
  the patient never joins (``mark_no_show``); or the doctor or clinic has to
  abandon it (a patient leaving a call is not a cancellation, so
  ``cancel_by_patient`` is refused here).
* ``completed``, ``cancelled``, ``no_show``, ``expired``: terminal; no event
  leaves them.

``reschedule`` moves the booking to another slot and keeps its state. It is
allowed only from ``requested`` and ``accepted``: a hold is rescheduled by
dropping it and holding the new slot (so the hold timer stays simple), and a
consultation that has started or ended has no slot left to move.

A doctor who fails to turn up is recorded as ``cancel_by_doctor`` (full
refund), never as ``no_show``, which always means the patient's absence.

States in :data:`ACTIVE_STATES` occupy the doctor's time; the database
exclusion constraint on bookings applies only to rows in those states.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from booking.errors import InvalidTransition

__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "BookingEvent",
    "BookingState",
    "InvalidTransition",
    "allowed_events",
    "is_terminal",
    "transition",
]


class BookingState(StrEnum):
    """Where a booking is in its life; the value is what the database stores."""

    HELD = "held"
    REQUESTED = "requested"
    ACCEPTED = "accepted"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    NO_SHOW = "no_show"
    EXPIRED = "expired"


class BookingEvent(StrEnum):
    """Something that happens to a booking."""

    CONFIRM_PAYMENT = "confirm_payment"
    ACCEPT = "accept"
    DECLINE = "decline"
    START = "start"
    COMPLETE = "complete"
    CANCEL_BY_PATIENT = "cancel_by_patient"
    CANCEL_BY_DOCTOR = "cancel_by_doctor"
    CANCEL_BY_CLINIC = "cancel_by_clinic"
    MARK_NO_SHOW = "mark_no_show"
    EXPIRE_HOLD = "expire_hold"
    RESCHEDULE = "reschedule"


_S = BookingState
_E = BookingEvent

# The whole machine. A (state, event) pair absent from this table is refused.
_TRANSITIONS: dict[BookingState, dict[BookingEvent, BookingState]] = {
    _S.HELD: {
        _E.CONFIRM_PAYMENT: _S.REQUESTED,
        _E.EXPIRE_HOLD: _S.EXPIRED,
        _E.CANCEL_BY_PATIENT: _S.CANCELLED,
        _E.CANCEL_BY_DOCTOR: _S.CANCELLED,
        _E.CANCEL_BY_CLINIC: _S.CANCELLED,
    },
    _S.REQUESTED: {
        _E.ACCEPT: _S.ACCEPTED,
        _E.DECLINE: _S.CANCELLED,
        _E.CANCEL_BY_PATIENT: _S.CANCELLED,
        _E.CANCEL_BY_DOCTOR: _S.CANCELLED,
        _E.CANCEL_BY_CLINIC: _S.CANCELLED,
        _E.RESCHEDULE: _S.REQUESTED,
    },
    _S.ACCEPTED: {
        _E.START: _S.IN_PROGRESS,
        _E.MARK_NO_SHOW: _S.NO_SHOW,
        _E.CANCEL_BY_PATIENT: _S.CANCELLED,
        _E.CANCEL_BY_DOCTOR: _S.CANCELLED,
        _E.CANCEL_BY_CLINIC: _S.CANCELLED,
        _E.RESCHEDULE: _S.ACCEPTED,
    },
    _S.IN_PROGRESS: {
        _E.COMPLETE: _S.COMPLETED,
        _E.MARK_NO_SHOW: _S.NO_SHOW,
        _E.CANCEL_BY_DOCTOR: _S.CANCELLED,
        _E.CANCEL_BY_CLINIC: _S.CANCELLED,
    },
    _S.COMPLETED: {},
    _S.CANCELLED: {},
    _S.NO_SHOW: {},
    _S.EXPIRED: {},
}

#: Read-only view of the table: ``TRANSITIONS[state][event] -> next state``.
TRANSITIONS: Mapping[BookingState, Mapping[BookingEvent, BookingState]] = MappingProxyType(
    {state: MappingProxyType(row) for state, row in _TRANSITIONS.items()}
)

#: States that occupy the doctor's time (the exclusion constraint's WHERE clause).
ACTIVE_STATES: frozenset[BookingState] = frozenset(
    {BookingState.HELD, BookingState.REQUESTED, BookingState.ACCEPTED, BookingState.IN_PROGRESS}
)

#: States no event leaves.
TERMINAL_STATES: frozenset[BookingState] = frozenset(
    s for s, row in _TRANSITIONS.items() if not row
)


def transition(state: BookingState, event: BookingEvent) -> BookingState:
    """The state a booking in ``state`` moves to on ``event``.

    Raises :class:`InvalidTransition` (HTTP 409) when the table has no entry,
    including for values that are not members of the enums.
    """
    row = _TRANSITIONS.get(state)
    new_state = None if row is None else row.get(event)
    if new_state is None:
        raise InvalidTransition(state, event)
    return new_state


def allowed_events(state: BookingState) -> frozenset[BookingEvent]:
    """The events ``state`` accepts (empty for terminal states)."""
    return frozenset(_TRANSITIONS[state])


def is_terminal(state: BookingState) -> bool:
    """Whether no event leaves ``state``."""
    return state in TERMINAL_STATES
