"""What a media worker holds: at rest, and per subscribed video track.

Issue 41 asks for a ``wadud media`` worker of at most 45 MB resident at
rest and at most 128 KB more per subscribed video track with one room of one
publisher and N = 40 subscribers. This starts a ``wadud media --workers 1``
node (servers.py's :class:`MediaNode`, with its Redis) and reads its worker's
``/proc/<pid>/smaps_rollup`` (RSS, PSS, anonymous) at rest, a few seconds
after it registered; then it opens one ``1xN`` room over Redis, as a
``wadud api`` replica does, with the same synthetic clients as run.py
(benchmarks/sfu/load.py: ICE, DTLS-SRTP, VP8 at video rate), and reads the
worker again in the middle of the measured window. Per subscribed video
track is (RSS with the room - RSS at rest) / N: the publisher's own cost is
counted in it, so it errs high.

It also lists the packages whose native modules the worker mapped, so an
import that creeps back (aiohttp, asyncpg) shows here.

    .venv/bin/python -m benchmarks.sfu.memory [--subscribers 40] [--seconds 6] [--json PATH]

``WADUD_NATIVE=0`` measures the worker with the pure-Python loop.
``--serve`` measures ``wadud serve`` the same way (one process: signalling,
the embedded PostgreSQL's client, the media worker; rooms over ``/ws``),
whose bound is twice Janus's RSS at N = 20 (``--subscribers 20``).

Results go to ``benchmarks/results/sfu-memory.json`` (``sfu-memory-serve.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from benchmarks.common import ROOT, command_line, write_results
from benchmarks.sfu.bench import Bench
from benchmarks.sfu.janus import media_node
from benchmarks.sfu.report import code_identity
from benchmarks.sfu.scenarios import Scenario
from benchmarks.sfu.servers import MediaNode, Server, media_control

#: The issue's bounds.
REST_LIMIT_MB = 45.0
PER_TRACK_LIMIT_KB = 128.0


def rollup(pid: int) -> dict[str, int]:
    """The kB figures of ``/proc/<pid>/smaps_rollup`` (Rss, Pss, Anonymous, ...)."""
    found = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                found[parts[0].rstrip(":")] = int(parts[1])
    return found


def _figures(pid: int) -> dict[str, int]:
    r = rollup(pid)
    return {"rss_kb": r["Rss"], "pss_kb": r["Pss"], "anonymous_kb": r["Anonymous"]}


def bench_args(args: argparse.Namespace) -> argparse.Namespace:
    """What Bench reads of run.py's command line: one room, no probes."""
    return argparse.Namespace(
        pps=args.pps,
        fps=30.0,
        warmup=2.0,
        seconds=args.seconds,
        rooms=1,
        quiet_wait=0.0,
        simulcast=False,
        quick=False,
        no_latency=True,
        repeat=1,
        out_rate=0,
        gc_log=False,
        media=not args.serve,
        profile=False,
        rpc_calls=0,
    )


async def main_async(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    # MediaNode hands the node no WADUD_* of ours: janus.py's media_node adds WADUD_NATIVE.
    native = os.environ.get("WADUD_NATIVE", "1") != "0"
    node = Server(work, args.subscribers + 1) if args.serve else media_node(work, native=native)
    out: dict[str, Any] = {"server": "wadud serve" if args.serve else "wadud media --workers 1"}
    try:
        async with contextlib.AsyncExitStack() as stack:
            http = await stack.enter_async_context(aiohttp.ClientSession())
            await node.ready(http)
            pid = node.worker_pid()
            await asyncio.sleep(args.settle)
            rest = out["rest"] = _figures(pid)
            out["native_packages"] = native_packages(pid)
            print(f"{out['server']} pid {pid} at rest: {rest}", flush=True)
            bench = Bench(bench_args(args), node, http)
            stack.callback(bench.load.stop)
            if isinstance(node, MediaNode):
                bench.media = await media_control(node, stack)
            seen: list[dict[str, int]] = []

            async def sample(seconds: float) -> None:
                await asyncio.sleep(seconds / 2)
                seen.append(_figures(pid))
                await asyncio.sleep(seconds / 2)

            n = args.subscribers
            result = await bench.run_scenario(
                Scenario(f"1x{n}", 1, n), out_rate=0, purpose="memory", probe_rooms=0,
                on_measure=sample,
            )  # fmt: skip
            room = out["room"] = seen[0]
            per_track = (room["rss_kb"] - rest["rss_kb"]) / n
            out["per_video_track_kb"] = round(per_track, 1)
            out["loss_pct"] = result.loss_pct
            out["errors"] = result.errors
    finally:
        node.stop()
    out["rest_mb"] = round(out["rest"]["rss_kb"] / 1024, 1)
    if not args.serve:
        out["within"] = {
            "rest": out["rest_mb"] <= REST_LIMIT_MB,
            "per_video_track": out.get("per_video_track_kb", 1e9) <= PER_TRACK_LIMIT_KB,
        }
    return out


def native_packages(pid: int) -> list[str]:
    """Packages whose native modules the worker mapped (``/proc/<pid>/maps``):
    aiohttp's or asyncpg's parsers here mean the worker imported them."""
    found = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            path = line.split()[-1]
            if ".so" not in path:
                continue
            if "site-packages/" in path:
                found.add(path.split("site-packages/")[1].split("/")[0])
            elif path.startswith(str(ROOT) + "/"):
                found.add(path[len(str(ROOT)) + 1 :].split("/")[0])
    return sorted(name for name in found if not name.endswith(".libs"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=40, help="N of the 1xN room")
    parser.add_argument("--pps", type=float, default=180, help="packets/s of the publisher")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured window, seconds")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds at rest before reading")
    parser.add_argument("--serve", action="store_true", help="wadud serve, not a media node")
    parser.add_argument("--json", help="where to write (default benchmarks/results/...)")
    args = parser.parse_args()
    if args.json is None:
        name = "sfu-memory-serve.json" if args.serve else "sfu-memory.json"
        args.json = str(ROOT / "benchmarks" / "results" / name)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="wadud-sfu-memory-") as tmp:
        out = uvloop.run(main_async(args, Path(tmp)))
    print(f"{out['server']} at rest: {out['rest_mb']} MB RSS (a worker's limit {REST_LIMIT_MB:g})")
    if "room" in out:
        room_mb = round(out["room"]["rss_kb"] / 1024, 1)
        print(f"with one 1x{args.subscribers} room: {room_mb} MB RSS")
    print(
        f"per subscribed video track at N={args.subscribers}:"
        f" {out.get('per_video_track_kb')} KB (limit {PER_TRACK_LIMIT_KB:g}),"
        f" loss {out.get('loss_pct')} %"
    )
    print(f"native packages mapped: {' '.join(out['native_packages'])}")
    out.update(
        {
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "command": command_line("benchmarks.sfu.memory"),
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 1),
            "wadud_native": os.environ.get("WADUD_NATIVE", "1"),
            "code": code_identity(),
        }
    )
    write_results(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
