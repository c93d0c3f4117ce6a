"""How the browser scenarios tell a freeze the SFU announced as a bandwidth
pause from one it did not (tests/signalling/cluster_world.py)."""

from __future__ import annotations

import math

from tests.signalling.cluster_world import announced, bandwidth_pauses

WALL0 = 1_000_000.0  # ms since the epoch
IDS = {"doctor": "p-d", "patient": "p-p"}
OWNERS = {"patient": {"t-dv": "p-d", "t-da": "p-d"}, "doctor": {"t-pv": "p-p"}}


def frame(at: float, who: str) -> list[object]:
    """A PROBE row: [ms, type, detail, ref, code]."""
    return [WALL0 + at * 1000, "track_paused", who, None, None]


READ = {
    "patient": {
        "frames": [
            frame(1.0, "t-dv:true:bandwidth"),
            frame(4.5, "t-dv:false:bandwidth"),
            frame(6.0, "t-dv:true:hidden"),  # not bandwidth: not a span
            frame(7.0, "t-dv:false:hidden"),
            frame(9.0, "t-dv:true:bandwidth"),  # never resumed
        ]
    },
    "doctor": {"frames": [frame(2.0, "t-unknown:true:bandwidth")]},  # not a peer's track
}


def test_spans_are_the_bandwidth_pauses_each_page_was_told_of() -> None:
    pauses = bandwidth_pauses(READ, OWNERS, IDS)
    assert pauses == {"patient<-doctor": [(WALL0 + 1000, WALL0 + 4500), (WALL0 + 9000, math.inf)]}


def test_a_freeze_is_announced_only_where_it_overlaps_such_a_span() -> None:
    pauses = bandwidth_pauses(READ, OWNERS, IDS)

    def stall(page: str, at: float, seconds: float) -> dict[str, object]:
        return {"from": page, "at": at, "seconds": seconds}

    assert announced(stall("patient<-doctor", 1.2, 3.6), pauses, WALL0)
    assert announced(stall("patient<-doctor", 0.5, 0.6), pauses, WALL0)  # ends inside
    assert not announced(stall("patient<-doctor", 5.0, 3.5), pauses, WALL0)  # hidden, between
    assert announced(stall("patient<-doctor", 10.0, 3.0), pauses, WALL0)  # still paused
    assert not announced(stall("doctor<-patient", 1.2, 3.6), pauses, WALL0)
