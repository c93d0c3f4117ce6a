"""A Wadud cluster made of real processes on loopback, for tests and benchmarks.

What a deployment runs, each in its own process group (stopped, killed or
terminated by that group's id, never by name): ``wadud migrate`` once, any
number of ``wadud api`` replicas, any number of ``wadud media`` nodes, all on
one Redis and one PostgreSQL that the caller provides (tests/conftest.py's
``pg_cluster`` and :class:`tests.conftest.RedisServer`). In front of the
replicas, :class:`LoadBalancer` stands in for the HTTP load balancer a real
deployment has: several front ports, each with a preferred replica and
failover to the others when a connection is refused, so "a page through
replica A" is a page loaded from front A, and when replica A dies the page's
WebSocket reconnect reaches B through the same front, as it would behind a
load balancer with health checks.

Used by tests/signalling/cluster/test_cluster.py (inside a loopback-only network
namespace) and benchmarks/sfu/cluster.py (on the host's loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
WADUD = str(Path(sys.executable).parent / "wadud")
HOST = "127.0.0.1"
REGISTRY_WORKERS = "wadud:media:workers"


def worker_key(wid: str) -> str:
    return f"wadud:media:worker:{wid}"


def rooms_key(wid: str) -> str:
    return f"wadud:media:worker:{wid}:rooms"


_UDP_HANDED_OUT: set[int] = set()


def free_udp_ports(count: int, start: int = 27000, end: int = 32000) -> int:
    """The first of ``count`` consecutive UDP ports that are free now and
    were not handed out before by this process (nodes bind theirs later),
    below the kernel's ephemeral ports for the reason
    :func:`tests.conftest.free_port` gives."""
    base = start + (os.getpid() * 37) % (end - start - 1000)
    for first in range(base, end - count, count):
        wanted = range(first, first + count)
        if _UDP_HANDED_OUT.intersection(wanted):
            continue
        socks: list[socket.socket] = []
        try:
            for port in wanted:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((HOST, port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        _UDP_HANDED_OUT.update(wanted)
        return first
    raise RuntimeError(f"no {count} consecutive free UDP ports")


def note_group(path: Path, pgid: int) -> None:
    """Write a process group down, so whoever owns ``path`` can end it even
    if the process that started it dies first."""
    with path.open("a") as f:
        f.write(f"{pgid}\n")


def kill_noted(path: Path) -> None:
    if not path.exists():
        return
    for pgid in {int(x) for x in path.read_text().split()}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


# -- processes ---------------------------------------------------------------


@dataclass
class Proc:
    """One role's process (and whatever it forks) in its own process group,
    its output appended to ``log`` across restarts."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    groups: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    started_at: float = 0.0
    """Unix time of the last start."""

    def start(self) -> None:
        with self.log.open("ab") as log:
            log.write(f"\n=== start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        self.started_at = time.time()
        if self.groups is not None:
            note_group(self.groups, self.popen.pid)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def signal(self, sig: int) -> None:
        """``sig`` to the whole process group (the supervisor and its workers)."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def group_alive(self) -> bool:
        """Whether any process of the group is left (children too)."""
        if self.popen is None:
            return False
        self.popen.poll()
        try:
            os.killpg(self.popen.pid, 0)
        except ProcessLookupError:
            return False
        return True

    async def group_gone(self, within: float) -> bool:
        """Whether the whole group is gone within ``within`` seconds. A
        killed group's processes leave as the kernel reaps them: the
        workers, orphaned by their supervisor's death, by whoever adopts
        them, later on a busy machine."""
        deadline = time.monotonic() + within
        while self.group_alive():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def wait(self, within: float) -> int | None:
        """The exit status, or None if still running after ``within`` seconds."""
        deadline = time.monotonic() + within
        while self.popen is not None:
            code = self.popen.poll()
            if code is not None or time.monotonic() >= deadline:
                return code
            await asyncio.sleep(0.05)
        return None

    async def stop(self, within: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL of the group if it is not gone in time."""
        if self.popen is None:
            return None
        self.signal(signal.SIGTERM)
        code = await self.wait(within)
        self.signal(signal.SIGKILL)
        if code is None:
            code = await self.wait(5)
        return code

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class ApiReplica:
    name: str
    port: int
    proc: Proc
    host: str = HOST
    region: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class MediaNode:
    node_id: str
    http_port: int
    udp_base: int
    workers: int
    proc: Proc
    host: str = HOST
    region: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def worker_ids(self) -> list[str]:
        return [f"{self.node_id}-{i}" for i in range(self.workers)]


class ClusterError(Exception):
    """A process did not start or get ready in time; carries its log's tail."""


@dataclass
class Cluster:
    """``wadud api`` replicas and ``wadud media`` nodes on one PostgreSQL and
    one Redis. :meth:`add_api` and :meth:`add_media` only describe; :meth:`start`
    migrates and starts them all, :meth:`ready` waits until every replica
    answers ``/readyz`` and every media worker is registered as ready."""

    work: Path
    database_url: str
    redis_url: str
    secret: str
    region: str = "pk"
    public_url: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    wrap: Callable[[str | None, list[str]], list[str]] | None = None
    """Where each process runs: given a place (None: the default one) and
    an argv, the argv to start (tests/regions.py puts it in a namespace)."""
    checkout: Path = ROOT
    """The source tree the roles run (on their PYTHONPATH): this one, or
    another version's, so a benchmark can time two with one harness."""
    apis: dict[str, ApiReplica] = field(default_factory=dict)
    media: dict[str, MediaNode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.groups = self.work / "groups"

    def env(self, **more: str) -> dict[str, str]:
        # WADUD_NATIVE passes through: CI runs these again on the Python loops.
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("WADUD_") or k == "WADUD_NATIVE"
        }
        env.update(
            WADUD_DATABASE_URL=self.database_url,
            WADUD_REDIS_URL=self.redis_url,
            WADUD_SECRET_KEY=self.secret,
            WADUD_MEDIA_HOST=HOST,
            WADUD_LOG_FORMAT="text",
            # The checkout, not whatever an older editable install maps.
            PYTHONPATH=str(self.checkout),
            # close() stops every process at once: with no replica left to
            # move a node's rooms, its drain would wait out the 30 s default
            # (SIGKILLed at 10 s, each cluster test's teardown 14 s). A test
            # of the drain itself sets its own (cluster_driver: 20 s).
            WADUD_MEDIA_DRAIN_TIMEOUT="2",
        )
        if self.public_url:
            env["WADUD_PUBLIC_URL"] = self.public_url
        env.update(self.extra_env)
        env.update(more)
        return env

    def _proc(self, name: str, argv: list[str], place: str | None = None, **env: str) -> Proc:
        if self.wrap is not None:
            argv = self.wrap(place, argv)
        return Proc(name, argv, self.env(**env), self.work / f"{name}.log", self.groups)

    def add_api(
        self,
        name: str,
        port: int | None = None,
        *,
        host: str = HOST,
        region: str | None = None,
        place: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ApiReplica:
        port = port or free_port()
        region = self.region if region is None else region
        argv = [WADUD, "api", "--host", host, "--port", str(port), "--region", region]
        proc = self._proc(f"api-{name}", argv, place, WADUD_MEDIA_HOST=host, **(env or {}))
        replica = ApiReplica(name, port, proc, host, region)
        self.apis[name] = replica
        return replica

    def add_media(
        self,
        node_id: str,
        workers: int = 2,
        *,
        host: str = HOST,
        region: str | None = None,
        place: str | None = None,
        env: dict[str, str] | None = None,
    ) -> MediaNode:
        """A media node; ``host`` is the address it binds and announces."""
        http_port = free_port()
        base = free_udp_ports(workers)
        region = self.region if region is None else region
        argv = [
            WADUD, "media", "--region", region, "--workers", str(workers),
            "--http", f"{host}:{http_port}", "--udp-port", str(base), "--node-id", node_id,
        ]  # fmt: skip
        proc = self._proc(f"media-{node_id}", argv, place, WADUD_MEDIA_HOST=host, **(env or {}))
        node = MediaNode(node_id, http_port, base, workers, proc, host, region)
        self.media[node_id] = node
        return node

    @property
    def procs(self) -> list[Proc]:
        return [a.proc for a in self.apis.values()] + [m.proc for m in self.media.values()]

    async def migrate(self) -> None:
        proc = self._proc("migrate", [WADUD, "migrate"])
        proc.start()
        code = await proc.wait(120)
        if code != 0:
            proc.signal(signal.SIGKILL)
            raise ClusterError(f"wadud migrate exited {code}:\n{proc.tail()}")

    async def start(self, within: float = 90.0) -> None:
        await self.migrate()
        for proc in self.procs:
            proc.start()
        await self.ready(within)

    async def heal(self, within: float = 60.0) -> list[str]:
        """Start again whatever is not running (after a test killed it, or
        after a failure left it dead); the names of those restarted."""
        restarted = []
        for proc in self.procs:
            if not proc.running:
                proc.signal(signal.SIGKILL)  # orphans of a dead supervisor
                proc.start()
                restarted.append(proc.name)
        if restarted:
            await self.ready(within)
        return restarted

    async def ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as http:
            for replica in self.apis.values():
                await self._http_ready(http, replica.proc, replica.url, deadline)
            for node in self.media.values():
                await self._http_ready(http, node.proc, node.url, deadline)
        for node in self.media.values():
            await self.wait_registered(node, deadline - time.monotonic())

    async def _http_ready(
        self, http: aiohttp.ClientSession, proc: Proc, url: str, deadline: float
    ) -> None:
        while True:
            if not proc.running:
                raise ClusterError(f"{proc.name} exited ({proc.returncode}):\n{proc.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with http.get(url + "/readyz", timeout=aiohttp.ClientTimeout(2)) as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise ClusterError(f"{proc.name}: {url}/readyz never said 200:\n{proc.tail()}")
            await asyncio.sleep(0.1)

    async def wait_registered(self, node: MediaNode, within: float = 30.0) -> dict[str, Any]:
        """Wait until every worker of ``node`` has a live registry entry in
        state ``ready``, refreshed since the node last started (not what a
        killed one left behind); those entries."""
        deadline = time.monotonic() + max(within, 1.0)

        def fresh(entry: dict[str, str]) -> bool:
            with contextlib.suppress(ValueError):
                return float(entry.get("updated", 0)) >= node.proc.started_at - 0.5
            return False

        async with self.redis() as redis:
            while True:
                entries = {wid: await redis.hgetall(worker_key(wid)) for wid in node.worker_ids}
                if all(e.get("state") == "ready" and fresh(e) for e in entries.values()):
                    return entries
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"{node.node_id}: workers not registered as ready: {entries}\n"
                        + node.proc.tail()
                    )
                await asyncio.sleep(0.1)

    @contextlib.asynccontextmanager
    async def redis(self) -> Any:
        from wadud.messaging.bus import redis_client

        # redis_client: a plain URL or a redis+sentinel:// one alike.
        client = redis_client(self.redis_url)
        try:
            yield client
        finally:
            await client.aclose()

    async def placement(self, rooms: Iterable[str] | None = None) -> dict[str, set[str]]:
        """Which rooms each registered worker's rooms set holds (all of them,
        or only ``rooms``), read from the registry in Redis."""
        wanted = set(rooms) if rooms is not None else None
        async with self.redis() as redis:
            wids = sorted(await redis.smembers(REGISTRY_WORKERS))
            out: dict[str, set[str]] = {}
            for wid in wids:
                held = set(await redis.smembers(rooms_key(wid)))
                out[wid] = held if wanted is None else held & wanted
        return out

    async def worker_of(self, room: str) -> list[str]:
        """The workers whose rooms set holds ``room`` (exactly one, if placement holds)."""
        return [wid for wid, held in (await self.placement([room])).items() if held]

    async def workers(self) -> dict[str, dict[str, str]]:
        """Every registered worker's hash (empty for one whose entry expired)."""
        async with self.redis() as redis:
            wids = sorted(await redis.smembers(REGISTRY_WORKERS))
            return {wid: await redis.hgetall(worker_key(wid)) for wid in wids}

    def node_of_worker(self, wid: str) -> MediaNode:
        for node in self.media.values():
            if wid in node.worker_ids:
                return node
        raise KeyError(wid)

    async def token_link(
        self,
        room: str,
        identity: str,
        role: str,
        *,
        name: str | None = None,
        public_url: str | None = None,
        region: str | None = None,
        home: str = "",
    ) -> str:
        """A join link as ``wadud token`` prints it for this cluster's
        configuration, under ``public_url`` (a front of the load balancer,
        say), naming ``name`` (else the identity: a link without a name makes
        the page ask for one before Join); ``home``: the region whose own
        control plane holds the room. Minted in this process by the function
        the command prints (tests/signalling/test_token_cli.py runs the
        command): a process per link, a second and more of CPU on a loaded
        machine, starved the media of the calls already running."""
        from bin.main import join_link
        from wadud.config import sources

        settings = sources.load(env=self.env(WADUD_PUBLIC_URL=public_url or self.public_url))
        return join_link(
            settings, room, identity, role, name=name or identity, region=region or "", home=home
        )

    async def close(self) -> dict[str, int | None]:
        """Stop every process (SIGTERM, then SIGKILL of the group); their exit codes."""
        codes = await asyncio.gather(*(p.stop() for p in self.procs))
        kill_noted(self.groups)
        return {p.name: c for p, c in zip(self.procs, codes, strict=True)}

    def log_sizes(self) -> dict[str, int]:
        """How long each process's log is now (see :meth:`problems`)."""
        return {p.name: p.log.stat().st_size if p.log.exists() else 0 for p in self.procs}

    def logged(self, phrase: str, since: dict[str, int] | None = None) -> list[tuple[float, str]]:
        """(Unix time, process) of each line containing ``phrase`` in the
        processes' logs (written after ``since``, from :meth:`log_sizes`),
        by the time the process stamped on it (``WADUD_LOG_FORMAT=text``:
        local time to the millisecond), earliest first."""
        found: list[tuple[float, str]] = []
        for name, lines in self.lines(phrase, since=since, limit=sys.maxsize).items():
            for line in lines:
                with contextlib.suppress(ValueError):
                    stamp, _, ms = line[:23].partition(",")
                    at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
                    found.append((at, name))
        return sorted(found)

    def lines(
        self, *phrases: str, since: dict[str, int] | None = None, limit: int = 30
    ) -> dict[str, list[str]]:
        """The last ``limit`` lines of each process's log (written after
        ``since``, from :meth:`log_sizes`) that contain any of ``phrases``."""
        out = {}
        for proc in self.procs:
            try:
                with proc.log.open("rb") as f:
                    f.seek((since or {}).get(proc.name, 0))
                    lines = f.read().decode(errors="replace").splitlines()
            except OSError:
                continue
            found = [ln for ln in lines if any(p in ln for p in phrases)]
            if found:
                out[proc.name] = found[-limit:]
        return out

    def problems(
        self, limit: int = 20, since: dict[str, int] | None = None
    ) -> dict[str, list[str]]:
        """Tracebacks and error lines in each process's log (written after
        ``since``, from :meth:`log_sizes`), for a report."""
        return self.lines("Traceback", "ERROR", "Error:", since=since, limit=limit)


# -- the load balancer -------------------------------------------------------


@dataclass
class Front:
    name: str
    port: int
    prefer: int
    """Index into the balancer's backends of the replica this front sends to
    while it accepts connections."""
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


class LoadBalancer:
    """A TCP load balancer in front of ``wadud api`` replicas.

    Each front sends every connection to its preferred backend and, when
    that refuses (or does not answer within ``connect_timeout``), to the
    others in order: the failover a real balancer does after its health
    check marks a replica down, without the health check's delay. Bytes are
    piped both ways unchanged (HTTP and WebSocket alike); when either side
    closes, both go. At most ``max_connections`` at once; more are refused.
    :attr:`routed` counts connections by (front, backend port).
    """

    def __init__(
        self,
        backends: Sequence[int],
        *,
        connect_timeout: float = 2.0,
        max_connections: int = 512,
    ) -> None:
        self.backends = list(backends)
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.fronts: dict[str, Front] = {}
        self.routed: Counter[tuple[str, int]] = Counter()
        self.refused = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def add_front(self, name: str, prefer: int, port: int | None = None) -> Front:
        front = Front(name, port or free_port(), prefer)
        front.server = await asyncio.start_server(
            lambda r, w: self._accept(front, r, w), HOST, front.port
        )
        self.fronts[name] = front
        return front

    def _accept(
        self, front: Front, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(self._tasks) >= self.max_connections:
            self.refused += 1
            writer.transport.abort()
            return
        task = asyncio.ensure_future(self._serve(front, reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def order(self, front: Front) -> list[int]:
        n = len(self.backends)
        return [self.backends[(front.prefer + i) % n] for i in range(n)]

    async def _serve(
        self, front: Front, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writers.add(writer)
        try:
            for port in self.order(front):
                try:
                    up_reader, up_writer = await asyncio.wait_for(
                        asyncio.open_connection(HOST, port), self.connect_timeout
                    )
                except (OSError, TimeoutError):
                    continue
                self.routed[(front.name, port)] += 1
                self._writers.add(up_writer)
                try:
                    await asyncio.gather(
                        self._pipe(reader, up_writer), self._pipe(up_reader, writer)
                    )
                finally:
                    self._writers.discard(up_writer)
                    up_writer.transport.abort()
                return
            self.refused += 1
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        # Either side's end is the connection's end: close both (the other
        # pipe then reads EOF too).
        dst.transport.abort()

    def connections(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        for front in self.fronts.values():
            if front.server is not None:
                front.server.close()
        for w in list(self._writers):
            w.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for front in self.fronts.values():
            if front.server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(front.server.wait_closed(), 5)


def net_namespace() -> str:
    """This process's network namespace, as /proc names it (``net:[N]``)."""
    return os.readlink("/proc/self/ns/net")


def kill_namespace(namespace: str) -> int:
    """SIGKILL every process in ``namespace``, a namespace a test made for
    itself (never ours: that is refused); how many there were. For the
    leftovers of a driver that died before it could stop what it started
    (a daemonised redis-server has a group of its own)."""
    if namespace == net_namespace():
        raise ValueError("refusing to kill the processes of our own network namespace")
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "net") != namespace:
                continue
            os.kill(int(entry.name), signal.SIGKILL)
            killed += 1
        except (OSError, ProcessLookupError):
            continue
    return killed


@contextlib.asynccontextmanager
async def running(cluster: Cluster) -> AsyncIterator[Cluster]:
    """``cluster`` started (ClusterError, naming the process, if it cannot
    be), for the length of the block; closed after, with nothing of it left
    in the session's Redis."""
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()
        async with cluster.redis() as redis:
            keys = await redis.keys("wadud:*")
            if keys:
                await redis.delete(*keys)
