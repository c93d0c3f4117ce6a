"""Measurement helpers every benchmark uses: free loopback ports, a server run
in a process group of its own (started, stopped, its log read), a process's
CPU time (alone or with its children), the kernel's UDP receive-buffer drops,
a cluster on a PostgreSQL and a Redis of a benchmark's own, the frames a signalling
WebSocket receives. Scripts run as modules from the repository root
(``python -m benchmarks.X.run``), so the root is on ``sys.path`` for them and
their children without each script putting it there."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from tests.cluster import Cluster

#: The repository's root: the tree the scripts measure and write results under.
ROOT = Path(__file__).resolve().parents[1]


def command_line(module: str) -> str:
    """How this run was started (``python -m module`` and its arguments), as
    the results record it."""
    return " ".join([".venv/bin/python", "-m", module, *sys.argv[1:]])


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (TCP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_group(
    argv: list[str], log: Path | None, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """``argv`` in a process group of its own, so its CPU is its own and a
    stop reaches its children; its output (stdout and stderr) to ``log``, or
    nowhere."""
    with open(os.devnull if log is None else log, "wb") as out:  # the child keeps its own copy
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_group(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM to the process group of ``proc`` (from :func:`start_group`),
    then SIGKILL if it has not exited within ``grace`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the embedded PostgreSQL of a ``wadud serve --data-dir
    data_dir``, from its pid file; None when it has none."""
    try:
        return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited postmaster waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_stopped(pid: int | None, within: float = 60.0) -> bool:
    """Wait for process ``pid`` to be gone, up to ``within`` seconds; True if
    it went. For the embedded PostgreSQL after ``wadud serve`` exits: the
    server stops within its bound and lets a slow shutdown (a checkpoint on
    a busy machine) finish on its own (wadud.state.db.stop_embedded), and
    its data folder must not be removed under it."""
    deadline = time.monotonic() + within
    while pid is not None and running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def own_cluster(work: Path, secret: str, **options: Any) -> Iterator[Cluster]:
    """A :class:`tests.cluster.Cluster` under ``work/cluster`` (described,
    not started: the caller starts and closes it) on a PostgreSQL (the
    pgserver wheel's, data in ``work/pg``) and a Redis of this run's own,
    both gone after; ``options``: the Cluster's others."""
    from pgserver.postgres_server import get_server

    from tests.cluster import Cluster
    from tests.conftest import RedisServer

    pg = get_server(work / "pg", cleanup_mode="delete")
    redis = RedisServer(free_port(), dbfile=work / "redis.db")
    redis.start()
    try:
        yield Cluster(work / "cluster", str(pg.get_uri("postgres")), redis.url, secret, **options)
    finally:
        redis.stop()
        pg.cleanup()


def log_lines(log: Path) -> list[str]:
    """The lines a server wrote to its log so far (none if it has no log)."""
    try:
        return log.read_text(errors="replace").splitlines()
    except OSError:
        return []


def log_tail(log: Path, chars: int = 3000) -> str:
    """The end of a server's log, for an error message."""
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def commit_of(tree: Path) -> str:
    """The short commit checked out in ``tree``, or "" where git cannot say."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=tree,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    return ""


def write_results(path: Path | str, results: Any) -> None:
    """A benchmark's results as indented JSON at ``path`` (values JSON has no
    type for, such as paths, as strings), and a line saying where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile of ``values`` (nearest rank; at least one value)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root``, its direct children alive now (a role and
    its workers, PostgreSQL's postmaster and its backends) and the children
    it has reaped: a backend or an autovacuum worker that exits between two
    readings keeps its CPU in the sum instead of taking it away."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == root:
            # utime, stime, then cutime and cstime: the reaped children's.
            total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        elif int(fields[1]) == root:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def udp_rcvbuf_errors() -> int:
    """RcvbufErrors of the Udp line of the calling thread's network namespace
    (/proc/thread-self/net/snmp: a thread may run in a namespace of its own,
    as tests/regions.py's hosts do): datagrams any socket dropped because
    its receive buffer was full (0 where unavailable)."""
    try:
        lines = [ln.split() for ln in Path("/proc/thread-self/net/snmp").read_text().splitlines()]
    except OSError:
        return 0
    udp = [ln for ln in lines if ln and ln[0] == "Udp:"]
    if len(udp) < 2 or "RcvbufErrors" not in udp[0]:
        return 0
    return int(udp[1][udp[0].index("RcvbufErrors")])


async def answers_ready(
    session: aiohttp.ClientSession,
    base: str,
    within: float,
    proc: subprocess.Popen[Any] | None = None,
    path: str = "/readyz",
) -> bool:
    """Whether the server at ``base`` answers ``path`` (``/readyz``) with 200
    within ``within`` seconds; no, at once, if its process ``proc`` exits
    first."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(base + path) as r:
                if r.status == 200:
                    return True
        await asyncio.sleep(0.1)
    return False


async def signalling_frames(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON frames ``ws`` (a signalling WebSocket) receives until it
    closes; a ``ping`` is answered with a ``pong`` and not given."""
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            return
        frame = json.loads(msg.data)
        if frame.get("type") == "ping":
            await ws.send_str(json.dumps({"v": 1, "type": "pong"}))
            continue
        yield frame
