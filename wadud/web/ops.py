"""Operational endpoints: liveness, readiness, the OpenAPI document and the
landing page on the public port; Prometheus metrics on a listener of their own.

Metrics never go on the public port (issue 12, finding 1): they describe the
service to anyone who reads them. ``metrics_listen`` opens a second, tiny
aiohttp site (like ``wadud turn --metrics-listen`` and ``wadud media
--http``) that serves only ``/metrics``, optionally behind
``metrics_token`` (``Authorization: Bearer``, compared in constant time).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import asyncpg
from aiohttp import web

from wadud import __version__
from wadud.config import Settings
from wadud.errors import ConfigError
from wadud.observe import metrics
from wadud.state import keys, migrate
from wadud.web.api import ENDPOINTS, ApiModel, Call, Routes, openapi

log = logging.getLogger("wadud.ops")

T = TypeVar("T")

routes = Routes("ops", "Health, readiness and API description.")


class Health(ApiModel):
    status: str


class Ready(ApiModel):
    status: str
    database: bool
    migrations: bool
    bus: bool
    pending_migrations: list[str] = []
    #: The region's own control plane answers (None: the process has none).
    region_plane: bool | None = None


@routes.get("/healthz", returns=Health, auth="public")
async def healthz(call: Call[None, None]) -> Health:
    """Liveness: the process is up and its event loop answers."""
    return Health(status="ok")


#: Seconds each readiness check may take. The checks run at once, so
#: ``/readyz`` answers within this even when a peer is cut off.
PROBE_SECONDS = 1.5

#: Checks that ran out of time, still ending in the background.
_LATE: set[asyncio.Task[Any]] = set()


def _forget(task: asyncio.Task[Any]) -> None:
    _LATE.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a late failure is no news


async def _bounded(check: Coroutine[Any, Any, T], failed: T) -> T:
    """``check``'s answer, or ``failed`` when it raised or took longer than
    :data:`PROBE_SECONDS`. A late check is cancelled but not waited for: a
    query or a PING on a connection whose other end went silent ends only
    when its cancellation does (asyncpg shields a connection's release), and
    a probe must answer on time."""
    task = asyncio.ensure_future(check)
    done, _ = await asyncio.wait({task}, timeout=PROBE_SECONDS)
    if not done:
        task.cancel()
        _LATE.add(task)
        task.add_done_callback(_forget)
        return failed
    if task.cancelled() or task.exception() is not None:
        return failed
    return task.result()


async def _database(pool: asyncpg.Pool) -> tuple[bool, list[str]]:
    """Whether the database answers, and the migrations it still lacks."""
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT true")
        try:
            return True, [m.name for m in await migrate.pending(conn)]
        except migrate.MigrationError as exc:
            # The schema and this code disagree: not ready, and say why.
            return True, [exc.detail]


async def _nothing() -> None:
    return None


@routes.get("/readyz", returns=Ready, auth="public", responses={503: "Not ready"})
async def readyz(call: Call[None, None]) -> web.Response:
    """Readiness: the database answers, every migration is applied, the bus
    answers. 503 with the same body otherwise. With a region's own control
    plane (``redis_region_url``), 200 ``degraded`` while only that answers:
    the region's own visits are served though it is cut off from the rest
    (docs/operations.md, "A region cut off"). Each check gets
    :data:`PROBE_SECONDS`, all at once."""
    app = call.request.app
    plane = app.get(keys.REGION_PLANE)
    (db_ok, pending), bus_ok, plane_ok = await asyncio.gather(
        _bounded(_database(call.pool), (False, ["?"])),
        _bounded(app[keys.BUS].ping(), False),
        _bounded(plane.ping(), False) if plane is not None else _nothing(),
    )
    if db_ok and not pending and bus_ok and plane_ok is not False:
        status = "ready"
    elif plane_ok and not (db_ok and pending):
        status = "degraded"
    else:
        status = "not ready"
    ready = Ready(
        status=status,
        database=bool(db_ok),
        migrations=db_ok and not pending,
        bus=bus_ok,
        pending_migrations=pending if db_ok else [],
        region_plane=plane_ok,
    )
    return web.Response(
        body=ready.model_dump_json(exclude_none=True),
        status=503 if status == "not ready" else 200,
        content_type="application/json",
    )


@routes.get(
    "/api/v1/openapi.json",
    auth="public",
    returns={"content": {"application/json": {"schema": {"type": "object"}}}},
)
async def openapi_document(call: Call[None, None]) -> web.Response:
    """This API's OpenAPI 3.1 description."""
    app = call.request.app
    doc = app[keys.EXTRAS].get("openapi")
    if doc is None:
        doc = openapi(app[ENDPOINTS], title="Wadud API", version=__version__)
        app[keys.EXTRAS]["openapi"] = doc
    return web.json_response(doc)


@routes.get("/", auth="public", returns={"content": {"text/html": {"schema": {"type": "string"}}}})
async def index(call: Call[None, None]) -> web.Response:
    """A landing page with links to what this server offers."""
    base = html.escape(call.settings.base_url)
    links = call.request.app[keys.EXTRAS].get("index_links", [])
    items = "".join(
        f'<li><a href="{html.escape(href)}">{html.escape(text)}</a></li>' for href, text in links
    )
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Wadud</title><meta name="viewport" content="width=device-width,initial-scale=1">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;
padding:0 1rem}}</style>
</head><body><h1>Wadud {__version__}</h1>
<p>Telehealth real-time communications server, running at <code>{base}</code>.</p>
<ul>{items}
<li><a href="/api/v1/openapi.json">API description (OpenAPI 3.1)</a></li>
<li><a href="/healthz">/healthz</a> &middot; <a href="/readyz">/readyz</a></li>
</ul></body></html>"""
    return web.Response(text=page, content_type="text/html")


# -- the metrics listener ------------------------------------------------------------


def listen_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` as (host, port); ConfigError otherwise."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"metrics_listen = {value!r} is not ADDR:PORT")
    return host, int(port)


def metrics_app(token: str = "") -> web.Application:
    """The metrics listener's app: ``GET /metrics`` and nothing else."""

    async def page(request: web.Request) -> web.Response:
        if token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return web.Response(
                    status=401,
                    text="scrape with Authorization: Bearer <metrics_token>\n",
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        resp = web.Response(body=metrics.generate_latest())
        resp.headers["Content-Type"] = metrics.CONTENT_TYPE_LATEST
        return resp

    app = web.Application()
    app.router.add_get("/metrics", page)
    return app


#: The metrics listener's runner, when one is open (tests read its port).
METRICS_RUNNER = web.AppKey("metrics_runner", web.AppRunner)


async def _metrics_listener(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    if not settings.metrics_listen:
        yield
        return
    host, port = listen_address(settings.metrics_listen)
    runner = web.AppRunner(metrics_app(settings.metrics_token), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        app[METRICS_RUNNER] = runner
        log.info("metrics listener open", extra={"address": settings.metrics_listen})
        yield
    finally:
        await runner.cleanup()


async def _worker_healthz(request: web.Request) -> web.Response:
    """The process runs (a liveness probe)."""
    return web.json_response({"status": "ok"})


async def _worker_readyz(pool: asyncpg.Pool, request: web.Request) -> web.Response:
    """The database answers within :data:`PROBE_SECONDS` (a readiness probe)."""
    if not await _bounded(pool.fetchval("SELECT true"), False):
        return web.json_response(
            {"status": "unavailable", "detail": "the database does not answer"}, status=503
        )
    return web.json_response({"status": "ready"})


@asynccontextmanager
async def worker_listener(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[None]:
    """The metrics listener of a process with no public port (``wadud
    hooks``, ``wadud notify``): ``/metrics``, and the ``/healthz`` and
    ``/readyz`` probes it has nowhere else to serve. Nothing when
    ``metrics_listen`` is unset."""
    if not settings.metrics_listen:
        yield
        return
    host, port = listen_address(settings.metrics_listen)
    listener = metrics_app(settings.metrics_token)
    listener.router.add_get("/healthz", _worker_healthz)
    listener.router.add_get("/readyz", partial(_worker_readyz, pool))
    runner = web.AppRunner(listener, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield
    finally:
        await runner.cleanup()


def install(app: web.Application) -> None:
    """The public operational routes, and the metrics listener when configured."""
    routes.install(app)
    app.cleanup_ctx.append(_metrics_listener)
