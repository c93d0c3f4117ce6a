"""How long each role takes to stop when asked (docs/operations.md, "Shutdown").

For each case, ``--runs`` times (5 by default): start the role on peers of
its own, wait for its /readyz, then stop it and time the signal to the exit:

* ``make run`` (``wadud serve`` on embedded defaults), SIGINT to its whole
  process group as Ctrl-C sends: make's own status (death by SIGINT, as
  GNU make re-raises it) and whether it printed an error line;
* ``wadud serve`` on embedded defaults, SIGINT;
* ``wadud api`` after its PostgreSQL and Redis were killed, SIGTERM;
* ``wadud media`` (one worker) after its Redis was killed, SIGTERM.

Prints the median and the runs of each, and writes them as JSON to
``benchmarks/results/stop.json``. The bound is 2 s::

    .venv/bin/python -m benchmarks.stop.run [--runs 5] [--only api,media]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from benchmarks.common import ROOT
from tests.wadud import stopping

BOUND = 2.0


def _bad(role: stopping.Role, mark: str) -> list[str]:
    try:
        return role.bad_lines(mark)
    except AssertionError as exc:
        return [str(exc)[:200]]


async def serve_embedded(work: Path) -> dict[str, object]:
    os.chmod(work, 0o755)  # PostgreSQL may run as another user (pgserver, under root)
    role = stopping.http_role("serve", work, None)
    role.start()
    try:
        await role.ready(120)
        code = await role.stop(signal.SIGINT, 30)
    finally:
        role.kill()
    return {"seconds": role.stop_seconds, "code": code, "bad": _bad(role, "serving: stopping")}


async def api_peers_killed(work: Path) -> dict[str, object]:
    with stopping.peers(work) as found:
        role = stopping.http_role(
            "api", work, found, WADUD_DATABASE_POOL_MIN="0", WADUD_OUTBOX_POLL_INTERVAL="30"
        )
        code = await stopping.stop_with_peers_killed(role, found, 30, ready_within=120)
    return {"seconds": role.stop_seconds, "code": code, "bad": _bad(role, "serving: stopping")}


async def media_redis_killed(work: Path) -> dict[str, object]:
    with stopping.peers(work, postgres=False) as found:
        role = stopping.media_role(work, found)
        code = await stopping.stop_with_peers_killed(role, found, 30, ready_within=120)
    return {"seconds": role.stop_seconds, "code": code, "bad": _bad(role, "media node draining")}


async def make_run(work: Path) -> dict[str, object]:
    """``make run`` in its own session, its signals at their defaults (as
    in a terminal), SIGINT to the group; the data folder is the checkout's
    ``var/``, as a newcomer's."""
    from tests.conftest import free_port

    port = free_port()
    log = work / "make.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
    url = f"http://127.0.0.1:{port}/readyz"
    role = stopping.Role(["run", f"PORT={port}"], env, log, url, program="make")
    role.start()
    try:
        await role.ready(120)
        code = await role.stop(signal.SIGINT, 30, group=True)
    finally:
        role.kill()
    text = log.read_text(errors="replace")
    make_errors = [line for line in text.splitlines() if line.startswith("make: ***")]
    return {
        "seconds": role.stop_seconds,
        "code": code,
        "bad": make_errors + _bad(role, '"msg": "stopping"'),
    }


CASES: dict[str, Callable[[Path], Awaitable[dict[str, object]]]] = {
    "make-run": make_run,
    "serve": serve_embedded,
    "api": api_peers_killed,
    "media": media_redis_killed,
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default=",".join(CASES), help="cases, comma separated")
    args = parser.parse_args()
    results: dict[str, object] = {}
    for name in args.only.split(","):
        runs = []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix=f"wadud-stop-{name}-") as tmp:
                run = await CASES[name](Path(tmp))
            runs.append(run)
            print(f"{name} run {i + 1}: {run['seconds']:.2f} s, exit {run['code']}, "
                  f"error lines {len(run['bad'])}", flush=True)  # type: ignore[arg-type]  # fmt: skip
        seconds = [float(r["seconds"]) for r in runs]  # type: ignore[arg-type]
        median = statistics.median(seconds)
        results[name] = {"median_seconds": round(median, 3), "runs": runs}
        print(f"{name}: median {median:.2f} s over {len(runs)} (bound {BOUND:g} s)", flush=True)
    out = ROOT / "benchmarks" / "results" / "stop.json"
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
