"""The availabilities this process has built, per doctor, with what each was
built from.

Building a doctor's :class:`~booking.schedule.availability.Availability` (the weekly
rules, the date overrides, the settings, validated by the core) and reading
the rows it comes from was a third of a hold's cost, for a schedule that
changes a few times a year. :mod:`booking.schedule.slots` remembers each one it
builds here; a hold (:func:`booking.bookings.holds.create_hold`) then decides on the
remembered one and writes in a statement that first checks, on the doctor's
row, that nothing it was built from has changed: the schedule version
(migration 0015: every change to the doctor's rules or overrides bumps it)
and each setting and price column (:data:`GUARDED`). So a stale entry can
only cost a hold its short way, never decide one wrongly; whoever changed
the schedule, on whichever replica, needs to tell no one.

Process-local and bounded (the least recently used go first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

from booking.schedule.availability import Availability

__all__ = ["GUARDED", "Schedule", "forget", "known", "remember"]

#: The doctor's columns a remembered schedule stands on: what the
#: availability was built from, and what a hold copies into the booking.
GUARDED: Final = (
    "schedule_version",
    "clinic_id",
    "key",
    "fee_minor",
    "currency",
    "time_zone",
    "slot_minutes",
    "buffer_before_min",
    "buffer_after_min",
    "min_notice_min",
    "horizon_days",
)

#: Doctors remembered at most (an entry is a few kilobytes).
LIMIT: Final = 10_000


@dataclass(frozen=True, slots=True)
class Schedule:
    """A doctor's availability and the :data:`GUARDED` values of the row it
    was built from (``doctor``, also the row a hold needs: buffers, fee)."""

    doctor_id: UUID
    availability: Availability
    doctor: Mapping[str, Any]


_known: OrderedDict[UUID, Schedule] = OrderedDict()


def remember(doctor: Mapping[str, Any], availability: Availability) -> None:
    """Keep ``availability``, built from the doctors row ``doctor`` (which
    must carry every :data:`GUARDED` column; a row without them is not
    remembered) and that row's current rules and overrides."""
    if any(column not in doctor for column in GUARDED) or "id" not in doctor:
        return
    values = {column: doctor[column] for column in GUARDED}
    _known[doctor["id"]] = Schedule(doctor["id"], availability, values)
    _known.move_to_end(doctor["id"])
    while len(_known) > LIMIT:
        _known.popitem(last=False)


def known(doctor_id: UUID) -> Schedule | None:
    """The remembered schedule of ``doctor_id``, if any; trust it only in a
    statement that checks :data:`GUARDED` against the row."""
    found = _known.get(doctor_id)
    if found is not None:
        _known.move_to_end(doctor_id)
    return found


def forget(doctor_id: UUID) -> None:
    """Drop what is remembered of ``doctor_id`` (its row no longer matches)."""
    _known.pop(doctor_id, None)
