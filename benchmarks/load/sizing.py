"""Sizing: how many subscribers a room, and one media worker, hold, by ``wadud load --find-max``.

The figures of docs/operations.md's media sizing table. Each search runs
``wadud load --find-max`` as a user would, by URL, pinned to the first core,
against a deployment pinned to the last core (every process of it: this
script pins itself there before starting them, and they inherit it):

* ``serve``: ``wadud serve`` on its embedded defaults, one process;
* ``media``: one ``wadud api`` and one ``wadud media --workers 1`` on a
  PostgreSQL and a Redis of the run's own.

Two shapes: ``room`` (one room, one publisher, subscribers added in steps)
and ``worker`` (``--worker-rooms`` rooms at once, subscribers per room added
in steps: what the worker holds is the rooms times what each held). Each step
holds for ``--duration`` seconds; a step past p95 one-way latency of
``--max-latency`` ms or loss of ``--max-loss`` % ends the search. Rooms are
let grow past the 16 participants a call allows by default
(``WADUD_CALL_MAX_PARTICIPANTS``). Each step also says the generator's own
CPU and the loss it caused, so a limit the generator hit is not read as the
server's.

Figures, not assertions: prints each search's steps and writes JSON (``--json``,
default ``benchmarks/results/load-sizing.json``).

    .venv/bin/python -m benchmarks.load.sizing [--deployments serve,media] [--shapes room,worker]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, command_line, commit_of, free_port, own_cluster, write_results
from benchmarks.load.run import WADUD, clean_env, cores, pinned, serving

SECRET = "load-sizing-secret-" + "s" * 40


@contextlib.contextmanager
def media_deployment(work: Path, **env: str) -> Iterator[tuple[str, list[str], dict[str, str]]]:
    """One ``wadud api`` and one ``wadud media --workers 1``: (URL, metrics
    URLs, load key)."""
    metrics_port = free_port()
    with own_cluster(work, SECRET, extra_env=env) as cluster:
        api = cluster.add_api("A", env={"WADUD_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"})
        node = cluster.add_media("m1", workers=1)
        try:
            asyncio.run(cluster.start(within=120))
            made = subprocess.run(
                [WADUD, "key", "create", "--name", "sizing", "--scope", "load"],
                env=clean_env(WADUD_DATABASE_URL=cluster.database_url, WADUD_SECRET_KEY=SECRET),
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            key = dict(line.split("=", 1) for line in made.stdout.split())
            metrics = [f"http://127.0.0.1:{metrics_port}/metrics", f"{node.url}/metrics"]
            yield api.url, metrics, key
        finally:
            asyncio.run(cluster.close())


def search(
    url: str,
    metrics: list[str],
    key: dict[str, str],
    rooms: int,
    first: int,
    step: int,
    ceiling: int,
    args: argparse.Namespace,
    out: Path,
    core: int | None,
) -> dict[str, Any]:
    argv = [
        WADUD, "load", "--url", url, "--find-max", "--rooms", str(rooms),
        "--subscribers", str(first), "--step", str(step), "--max-subscribers", str(ceiling),
        "--duration", str(args.duration), "--ramp", str(args.ramp), "--seed", "41",
        "--max-latency", str(args.max_latency), "--max-loss", str(args.max_loss),
        "--json", str(out), "--quiet",
        *[x for m in metrics for x in ("--metrics-url", m)],
    ]  # fmt: skip
    done = subprocess.run(
        pinned(argv, core), env=clean_env(**key), cwd=ROOT, capture_output=True, text=True,
        timeout=3600, check=False,
    )  # fmt: skip
    if not out.exists():
        raise SystemExit(f"wadud load exited {done.returncode}: {done.stderr[-2000:]}")
    found: dict[str, Any] = json.loads(out.read_text())["find_max"]
    steps = []
    for st in found["steps"]:
        s = st["summary"]
        gen, server = s.get("generator") or {}, s.get("server") or {}
        steps.append(
            {
                "subscribers_per_room": st["subscribers_per_room"],
                "subscribers": s["subscribers"],
                "latency_p95_ms": (s["latency_ms"] or {}).get("p95"),
                "loss_pct": s["loss_pct"],
                "generator_cpu_pct": gen.get("cpu_pct"),
                "generator_loss_pct": gen.get("drop_pct"),
                "server_cpu_pct": round(
                    sum(p["cpu_pct"] for p in server.get("processes", {}).values()), 1
                ),
                "server_us_per_forwarded_packet": server.get("us_per_forwarded_packet"),
                "errors": s["errors"],
                "crossed": st["crossed"],
            }
        )
    return {"room_held": found["room_held"], "stopped": found["stopped"], "steps": steps}


def report(deployment: str, shape: str, found: dict[str, Any]) -> None:
    print(
        f"\n{deployment}, {shape} ({found['rooms']} room(s)): held {found['held']} subscribers"
        f" ({found['room_held']} a room); stopped: {found['stopped']}"
    )
    print(
        f"{'per room':>9}{'receiving':>10}{'p95 ms':>9}{'loss %':>8}{'gen %cpu':>9}"
        f"{'srv %cpu':>9}{'srv µs/pkt':>11}  crossed"
    )
    for s in found["steps"]:
        cells = [
            f"{s['subscribers_per_room']:>9}",
            f"{s['subscribers']:>10}",
            f"{s['latency_p95_ms'] or '-':>9}",
            f"{s['loss_pct']:>8}",
            f"{s['generator_cpu_pct'] or '-':>9}",
            f"{s['server_cpu_pct']:>9}",
            f"{s['server_us_per_forwarded_packet'] or '-':>11}",
        ]
        print("".join(cells) + f"  {s['crossed'] or ''}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deployments", default="serve,media")
    p.add_argument("--shapes", default="room,worker")
    p.add_argument("--room-step", type=int, default=50, help="subscribers added per step, one room")
    p.add_argument("--room-max", type=int, default=800)
    p.add_argument("--worker-rooms", type=int, default=10)
    p.add_argument("--worker-step", type=int, default=10, help="per room, per step")
    p.add_argument("--worker-max", type=int, default=100, help="per room")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--ramp", type=float, default=100.0)
    p.add_argument("--max-latency", type=float, default=150.0)
    p.add_argument("--max-loss", type=float, default=2.0)
    p.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "load-sizing.json"
    )
    args = p.parse_args()
    gen_core, server_core = cores()
    if server_core is not None:
        os.sched_setaffinity(0, {server_core})  # what this starts runs there
    env = {"WADUD_CALL_MAX_PARTICIPANTS": str(max(args.room_max, args.worker_max) + 10)}
    shapes = {
        "room": (1, args.room_step, args.room_step, args.room_max),
        "worker": (args.worker_rooms, args.worker_step, args.worker_step, args.worker_max),
    }
    results: dict[str, Any] = {}
    for deployment in args.deployments.split(","):
        with tempfile.TemporaryDirectory(prefix=f"wadud-sizing-{deployment}-") as tmp:
            work = Path(tmp)
            made = (
                serving(work, None, **env)
                if deployment == "serve"
                else media_deployment(work, **env)
            )
            with made as (url, metrics, key):
                for shape in args.shapes.split(","):
                    rooms, first, step, ceiling = shapes[shape]
                    found = search(url, metrics, key, rooms, first, step, ceiling, args,
                                   work / f"{shape}.json", gen_core)  # fmt: skip
                    found["rooms"] = rooms
                    found["held"] = rooms * found["room_held"]
                    results[f"{deployment}/{shape}"] = found
                    report(deployment, shape, found)
    write_results(
        args.json,
        {
            "benchmark": "load sizing (wadud load --find-max)",
            "command": command_line("benchmarks.load.sizing"),
            "commit": commit_of(ROOT),
            "cores": {"generator": gen_core, "server": server_core},
            "limits": {"latency_p95_ms": args.max_latency, "loss_pct": args.max_loss},
            "duration_s": args.duration,
            "results": results,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
