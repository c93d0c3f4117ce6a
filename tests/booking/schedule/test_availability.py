from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from booking.errors import (
    BookingError,
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
from booking.schedule.availability import (
    Availability,
    ConsultationType,
    DateOverride,
    TimeWindow,
    WeeklyRule,
    parse_time_zone,
)
from booking.schedule.free_time import (
    BusyInterval,
    Slot,
    blocked_range,
    conflicts,
    free_slots,
    next_free_slot,
)
from wadud.errors import Unprocessable

VIDEO = ConsultationType.VIDEO
IN_PERSON = ConsultationType.IN_PERSON
BOTH = frozenset({VIDEO, IN_PERSON})
ONLY_VIDEO = frozenset({VIDEO})
NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
KARACHI = ZoneInfo("Asia/Karachi")
LONG_AGO = datetime(2024, 1, 1, tzinfo=UTC)  # "now" for calendar pages in 2024


def every_day(
    start: time, end: time, types: frozenset[ConsultationType] = BOTH
) -> tuple[WeeklyRule, ...]:
    return tuple(WeeklyRule(d, start, end, types) for d in range(7))


def make(
    tz: ZoneInfo = KARACHI,
    weekly: tuple[WeeklyRule, ...] = every_day(time(9), time(17)),
    *,
    video: int = 30,
    in_person: int = 30,
    overrides: tuple[DateOverride, ...] = (),
    before: int = 0,
    after: int = 0,
    notice: int = 0,
    horizon: int = 730,
    step: int | None = None,
) -> Availability:
    return Availability(
        time_zone=tz,
        weekly=weekly,
        slot_minutes={VIDEO: video, IN_PERSON: in_person},
        overrides=overrides,
        buffer_before_minutes=before,
        buffer_after_minutes=after,
        min_notice_minutes=notice,
        horizon_days=horizon,
        slot_step_minutes=step,
    )


def local_day(av: Availability, day: date, ctype: ConsultationType = VIDEO) -> list[Slot]:
    """Slots of one local date, as a doctor's calendar page would ask."""
    tz = av.time_zone
    start = datetime.combine(day, time(), tz)
    end = datetime.combine(day + timedelta(days=1), time(), tz)
    return free_slots(av, ctype, start, end, LONG_AGO)


def wall(slots: list[Slot], tz: ZoneInfo) -> list[str]:
    return [s.start.astimezone(tz).strftime("%H:%M%z") for s in slots]


# -- basics --------------------------------------------------------------------


def test_slots_of_one_day_in_karachi() -> None:
    slots = local_day(make(weekly=every_day(time(9), time(13))), date(2024, 6, 3))
    assert len(slots) == 8
    assert slots[0] == Slot(
        datetime(2024, 6, 3, 4, tzinfo=UTC), datetime(2024, 6, 3, 4, 30, tzinfo=UTC), VIDEO
    )
    assert slots[-1].start == datetime(2024, 6, 3, 7, 30, tzinfo=UTC)
    assert all(s.start.tzinfo is UTC and s.end - s.start == timedelta(minutes=30) for s in slots)


def test_consultation_type_strings_are_accepted() -> None:
    av = make()
    assert local_day(av, date(2024, 6, 3), "video") == local_day(av, date(2024, 6, 3), VIDEO)  # type: ignore[arg-type]


def test_window_serving_one_type_gives_no_slots_of_the_other() -> None:
    av = make(
        weekly=every_day(time(9), time(12), ONLY_VIDEO)
        + every_day(time(14), time(16), frozenset({IN_PERSON}))
    )
    assert wall(local_day(av, date(2024, 6, 3), IN_PERSON), KARACHI)[0] == "14:00+0500"
    assert wall(local_day(av, date(2024, 6, 3), VIDEO), KARACHI)[-1] == "11:30+0500"


def test_per_type_slot_length() -> None:
    av = make(weekly=every_day(time(9), time(10)), video=20, in_person=60)
    assert len(local_day(av, date(2024, 6, 3), VIDEO)) == 3
    assert len(local_day(av, date(2024, 6, 3), IN_PERSON)) == 1


def test_default_step_packs_slots_with_their_buffers() -> None:
    # 30 min + 10 before + 5 after: the grid advances 45 min, so every offered
    # slot can be booked at the same time.
    av = make(weekly=every_day(time(9), time(12)), before=10, after=5)
    slots = local_day(av, date(2024, 6, 3))
    assert wall(slots, KARACHI) == ["09:00+0500", "09:45+0500", "10:30+0500", "11:15+0500"]
    ranges = [
        blocked_range(s.start, s.end, timedelta(minutes=10), timedelta(minutes=5)) for s in slots
    ]
    assert not any(conflicts(a, b) for a, b in itertools.pairwise(ranges))


def test_explicit_step() -> None:
    av = make(weekly=every_day(time(9), time(10)), step=15)
    assert wall(local_day(av, date(2024, 6, 3)), KARACHI) == [
        "09:00+0500",
        "09:15+0500",
        "09:30+0500",
    ]


def test_slots_do_not_span_adjacent_windows_and_midnight_end() -> None:
    weekly = (
        WeeklyRule(0, time(22), time(0), BOTH),  # 22:00-24:00 Monday
        WeeklyRule(1, time(0), time(1), BOTH),
    )
    av = make(weekly=weekly, video=45)
    monday = local_day(av, date(2024, 6, 3))
    assert wall(monday, KARACHI) == ["22:00+0500", "22:45+0500"]
    assert wall(local_day(av, date(2024, 6, 4)), KARACHI) == ["00:00+0500"]


def test_whole_day_window() -> None:
    av = make(weekly=(WeeklyRule(0, time(0), time(0), BOTH),), video=60)
    assert len(local_day(av, date(2024, 6, 3))) == 24


# -- overrides ----------------------------------------------------------------------


def test_day_off_override() -> None:
    av = make(overrides=(DateOverride.day_off(date(2024, 6, 3)),))
    assert DateOverride.day_off(date(2024, 6, 3)).closed
    assert local_day(av, date(2024, 6, 3)) == []
    assert len(local_day(av, date(2024, 6, 4))) == 16


def test_override_replaces_all_weekly_windows_of_its_date() -> None:
    av = make(
        overrides=(
            DateOverride(date(2024, 6, 3), (TimeWindow(time(18), time(19), BOTH),)),
            DateOverride(
                date(2024, 6, 4), (TimeWindow(time(9), time(10), frozenset({IN_PERSON})),)
            ),
        )
    )
    assert wall(local_day(av, date(2024, 6, 3)), KARACHI) == ["18:00+0500", "18:30+0500"]
    # An override serving only in-person closes the date for video.
    assert local_day(av, date(2024, 6, 4), VIDEO) == []
    assert len(local_day(av, date(2024, 6, 4), IN_PERSON)) == 2


# -- notice, horizon, range --------------------------------------------------------


def test_min_notice_rounds_up_to_the_grid() -> None:
    av = make(notice=60)
    now = datetime(2024, 6, 3, 9, 10, tzinfo=KARACHI)
    slots = free_slots(av, VIDEO, now, now + timedelta(hours=4), now)
    assert wall(slots, KARACHI)[0] == "10:30+0500"


def test_slot_exactly_at_notice_is_offered() -> None:
    av = make(notice=60)
    now = datetime(2024, 6, 3, 9, 30, tzinfo=KARACHI)
    first = free_slots(av, VIDEO, now, now + timedelta(hours=4), now)[0]
    assert first.start == now + timedelta(minutes=60)


@pytest.mark.parametrize(("horizon", "last_day"), [(0, date(2024, 6, 3)), (2, date(2024, 6, 5))])
def test_horizon_counts_local_days(horizon: int, last_day: date) -> None:
    av = make(horizon=horizon)
    now = datetime(2024, 6, 3, 23, 0, tzinfo=KARACHI)
    slots = free_slots(
        av, VIDEO, now - timedelta(days=30), now + timedelta(days=30), now - timedelta(hours=20)
    )
    assert max(s.start.astimezone(KARACHI).date() for s in slots) == last_day


def test_range_selects_slots_by_start() -> None:
    av = make()
    lo = datetime(2024, 6, 3, 9, 15, tzinfo=KARACHI)
    hi = datetime(2024, 6, 3, 10, 30, tzinfo=KARACHI)
    # 09:00 starts before lo; 10:30 starts at the excluded end.
    assert wall(free_slots(av, VIDEO, lo, hi, LONG_AGO), KARACHI) == ["09:30+0500", "10:00+0500"]
    assert free_slots(av, VIDEO, lo, lo, LONG_AGO) == []


def test_far_future_range_end_is_clipped_by_the_horizon() -> None:
    av = make(horizon=3)
    now = datetime(2024, 6, 3, tzinfo=UTC)
    slots = free_slots(
        av, VIDEO, datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC), now
    )
    assert len(slots) == 4 * 16


# -- busy time and buffers -----------------------------------------------------------


def test_blocked_range_and_conflict_rule() -> None:
    start = datetime(2024, 6, 3, 10, tzinfo=UTC)
    end = start + timedelta(minutes=30)
    lo, hi = blocked_range(start, end, timedelta(minutes=10), timedelta(minutes=5))
    assert (lo, hi) == (start - timedelta(minutes=10), end + timedelta(minutes=5))
    assert conflicts((lo, hi), (hi - timedelta(microseconds=1), hi + timedelta(hours=1)))
    # Half-open: touching ranges do not conflict.
    assert not conflicts((lo, hi), (hi, hi + timedelta(hours=1)))
    assert not conflicts((hi, hi + timedelta(hours=1)), (lo, hi))


def test_busy_blocks_with_both_buffers() -> None:
    # Booking 10:00-10:30 with 10 before / 5 after blocks [09:50, 10:35).
    # A candidate s blocks [s - 10, s + 35): it conflicts iff 09:15 < s < 10:45.
    av = make(weekly=every_day(time(9), time(12)), before=10, after=5, step=15)
    busy = [
        (datetime(2024, 6, 3, 10, tzinfo=KARACHI), datetime(2024, 6, 3, 10, 30, tzinfo=KARACHI))
    ]
    slots = free_slots(
        av,
        VIDEO,
        datetime(2024, 6, 3, tzinfo=KARACHI),
        datetime(2024, 6, 4, tzinfo=KARACHI),
        LONG_AGO,
        busy,
    )
    assert wall(slots, KARACHI) == [
        "09:00+0500",
        "09:15+0500",
        "10:45+0500",
        "11:00+0500",
        "11:15+0500",
        "11:30+0500",
    ]


def test_busy_interval_with_its_own_buffers() -> None:
    av = make(weekly=every_day(time(9), time(12)), before=10, after=5, step=15)
    day = datetime(2024, 6, 3, tzinfo=KARACHI)
    busy = [BusyInterval(day + timedelta(hours=10), day + timedelta(hours=10, minutes=30), 0, 0)]
    slots = free_slots(av, VIDEO, day, day + timedelta(days=1), LONG_AGO, busy)
    # Now only the candidate's own buffers count: free iff s + 35 <= 10:00 or s - 10 >= 10:30.
    assert wall(slots, KARACHI)[:3] == ["09:00+0500", "09:15+0500", "10:45+0500"]


def test_busy_in_another_zone_and_overlapping_busy() -> None:
    av = make(weekly=every_day(time(9), time(12)))
    day = datetime(2024, 6, 3, tzinfo=KARACHI)
    dubai = ZoneInfo("Asia/Dubai")
    busy = [
        (
            datetime(2024, 6, 3, 8, tzinfo=dubai),
            datetime(2024, 6, 3, 9, tzinfo=dubai),
        ),  # 09:00-10:00 PKT
        (datetime(2024, 6, 3, 9, 30, tzinfo=KARACHI), datetime(2024, 6, 3, 10, 30, tzinfo=KARACHI)),
    ]
    slots = free_slots(av, VIDEO, day, day + timedelta(days=1), LONG_AGO, busy)
    assert wall(slots, KARACHI) == ["10:30+0500", "11:00+0500", "11:30+0500"]


def test_next_free_slot() -> None:
    av = make(weekly=(WeeklyRule(2, time(9), time(10), ONLY_VIDEO),), notice=30)
    now = datetime(2024, 6, 3, 12, tzinfo=KARACHI)  # Monday
    wednesday = datetime(2024, 6, 5, 9, tzinfo=KARACHI)
    first = next_free_slot(av, VIDEO, now)
    assert first is not None
    assert first.start == wednesday
    busy = [(wednesday, wednesday + timedelta(minutes=30))]
    second = next_free_slot(av, VIDEO, now, busy)
    assert second is not None
    assert second.start == wednesday + timedelta(minutes=30)
    later = next_free_slot(av, VIDEO, now, after=wednesday + timedelta(minutes=1))
    assert later is not None
    assert later.start == wednesday + timedelta(minutes=30)
    # Next week's Wednesday is found across several search chunks.
    full = [(wednesday, wednesday + timedelta(hours=1))]
    nxt = next_free_slot(av, VIDEO, now, full)
    assert nxt is not None
    assert nxt.start == wednesday + timedelta(days=7)


def test_next_free_slot_none_within_horizon() -> None:
    av = make(weekly=(WeeklyRule(2, time(9), time(10), ONLY_VIDEO),), horizon=1)
    assert next_free_slot(av, VIDEO, datetime(2024, 6, 3, 12, tzinfo=KARACHI)) is None


# -- DST ------------------------------------------------------------------------------

NINE_TO_FIVE = [f"{h:02d}:{m:02d}" for h in range(9, 17) for m in (0, 30)]


@pytest.mark.parametrize(
    ("tz", "change", "before", "after"),
    [
        (NEW_YORK, date(2024, 3, 10), "-0500", "-0400"),
        (NEW_YORK, date(2024, 11, 3), "-0400", "-0500"),
        (LONDON, date(2024, 3, 31), "+0000", "+0100"),
        (LONDON, date(2024, 10, 27), "+0100", "+0000"),
    ],
)
def test_nine_to_five_stays_nine_to_five_across_dst(
    tz: ZoneInfo, change: date, before: str, after: str
) -> None:
    """The day before the clocks change, the day they change (at night, so
    the whole working day is at the new offset) and the day after."""
    av = make(tz, every_day(time(9), time(17)))
    days = [change - timedelta(days=1), change, change + timedelta(days=1)]
    for day, offset in zip(days, [before, after, after], strict=True):
        slots = local_day(av, day)
        assert wall(slots, tz) == [f"{t}{offset}" for t in NINE_TO_FIVE]
        assert all(s.end - s.start == timedelta(minutes=30) for s in slots)


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        pytest.param(
            date(2024, 3, 10),
            ["00:00-0500", "01:00-0500", "03:00-0400", "04:00-0400", "05:00-0400"],
            id="spring-forward-gap-loses-an-hour",
        ),
        pytest.param(
            date(2024, 11, 3),
            [
                "00:00-0400",
                "01:00-0400",
                "01:00-0500",
                "02:00-0500",
                "03:00-0500",
                "04:00-0500",
                "05:00-0500",
            ],
            id="fall-back-overlap-gains-an-hour",
        ),
    ],
)
def test_window_crossing_a_clock_change(day: date, expected: list[str]) -> None:
    """Hour slots from midnight to six: each an hour long, one after another."""
    av = make(NEW_YORK, every_day(time(0), time(6)), video=60)
    slots = local_day(av, day)
    assert wall(slots, NEW_YORK) == expected
    assert all(s.end - s.start == timedelta(hours=1) for s in slots)
    assert all(a.end == b.start for a, b in itertools.pairwise(slots))


def test_slot_straddling_the_gap_keeps_its_real_length() -> None:
    av = make(NEW_YORK, every_day(time(1), time(4)), video=90)
    (slot,) = local_day(av, date(2024, 3, 10))
    assert slot.start.astimezone(NEW_YORK).strftime("%H:%M%z") == "01:00-0500"
    assert slot.end.astimezone(NEW_YORK).strftime("%H:%M%z") == "03:30-0400"
    assert slot.end - slot.start == timedelta(minutes=90)


def test_window_starting_in_the_gap_starts_at_the_transition() -> None:
    av = make(NEW_YORK, every_day(time(2, 30), time(5)), video=60)
    assert wall(local_day(av, date(2024, 3, 10)), NEW_YORK) == ["03:00-0400", "04:00-0400"]
    assert wall(local_day(av, date(2024, 3, 17)), NEW_YORK) == ["02:30-0400", "03:30-0400"]


def test_window_inside_the_gap_is_empty_that_day() -> None:
    av = make(NEW_YORK, every_day(time(2), time(2, 45)), video=15)
    assert local_day(av, date(2024, 3, 10)) == []
    assert len(local_day(av, date(2024, 3, 17))) == 3


def test_window_inside_the_overlap_happens_twice() -> None:
    av = make(NEW_YORK, every_day(time(1), time(1, 30)), video=30)
    slots = local_day(av, date(2024, 11, 3))
    assert [s.start for s in slots] == [
        datetime(2024, 11, 3, 5, tzinfo=UTC),
        datetime(2024, 11, 3, 6, tzinfo=UTC),
    ]
    assert [s.start.astimezone(NEW_YORK).fold for s in slots] == [0, 1]


def test_windows_interleave_in_real_time_during_the_overlap() -> None:
    # 00:30-01:30 and 01:30-03:00: the second pass through 01:00-01:30 (window
    # one) comes after the first pass through 01:30-02:00 (window two).
    weekly = every_day(time(0, 30), time(1, 30)) + every_day(time(1, 30), time(3))
    av = make(NEW_YORK, weekly, video=30)
    slots = local_day(av, date(2024, 11, 3))
    assert wall(slots, NEW_YORK) == [
        "00:30-0400",
        "01:00-0400",
        "01:30-0400",  # window two, first pass
        "01:00-0500",  # window one, second pass
        "01:30-0500",
        "02:00-0500",
        "02:30-0500",
    ]
    assert all(a.end == b.start for a, b in itertools.pairwise(slots))


def test_london_gap_with_explicit_step() -> None:
    av = make(LONDON, every_day(time(0), time(3)), video=30, step=45)
    # Elapsed-time grid: 00:00, 00:45 GMT, then 01:30 GMT is 02:30 BST.
    assert wall(local_day(av, date(2024, 3, 31)), LONDON) == [
        "00:00+0000",
        "00:45+0000",
        "02:30+0100",
    ]


@pytest.mark.parametrize("name", ["Asia/Karachi", "Asia/Dubai", "Asia/Qatar", "Asia/Riyadh"])
def test_served_regions_keep_one_offset_all_year(name: str) -> None:
    tz = ZoneInfo(name)
    av = make(tz)
    for day in (date(2024, 1, 15), date(2024, 3, 31), date(2024, 7, 15), date(2024, 11, 3)):
        slots = local_day(av, day)
        assert [s.start.astimezone(tz).strftime("%H:%M") for s in slots] == NINE_TO_FIVE


# -- validation ---------------------------------------------------------------------


def test_errors_carry_status_and_code() -> None:
    with pytest.raises(OverlappingWindows) as info:
        make(
            weekly=(
                WeeklyRule(0, time(9), time(12), ONLY_VIDEO),
                WeeklyRule(0, time(11), time(13), frozenset({IN_PERSON})),
            )
        )
    err = info.value
    assert isinstance(err, BookingError)
    assert isinstance(err, Unprocessable)
    assert isinstance(err, ValueError)
    assert err.http_status == 422
    assert err.title == "Availability windows overlap"
    assert "11:00:00-13:00:00 overlaps 09:00:00-12:00:00" in err.detail
    assert err.code == "overlapping_windows"


def test_touching_windows_do_not_overlap() -> None:
    av = make(
        weekly=(WeeklyRule(0, time(9), time(12), BOTH), WeeklyRule(0, time(12), time(13), BOTH))
    )
    assert len(local_day(av, date(2024, 6, 3))) == 8


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (time(10), time(10)),
        (time(10), time(9)),
        (time(9, 0, 30), time(10)),
        (time(9, tzinfo=UTC), time(10)),
    ],
)
def test_malformed_windows(start: time, end: time) -> None:
    with pytest.raises(InvalidWindow):
        TimeWindow(start, end, BOTH)
    with pytest.raises(InvalidWindow):
        WeeklyRule(0, start, end, BOTH)


def test_window_needs_a_type_and_known_types() -> None:
    with pytest.raises(InvalidWindow):
        TimeWindow(time(9), time(10), frozenset())
    with pytest.raises(UnknownConsultationType) as info:
        TimeWindow(time(9), time(10), frozenset({"phone"}))  # type: ignore[arg-type]
    assert info.value.http_status == 422


@pytest.mark.parametrize("weekday", [-1, 7, True])
def test_bad_weekday(weekday: int) -> None:
    with pytest.raises(InvalidSchedule):
        WeeklyRule(weekday, time(9), time(10), BOTH)


def test_slot_longer_than_window() -> None:
    with pytest.raises(SlotLongerThanWindow):
        make(weekly=every_day(time(9), time(9, 20)), video=30)
    with pytest.raises(SlotLongerThanWindow):
        make(overrides=(DateOverride(date(2024, 6, 3), (TimeWindow(time(9), time(9, 20), BOTH),)),))


def test_missing_slot_length_and_type_not_offered() -> None:
    with pytest.raises(MissingSlotLength):
        Availability(
            time_zone=KARACHI, weekly=every_day(time(9), time(17)), slot_minutes={VIDEO: 30}
        )
    av = Availability(
        time_zone=KARACHI, weekly=every_day(time(9), time(17), ONLY_VIDEO), slot_minutes={VIDEO: 30}
    )
    assert not av.offers(IN_PERSON)
    with pytest.raises(ConsultationTypeNotOffered):
        free_slots(av, IN_PERSON, LONG_AGO, LONG_AGO, LONG_AGO)
    with pytest.raises(UnknownConsultationType):
        free_slots(av, "phone", LONG_AGO, LONG_AGO, LONG_AGO)


def test_overlapping_and_duplicate_overrides() -> None:
    with pytest.raises(OverlappingWindows):
        DateOverride(
            date(2024, 6, 3),
            (TimeWindow(time(9), time(11), BOTH), TimeWindow(time(10), time(12), BOTH)),
        )
    with pytest.raises(DuplicateOverride):
        make(
            overrides=(
                DateOverride.day_off(date(2024, 6, 3)),
                DateOverride.day_off(date(2024, 6, 3)),
            )
        )


@pytest.mark.parametrize(
    "field",
    [
        {"before": -1},
        {"after": 1441},
        {"notice": -5},
        {"horizon": 731},
        {"step": 0},
        {"video": 0},
    ],
)
def test_out_of_range_numbers(field: dict[str, int]) -> None:
    with pytest.raises(InvalidSchedule):
        make(**field)  # type: ignore[arg-type]


def test_time_zone_validation() -> None:
    assert parse_time_zone("Asia/Qatar") == ZoneInfo("Asia/Qatar")
    with pytest.raises(InvalidTimeZone):
        parse_time_zone("Mars/Olympus_Mons")
    with pytest.raises(InvalidTimeZone):
        parse_time_zone("../etc/passwd")
    with pytest.raises(InvalidTimeZone):
        make(tz="Asia/Karachi")  # type: ignore[arg-type]


def test_time_range_validation() -> None:
    av = make()
    naive = datetime(2024, 6, 3)
    with pytest.raises(InvalidTimeRange):
        free_slots(av, VIDEO, naive, LONG_AGO, LONG_AGO)
    with pytest.raises(InvalidTimeRange):
        free_slots(av, VIDEO, LONG_AGO, LONG_AGO, naive)
    with pytest.raises(InvalidTimeRange):
        free_slots(av, VIDEO, LONG_AGO + timedelta(days=1), LONG_AGO, LONG_AGO)
    with pytest.raises(InvalidTimeRange):
        free_slots(av, VIDEO, LONG_AGO, LONG_AGO, LONG_AGO, [(LONG_AGO, LONG_AGO)])
    with pytest.raises(InvalidTimeRange):
        BusyInterval(LONG_AGO, LONG_AGO + timedelta(hours=1), -1)
    with pytest.raises(InvalidTimeRange):
        blocked_range(LONG_AGO, LONG_AGO, timedelta(minutes=-1), timedelta(0))
    with pytest.raises(InvalidTimeRange):
        next_free_slot(av, VIDEO, LONG_AGO, after=naive)


# -- performance ------------------------------------------------------------------------


def test_fourteen_days_across_spring_forward_give_every_slot_busy_time_leaves() -> None:
    """The patient page's first range (how long it takes:
    ``benchmarks/booking/slots.py``): fourteen days from 10:00 on 1 March,
    two hours' notice, 30-minute steps (20 minutes and 5 either side)."""
    av = make(
        NEW_YORK, every_day(time(8), time(20)), video=20, before=5, after=5, horizon=60, notice=120
    )
    now = datetime(2024, 3, 1, 15, tzinfo=UTC)  # the range crosses the spring-forward day
    end = now + timedelta(days=14)
    free = free_slots(av, VIDEO, now, end, now, [])
    per_day = Counter(s.start.astimezone(NEW_YORK).date() for s in free)
    # 12:00-20:00 on the first day (EST), whole days between (10 March loses
    # 02:00-03:00, none of its working day), 08:00-11:00 on the last: the range
    # ends at 15:00 UTC, 11:00 in EDT.
    assert per_day[date(2024, 3, 1)] == 16 and per_day[date(2024, 3, 15)] == 6
    assert all(per_day[date(2024, 3, d)] == 24 for d in range(2, 15)), per_day
    busy = [
        (now + timedelta(hours=h), now + timedelta(hours=h, minutes=20))
        for h in range(0, 14 * 24, 7)
    ]
    pad = timedelta(minutes=5)
    clear = [s for s in free if all(s.end + pad <= b0 or b1 <= s.start - pad for b0, b1 in busy)]
    assert len(clear) < len(free)
    assert free_slots(av, VIDEO, now, end, now, busy) == clear


# -- properties ------------------------------------------------------------------------

# Zones paired with an instant a day or two before one of their 2024 transitions
# (or an ordinary date for zones without DST).
ZONE_ANCHORS = [
    ("America/New_York", datetime(2024, 3, 9, tzinfo=UTC)),
    ("America/New_York", datetime(2024, 11, 2, tzinfo=UTC)),
    ("Europe/London", datetime(2024, 3, 30, tzinfo=UTC)),
    ("Europe/London", datetime(2024, 10, 26, tzinfo=UTC)),
    ("Australia/Lord_Howe", datetime(2024, 4, 5, tzinfo=UTC)),  # 30-minute DST
    ("Australia/Lord_Howe", datetime(2024, 10, 5, tzinfo=UTC)),
    ("America/Santiago", datetime(2024, 4, 5, tzinfo=UTC)),  # transitions at local midnight
    ("America/Santiago", datetime(2024, 9, 6, tzinfo=UTC)),
    ("Asia/Karachi", datetime(2024, 6, 15, tzinfo=UTC)),
    ("Asia/Riyadh", datetime(2024, 3, 9, tzinfo=UTC)),
]
LENGTHS = [10, 15, 20, 30, 45, 60, 90]


# Built once: constructing strategies inside a composite dominates the run time.
CUTS = st.sets(st.integers(0, 96), min_size=2, max_size=6)  # quarter hours of a day
TYPE_SETS = st.sampled_from([frozenset({VIDEO}), frozenset({IN_PERSON}), BOTH])


def day_windows(draw: st.DrawFn, lengths: dict[ConsultationType, int]) -> list[TimeWindow]:
    cuts = sorted(draw(CUTS))
    windows = []
    for lo, hi in zip(cuts[::2], cuts[1::2], strict=False):
        span = (hi - lo) * 15
        types = frozenset(t for t in draw(TYPE_SETS) if lengths[t] <= span)
        if types:
            end = time(0) if hi == 96 else time(hi * 15 // 60, hi * 15 % 60)
            windows.append(TimeWindow(time(lo * 15 // 60, lo * 15 % 60), end, types))
    return windows


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[Availability, datetime, datetime, datetime, list[BusyInterval]]:
    lengths = {VIDEO: draw(st.sampled_from(LENGTHS)), IN_PERSON: draw(st.sampled_from(LENGTHS))}
    weekly = tuple(
        WeeklyRule(day, w.start, w.end, w.consultation_types)
        for day in range(7)
        for w in day_windows(draw, lengths)
    )
    zone, anchor = draw(st.sampled_from(ZONE_ANCHORS))
    tz = ZoneInfo(zone)
    now = anchor + timedelta(minutes=draw(st.integers(-2 * 1440, 2 * 1440)))
    today = now.astimezone(tz).date()
    override_days = draw(st.sets(st.integers(-1, 6), max_size=3))
    overrides = tuple(
        DateOverride(today + timedelta(days=d), tuple(day_windows(draw, lengths)))
        for d in sorted(override_days)
    )
    av = Availability(
        time_zone=tz,
        weekly=weekly,
        slot_minutes=lengths,
        overrides=overrides,
        buffer_before_minutes=draw(st.integers(0, 30)),
        buffer_after_minutes=draw(st.integers(0, 30)),
        min_notice_minutes=draw(st.integers(0, 600)),
        horizon_days=draw(st.sampled_from(range(15))),
        slot_step_minutes=draw(st.none() | st.sampled_from([5, 15, 30, 60])),
    )
    start = now + timedelta(minutes=draw(st.integers(-1440, 3 * 1440)))
    # Whole days drawn uniformly: hypothesis favours small integers, and a range of
    # minutes would rarely hold a slot.
    days = draw(st.sampled_from([0, 1, 2, 3, 5]))
    end = start + timedelta(minutes=days * 1440 + draw(st.integers(0, 1439)))
    busy = []
    for _ in range(draw(st.integers(0, 12))):
        b_start = now + timedelta(minutes=draw(st.integers(-1440, 8 * 1440)))
        own = draw(st.booleans())
        busy.append(
            BusyInterval(
                b_start,
                b_start + timedelta(minutes=draw(st.integers(1, 180))),
                draw(st.integers(0, 30)) if own else None,
                draw(st.integers(0, 30)) if own else None,
            )
        )
    return av, now, start, end, busy


def windows_of(av: Availability, day: date) -> list[TimeWindow]:
    for o in av.overrides:
        if o.day == day:
            return list(o.windows)
    return [r.window for r in av.weekly if r.weekday == day.weekday()]


def blocked(av: Availability, b: BusyInterval) -> tuple[datetime, datetime]:
    before = (
        av.buffer_before_minutes if b.buffer_before_minutes is None else b.buffer_before_minutes
    )
    after = av.buffer_after_minutes if b.buffer_after_minutes is None else b.buffer_after_minutes
    return blocked_range(b.start, b.end, timedelta(minutes=before), timedelta(minutes=after))


PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(scenarios(), st.sampled_from([VIDEO, IN_PERSON]))
def test_slot_invariants(
    scenario: tuple[Availability, datetime, datetime, datetime, list[BusyInterval]],
    ctype: ConsultationType,
) -> None:
    av, now, start, end, busy = scenario
    tz = av.time_zone
    length = timedelta(minutes=av.slot_minutes[ctype])
    before = timedelta(minutes=av.buffer_before_minutes)
    after = timedelta(minutes=av.buffer_after_minutes)
    last_day = now.astimezone(tz).date() + timedelta(days=av.horizon_days)
    slots = free_slots(av, ctype, start, end, now, busy)

    assert [s.start for s in slots] == sorted({s.start for s in slots})  # sorted and unique
    if av.step_minutes(ctype) >= av.slot_minutes[ctype]:
        assert all(a.end <= b.start for a, b in itertools.pairwise(slots))
    busy_blocked = [blocked(av, b) for b in busy]
    for slot in slots:
        assert slot.consultation_type is ctype
        assert slot.start.tzinfo is UTC
        assert slot.end - slot.start == length
        assert start <= slot.start < end
        assert slot.start >= now + timedelta(minutes=av.min_notice_minutes)
        day = slot.start.astimezone(tz).date()
        assert day <= last_day
        mine = blocked_range(slot.start, slot.end, before, after)
        assert not any(conflicts(mine, other) for other in busy_blocked)
        # Every instant of the slot reads, on the local clock, a time inside one
        # window of its date (sampled every 5 minutes and just before the end).
        probes = [slot.start + timedelta(minutes=m) for m in range(0, av.slot_minutes[ctype], 5)]
        probes.append(slot.end - timedelta(microseconds=1))
        local = [p.astimezone(tz) for p in probes]
        assert all(t.date() == day for t in local)
        minutes = [t.hour * 60 + t.minute for t in local]
        assert any(
            ctype in w.consultation_types
            and all(w.start_minutes <= m < w.end_minutes for m in minutes)
            for w in windows_of(av, day)
        )


@PROPERTY_SETTINGS
@given(scenarios(), st.sampled_from([VIDEO, IN_PERSON]), st.integers(0, 6 * 1440))
def test_busy_only_removes_conflicting_slots_and_ranges_partition(
    scenario: tuple[Availability, datetime, datetime, datetime, list[BusyInterval]],
    ctype: ConsultationType,
    cut_minutes: int,
) -> None:
    av, now, start, end, busy = scenario
    before = timedelta(minutes=av.buffer_before_minutes)
    after = timedelta(minutes=av.buffer_after_minutes)
    free = free_slots(av, ctype, start, end, now)
    busy_blocked = [blocked(av, b) for b in busy]
    expected = [
        s
        for s in free
        if not any(
            conflicts(blocked_range(s.start, s.end, before, after), other) for other in busy_blocked
        )
    ]
    assert free_slots(av, ctype, start, end, now, busy) == expected
    # Paging: two consecutive ranges give exactly the slots of their union.
    cut = min(start + timedelta(minutes=cut_minutes), end)
    assert (
        free_slots(av, ctype, start, cut, now, busy) + free_slots(av, ctype, cut, end, now, busy)
        == expected
    )
    # next_free_slot agrees with the earliest slot of an unbounded range.
    everything = free_slots(av, ctype, start, datetime.max.replace(tzinfo=UTC), now, busy)
    assert next_free_slot(av, ctype, now, busy, after=start) == (
        everything[0] if everything else None
    )
