"""The weak links of the weak-network tests (tests/signalling/
test_weak_network.py): a coturn relay in the test's namespace, and a
:class:`CappedPath` in front of it, a userspace UDP relay that shapes each
TURN session to a rate (a drop-tail queue of 250 ms, as a mobile link's
buffer) with loss, and can change both live, as a phone's link gets worse
or better. The kernel here has no netem, so the shaping is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.browser import (
    DriverError,
    run_scenario,
)

TURN_USER, TURN_PASS = "weak", "link"
TURN_PORT = 3478  # coturn
CAPPED_PORT = 3480  # the capped path to it


def turn_groups(work: Path) -> list[int]:
    path = work / "turn-groups"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


async def run_with_turn(
    module: str,
    scenario: str,
    database_url: str,
    work: Path,
    budget: float,
    *,
    needs: str = "turnserver",
    namespace: list[str] | None = None,
) -> dict[str, Any]:
    """:func:`tests.browser.run_scenario` for a driver that may start coturn
    (:class:`Turn`), whose process groups are killed with the driver's;
    skipped where the command ``needs`` is not installed."""
    if shutil.which(needs) is None:
        pytest.skip(f"needs {needs}")
    return await run_scenario(
        module, scenario, database_url, work, budget, namespace=namespace, also_kill=turn_groups
    )


class Turn:
    """One coturn ``turnserver`` in its own process group: a static user,
    loopback peers allowed, ``max_bps`` (bytes/s per session and direction)
    when capped."""

    def __init__(self, work: Path, port: int, relay_ports: int, max_bps: int | None = None) -> None:
        self.work, self.port, self.max_bps = work, port, max_bps
        self.relay_ports = relay_ports
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        cap = [f"--max-bps={self.max_bps}"] if self.max_bps else []
        log = os.open(self.work / f"turn-{self.port}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.proc = await asyncio.create_subprocess_exec(
            "turnserver", "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
            f"--listening-port={self.port}", "--lt-cred-mech", f"--user={TURN_USER}:{TURN_PASS}",
            "--realm=wadud.test", "--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli",
            f"--min-port={self.relay_ports}", f"--max-port={self.relay_ports + 999}",
            f"--pidfile={self.work}/turn-{self.port}.pid",
            "--log-file=stdout", "--simple-log", "--verbose",
            *cap,
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        os.close(log)
        with (self.work / "turn-groups").open("a") as f:
            f.write(f"{self.proc.pid}\n")
        await asyncio.sleep(0.5)
        if self.proc.returncode is not None:
            raise DriverError(f"turnserver on {self.port} exited at once")

    async def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()
        self.proc = None


class Shaper:
    """One direction of a narrow link: datagrams leave at most ``rate``
    bytes/s (None: no limit) after waiting in a queue of at most
    ``queue`` seconds; a datagram that would wait longer is dropped (a
    mobile link's drop-tail buffer). A share ``loss`` of datagrams is lost
    at random besides (seeded: the same run loses the same ones)."""

    def __init__(self, rate: float | None, queue: float = 0.25, loss: float = 0.0,
                 seed: int = 11) -> None:  # fmt: skip
        self.rate, self.queue, self.loss = rate, queue, loss
        self.random = random.Random(seed)
        self.busy_until = 0.0
        self.sent = self.dropped = self.lost = 0

    def when(self, size: int, now: float) -> float | None:
        if self.loss and self.random.random() < self.loss:
            self.lost += 1
            return None
        if self.rate is None:
            self.sent += 1
            return now
        start = max(now, self.busy_until)
        if start - now > self.queue:
            self.dropped += 1
            return None
        self.busy_until = start + size / self.rate
        self.sent += 1
        return self.busy_until


class _Front(asyncio.DatagramProtocol):
    def __init__(self, path: CappedPath) -> None:
        self.path = path

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.path.up(data, (addr[0], addr[1]))


class _Back(asyncio.DatagramProtocol):
    def __init__(self, path: CappedPath, client: tuple[str, int]) -> None:
        self.path, self.client = path, client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.path.down(data, self.client)


class CappedPath:
    """A UDP relay in front of a TURN server that caps each client socket's
    traffic (one TURN session each, as coturn's ``--max-bps`` does) at
    ``rate`` bytes/s each way; :meth:`set_rate` changes it live (None lifts
    the cap), as a phone's link gets worse or better."""

    def __init__(self, upstream: tuple[str, int], rate: float | None, loss: float = 0.0) -> None:
        self.upstream, self.rate, self.loss = upstream, rate, loss
        self.front: asyncio.DatagramTransport | None = None
        self.backs: dict[tuple[str, int], asyncio.DatagramTransport] = {}
        self.shapers: dict[tuple[tuple[str, int], str], Shaper] = {}

    async def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.front, _ = await loop.create_datagram_endpoint(
            lambda: _Front(self), local_addr=("127.0.0.1", port)
        )

    def set_rate(self, rate: float | None) -> None:
        self.rate = rate
        for shaper in self.shapers.values():
            shaper.rate = rate

    def set_loss(self, loss: float) -> None:
        """Lose this share of datagrams at random, each way (0: none)."""
        self.loss = loss
        for shaper in self.shapers.values():
            shaper.loss = loss

    def _shaper(self, client: tuple[str, int], way: str) -> Shaper:
        key = (client, way)
        if key not in self.shapers:
            self.shapers[key] = Shaper(self.rate, loss=self.loss, seed=len(self.shapers))
        return self.shapers[key]

    def _later(self, when: float, transport: asyncio.DatagramTransport, data: bytes,
               dest: tuple[str, int] | None) -> None:  # fmt: skip
        loop = asyncio.get_running_loop()

        def send() -> None:
            if not transport.is_closing():
                transport.sendto(data, dest)

        loop.call_at(loop.time() + max(0.0, when - time.monotonic()), send)

    def up(self, data: bytes, client: tuple[str, int]) -> None:
        back = self.backs.get(client)
        if back is None:
            task = asyncio.ensure_future(self._open(client, data))
            self.backs[client] = task  # type: ignore[assignment]
            return
        if isinstance(back, asyncio.Future):
            return  # still opening: dropped, the client retransmits
        when = self._shaper(client, "up").when(len(data), time.monotonic())
        if when is not None:
            self._later(when, back, data, None)

    async def _open(self, client: tuple[str, int], first: bytes) -> None:
        loop = asyncio.get_running_loop()
        back, _ = await loop.create_datagram_endpoint(
            lambda: _Back(self, client), remote_addr=self.upstream
        )
        self.backs[client] = back
        back.sendto(first)

    def down(self, data: bytes, client: tuple[str, int]) -> None:
        when = self._shaper(client, "down").when(len(data), time.monotonic())
        if when is not None and self.front is not None:
            self._later(when, self.front, data, client)

    def stats(self) -> dict[str, Any]:
        return {f"{c[1]}-{w}": [s.sent, s.dropped, s.lost] for (c, w), s in self.shapers.items()}

    def close(self) -> None:
        for back in self.backs.values():
            if isinstance(back, asyncio.DatagramTransport):
                back.close()
        if self.front is not None:
            self.front.close()


class PathProcess:
    """A :class:`CappedPath` in a process of its own, driven over a pipe.

    In the driver's process its timers shared one event loop with the app,
    the media worker and the pages' servers: when that loop was busy, every
    datagram waited longer than its queue said, and the worker's
    delay-based estimator read the driver's load as a queue on the link
    (its estimate swung between 70 and 430 kbit/s on a 500 kbit/s link
    that dropped nothing). Here the delay is the queue's."""

    def __init__(self, upstream: tuple[str, int], rate: float | None, loss: float = 0.0) -> None:
        self.upstream, self.rate, self.loss = upstream, rate, loss
        self.conn: Any = None
        self.proc: Any = None

    async def start(self, port: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_path_process, args=(child, self.upstream, self.rate, self.loss, port)
        )
        self.proc.start()
        loop = asyncio.get_running_loop()
        ready = await asyncio.wait_for(loop.run_in_executor(None, self.conn.recv), 30)
        if ready != "ready":
            raise DriverError(f"capped path: {ready}")

    def _ask(self, *command: Any) -> Any:
        self.conn.send(command)
        return self.conn.recv()

    def set_rate(self, rate: float | None) -> None:
        self._ask("rate", rate)

    def set_loss(self, loss: float) -> None:
        self._ask("loss", loss)

    def stats(self) -> dict[str, Any]:
        return dict(self._ask("stats"))

    def close(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError, EOFError):
            self._ask("close")
        self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.proc = None


def _path_process(conn: Any, upstream: tuple[str, int], rate: float | None, loss: float,
                  port: int) -> None:  # fmt: skip
    """The child of :class:`PathProcess`: the path, and its commands."""

    async def serve() -> None:
        path = CappedPath(upstream, rate, loss)
        await path.start(port)
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def command() -> None:
            try:
                what, *args = conn.recv()
            except EOFError:
                what, args = "close", []
            if what == "rate":
                path.set_rate(args[0])
            elif what == "loss":
                path.set_loss(args[0])
            elif what == "close" and not done.done():
                done.set_result(None)
            with contextlib.suppress(OSError):
                conn.send(path.stats() if what == "stats" else "ok")

        loop.add_reader(conn.fileno(), command)
        conn.send("ready")
        await done
        path.close()

    asyncio.run(serve())


def relay_only(*urls: str) -> str:
    """A script run before the page's own: every RTCPeerConnection goes
    through these TURN servers only."""
    servers = [{"urls": u, "username": TURN_USER, "credential": TURN_PASS} for u in urls]
    return (
        "(() => { const Native = window.RTCPeerConnection;"
        f" const servers = {json.dumps(servers)};"
        " class Relayed extends Native { constructor(config, ...rest) {"
        "   super({...(config || {}), iceServers: servers, iceTransportPolicy: 'relay'}, ...rest);"
        " } }"
        " window.RTCPeerConnection = Relayed; })();"
    )
