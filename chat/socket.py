"""Chat's WebSocket endpoint, ``GET /api/v1/chat/ws`` (protocol in
``docs/protocol.md``, "Chat"): one :class:`Session` per connection
authenticates, then turns each frame into a call of the chat service
(``app[CHAT]``) and its answer into a frame; :func:`refusal` turns every
refused frame into an ``error`` frame. Events reach the connection through
the hub (:class:`chat.hub.Client`), written by one task per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from uuid import UUID

from aiohttp import WSMsgType, web

from chat import protocol
from chat.access import Access
from chat.errors import ConversationNotFound, SessionRevoked
from chat.hub import Client
from chat.service import CHAT, Ack
from wadud.errors import BadRequest, Unauthorized, WadudError
from wadud.state import keys
from wadud.web import auth
from wadud.web.api import Principal

log = logging.getLogger("wadud.chat")

#: Set on a request by a handler that authenticated it some other way (the
#: call page's room token): the WebSocket may use this one conversation only.
ONLY_CONVERSATION: web.RequestKey[UUID] = web.RequestKey("chat_only_conversation", UUID)
AUTH_TIMEOUT = 10.0


class Session:
    """One WebSocket connection: authenticate, then handle frames in order."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request = request
        self.ws = ws
        self.svc = request.app[CHAT]
        self.settings = request.app[keys.SETTINGS]
        self.principal: Principal | None = None
        self.client: Client | None = None
        self.access: dict[UUID, Access] = {}
        self.only = request.get(ONLY_CONVERSATION)
        #: Closing the connection after a revocation (kept so it is not collected).
        self.closing: asyncio.Task[None] | None = None

    def send(self, frame: dict[str, object]) -> None:
        if self.client is not None:
            self.client.put(protocol.encode(frame))

    async def authenticate(self, token: str) -> Principal:
        principal = auth.decode_access_token(self.settings, token)
        if not await auth.principal_is_live(self.request.app[keys.DB], principal):
            raise auth.InvalidToken("this session was revoked")
        return principal

    async def _access(self, cid: UUID) -> Access:
        acc = self.access.get(cid)
        if self.only is not None and cid != self.only:
            raise ConversationNotFound("no such conversation")
        if acc is None:
            assert self.principal is not None
            acc = await self.svc.authorize(self.principal, cid)
            self.access[cid] = acc
        return acc

    async def _change(
        self,
        frame: protocol.Send | protocol.Edit | protocol.Delete,
        change: Callable[..., Awaitable[Ack]],
    ) -> None:
        """A new event in the frame's conversation (``send``, ``edit``,
        ``delete``: the service's method for it), answered ``ack``."""
        acc = await self._access(frame.conversation_id)
        ack = await change(acc, self.principal, client_id=frame.client_id, ref=frame.id)
        self.send(protocol.reply("ack", frame.id, **ack.fields()))

    def _answer(
        self, kind: str, frame: protocol.ClientFrame, conversation: UUID, **fields: Any
    ) -> None:
        """The answer to ``frame``, about one conversation."""
        self.send(protocol.reply(kind, frame.id, conversation_id=str(conversation), **fields))

    async def handle(self, frame: protocol.ClientFrame) -> None:
        who = self.principal
        assert who is not None
        assert self.client is not None
        hub = self.svc.hub
        match frame:
            case protocol.Auth():
                raise protocol.BadFrame("already authenticated", ref=frame.id)
            case protocol.Ping():
                self.send(protocol.reply("pong", frame.id))
            case protocol.Subscribe():
                acc = await self._access(frame.conversation_id)
                # The answer goes first so the client knows where the
                # backlog that follows ends.
                last = await self.svc.start_reading(acc, who, frame.after)
                self._answer(
                    "subscribed", frame, acc.conversation_id, last_seq=last, can_write=acc.can_write
                )
                await hub.subscribe(self.client, acc, frame.after)
            case protocol.Unsubscribe():
                hub.unsubscribe(self.client, frame.conversation_id)
                self._answer("unsubscribed", frame, frame.conversation_id)
            case protocol.Send():
                await self._change(
                    frame,
                    partial(self.svc.send, body=frame.body, attachment_id=frame.attachment_id),
                )
            case protocol.Edit():
                await self._change(
                    frame, partial(self.svc.edit, target_seq=frame.target_seq, body=frame.body)
                )
            case protocol.Delete():
                await self._change(frame, partial(self.svc.delete, target_seq=frame.target_seq))
            case protocol.Typing():
                acc = await self._access(frame.conversation_id)
                self.svc.typing(acc, who)
            case protocol.Read():
                acc = await self._access(frame.conversation_id)
                pos = await self.svc.read(acc, who, frame.seq)
                self._answer("read_ok", frame, acc.conversation_id, last_read_seq=pos)
            case protocol.History():
                acc = await self._access(frame.conversation_id)
                events = await self.svc.list_events(
                    acc, who, after=None, before=frame.before, limit=frame.limit
                )
                self._answer("history", frame, acc.conversation_id, events=events)


def refusal(exc: WadudError, ref: str | None = None, *, fatal: bool = False) -> dict[str, object]:
    """The ``error`` frame that refuses a frame (``ref``, its ``id``) or the
    connection (``fatal``: the server closes right after it): the error's
    wire code and message, with a field error's ``errors`` or what else
    the error carries that fits a frame (``retry_after``)."""
    if isinstance(exc, protocol.InvalidFrame):
        return protocol.error_frame(exc.code, exc.detail, ref=ref, fatal=fatal, errors=exc.errors)
    extra: dict[str, Any] = {k: v for k, v in exc.extra.items() if isinstance(v, int | float | str)}
    return protocol.error_frame(exc.code, exc.detail, ref=ref, fatal=fatal, **extra)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """``GET /api/v1/chat/ws``: the chat WebSocket (docs/protocol.md)."""
    settings = request.app[keys.SETTINGS]
    # Frames up to four bodies (JSON escapes) plus room for the envelope get
    # a clear "too-large" error frame; past that aiohttp closes with 1009.
    ws = web.WebSocketResponse(
        heartbeat=30.0, max_msg_size=4 * settings.chat_max_body_bytes + 16_384
    )
    token = request.query.get("token")
    await ws.prepare(request)
    session = Session(request, ws)
    writer: asyncio.Task[None] | None = None
    try:
        # A native client may send Authorization: Bearer on the upgrade
        # (the authenticate middleware checked it); browsers cannot.
        principal = request.get(keys.PRINCIPAL) or await _ws_auth(session, token)
        if principal is None:
            return ws
        session.principal = principal

        def overflow() -> None:
            asyncio.get_running_loop().create_task(
                ws.close(code=protocol.CLOSE_SLOW_CONSUMER, message=b"slow consumer; resume")
            )

        def revoked(reason: str) -> None:
            # The last frame says why; the writer sends it, then the close.
            ended = SessionRevoked(f"this session ended ({reason}); sign in")
            client.queue.put_nowait(protocol.encode(refusal(ended, fatal=True)))
            client.queue.put_nowait(None)
            session.closing = asyncio.get_running_loop().create_task(_close_revoked(ws, writer))

        client = Client(
            principal.user_id,
            queue_max=settings.chat_client_queue_max,
            on_overflow=overflow,
            principal=principal,
            on_revoked=revoked,
        )
        session.client = client
        writer = asyncio.create_task(_writer(ws, client))
        request.app[CHAT].hub.attach(client)
        session.send(
            protocol.reply("ready", None, user_id=str(principal.user_id), role=principal.role.value)
        )
        async for msg in ws:
            if client.revoked:
                break
            if msg.type == WSMsgType.TEXT:
                await _one(session, msg.data)
            elif msg.type == WSMsgType.BINARY:
                session.send(refusal(protocol.BadFrame("frames are JSON text, not binary")))
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        if session.client is not None:
            request.app[CHAT].hub.drop(session.client)
            session.client.queue.put_nowait(None)
        if writer is not None:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await asyncio.wait_for(writer, 5.0)
        if session.closing is not None:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, TimeoutError):
                await asyncio.wait_for(session.closing, 5.0)
    return ws


async def _close_revoked(ws: web.WebSocketResponse, writer: asyncio.Task[None] | None) -> None:
    """Close a connection whose session was revoked, after its last frame."""
    if writer is not None:
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(writer), 2.0)
    await ws.close(code=protocol.CLOSE_UNAUTHORIZED, message=b"session revoked")


async def _one(session: Session, text: str) -> None:
    ref: str | None = None
    if session.client is not None and session.client.revoked:
        return  # the session ended: nothing more is read, written or answered
    try:
        frame = protocol.parse(text)
        ref = frame.id
        await session.handle(frame)
    except asyncio.CancelledError:
        raise
    except protocol.ProtocolError as exc:
        session.send(refusal(exc, exc.ref))
    except WadudError as exc:
        session.send(refusal(exc, ref))
    except Exception:
        log.exception("chat frame failed")
        session.send(refusal(WadudError("the server failed; try again"), ref))


async def _ws_auth(session: Session, token: str | None) -> Principal | None:
    """The caller from ``?token=`` or a first ``auth`` frame; on failure an
    error frame and close 4401 (4408 if no frame came in time)."""
    ws = session.ws
    ref = None
    try:
        if token is None:
            try:
                msg = await ws.receive(timeout=AUTH_TIMEOUT)
            except TimeoutError:
                late = refusal(Unauthorized("auth timed out"), fatal=True)
                await ws.send_str(protocol.encode(late))
                await ws.close(code=protocol.CLOSE_AUTH_TIMEOUT, message=b"auth timeout")
                return None
            if msg.type != WSMsgType.TEXT:
                await ws.close(code=protocol.CLOSE_UNAUTHORIZED, message=b"auth first")
                return None
            frame = protocol.parse(msg.data)
            ref = frame.id
            if not isinstance(frame, protocol.Auth):
                raise Unauthorized('the first frame must be {"type": "auth", "token": ...}')
            token = frame.token
        return await session.authenticate(token)
    except (Unauthorized, protocol.ProtocolError, BadRequest) as exc:
        # Whatever went wrong (a bad token, a malformed first frame), the
        # refusal is ``unauthorized``, with what went wrong as its message.
        err = refusal(Unauthorized(exc.detail), ref, fatal=True)
        await ws.send_str(protocol.encode(err))
        await ws.close(code=protocol.CLOSE_UNAUTHORIZED, message=b"unauthorized")
        return None


async def _writer(ws: web.WebSocketResponse, client: Client) -> None:
    queue = client.queue
    try:
        while True:
            text = await queue.get()
            if text is None or ws.closed:
                return
            await ws.send_str(text)
    except (ConnectionError, RuntimeError):
        return  # the peer went away; the reader loop ends too
