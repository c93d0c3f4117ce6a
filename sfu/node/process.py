"""What runs inside each worker process of ``wadud media`` (:mod:`sfu.node.supervisor`).

DESIGN.md ("Processes"): each worker process owns one UDP port (``media_port
+ index``; 0 lets each take a free port) that all its peers share, runs one
:class:`sfu.node.worker.MediaWorker` on uvloop, takes MediaControl requests from
Redis (:class:`sfu.control.rpc.MediaServer`), keeps its registry entry alive
(:class:`sfu.control.registry.Registration`) and serves its metrics on a unix
socket the supervisor scrapes.

A worker that cannot start (its UDP port taken by another process, ...)
exits with :data:`START_FAILED` (:data:`START_WAITING` for want of Redis)
and leaves its reason in a file beside its metrics socket; it never
registers, so placement never sees it.

A worker dies with its supervisor (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) and
ignores SIGTERM and SIGINT (it starts with them blocked, so not even a
signal during start-up gets through): orders come from the supervisor alone,
which tells it to drain with :data:`DRAIN_SIGNAL`. A draining worker marks
itself ``draining`` in the registry and on the events channel (placement
stops choosing it, owners move its rooms), waits until its rooms set is
empty and its transports are gone (at most ``media_drain_timeout``) and
exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sfu.errors import WorkerStartError
from wadud.messaging.bus import RENEW_WITHIN
from wadud.web import serving

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from sfu.control.registry import Registration
    from sfu.control.rpc import MediaServer
    from sfu.node.worker import MediaWorker
    from wadud.config import Settings

__all__ = [
    "DRAIN_SIGNAL",
    "STARTED",
    "START_FAILED",
    "START_WAITING",
    "WORKER_SIGNALS",
    "WorkerSpec",
    "bind_failure",
    "cannot_start",
    "shed_unused",
    "worker_process",
]

log = logging.getLogger("wadud.sfu.node")

#: prctl(2) option: the signal the kernel sends a child when its parent dies.
_PR_SET_PDEATHSIG = 1
#: A worker's exit status when it could not start; its reason is in the
#: file ``WorkerSpec.start_file`` names.
START_FAILED = 3
#: The same, for want of Redis: shared by the whole deployment and not this
#: host's to fix, so restarted without end and never counted against
#: media_start_retries (/readyz says ``degraded`` meanwhile).
START_WAITING = 4
#: What a worker writes in ``WorkerSpec.start_file`` once it is ready.
STARTED = "ready"
#: Seconds a draining worker with no room placed on it waits for its last
#: transports to close on their own before it closes them.
_STALE_AFTER_DRAIN = 3.0
#: Seconds a drained worker's closing of what it opened may take before the
#: step it waits on is cut (wadud.web.serving.bounded): the events still queued
#: get 2 s to be published (MediaServer.close), the rest takes milliseconds.
_STOP_WITHIN = 3.0


@dataclass(frozen=True)
class _Presence:
    """A worker in one control plane: taking its requests, registered in it."""

    server: MediaServer
    registration: Registration


@dataclass(frozen=True)
class WorkerSpec:
    """What the supervisor hands a worker process (pickled by multiprocessing)."""

    settings: Settings
    node: str
    index: int
    incarnation: str
    port: int
    metrics_socket: str
    parent: int
    start_file: str = ""
    """Where the worker writes ``ready`` once it is, or why it could not start."""

    @property
    def wid(self) -> str:
        return f"{self.node}-{self.index}"


def _note_start(spec: WorkerSpec, text: str) -> None:
    if not spec.start_file:
        return
    try:
        Path(spec.start_file).write_text(text)
    except OSError as exc:
        log.warning("cannot write the start file", extra={"worker": spec.wid, "error": repr(exc)})


def _start_failure(exc: BaseException) -> str:
    """One line that says why a worker could not start."""
    if isinstance(exc, WorkerStartError):
        return str(exc)
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def cannot_start(reason: str, extra: dict[str, Any], exc: BaseException | None = None) -> None:
    """The line a worker that cannot start is logged with (docs/operations.md),
    by the worker itself or by the supervisor that found its port taken."""
    log.warning(
        "media worker cannot start: %s", reason, exc_info=exc, extra={**extra, "reason": reason}
    )


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed", extra={"errno": ctypes.get_errno()})
    # The parent may have died before the line above: then nobody would signal us.
    if os.getppid() != parent:
        os._exit(1)


#: The signal with which the supervisor orders a worker to drain.
DRAIN_SIGNAL = signal.SIGUSR1
#: Blocked in the supervisor while it starts a worker, so the worker begins
#: life with them blocked (the mask survives fork and exec) until it has its
#: own dispositions: SIGTERM and SIGINT ignored, DRAIN_SIGNAL handled.
WORKER_SIGNALS = {signal.SIGTERM, signal.SIGINT, DRAIN_SIGNAL}


def shed_unused() -> None:
    """Keep out of this process what its libraries would load for nothing.

    This module is all a worker process has imported when it starts (with
    the entry script multiprocessing runs again, ``bin.main``: the spec is
    unpickled with this module), and it imports the rest lazily, so this
    runs first. redis-py loads OpenTelemetry's metrics API and SDK when they
    are installed, for an observability a worker never turns on (it traces
    nothing either): 75 modules and psutil, 5 MB resident. None in
    ``sys.modules`` makes those imports fail, which redis-py takes for "not
    installed"."""
    sys.modules.setdefault("opentelemetry", None)  # type: ignore[arg-type]


def worker_process(spec: WorkerSpec) -> None:
    """A worker process's main (the multiprocessing target); exits with its status."""
    # Orders come from the supervisor alone (module docstring).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(spec.parent)
    shed_unused()
    import uvloop

    from wadud.observe import logs

    logs.configure(spec.settings.log_level, spec.settings.log_format)
    code = uvloop.run(_worker_main(spec))
    # Not sys.exit: a spawned process's interpreter teardown (a full garbage
    # collection of the media stack) held a drained worker up for 1.5 s.
    serving.exit_now(code)


class _Load:
    """The load a worker reports at each heartbeat: transports, packets per
    second received and forwarded, and the share of one core it used, all
    over the interval since the last call."""

    def __init__(self, worker: MediaWorker) -> None:
        self.worker = worker
        self._at = time.monotonic()
        self._cpu = time.process_time()
        self._packets = 0
        self._rates = {"pps": 0.0, "cpu": 0.0}

    def __call__(self) -> dict[str, float]:
        snap = self.worker.snapshot()
        totals = snap["totals"]
        packets = int(totals.get("received", 0)) + int(totals.get("forwarded", 0))
        now, cpu = time.monotonic(), time.process_time()
        span = now - self._at
        # Rates over a few milliseconds (the first beat, right after start) say nothing.
        if span >= 0.1:
            self._rates = {
                "pps": max(0, packets - self._packets) / span,
                "cpu": (cpu - self._cpu) / span,
            }
            self._at, self._cpu, self._packets = now, cpu, packets
        return {"transports": float(snap["transports"]), **self._rates}

    def transports(self) -> int:
        return int(self.worker.snapshot()["transports"])


async def _answer_scrape(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The supervisor's scrape of the metrics socket (sfu.node.endpoints.scrape):
    one ``GET /metrics``, answered and the connection closed. A private unix
    socket with one client does not need aiohttp's server, whose import
    alone is 14 MB resident per worker."""
    from wadud.observe import metrics

    try:
        async with asyncio.timeout(5.0):
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /metrics "):
                # The default registry: the worker's families, and
                # wadud.observe.metrics' own (TASKS).
                status, body = b"200 OK", metrics.generate_latest()
            else:
                status, body = b"404 Not Found", b""
            writer.write(
                b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s"
                % (status, metrics.CONTENT_TYPE_LATEST.encode(), len(body), body)
            )
            await writer.drain()
    except (TimeoutError, ValueError, asyncio.IncompleteReadError, ConnectionError):
        pass  # a client that went away or sent no request: nothing to answer
    finally:
        writer.close()


async def _close_server(server: asyncio.AbstractServer) -> None:
    server.close()
    await server.wait_closed()


async def _renew_requests(server: MediaServer, gap: float) -> None:
    """The worker's heartbeat is back after ``gap`` seconds away from Redis:
    requests sent since may sit in the old connection's retransmission
    backoff, so they are taken on a fresh one."""
    if not await server.renew(RENEW_WITHIN):
        log.warning("media requests not renewed in %.0f s", RENEW_WITHIN, extra={"gap": gap})


async def _start(
    spec: WorkerSpec, planes: list[Redis], stack: contextlib.AsyncExitStack
) -> tuple[MediaWorker, list[_Presence], _Load]:
    """Bind the worker's UDP port, take requests and register in each plane,
    and open the metrics socket; each opened piece is closed by ``stack``.
    Raises :class:`WorkerStartError` naming the port when it is taken."""
    from sfu.control.registry import Registration, WorkerInfo
    from sfu.control.rpc import MediaServer
    from sfu.node.worker import MediaWorker

    settings = spec.settings
    worker = MediaWorker.from_settings(settings, spec.port, spec.wid)
    try:
        await worker.start()
    except OSError as exc:
        raise WorkerStartError(bind_failure(spec.port, settings.media_host, exc)) from exc
    stack.push_async_callback(worker.close)
    load = _Load(worker)
    info = WorkerInfo(
        worker=spec.wid,
        incarnation=spec.incarnation,
        node=spec.node,
        region=settings.region,
        index=spec.index,
        host=worker.candidate_addresses[0][0],
        port=worker.port,
        capacity=settings.media_capacity,
        fingerprint=worker.relay_identity()[1],
    )
    presences = []
    for redis in planes:
        server = MediaServer(
            redis,
            worker,
            spec.wid,
            spec.incarnation,
            info=lambda: {"transports": load.transports()},
        )
        await server.start()
        stack.push_async_callback(server.close)
        registration = Registration(
            redis,
            info,
            heartbeat=settings.media_heartbeat,
            ttl=settings.media_worker_ttl,
            load=load,
            lapsed=partial(_renew_requests, server),
        )
        await registration.start()
        stack.push_async_callback(registration.close)
        presences.append(_Presence(server, registration))
    scrapes = await asyncio.start_unix_server(_answer_scrape, spec.metrics_socket)
    stack.push_async_callback(_close_server, scrapes)
    for presence in presences:
        await presence.server.lifecycle("ready")
    return worker, presences, load


async def _worker_main(spec: WorkerSpec) -> int:
    from redis import exceptions

    from sfu.control import registry
    from sfu.node.settings import control_planes

    settings = spec.settings
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(DRAIN_SIGNAL, stop.set)
    # A drain ordered while this process started is delivered now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
    planes = control_planes(settings)
    extra = {"worker": spec.wid, "incarnation": spec.incarnation}
    # What _start opened, closed newest first once drained; each step
    # bounded (serving.bounded), so a close that waits on a peer cannot hold
    # the drain past media_drain_timeout and have the supervisor kill it.
    stack = contextlib.AsyncExitStack()
    try:
        for redis in planes:
            stack.push_async_callback(redis.aclose)
        try:
            worker, presences, load = await _start(spec, planes, stack)
        except Exception as exc:
            # The supervisor counts it and says so (Supervisor._start_failed).
            # A port taken or Redis away is said in full by the reason; only
            # something unforeseen (a bug) needs its traceback.
            reason = _start_failure(exc)
            unreachable = (exceptions.ConnectionError, exceptions.TimeoutError)
            foreseen = isinstance(exc, (WorkerStartError, *unreachable))
            cannot_start(reason, {**extra, "port": spec.port}, None if foreseen else exc)
            _note_start(spec, reason)
            return START_WAITING if isinstance(exc, unreachable) else START_FAILED
        _note_start(spec, STARTED)
        log.info("media worker ready", extra={**extra, "port": worker.port})

        await stop.wait()
        log.info("media worker draining", extra=extra)
        # Every Redis call here is bounded: a drain must end within
        # media_drain_timeout whatever Redis does, or the supervisor kills
        # the worker and the node exits 1.
        reachable = True
        try:
            async with asyncio.timeout(2.0):
                for presence in presences:
                    await presence.registration.set_state(registry.DRAINING)
                    await presence.server.lifecycle("draining")
        except Exception:
            reachable = False
        deadline = loop.time() + settings.media_drain_timeout
        drained_at = loop.time()
        said = False
        while loop.time() < deadline:
            if not reachable and load.transports() == 0:
                # No room's owner can move anything while Redis is out of
                # reach, and no call has media here to lose: waiting out
                # media_drain_timeout would only hold up the stop.
                log.info("drain: redis out of reach and no transport here; stopping", extra=extra)
                break
            try:
                async with asyncio.timeout(1.0):
                    rooms = sum([await p.registration.rooms() for p in presences])
            except Exception as exc:
                reachable = False
                if not said:
                    # Once: with calls here, the drain waits for Redis to
                    # come back (their rooms then move) or for the timeout.
                    said = True
                    log.warning(
                        "drain: cannot read the rooms set", extra={**extra, "error": repr(exc)}
                    )
                await asyncio.sleep(0.2)
                continue
            reachable = True
            if rooms == 0 and load.transports() == 0:
                break
            if rooms == 0 and loop.time() - drained_at > _STALE_AFTER_DRAIN:
                # No room is placed here any more: what is left are legs
                # a signalling call set up just before its room moved,
                # whose clients went to the new worker. Waiting for them
                # to time out (30 s) would outlast media_drain_timeout.
                with contextlib.suppress(Exception):
                    for name in worker.rooms():
                        await worker.close_room(name)
            await asyncio.sleep(0.2)
        else:
            log.warning("drain timed out; stopping anyway", extra=extra)
        if reachable:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    for presence in presences:
                        await presence.server.lifecycle("stopped")
    finally:
        await serving.bounded(stack.aclose(), _STOP_WITHIN)
    log.info("media worker stopped", extra=extra)
    return 0


def bind_failure(port: int, host: str, exc: OSError) -> str:
    """A port that cannot be bound, said the same by a worker and its node."""
    return f"cannot bind UDP port {port} on {host}: {exc.strerror or exc}"
