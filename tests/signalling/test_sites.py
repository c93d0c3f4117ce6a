"""Which relays a room spread over regions needs, and where a region without
workers goes (signalling.sites.plan, signalling.placement's distances)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from signalling.placement import nearest, parse_distances
from signalling.sites import plan


def test_each_track_crosses_once_per_receiving_site() -> None:
    publisher_of = {"t-pk-cam": "patient", "t-pk-mic": "patient", "t-ae-cam": "doctor"}
    region_of = {"patient": "pk", "doctor": "ae", "nurse": "ae", "interp": "sa"}
    wants = {
        "patient": ["t-ae-cam"],
        "doctor": ["t-pk-cam", "t-pk-mic"],
        "nurse": ["t-pk-cam", "t-pk-mic", "t-ae-cam"],
        "interp": ["t-pk-mic"],
    }
    assert plan(publisher_of, wants, region_of) == {
        ("ae", "pk"): ("t-ae-cam",),
        ("pk", "ae"): ("t-pk-cam", "t-pk-mic"),
        ("pk", "sa"): ("t-pk-mic",),
    }


def test_one_site_needs_no_relay_and_unknown_tracks_are_ignored() -> None:
    region_of = {"a": "pk", "b": "pk"}
    assert plan({"t1": "a"}, {"b": ["t1", "gone"]}, region_of) == {}


@given(
    st.dictionaries(st.sampled_from("abcdef"), st.sampled_from(["pk", "ae", "sa"]), min_size=1),
    st.data(),
)
def test_plan_covers_exactly_the_remote_wants(
    region_of: dict[str, str], data: st.DataObject
) -> None:
    people = sorted(region_of)
    tracks = {f"t{i}": data.draw(st.sampled_from(people)) for i in range(4)}
    pick = st.lists(st.sampled_from(sorted(tracks)), unique=True)
    wants = {pid: data.draw(pick) for pid in people}
    relays = plan(tracks, wants, region_of)
    expected = {
        (region_of[tracks[t]], region_of[pid], t)
        for pid, ts in wants.items()
        for t in ts
        if region_of[tracks[t]] != region_of[pid]
    }
    got = {(src, dst, t) for (src, dst), ts in relays.items() for t in ts}
    assert got == expected
    assert all(list(ts) == sorted(set(ts)) for ts in relays.values())


def test_region_distances_parse_and_rank() -> None:
    distances = parse_distances("pk-ae=40, pk-sa=60; ae-sa=30")
    assert distances[frozenset({"ae", "pk"})] == 40
    assert nearest("pk", {"sa", "ae", "qa"}, distances) == ["ae", "sa", "qa"]
    assert nearest("sa", {"pk", "ae", "sa"}, distances) == ["sa", "ae", "pk"]
    assert parse_distances("") == {}


@pytest.mark.parametrize("bad", ["pk=40", "pk-ae", "pk-ae=x", "-ae=3", "pk-ae=-1"])
def test_malformed_distances_are_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="A-B=N"):
        parse_distances(bad)
