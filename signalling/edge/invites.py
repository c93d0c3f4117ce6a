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
from typing import Annotated, Any, Literal
from urllib.parse import quote
from uuid import UUID

import asyncpg
from pydantic import Field, StringConstraints

from signalling import errors
from signalling.edge.tokens import CLOCK_SKEW, room_of_key
from signalling.room.outputs import InviteDecided
from wadud.errors import BadRequest, Forbidden, NotFound
from wadud.messaging import outbox
from wadud.state import audit, keys
from wadud.web import ratelimit
from wadud.web.api import ApiModel, Call, Routes
from wadud.web.auth import (
    RoomGrant,
    decode_room_token,
    invite_key,
    invite_key_matches,
    issue_room_token,
)
from wadud.web.roles import ROLES, Action

__all__ = [
    "REVOKED_TOPIC",
    "Invite",
    "InviteIn",
    "decided",
    "refusal",
    "routes",
]

routes = Routes("invites", "Guests invited into a visit (docs/guests.md).")

#: The bus topic of a revoked invite: ``{"room", "invite_id"}``.
REVOKED_TOPIC = "call.invite_revoked"
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

_COLUMNS = """id, room, role, actions, name, channel, locale, needs_approval, invited_by,
    not_before, expires_at, max_uses, uses, status, created_at"""


class InviteNotAllowed(Forbidden):
    code = "invite-not-allowed"
    title = "This participant may not invite, or not this guest"


class InviteNotFound(NotFound):
    code = "invite-not-found"
    title = "No such invite"


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


# -- the store -----------------------------------------------------------------


def _link(settings: Any, room: str, invite_id: UUID) -> str:
    key = invite_key(settings, invite_id)
    return f"{settings.base_url}/call/{quote(room, safe='')}?invite={invite_id}.{key}"


def _out(settings: Any, row: asyncpg.Record, *, link: bool) -> Invite:
    return Invite(
        **{k: row[k] for k in Invite.model_fields if k != "url"},
        url=_link(settings, row["room"], row["id"]) if link else None,
    )


def _audit_role(role: str) -> str:
    return re.sub(r"[^a-z_]", "_", role)[:32] or "participant"


def _actor(identity: str) -> UUID | None:
    try:
        return UUID(identity)
    except ValueError:
        return None


async def _clinic_of(conn: asyncpg.Connection, room: str) -> UUID | None:
    """The clinic whose room ``room`` is: a booking's, or a clinic key's."""
    if room.startswith("booking-"):
        try:
            booking = UUID(room.removeprefix("booking-"))
        except ValueError:
            return None
        found = await conn.fetchval("SELECT clinic_id FROM bookings WHERE id = $1", booking)
        return found if isinstance(found, UUID) else None
    if room.startswith("clinic-") and len(room) > 40:
        try:
            return UUID(room[7:39])
        except ValueError:
            return None
    return None


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
    """Keep a new invite, audited, with its message's outbox event."""
    if (guest.channel is None) != (guest.address is None):
        raise BadRequest("give channel and address together, or neither")
    pattern = _EMAIL if guest.channel == "email" else _E164
    if guest.channel is not None and not pattern.match(guest.address or ""):
        raise BadRequest(f"not an address for {guest.channel}: {guest.address!r}")
    settings = call.settings
    await call.request.app[ratelimit.LIMITER].take("invites", invited_by, INVITE_RATE, "invites")
    now = dt.datetime.now(dt.UTC)
    start = now + dt.timedelta(minutes=guest.starts_in)
    end = min(start + dt.timedelta(minutes=guest.valid_for), now + LONGEST)
    async with call.pool.acquire() as conn, conn.transaction():
        clinic = await _clinic_of(conn, room)
        row = await conn.fetchrow(
            f"""INSERT INTO room_invites (room, clinic_id, role, actions, name, channel, address,
                    locale, needs_approval, invited_by, not_before, expires_at, max_uses)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                RETURNING {_COLUMNS}""",
            room,
            clinic,
            guest.role,
            sorted(a.value for a in actions),
            guest.name,
            guest.channel,
            guest.address,
            guest.locale,
            needs_approval,
            invited_by,
            start,
            end,
            guest.uses,
        )
        await audit.record(
            conn,
            actor=_actor(invited_by),
            role=_audit_role(inviter_role),
            action="invite.created",
            clinic=clinic,
            object=f"invite/{row['id']}",
            detail={"room": room, "role": guest.role, "channel": guest.channel},
        )
        if guest.channel is not None:
            await outbox.emit(
                conn,
                "invite.created",
                {
                    "invite_id": str(row["id"]),
                    "room": room,
                    "role": guest.role,
                    "name": guest.name,
                    "inviter": inviter_name,
                    "channel": guest.channel,
                    "address": guest.address,
                    "locale": guest.locale,
                    "not_before": start.isoformat(),
                    "expires_at": end.isoformat(),
                    "clinic_id": str(clinic) if clinic else None,
                },
            )
    return _out(settings, row, link=True)


async def _revoke(call: Call[Any, Any], room: str, invite_id: UUID, by: str, role: str) -> None:
    async with call.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE room_invites SET status = 'revoked', closed_at = now(), decided_by = $3
               WHERE id = $1 AND room = $2 RETURNING clinic_id""",
            invite_id,
            room,
            by,
        )
        if row is None:
            raise InviteNotFound(f"no invite {invite_id} in this room")
        await audit.record(
            conn,
            actor=_actor(by),
            role=_audit_role(role),
            action="invite.revoked",
            clinic=row["clinic_id"],
            object=f"invite/{invite_id}",
            detail={"room": room},
        )
    # Each replica sends the guest out of the room it owns (signalling.edge.http).
    await call.request.app[keys.BUS].publish(
        REVOKED_TOPIC, {"room": room, "invite_id": str(invite_id)}
    )


async def _list(call: Call[Any, Any], room: str, *, links: bool) -> list[Invite]:
    rows = await call.pool.fetch(
        f"SELECT {_COLUMNS} FROM room_invites WHERE room = $1 ORDER BY created_at", room
    )
    live = ("open", "approved")
    return [_out(call.settings, r, link=links and r["status"] in live) for r in rows]


async def refusal(pool: asyncpg.Pool, invite_id: str) -> str | None:
    """Why a guest's link no longer opens the room (None: it does). The
    join guard asks at every join and resume."""
    try:
        iid = UUID(invite_id)
    except ValueError:
        return "the link names no invite"
    row = await pool.fetchrow(
        "SELECT status, expires_at < now() AS over FROM room_invites WHERE id = $1", iid
    )
    if row is None:
        return "the invite is gone"
    if row["status"] in ("revoked", "refused"):
        return f"the invite was {row['status']}"
    if row["over"]:
        return "the invite has expired"
    return None


async def decided(pool: asyncpg.Pool, room: str, answer: InviteDecided) -> None:
    """Keep the patient's answer about an invite of ``room`` (the room's
    :class:`InviteDecided`): approved, or refused (its link dies)."""
    try:
        iid = UUID(answer.invite)
    except ValueError:
        return
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE room_invites
               SET status = $3, decided_by = $4,
                   closed_at = CASE WHEN $3 = 'refused' THEN now() END
               WHERE id = $1 AND room = $2 AND needs_approval AND status IN ('open', 'approved')
               RETURNING clinic_id""",
            iid,
            room,
            "approved" if answer.agreed else "refused",
            answer.by,
        )
        if row is None:
            return
        await audit.record(
            conn,
            actor=_actor(answer.by),
            role="patient",
            action="invite.approved" if answer.agreed else "invite.refused",
            clinic=row["clinic_id"],
            object=f"invite/{iid}",
            detail={"room": room},
        )


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
    room = room_of_key(call.api_key, body.room)
    if body.actions is not None:
        actions = frozenset(body.actions)
    elif body.role in ROLES:
        actions = ROLES[body.role]
    else:
        raise BadRequest(f"{body.role!r} is no built-in role: give the actions it grants")
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
    return await _list(call, room_of_key(call.api_key, call.query.room), links=True)


@routes.delete(
    "/api/v1/invites/{invite_id:uuid}",
    query=RoomQuery,
    returns=None,
    auth="api_key",
    responses={404: "No such invite in this room (invite-not-found)"},
)
async def revoke_with_key(call: Call[None, RoomQuery]) -> None:
    """Take an invite back: its guest leaves the room at once and the link is dead."""
    room = room_of_key(call.api_key, call.query.room)
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
        raise InviteNotFound("no such invite")
    async with call.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""UPDATE room_invites SET uses = uses + 1
                WHERE id = $1 AND status IN ('open', 'approved') AND uses < max_uses
                  AND now() >= not_before AND now() < expires_at
                RETURNING {_COLUMNS}, clinic_id""",
            invite_id,
        )
        if row is None:
            why = await refusal(call.pool, str(invite_id))
            used = await conn.fetchval(
                "SELECT uses >= max_uses FROM room_invites WHERE id = $1", invite_id
            )
            unused = "the link is not open yet"
            raise errors.InviteClosed(why or ("the link was used" if used else unused))
        await audit.record(
            conn,
            actor=None,
            role=_audit_role(row["role"]),
            action="invite.redeemed",
            clinic=row["clinic_id"],
            object=f"invite/{invite_id}",
            detail={"room": row["room"], "use": row["uses"]},
        )
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
