"""A doctor's availability and the free slots it yields.

Pure core: no I/O, no clock. ``now`` is always a parameter and every datetime
that crosses the API is timezone-aware; slots come back in UTC.

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

Local time and DST
------------------
A window ``[start, end)`` on local date ``d`` is the set of real instants whose
local wall-clock time lies on ``d`` within ``[start, end)``. On an ordinary day
that is one interval, so a 09:00-17:00 window is 09:00-17:00 local on both
sides of a DST change. On a transition day the set is computed exactly:

* spring forward (gap): wall times in the gap do not exist. A window crossing
  the gap loses that much real time (00:00-06:00 is 5 real hours in New York
  on the spring day); an edge inside the gap moves to the transition instant
  (02:30-05:00 starts at 03:00); a window entirely inside the gap is empty.
* fall back (overlap): wall times in the overlap happen twice. A window
  crossing the overlap gains real time (00:00-06:00 is 7 real hours in New
  York on the autumn day); a window entirely inside the overlap yields two
  real intervals, one per occurrence.

Within each real interval slots are stepped in *real* (UTC) time from its
start, so every slot lasts exactly its length, slots never overlap, and on a
gap day a grid that crosses the gap continues in elapsed time (01:00 EST,
then 03:00 EDT for hourly slots).

Booking rules
-------------
* minimum notice: a slot is offered only if ``start >= now + min_notice``.
* horizon: a slot is offered only if its local start date is at most
  ``horizon_days`` after the local date of ``now`` (whole local days open at
  local midnight rather than slot by slot as the clock turns).
* range: ``free_slots`` returns the slots whose *start* lies in
  ``[range_start, range_end)``; consecutive ranges therefore partition the
  slots, so paging never loses or repeats one.
* busy: see :func:`blocked_range` and :func:`conflicts`.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from booking.errors import (
    ConsultationTypeNotOffered,
    DuplicateOverride,
    InvalidSchedule,
    InvalidTimeRange,
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
    "BusyInterval",
    "ConsultationType",
    "DateOverride",
    "Slot",
    "TimeWindow",
    "WeeklyRule",
    "blocked_range",
    "conflicts",
    "free_slots",
    "next_free_slot",
    "parse_time_zone",
]

#: Longest booking horizon accepted; it also bounds the work of one query.
MAX_HORIZON_DAYS = 730
_MINUTES_PER_DAY = 24 * 60
_MAX_NOTICE_MINUTES = MAX_HORIZON_DAYS * _MINUTES_PER_DAY
_ONE_DAY = timedelta(days=1)
_ONE_SECOND = timedelta(seconds=1)
# Offsets are probed this often when looking for DST transitions. Transitions
# are months apart, so two of them never hide between consecutive probes.
_PROBE = timedelta(hours=12)
# next_free_slot scans the horizon in chunks of this size so a doctor with a
# free slot tomorrow costs one short query, not a full-horizon one.
_SEARCH_CHUNK = timedelta(days=7)


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


# Per consultation type: weekly windows per weekday, and per override date, as
# (start, end) offsets from local midnight. Precomputed once per Availability so
# a query does no validation or filtering.
_Windows = tuple[tuple[timedelta, timedelta], ...]


@dataclass(frozen=True, slots=True)
class _TypeIndex:
    weekly: tuple[_Windows, ...]
    overrides: Mapping[date, _Windows]


def _offsets(windows: Iterable[TimeWindow], ctype: ConsultationType) -> _Windows:
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

    def step_minutes(self, consultation_type: ConsultationType) -> int:
        """The grid step for ``consultation_type`` (see the class docstring)."""
        if self.slot_step_minutes is not None:
            return self.slot_step_minutes
        return (
            self.slot_minutes[consultation_type]
            + self.buffer_before_minutes
            + self.buffer_after_minutes
        )


# -- slots, busy time and the exclusion rule --------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Slot:
    """A bookable ``[start, end)`` in UTC."""

    start: datetime
    end: datetime
    consultation_type: ConsultationType


@dataclass(frozen=True, slots=True)
class BusyInterval:
    """Time the doctor is already committed: an active booking's ``[start, end)``.

    Buffers are the ones stored with that booking; ``None`` means the doctor's
    current buffers (for bookings that did not store their own). Use ``0`` for
    a block that carries no buffer of its own, such as a personal calendar
    event, or for a blocked range already widened by its buffers (a stored
    ``bookings.blocked`` range is passed as ``BusyInterval(lower, upper, 0, 0)``).
    """

    start: datetime
    end: datetime
    buffer_before_minutes: int | None = None
    buffer_after_minutes: int | None = None

    def __post_init__(self) -> None:
        _check_aware("busy start", self.start)
        _check_aware("busy end", self.end)
        if self.end <= self.start:
            raise InvalidTimeRange(f"busy interval ends at {self.end} before it starts")
        for name in ("buffer_before_minutes", "buffer_after_minutes"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise InvalidTimeRange(f"{name} must be a non-negative integer, got {value!r}")


def _check_aware(name: str, value: datetime) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidTimeRange(f"{name} must be a timezone-aware datetime, got {value!r}")


def blocked_range(
    start: datetime, end: datetime, buffer_before: timedelta, buffer_after: timedelta
) -> tuple[datetime, datetime]:
    """The time a booking ``[start, end)`` takes from the doctor's calendar.

    Returns the half-open ``[start - buffer_before, end + buffer_after)``. Two
    bookings of one doctor conflict exactly when their blocked ranges overlap
    (:func:`conflicts`); touching ranges do not. The database enforces the same
    rule with an exclusion constraint over active bookings::

        EXCLUDE USING gist (
            doctor_id WITH =,
            tstzrange(starts_at - buffer_before, ends_at + buffer_after, '[)') WITH &&
        ) WHERE (state IN <ACTIVE_STATES>)

    where each row stores the buffers in force when it was booked, so changing a
    doctor's buffers later never invalidates existing bookings.
    """
    _check_aware("start", start)
    _check_aware("end", end)
    if end < start:
        raise InvalidTimeRange(f"end {end} is before start {start}")
    if buffer_before < timedelta(0) or buffer_after < timedelta(0):
        raise InvalidTimeRange("buffers must not be negative")
    return _blocked(start, end, buffer_before, buffer_after)


def _blocked(
    start: datetime, end: datetime, before: timedelta, after: timedelta
) -> tuple[datetime, datetime]:
    # The one place the rule is written; blocked_range validates, hot paths do not.
    return start - before, end + after


def conflicts(a: tuple[datetime, datetime], b: tuple[datetime, datetime]) -> bool:
    """Whether half-open ranges ``a`` and ``b`` overlap (PostgreSQL's ``&&`` on ``'[)'``)."""
    return a[0] < b[1] and b[0] < a[1]


def _merged_blocked(
    availability: Availability, busy: Iterable[BusyInterval | tuple[datetime, datetime]]
) -> tuple[list[datetime], list[datetime]]:
    """Busy blocked ranges in UTC, sorted and merged into disjoint runs.

    Disjoint runs have increasing starts *and* ends, so a bisect on the ends
    finds the only run a candidate can hit.
    """
    default_before = timedelta(minutes=availability.buffer_before_minutes)
    default_after = timedelta(minutes=availability.buffer_after_minutes)
    ranges: list[tuple[datetime, datetime]] = []
    for item in busy:
        # A search page asks this for many doctors with their bookings, so plain
        # pairs are checked inline rather than through a BusyInterval each.
        if isinstance(item, BusyInterval):
            start, end = item.start, item.end
            before = (
                default_before
                if item.buffer_before_minutes is None
                else timedelta(minutes=item.buffer_before_minutes)
            )
            after = (
                default_after
                if item.buffer_after_minutes is None
                else timedelta(minutes=item.buffer_after_minutes)
            )
        else:
            start, end = item
            _check_aware("busy start", start)
            _check_aware("busy end", end)
            if end <= start:
                raise InvalidTimeRange(f"busy interval ends at {end} before it starts")
            before, after = default_before, default_after
        ranges.append(_blocked(start.astimezone(UTC), end.astimezone(UTC), before, after))
    ranges.sort()
    starts: list[datetime] = []
    ends: list[datetime] = []
    for lo, hi in ranges:
        if ends and lo <= ends[-1]:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    return starts, ends


# -- time zone arithmetic ----------------------------------------------------------


def _offset_at(tz: ZoneInfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(tz).utcoffset()
    if offset is None:  # pragma: no cover - ZoneInfo always answers
        raise InvalidTimeZone(f"{tz} has no UTC offset at {instant}")
    return offset


def _offset_segments(
    tz: ZoneInfo, lo: datetime, hi: datetime
) -> list[tuple[datetime, datetime, timedelta]]:
    """Split UTC ``[lo, hi)`` into runs of constant UTC offset ``(start, end, offset)``.

    zoneinfo has no public list of transitions, so offsets are probed every
    ``_PROBE`` and a change between two probes is located to the second by
    bisection (tzdata transitions fall on whole seconds). Days without a
    transition cost one probe each.
    """
    segments: list[tuple[datetime, datetime, timedelta]] = []
    seg_start, seg_offset = lo, _offset_at(tz, lo)
    probe = lo
    while probe < hi:
        nxt = min(probe + _PROBE, hi)
        nxt_offset = _offset_at(tz, nxt)
        if nxt_offset != seg_offset:
            before, after = probe, nxt  # offset(before) == seg_offset != offset(after)
            while (after - before) > _ONE_SECOND:
                mid = before + ((after - before) // _ONE_SECOND // 2) * _ONE_SECOND
                if _offset_at(tz, mid) == seg_offset:
                    before = mid
                else:
                    after = mid
            segments.append((seg_start, after, seg_offset))
            seg_start, seg_offset = after, _offset_at(tz, after)
        probe = nxt
    segments.append((seg_start, hi, seg_offset))
    return segments


def _real_intervals(
    wall_start: datetime,
    wall_end: datetime,
    segments: Sequence[tuple[datetime, datetime, timedelta]],
) -> list[tuple[datetime, datetime]]:
    """Real (UTC) intervals whose local wall time lies in ``[wall_start, wall_end)``.

    Wall times are passed as UTC datetimes carrying the local wall clock
    reading. Within a segment of offset ``o`` an instant ``t`` reads ``t + o``,
    so the answer there is ``[wall_start - o, wall_end - o)`` clipped to the
    segment; pieces that touch across a gap transition are joined.
    """
    if len(segments) == 1:
        offset = segments[0][2]
        return [(wall_start - offset, wall_end - offset)]
    pieces: list[tuple[datetime, datetime]] = []
    for seg_lo, seg_hi, offset in segments:
        lo = max(wall_start - offset, seg_lo)
        hi = min(wall_end - offset, seg_hi)
        if lo < hi:
            if pieces and pieces[-1][1] == lo:
                pieces[-1] = (pieces[-1][0], hi)
            else:
                pieces.append((lo, hi))
    return pieces


# -- queries -------------------------------------------------------------------


def _generate(
    availability: Availability,
    ctype: ConsultationType,
    lo: datetime,
    hi: datetime,
    now: datetime,
    blocked: tuple[list[datetime], list[datetime]],
) -> list[Slot]:
    """Free slots of ``ctype`` starting in UTC ``[lo, hi)``, before notice and horizon."""
    tz = availability.time_zone
    index = availability._index[ctype]
    length = timedelta(minutes=availability.slot_minutes[ctype])
    step = timedelta(minutes=availability.step_minutes(ctype))
    before = timedelta(minutes=availability.buffer_before_minutes)
    after = timedelta(minutes=availability.buffer_after_minutes)

    lo = max(lo, now + timedelta(minutes=availability.min_notice_minutes))
    last_day = now.astimezone(tz).date() + timedelta(days=availability.horizon_days)
    # Every slot of last_day starts before this instant (offsets are < 1 day);
    # clipping here also keeps a far-future range_end from overflowing below.
    hi = min(hi, datetime.combine(last_day + 2 * _ONE_DAY, time(), UTC))
    if lo >= hi:
        return []
    # One day of margin each side: a local date can start up to 14 h before or
    # 12 h after the UTC midnight of the same date.
    first_day = lo.astimezone(tz).date() - _ONE_DAY
    end_day = min(hi.astimezone(tz).date() + _ONE_DAY, last_day)
    if first_day > end_day:
        return []
    segments = _offset_segments(
        tz,
        datetime.combine(first_day - _ONE_DAY, time(), UTC),
        datetime.combine(end_day + 2 * _ONE_DAY, time(), UTC),
    )
    busy_starts, busy_ends = blocked
    n_busy = len(busy_ends)

    slots: list[Slot] = []
    day = first_day
    while day <= end_day:
        windows = index.overrides.get(day)
        if windows is None:
            windows = index.weekly[day.weekday()]
        if windows:
            midnight = datetime.combine(day, time(), UTC)
            for w_start, w_end in windows:
                for p_start, p_end in _real_intervals(
                    midnight + w_start, midnight + w_end, segments
                ):
                    # Jump straight to the first grid point at or after lo.
                    start = p_start if p_start >= lo else p_start - ((p_start - lo) // step) * step
                    while start < hi and start + length <= p_end:
                        end = start + length
                        b_lo, b_hi = _blocked(start, end, before, after)
                        i = bisect.bisect_right(busy_ends, b_lo)
                        if i < n_busy and busy_starts[i] < b_hi:
                            # Skip every grid point whose blocked range would
                            # still start inside this busy run.
                            start += max(1, -((start - before - busy_ends[i]) // step)) * step
                            continue
                        slots.append(Slot(start, end, ctype))
                        start += step
        day += _ONE_DAY
    # Days and windows are generated in local order, which is real-time order
    # except around fall-back overlaps; sorting a sorted list is linear.
    slots.sort(key=_slot_start)
    return slots


def _slot_start(slot: Slot) -> datetime:
    return slot.start


def _prepare(
    availability: Availability, consultation_type: ConsultationType | str, now: datetime
) -> ConsultationType:
    ctype = ConsultationType.parse(consultation_type)
    if ctype not in availability.slot_minutes:
        raise ConsultationTypeNotOffered(f"the doctor does not offer {ctype} consultations")
    _check_aware("now", now)
    return ctype


def free_slots(
    availability: Availability,
    consultation_type: ConsultationType | str,
    range_start: datetime,
    range_end: datetime,
    now: datetime,
    busy: Iterable[BusyInterval | tuple[datetime, datetime]] = (),
) -> list[Slot]:
    """Free slots of ``consultation_type`` whose start lies in ``[range_start, range_end)``.

    Returns UTC slots sorted by start, without duplicates, each exactly the
    type's slot length, inside one window (date overrides replace the weekly
    rules of their date), starting at or after ``now + min_notice``, on a local
    date no later than the horizon, and whose blocked range
    (:func:`blocked_range` with the doctor's buffers) overlaps no blocked range
    of ``busy``. ``busy`` holds active bookings as :class:`BusyInterval` or
    plain ``(start, end)`` pairs (doctor's current buffers).

    Raises :class:`UnknownConsultationType`, :class:`ConsultationTypeNotOffered`
    or :class:`InvalidTimeRange` (naive datetimes, ``range_end < range_start``).
    """
    ctype = _prepare(availability, consultation_type, now)
    _check_aware("range_start", range_start)
    _check_aware("range_end", range_end)
    if range_end < range_start:
        raise InvalidTimeRange(f"range ends at {range_end} before it starts at {range_start}")
    blocked = _merged_blocked(availability, busy)
    return _generate(
        availability,
        ctype,
        range_start.astimezone(UTC),
        range_end.astimezone(UTC),
        now.astimezone(UTC),
        blocked,
    )


def next_free_slot(
    availability: Availability,
    consultation_type: ConsultationType | str,
    now: datetime,
    busy: Iterable[BusyInterval | tuple[datetime, datetime]] = (),
    *,
    after: datetime | None = None,
) -> Slot | None:
    """The earliest free slot starting at or after ``after`` (default ``now``).

    Same rules as :func:`free_slots`; ``None`` when nothing is free before the
    horizon. Scans in week-long chunks, so a doctor free soon is cheap to ask.
    """
    ctype = _prepare(availability, consultation_type, now)
    now = now.astimezone(UTC)
    lo = now
    if after is not None:
        _check_aware("after", after)
        lo = max(lo, after.astimezone(UTC))
    blocked = _merged_blocked(availability, busy)
    last_day = now.astimezone(availability.time_zone).date() + timedelta(
        days=availability.horizon_days
    )
    limit = datetime.combine(last_day + 2 * _ONE_DAY, time(), UTC)
    while lo < limit:
        hi = min(lo + _SEARCH_CHUNK, limit)
        found = _generate(availability, ctype, lo, hi, now, blocked)
        if found:
            return found[0]
        lo = hi
    return None
