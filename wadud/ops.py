"""Operational endpoints: liveness, readiness, metrics, the OpenAPI document
and the landing page."""

from __future__ import annotations

import html

from aiohttp import web

from wadud import __version__, keys, metrics, migrate
from wadud.api import ApiModel, Call, Routes, openapi

routes = Routes("ops", "Health, readiness, metrics and API description.")


class Health(ApiModel):
    status: str


class Ready(ApiModel):
    status: str
    database: bool
    migrations: bool
    bus: bool
    pending_migrations: list[str] = []


@routes.get("/healthz", returns=Health, auth="public")
async def healthz(call: Call[None, None]) -> Health:
    """Liveness: the process is up and its event loop answers."""
    return Health(status="ok")


@routes.get("/readyz", returns=Ready, auth="public", responses={503: "Not ready"})
async def readyz(call: Call[None, None]) -> web.Response:
    """Readiness: the database answers, every migration is applied, the bus
    answers. 503 with the same body otherwise."""
    db_ok, pending = False, ["?"]
    try:
        async with call.pool.acquire(timeout=2) as conn:
            db_ok = await conn.fetchval("SELECT true")
            try:
                pending = [m.name for m in await migrate.pending(conn)]
            except migrate.MigrationError as exc:
                # The schema and this code disagree: not ready, and say why.
                pending = [exc.detail]
    except Exception:
        db_ok = False
    bus_ok = await call.request.app[keys.BUS].ping()
    ready = Ready(
        status="ready" if db_ok and not pending and bus_ok else "not ready",
        database=bool(db_ok),
        migrations=db_ok and not pending,
        bus=bus_ok,
        pending_migrations=pending if db_ok else [],
    )
    return web.Response(
        body=ready.model_dump_json(),
        status=200 if ready.status == "ready" else 503,
        content_type="application/json",
    )


@routes.get(
    "/metrics",
    auth="public",
    returns={"content": {"text/plain": {"schema": {"type": "string"}}}},
)
async def metrics_page(call: Call[None, None]) -> web.Response:
    """Prometheus metrics, text exposition format."""
    resp = web.Response(body=metrics.generate_latest())
    resp.headers["Content-Type"] = metrics.CONTENT_TYPE_LATEST
    return resp


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
        doc = openapi(app[keys.ENDPOINTS], title="Wadud API", version=__version__)
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
<li><a href="/healthz">/healthz</a> &middot; <a href="/readyz">/readyz</a> &middot;
<a href="/metrics">/metrics</a></li></ul></body></html>"""
    return web.Response(text=page, content_type="text/html")
