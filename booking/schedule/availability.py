"""A doctor's availability: when they work, and what each window serves.

Pure core: no I/O, no clock. The free slots an availability yields, and the
time bookings take from it, are :mod:`booking.schedule.free_time`.

Model
-----
A doctor works in one IANA time zone. Weekly rules give local windows per
weekday; a date override replaces *all* weekly windows of one local date (an
override with no windows is a day off). Each window serves one or more
consultation types, and each type has a slot length. Slots are laid on a grid
anchored at the window's start and advanced by the step (by default the slot
length plus both buffers, so back-to-back bookings on the default grid never
conflict through their buffers). A slot never crosses a window edge, and so
never spans two windows, even adjacent ones or a window ending at midnight
and the next day's window starting at midnight.

Buffers only matter between consultations: a slot must fit in its window but
its buffers may spill outside it (as Calendly and Cal.com do).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from booking.errors import (
    DuplicateOverride,
    InvalidSchedule,
    InvalidTimeZone,
    InvalidWindow,
    MissingSlotLength,
    OverlappingWindows,
    SlotLongerThanWindow,
    UnknownConsultationType,
)

__all__ = [
    "MAX_HORIZON_DAYS",
    "Availability",
    "ConsultationType",
    "DateOverride",
    "TimeWindow",
    "WeeklyRule",
    "Windows",
    "parse_time_zone",
]

#: Longest booking horizon accepted; it also bounds the work of one query.
MAX_HORIZON_DAYS = 730
_MINUTES_PER_DAY = 24 * 60
_MAX_NOTICE_MINUTES = MAX_HORIZON_DAYS * _MINUTES_PER_DAY


class ConsultationType(StrEnum):
    """How a consultation happens."""

    VIDEO = "video"
    IN_PERSON = "in_person"

    @classmethod
    def parse(cls, value: str) -> ConsultationType:
        """Return the member named by ``value`` or raise :class:`UnknownConsultationType`."""
        try:
            return cls(value)
        except ValueError:
            raise UnknownConsultationType(f"unknown consultation type {value!r}") from None


def parse_time_zone(name: str) -> ZoneInfo:
    """Return the IANA zone ``name`` or raise :class:`InvalidTimeZone`."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidTimeZone(f"unknown time zone {name!r}") from None


# -- schedule ------------------------------------------------------------------


def _check_int(name: str, value: object, low: int, high: int) -> int:
    # bool is an int subclass; a True that slipped through JSON is a bug.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidSchedule(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _wall_minutes(t: time, *, is_end: bool) -> int:
    if not isinstance(t, time):
        raise InvalidWindow(f"window bounds must be datetime.time, got {t!r}")
    if t.tzinfo is not None:
        raise InvalidWindow("window bounds are local wall times and must be naive")
    if t.second or t.microsecond:
        raise InvalidWindow(f"window bounds must be whole minutes, got {t.isoformat()}")
    minutes = t.hour * 60 + t.minute
    # A window can end at midnight: an end of 00:00 means 24:00 of the same day.
    return _MINUTES_PER_DAY if is_end and minutes == 0 else minutes


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A local wall-clock window ``[start, end)`` serving some consultation types.

    ``end == time(0)`` means midnight at the end of the day (24:00), so a window
    may run to midnight; overnight shifts are two windows on two days.
    """

    start: time
    end: time
    consultation_types: frozenset[ConsultationType]

    def __post_init__(self) -> None:
        start = _wall_minutes(self.start, is_end=False)
        end = _wall_minutes(self.end, is_end=True)
        if end <= start:
            raise InvalidWindow(
                f"window end {self.end.isoformat()} is not after start {self.start.isoformat()}"
            )
        types = frozenset(ConsultationType.parse(t) for t in self.consultation_types)
        if not types:
            raise InvalidWindow("a window must serve at least one consultation type")
        object.__setattr__(self, "consultation_types", types)

    @property
    def start_minutes(self) -> int:
        """Minutes from local midnight to the start."""
        return _wall_minutes(self.start, is_end=False)

    @property
    def end_minutes(self) -> int:
        """Minutes from local midnight to the end (1440 for a midnight end)."""
        return _wall_minutes(self.end, is_end=True)


@dataclass(frozen=True, slots=True)
class WeeklyRule:
    """A window repeated every week on ``weekday`` (0 = Monday, as ``date.weekday()``)."""

    weekday: int
    start: time
    end: time
    consultation_types: frozenset[ConsultationType]

    def __post_init__(self) -> None:
        _check_int("weekday", self.weekday, 0, 6)
        # Validate and normalise through TimeWindow so both share one rule set.
        object.__setattr__(self, "consultation_types", self.window.consultation_types)

    @property
    def window(self) -> TimeWindow:
        """The rule's window without its weekday."""
        return TimeWindow(self.start, self.end, self.consultation_types)


@dataclass(frozen=True, slots=True)
class DateOverride:
    """Replacement windows for one local date; no windows means a day off."""

    day: date
    windows: tuple[TimeWindow, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.day, date) or isinstance(self.day, datetime):
            raise InvalidSchedule(f"override day must be a datetime.date, got {self.day!r}")
        object.__setattr__(self, "windows", tuple(self.windows))
        _check_no_overlap(self.windows, f"override {self.day.isoformat()}")

    @classmethod
    def day_off(cls, day: date) -> DateOverride:
        """An override closing ``day``."""
        return cls(day, ())

    @property
    def closed(self) -> bool:
        """Whether the doctor takes no bookings on this date."""
        return not self.windows


def _check_no_overlap(windows: Iterable[TimeWindow], where: str) -> None:
    # Any two windows of a day must be disjoint, whatever types they serve:
    # the doctor is one person, and a window serving both types says so.
    ordered = sorted(windows, key=lambda w: w.start_minutes)
    for prev, cur in itertools.pairwise(ordered):
        if cur.start_minutes < prev.end_minutes:
            raise OverlappingWindows(
                f"{where}: window {cur.start.isoformat()}-{cur.end.isoformat()} overlaps "
                f"{prev.start.isoformat()}-{prev.end.isoformat()}"
            )


#: A day's windows serving one consultation type, as (start, end) offsets
#: from local midnight.
Windows = tuple[tuple[timedelta, timedelta], ...]


@dataclass(frozen=True, slots=True)
class _TypeIndex:
    # Per consultation type: weekly windows per weekday, and per override date.
    # Precomputed once per Availability so a query does no validation or filtering.
    weekly: tuple[Windows, ...]
    overrides: Mapping[date, Windows]


def _offsets(windows: Iterable[TimeWindow], ctype: ConsultationType) -> Windows:
    return tuple(
        (timedelta(minutes=w.start_minutes), timedelta(minutes=w.end_minutes))
        for w in sorted(windows, key=lambda w: w.start_minutes)
        if ctype in w.consultation_types
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Availability:
    """Everything that decides when a doctor can be booked.

    All durations are whole minutes. ``slot_step_minutes`` defaults to each
    type's slot length plus both buffers, the tightest grid on which every slot
    can be booked at once.
    """

    time_zone: ZoneInfo
    weekly: tuple[WeeklyRule, ...]
    slot_minutes: Mapping[ConsultationType, int] = field(hash=False)
    overrides: tuple[DateOverride, ...] = ()
    buffer_before_minutes: int = 0
    buffer_after_minutes: int = 0
    min_notice_minutes: int = 0
    horizon_days: int = 30
    slot_step_minutes: int | None = None
    _index: Mapping[ConsultationType, _TypeIndex] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.time_zone, ZoneInfo):
            raise InvalidTimeZone(f"time_zone must be a ZoneInfo, got {self.time_zone!r}")
        weekly = tuple(self.weekly)
        overrides = tuple(self.overrides)
        lengths = {
            ConsultationType.parse(k): _check_int(f"slot length of {k}", v, 1, _MINUTES_PER_DAY)
            for k, v in self.slot_minutes.items()
        }
        _check_int("buffer_before_minutes", self.buffer_before_minutes, 0, _MINUTES_PER_DAY)
        _check_int("buffer_after_minutes", self.buffer_after_minutes, 0, _MINUTES_PER_DAY)
        _check_int("min_notice_minutes", self.min_notice_minutes, 0, _MAX_NOTICE_MINUTES)
        _check_int("horizon_days", self.horizon_days, 0, MAX_HORIZON_DAYS)
        if self.slot_step_minutes is not None:
            _check_int("slot_step_minutes", self.slot_step_minutes, 1, _MINUTES_PER_DAY)

        for day in range(7):
            _check_no_overlap((r.window for r in weekly if r.weekday == day), f"weekday {day}")
        seen: set[date] = set()
        for o in overrides:
            if o.day in seen:
                raise DuplicateOverride(f"two overrides for {o.day.isoformat()}")
            seen.add(o.day)
        all_windows = [r.window for r in weekly] + [w for o in overrides for w in o.windows]
        for w in all_windows:
            for t in w.consultation_types:
                if t not in lengths:
                    raise MissingSlotLength(f"a window serves {t} but {t} has no slot length")
                if lengths[t] > w.end_minutes - w.start_minutes:
                    raise SlotLongerThanWindow(
                        f"{t} slots of {lengths[t]} min do not fit in window "
                        f"{w.start.isoformat()}-{w.end.isoformat()}"
                    )

        index = {
            t: _TypeIndex(
                weekly=tuple(
                    _offsets((r.window for r in weekly if r.weekday == day), t) for day in range(7)
                ),
                overrides=MappingProxyType({o.day: _offsets(o.windows, t) for o in overrides}),
            )
            for t in lengths
        }
        object.__setattr__(self, "weekly", weekly)
        object.__setattr__(self, "overrides", overrides)
        object.__setattr__(self, "slot_minutes", MappingProxyType(lengths))
        object.__setattr__(self, "_index", MappingProxyType(index))

    def offers(self, consultation_type: ConsultationType | str) -> bool:
        """Whether the doctor has a slot length for ``consultation_type``."""
        return ConsultationType.parse(consultation_type) in self.slot_minutes

    def windows_on(self, consultation_type: ConsultationType, day: date) -> Windows:
        """The windows of local date ``day`` serving ``consultation_type``
        (an offered one): its override's if it has one, else its weekday's."""
        index = self._index[consultation_type]
        windows = index.overrides.get(day)
        return index.weekly[day.weekday()] if windows is None else windows

    def step_minutes(self, consultation_type: ConsultationType) -> int:
        """The grid step for ``consultation_type`` (see the class docstring)."""
        if self.slot_step_minutes is not None:
            return self.slot_step_minutes
        return (
            self.slot_minutes[consultation_type]
            + self.buffer_before_minutes
            + self.buffer_after_minutes
        )
