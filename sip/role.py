"""The phone bridge as a role: ``wadud sip`` on its own (:func:`run`), or
inside ``wadud serve`` (:func:`install_worker`) when ``[sip]`` is configured.

Either way the bridge is a participant beside the media workers: it reaches
rooms through the signalling WebSocket (``sip_room_url``) as any client
does, looks PINs up in the shared database, and keeps its PIN-guessing
budgets where the sign-in keeps its own (Redis when ``redis_url`` is set,
so that every bridge replica shares them).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from sip.node.settings import bridge_config
from wadud.config import Settings
from wadud.errors import ConfigError
from wadud.state import keys
from wadud.web import ratelimit

__all__ = ["BRIDGE", "available", "install_worker", "run"]

log = logging.getLogger("wadud.sip")

#: The bridge of an HTTP role that runs one (``wadud serve`` with ``[sip]``).
BRIDGE: web.AppKey[object] = web.AppKey("sip_bridge", object)


def available() -> bool:
    """Whether the ``sip`` extra (aiortc, PyAV) is installed: the seat in a
    room is an aiortc peer, and the phone's audio is coded with PyAV."""
    try:
        import aiortc  # noqa: F401
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _check(settings: Settings) -> None:
    if not available():
        raise ConfigError("the phone bridge needs aiortc and PyAV: pip install 'wadud[sip]'")


async def _bridge(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    config = bridge_config(settings)
    if config is None:
        yield
        return
    _check(settings)
    from sip.node.bridge import Bridge

    bridge = Bridge(config, settings, app[keys.DB], app[ratelimit.LIMITER])
    await bridge.start()
    app[BRIDGE] = bridge
    print(f"wadud: phone bridge on SIP port {bridge.port} (UDP and TCP)", flush=True)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await bridge.close()


def install_worker(app: web.Application) -> None:
    """Run the bridge inside this HTTP role when ``sip_listen`` is set."""
    app.cleanup_ctx.append(_bridge)


async def run(settings: Settings) -> int:
    """``wadud sip``: the bridge until SIGTERM or SIGINT."""
    from sip.node.bridge import Bridge
    from wadud.state import db
    from wadud.web import workers

    config = bridge_config(settings)
    if config is None:
        raise ConfigError("wadud sip needs sip_listen (HOST:PORT) and a [sip.trunks.NAME] table")
    _check(settings)
    if not settings.secret_key:
        raise ConfigError(
            "wadud sip needs the api's WADUD_SECRET_KEY: it mints the phones' room tokens"
        )
    stop = workers.stop_on_signals()
    async with contextlib.AsyncExitStack() as stack:
        _, pool = await stack.enter_async_context(db.database(settings))
        store: ratelimit.Store = (
            ratelimit.RedisStore(settings.redis_url)
            if settings.redis_url
            else ratelimit.MemoryStore()
        )
        stack.push_async_callback(store.close)
        bridge = Bridge(config, settings, pool, ratelimit.Limiter(store, settings.secret_key))
        await workers.start_worker(stack, settings, pool, bridge)
        log.info("phone bridge running", extra={"port": bridge.port})
        print(f"wadud sip: phone bridge on SIP port {bridge.port} (UDP and TCP)", flush=True)
        await stop.wait()
    return 0
