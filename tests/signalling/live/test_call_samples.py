"""The call report's parsers without I/O: a page's stats body
(``signalling.live.report.page_sample``) and the worker's ``call_sample``
event over the bus (``sfu.control.messages``)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.control.messages import CallSample, event_from_dict, event_to_dict
from signalling.live.report import page_sample
from wadud.errors import BadRequest

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(JSON)
def test_any_json_is_a_sample_or_a_bad_request(body: Any) -> None:
    try:
        pid, data = page_sample(body)
    except BadRequest:
        return
    assert isinstance(pid, str) and isinstance(data, dict)


@given(
    st.dictionaries(
        st.sampled_from(["rtt", "loss", "relay", "candidate", "freeze_count", "unknown"]),
        JSON,
        max_size=6,
    )
)
def test_only_known_fields_of_the_right_type_are_kept(stats: dict[str, Any]) -> None:
    try:
        _, data = page_sample({"participant_id": "p1", "stats": stats})
    except BadRequest:
        return
    assert "unknown" not in data
    if "relay" in data:
        assert isinstance(data["relay"], bool)
    if "rtt" in data:
        assert isinstance(data["rtt"], int | float) and not isinstance(data["rtt"], bool)


def test_numbers_must_be_finite() -> None:
    # json.loads takes NaN and Infinity; PostgreSQL's jsonb does not.
    import json

    for text in ("NaN", "Infinity", "-Infinity"):
        body = json.loads(f'{{"participant_id": "p", "stats": {{"rtt": {text}}}}}')
        with pytest.raises(BadRequest):
            page_sample(body)


def test_a_participant_id_is_required() -> None:
    with pytest.raises(BadRequest):
        page_sample({"stats": {}})
    with pytest.raises(BadRequest):
        page_sample({"participant_id": "x" * 101})


@given(st.lists(JSON) | st.text() | st.integers())
def test_stats_that_are_not_an_object_are_a_bad_request(stats: Any) -> None:
    if not stats:
        return
    with pytest.raises(BadRequest):
        page_sample({"participant_id": "p1", "stats": stats})


@given(
    loss=st.floats(0, 1),
    rtt=st.none() | st.floats(0, 10),
    layers=st.dictionaries(st.text(min_size=1), st.none() | st.sampled_from(["q", "h", "f"])),
    quality=st.sampled_from(["excellent", "good", "poor", "lost"]),
)
def test_a_call_sample_crosses_the_bus_unchanged(
    loss: float, rtt: float | None, layers: dict[str, str | None], quality: Any
) -> None:
    event = CallSample("booking-x", "p1", loss, rtt, None, 1.0, 2.0, 3.0, layers, quality)
    assert event_from_dict(event_to_dict(event)) == event
