"""The TURN relay seen from the HTTP side: the endpoint that hands a signed-in
user short-lived relay credentials, and the relay ``wadud serve`` runs on
loopback in its own process."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from turn import tls
from turn.aio import TurnServer
from turn.config import TurnConfig
from turn.credentials import ice_server, rest_user
from wadud.state import keys
from wadud.web import ratelimit
from wadud.web.api import ApiModel, Call, Routes

if TYPE_CHECKING:
    from wadud.config import Settings

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


def embedded_tls_files(settings: Settings) -> tuple[str, str]:
    """The certificate and key of the embedded relay's TLS listener:
    ``turn_tls_cert``/``turn_tls_key`` when set, else a self-signed pair for
    the loopback names, made once under ``data_dir`` (:func:`turn.tls.self_signed`)."""
    if settings.turn_tls_cert:
        return settings.turn_tls_cert, settings.turn_tls_key
    cert, key = tls.self_signed(settings.data_dir / "turn-tls")
    return str(cert), str(key)


async def _start_embedded(settings: Settings) -> TurnServer:
    """The relay on the configured ports; when one is taken, TLS on a free
    port, and when that is not enough, every listener on free ports."""
    secret = settings.turn_secrets[0] if settings.turn_secrets else None
    cert, key = embedded_tls_files(settings)
    wanted = (settings.turn_embedded_port, settings.turn_embedded_tls_port)
    tries = list(dict.fromkeys([wanted, (wanted[0], 0), (0, 0)]))
    for i, (port, tls_port) in enumerate(tries):
        config = TurnConfig.for_loopback(
            secret,
            port=port,
            listen_tls=(("127.0.0.1", tls_port),),
            tls_cert=cert,
            tls_key=key,
        )
        server = TurnServer(config)
        try:
            await server.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or i == len(tries) - 1:
                raise
            continue
        if i:
            log.warning(
                "TURN port taken; the embedded relay uses a free port instead",
                extra={"port": wanted[0], "tls_port": wanted[1]},
            )
        return server
    raise AssertionError("unreachable: the last try raises")


async def _embedded(app: web.Application) -> AsyncIterator[None]:
    server = await _start_embedded(app[keys.SETTINGS])
    app[EMBEDDED] = server
    log.info("embedded TURN relay listening", extra={"urls": server.urls()})
    try:
        yield
    finally:
        await server.close()


def install(app: web.Application) -> None:
    routes.install(app)


def install_embedded(app: web.Application) -> None:
    """``wadud serve``: run a relay on 127.0.0.1 beside the API, over UDP, TCP
    and TLS (``turn_embedded_port``, ``turn_embedded_tls_port``)."""
    if app[keys.SETTINGS].turn_embedded:
        app.cleanup_ctx.append(_embedded)
