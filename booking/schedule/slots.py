"""Database glue around the pure cores :mod:`booking.schedule.availability`
and :mod:`booking.schedule.free_time`.

The cores know nothing of rows; this module reads a doctor's settings, weekly
rules and date overrides into an
:class:`~booking.schedule.availability.Availability`, reads the doctor's
active bookings as busy time, and asks the core for free slots. The services
(a doctor's hours, holds, the instant queue, search) call these functions on
their connection; a hold reads what it decides on in one statement
(:func:`view_for_hold`) and inserts in the next, and the exclusion constraint
on ``bookings`` is the final word on races in between.

Booking-core errors (:class:`booking.errors.BookingError`) carry the core's
own codes; :func:`translate` and :func:`booking_errors` map them to typed
HTTP errors carrying the core's status and its code as the API spells it.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from booking.errors import BookingError, InvalidTimeRange
from booking.lifecycle import ACTIVE_STATES
from booking.schedule import cache, free_time
from booking.schedule.availability import (
    Availability,
    ConsultationType,
    DateOverride,
    TimeWindow,
    WeeklyRule,
    parse_time_zone,
)
from wadud.errors import BadRequest, Conflict, NotFound, Unprocessable, WadudError

__all__ = [
    "ACTIVE_STATE_VALUES",
    "HoldView",
    "blocked",
    "booking_errors",
    "build_availability",
    "busy_intervals",
    "free_slots",
    "is_offered",
    "load_availability",
    "parse_windows",
    "refresh_next_free",
    "translate",
    "view_for_hold",
]

#: The ``bookings.status`` values that occupy a doctor's time.
ACTIVE_STATE_VALUES: list[str] = sorted(s.value for s in ACTIVE_STATES)

# Busy rows are fetched this far beyond a queried range: a slot starting in the
# range may end up to a day later (the longest slot) plus its buffers, and a
# booking's blocked range may start up to its own buffer before the range.
_BUSY_MARGIN = timedelta(days=1, hours=5)

_ERROR_BASES: Mapping[int, type[WadudError]] = {
    400: BadRequest,
    404: NotFound,
    409: Conflict,
    422: Unprocessable,
}
_translated: dict[tuple[int, str], type[WadudError]] = {}


def translate(exc: BookingError) -> WadudError:
    """The HTTP error for a booking-core error: same status, same code slug."""
    status = exc.http_status if exc.http_status in _ERROR_BASES else 422
    cls = _translated.get((status, exc.code))
    if cls is None:
        base = _ERROR_BASES[status]
        cls = type(
            f"Http{type(exc).__name__}",
            (base,),
            {"code": exc.code.replace("_", "-"), "title": base.title},
        )
        _translated[(status, exc.code)] = cls
    return cls(str(exc))


@contextlib.contextmanager
def booking_errors() -> Iterator[None]:
    """Re-raise booking-core errors inside the block as typed HTTP errors."""
    try:
        yield
    except BookingError as exc:
        raise translate(exc) from exc


# -- reading availability ------------------------------------------------------


def _time(text: str, *, is_end: bool) -> time:
    # "24:00" is accepted as an end, meaning midnight at the end of the day
    # (the core spells that time(0)).
    if is_end and text == "24:00":
        return time(0)
    try:
        t = time.fromisoformat(text)
    except ValueError:
        raise Unprocessable(f"{text!r} is not a wall time HH:MM") from None
    return t


def parse_windows(items: Sequence[Mapping[str, Any]]) -> tuple[TimeWindow, ...]:
    """Windows from their stored / JSON form ``{"start", "end", "types"}``."""
    with booking_errors():
        return tuple(
            TimeWindow(
                _time(str(w["start"]), is_end=False),
                _time(str(w["end"]), is_end=True),
                frozenset(ConsultationType.parse(str(t)) for t in w.get("types", ["video"])),
            )
            for w in items
        )


def build_availability(
    doctor: Mapping[str, Any],
    rules: Sequence[Mapping[str, Any]],
    overrides: Sequence[Mapping[str, Any]],
) -> Availability:
    """The core's availability from a doctors row (or the same keys from a
    request), weekly rule rows and override rows. Raises typed HTTP errors
    (422) when the combination is inconsistent."""
    with booking_errors():
        weekly = tuple(
            WeeklyRule(
                int(r["weekday"]),
                r["start_local"],
                r["end_local"],
                frozenset(ConsultationType.parse(t) for t in r["types"]),
            )
            for r in rules
        )
        days = tuple(
            DateOverride.day_off(o["day"])
            if o["closed"]
            else DateOverride(o["day"], parse_windows(o["windows"]))
            for o in overrides
        )
        lengths = {ConsultationType.parse(k): int(v) for k, v in doctor["slot_minutes"].items()}
        return Availability(
            time_zone=parse_time_zone(doctor["time_zone"]),
            weekly=weekly,
            slot_minutes=lengths,
            overrides=days,
            buffer_before_minutes=int(doctor["buffer_before_min"]),
            buffer_after_minutes=int(doctor["buffer_after_min"]),
            min_notice_minutes=int(doctor["min_notice_min"]),
            horizon_days=int(doctor["horizon_days"]),
        )


#: The availability columns :func:`load_availability` reads beside the doctor's.
_AV = frozenset(
    ("rule", "weekday", "start_local", "end_local", "types", "day", "windows", "closed")
)
#: The busy-time columns :func:`view_for_hold` reads beside those.
_BUSY = frozenset(("lo", "hi", "lapsed"))


@functools.lru_cache(maxsize=8)
def _schedule(busy_from: int | None = None) -> str:
    """The LATERAL rows of doctor ``d``'s schedule: weekly rules (``rule``
    true) and date overrides (false). ``busy_from``: also, with ``rule``
    NULL, the doctor's busy ranges (``lo``, ``hi``) as :data:`BUSY_SQL` reads
    them, its parameters numbered from ``busy_from`` (states, range start,
    range end, now), and one row with ``lapsed`` true when a hold of the
    doctor lapsed (:func:`booking.bookings.holds.create_hold` expires those first)."""
    busy = ""
    if busy_from is not None:
        n = busy_from
        # BUSY_SQL's $1 is the doctor, here d.id; $2..$5 move to $n..$n+3.
        params = {"1": "d.id", **{str(k): f"${n + k - 2}" for k in range(2, 6)}}
        read = re.sub(r"\$(\d)\b", lambda m: params[m.group(1)], BUSY_SQL)
        busy = f"""
                UNION ALL
                SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, lo, hi, false
                FROM ({read}) AS busy
                UNION ALL
                (SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, true
                 FROM bookings WHERE doctor_id = d.id AND status = 'held'
                   AND hold_expires_at <= ${n + 3} LIMIT 1)"""
    more = ", NULL::timestamptz AS lo, NULL::timestamptz AS hi, NULL::boolean AS lapsed"
    return f"""
                SELECT true AS rule, weekday, start_local, end_local, types,
                       NULL::date AS day, NULL::jsonb AS windows, NULL::boolean AS closed
                       {more if busy else ""}
                FROM availability_rules WHERE doctor_id = d.id
                UNION ALL
                SELECT false, NULL, NULL, NULL, NULL, day, windows, closed
                       {", NULL, NULL, NULL" if busy else ""}
                FROM availability_overrides
                WHERE doctor_id = d.id AND day >= (now() AT TIME ZONE 'UTC')::date - 2{busy}"""


async def load_availability(
    conn: asyncpg.Connection,
    doctor_id: UUID,
    *,
    lock: bool = False,
    published: bool = False,
    doctor: Mapping[str, Any] | None = None,
    also: tuple[str, Sequence[Any]] | None = None,
) -> tuple[Mapping[str, Any], Availability]:
    """The doctors row and its availability; :class:`NotFound` if no such doctor
    (or, with ``published``, none published).

    ``lock=True`` takes the doctor's row ``FOR UPDATE`` (serialises writers of
    one doctor's schedule). ``doctor``: the row, when the caller read it in
    this transaction already. Either way one round trip: the doctor, weekly
    rules and date overrides come together (``rule`` tells the last two
    apart). Overrides of dates long past change nothing; a two-day margin
    covers every time zone's "today".

    ``also``: more select-list columns, uncorrelated with these tables, and
    their parameters (numbered from ``$2``), e.g. a consent check; they come
    back in the doctor's row (with ``doctor`` given, not at all)."""
    extra, extra_args = also if also is not None and doctor is None else ("", ())
    both = await conn.fetch(
        f"""SELECT {"" if doctor is not None else "d.*, "}{extra + ", " if extra else ""}a.*
            FROM doctors d
            LEFT JOIN LATERAL ({_schedule()}
            ) a ON true
            WHERE d.id = $1{" AND d.status = 'published'" if published else ""}
            ORDER BY a.rule DESC, a.weekday, a.start_local, a.day
            {"FOR UPDATE OF d" if lock else ""}""",
        doctor_id,
        *extra_args,
    )
    if not both:
        raise NotFound("no such doctor")
    row = doctor if doctor is not None else {k: v for k, v in both[0].items() if k not in _AV}
    rules = [r for r in both if r["rule"] is True]
    overrides = [r for r in both if r["rule"] is False]
    availability = build_availability(row, rules, overrides)
    if doctor is None:
        _remember(conn, row, availability)
    return row, availability


def _remember(
    conn: asyncpg.Connection, doctor: Mapping[str, Any], availability: Availability
) -> None:
    """Hand a freshly built availability to :mod:`booking.schedule.cache`, if it
    was read outside a transaction: only what is committed, since a
    transaction that rolls back could leave a version number another change
    then reuses."""
    if not conn.is_in_transaction():
        cache.remember(doctor, availability)


@dataclass(frozen=True, slots=True)
class HoldView:
    """What a hold decides on, read in one statement by :func:`view_for_hold`."""

    doctor: Mapping[str, Any]
    availability: Availability
    #: The doctor's busy time over :func:`offered_window` of the start.
    busy: list[free_time.BusyInterval]
    #: A hold of the doctor's lapsed and still counts against the constraint.
    lapsed: bool


async def view_for_hold(
    conn: asyncpg.Connection,
    doctor_id: UUID,
    starts_at: datetime,
    now: datetime,
    *,
    also: tuple[str, Sequence[Any]] | None = None,
) -> HoldView:
    """The published doctor, its availability, its busy time around
    ``starts_at`` and whether a hold of its lapsed: what
    :func:`load_availability` and :func:`busy_intervals` over
    :func:`offered_window` read, in one round trip. ``also`` as there."""
    extra, extra_args = also if also is not None else ("", ())
    lo, hi = offered_window(starts_at)
    n = 2 + len(extra_args)
    rows = await conn.fetch(
        f"""SELECT d.*, {extra + ", " if extra else ""}a.*
            FROM doctors d
            LEFT JOIN LATERAL ({_schedule(busy_from=n)}
            ) a ON true
            WHERE d.id = $1 AND d.status = 'published'
            ORDER BY a.rule DESC, a.weekday, a.start_local, a.day, a.lo""",
        doctor_id,
        *extra_args,
        ACTIVE_STATE_VALUES,
        lo,
        hi,
        now,
    )
    if not rows:
        raise NotFound("no such doctor")
    doctor = {k: v for k, v in rows[0].items() if k not in _AV and k not in _BUSY}
    rules = [r for r in rows if r["rule"] is True]
    overrides = [r for r in rows if r["rule"] is False]
    busy = [free_time.BusyInterval(r["lo"], r["hi"], 0, 0) for r in rows if r["lapsed"] is False]
    availability = build_availability(doctor, rules, overrides)
    _remember(conn, doctor, availability)
    return HoldView(
        doctor=doctor,
        availability=availability,
        busy=busy,
        lapsed=any(r["lapsed"] is True for r in rows),
    )


def offered_window(starts_at: datetime) -> tuple[datetime, datetime]:
    """The range whose busy intervals :func:`is_offered` at ``starts_at`` reads."""
    return starts_at - _BUSY_MARGIN, starts_at + timedelta(microseconds=1) + _BUSY_MARGIN


#: The busy-interval read of :func:`busy_intervals` ($1 doctor, $2 active
#: states, $3..$4 the range, $5 the instant lapsed holds stop counting).
BUSY_SQL = """SELECT lower(blocked) AS lo, upper(blocked) AS hi FROM bookings
           WHERE doctor_id = $1
             AND status = ANY($2::text[])
             AND NOT (status = 'held' AND hold_expires_at IS NOT NULL
                      AND hold_expires_at <= coalesce($5::timestamptz, now()))
             AND starts_at < $4
             AND starts_at >= $3::timestamptz - interval '2 days'
             AND blocked && tstzrange($3, $4)"""


async def busy_intervals(
    conn: asyncpg.Connection,
    doctor_id: UUID,
    start: datetime,
    end: datetime,
    *,
    now: datetime | None = None,
) -> list[free_time.BusyInterval]:
    """Blocked ranges of the doctor's active bookings overlapping ``[start, end)``.

    Holds whose ``hold_expires_at`` has passed (at ``now``, default the
    database clock) no longer count, even before the sweeper expires them.
    Each range is the stored ``bookings.blocked`` (already widened by the
    buffers in force at booking time), so it carries no buffer of its own.
    """
    rows = await conn.fetch(
        BUSY_SQL + " ORDER BY lo",
        doctor_id,
        ACTIVE_STATE_VALUES,
        start,
        end,
        now,
    )
    return [free_time.BusyInterval(r["lo"], r["hi"], 0, 0) for r in rows]


async def free_slots(
    conn: asyncpg.Connection,
    doctor_id: UUID,
    consultation_type: str,
    start: datetime,
    end: datetime,
    now: datetime,
    *,
    doctor: Mapping[str, Any] | None = None,
    availability: Availability | None = None,
    busy: Sequence[free_time.BusyInterval] | None = None,
) -> list[free_time.Slot]:
    """Free slots of the doctor starting in ``[start, end)``, as of ``now``.

    Does not look at the doctor's status; callers decide who may see a
    draft's or a suspended doctor's slots. Raises 404 for an unknown doctor,
    422 for an unknown or unoffered type or a bad range. ``doctor``: its row,
    if the caller has it."""
    if availability is None:
        _, availability = await load_availability(conn, doctor_id, doctor=doctor)
    return await _free(conn, doctor_id, availability, consultation_type, start, end, now, busy)


async def _free(
    conn: asyncpg.Connection,
    doctor_id: UUID,
    availability: Availability,
    consultation_type: str,
    start: datetime,
    end: datetime,
    now: datetime,
    busy: Sequence[free_time.BusyInterval] | None = None,
) -> list[free_time.Slot]:
    with booking_errors():
        if end < start:
            raise InvalidTimeRange("the range ends before it starts")
        if busy is None:
            busy = await busy_intervals(
                conn, doctor_id, start - _BUSY_MARGIN, end + _BUSY_MARGIN, now=now
            )
        return free_time.free_slots(availability, consultation_type, start, end, now, busy)


async def is_offered(
    conn: asyncpg.Connection,
    doctor_id: UUID,
    consultation_type: str,
    starts_at: datetime,
    now: datetime,
    *,
    doctor: Mapping[str, Any] | None = None,
    availability: Availability | None = None,
    busy: Sequence[free_time.BusyInterval] | None = None,
) -> free_time.Slot | None:
    """The free slot starting exactly at ``starts_at``, or ``None`` if there is
    none now (off the grid, outside the windows, too soon, beyond the horizon,
    or taken). ``doctor``: its row, if the caller has it; ``busy``: the
    doctor's busy intervals over :func:`offered_window`, if the caller read
    them."""
    end = starts_at + timedelta(microseconds=1)
    slots = await free_slots(
        conn,
        doctor_id,
        consultation_type,
        starts_at,
        end,
        now,
        doctor=doctor,
        availability=availability,
        busy=busy,
    )
    for slot in slots:
        if slot.start == starts_at:
            return slot
    return None


def blocked(
    doctor_row: Mapping[str, Any], start: datetime, end: datetime
) -> tuple[datetime, datetime]:
    """The range to store in ``bookings.blocked`` for ``[start, end)``: the
    slot widened by the doctor's current buffers."""
    with booking_errors():
        return free_time.blocked_range(
            start,
            end,
            timedelta(minutes=int(doctor_row["buffer_before_min"])),
            timedelta(minutes=int(doctor_row["buffer_after_min"])),
        )


async def next_free(
    conn: asyncpg.Connection, doctor_id: UUID, availability: Availability, now: datetime
) -> datetime | None:
    """The start of the doctor's earliest free slot of any offered type."""
    horizon_end = datetime.combine(
        now.astimezone(availability.time_zone).date()
        + timedelta(days=availability.horizon_days + 2),
        time(),
        UTC,
    )
    busy = await busy_intervals(conn, doctor_id, now - _BUSY_MARGIN, horizon_end, now=now)
    best: datetime | None = None
    for ctype in availability.slot_minutes:
        slot = free_time.next_free_slot(availability, ctype, now, busy)
        if slot is not None and (best is None or slot.start < best):
            best = slot.start
    return best


async def refresh_next_free(
    conn: asyncpg.Connection,
    doctor_id: UUID,
    now: datetime,
    *,
    changed: tuple[datetime, datetime] | None = None,
    occupied: bool = True,
    doctor: Mapping[str, Any] | None = None,
) -> datetime | None:
    """Recompute and store ``doctors.next_free_at``; call after a change to
    the doctor's availability or bookings (inside that transaction).

    ``changed`` is the blocked range a booking just took (``occupied``) or
    gave back. Most changes cannot move the earliest free slot: time taken
    that misses that slot's buffered range, or time given back after it.
    Those skip the recomputation, which is the costliest part of a hold.
    ``doctor``: the doctor's row as this transaction read it, if the caller
    has it (its ``next_free_at`` and buffers decide the skip)."""
    if changed is not None:
        if doctor is None:
            doctor = await conn.fetchrow(
                """SELECT next_free_at, buffer_before_min, buffer_after_min, slot_minutes
                   FROM doctors WHERE id = $1""",
                doctor_id,
            )
        if doctor is not None and not _may_move(doctor, changed, occupied, now):
            current: datetime | None = doctor["next_free_at"]
            return current
    _, availability = await load_availability(conn, doctor_id)
    value = await next_free(conn, doctor_id, availability, now)
    await conn.execute(
        """UPDATE doctors SET next_free_at = $2, next_free_checked_at = $3 WHERE id = $1""",
        doctor_id,
        value,
        now,
    )
    return value


def _may_move(
    doctor: asyncpg.Record, changed: tuple[datetime, datetime], occupied: bool, now: datetime
) -> bool:
    first: datetime | None = doctor["next_free_at"]
    if first is None or first <= now:
        return True
    lo, hi = changed
    if not occupied:
        # Time given back after the earliest free slot cannot make an earlier one.
        return lo < first
    # Taken time moves the earliest slot only if it conflicts with it; the
    # longest slot length of any type stands for "that slot", conservatively.
    longest = max((int(m) for m in doctor["slot_minutes"].values()), default=0)
    slot_lo = first - timedelta(minutes=doctor["buffer_before_min"])
    slot_hi = first + timedelta(minutes=longest + doctor["buffer_after_min"])
    return lo < slot_hi and slot_lo < hi
