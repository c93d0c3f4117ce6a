"""Room tokens minted with an API key: ``POST /api/v1/tokens``.

A clinic's server or a load tester holds an API key (wadud.web.api_keys,
made with ``wadud key create``) and asks for one participant's room token
and join link at a time, as `wadud token` prints one on the server itself,
without a process start per token, and with rights the caller chooses: a
subscriber that may not publish is a load tester's most common participant.

What a key may mint depends on its scope:

* ``load``: rooms under :data:`~wadud.web.api_keys.LOAD_ROOM_PREFIX` only,
  which no other key and no booking may use. Every participant holds the
  admin right, so none waits in a waiting room for a host a load test does
  not have (as the pre-call check's throwaway rooms, signalling/edge/check.py);
  it is worth nothing beyond rooms that hold no patient's data. The role is
  ``load``.
* ``clinic``: any room name, put in the clinic's own namespace
  (``clinic-<clinic id>-<room>``), so two clinics' "visit-1" are two rooms
  and no key reaches a booking's room or a load room. The participant has
  a built-in role's actions (wadud.web.roles: a doctor admits, removes,
  invites and records; an observer only watches), or a role of the
  clinic's own, named with the ``actions`` it grants.

Each key's mints are rate limited on their own bucket, a load key's apart
from a clinic key's (``limits_load_tokens_*``, ``limits_key_tokens_*``), and
neither touches a patient's limits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Annotated
from urllib.parse import quote

from pydantic import Field

from wadud.errors import BadRequest, Forbidden
from wadud.web import ratelimit
from wadud.web.api import ApiModel, Call, Routes
from wadud.web.api_keys import LOAD_ROOM_PREFIX, ApiKey, Scope
from wadud.web.auth import RoomGrant, issue_room_token
from wadud.web.roles import ROLES, Action, narrowed

#: A client clock a little behind still takes the token.
CLOCK_SKEW = dt.timedelta(minutes=1)

routes = Routes("tokens", "Room tokens and join links minted with an API key.")


class UnknownRole(BadRequest):
    http_status = 422
    code = "unknown-role"
    title = "A role of the clinic's own needs its actions"


class RoomNotAllowed(Forbidden):
    code = "room-not-allowed"
    title = "This key may not mint tokens for this room"


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class TokenRequest(ApiModel):
    #: The room. A load key's rooms start with ``load-``; a clinic key's are
    #: put in the clinic's namespace (the answer's ``room``).
    room: Annotated[str, Field(min_length=1, max_length=64, pattern=_NAME)]
    #: Who joins: a stable id for the person (a second join with the same
    #: identity replaces the first).
    identity: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")]
    #: The name others see; empty: the page asks the person for one.
    name: Annotated[str, Field(max_length=100)] = ""
    #: A clinic key's participant: a built-in role (doctor, patient,
    #: clinician, interpreter, family, observer, staff), or the clinic's own
    #: with its ``actions``. A load key's participants are ``load`` whatever
    #: is asked.
    role: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] = "patient"
    #: What the participant may do (docs/guests.md); absent: the role's.
    #: Needed for a role of the clinic's own.
    actions: Annotated[list[Action], Field(max_length=len(Action))] | None = None
    #: False takes every publish action away (a listener), whatever the role.
    publish: bool = True
    #: False takes ``subscribe`` away (a publisher that receives nothing).
    subscribe: bool = True
    #: The media region for this participant; empty: the replica's.
    region: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")] | None = None
    #: Seconds the token is valid.
    ttl: Annotated[int, Field(ge=60, le=24 * 3600)] = 3600


class RoomToken(ApiModel):
    #: The room the token opens (a clinic key's, in its namespace).
    room: str
    #: The room token, for a client that speaks the protocol itself (``join``).
    token: str
    #: The call page's join link with the token.
    url: str
    expires_at: dt.datetime


def room_of_key(key: ApiKey, room: str) -> str:
    """``room`` as ``key`` may reach it: a load key's as asked, a clinic
    key's in the clinic's namespace; :class:`RoomNotAllowed` otherwise."""
    if key.scope is Scope.LOAD:
        if not room.startswith(LOAD_ROOM_PREFIX) or room == LOAD_ROOM_PREFIX:
            raise RoomNotAllowed(f"a load key's rooms are named {LOAD_ROOM_PREFIX}...")
        return room
    assert key.clinic_id is not None
    return f"clinic-{key.clinic_id.hex}-{room}"


def role_actions(role: str, actions: Iterable[Action] | None) -> frozenset[Action]:
    """What a clinic key grants a participant of ``role``: the ``actions``
    asked for (a role of the clinic's own), else the built-in role's;
    :class:`UnknownRole` for a role neither names."""
    if actions is not None:
        return frozenset(actions)
    if role in ROLES:
        return ROLES[role]
    raise UnknownRole(f"{role!r} is no built-in role: give the actions it grants")


def _actions(body: TokenRequest) -> tuple[Action, ...]:
    """The actions a clinic key's participant gets: :func:`role_actions`,
    less publishing and receiving where turned off."""
    granted = role_actions(body.role, body.actions)
    return tuple(sorted(narrowed(granted, publish=body.publish, subscribe=body.subscribe)))


@routes.post(
    "/api/v1/tokens",
    body=TokenRequest,
    returns=RoomToken,
    status=201,
    auth="api_key",
    responses={
        403: "The key may not mint a token for this room (room-not-allowed)",
        422: "A role that is not built in, without its actions (unknown-role)",
        429: "Too many tokens from this key; retry after Retry-After seconds",
    },
    # The answer is a token: never replayed.
    replay=False,
)
async def mint_token(call: Call[TokenRequest, None]) -> RoomToken:
    """Mint one participant's room token and join link with an API key
    (HTTP Basic: the key id and its secret)."""
    key, body, settings = call.api_key, call.body, call.settings
    room = room_of_key(key, body.room)
    load = key.scope is Scope.LOAD
    rate = (
        ratelimit.Rate(settings.limits_load_tokens_burst, settings.limits_load_tokens_per_hour)
        if load
        else ratelimit.Rate(settings.limits_key_tokens_burst, settings.limits_key_tokens_per_hour)
    )
    await call.request.app[ratelimit.LIMITER].take("key-tokens", key.id, rate, "room tokens")
    grant = RoomGrant(
        room=room,
        identity=body.identity,
        name=body.name,
        role="load" if load else body.role,
        publish=body.publish,
        subscribe=body.subscribe,
        admin=load,
        region=body.region or "",
        actions=None if load else _actions(body),
    )
    now = dt.datetime.now(dt.UTC)
    expires = now + dt.timedelta(seconds=body.ttl)
    token = issue_room_token(settings, grant, not_before=now - CLOCK_SKEW, expires=expires)
    return RoomToken(
        room=room,
        token=token,
        url=f"{settings.base_url}/call/{quote(room, safe='')}?token={token}",
        expires_at=expires,
    )


__all__ = [
    "RoomNotAllowed",
    "RoomToken",
    "TokenRequest",
    "UnknownRole",
    "role_actions",
    "room_of_key",
    "routes",
]
