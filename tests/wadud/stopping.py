"""A role run as a process for a test of its stop: a PostgreSQL and a Redis
of its own that the test can kill, the role in its own process group, and
the time from the signal to its exit.

Used by tests/wadud/test_stop.py, tests/sfu/node/test_node.py and
benchmarks/stop/run.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
WADUD = str(Path(sys.executable).parent / "wadud")

#: A log line of a role that a requested stop must never write: a record at
#: error level or above (text or JSON format), or a traceback.
_BAD = re.compile(r"^\S+ \S+ (ERROR|CRITICAL)\b|\"level\": \"(error|critical)\"|^Traceback")


@dataclass
class Peers:
    """A PostgreSQL (pgserver's, in ``work/pg``) and a Redis (on a free TCP
    port) for one role, each of which :meth:`kill` ends without warning."""

    work: Path
    pg: Any = None
    redis: RedisServer | None = None
    postmaster: int = 0

    def start(self, *, postgres: bool = True) -> None:
        self.redis = RedisServer(free_port(), dbfile=self.work / "redis.db")
        self.redis.start()
        if postgres:
            from pgserver.postgres_server import get_server

            self.pg = get_server(self.work / "pg", cleanup_mode="delete")
            self.postmaster = int((self.work / "pg" / "postmaster.pid").read_text().split()[0])

    @property
    def database_url(self) -> str:
        return str(self.pg.get_uri("postgres")) if self.pg is not None else ""

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends see it die and end too) and
        stop Redis: the role's connections break, new ones are refused."""
        if self.postmaster:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.postmaster, signal.SIGKILL)
        if self.redis is not None:
            self.redis.stop()

    def close(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            # pg_ctl fails on a killed cluster and says so; the folder goes anyway.
            with contextlib.suppress(Exception):
                self.pg.cleanup()


@contextlib.contextmanager
def peers(work: Path, *, postgres: bool = True) -> Iterator[Peers]:
    found = Peers(work)
    try:
        found.start(postgres=postgres)
        yield found
    finally:
        found.close()


def _as_in_a_terminal() -> None:
    """SIGINT at its default, as a command typed in a terminal has it: a
    background job of a shell ignores it, and so would make (and GNU make
    acts on a Ctrl-C only when it does not ignore SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Role:
    """``wadud ARGV...`` (or ``program``'s) in its own process group, its
    output in ``log``."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    ready_url: str
    proc: subprocess.Popen[bytes] | None = None
    signalled: float = 0.0
    stop_seconds: float = field(default=float("nan"))
    program: str = WADUD

    def start(self) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [self.program, *self.argv], cwd=ROOT, env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_as_in_a_terminal,
            )  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self, within: float = 60.0) -> None:
        """Until ``ready_url`` answers 200 (the role's /readyz)."""
        assert self.proc is not None
        end = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < end:
                assert self.proc.poll() is None, self.text()[-3000:]
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.ready_url) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"not ready in {within} s:\n{self.text()[-3000:]}")

    async def stop(
        self, sig: signal.Signals = signal.SIGTERM, within: float = 15.0, *, group: bool = False
    ) -> int:
        """Send ``sig`` to the role's main process (with ``group``, to its
        whole process group, as a terminal's Ctrl-C does) and wait for its
        exit (SIGKILL to the group past ``within``); its status. The time
        it took is :attr:`stop_seconds`."""
        assert self.proc is not None
        self.signalled = time.monotonic()
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        try:
            code = await asyncio.to_thread(self.proc.wait, within)
        except subprocess.TimeoutExpired:
            self.kill()
            tail = self.text()[-3000:]
            raise AssertionError(f"still running {within} s after {sig.name}:\n{tail}") from None
        self.stop_seconds = time.monotonic() - self.signalled
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def bad_lines(self, after: str) -> list[str]:
        """Error and traceback lines from the first line containing
        ``after`` (the role's own note that it is stopping) on."""
        lines = self.text().splitlines()
        start = next((i for i, line in enumerate(lines) if after in line), None)
        assert start is not None, f"no {after!r} in the log:\n{self.text()[-3000:]}"
        return [line for line in lines[start:] if _BAD.search(line)]


async def stop_with_peers_killed(
    role: Role, found: Peers, within: float, *, ready_within: float = 60.0
) -> int:
    """Start ``role``, wait for its /readyz, kill its peers without warning,
    then SIGTERM it: its exit status (within ``within`` seconds). The role is
    killed if it is still running after."""
    role.start()
    try:
        await role.ready(ready_within)
        found.kill()
        return await role.stop(signal.SIGTERM, within)
    finally:
        role.kill()


def role_env(work: Path, **settings: str) -> dict[str, str]:
    """The environment of a role: none of the test's own ``WADUD_`` settings,
    a data folder in ``work``, plain-text logs, then ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
    return {
        **env,
        "WADUD_DATA_DIR": str(work / "data"),
        "WADUD_LOG_FORMAT": "text",
        "PYTHONPATH": str(ROOT),
        **settings,
    }


def http_role(role: str, work: Path, peers: Peers | None, **settings: str) -> Role:
    """``wadud serve`` or ``wadud api`` on a free port; on ``peers`` when
    given (else serve's embedded defaults)."""
    port = free_port()
    env = role_env(work, WADUD_SECRET_KEY="stop-test-" + "k" * 32, **settings)
    if peers is not None:
        env.update(WADUD_DATABASE_URL=peers.database_url)
        if peers.redis is not None:
            env.update(WADUD_REDIS_URL=peers.redis.url)
    return Role(
        [role, "--port", str(port)],
        env,
        work / f"{role}.log",
        f"http://127.0.0.1:{port}/readyz",
    )


def media_role(work: Path, peers: Peers, **settings: str) -> Role:
    """``wadud media`` with one worker, its /readyz on a free port."""
    http = free_port()
    assert peers.redis is not None
    env = role_env(work, WADUD_REDIS_URL=peers.redis.url, **settings)
    return Role(
        [
            *("media", "--workers", "1", "--udp-port", "0"),
            *("--http", f"127.0.0.1:{http}", "--node-id", "stop-test"),
        ],
        env,
        work / "media.log",
        f"http://127.0.0.1:{http}/readyz",
    )
