"""Typed errors of the booking package.

Every error derives from :class:`BookingError`, hung under
:class:`wadud.errors.WadudError` so the one problem middleware (``wadud.web.http``)
renders it from its ``http_status``, ``code`` and ``title``; handlers never
build error bodies by hand.

As in h11, two kinds are kept apart: input that is malformed or inconsistent
(a schedule with overlapping windows, a naive datetime: HTTP 422, also
:class:`wadud.errors.Unprocessable` and so :class:`ValueError`, which generic
parsing code can catch) and requests that are well formed but not allowed in
the current state (a transition the lifecycle forbids, a slot someone else
already took: HTTP 409, also :class:`wadud.errors.Conflict`). Each takes its
HTTP status from that status class; the root sets none, so bare it is 500.
"""

from __future__ import annotations

from typing import ClassVar

from wadud.errors import Conflict, Unprocessable, WadudError

__all__ = [
    "BookingError",
    "ConsultationTypeNotOffered",
    "DuplicateOverride",
    "InvalidRefundPolicy",
    "InvalidRefundRequest",
    "InvalidSchedule",
    "InvalidTimeRange",
    "InvalidTimeZone",
    "InvalidTransition",
    "InvalidWindow",
    "MissingSlotLength",
    "OverlappingWindows",
    "SlotConflict",
    "SlotLongerThanWindow",
    "UnknownConsultationType",
]


class BookingError(WadudError):
    """Root of every error raised by the booking package.

    Raised bare it is our own fault (500, as for any unclassified WadudError);
    the children below say what the caller did wrong.
    """

    code: ClassVar[str] = "booking_error"
    title: ClassVar[str] = "Booking error"


# -- malformed or inconsistent input (422, also ValueError) -------------------


class InvalidSchedule(BookingError, Unprocessable):
    """A doctor's availability is inconsistent."""

    code = "invalid_schedule"
    title = "Invalid availability schedule"


class InvalidWindow(InvalidSchedule):
    """A time window is malformed: end not after start, not on whole minutes, ..."""

    code = "invalid_window"
    title = "Invalid availability window"


class OverlappingWindows(InvalidSchedule):
    """Two windows of the same weekday (or the same override date) overlap."""

    code = "overlapping_windows"
    title = "Availability windows overlap"


class SlotLongerThanWindow(InvalidSchedule):
    """A window serves a consultation type whose slot cannot fit in it."""

    code = "slot_longer_than_window"
    title = "Slot longer than its window"


class MissingSlotLength(InvalidSchedule):
    """A window serves a consultation type that has no slot length."""

    code = "missing_slot_length"
    title = "Consultation type without a slot length"


class DuplicateOverride(InvalidSchedule):
    """Two date overrides name the same local date."""

    code = "duplicate_override"
    title = "Two overrides for one date"


class InvalidTimeZone(InvalidSchedule):
    """The doctor's time zone is not a known IANA zone."""

    code = "invalid_time_zone"
    title = "Unknown time zone"


class UnknownConsultationType(BookingError, Unprocessable):
    """A consultation type that Wadud does not know (neither video nor in person)."""

    code = "unknown_consultation_type"
    title = "Unknown consultation type"


class ConsultationTypeNotOffered(BookingError, Unprocessable):
    """A known consultation type for which the doctor has no slot length."""

    code = "consultation_type_not_offered"
    title = "Consultation type not offered"


class InvalidTimeRange(BookingError, Unprocessable):
    """A naive datetime, an interval whose end precedes its start, a negative buffer."""

    code = "invalid_time_range"
    title = "Invalid time range"


class InvalidRefundPolicy(BookingError, Unprocessable):
    """A refund policy whose tiers are unordered or out of range."""

    code = "invalid_refund_policy"
    title = "Invalid refund policy"


class InvalidRefundRequest(BookingError, Unprocessable):
    """A refund asked for with a negative amount or naive datetimes."""

    code = "invalid_refund_request"
    title = "Invalid refund request"


# -- valid requests the current state forbids (409) -------------------------


class SlotConflict(BookingError, Conflict):
    """The slot overlaps an active booking (raised by the database adapter when
    the exclusion constraint fires)."""

    code = "slot_conflict"
    title = "Slot no longer free"


class InvalidTransition(BookingError, Conflict):
    """The booking lifecycle does not allow ``event`` in ``state``.

    ``state`` and ``event`` hold the :class:`booking.lifecycle.BookingState` and
    :class:`booking.lifecycle.BookingEvent` members (both ``str`` enums; typed as
    ``str`` here so this module does not import the lifecycle).
    """

    code = "invalid_transition"
    title = "Booking state does not allow this"

    def __init__(self, state: str, event: str) -> None:
        # state and event also go into the problem document (WadudError.extra).
        super().__init__(
            f"cannot {event} a booking that is {state}", state=str(state), event=str(event)
        )
        self.state = state
        self.event = event
