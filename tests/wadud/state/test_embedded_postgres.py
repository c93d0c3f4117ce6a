"""``wadud serve`` and its embedded PostgreSQL, as real processes.

The cluster ``wadud serve`` starts under its data folder must stop when the
last wadud process using it stops, whoever else still holds a session or a
pgserver handle on it (a benchmark seeding data, psql), and a wadud process
killed with SIGKILL must not keep the next one from stopping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from benchmarks.common import answers_ready
from tests.conftest import free_port

WADUD = Path(sys.executable).parent / "wadud"

pytestmark = pytest.mark.timeout(120)


def running(pid: int) -> bool:
    """Alive and not a zombie: an exited postmaster, reparented to init,
    may wait a while to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Serve:
    """One ``wadud serve`` subprocess on a data folder."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
        env.update(WADUD_LOG_LEVEL="warning", WADUD_TURN_EMBEDDED="false")
        self.proc = subprocess.Popen(
            [str(WADUD), "serve", "--port", str(self.port), "--data-dir", str(data)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        async with aiohttp.ClientSession() as s:
            if await answers_ready(s, self.base, 40, self.proc):
                return
        if self.proc.poll() is not None:
            raise AssertionError(self.proc.stderr.read().decode()[-3000:])  # type: ignore[union-attr]
        raise AssertionError("wadud serve did not become ready")

    def postmaster(self) -> tuple[int, str, int]:
        """pid, socket folder and port from the cluster's postmaster.pid."""
        lines = (self.data / "postgres" / "postmaster.pid").read_text().splitlines()
        return int(lines[0]), lines[4], int(lines[3])

    def terminate(self, timeout: float = 40) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "data"
    folder.mkdir()
    os.chmod(tmp_path, 0o755)  # PostgreSQL may run as another user (pgserver, under root)
    yield folder
    # Whatever a failed test left: the cluster is ours, stop it by its pid.
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((folder / "postgres" / "postmaster.pid").read_text().split()[0])
        if running(pid):
            os.kill(pid, signal.SIGQUIT)


async def wait_stopped(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while running(pid) and time.monotonic() < deadline:  # noqa: ASYNC110 (polls /proc)
        await asyncio.sleep(0.05)
    return not running(pid)


def hold_pgserver_handle(path: Path) -> subprocess.Popen[bytes]:
    """Another process that joins the cluster through pgserver, as the booking
    benchmark once did, and stays."""
    code = (
        "import sys, time\n"
        "from pgserver.postgres_server import get_server\n"
        "get_server(sys.argv[1], cleanup_mode=None)\n"
        "print('joined', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"joined\n"
    return proc


async def test_sigterm_stops_embedded_postgres_with_clients_connected(data: Path) -> None:
    serve = Serve(data)
    holder: subprocess.Popen[bytes] | None = None
    try:
        await serve.ready()
        pid, sockdir, port = serve.postmaster()
        holder = hold_pgserver_handle(data / "postgres")
        # A session in an open transaction, and one in the middle of a query.
        idle = await asyncpg.connect(host=sockdir, port=port, user="postgres", database="postgres")
        await idle.execute("BEGIN; CREATE TEMP TABLE held (x int)")
        busy = await asyncpg.connect(host=sockdir, port=port, user="postgres", database="postgres")
        sleeping = asyncio.create_task(busy.execute("SELECT pg_sleep(60)"))
        # And HTTP clients keep the server busy while it is told to stop.
        stop = asyncio.Event()
        answered = 0
        warmed = asyncio.Event()

        async def load() -> None:
            nonlocal answered
            async with aiohttp.ClientSession() as s:
                while not stop.is_set():
                    try:
                        async with s.get(serve.base + "/api/v1/doctors") as r:
                            await r.read()
                            answered += r.status == 200
                            if answered >= 20:
                                warmed.set()
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.02)

        clients = [asyncio.create_task(load()) for _ in range(4)]
        await asyncio.wait_for(warmed.wait(), 30)
        code = await asyncio.get_running_loop().run_in_executor(None, serve.terminate)
        stop.set()
        await asyncio.gather(*clients)
        assert code == 0
        assert await wait_stopped(pid), "wadud serve left its PostgreSQL running"
        with pytest.raises((asyncpg.PostgresError, OSError, asyncpg.InterfaceError)):
            await sleeping
        for conn in (idle, busy):
            conn.terminate()
    finally:
        serve.kill()
        if holder is not None:
            holder.kill()
            holder.wait()


async def test_last_live_wadud_process_stops_the_cluster(data: Path) -> None:
    # A serve killed outright never lets go: its pid stays in the folder's lists.
    first = Serve(data)
    try:
        await first.ready()
        pid, _, _ = first.postmaster()
    finally:
        first.proc.send_signal(signal.SIGKILL)  # the server alone, not the postmaster
        first.proc.wait()
    assert running(pid)

    # Two live servers share the cluster; the first to stop leaves it to the other.
    a, b = Serve(data), None
    try:
        await a.ready()
        assert a.postmaster()[0] == pid, "the second start joins the running cluster"
        b = Serve(data)
        await b.ready()
        assert a.terminate() == 0
        await asyncio.sleep(0.5)
        assert running(pid)
        async with aiohttp.ClientSession() as s, s.get(b.base + "/readyz") as r:
            assert r.status == 200
        # The last live one stops it, the killed one's stale entry notwithstanding.
        assert b.terminate() == 0
        assert await wait_stopped(pid)
    finally:
        a.kill()
        if b is not None:
            b.kill()
