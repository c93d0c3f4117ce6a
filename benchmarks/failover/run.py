"""Media-node failover under browsers: how long a ``kill -9`` of the media
node that holds a call leaves its pages without each other's video.

The topology of tests/signalling/cluster/test_cluster.py, driven by the same driver
(tests/signalling/cluster/cluster_driver.py) in its own loopback-only network
namespace: Redis, PostgreSQL (the pgserver wheel's, a cluster of this run's
own), two ``wadud api`` replicas behind a load balancer, two ``wadud media``
nodes of two workers each, all real processes, and three headless Chromium
pages in one call (a doctor and two patients). Each run kills the node that
holds the room then with SIGKILL (the room alternates between the two
nodes), times the recovery, and starts the node again.

Times are the product's own clocks, not when this script looks: each page
samples its decoded frame counts every 50 ms (getStats, stamped with the
page's Date.now()), and the servers' log lines carry their own stamps. Per
run, seconds after the kill:

* ``moved``: the room's owner logged that it moves the room to another worker
  (it has seen the worker gone);
* ``told``: each page received ``media_reconnect``;
* ``worker_connected``: the new worker logged each transport connected;
* ``connected``: each page's new publish and subscribe connections are up;
* ``decoding``: each page decodes both other pages' video again (and goes
  on doing so for a second): the figure this benchmark is about.

Prints each run and the median over runs of the slowest page, and writes
``benchmarks/results/failover.json``.

    .venv/bin/python -m benchmarks.failover.run [--runs 5] [--checkout DIR] [--json PATH]

Needs ``unshare``, ``ip`` and /usr/bin/chromium, as root (or with user
namespaces). ``--checkout DIR`` runs the roles from another source tree
through this same harness, to compare two versions: a worktree of an older
commit with its native loops built in place (``.venv/bin/python setup.py
build_ext --inplace`` there).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, commit_of, write_results
from tests.signalling.cluster.cluster_driver import Driver, driving

#: Seconds a scenario may take (the pages' start, the kill, the node back).
BUDGET = 150


def one_run(driver: Driver, n: int) -> dict[str, Any]:
    """One kill, as the scenario reported it."""
    t0 = time.monotonic()
    result = driver.ask("media_kill", budget=BUDGET)
    report = result.get("report") or {}
    run: dict[str, Any] = {
        "run": n,
        "wall_s": round(time.monotonic() - t0, 1),
        "error": result.get("error"),
        "killed_node": report.get("killed_node"),
        "decoding_again_s": report.get("gap"),
        "per_page_s": report.get("per_page"),
        "per_pair_s": report.get("back"),
        "phases": report.get("phases"),
        "missing": report.get("missing"),
        "moved_to": report.get("moved_to"),
        "same_pages": report.get("same_pages"),
        # Each page's frames and requests after the kill, for reading a slow run.
        "signalling": report.get("frames_after_kill"),
        # What each page's receivers decoded and its tiles presented, for a
        # pair that did not come back (tests/signalling/cluster/cluster_world.py).
        "receivers": report.get("receivers"),
        "tiles": report.get("tiles"),
        "timings": report.get("timings"),
    }
    phases = report.get("phases") or {}
    told = {k: v for k, v in (phases.get("told") or {}).items() if v is not None}
    up = phases.get("connected") or {}
    print(
        f"run {n}: killed {run['killed_node']}, every page decoding again after"
        f" {run['decoding_again_s']} s (per page {run['per_page_s']});"
        f" moved at {phases.get('moved')} s, told at {told},"
        f" the new worker's transports connected at {phases.get('worker_connected')},"
        f" the pages' connected at {up}" + (f"; ERROR {run['error']}" if run["error"] else "")
    )
    return run


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from pgserver.postgres_server import get_server

    pg = get_server(work / "pg", cleanup_mode="delete")
    runs: list[dict[str, Any]] = []
    try:
        options = ["--checkout", str(args.checkout)]
        with driving(pg.get_uri("postgres"), pg.get_uri, work / "driver", *options) as driver:
            # The first scenario opens the pages and sees the call flow.
            call = driver.ask("call", budget=BUDGET)
            if "error" in call:
                raise SystemExit(f"the call did not start: {call['error']}")
            for n in range(1, args.runs + 1):
                runs.append(one_run(driver, n))
    finally:
        pg.cleanup()
    gaps = [r["decoding_again_s"] for r in runs if r["decoding_again_s"] is not None]
    failed = len(runs) - len(gaps)
    median = statistics.median(gaps) if gaps and not failed else None
    figures = {
        "median_decoding_again_s": median,
        "runs_s": [r["decoding_again_s"] for r in runs],
        "failed_runs": failed,
        "median_moved_s": _median_of(runs, lambda p: p.get("moved")),
        "median_told_s": _median_of(runs, lambda p: _worst(p.get("told"))),
        # Three pages, a publish and a subscribe transport each.
        "median_worker_connected_s": _median_of(
            runs, lambda p: max(p["worker_connected"][:6]) if p.get("worker_connected") else None
        ),
        "median_connected_s": _median_of(
            runs,
            lambda p: _worst(
                {f"{n}.{k}": v for n, c in (p.get("connected") or {}).items() for k, v in c.items()}
            ),
        ),
    }
    return {
        "benchmark": "failover",
        "checkout": str(args.checkout),
        "commit": commit_of(args.checkout),
        "harness_commit": commit_of(ROOT),
        "runs": args.runs,
        "figures": figures,
        "each_run": runs,
    }


def _worst(values: dict[str, Any] | None) -> float | None:
    """The latest of a phase's per-page times; None if a page never got there."""
    if not values or any(v is None for v in values.values()):
        return None
    return float(max(values.values()))


def _median_of(runs: list[dict[str, Any]], pick: Any) -> float | None:
    values = [pick(r.get("phases") or {}) for r in runs]
    found = [v for v in values if v is not None]
    return round(statistics.median(found), 2) if found else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="kills, one after the other")
    p.add_argument(
        "--checkout", type=Path, default=ROOT, help="the source tree the roles run (this one)"
    )
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/failover.json")
    p.add_argument(
        "--keep", type=Path, default=None, help="work in DIR and keep it (the servers' logs)"
    )
    args = p.parse_args()
    args.checkout = args.checkout.resolve()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        out = run_all(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="wadud-failover-") as tmp:
            out = run_all(args, Path(tmp))
    figures = out["figures"]
    print(
        f"median of {args.runs}: every page decoding again after"
        f" {figures['median_decoding_again_s']} s (runs {figures['runs_s']});"
        f" phases (median of the slowest page): moved {figures['median_moved_s']} s,"
        f" told {figures['median_told_s']} s, the new worker's transports connected"
        f" {figures['median_worker_connected_s']} s,"
        f" the pages' connected {figures['median_connected_s']} s"
    )
    write_results(args.json, out)
    return 0 if figures["median_decoding_again_s"] is not None else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
