"""Free time: the slots a doctor's availability offers around the time
bookings already take.

Pure core: no I/O, no clock. ``now`` is always a parameter and every datetime
that crosses the API is timezone-aware; slots come back in UTC. What an
availability is (windows, overrides, slot lengths, buffers) is
:mod:`booking.schedule.availability`.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from booking.errors import ConsultationTypeNotOffered, InvalidTimeRange, InvalidTimeZone
from booking.schedule.availability import Availability, ConsultationType

__all__ = [
    "BusyInterval",
    "Slot",
    "blocked_range",
    "conflicts",
    "free_slots",
    "next_free_slot",
]

_ONE_DAY = timedelta(days=1)
_ONE_SECOND = timedelta(seconds=1)
# Offsets are probed this often when looking for DST transitions. Transitions
# are months apart, so two of them never hide between consecutive probes.
_PROBE = timedelta(hours=12)
# next_free_slot scans the horizon in chunks of this size so a doctor with a
# free slot tomorrow costs one short query, not a full-horizon one.
_SEARCH_CHUNK = timedelta(days=7)


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
        windows = availability.windows_on(ctype, day)
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
