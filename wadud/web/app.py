"""Assembling the aiohttp application.

Startup is a stack of ``cleanup_ctx`` contexts, so shutdown is its mirror:
database (embedded or configured) and migrations, pool, bus, outbox relay,
then each package's own resources. Packages plug in through an ``install(app)``
function that adds their routes and contexts; which ones make up a role is
the assembly's business (:mod:`bin.assembly`), above every feature: this
module knows none of them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable

from aiohttp import web

from wadud.config import Settings
from wadud.messaging import bus, loops, outbox
from wadud.observe import tracing
from wadud.state import db, keys, storage
from wadud.web import auth, http, idempotency, ratelimit
from wadud.web.api import ENDPOINTS

log = logging.getLogger("wadud.app")

Installer = Callable[[web.Application], None]


async def _tracing(app: web.Application) -> AsyncIterator[None]:
    # First in, last out: pool connections trace their statements from the
    # start, and the spans of shutdown are flushed.
    s = app[keys.SETTINGS]
    tracing.configure(
        s.otel_endpoint, service=s.otel_service_name, sample_ratio=s.otel_sample_ratio
    )
    try:
        yield
    finally:
        await tracing.aclose()


async def _database(app: web.Application) -> AsyncIterator[None]:
    async with db.database(app[keys.SETTINGS]) as (url, pool):
        app[keys.DATABASE_URL] = url
        app[keys.DB] = pool
        yield


async def _bus(app: web.Application) -> AsyncIterator[None]:
    b = bus.create(app[keys.SETTINGS].redis_url)
    app[keys.BUS] = b
    try:
        yield
    finally:
        await b.close()


async def _passwords(app: web.Application) -> AsyncIterator[None]:
    s = app[keys.SETTINGS]
    app[auth.PASSWORDS] = passwords = auth.passwords_for(s)
    try:
        yield
    finally:
        passwords.close()


async def _outbox(app: web.Application) -> AsyncIterator[None]:
    s = app[keys.SETTINGS]
    relay = outbox.Relay(
        app[keys.DB],
        app[keys.BUS],
        batch=s.outbox_batch,
        poll_interval=s.outbox_poll_interval,
        retention=s.outbox_retention,
    )
    await relay.start()
    app[keys.EXTRAS]["outbox"] = relay
    try:
        yield
    finally:
        await relay.close()


async def _storage(app: web.Application) -> AsyncIterator[None]:
    # The file store (local folder or S3) opens on first use; this closes it.
    try:
        yield
    finally:
        await storage.close_storage(app)


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    prune = loops.every(
        3600, lambda: idempotency.prune(app[keys.DB]), "housekeeping failed", log, first=0
    )
    async with loops.background(prune, "housekeeping"):
        yield


def build_app(settings: Settings, installers: Iterable[Installer]) -> web.Application:
    """The application: the ground's middlewares and contexts, then each installer."""
    settings = settings.with_secret()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # (trace >) observe > problems > authenticate > idempotency > problems > handler:
        # the inner ``problems`` turns a handler's errors into responses that
        # idempotency can keep; the outer one catches everything else.
        middlewares=[
            *([tracing.middleware()] if settings.otel_endpoint else []),
            http.observe,
            http.problems,
            http.authenticate,
            idempotency.idempotency,
            http.problems,
        ],
        handler_args={"max_field_size": 16384},
    )
    app[keys.SETTINGS] = settings
    app[ENDPOINTS] = []
    app[keys.EXTRAS] = {"index_links": []}
    app.cleanup_ctx.extend(
        [
            *([_tracing] if settings.otel_endpoint else []),
            _database,
            _bus,
            ratelimit.limits_context,
            _passwords,
            _outbox,
            _storage,
            _housekeeping,
        ]
    )
    for install in installers:
        install(app)
    return app
