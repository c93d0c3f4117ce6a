"""Whole deployments side by side with Janus: what a user pays for one room.

Issue 41 measures the server the way its operator pays for it: every process
one room needs, not the forwarding process alone (``benchmarks/sfu/janus.py``
keeps that worker-alone comparison). Deployments under test, all on
127.0.0.1, each in process groups of their own, all started before the
first run and kept for the whole run:

* ``serve``: ``wadud serve`` (signalling, the media worker, the supervisor,
  the notifier and the rest in one process) and its embedded PostgreSQL;
* ``split``: ``wadud api`` and ``wadud media --workers 1`` (its supervisor
  and its worker), on a PostgreSQL (pgserver) and a Redis of this run's own;
* ``janus``: Debian's ``janus`` (VideoRoom, HTTP, ``event_loops = 2``,
  its fastest mode; janus.py says how it is set up).

The clients are janus.py's: one load process (benchmarks/sfu/load.py) owns
every transport (ICE, DTLS-SRTP, pre-encoded VP8 at video rate, counted
without decoding) and serves every deployment alike; rooms are made the way
each server's users make them (Wadud's ``/ws`` signalling, Janus's HTTP API).

Phases, each run on every deployment, the order of deployments alternating
round by round:

* ``empty``: no room at all, ``--idle-seconds``;
* ``idle``: one room with one publisher sending and no subscriber,
  ``--idle-seconds``;
* ``1xN`` for each N of ``--subscribers``: one publisher to N subscribers
  per room, rooms enough for ``--out-rate`` packets out per second.

CPU is user + system of every process of the deployment (all threads; the
process trees, PostgreSQL's backends and Redis included), summed over the
measured window, read at its edges. Memory: the deployment's resident set at
rest (before the first room), and in the middle of each run (per subscriber:
over what it held just before the run's rooms); PostgreSQL's
and Redis's shared pages counted once (PSS), the main process's own RSS
beside it. Printed: one line a run, then medians with their spread, the
ratios to Janus (of medians, and per round) and loss. Results go to
``benchmarks/results/sfu-deployment.json``.

    .venv/bin/python -m benchmarks.sfu.deployment [--rounds 3]
        [--deployments serve,split,janus] [--subscribers 10,20,40]
        [--out-rate 14400] [--idle-seconds 15] [--seconds 8] [--json PATH]

``--tree PATH`` runs the ``serve`` and ``split`` processes from another
checkout (a ``git worktree`` of an older commit, its native leaves built with
``python setup.py build_ext --inplace``), and ``serve@PATH`` (or
``split@PATH``) in ``--deployments`` adds one from that checkout beside the
others, so two commits compare in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import psutil  # type: ignore[import-untyped]
import uvloop

from benchmarks.common import ROOT, commit_of, own_cluster, write_results
from benchmarks.sfu import janus, load
from benchmarks.sfu.bench import Bench
from benchmarks.sfu.report import code_identity
from benchmarks.sfu.scenarios import Scenario
from benchmarks.sfu.servers import SECRET, Server

PARTICIPANTS = 64  # a room's cap, above the largest scenario


# -- the deployments ----------------------------------------------------------------------


def _tree(root: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return [root, *root.children(recursive=True)]
    return []


def _by_folder(folder: Path) -> list[psutil.Process]:
    """Processes whose command line names ``folder`` (a detached PostgreSQL),
    and their children."""
    found: list[psutil.Process] = []
    text = str(folder)
    for proc in psutil.process_iter(["cmdline"]):
        if any(text in part for part in proc.info.get("cmdline") or ()):
            found += _tree(proc)
    return found


class ServeDeployment(Server):
    """``wadud serve`` and its embedded PostgreSQL."""

    name = "serve"

    def __init__(self, work: Path, tree: Path) -> None:
        super().__init__(work, PARTICIPANTS, env={"PYTHONPATH": str(tree)})

    def main_pid(self) -> int:
        return int(self.proc.pid)

    def processes(self) -> list[psutil.Process]:
        return _unique(_tree(self.ps) + _by_folder(self.data))


class _Handle:
    """What Bench reads of a server's process: its pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid


class SplitDeployment:
    """``wadud api`` and ``wadud media --workers 1``, their PostgreSQL and Redis
    (tests/cluster.py's Cluster, through benchmarks.common.own_cluster)."""

    name = "split"

    def __init__(self, work: Path, tree: Path, stack: contextlib.ExitStack) -> None:
        self.data = work
        self.cluster = stack.enter_context(own_cluster(work, SECRET, checkout=tree))
        env = {"WADUD_CALL_MAX_PARTICIPANTS": str(PARTICIPANTS), "WADUD_LOG_LEVEL": "warning"}
        self.api = self.cluster.add_api("A", env=env)
        self.node = self.cluster.add_media("m", workers=1, env=env)
        self.port = self.api.port
        self.base = self.api.url
        self.log_path = self.api.proc.log
        self._worker = 0

    async def ready(self, http: aiohttp.ClientSession) -> None:
        await self.cluster.start()
        async with http.get(self.node.url + "/healthz") as r:
            (pid,) = (await r.json())["workers"].values()
        self._worker = int(pid)
        self.proc = _Handle(self.api.proc.pid)
        self.ps = psutil.Process(self.api.proc.pid)

    def worker_pid(self) -> int:
        return self._worker

    def main_pid(self) -> int:
        return self._worker

    async def rtp_totals(self, http: aiohttp.ClientSession) -> dict[str, int]:
        return await Server.rtp_totals(self, http)  # type: ignore[arg-type]

    @property
    def metrics_base(self) -> str:
        return self.node.url

    def processes(self) -> list[psutil.Process]:
        ours = _tree(psutil.Process(self.api.proc.pid)) + _tree(psutil.Process(self.node.proc.pid))
        # PostgreSQL (pgserver, data under work/pg) and Redis (its db file under work).
        return _unique(ours + _by_folder(self.data / "pg") + _redis(self.cluster.redis_url))

    def problems(self, limit: int = 10) -> list[str]:
        return [ln[:300] for p in self.cluster.procs for ln in p.tail().splitlines()][-limit:]


class JanusDeployment(janus.Janus):
    """Janus (janus.py's set-up): one process."""

    def __init__(self, work: Path) -> None:
        super().__init__(work, event_loops=2)

    def main_pid(self) -> int:
        return int(self.proc.pid)

    def processes(self) -> list[psutil.Process]:
        return _tree(self.ps)


def _redis(url: str) -> list[psutil.Process]:
    port = url.rsplit(":", 1)[1].split("/")[0]
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        line = " ".join(proc.info.get("cmdline") or ())
        if "redis-server" in (proc.info.get("name") or "") and port in line:
            found.append(proc)
    return found


def _unique(procs: list[psutil.Process]) -> list[psutil.Process]:
    return list({p.pid: p for p in procs}.values())


# -- what one window costs ----------------------------------------------------------------


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    """User + system CPU-seconds of each process (all its threads)."""
    out: dict[int, float] = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


def memory_mb(procs: list[psutil.Process], main: int) -> dict[str, float]:
    """The main process's RSS and the deployment's PSS (shared pages once), MB."""
    rss = pss = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            pss += info.pss
            if p.pid == main:
                rss = info.rss
    return {"main_rss_mb": round(rss / 2**20, 1), "pss_mb": round(pss / 2**20, 1)}


def label(p: psutil.Process) -> str:
    """A process's part in its deployment, for the breakdown."""
    line = p.cmdline()
    text = " ".join(line)
    if "resource_tracker" in text:
        return "resource tracker"
    if "spawn_main" in text:
        return "media worker"
    for role in ("serve", "api", "media"):
        if f"wadud {role}" in text or (line[1:2] == [role] and "wadud" in line[0]):
            return f"wadud {role}"
    return str(p.name())


@dataclass
class Window:
    """CPU and memory of a deployment over one measured window."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    by_process: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_share(self) -> float:
        return self.cpu_seconds / self.seconds if self.seconds else 0.0


async def measure(deployment: Any, seconds: float) -> Window:
    procs = deployment.processes()
    names = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            names[p.pid] = label(p)
    c0, t0 = cpu_seconds(procs), time.monotonic()
    await asyncio.sleep(seconds / 2)
    memory = memory_mb(procs, deployment.main_pid())
    await asyncio.sleep(seconds / 2)
    c1, t1 = cpu_seconds(procs), time.monotonic()
    used = {pid: c1[pid] - c0[pid] for pid in c1 if pid in c0}
    by_name: dict[str, float] = {}
    for pid, v in used.items():
        key = names.get(pid, str(pid))
        by_name[key] = round(by_name.get(key, 0.0) + v, 3)
    return Window(round(t1 - t0, 3), round(sum(used.values()), 3), by_name, memory)


@dataclass
class Run:
    deployment: str
    round: int
    phase: str
    subscribers: int
    rooms: int
    window: dict[str, Any]
    cpu_share: float
    forwarded_out_pps: float
    forwarded_per_cpu_second: float
    loss_pct: float
    memory: dict[str, float]
    rss_per_subscriber_kb: float


async def run_phase(
    bench: Bench, deployment: Any, phase: str, rnd: int, args: argparse.Namespace
) -> Run:
    windows: list[Window] = []

    async def on_measure(seconds: float) -> None:
        windows.append(await measure(deployment, seconds))

    if phase == "empty":
        w = await measure(deployment, args.idle_seconds)
        return Run(deployment.name, rnd, phase, 0, 0, asdict(w), round(w.cpu_share, 4),
                   0.0, 0.0, 0.0, w.memory, 0.0)  # fmt: skip
    if phase == "idle":
        scenario, seconds = Scenario("idle", 1, 0), args.idle_seconds
        bench.args.rooms = 1
    else:
        n = int(phase.split("x")[1])
        scenario, seconds = Scenario(phase, 1, n), args.seconds
        bench.args.rooms = 0
    # Per subscriber: against what the deployment held just before this
    # run's rooms (an allocator keeps what earlier runs freed), not at rest.
    before = memory_mb(deployment.processes(), deployment.main_pid())["pss_mb"]
    r = await bench.run_scenario(
        scenario,
        out_rate=args.out_rate,
        purpose="deployment",
        probe_rooms=0,
        on_measure=on_measure,
        seconds=seconds,
    )
    w = windows[0]
    share = w.cpu_share
    subs = r.subscriber_transports
    per_sub = (w.memory["pss_mb"] - before) * 1024 / subs if subs else 0.0
    return Run(
        deployment.name, rnd, phase, scenario.subscribers, r.rooms, asdict(w), round(share, 4),
        r.forwarded_out_pps, round(r.forwarded_out_pps / share) if share else 0.0,
        r.loss_pct, w.memory, round(per_sub, 1),
    )  # fmt: skip


def spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "runs": [round(v, 4) for v in values],
    }


#: Loss (%) over which a run is left out of the medians: its server, or the
#: load, was starved by the rest of this shared machine, not measured.
LOSSY = 0.1


def summarise(runs: list[Run], order: list[str], phases: list[str]) -> dict[str, Any]:
    """Per phase: each deployment's medians with their spread over its
    lossless runs, and ratios to Janus (per round where both were lossless)."""
    out: dict[str, Any] = {}
    runs = [r for r in runs if r.loss_pct < LOSSY]
    for phase in phases:
        entry: dict[str, Any] = {}
        for who in order:
            mine = [r for r in runs if r.deployment == who and r.phase == phase]
            entry[who] = {
                "cpu_share": spread([r.cpu_share for r in mine]),
                "forwarded_per_cpu_second": spread([r.forwarded_per_cpu_second for r in mine]),
                "lossless_runs": len(mine),
                "pss_mb": spread([r.memory.get("pss_mb", 0.0) for r in mine]),
                "main_rss_mb": spread([r.memory.get("main_rss_mb", 0.0) for r in mine]),
                "rss_per_subscriber_kb": spread([r.rss_per_subscriber_kb for r in mine]),
            }
        if "janus" in order:
            for who in order:
                if who == "janus":
                    continue
                key = "cpu_share" if phase in ("empty", "idle") else "forwarded_per_cpu_second"
                per_round = []
                for rnd in sorted({r.round for r in runs}):
                    a = [r for r in runs if (r.deployment, r.phase, r.round) == (who, phase, rnd)]
                    j = [
                        r for r in runs if (r.deployment, r.phase, r.round) == ("janus", phase, rnd)
                    ]
                    if a and j and getattr(j[0], key):
                        per_round.append(round(getattr(a[0], key) / getattr(j[0], key), 3))
                mine_m, janus_m = entry[who][key]["median"], entry["janus"][key]["median"]
                entry[f"{who}/janus"] = {
                    "of": key,
                    "ratio_of_medians": round(mine_m / janus_m, 3) if janus_m else None,
                    "per_round": per_round,
                    "main_rss_ratio": _ratio(
                        entry[who]["main_rss_mb"], entry["janus"]["main_rss_mb"]
                    ),
                    "pss_ratio": _ratio(entry[who]["pss_mb"], entry["janus"]["pss_mb"]),
                }
        out[phase] = entry
    return out


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    return round(a["median"] / b["median"], 2) if a["median"] and b["median"] else None


def print_run(r: Run) -> None:
    top = sorted(r.window["by_process"].items(), key=lambda kv: -kv[1])[:4]
    print(
        f"r{r.round} {r.phase:<5} {r.deployment:<6} rooms {r.rooms:>2}"
        f" cpu {100 * r.cpu_share:6.2f}%"
        f"  fwd/s {r.forwarded_out_pps:>8,.0f}  fwd/cpu-s {r.forwarded_per_cpu_second:>9,.0f}"
        f"  loss {r.loss_pct:.3f}%  pss {r.memory.get('pss_mb')} MB"
        f" (main rss {r.memory.get('main_rss_mb')})  top {top}",
        flush=True,
    )


def print_summary(summary: dict[str, Any], rest: dict[str, dict[str, float]]) -> None:
    print()
    print("at rest (before any room):", rest)
    for phase, entry in summary.items():
        for who, v in entry.items():
            if "/" in who:
                print(
                    f"{phase:<5} {who:<12} {v['of']} {v['ratio_of_medians']}x (medians),"
                    f" per round {v['per_round']}; main RSS {v['main_rss_ratio']}x,"
                    f" PSS {v['pss_ratio']}x"
                )
                continue
            cpu, fwd = v["cpu_share"], v["forwarded_per_cpu_second"]
            print(
                f"{phase:<5} {who:<12} cpu {100 * (cpu['median'] or 0):6.2f}%"
                f" [{100 * (cpu['min'] or 0):.2f}-{100 * (cpu['max'] or 0):.2f}]"
                f"  fwd/cpu-s {fwd['median'] or 0:>9,.0f}"
                f" [{fwd['min'] or 0:,.0f}-{fwd['max'] or 0:,.0f}]"
                f"  lossless runs {v['lossless_runs']}  pss {v['pss_mb']['median']} MB"
                f"  main rss {v['main_rss_mb']['median']} MB"
                f"  per subscriber {v['rss_per_subscriber_kb']['median']} kB"
            )
    print(flush=True)


# -- the run ------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    names = [who for who, _, _ in args.planned]
    phases = ["empty", "idle"] + [f"1x{n}" for n in args.subscribers.split(",") if n]
    phases = [p for p in phases if p in args.phases.split(",") or args.phases == "all"]
    out: dict[str, Any] = {"code": code_identity(), "args": vars(args), "tree": str(args.tree)}
    deployments: dict[str, Any] = {}
    benches: dict[str, Bench] = {}
    shared: load.LoadClient | None = None
    runs: list[Run] = []
    bargs = janus.bench_args(args)
    with contextlib.ExitStack() as sync_stack:
        async with contextlib.AsyncExitStack() as stack:
            http = await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            )
            try:
                for i, (who, kind, tree) in enumerate(args.planned):
                    (work / str(i)).mkdir()
                    if kind == "serve":
                        deployments[who] = ServeDeployment(work / str(i), tree)
                    elif kind == "split":
                        deployments[who] = SplitDeployment(work / str(i), tree, sync_stack)
                    elif kind == "janus":
                        deployments[who] = JanusDeployment(work / str(i))
                    else:
                        raise SystemExit(f"unknown deployment {who!r}: serve, split or janus")
                    deployments[who].name = who
                    out.setdefault("trees", {})[who] = str(tree)
                for who, d in deployments.items():
                    await d.ready(http)
                    target = janus.serve_load if shared is None else janus.idle_load
                    with mock.patch.object(load, "serve", target):
                        maker = janus.JanusBench if who == "janus" else Bench
                        bench = maker(bargs, d, http)
                    if shared is None:
                        shared = bench.load
                    else:
                        bench.load.stop()
                        bench.load = shared
                    benches[who] = bench
                # Let start-up work (migrations, first registrations) finish.
                await asyncio.sleep(args.settle)
                rest = {
                    who: memory_mb(d.processes(), d.main_pid()) for who, d in deployments.items()
                }
                out["at_rest"] = rest
                print(f"at rest: {rest}", flush=True)
                for rnd in range(args.rounds):
                    turn = names if rnd % 2 == 0 else names[::-1]
                    for phase in phases:
                        for who in turn:
                            r = await run_phase(benches[who], deployments[who], phase, rnd, args)
                            runs.append(r)
                            print_run(r)
                out["summary"] = summarise(runs, names, phases)
                print_summary(out["summary"], rest)
            finally:
                if shared is not None:
                    shared.stop()
                for who, d in deployments.items():
                    with contextlib.suppress(Exception):
                        out.setdefault("problems", {})[who] = d.problems()
                    if isinstance(d, SplitDeployment):
                        await d.cluster.close()
                    else:
                        d.stop()
    out["runs"] = [asdict(r) for r in runs]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", default="serve,split,janus")
    parser.add_argument("--subscribers", default="10,20,40", help="N of the 1xN phases")
    parser.add_argument(
        "--phases", default="all", help="all, or some of empty,idle,1xN (comma-separated)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the order alternates")
    parser.add_argument("--out-rate", type=float, default=14400, help="packets/s out, in total")
    parser.add_argument("--pps", type=float, default=180, help="packets/s per publisher")
    parser.add_argument("--fps", type=float, default=30, help="frames/s per publisher")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=8.0, help="a 1xN run's window")
    parser.add_argument("--idle-seconds", type=float, default=15.0, help="empty and idle windows")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after start-up")
    parser.add_argument("--quiet-wait", type=float, default=0.0)
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout serve and split run")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "sfu-deployment.json"
    )
    args = parser.parse_args()
    args.tree = args.tree.resolve()
    # (name, kind, checkout) of each deployment; one of another checkout is
    # named by its commit.
    args.planned = []
    for entry in args.deployments.split(","):
        kind, _, other = entry.partition("@")
        tree = Path(other).resolve() if other else args.tree
        name = f"{kind}@{commit_of(tree)}" if other else kind
        args.planned.append((name, kind, tree))
    with tempfile.TemporaryDirectory(prefix="sfu-deployment-") as tmp:
        out = uvloop.run(main_async(args, Path(tmp)))
    write_results(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
