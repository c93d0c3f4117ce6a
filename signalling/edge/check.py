"""The pre-call check's server side: ``POST /api/v1/check``.

The check page (``GET /check``, signalling/edge/pages.py) and the ES module's
``checkConnection()`` measure the path to a media worker the way a call
uses it, with no new media-worker code: this endpoint makes a throwaway
room with an unguessable name and two short-lived room tokens for it, one
that may only publish (the probe's sender) and one that may only subscribe
(its receiver). The page joins twice through the ordinary signalling, so the
probe goes up to the SFU and back down, and reads bitrate, round-trip time
and loss from ``getStats()``. The TURN credentials handed out beside the
tokens let it try the relay over TCP and TLS on its own.

Anyone may ask, with no account, so it is limited per client address as
anonymous sessions are (``limits_check_burst``, ``limits_check_per_hour``).
Both tokens carry ``admin`` so that neither waits in a waiting room for the
other; the grant is worth nothing beyond a room only this caller knows.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Annotated

from pydantic import Field

from signalling.edge.http import ice_servers_for
from turn.credentials import rest_user
from turn.http import IceServer
from wadud.web import ratelimit
from wadud.web.api import ApiModel, Call, Routes
from wadud.web.auth import RoomGrant, issue_room_token

#: Check tokens are valid this long: enough to join twice (once more over the
#: relay when UDP is blocked), too short to be worth keeping.
CHECK_VALIDITY = dt.timedelta(minutes=2)
#: As for demo links (signalling/edge/pages.py): a client clock a little behind.
CLOCK_SKEW = dt.timedelta(minutes=1)
#: How the two participants are named, were anyone to look.
CHECK_NAME = "Connection check"

routes = Routes("check", "The pre-call check: a throwaway room to measure the path to media.")


class CheckRequest(ApiModel):
    #: The media region to measure (a join token's ``region``); empty: the
    #: region of the API replica that answers.
    region: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")] | None = None


class CheckRoom(ApiModel):
    #: The throwaway room's name.
    room: str
    #: A room token that may only publish: the probe's sender.
    send_token: str
    #: A room token that may only subscribe: the probe's receiver.
    receive_token: str
    #: The tokens expire then; join before.
    expires_at: dt.datetime
    #: Our TURN relay with short-lived credentials (as in ``joined``), to try
    #: it over TCP (``turn:...?transport=tcp``) and TLS (``turns:``); empty
    #: when there is no relay.
    ice_servers: list[IceServer]


@routes.post(
    "/api/v1/check",
    body=CheckRequest,
    returns=CheckRoom,
    status=201,
    auth="public",
    responses={429: "Too many checks from this address; retry after Retry-After seconds"},
    # The answer holds room tokens and TURN credentials: never replayed.
    replay=False,
)
async def create_check(call: Call[CheckRequest, None]) -> CheckRoom:
    """Start a pre-call check: a throwaway room and two tokens to probe it.

    No account needed; limited per client address like anonymous sessions
    (429 with Retry-After past the limit). The send token may only publish
    and the receive token may only subscribe, both for two minutes."""
    settings = call.settings
    rate = ratelimit.Rate(settings.limits_check_burst, settings.limits_check_per_hour)
    await call.request.app[ratelimit.LIMITER].take(
        "check", ratelimit.client_address(call.request), rate, "connection checks"
    )
    room = "check-" + secrets.token_hex(8)
    now = dt.datetime.now(dt.UTC)
    expires = now + CHECK_VALIDITY
    region = call.body.region or ""

    def token(side: str, *, publish: bool) -> str:
        grant = RoomGrant(
            room=room,
            identity=f"{room}-{side}",
            name=CHECK_NAME,
            role="check",
            publish=publish,
            subscribe=not publish,
            admin=True,
            region=region,
        )
        return issue_room_token(settings, grant, not_before=now - CLOCK_SKEW, expires=expires)

    # The relay counts a check's allocations under the anonymous quota, and
    # its credentials lapse with the tokens.
    relay_user = rest_user(room, anonymous=True)
    servers = ice_servers_for(call.request.app, relay_user, ttl=int(CHECK_VALIDITY.total_seconds()))
    return CheckRoom(
        room=room,
        send_token=token("send", publish=True),
        receive_token=token("receive", publish=False),
        expires_at=expires,
        ice_servers=[IceServer.model_validate(s) for s in servers],
    )


__all__ = ["CHECK_VALIDITY", "CheckRoom", "routes"]
