"""The wall clock's lead on the monotonic clock, against a process held
between its reads (wadud.clocks)."""

from __future__ import annotations

import time

import pytest

from wadud import clocks
from wadud.clocks import KEEP, WallLead, read_lead


def test_the_lead_is_the_two_clocks_difference() -> None:
    plain = time.time() - time.monotonic()
    assert read_lead() == pytest.approx(plain, abs=0.002)


def test_a_hold_between_the_reads_does_not_move_the_lead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read plainly, a process held 50 ms after reading the wall clock (a
    busy machine's scheduler) would put the lead 50 ms off; held on the
    first try only, the next pair is tight and taken."""
    true = read_lead()
    wall = time.time
    held = [0.05]

    def held_after_wall() -> float:
        now = wall()
        if held:
            time.sleep(held.pop())
        return now

    monkeypatch.setattr(clocks.time, "time", held_after_wall)
    assert read_lead() == pytest.approx(true, abs=0.002)
    assert not held


def test_a_lead_is_kept_for_a_while_then_read_again() -> None:
    lead = WallLead()
    first = lead(100.0)
    assert lead(100.0 + KEEP / 2) == first
    # The caller's clock going back (another loop's, a restart) reads afresh too.
    again = lead(100.0 + KEEP)
    assert again == pytest.approx(first, abs=0.002)
    assert lead(50.0) == pytest.approx(first, abs=0.002)
