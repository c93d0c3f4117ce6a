"""Connection quality levels (sfu.feedback.quality) and their hysteresis."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sfu.feedback.quality import RISE, Quality, QualityTracker, Sample, classify


def test_levels() -> None:
    assert classify(Sample(loss=0.0, rtt=0.05, jitter=0.005)) is Quality.EXCELLENT
    assert classify(Sample(loss=0.03, rtt=0.1)) is Quality.GOOD
    assert classify(Sample(loss=0.0, rtt=0.4)) is Quality.GOOD
    assert classify(Sample(loss=0.10001)) is Quality.POOR
    assert classify(Sample(loss=0.07)) is Quality.POOR
    assert classify(Sample(rtt=1.2)) is Quality.POOR
    assert classify(Sample(available=300_000, wanted=1_700_000)) is Quality.GOOD
    assert classify(Sample(silent=6.0)) is Quality.LOST


def test_drops_after_two_bad_looks_and_rises_after_holding() -> None:
    t = QualityTracker()
    bad = Sample(loss=0.2)
    good = Sample(loss=0.0, rtt=0.05)
    assert t.update(bad, 0.0) is None
    assert t.update(bad, 1.0) is Quality.POOR
    assert t.update(good, 2.0) is None
    assert t.update(good, 2.0 + RISE - 0.1) is None
    assert t.update(good, 2.0 + RISE) is Quality.EXCELLENT
    # One bad look among good ones changes nothing.
    assert t.update(bad, 10.0) is None
    assert t.update(good, 11.0) is None
    assert t.level is Quality.EXCELLENT


def test_lost_at_once_and_back_at_once() -> None:
    t = QualityTracker()
    assert t.update(Sample(silent=9.0), 0.0) is Quality.LOST
    assert t.update(Sample(), 1.0) is Quality.EXCELLENT


@given(st.lists(st.tuples(st.floats(0, 0.5), st.floats(0, 2)), max_size=50))
def test_reports_only_changes(samples: list[tuple[float, float]]) -> None:
    t = QualityTracker()
    shown = t.level
    for i, (loss, rtt) in enumerate(samples):
        change = t.update(Sample(loss=loss, rtt=rtt), float(i))
        if change is not None:
            assert change is not shown
            shown = change
        assert t.level is shown
