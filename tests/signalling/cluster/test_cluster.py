"""Issue 9's must-show: calls on a cluster of real processes, and what
happens to them when a media node or an API replica dies or drains.

One topology serves the whole module, inside a loopback-only network
namespace: Redis, two ``wadud api`` replicas behind a load balancer with two
fronts, and two ``wadud media`` nodes with two workers each. The module's
fixture starts tests/signalling/cluster/cluster_driver.py in that namespace; the
driver starts the topology and then runs one scenario per test, keeping the
three browser pages of the call from one scenario to the next
(tests/signalling/cluster/cluster_world.py).

Run by hand (as root, from the repository) to see the measured gaps:

    .venv/bin/pytest -s tests/signalling/cluster/test_cluster.py
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser import (
    assert_flowing,
)
from tests.signalling.cluster.cluster_driver import Driver, started
from tests.signalling.cluster.cluster_world import PEOPLE


@pytest.fixture(scope="module")
def cluster(pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    """The topology in its namespace, for every test of the module."""
    with started(pg_cluster, tmp_path_factory) as driver:
        yield driver


@pytest.mark.timeout(360)
def test_three_pages_through_two_replicas(cluster: Driver) -> None:
    """Doctor through front A, patient through front B, interpreter through
    front A: every page decodes the others' video and receives their audio."""
    result = cluster.run("call", budget=150)
    pairs = result["pairs"]
    names = [p[0] for p in PEOPLE]
    assert {(p["to"], p["frm"]) for p in pairs} == {(a, b) for a in names for b in names if a != b}
    assert_flowing(pairs)
    # Each page's signalling went where it was sent: A, B, A.
    assert result["replicas"] == {"doctor": "A", "patient": "B", "interpreter": "A"}
    assert len(result["placed_on"]) == 1, result["placed_on"]


def _why(report: dict[str, Any], pairs: list[str]) -> str:
    """What the pages of ``pairs`` ("page<-peer") that decode the peer no
    more, or only late, say of it, first and whole (as a string, which
    pytest does not cut short): each page's receivers (RECEIVERS:
    participant, paused, packets, frames received and decoded, keyframes,
    PLIs, NACKs, width), its connections' times and the frames it was sent
    since the kill (a ``track_paused`` among them); per pair, what the page
    received and the peer sent second by second (``slow``); and what the
    namespace's sockets dropped unread meanwhile (a starved reader)."""
    pages = sorted({pair.split("<-")[0] for pair in pairs})
    why = {
        name: {
            "receivers": report["receivers"].get(name),
            "connected": report["phases"]["connected"].get(name),
            "frames": report["frames_after_kill"].get(name),
        }
        for name in pages
    }
    return json.dumps(
        {
            "pairs": pairs,
            "back": report["back"],
            "udp_receive_drops": report["udp_receive_drops"],
            **why,
            "slow": {pair: report["slow"].get(pair) for pair in pairs},
        },
        separators=(",", ":"),
    )


@pytest.mark.timeout(240)
def test_media_node_killed(cluster: Driver) -> None:
    """``kill -9`` of the media node that hosts the room: every page decodes
    the others again within 10 s, without reloading."""
    result = cluster.run("media_kill", budget=150)
    report = result["report"]
    print(f"\nMEDIA NODE KILL -9: all pages decoding again after {report['gap']} s")
    assert report["missing"] == [], _why(report, report["missing"])
    late = [pair for pair, at in report["back"].items() if at > 10.0]
    assert late == [], _why(report, late)
    assert report["same_pages"], report
    assert report["node_group_gone"] and report["udp_ports_free"], report
    assert report["moved_to"] and report["moved_to"][0] not in report["killed_workers"], report
    assert_flowing(result["pairs"])


@pytest.mark.timeout(240)
def test_api_replica_killed(cluster: Driver) -> None:
    """``kill -9`` of replica A: the doctor's and the interpreter's pages are
    back within 10 s through B (front A fails over), with the same
    participant ids; the patient on B sees nothing happen."""
    result = cluster.run("api_kill", budget=150)
    report = result["report"]
    back = report["back"]
    print(f"\nAPI REPLICA KILL -9: pages back after {json.dumps(back)} s")
    assert set(back) == {"doctor", "interpreter"}, report
    assert max(back.values()) <= 10.0, report
    assert report["same_ids"] == {"doctor": True, "interpreter": True}, report
    assert report["failover_connections"] > 0, report
    assert report["same_pages"], report
    # The patient, on B all along: no remote video froze (FREEZE_S). Each
    # freeze and what both pages recorded around it first: the report after
    # them is long, and a rerun's summary keeps only its start.
    assert report["patient_stalls"] == [], (
        f"{report['patient_stalls']}; around each:"
        f" {json.dumps(report['stall_detail'], separators=(',', ':'))}; {report}"
    )
    assert report["patient_disturbed"] == [], report
    assert_flowing(result["pairs"])


@pytest.mark.timeout(240)
def test_media_node_drained(cluster: Driver) -> None:
    """SIGTERM on the media node hosting the room: its participants move to
    the other node, no page shows a failure, and the node exits 0."""
    result = cluster.run("media_drain", budget=150)
    report = result["report"]
    print(
        f"\nMEDIA NODE SIGTERM: pages moved after {report['moved_after']} s, longest stall"
        f" {max(report['longest_stall'].values())} s, exit {report['exit']}"
        f" after {report['exited_after']} s"
    )
    assert report["moved_to"] and report["moved_to"][0] not in report["drained_workers"], report
    assert report["all_pages_moved"], report
    assert report["failures_shown"] == {}, report
    assert report["same_pages"], report
    assert report["exit"] == 0, report
    assert_flowing(result["pairs"])


@pytest.mark.timeout(180)
def test_removals_hold_across_replicas(cluster: Driver) -> None:
    """A patient the doctor (on A) removed, or denied, comes back with the
    same link through B: the waiting room, not the call."""
    report = cluster.run("removals", budget=60)["report"]
    assert report["removed_first_join"] == "joined", report
    assert report["removed_got"] == "removed", report
    assert report["removed_again"] == "waiting", report
    assert report["doctor_sees_removed_waiting"], report
    assert report["denied_first_join"] == "waiting", report
    assert report["denied_got"] == "denied", report
    assert report["denied_again"] == "waiting", report
    assert report["admitted_after"] == "joined", report


@pytest.mark.timeout(180)
def test_fifty_rooms_spread_over_the_workers(cluster: Driver) -> None:
    """50 rooms, each opened by two doctors joining at once, one through
    each replica: every room on exactly one worker, none with more than
    twice its share."""
    report = cluster.run("fifty", budget=90)["report"]
    print(f"\nFIFTY ROOMS: per worker {report['per_worker']}")
    assert report["refused"] == [], report
    assert report["unplaced"] == [], report
    assert report["placed_twice"] == {}, report
    assert len(report["per_worker"]) == 4, report
    assert max(report["per_worker"].values()) <= 2 * 50 / 4, report
    assert report["split_rooms"] == [], report
