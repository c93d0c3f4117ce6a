"""The consultation's chat, reached from the call page with its room token.

The call page holds a room token, not an access token (a clinic's page may
frame it; the patient may never have signed in to our app). A booking's
video link (``GET /api/v1/bookings/{id}/video-link``) names its booking, its
slot, the user (``sub``) and their sign-in session (``sid``); that is enough
to act as that user in that one booking's chat and nowhere else:

* ``POST /api/v1/calls/chat`` with ``{"token"}``: the conversation of the
  token's booking (opened on first use) and whether the caller may write.
* ``GET /api/v1/calls/chat/ws?token=ROOM_TOKEN``: the chat WebSocket of
  docs/protocol.md ("Chat"), held to that one conversation; everything else
  (ordering, resume, exactly-once delivery across nodes) is the chat's own.

A token without a booking (a demo room, a room made by ``wadud token``) has
no chat: 404, and the page hides its chat. Every request checks what a join
checks: the token's signature and validity, the booking still open for that
slot (``booking.calls.link_refusal``), and the sign-in session still live.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from aiohttp import web
from pydantic import StringConstraints

from booking.calls import link_refusal
from chat.access import Access, access
from chat.conversations import open_for_booking
from chat.service import CHAT
from chat.socket import ONLY_CONVERSATION, websocket
from signalling.errors import BookingClosed, NotAllowed
from wadud.errors import Forbidden, NotFound
from wadud.state import keys
from wadud.web.api import ApiModel, Call, Principal, Role, Routes
from wadud.web.auth import InvalidToken, RoomGrant, decode_room_token, principal_is_live
from wadud.web.roles import Action

__all__ = ["CallChat", "CallChatIn", "ChatNotAllowed", "NoCallChat", "install", "routes"]

routes = Routes("calls", "Video calls: the demo room and the call page's chat.")


class NoCallChat(NotFound):
    code = "no-chat"
    title = "This call has no consultation chat"


class ChatNotAllowed(Forbidden):
    code = "chat-not-allowed"
    title = "This participant's role does not grant chat"


class CallChatIn(ApiModel):
    #: The room token of a booking's video link.
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class CallChat(ApiModel):
    #: The booking's conversation (docs/protocol.md, "Chat").
    conversation_id: UUID
    #: Who the token acts as: a chat event's ``sender_id`` equal to this is yours.
    user_id: UUID
    can_write: bool


async def _principal(app: web.Application, token: str) -> tuple[Principal, UUID]:
    """The user a booking link's room token acts for, and its booking."""
    if CHAT not in app:
        raise NoCallChat("chat is not served here")
    grant: RoomGrant = decode_room_token(app[keys.SETTINGS], token)
    if not grant.can(Action.CHAT):
        lacking = NotAllowed.lacking(Action.CHAT, grant.role)
        raise ChatNotAllowed(lacking.detail, **lacking.extra)
    if not grant.booking:
        raise NoCallChat("this call is not a booking's consultation")
    pool = app[keys.DB]
    refusal = await link_refusal(pool, grant.booking, grant.slot)
    if refusal is not None:
        raise BookingClosed(refusal.detail, reason=refusal.reason)
    try:
        user_id, booking_id = UUID(grant.identity), UUID(grant.booking)
        family = UUID(grant.sid) if grant.sid else None
    except ValueError:
        raise NoCallChat("this link names no user of this server") from None
    row = await pool.fetchrow(
        "SELECT role, clinic_id, anonymous FROM users WHERE id = $1 AND NOT disabled", user_id
    )
    if row is None:
        raise InvalidToken("the link's user is gone")
    principal = Principal(
        user_id=user_id,
        role=Role(row["role"]),
        clinic_id=row["clinic_id"],
        anonymous=row["anonymous"],
        family_id=family,
    )
    if not await principal_is_live(pool, principal):
        raise InvalidToken("this session was revoked")
    return principal, booking_id


async def _conversation(app: web.Application, token: str) -> tuple[Principal, Access]:
    principal, booking_id = await _principal(app, token)
    pool = app[keys.DB]
    async with pool.acquire() as conn:
        cid = await open_for_booking(conn, principal, booking_id)
        return principal, await access(conn, principal, cid)


@routes.post(
    "/api/v1/calls/chat",
    body=CallChatIn,
    returns=CallChat,
    auth="public",
    responses={
        401: "The token is not valid, or its sign-in session ended",
        403: "The participant's role does not grant chat (chat-not-allowed)",
        404: "The call has no consultation chat (no booking)",
        410: "The booking was cancelled, completed or moved",
    },
    # Its body is a credential: never kept in the idempotency store.
    replay=False,
)
async def call_chat(call: Call[CallChatIn, None]) -> CallChat:
    """The chat of the consultation a room token joins.

    For a booking's video link: the booking's conversation (opened on first
    use) as the link's user. Then open ``/api/v1/calls/chat/ws?token=`` with
    the same token and speak the chat protocol, limited to this conversation."""
    principal, acc = await _conversation(call.request.app, call.body.token)
    return CallChat(
        conversation_id=acc.conversation_id, user_id=principal.user_id, can_write=acc.can_write
    )


async def chat_socket(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/calls/chat/ws?token=ROOM_TOKEN``: the chat WebSocket as
    the room token's user, held to its booking's conversation."""
    token = request.query.get("token", "")
    if not token:
        raise InvalidToken("give the room token as ?token=")
    principal, acc = await _conversation(request.app, token)
    request[keys.PRINCIPAL] = principal
    request[ONLY_CONVERSATION] = acc.conversation_id
    return await websocket(request)


def install(app: web.Application) -> None:
    app.router.add_get("/api/v1/calls/chat/ws", chat_socket, name="call-chat-ws")
    routes.install(app)
