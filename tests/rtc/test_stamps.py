"""A kernel receive stamp on the loop's clock, and its bounds."""

from __future__ import annotations

import pytest

from rtc.stamps import MAX_AGE, TIMESPEC, on_loop_clock

# The wall clock 1.8e9 s ahead of a loop clock at 1000 s.
LEAD = 1_800_000_000.0


def stamp(wall: float) -> bytes:
    seconds = int(wall)
    return TIMESPEC.pack(seconds, round((wall - seconds) * 1e9))


def test_a_stamp_becomes_the_loop_time_it_was_taken_at() -> None:
    now = 1000.0
    assert on_loop_clock(stamp(LEAD + 999.9873), now, LEAD) == pytest.approx(999.9873, abs=1e-6)
    # A bytearray from an ioctl, a control message's bytes: either.
    assert on_loop_clock(bytearray(stamp(LEAD + 1000.0)), now, LEAD) == pytest.approx(now)


@pytest.mark.parametrize(
    ("wall", "expected"),
    [(1000.5, 1000.0), (1000.0 - MAX_AGE - 5, 1000.0 - MAX_AGE)],
    ids=["wall-clock-stepped-back", "wall-clock-stepped-forward"],
)
def test_a_stamp_past_a_step_of_the_wall_clock_stays_within_bounds(
    wall: float, expected: float
) -> None:
    assert on_loop_clock(stamp(LEAD + wall), 1000.0, LEAD) == pytest.approx(expected)
