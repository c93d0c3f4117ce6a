"""A Wadud role run as a real process (``python -m bin.main ROLE``), for the
tests of the roles that have no public port and are judged by what they do to
the database and by what they print."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from wadud.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def role_env(settings: Settings) -> dict[str, str]:
    """The environment of a role that shares the test's (already migrated)
    database, with a small pool and plain-text logs."""
    return {
        **os.environ,
        "WADUD_DATABASE_URL": settings.database_url,
        "WADUD_DATABASE_MIGRATE": "false",
        "WADUD_DATABASE_POOL_MIN": "1",
        "WADUD_DATABASE_POOL_MAX": "6",
        "WADUD_DATA_DIR": str(settings.data_dir),
        "WADUD_SECRET_KEY": settings.secret_key,
        "WADUD_LOG_FORMAT": "text",
    }


def serve(database_url: str, data_dir: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    """``wadud serve`` on ``port`` with its data and ``server.log`` in
    ``data_dir``; ``env``: more settings (``WADUD_...``)."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "wadud"), "serve", "--port", str(port),
         "--data-dir", str(data_dir)],
        env={**os.environ, "WADUD_DATABASE_URL": database_url, **env},
        stdout=subprocess.DEVNULL,
        stderr=open(data_dir / "server.log", "wb"),
    )  # fmt: skip


def serve_on_free_ports(
    database_url: str, data_dir: Path, **env: str
) -> tuple[str, subprocess.Popen[bytes]]:
    """:func:`serve` on free ports (HTTP, the embedded TURN relay, the media
    worker), quiet but for warnings: its URL and its process."""
    from tests.conftest import free_port

    port = free_port()
    proc = serve(
        database_url,
        data_dir,
        port,
        **{
            "WADUD_SECRET_KEY": "served-secret-" + "z" * 40,
            "WADUD_LOG_LEVEL": "warning",
            "WADUD_TURN_EMBEDDED_PORT": str(free_port()),
            "WADUD_MEDIA_PORT": str(free_port()),
            **env,
        },
    )
    return f"http://127.0.0.1:{port}", proc


class RoleProcess:
    """One ``wadud ROLE`` process in its own process group; ready once it
    prints ``wadud ROLE: running``."""

    def __init__(self, role: str, env: dict[str, str]) -> None:
        self.banner = f"wadud {role}: running"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bin.main", role],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if self.banner in line:
                self.ready.set()

    async def started(self) -> None:
        deadline = time.monotonic() + 30
        while not self.ready.is_set() and self.proc.poll() is None:
            assert time.monotonic() < deadline, "\n".join(self.lines)
            await asyncio.sleep(0.1)
        assert self.ready.is_set(), "\n".join(self.lines)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, connections dropped mid-transaction."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> int:
        """SIGTERM, as an orchestrator stops a role; SIGKILL after 15 s."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(5)
        self._reader.join(5)
        return code
