"""Guests invited into a visit: an interpreter, a family member, a second
clinician, an observer (docs/guests.md).

An invite is a row of ``room_invites`` (migration 0029): the room, the
guest's role and actions, their name, a validity window and a use count
(one by default). Its link is the call page with ``?invite=<id>.<key>``,
the key an HMAC of the id under the server's secret
(:func:`wadud.web.auth.invite_key`), so nothing stored opens a room. The
page redeems it for a room token, once per use; a link previewer that
fetches the page runs no script and uses nothing.

* ``POST /api/v1/calls/invites``: a participant whose role grants
  ``invite`` (their room token) invites into their room; the guest's
  actions are the role's, never more than the inviter's own.
* ``POST /api/v1/calls/invites/list``: the room's invites, for anyone in
  it (the patient sees who is invited); links only for inviters.
* ``POST /api/v1/calls/invites/{id}/revoke``: an inviter takes one back.
* ``POST /api/v1/invites``, ``GET /api/v1/invites?room=``,
  ``DELETE /api/v1/invites/{id}``: the same for a clinic's server with its
  API key, in the clinic's rooms (signalling.edge.tokens).
* ``POST /api/v1/invites/{id}/redeem`` with ``{"key"}``: one use, a room
  token for the guest.

A family member's or an observer's invite needs the patient's agreement
(``needs_approval``): the guest waits in the waiting room until the patient
agrees (``approve_guest`` on the call socket); a refusal turns them away
and kills the link. Revoking sends the guest out of the room at once (a
bus message each replica acts on, signalling.edge.http) and refuses every
later join or resume of that link (:func:`refusal`, the join guard).
Every step is audited.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import quote
from uuid import UUID

from pydantic import Field, StringConstraints

from booking.calls import booking_of
from signalling import errors
from signalling import invites as store
from signalling.edge.tokens import CLOCK_SKEW, RoomNotAllowed, role_actions, room_of_key
from wadud.errors import BadRequest, Forbidden
from wadud.state import keys
from wadud.web import ratelimit
from wadud.web.api import ApiModel, Call, Routes
from wadud.web.auth import RoomGrant, decode_room_token, invite_key_matches, issue_room_token
from wadud.web.roles import ROLES, Action

__all__ = ["Invite", "InviteIn", "InviteNotAllowed", "KeyInviteIn", "Redeemed", "routes"]

routes = Routes("invites", "Guests invited into a visit (docs/guests.md).")

#: The roles a participant may invite from the call page.
GUEST_ROLES = ("interpreter", "family", "clinician", "observer")
#: Built-in roles whose guests wait for the patient's agreement.
NEED_APPROVAL = frozenset({"family", "observer"})
#: Invites one inviter may make: a burst, then so many an hour.
INVITE_RATE = ratelimit.Rate(20, 60)
_ROOM = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: At most this long from now to the end of the window.
LONGEST = dt.timedelta(hours=24)


class InviteNotAllowed(Forbidden):
    code = "invite-not-allowed"
    title = "This participant may not invite, or not this guest"


class _Guest(ApiModel):
    #: The guest's role: a built-in one, or (with a clinic's key) one of the
    #: clinic's own with its ``actions``.
    role: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    #: The name the room shows.
    name: Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
    #: How the link reaches them; none: the answer's ``url`` is handed over.
    channel: Literal["sms", "whatsapp", "email"] | None = None
    #: A phone number in E.164 (sms, whatsapp) or an email address.
    address: Annotated[str, StringConstraints(max_length=254)] | None = None
    #: The language of the message and of the call page.
    locale: Literal["en", "ur", "ar"] = "en"
    #: Minutes from now until the link opens the visit; 0: at once.
    starts_in: Annotated[int, Field(ge=0, le=24 * 60)] = 0
    #: Minutes the link stays usable after it opens.
    valid_for: Annotated[int, Field(ge=5, le=24 * 60)] = 120
    #: How many times the link may be redeemed (each a device).
    uses: Annotated[int, Field(ge=1, le=20)] = 1


class InviteIn(_Guest):
    #: The inviter's room token (a role with ``invite``).
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class KeyInviteIn(_Guest):
    #: The room, as for ``POST /api/v1/tokens``: put in the clinic's namespace.
    room: Annotated[str, Field(min_length=1, max_length=64, pattern=_ROOM)]
    #: A role of the clinic's own: what it grants. Absent: the built-in role's.
    actions: Annotated[list[Action], Field(max_length=len(Action))] | None = None
    #: A role of the clinic's own: whether its guests wait for the patient.
    needs_approval: bool | None = None


class TokenIn(ApiModel):
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class RoomQuery(ApiModel):
    room: Annotated[str, Field(min_length=1, max_length=64)]


class RedeemIn(ApiModel):
    #: The part of the link's ``invite`` after the dot.
    key: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class Invite(ApiModel):
    id: UUID
    room: str
    role: str
    actions: list[str]
    name: str
    channel: str | None
    locale: str
    needs_approval: bool
    #: open, approved (the patient agreed), refused, revoked.
    status: str
    not_before: dt.datetime
    expires_at: dt.datetime
    max_uses: int
    uses: int
    created_at: dt.datetime
    #: The guest's link; only for those who may invite.
    url: str | None = None


class Redeemed(ApiModel):
    room: str
    #: The guest's room token (``join``).
    token: str
    #: The call page with that token.
    url: str
    expires_at: dt.datetime


# -- answers ------------------------------------------------------------------


def _out(settings: Any, row: Mapping[str, Any], *, link: bool) -> Invite:
    return Invite(
        **{k: row[k] for k in Invite.model_fields if k != "url"},
        url=store.link(settings, row["room"], row["id"]) if link else None,
    )


async def _create(
    call: Call[Any, Any],
    guest: _Guest,
    *,
    room: str,
    actions: frozenset[Action],
    needs_approval: bool,
    invited_by: str,
    inviter_name: str,
    inviter_role: str,
) -> Invite:
    """A new invite, from what the inviter asked for."""
    if (guest.channel is None) != (guest.address is None):
        raise BadRequest("give channel and address together, or neither")
    pattern = _EMAIL if guest.channel == "email" else _E164
    if guest.channel is not None and not pattern.match(guest.address or ""):
        raise BadRequest(f"not an address for {guest.channel}: {guest.address!r}")
    await call.request.app[ratelimit.LIMITER].take("invites", invited_by, INVITE_RATE, "invites")
    now = dt.datetime.now(dt.UTC)
    start = now + dt.timedelta(minutes=guest.starts_in)
    end = min(start + dt.timedelta(minutes=guest.valid_for), now + LONGEST)
    row = await store.create(
        call.pool,
        room,
        store.Guest(
            role=guest.role,
            name=guest.name,
            actions=[a.value for a in actions],
            needs_approval=needs_approval,
            channel=guest.channel,
            address=guest.address,
            locale=guest.locale,
            not_before=start,
            expires_at=end,
            uses=guest.uses,
        ),
        invited_by=invited_by,
        inviter_name=inviter_name,
        inviter_role=inviter_role,
    )
    return _out(call.settings, row, link=True)


async def _revoke(call: Call[Any, Any], room: str, invite_id: UUID, by: str, role: str) -> None:
    bus = call.request.app[keys.BUS]
    await store.revoke(call.pool, bus, room, invite_id, by=by, role=role)


async def _list(call: Call[Any, Any], room: str, *, links: bool) -> list[Invite]:
    live = ("open", "approved")
    rows = await store.list_for(call.pool, room)
    return [_out(call.settings, r, link=links and r["status"] in live) for r in rows]


# -- from the call page, with a room token ---------------------------------------


def _inviter(call: Call[Any, Any], token: str) -> RoomGrant:
    grant = decode_room_token(call.settings, token)
    if not grant.can(Action.INVITE):
        lacking = errors.NotAllowed.lacking(Action.INVITE, grant.role)
        raise InviteNotAllowed(lacking.detail, **lacking.extra)
    return grant


@routes.post(
    "/api/v1/calls/invites",
    body=InviteIn,
    returns=Invite,
    status=201,
    auth="public",
    responses={
        401: "The room token is not valid",
        403: "The token's role may not invite, or not this guest (invite-not-allowed)",
        429: "Too many invites from this participant",
    },
    replay=False,
)
async def invite_from_call(call: Call[InviteIn, None]) -> Invite:
    """Invite a guest into the room of one's room token (a role with ``invite``).

    The guest gets one of the guest roles (interpreter, family, clinician,
    observer) with that role's actions, less any the inviter lacks. A family
    member or an observer waits for the patient's agreement."""
    grant = _inviter(call, call.body.token)
    body = call.body
    if body.role not in GUEST_ROLES:
        raise InviteNotAllowed(f"invite one of: {', '.join(GUEST_ROLES)}")
    own = frozenset(Action(a) for a in grant.actions or ())
    return await _create(
        call,
        body,
        room=grant.room,
        actions=ROLES[body.role] & own,
        needs_approval=body.role in NEED_APPROVAL,
        invited_by=grant.identity,
        inviter_name=grant.name,
        inviter_role=grant.role,
    )


@routes.post(
    "/api/v1/calls/invites/list",
    body=TokenIn,
    returns=list[Invite],
    auth="public",
    responses={401: "The room token is not valid"},
    replay=False,
)
async def list_from_call(call: Call[TokenIn, None]) -> list[Invite]:
    """The invites of one's room: anyone in it sees who is invited, and
    those who may invite see the links too."""
    grant = decode_room_token(call.settings, call.body.token)
    return await _list(call, grant.room, links=grant.can(Action.INVITE))


@routes.post(
    "/api/v1/calls/invites/{invite_id:uuid}/revoke",
    body=TokenIn,
    returns=None,
    auth="public",
    responses={
        401: "The room token is not valid",
        403: "The token's role may not invite (invite-not-allowed)",
        404: "No such invite in this room (invite-not-found)",
    },
    replay=False,
)
async def revoke_from_call(call: Call[TokenIn, None]) -> None:
    """Take an invite back: its guest leaves the room at once and the link is dead."""
    grant = _inviter(call, call.body.token)
    await _revoke(call, grant.room, call.path_uuid("invite_id"), grant.identity, grant.role)


# -- from a clinic's server, with its API key -------------------------------------


async def _key_room(call: Call[Any, Any], room: str) -> str:
    """The room a clinic key names: a visit's (``booking-<id>`` of its
    clinic: /api/v1/visits), or one of its own rooms (its namespace)."""
    key = call.api_key
    booking = booking_of(room)
    if booking is None or key.clinic_id is None:
        return room_of_key(key, room)
    clinic = await store.clinic_of_visit(call.pool, booking)
    if clinic != key.clinic_id:
        raise RoomNotAllowed("this visit is not the clinic's")
    return room


@routes.post(
    "/api/v1/invites",
    body=KeyInviteIn,
    returns=Invite,
    status=201,
    auth="api_key",
    responses={
        403: "The key may not invite into this room (room-not-allowed)",
        422: "A role of the clinic's own without its actions",
    },
    replay=False,
)
async def invite_with_key(call: Call[KeyInviteIn, None]) -> Invite:
    """Invite a guest into one of the clinic's rooms with its API key."""
    body = call.body
    room = await _key_room(call, body.room)
    actions = role_actions(body.role, body.actions)
    approval = body.role in NEED_APPROVAL if body.needs_approval is None else body.needs_approval
    key = str(call.api_key.id)
    return await _create(
        call,
        body,
        room=room,
        actions=actions,
        needs_approval=approval,
        invited_by=key,
        inviter_name="",
        inviter_role="api_key",
    )


@routes.get(
    "/api/v1/invites",
    query=RoomQuery,
    returns=list[Invite],
    auth="api_key",
    responses={403: "The key may not see this room (room-not-allowed)"},
)
async def list_with_key(call: Call[None, RoomQuery]) -> list[Invite]:
    """The invites of one of the clinic's rooms, with their links."""
    return await _list(call, await _key_room(call, call.query.room), links=True)


@routes.delete(
    "/api/v1/invites/{invite_id:uuid}",
    query=RoomQuery,
    returns=None,
    auth="api_key",
    responses={404: "No such invite in this room (invite-not-found)"},
)
async def revoke_with_key(call: Call[None, RoomQuery]) -> None:
    """Take an invite back: its guest leaves the room at once and the link is dead."""
    room = await _key_room(call, call.query.room)
    await _revoke(call, room, call.path_uuid("invite_id"), str(call.api_key.id), "api_key")


# -- the guest -------------------------------------------------------------------


@routes.post(
    "/api/v1/invites/{invite_id:uuid}/redeem",
    body=RedeemIn,
    returns=Redeemed,
    auth="public",
    responses={
        404: "No such invite, or a wrong key (invite-not-found)",
        410: "Revoked, refused by the patient, used up or outside its window (invite-closed)",
    },
    replay=False,
)
async def redeem(call: Call[RedeemIn, None]) -> Redeemed:
    """One use of an invite's link: the guest's room token and call page."""
    invite_id = call.path_uuid("invite_id")
    settings = call.settings
    if not invite_key_matches(settings, invite_id, call.body.key):
        raise store.InviteNotFound("no such invite")
    row = await store.redeem(call.pool, invite_id)
    grant = RoomGrant(
        room=row["room"],
        identity=f"guest-{invite_id.hex[:12]}-{row['uses']}",
        name=row["name"],
        role=row["role"],
        actions=tuple(row["actions"]),
        invite=str(invite_id),
        approval=row["needs_approval"] and row["status"] != "approved",
    )
    now = dt.datetime.now(dt.UTC)
    token = issue_room_token(
        settings, grant, not_before=now - CLOCK_SKEW, expires=row["expires_at"]
    )
    lang = f"&lang={row['locale']}" if row["locale"] != "en" else ""
    return Redeemed(
        room=row["room"],
        token=token,
        url=f"{settings.base_url}/call/{quote(row['room'], safe='')}?token={token}{lang}",
        expires_at=row["expires_at"],
    )
