"""What the bookings service refuses, each an HTTP error with its own code
(the pure cores' errors are :mod:`booking.errors`)."""

from __future__ import annotations

from wadud.errors import Conflict, NotFound

__all__ = [
    "BookingNotFound",
    "NoVideoLink",
    "SlotNotOffered",
    "SlotTaken",
    "TooEarly",
    "TooLate",
    "TransitionRefused",
]


class BookingNotFound(NotFound):
    code = "booking-not-found"
    title = "No such booking"


class SlotTaken(Conflict):
    code = "slot-taken"
    title = "Someone else has this time"


class SlotNotOffered(Conflict):
    code = "slot-not-offered"
    title = "The doctor does not offer this slot now"


class TransitionRefused(Conflict):
    code = "invalid-transition"
    title = "Not allowed in the booking's current state"


class TooEarly(Conflict):
    code = "too-early"
    title = "Too early for this action"


class TooLate(Conflict):
    code = "too-late"
    title = "Too late for this action"


class NoVideoLink(Conflict):
    code = "video-link-unavailable"
    title = "This booking has no video consultation now"
