"""``wadud media``: a media node, one supervisor and one worker process per core.

DESIGN.md ("Processes"): each worker process owns one UDP port (``media_port
+ index``; 0 lets each take a free port) that all its peers share, runs one
:class:`sfu.node.worker.MediaWorker` on uvloop, takes MediaControl requests from
Redis (:class:`sfu.control.rpc.MediaServer`) and keeps its registry entry alive
(:class:`sfu.control.registry.Registration`). The supervisor starts the workers,
restarts one that dies (a new incarnation, after a backoff that grows with
crashes in a row, ``media_restart_backoff`` doubling up to
``media_restart_backoff_max``) and at once publishes ``stopped`` for the dead
incarnation, so room owners re-place its rooms without waiting for the
registry TTL.

A worker that cannot start (its UDP port taken by another process, ...)
exits with :data:`START_FAILED` and leaves its reason in a file beside its
metrics socket; it never registers, so placement never sees it. A port the
supervisor finds taken as it is about to start a worker fails that start
the same way, with no process started. After
``media_start_retries`` such failures in a row for the same reason the
supervisor logs an error naming the port and the node answers ``/readyz``
with 503 ``failing``; restarts go on, so a port that frees up heals the node.
Once every worker is in that state the node exits 1: a supervisor (systemd's
``Restart=``, a Kubernetes restart count) sees a node that cannot work,
instead of one that answers ``/healthz`` and carries nothing. It serves, on
``media_http``:

* ``/healthz``: 200 while the supervisor runs;
* ``/readyz``: 200 when Redis answers and every worker's entry is there with
  its current incarnation and ``ready``; else 503 with a JSON reason
  (``draining``, ``failing`` naming the port a worker cannot bind,
  ``degraded``);
* ``/metrics``: every worker's metrics (the ``sfu_*`` families among them),
  scraped from each worker's unix socket and labelled ``worker``, and the
  node's own gauges.

Workers are children in the supervisor's process group with a parent-death
signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``): a supervisor killed with
SIGKILL takes them with it, so no orphan keeps a UDP port or a registry entry
alive. SIGTERM or SIGINT on the supervisor drains the node; the supervisor
orders each worker to drain with SIGUSR1. Workers ignore SIGTERM and SIGINT
(they start with them blocked, so not even a signal during start-up gets
through): a signal sent to the whole process group (Ctrl-C in a terminal,
systemd's default ``KillMode``, ``kill -- -PGID``) reaches the supervisor,
which drains in order, and never a worker first, which would exit before the
drain began and be taken for a crash. A draining worker
marks itself ``draining`` in the registry and on the events channel
(placement stops choosing it, owners move its rooms), waits until its rooms
set is empty and its transports are gone (at most ``media_drain_timeout``)
and exits 0; the supervisor exits 0 when they all did.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from redis import exceptions

from sfu.control import registry, rpc
from sfu.control.registry import Registration, WorkerInfo
from sfu.control.rpc import MediaServer
from sfu.errors import WorkerStartError
from wadud import metrics, serving
from wadud.bus import RENEW_WITHIN, redis_client

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from sfu.node.worker import MediaWorker
    from wadud.config import Settings

__all__ = ["Supervisor", "WorkerSpec", "http_address", "node_id", "run", "worker_count"]

log = logging.getLogger("wadud.sfu.node")

#: prctl(2) option: the signal the kernel sends a child when its parent dies.
_PR_SET_PDEATHSIG = 1
#: How long a worker must have run for its next crash to count as the first
#: again (the backoff between restarts is media_restart_backoff, doubling up
#: to media_restart_backoff_max).
_STABLE_AFTER = 30.0
#: A worker's exit status when it could not start; its reason is in the
#: file ``WorkerSpec.start_file`` names.
START_FAILED = 3
#: The same, for want of Redis: shared by the whole deployment and not this
#: host's to fix, so restarted without end and never counted against
#: media_start_retries (/readyz says ``degraded`` meanwhile).
START_WAITING = 4
#: What a worker writes in ``WorkerSpec.start_file`` once it is ready.
_STARTED = "ready"
#: Seconds a draining worker with no room placed on it waits for its last
#: transports to close on their own before it closes them.
_STALE_AFTER_DRAIN = 3.0
#: Seconds the supervisor gives its workers beyond media_drain_timeout.
_DRAIN_GRACE = 10.0
#: Seconds a drained worker's closing of what it opened may take before the
#: step it waits on is cut (wadud.serving.bounded): the events still queued
#: get 2 s to be published (MediaServer.close), the rest takes milliseconds.
_STOP_WITHIN = 3.0


def node_id(settings: Settings) -> str:
    """``media_node_id``, else the host name and a short random suffix."""
    return settings.media_node_id or f"{socket.gethostname()}-{secrets.token_hex(2)}"


def worker_count(settings: Settings) -> int:
    """``media_workers``, 0 meaning one per core."""
    return settings.media_workers if settings.media_workers > 0 else (os.cpu_count() or 1)


def _redis(url: str) -> Redis:
    client: Redis = redis_client(url)
    return client


def _planes(settings: Settings) -> list[Redis]:
    """A Redis client per control plane the node's workers serve: the global
    one and, with ``redis_region_url``, the region's own (signalling.planes)."""
    return [_redis(url) for url in (settings.redis_url, settings.redis_region_url) if url]


@dataclass(frozen=True)
class _Presence:
    """A worker in one control plane: taking its requests, registered in it."""

    server: MediaServer
    registration: Registration


# --- the worker process ------------------------------------------------------------------


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


def _cannot_start(reason: str, extra: dict[str, Any], exc: BaseException | None = None) -> None:
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
_WORKER_SIGNALS = {signal.SIGTERM, signal.SIGINT, DRAIN_SIGNAL}


def worker_process(spec: WorkerSpec) -> None:
    """A worker process's main (the multiprocessing target); exits with its status."""
    # Orders come from the supervisor alone (module docstring).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(spec.parent)
    import uvloop

    from wadud import logs

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


async def _metrics(_: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


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
    from sfu.node.worker import MediaWorker

    settings = spec.settings
    worker = MediaWorker.from_settings(settings, spec.port, spec.wid)
    try:
        await worker.start()
    except OSError as exc:
        raise WorkerStartError(_bind_failure(spec.port, settings.media_host, exc)) from exc
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
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.UnixSite(runner, spec.metrics_socket).start()
    for presence in presences:
        await presence.server.lifecycle("ready")
    return worker, presences, load


async def _worker_main(spec: WorkerSpec) -> int:
    settings = spec.settings
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(DRAIN_SIGNAL, stop.set)
    # A drain ordered while this process started is delivered now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_SIGNALS)
    planes = _planes(settings)
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
            _cannot_start(reason, {**extra, "port": spec.port}, None if foreseen else exc)
            _note_start(spec, reason)
            return START_WAITING if isinstance(exc, unreachable) else START_FAILED
        _note_start(spec, _STARTED)
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


# --- the supervisor ----------------------------------------------------------------------


@dataclass
class _Slot:
    """One worker position (index, UDP port) and the process filling it now."""

    index: int
    wid: str
    metrics_socket: str
    port: int
    """The UDP port it binds (0: any free one)."""
    incarnation: str = ""
    process: BaseProcess | None = None
    started: float = 0.0
    crashes: int = 0
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    restart: asyncio.TimerHandle | None = None
    start_failure: str = ""
    """Why its last process could not start; empty once one did."""
    start_failures: int = 0
    """Processes in a row that could not start for that same reason."""
    start_failures_total: int = 0
    port_taken: str = ""
    """Why the port was taken when the supervisor last tried it, before
    starting a process (empty: it was free, or the process is ready). Such
    a try counts as a failed start, and no process is started for it."""

    @property
    def start_file(self) -> str:
        return self.metrics_socket.removesuffix(".sock") + ".start"

    def check_started(self) -> None:
        """Forget past start failures once the current process says it is ready."""
        if not (self.start_failure or self.port_taken) or self.process is None:
            return
        if _read_start(self, 0) is None:
            self.start_failure, self.start_failures, self.port_taken = "", 0, ""


SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("media_supervisor")


class Supervisor:
    """Starts, watches, restarts and drains the worker processes of one node."""

    def __init__(self, settings: Settings, *, node: str | None = None) -> None:
        self.settings = settings
        self.node = node or node_id(settings)
        self.count = worker_count(settings)
        self._runtime = Path(tempfile.mkdtemp(prefix="wadud-media-"))
        base = settings.media_port
        self.slots = [
            _Slot(
                i,
                f"{self.node}-{i}",
                str(self._runtime / f"worker-{i}.sock"),
                port=base + i if base else 0,
            )
            for i in range(self.count)
        ]
        self.draining = False
        self.failed = False
        """Every worker failed to start media_start_retries times: the node exits 1."""
        self.planes = _planes(settings)
        #: The plane whose registry says whether the node is ready: the
        #: region's own, where the region's rooms are placed, if it has one.
        self.redis = self.planes[-1]
        self._ctx = multiprocessing.get_context("spawn")
        self._done = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_NodeCollector(self))
        # The supervisor's own tasks, in the same family as its workers'
        # (wadud.metrics.TASKS, which each worker's registry holds too).
        self._own = CollectorRegistry(auto_describe=False)
        self._own.register(metrics.TASKS)

    # -- processes ---------------------------------------------------------------------

    def running(self) -> list[_Slot]:
        return [s for s in self.slots if s.process is not None]

    def _spawn(self, slot: _Slot) -> None:
        slot.restart = None
        if self.draining or self.failed:
            return
        assert self._loop is not None
        slot.incarnation = secrets.token_hex(8)
        spec = WorkerSpec(
            settings=self.settings,
            node=self.node,
            index=slot.index,
            incarnation=slot.incarnation,
            port=slot.port,
            metrics_socket=slot.metrics_socket,
            parent=os.getpid(),
            start_file=slot.start_file,
        )
        for path in (slot.metrics_socket, slot.start_file):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        # A port taken now fails the start here, not an interpreter start
        # later (the worker imports the media stack before it binds: seconds,
        # and 15 s on a loaded host, for each of media_start_retries tries).
        slot.port_taken = _port_taken(self.settings.media_host, slot.port)
        if slot.port_taken:
            extra = {"worker": slot.wid, "port": slot.port}
            _cannot_start(slot.port_taken, extra)
            slot.crashes += 1
            self._not_started(slot, slot.port_taken, extra)
            return
        # daemon: if the supervisor itself fails, multiprocessing ends the workers at exit.
        process = self._ctx.Process(
            target=worker_process, args=(spec,), name=f"wadud-media-{slot.wid}", daemon=True
        )
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        slot.process = process
        slot.started = time.monotonic()
        self._loop.add_reader(process.sentinel, self._exited, slot, process)
        log.info(
            "media worker started",
            extra={"worker": slot.wid, "incarnation": slot.incarnation, "pid": process.pid},
        )

    def _exited(self, slot: _Slot, process: BaseProcess) -> None:
        assert self._loop is not None
        self._loop.remove_reader(process.sentinel)
        self._reap(slot, process)

    def _reap(self, slot: _Slot, process: BaseProcess) -> None:
        assert self._loop is not None
        # The sentinel pipe closes while the child exits, a moment before
        # waitpid can collect it.
        process.join(0)
        if process.exitcode is None:
            self._loop.call_later(0.01, self._reap, slot, process)
            return
        code = process.exitcode
        process.close()
        if slot.process is process:
            slot.process = None
        slot.exit_codes.append(code)
        incarnation = slot.incarnation
        extra = {"worker": slot.wid, "incarnation": incarnation, "code": code}
        self._loop.create_task(self._forget(slot.wid, incarnation))
        if self.draining or self.failed:
            log.info("media worker exited", extra=extra)
            if not self.running():
                self._done.set()
            return
        uptime = time.monotonic() - slot.started
        slot.crashes = 1 if uptime > _STABLE_AFTER else slot.crashes + 1
        failure = _read_start(slot, code)
        if failure is None:
            slot.start_failure, slot.start_failures = "", 0
            delay = self._backoff(slot)
            log.error("media worker died; restarting", extra={**extra, "restart_in": delay})
            self._restart(slot, delay)
        elif code == START_WAITING:
            # Breaks a run of failures of another kind; readiness names it.
            slot.start_failure, slot.start_failures = failure, 0
            delay = self._backoff(slot)
            log.warning(
                "media worker could not start; restarting",
                extra={**extra, "restart_in": delay, "reason": failure},
            )
            self._restart(slot, delay)
        else:
            self._not_started(slot, failure, extra)

    def _backoff(self, slot: _Slot) -> float:
        """Seconds before the slot's next process: none after a first crash,
        then media_restart_backoff doubling up to its max."""
        settings = self.settings
        if slot.crashes <= 1:
            return 0.0
        return float(
            min(
                settings.media_restart_backoff_max,
                settings.media_restart_backoff * 2 ** (slot.crashes - 2),
            )
        )

    def _restart(self, slot: _Slot, delay: float) -> None:
        assert self._loop is not None
        slot.restarts += 1
        slot.restart = self._loop.call_later(delay, self._spawn, slot)

    def _not_started(self, slot: _Slot, failure: str, extra: dict[str, Any]) -> None:
        """A start that failed for ``failure`` (the worker said so as it
        exited, or its port was taken before it began): counted, and tried
        again after the backoff unless the node gives up."""
        if self._start_failed(slot, failure):
            return
        delay = self._backoff(slot)
        log.warning(
            "media worker could not start; restarting",
            extra={**extra, "restart_in": delay, "reason": failure},
        )
        self._restart(slot, delay)

    def _start_failed(self, slot: _Slot, reason: str) -> bool:
        """Count a worker that could not start; True when the node gives up
        (every worker failed its retries) and is on its way out."""
        same = reason == slot.start_failure
        slot.start_failure = reason
        slot.start_failures = slot.start_failures + 1 if same else 1
        slot.start_failures_total += 1
        retries = self.settings.media_start_retries
        extra = {"worker": slot.wid, "port": slot.port, "reason": reason}
        if slot.start_failures == retries:
            log.error(
                "media worker on UDP port %d cannot start (%d times in a row: %s);"
                " the node is not ready",
                slot.port,
                retries,
                reason,
                extra=extra,
            )
        if not all(s.process is None and s.start_failures >= retries for s in self.slots):
            return False
        self.failed = True
        for other in self.slots:
            if other.restart is not None:
                other.restart.cancel()
                other.restart = None
        log.error(
            "media node stopping: no worker can start (%s)",
            "; ".join(f"{s.wid}: {s.start_failure}" for s in self.slots),
            extra={"node": self.node, "ports": [s.port for s in self.slots]},
        )
        self._done.set()
        return True

    async def _forget(self, wid: str, incarnation: str) -> None:
        """A dead incarnation: tell room owners now, and drop its registry entry."""
        for redis in self.planes:
            try:
                await rpc.publish_lifecycle(redis, wid, incarnation, "stopped")
                await registry.forget(redis, wid, incarnation)
            except Exception as exc:
                log.warning(
                    "could not announce a stopped worker; its entry expires by itself",
                    extra={"worker": wid, "error": repr(exc)},
                )

    def drain(self) -> None:
        """Stop taking work: every worker drains and exits; then the supervisor does."""
        if self.draining:
            return
        self.draining = True
        log.info("media node draining", extra={"node": self.node})
        for slot in self.slots:
            if slot.restart is not None:
                slot.restart.cancel()
                slot.restart = None
            if slot.process is not None and slot.process.pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(slot.process.pid, DRAIN_SIGNAL)
        if self._loop is not None:
            self._watchdog = self._loop.create_task(self.watchdog())
        if not self.running():
            self._done.set()

    async def run(self) -> int:
        """Run the node until drained; 0 when every worker exited cleanly."""
        loop = self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.drain)
        app = web.Application()
        app[SUPERVISOR] = self
        _NodeApi(self).register(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = http_address(self.settings.media_http)
        try:
            await web.TCPSite(runner, host, port).start()
            log.info(
                "media node started",
                extra={"node": self.node, "workers": self.count, "http": self.settings.media_http},
            )
            for slot in self.slots:
                self._spawn(slot)
            await self._done.wait()
            return await self._finish()
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            await runner.cleanup()
            for redis in self.planes:
                await redis.aclose()
            shutil.rmtree(self._runtime, ignore_errors=True)

    async def _finish(self) -> int:
        # _done is set when every worker failed its start retries, or while
        # draining when the last worker exited.
        if self.failed:
            await asyncio.sleep(0.05)
            return 1
        # A worker that could not start had nothing to drain.
        clean = (0, START_FAILED, START_WAITING)
        failed = [s.wid for s in self.slots if s.exit_codes and s.exit_codes[-1] not in clean]
        # Let the last "stopped" announcements go out before the connection closes.
        await asyncio.sleep(0.05)
        if failed:
            log.error("media node stopped; workers failed to drain", extra={"workers": failed})
            return 1
        log.info("media node stopped", extra={"node": self.node})
        return 0

    async def watchdog(self) -> None:
        """After a drain began: SIGKILL workers still there after their timeout."""
        await asyncio.sleep(self.settings.media_drain_timeout + _DRAIN_GRACE)
        for slot in self.running():
            if slot.process is not None and slot.process.pid is not None:
                log.error("media worker did not drain; killing it", extra={"worker": slot.wid})
                with contextlib.suppress(OSError):
                    os.kill(slot.process.pid, signal.SIGKILL)

    # -- readiness and metrics ---------------------------------------------------------

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        if self.draining:
            return False, {"status": "draining", "reason": "the node is draining (SIGTERM)"}
        try:
            await self.redis.ping()
            async with self.redis.pipeline(transaction=False) as pipe:
                for slot in self.slots:
                    pipe.hgetall(registry.worker_key(slot.wid))
                entries: list[dict[str, str]] = await pipe.execute()
        except Exception as exc:
            return False, {"status": "degraded", "reason": f"redis: {exc!r}"}
        workers: list[dict[str, Any]] = []
        waiting: list[str] = []
        failing: list[str] = []
        retries = self.settings.media_start_retries
        for slot, entry in zip(self.slots, entries, strict=True):
            slot.check_started()
            ready = (
                slot.process is not None
                and entry.get("incarnation") == slot.incarnation
                and entry.get("state") == registry.READY
            )
            about: dict[str, Any] = {
                "worker": slot.wid,
                "incarnation": slot.incarnation,
                "port": slot.port,
                "ready": ready,
            }
            if not ready and slot.start_failure:
                about["start_failure"] = slot.start_failure
                about["start_failures"] = slot.start_failures
                text = f"{slot.wid} cannot start: {slot.start_failure}"
                if slot.start_failures >= retries:
                    failing.append(f"{text} ({slot.start_failures} times in a row)")
                else:
                    waiting.append(f"{slot.wid} (last start: {slot.start_failure})")
            elif not ready and slot.port_taken:
                about["port_taken"] = slot.port_taken
                waiting.append(f"{slot.wid} ({slot.port_taken})")
            elif not ready:
                waiting.append(slot.wid)
            workers.append(about)
        if failing:
            reason = "; ".join(failing + [f"not ready yet: {w}" for w in waiting])
            return False, {"status": "failing", "reason": reason, "workers": workers}
        if waiting:
            reason = "workers not registered and ready: " + ", ".join(waiting)
            return False, {"status": "degraded", "reason": reason, "workers": workers}
        return True, {"status": "ready", "workers": workers}

    async def scrape(self) -> bytes:
        """Every running worker's metrics with a ``worker`` label, and the node's."""
        slots = self.running()
        texts = await asyncio.gather(*(_scrape(s.metrics_socket) for s in slots))
        labelled: list[tuple[str | None, str]] = [
            (s.wid, t) for s, t in zip(slots, texts, strict=True) if t
        ]
        labelled.append((None, generate_latest(self._own).decode()))
        collector = _Relabelled(labelled)
        out = CollectorRegistry(auto_describe=False)
        out.register(collector)
        return generate_latest(out) + generate_latest(self._registry)


def _port_taken(host: str, port: int) -> str:
    """Why the worker could not bind UDP ``port`` on ``host`` now, as the
    worker would say it ("" when it could, or ``port`` is 0: any)."""
    if not port:
        return ""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            return _bind_failure(port, host, exc)
    return ""


def _bind_failure(port: int, host: str, exc: OSError) -> str:
    """A port that cannot be bound, said the same by a worker and its node."""
    return f"cannot bind UDP port {port} on {host}: {exc.strerror or exc}"


def _read_start(slot: _Slot, code: int) -> str | None:
    """None when the slot's exited process had started; else why it could not."""
    try:
        text = Path(slot.start_file).read_text().strip()
    except OSError:
        text = ""
    if text == _STARTED:
        return None
    if text:
        return text
    if code < 0:
        return f"killed by signal {-code} before it was ready"
    return f"exited with status {code} before it was ready"


def http_address(text: str) -> tuple[str, int]:
    """``media_http`` as (host, port); ValueError when it is not ADDR:PORT."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"media_http must be ADDR:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def _scrape(path: str) -> str:
    try:
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=path),
                timeout=aiohttp.ClientTimeout(total=2.0),
            ) as session,
            session.get("http://worker/metrics") as response,
        ):
            return await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("cannot scrape a media worker", extra={"socket": path, "error": repr(exc)})
        return ""


class _Relabelled(Collector):
    """Workers' exposition text parsed back into families, one family per
    name across workers, each sample labelled with its worker (a text given
    with no worker, the supervisor's own, keeps its labels)."""

    def __init__(self, texts: list[tuple[str | None, str]]) -> None:
        self.texts = texts

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for wid, text in self.texts:
            for family in text_string_to_metric_families(text):
                samples = [
                    s if wid is None else s._replace(labels={**s.labels, "worker": wid})
                    for s in family.samples
                ]
                merged = families.setdefault(family.name, family)
                if merged is family:
                    merged.samples = samples
                else:
                    merged.samples.extend(samples)
        yield from families.values()


class _NodeCollector(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        sup = self.supervisor
        running = GaugeMetricFamily(
            "wadud_media_workers_running", "Worker processes of this media node running now."
        )
        running.add_metric([], len(sup.running()))
        configured = GaugeMetricFamily(
            "wadud_media_workers_configured", "Worker processes this media node keeps running."
        )
        configured.add_metric([], sup.count)
        draining = GaugeMetricFamily("wadud_media_draining", "1 while the node drains.")
        draining.add_metric([], 1 if sup.draining else 0)
        restarts = CounterMetricFamily(
            "wadud_media_worker_restarts",
            "Worker processes restarted after they died, by worker.",
            labels=["worker"],
        )
        start_failures = CounterMetricFamily(
            "wadud_media_worker_start_failures",
            "Worker processes that could not start (their UDP port taken, ...), by worker.",
            labels=["worker"],
        )
        retries = sup.settings.media_start_retries
        failed = GaugeMetricFamily(
            "wadud_media_workers_failed",
            "Workers that failed to start media_start_retries times in a row (the"
            " node is not ready), by worker and port.",
            labels=["worker", "port"],
        )
        for slot in sup.slots:
            slot.check_started()
            restarts.add_metric([slot.wid], slot.restarts)
            start_failures.add_metric([slot.wid], slot.start_failures_total)
            failed.add_metric(
                [slot.wid, str(slot.port)], 1 if slot.start_failures >= retries else 0
            )
        yield running
        yield configured
        yield draining
        yield restarts
        yield start_failures
        yield failed


class _NodeApi:
    """/healthz, /readyz and /metrics of the supervisor."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def register(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)

    async def healthz(self, _: web.Request) -> web.Response:
        sup = self.supervisor
        workers = {s.wid: (s.process.pid if s.process else None) for s in sup.slots}
        return web.json_response(
            {"status": "ok", "node": sup.node, "draining": sup.draining, "workers": workers}
        )

    async def readyz(self, _: web.Request) -> web.Response:
        ready, body = await self.supervisor.readiness()
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(self, _: web.Request) -> web.Response:
        body = await self.supervisor.scrape()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def run(settings: Settings) -> int:
    """``wadud media``: run the node in this process until it is drained."""
    import uvloop

    return uvloop.run(Supervisor(settings).run())
