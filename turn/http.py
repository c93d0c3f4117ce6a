"""The TURN relay seen from the HTTP side: the endpoint that hands a signed-in
user short-lived relay credentials, and the relay ``wadud serve`` runs on
loopback in its own process."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from turn.aio import TurnServer
from turn.config import TurnConfig
from turn.credentials import ice_server, rest_user
from wadud import keys, ratelimit
from wadud.api import ApiModel, Call, Routes

log = logging.getLogger("wadud.turn.http")
routes = Routes("turn", "TURN relay credentials.")
EMBEDDED = web.AppKey("turn_embedded", TurnServer)


class IceServer(ApiModel):
    urls: list[str]
    username: str
    credential: str
    ttl: int


class IceServers(ApiModel):
    #: Ready for ``new RTCPeerConnection({iceServers})``; empty when no relay
    #: is configured.
    ice_servers: list[IceServer]


@routes.get("/api/v1/turn/credentials", returns=IceServers, auth="any")
async def turn_credentials(call: Call[None, None]) -> IceServers:
    """Short-lived TURN credentials and URLs for the caller.

    REST credentials in coturn's ``use-auth-secret`` form (username
    ``expiry:user-id``, or ``expiry:anon-user-id`` for an anonymous session,
    password the base64 HMAC-SHA1 of it), valid for ``turn_credential_ttl``
    seconds. The relay's quota counts allocations per user id, whatever the
    credential; how often a user may ask is limited too."""
    settings, me = call.settings, call.user
    rate = ratelimit.Rate(settings.turn_credentials_burst, settings.turn_credentials_per_hour)
    await call.request.app[ratelimit.LIMITER].take(
        "turn-credentials", str(me.user_id), rate, "TURN credential requests"
    )
    embedded = call.request.app.get(EMBEDDED)
    if embedded is not None:
        secret, urls = embedded.config.secrets[0], embedded.urls()
    elif settings.turn_secrets and settings.turn_urls:
        secret, urls = settings.turn_secrets[0], settings.turn_urls
    else:
        return IceServers(ice_servers=[])
    user = rest_user(str(me.user_id), anonymous=me.anonymous)
    entry = ice_server(secret, user, settings.turn_credential_ttl, time.time(), urls)
    return IceServers(ice_servers=[IceServer.model_validate(entry)])


async def _embedded(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    secret = settings.turn_secrets[0] if settings.turn_secrets else None
    server = TurnServer(TurnConfig.for_loopback(secret, port=settings.turn_embedded_port))
    try:
        await server.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        log.warning(
            "TURN port taken; the embedded relay uses a free port instead",
            extra={"port": settings.turn_embedded_port},
        )
        server = TurnServer(TurnConfig.for_loopback(secret, port=0))
        await server.start()
    app[EMBEDDED] = server
    log.info("embedded TURN relay listening", extra={"urls": server.urls()})
    try:
        yield
    finally:
        await server.close()


def install(app: web.Application) -> None:
    routes.install(app)


def install_embedded(app: web.Application) -> None:
    """``wadud serve``: run a relay on 127.0.0.1 beside the API."""
    if app[keys.SETTINGS].turn_embedded:
        app.cleanup_ctx.append(_embedded)
