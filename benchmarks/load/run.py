"""Load generator capacity: how many subscribed streams one core of ``wadud load`` holds.

Starts ``wadud serve`` on its embedded defaults (a PostgreSQL of its own in a
temporary folder) pinned to the last core, makes a load key with ``wadud key
create``, and runs ``wadud load`` against it as a user would, by its URL,
pinned to the first core: rooms of one publisher and ``--subscribers``
subscribers, video only (the clip's 500 kbit/s medium VP8) and then audio only
(Opus, 50 packets a second), each ``--runs`` times, the two kinds alternating.

What each run says, from ``wadud load --json`` and nothing else:

* the generator's own CPU over the hold (every thread of the process), the
  packets its subscribers received, µs per packet, and from that the streams
  one generator core would hold at this rate;
* the loss the generator caused, told apart from the server's: a datagram the
  generator read too late is one the kernel dropped on its socket, its
  receive buffer full, and ``/proc/net/udp`` counts those per socket (the
  generator reads its own sockets' counts at the end of the hold). Every
  other missing sequence number never reached the generator's socket: the
  server's loss (or the path's, none on loopback);
* the server's CPU per forwarded packet, from its private ``/metrics``.

Figures, not assertions: prints a table of medians and writes JSON (``--json``,
default ``benchmarks/results/load.json``).

    .venv/bin/python -m benchmarks.load.run [--quick] [--runs 3] [--rooms 67] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import (
    ROOT,
    answers_ready,
    command_line,
    commit_of,
    free_port,
    log_tail,
    start_group,
    stop_group,
    write_results,
)

WADUD = str(Path(sys.executable).parent / "wadud")
KINDS = {"video": "--video-only", "audio": "--audio-only"}


def pinned(argv: list[str], core: int | None) -> list[str]:
    """``argv`` on one core, where the machine has taskset and cores to spare."""
    if core is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", str(core), *argv]


def cores() -> tuple[int | None, int | None]:
    """(generator's core, server's core): the first and the last this process
    may use, or no pinning on one core."""
    mine = sorted(os.sched_getaffinity(0))
    return (mine[0], mine[-1]) if len(mine) > 1 else (None, None)


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}, **extra}


def one_run(
    url: str,
    key: dict[str, str],
    metrics: str,
    kind: str,
    args: argparse.Namespace,
    out: Path,
    core: int | None,
    seed: int,
) -> dict[str, Any]:
    """One ``wadud load`` of ``kind``; its summary and the figures drawn from it."""
    argv = [
        WADUD, "load", "--url", url, "--rooms", str(args.rooms), "--publishers", "1",
        "--subscribers", str(args.subscribers), "--duration", str(args.duration),
        "--ramp", str(args.ramp), "--sampled", "1", "--seed", str(seed), KINDS[kind],
        "--metrics-url", metrics, "--json", str(out), "--quiet",
    ]  # fmt: skip
    done = subprocess.run(
        pinned(argv, core),
        env=clean_env(**key),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=args.duration + 600,
        check=False,
    )
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"wadud load exited {done.returncode}: {done.stderr[-2000:]}")
    s = json.loads(out.read_text())["summary"]
    gen, server = s["generator"], s["server"] or {}
    streams = s["subscribers"]
    loss = s["loss_pct"] or 0.0
    generator_loss = gen["drop_pct"] or 0.0
    return {
        "kind": kind,
        "subscribers": streams,
        "asked": s["subscribers_asked"],
        "generator_cpu_pct": gen["cpu_pct"],
        "generator_us_per_packet": gen["us_per_packet"],
        "packets_per_s": round(gen["packets"] / gen["held_s"]),
        "streams_per_generator_core": round(streams * 100 / gen["cpu_pct"])
        if gen["cpu_pct"]
        else None,
        "loss_pct": loss,
        "generator_loss_pct": generator_loss,
        "server_loss_pct": round(max(0.0, loss - generator_loss), 4),
        "generator_socket_drops": gen["socket_drops"],
        "server_us_per_forwarded_packet": server.get("us_per_forwarded_packet"),
        "server_cpu_pct": sum(p["cpu_pct"] for p in server.get("processes", {}).values()),
        "latency_ms": s["latency_ms"],
        "errors": s["errors"],
        "summary": s,
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [
        "subscribers", "generator_cpu_pct", "generator_us_per_packet", "packets_per_s",
        "streams_per_generator_core", "loss_pct", "generator_loss_pct", "server_loss_pct",
        "server_us_per_forwarded_packet", "server_cpu_pct",
    ]  # fmt: skip
    return {
        k: statistics.median(r[k] for r in runs if r[k] is not None)
        for k in keys
        if any(r[k] is not None for r in runs)
    }


@contextlib.contextmanager
def serving(
    work: Path, core: int | None, **env: str
) -> Iterator[tuple[str, list[str], dict[str, str]]]:
    """``wadud serve`` on its embedded defaults under ``work``, on ``core``,
    ready, with a load key: (URL, its /metrics URL in a list, the key's
    environment). Stopped after."""
    port, metrics_port = free_port(), free_port()
    url, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    served = clean_env(
        WADUD_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
        WADUD_TURN_EMBEDDED_PORT=str(free_port()),
        WADUD_MEDIA_PORT=str(free_port()),
        WADUD_LOG_LEVEL="warning",
        **env,
    )
    argv = [WADUD, "serve", "--port", str(port), "--data-dir", str(work / "data")]
    log = work / "serve.log"
    proc = start_group(pinned(argv, core), log, env=served, cwd=ROOT)
    try:
        if not asyncio.run(ready(url, proc)):
            raise SystemExit(f"wadud serve did not become ready:\n{log_tail(log)}")
        made = subprocess.run(
            [WADUD, "key", "create", "--name", "load benchmark", "--scope", "load",
             "--data-dir", str(work / "data")],
            env=served, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        yield url, [metrics], dict(line.split("=", 1) for line in made.stdout.split())
    finally:
        stop_group(proc)


async def ready(url: str, proc: subprocess.Popen[bytes]) -> bool:
    async with aiohttp.ClientSession() as s:
        return await answers_ready(s, url, 90, proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rooms", type=int, default=67, help="rooms per run (default: 1,005 streams)")
    p.add_argument("--subscribers", type=int, default=15, help="per room (16 fit a room)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds held per run")
    p.add_argument("--ramp", type=float, default=100.0, help="joins per second")
    p.add_argument("--runs", type=int, default=3, help="runs of each kind")
    p.add_argument("--kinds", default="video,audio", help="video, audio or both")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 rooms, 5 s, one run")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "load.json")
    args = p.parse_args()
    if args.quick:
        args.rooms, args.duration, args.runs = 2, 5.0, 1
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or any(k not in KINDS for k in kinds):
        p.error("--kinds is video, audio or video,audio")
    gen_core, server_core = cores()
    with (
        tempfile.TemporaryDirectory(prefix="wadud-load-bench-") as tmp,
        serving(Path(tmp), server_core) as (url, metrics, key),
    ):
        runs: list[dict[str, Any]] = []
        for n in range(args.runs):
            for kind in kinds if n % 2 == 0 else kinds[::-1]:
                r = one_run(url, key, metrics[0], kind, args, Path(tmp) / f"{kind}-{n}.json",
                                gen_core, seed=100 + n)  # fmt: skip
                runs.append(r)
                print(
                    f"{kind} run {n + 1}: {r['subscribers']}/{r['asked']} receiving,"
                    f" generator {r['generator_cpu_pct']}% of a core"
                    f" ({r['generator_us_per_packet']} µs/packet, {r['packets_per_s']}/s),"
                    f" loss {r['loss_pct']}% (generator's {r['generator_loss_pct']}%),"
                    f" server {r['server_cpu_pct']:.0f}% of a core",
                    flush=True,
                )
    by_kind = {k: medians([r for r in runs if r["kind"] == k]) for k in kinds}
    print()
    print(f"{'medians of ' + str(args.runs) + ' run(s)':<34}" + "".join(f"{k:>14}" for k in kinds))
    rows = [
        ("subscribed streams", "subscribers"),
        ("packets received per s", "packets_per_s"),
        ("generator, % of a core", "generator_cpu_pct"),
        ("generator, µs per packet", "generator_us_per_packet"),
        ("streams per generator core", "streams_per_generator_core"),
        ("loss, %", "loss_pct"),
        ("  caused by the generator, %", "generator_loss_pct"),
        ("  lost before it (server), %", "server_loss_pct"),
        ("server, % of a core", "server_cpu_pct"),
        ("server, µs per forwarded packet", "server_us_per_forwarded_packet"),
    ]
    for label, k in rows:
        print(f"{label:<34}" + "".join(f"{by_kind[kind].get(k, '-'):>14}" for kind in kinds))
    write_results(
        args.json,
        {
            "benchmark": "load generator capacity",
            "command": command_line("benchmarks.load.run"),
            "commit": commit_of(ROOT),
            "cores": {"generator": gen_core, "server": server_core},
            "shape": {
                "rooms": args.rooms,
                "subscribers_per_room": args.subscribers,
                "duration_s": args.duration,
                "runs": args.runs,
            },
            "medians": by_kind,
            "runs": runs,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
