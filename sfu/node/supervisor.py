"""``wadud media``: a media node, one supervisor and one worker process per core.

DESIGN.md ("Processes"): each worker process (:mod:`sfu.node.process`) owns
one UDP port that all its peers share and runs one
:class:`sfu.node.worker.MediaWorker`. The supervisor starts the workers,
restarts one that dies (a new incarnation, after a backoff that grows with
crashes in a row, ``media_restart_backoff`` doubling up to
``media_restart_backoff_max``) and at once publishes ``stopped`` for the dead
incarnation, so room owners re-place its rooms without waiting for the
registry TTL.

A worker that cannot start (its UDP port taken by another process, ...)
exits with :data:`sfu.node.process.START_FAILED` and leaves its reason in a
file beside its metrics socket. A port the
supervisor finds taken as it is about to start a worker fails that start
the same way, with no process started. After
``media_start_retries`` such failures in a row for the same reason the
supervisor logs an error naming the port and the node answers ``/readyz``
with 503 ``failing``; restarts go on, so a port that frees up heals the node.
Once every worker is in that state the node exits 1: a supervisor (systemd's
``Restart=``, a Kubernetes restart count) sees a node that cannot work,
instead of one that answers ``/healthz`` and carries nothing. It serves
``/healthz``, ``/readyz`` and ``/metrics`` on ``media_http``
(:mod:`sfu.node.endpoints`).

Workers are children in the supervisor's process group with a parent-death
signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``): a supervisor killed with
SIGKILL takes them with it, so no orphan keeps a UDP port or a registry entry
alive. SIGTERM or SIGINT on the supervisor drains the node; the supervisor
orders each worker to drain with SIGUSR1. Workers ignore SIGTERM and SIGINT
(they start with them blocked, so not even a signal during start-up gets
through): a signal sent to the whole process group (Ctrl-C in a terminal,
systemd's default ``KillMode``, ``kill -- -PGID``) reaches the supervisor,
which drains in order, and never a worker first, which would exit before the
drain began and be taken for a crash. A draining worker leaves once its
rooms have moved (at most ``media_drain_timeout``) and exits 0; the
supervisor exits 0 when they all did.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sfu.control import registry, rpc
from sfu.node.endpoints import NodeApi, Relabelled, scrape
from sfu.node.process import (
    DRAIN_SIGNAL,
    START_FAILED,
    START_WAITING,
    STARTED,
    WORKER_SIGNALS,
    WorkerSpec,
    bind_failure,
    cannot_start,
    worker_process,
)
from sfu.node.settings import control_planes, http_address, node_id, worker_count
from wadud.observe import metrics

if TYPE_CHECKING:
    from wadud.config import Settings

__all__ = ["Supervisor", "run"]

log = logging.getLogger("wadud.sfu.node")

#: How long a worker must have run for its next crash to count as the first
#: again (the backoff between restarts is media_restart_backoff, doubling up
#: to media_restart_backoff_max).
_STABLE_AFTER = 30.0
#: Seconds the supervisor gives its workers beyond media_drain_timeout.
_DRAIN_GRACE = 10.0


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
        self.planes = control_planes(settings)
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
        # (wadud.observe.metrics.TASKS, which each worker's registry holds too).
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
            cannot_start(slot.port_taken, extra)
            slot.crashes += 1
            self._not_started(slot, slot.port_taken, extra)
            return
        # daemon: if the supervisor itself fails, multiprocessing ends the workers at exit.
        process = self._ctx.Process(
            target=worker_process, args=(spec,), name=f"wadud-media-{slot.wid}", daemon=True
        )
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
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
        NodeApi(self).register(app)
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

    # -- health, readiness and metrics -------------------------------------------------

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` says: the node, whether it drains, each worker's pid."""
        workers = {s.wid: (s.process.pid if s.process else None) for s in self.slots}
        return {"status": "ok", "node": self.node, "draining": self.draining, "workers": workers}

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
        texts = await asyncio.gather(*(scrape(s.metrics_socket) for s in slots))
        labelled: list[tuple[str | None, str]] = [
            (s.wid, t) for s, t in zip(slots, texts, strict=True) if t
        ]
        labelled.append((None, generate_latest(self._own).decode()))
        collector = Relabelled(labelled)
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
            return bind_failure(port, host, exc)
    return ""


def _read_start(slot: _Slot, code: int) -> str | None:
    """None when the slot's exited process had started; else why it could not."""
    try:
        text = Path(slot.start_file).read_text().strip()
    except OSError:
        text = ""
    if text == STARTED:
        return None
    if text:
        return text
    if code < 0:
        return f"killed by signal {-code} before it was ready"
    return f"exited with status {code} before it was ready"


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


def run(settings: Settings) -> int:
    """``wadud media``: run the node in this process until it is drained."""
    import uvloop

    return uvloop.run(Supervisor(settings).run())
