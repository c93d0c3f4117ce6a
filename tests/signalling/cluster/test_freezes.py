"""How the browser scenarios read freezes and recoveries from what the pages
recorded: a freeze the SFU announced as a bandwidth pause against one it did
not, and when a tile shows video again after a move
(tests/signalling/cluster/cluster_world.py)."""

from __future__ import annotations

import math

import pytest

from tests.signalling.cluster.cluster_world import (
    announced,
    bandwidth_pauses,
    chromium_freezes,
    decoding_again,
    stall_for,
)

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


def test_a_freeze_chromium_counted_is_placed_where_it_began() -> None:
    """ci133: the page's freeze counter rose by one freeze of 5.71 s between
    its samples at 13.78 and 13.96 s. It ended by 13.96, so it began by
    8.25, inside the pause for bandwidth the page was told of."""

    def sample(at: float, freezes: int, seconds: float) -> list[object]:
        # RECORD's video row: [participant, ms, framesDecoded, ..., freezeCount
        # (7), totalFreezesDuration (8), ...].
        return ["p-d", WALL0 + at * 1000, 246, 258, 318, 11, 320, freezes, seconds, 1, 0, 0]

    records = {"patient": {"video": [sample(13.78, 4, 2.698), sample(13.96, 5, 8.408)]}}
    [freeze] = chromium_freezes(records, {"doctor": "p-d"}, WALL0, 3.0)
    assert freeze == {"from": "patient<-doctor", "at": 8.25, "seconds": 5.71, "freezes": 1}
    told = {"patient<-doctor": [(WALL0 + 8720, WALL0 + 12520)]}
    assert announced(freeze, told, WALL0)


def frames(start: float, end: float, every: float = 1 / 30) -> list[float]:
    """Stamps (ms after WALL0) of frames shown from ``start`` to ``end`` s."""
    n = round((end - start) / every)
    return [WALL0 + (start + i * every) * 1000 for i in range(n + 1)]


def test_a_new_track_shown_at_once_counts_as_back() -> None:
    """The new connection's first frame 0.3 s after the old one's last (no
    stall): back at the new track's first frame, once it kept coming."""
    shown = frames(-2.0, 0.1) + frames(0.4, 2.0)
    tracks = [[WALL0 - 2000, "old"], [WALL0 + 400, "new"]]
    assert decoding_again(shown, WALL0, tracks) == 0.4
    # Without the track's change only a stall tells: there was none.
    assert decoding_again(shown, WALL0) is None


def test_after_a_stall_without_a_new_track() -> None:
    shown = frames(-2.0, 0.1) + frames(1.2, 2.5)
    assert decoding_again(shown, WALL0, [[WALL0 - 2000, "same"]]) == 1.2


def test_a_new_track_that_stops_again_is_not_back_until_it_flows() -> None:
    tracks = [[WALL0 - 2000, "old"], [WALL0 + 500, "new"]]
    shown = frames(-2.0, 0.0) + frames(0.5, 0.7) + frames(1.5, 2.6)
    assert decoding_again(shown, WALL0, tracks) == 1.5
    assert decoding_again(frames(-2.0, 0.0) + frames(0.5, 1.2), WALL0, tracks) is None


def uneven(start: float, end: float) -> list[float]:
    """Stamps (ms after WALL0) of frames shown 0.2 and 0.6 s apart in turn
    (a starved decoder's 2.5 frames a second) from ``start`` to ``end`` s."""
    out, at, step = [], start, 0.2
    while at <= end + 1e-9:
        out.append(WALL0 + at * 1000)
        at += step
        step = 0.8 - step
    return out


def test_a_tile_slow_before_the_kill_is_back_at_its_own_pace() -> None:
    """A starved page showed a peer at 2.5 frames a second, unevenly, before
    the kill (pages decode 3 to 6 a second on CI, with gaps over 0.5 s):
    the new track at that pace again is back at its first frame."""
    tracks = [[WALL0 - 2000, "old"], [WALL0 + 4000, "new"]]
    shown = uneven(-2.0, -0.1) + uneven(4.0, 6.5)
    stall = stall_for(shown, WALL0)
    assert stall == pytest.approx(1.0)
    assert decoding_again(shown, WALL0, tracks) is None
    assert decoding_again(shown, WALL0, tracks, stall) == 4.0
    # Stopping again for longer than its own pace allows is still a stall.
    stopped = uneven(-2.0, -0.1) + uneven(4.0, 4.3) + uneven(6.0, 7.7)
    assert decoding_again(stopped, WALL0, tracks, stall) == 6.0
    # A tile at a call's pace keeps STALL_S.
    assert stall_for(frames(-2.0, 0.0), WALL0) == 0.5
