"""The outage core (booking.payments.reach): one outage per run of failures,
retries that back off and never beyond the cap, and the first answer ends it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from booking.payments.reach import Reach


def test_an_outage_backs_off_and_ends_with_an_answer() -> None:
    reach = Reach(first=5.0, cap=60.0)
    assert reach.may_ask("easypaisa", 0.0) and reach.retry_in(0.0) is None
    assert reach.failed("easypaisa", 100.0)  # the outage starts: log it
    assert not reach.may_ask("easypaisa", 104.9)
    assert reach.may_ask("jazzcash", 101.0)  # other gateways are asked as usual
    waits = []
    now = 105.0
    for _ in range(6):
        assert reach.may_ask("easypaisa", now)
        assert not reach.failed("easypaisa", now)  # the same outage: no new log
        wait = reach.retry_in(now)
        assert wait is not None
        waits.append(wait)
        now += wait
    assert waits == [10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    outage = reach.answered("easypaisa")
    assert outage is not None and (outage.since, outage.failures) == (100.0, 7)
    assert reach.answered("easypaisa") is None and reach.down() == {}
    assert reach.retry_in(now) is None


@given(
    first=st.floats(0.01, 100),
    factor=st.floats(1, 100),
    events=st.lists(st.tuples(st.sampled_from("ab"), st.booleans(), st.floats(0, 1000))),
)
def test_retries_are_never_beyond_the_cap(
    first: float, factor: float, events: list[tuple[str, bool, float]]
) -> None:
    cap = first * factor
    reach = Reach(first=first, cap=cap)
    now = 0.0
    for gateway, ok, step in events:
        now += step
        if ok:
            reach.answered(gateway)
        else:
            reach.failed(gateway, now)
        wait = reach.retry_in(now)
        assert (wait is None) == (reach.down() == {})
        assert wait is None or 0 <= wait <= cap + 1e-9
        for g, outage in reach.down().items():
            assert reach.may_ask(g, outage.retry_at)


def test_first_and_cap_are_checked() -> None:
    with pytest.raises(ValueError, match="first"):
        Reach(first=10, cap=5)
