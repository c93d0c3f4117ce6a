"""The PostgreSQL pool, and the embedded PostgreSQL that ``wadud serve`` uses
when no ``database_url`` is configured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from wadud.config import Settings
from wadud.observe import metrics, tracing
from wadud.state import migrate

log = logging.getLogger("wadud.db")


#: Which ``wadud`` processes use an embedded cluster: a JSON list of pids in
#: its folder. pgserver keeps a list of its own, but any process that calls
#: ``get_server`` on the folder (a benchmark seeding data, a debugging shell)
#: lands in it and then keeps the server alive forever, and a killed process
#: never leaves it. This one counts only wadud's own roles, and only live ones.
_HANDLES = ".wadud_handles.json"

#: Seconds a closing pool waits for its connections to close cleanly.
POOL_CLOSE_WITHIN = 0.5

#: Seconds a stopping process waits for the embedded PostgreSQL's fast
#: shutdown (clients disconnected, a checkpoint) before it lets it finish
#: on its own: a stop is bounded (wadud.web.serving).
_STOP_WAIT = 1.0
#: Seconds a start waits for a cluster that is still finishing its shutdown.
_STOPPING_WAIT = 30.0


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent has stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _handles(path: Path) -> list[int]:
    try:
        pids = json.loads((path / _HANDLES).read_text())
    except (OSError, ValueError):
        return []
    return [int(p) for p in pids if isinstance(p, int)]


def _join(path: Path) -> Any:
    """Start or join the cluster, and count this process among its users."""
    from pgserver.postgres_server import PostgresServer, get_server

    _wait_stopping(path)
    # cleanup_mode=None: pgserver's own exit hook never stops the server;
    # :func:`_let_go` decides, from wadud's live users alone.
    server = get_server(path, cleanup_mode=None)
    with PostgresServer._lock:
        pids = [p for p in _handles(path) if p != os.getpid() and _alive(p)]
        (path / _HANDLES).write_text(json.dumps([*pids, os.getpid()]))
    return server


def _let_go(server: Any) -> None:
    """Leave the cluster; the last live wadud process stops it, whoever else
    (psql, a benchmark, a stale pgserver handle) is still connected."""
    from pgserver.postgres_server import PostgresServer

    path: Path = server.pgdata
    with PostgresServer._lock:
        server.global_process_id_list.get_and_remove(os.getpid())
        others = [p for p in _handles(path) if p != os.getpid() and _alive(p)]
        (path / _HANDLES).write_text(json.dumps(others))
        # A later start in this process must not reuse the stopped instance.
        PostgresServer._instances.pop(path, None)
        if others:
            log.info(
                "embedded PostgreSQL left running for other wadud processes",
                extra={"pgdata": str(path), "pids": others},
            )
            return
        stop_embedded(path, user=server.system_user)


def stop_embedded(path: Path, *, user: str | None = None) -> bool:
    """Stop the PostgreSQL cluster in ``path`` if it runs: a fast shutdown
    (open sessions are ended, their transactions rolled back, a checkpoint
    written), waited for up to :data:`_STOP_WAIT` seconds; a cluster still
    stopping then finishes on its own (a later start waits for it,
    :func:`_join`). True if one was running."""
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(path)
    if info is None or not _alive(info.pid):
        return False
    log.info("stopping embedded PostgreSQL", extra={"pgdata": str(path), "pid": info.pid})
    # SIGINT is the postmaster's fast shutdown, what `pg_ctl -m fast` sends.
    try:
        os.kill(info.pid, signal.SIGINT)
    except OSError as exc:
        log.warning(
            "cannot stop embedded PostgreSQL", extra={"pgdata": str(path), "error": repr(exc)}
        )
        return True
    end = time.monotonic() + _STOP_WAIT
    while _alive(info.pid) and time.monotonic() < end:
        time.sleep(0.02)
    if _alive(info.pid):
        log.info(
            "embedded PostgreSQL finishes its shutdown on its own",
            extra={"pgdata": str(path), "pid": info.pid},
        )
    return True


def _wait_stopping(path: Path) -> None:
    """Wait (up to :data:`_STOPPING_WAIT` seconds) for a cluster in ``path``
    that is still in its shutdown: pgserver would take it for a running one
    and hand out a URL that refuses connections."""
    from pgserver.utils import PostmasterInfo

    end = time.monotonic() + _STOPPING_WAIT
    while time.monotonic() < end:
        info = PostmasterInfo.read_from_pgdata(path)
        if info is None or not _alive(info.pid) or info.status != "stopping":
            return
        time.sleep(0.05)


@asynccontextmanager
async def embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """Start (or join) a PostgreSQL cluster under ``data_dir/postgres`` from the
    ``pgserver`` wheel and yield its URL; the data survives restarts. On the
    way out the last live wadud process using the cluster stops it, even with
    other clients still connected (see :func:`stop_embedded`)."""
    # Imported late: only the embedded default needs it. Its platformdirs
    # warns when XDG_RUNTIME_DIR is unset (root, containers), which is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver.postgres_server  # noqa: F401

    path = (data_dir / "postgres").resolve()
    path.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    log.info("starting embedded PostgreSQL", extra={"pgdata": str(path)})
    server = await loop.run_in_executor(None, _join, path)
    try:
        yield str(server.get_uri())
    finally:
        # Seen through to the end even when the stop is cut short
        # (wadud.web.serving cancels the steps that wait past its bound): a
        # cluster this process started must not outlive it, and pg_ctl's
        # own timeouts bound the wait.
        stopping = loop.run_in_executor(None, _let_go, server)
        cut = False
        while not stopping.done():
            try:
                await asyncio.shield(stopping)
            except asyncio.CancelledError:
                cut = True
        if cut:
            raise asyncio.CancelledError


async def _init_connection(conn: asyncpg.Connection) -> None:
    tracing.instrument_connection(conn)
    # jsonb in and out as Python objects, so no handler calls json.dumps itself.
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename,
            encoder=lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":")),
            decoder=json.loads,
            schema="pg_catalog",
        )


async def connect(url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(url)
    await _init_connection(conn)
    return conn


async def _release(conn: asyncpg.Connection) -> None:
    """What the pool does to a connection given back: nothing, unless it
    comes back inside a transaction (a task cancelled half way), which is
    rolled back with the session reset.

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release: one more round trip per acquire, a fifth of
    a booking's. The rule that makes skipping it safe: a pool connection goes
    back as it was lent. Session state is the borrower's to undo: a session
    advisory lock is unlocked in ``finally`` (or use the ``_xact_`` kind), a
    LISTEN is removed (the outbox relay does), settings change with ``SET
    LOCAL`` inside a transaction, never a session ``SET``."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK;\n" + conn.get_reset_query())


@asynccontextmanager
async def _connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(url)
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def connection(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """One connection for a command that runs and exits (``wadud migrate``,
    ``user add``, ...): to ``database_url``, or to the embedded PostgreSQL
    under ``data_dir`` when none is set. Not migrated here."""
    async with contextlib.AsyncExitStack() as stack:
        url = settings.database_url or await stack.enter_async_context(
            embedded_postgres(settings.data_dir)
        )
        async with _connected(url) as conn:
            yield conn


@asynccontextmanager
async def pool(settings: Settings, url: str) -> AsyncIterator[asyncpg.Pool]:
    p: asyncpg.Pool = await asyncpg.create_pool(
        url,
        min_size=settings.database_pool_min,
        max_size=settings.database_pool_max,
        init=_init_connection,
        reset=_release,
        # Every server-side timestamp is UTC; clients convert for display.
        server_settings={"timezone": "UTC", "application_name": "wadud"},
        command_timeout=30,
    )
    metrics.POOLS.pools.add(p)
    try:
        yield p
    finally:
        metrics.POOLS.pools.discard(p)
        try:
            # A server that stopped answering never acknowledges the close,
            # and a connection some task kept is never released: neither
            # may hold the stop hostage (wadud.web.serving), so after a moment
            # the connections are closed by force.
            async with asyncio.timeout(POOL_CLOSE_WITHIN):
                await p.close()
        except TimeoutError:
            log.warning(
                "database pool did not close in %.1f s; connections closed by force",
                POOL_CLOSE_WITHIN,
            )
            p.terminate()
        except asyncio.CancelledError:
            p.terminate()
            raise


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """The database every role opens: ``database_url``, or an embedded
    PostgreSQL under ``data_dir`` when none is set; migrated first when
    ``database_migrate`` says so. Gives its URL and a pool on it."""
    async with contextlib.AsyncExitStack() as stack:
        url = settings.database_url or await stack.enter_async_context(
            embedded_postgres(settings.data_dir)
        )
        if settings.database_migrate:
            async with _connected(url) as conn:
                applied = await migrate.migrate(conn)
            if applied:
                log.info("migrations applied", extra={"migrations": applied})
        yield url, await stack.enter_async_context(pool(settings, url))


class Args:
    """The parameters of a statement composed from parts: each call adds a
    value and gives the placeholder that names it, so parts written apart
    (a CTE from another module, say) never clash on their numbers::

        args = Args()
        sql = f"UPDATE t SET a = {args(1)} WHERE id = {args(key)}"
        await conn.execute(sql, *args.values)
    """

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"

    @property
    def next(self) -> int:
        """The number the next parameter will get (for helpers that number
        their own from a given first, such as :func:`wadud.messaging.outbox.event`)."""
        return len(self.values) + 1


def record(row: asyncpg.Record | None) -> dict[str, Any] | None:
    return None if row is None else dict(row)
