"""Chat over HTTP: the REST endpoints (declared with :class:`wadud.api.Routes`,
so they are in the OpenAPI document) and the WebSocket endpoint
``GET /api/v1/chat/ws`` (protocol in ``docs/protocol.md``, "Chat").

:func:`install` adds both and a cleanup context that starts the hub (bus
subscription, publisher, reconcile loop) after the pool and bus exist and
stops it before them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Annotated, Any, Literal
from uuid import UUID

from aiohttp import WSMsgType, web
from pydantic import Field, StringConstraints, field_validator, model_validator

from chat import conversations, eventlog, protocol
from chat.access import (
    Access,
    access,
    conversation_view,
    list_for,
    require_write,
    set_staff_policy,
    staff_policy,
)
from chat.attachments import attachment_row
from chat.crypto import Keyring
from chat.errors import BadSequence, ChatError, ConversationNotFound, NotAllowed
from chat.hub import Client, Hub
from chat.service import Ack as ServiceAck
from chat.service import ChatService
from privacy import audit
from wadud import auth, keys
from wadud.api import ApiModel, Call, Principal, Role, Routes, file_body
from wadud.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
    WadudError,
)
from wadud.http import read_upload
from wadud.storage import sniff_type, storage_of

log = logging.getLogger("wadud.chat")

CHAT = web.AppKey("chat", ChatService)
#: Set on a request by a handler that authenticated it some other way (the
#: call page's room token): the WebSocket may use this one conversation only.
ONLY_CONVERSATION: web.RequestKey[UUID] = web.RequestKey("chat_only_conversation", UUID)
routes = Routes("chat", "Consultation chat: conversations, messages, attachments.")

_CONV = "/api/v1/chat/conversations/{conversation_id:uuid}"
ClientId = Annotated[str, StringConstraints(min_length=1, max_length=100)]
AUTH_TIMEOUT = 10.0
_ACCEPTED = {"image/jpeg", "image/png", "image/gif", "image/webp", "application/pdf"}


# -- models ------------------------------------------------------------------------


class ChatModel(ApiModel):
    @field_validator("*", mode="after")
    @classmethod
    def _sound(cls, value: Any) -> Any:
        # A JSON escape can carry a lone surrogate, which cannot be stored.
        if isinstance(value, str) and not protocol.sound_text(value):
            raise ValueError("not valid Unicode text")
        return value


class OpenConversation(ApiModel):
    """Either ``booking_id`` (the booking's patient and doctor), or
    ``patient_id`` and ``doctor_id`` (clinic staff opening a conversation
    with a doctor of their clinic)."""

    booking_id: UUID | None = None
    patient_id: UUID | None = None
    doctor_id: UUID | None = None

    @model_validator(mode="after")
    def _one_form(self) -> OpenConversation:
        by_booking = self.booking_id is not None
        has = (self.patient_id is not None, self.doctor_id is not None)
        if has != ((False, False) if by_booking else (True, True)):
            raise ValueError("give booking_id, or patient_id and doctor_id")
        return self


class Conversation(ApiModel):
    id: UUID
    clinic_id: UUID
    booking_id: UUID | None
    patient_id: UUID
    doctor_id: UUID
    last_seq: int
    last_read_seq: int
    unread: int
    my_role: Literal["patient", "doctor", "clinic_staff", "admin"]
    can_write: bool
    created_at: dt.datetime
    last_event_at: dt.datetime | None


class ListQuery(ApiModel):
    limit: Annotated[int, Field(ge=1, le=200)] = 50


class AttachmentRef(ApiModel):
    id: UUID
    content_type: str
    size: int


class ChatEvent(ApiModel):
    conversation_id: UUID
    seq: int
    kind: Literal["message", "edit", "delete"]
    sender_id: UUID
    client_id: str
    body: str | None
    target_seq: int | None
    attachment: AttachmentRef | None
    at: dt.datetime


class EventsQuery(ApiModel):
    """``after``: events after it, oldest first (resume). ``before``: events
    before it, newest first (scrolling back). Neither: the newest."""

    after: Annotated[int, Field(ge=0, le=2**62)] | None = None
    before: Annotated[int, Field(ge=1, le=2**62)] | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50

    @model_validator(mode="after")
    def _not_both(self) -> EventsQuery:
        if self.after is not None and self.before is not None:
            raise ValueError("give after or before, not both")
        return self


class SendMessage(ChatModel):
    client_id: ClientId
    body: str = ""
    attachment_id: UUID | None = None


class EditMessage(ChatModel):
    client_id: ClientId
    body: str


class DeleteMessage(ChatModel):
    client_id: ClientId


class Ack(ApiModel):
    conversation_id: UUID
    client_id: str
    seq: int
    at: dt.datetime
    duplicate: bool


class MarkRead(ApiModel):
    seq: Annotated[int, Field(ge=0, le=2**62)]


class ReadPosition(ApiModel):
    last_read_seq: int


class Attachment(ApiModel):
    id: UUID
    conversation_id: UUID
    content_type: str
    size_bytes: int
    sha256: str
    created_at: dt.datetime


class AttachmentUrl(ApiModel):
    url: str
    expires_at: dt.datetime


class ContentQuery(ApiModel):
    exp: Annotated[int, Field(ge=0, le=2**62)]
    sig: Annotated[str, StringConstraints(min_length=1, max_length=100)]


class Policy(ApiModel):
    staff_access: Literal["none", "read", "write"]


# -- REST --------------------------------------------------------------------------


def _conversation(row: dict[str, Any]) -> Conversation:
    return Conversation.model_validate({k: row[k] for k in Conversation.model_fields})


def _svc(call: Call[Any, Any]) -> ChatService:
    return call.request.app[CHAT]


@routes.post(
    "/api/v1/chat/conversations",
    body=OpenConversation,
    returns=Conversation,
    status=201,
    auth="any",
)
async def open_conversation(call: Call[OpenConversation, None]) -> Conversation:
    """Open (or find) a conversation.

    With ``booking_id``: the booking's patient, its doctor, its clinic's staff
    or an admin may open it; one conversation per booking. With
    ``patient_id`` and ``doctor_id``: clinic staff (a doctor of their own
    clinic) or an admin, with a patient who has a booking at the doctor's
    clinic; one such conversation per patient and doctor. Any other
    ``patient_id``, real or not, is the same 404 ``patient-not-found``."""
    who = call.user
    async with call.pool.acquire() as conn:
        if call.body.booking_id is not None:
            cid = await conversations.open_for_booking(conn, who, call.body.booking_id)
        else:
            if who.role not in (Role.CLINIC_STAFF, Role.ADMIN):
                raise Forbidden("only clinic staff open conversations outside a booking")
            assert call.body.patient_id is not None
            assert call.body.doctor_id is not None
            cid = await conversations.open_direct(
                conn, who, call.body.patient_id, call.body.doctor_id
            )
        return _conversation(await conversation_view(conn, who, cid))


@routes.get("/api/v1/chat/conversations", query=ListQuery, returns=list[Conversation])
async def list_conversations(call: Call[None, ListQuery]) -> list[Conversation]:
    """The caller's conversations with unread counts, most recent first."""
    rows = await list_for(call.pool, call.user, limit=call.query.limit)
    return [_conversation(r) for r in rows]


@routes.get(_CONV, returns=Conversation)
async def get_conversation(call: Call[None, None]) -> Conversation:
    """One conversation, with the caller's read position and unread count."""
    row = await conversation_view(call.pool, call.user, call.path_uuid("conversation_id"))
    return _conversation(row)


async def _audit_read(
    pool: Any, who: Principal, acc: Access, action: str = "chat.read", obj: str = ""
) -> None:
    """An audit row when a doctor, staff member or admin reads a patient's
    chat (by default: the conversation's events) or its documents
    (docs/privacy.md); the patient's own reads are not accesses."""
    obj = obj or f"conversation/{acc.conversation_id}"
    if who.role is Role.PATIENT:
        return
    await audit.record(
        pool, actor=who, action=action, subject=acc.patient_id, clinic=acc.clinic_id, object=obj
    )


@routes.get(_CONV + "/events", query=EventsQuery, returns=list[ChatEvent])
async def list_events(call: Call[None, EventsQuery]) -> list[ChatEvent]:
    """Events of a conversation: resume (``after``) or page back (``before``).

    Edits and deletes are events naming their ``target_seq``; the original
    message stays in the log."""
    acc = await access(call.pool, call.user, call.path_uuid("conversation_id"))
    q, svc = call.query, _svc(call)
    if q.after is not None:
        if q.after > acc.last_seq:
            raise BadSequence(f"after = {q.after} is past the last sequence ({acc.last_seq})")
        events = await eventlog.events_after(
            call.pool, svc.keyring, acc.conversation_id, q.after, limit=q.limit
        )
    else:
        events = await eventlog.events_before(
            call.pool, svc.keyring, acc.conversation_id, q.before, limit=q.limit
        )
    await _audit_read(call.pool, call.user, acc)
    return [ChatEvent.model_validate(e) for e in events]


def _ack(a: object) -> Ack:
    assert isinstance(a, ServiceAck)
    return Ack.model_validate(a.fields())


@routes.post(_CONV + "/messages", body=SendMessage, returns=Ack, status=201)
async def send_message(call: Call[SendMessage, None]) -> Ack:
    """Send a message (the WebSocket ``send`` frame, over HTTP).

    Committed before the answer; a repeated ``client_id`` is answered with the
    first result (``duplicate: true``)."""
    acc = await access(call.pool, call.user, call.path_uuid("conversation_id"))
    b = call.body
    res = await _svc(call).send(
        acc, call.user, client_id=b.client_id, body=b.body, attachment_id=b.attachment_id
    )
    return _ack(res)


@routes.post(_CONV + r"/messages/{seq:\d{1,18}}/edit", body=EditMessage, returns=Ack, status=201)
async def edit_message(call: Call[EditMessage, None]) -> Ack:
    """Edit one of your messages (a new ``edit`` event; the original stays)."""
    acc = await access(call.pool, call.user, call.path_uuid("conversation_id"))
    res = await _svc(call).edit(
        acc,
        call.user,
        client_id=call.body.client_id,
        target_seq=_seq(call),
        body=call.body.body,
    )
    return _ack(res)


@routes.post(
    _CONV + r"/messages/{seq:\d{1,18}}/delete", body=DeleteMessage, returns=Ack, status=201
)
async def delete_message(call: Call[DeleteMessage, None]) -> Ack:
    """Delete a message: yours, or any as writing clinic staff (a new
    ``delete`` event; the original stays for the clinic's audit)."""
    acc = await access(call.pool, call.user, call.path_uuid("conversation_id"))
    res = await _svc(call).delete(
        acc, call.user, client_id=call.body.client_id, target_seq=_seq(call)
    )
    return _ack(res)


def _seq(call: Call[Any, Any]) -> int:
    seq = int(call.path("seq"))
    if seq < 1:
        raise BadSequence("sequence numbers start at 1")
    return seq


@routes.post(_CONV + "/read", body=MarkRead, returns=ReadPosition)
async def mark_read(call: Call[MarkRead, None]) -> ReadPosition:
    """Move your read position forward (never back); unread counts follow."""
    acc = await access(call.pool, call.user, call.path_uuid("conversation_id"))
    pos = await _svc(call).read(acc, call.user, call.body.seq)
    return ReadPosition(last_read_seq=pos)


@routes.post(
    _CONV + "/attachments",
    returns=Attachment,
    status=201,
    raw_body=file_body(_ACCEPTED),
    responses={413: "Attachment too large", 415: "Not an image or PDF"},
)
async def upload_attachment(call: Call[None, None]) -> Attachment:
    """Upload an attachment (JPEG, PNG, GIF, WebP or PDF) as the raw body.

    The type is decided from the bytes; a Content-Type that disagrees with
    them is refused. Send a message with its ``attachment_id`` to share it."""
    request = call.request
    acc = await access(call.pool, call.user, call.path_uuid("conversation_id"))
    require_write(acc)
    declared = request.content_type
    if declared not in _ACCEPTED and declared != "application/octet-stream":
        raise UnsupportedMediaType("send an image (JPEG, PNG, GIF, WebP) or a PDF")
    limit = call.settings.chat_attachment_max_bytes
    data = await read_upload(request, limit, "an attachment")
    if not data:
        raise Unprocessable("the attachment is empty")
    svc = _svc(call)
    found = sniff_type(data)
    if found is None or (declared != "application/octet-stream" and found != declared):
        raise UnsupportedMediaType(f"the content is not {declared}")
    row = await svc.upload(acc, call.user, data)
    return Attachment.model_validate(row)


@routes.get("/api/v1/chat/attachments/{attachment_id:uuid}/url", returns=AttachmentUrl)
async def attachment_url(call: Call[None, None]) -> AttachmentUrl:
    """A short-lived signed link to an attachment, for members only."""
    aid = call.path_uuid("attachment_id")
    try:
        row = await attachment_row(call.pool, aid)
        acc = await access(call.pool, call.user, row["conversation_id"])
    except NotFound:
        raise NotFound("no such attachment") from None
    await _audit_read(call.pool, call.user, acc, "chat.attachment_read", f"attachment/{aid}")
    path, expires = _svc(call).sign(aid, time.time())
    return AttachmentUrl(
        url=call.settings.base_url + path if call.settings.public_url else path,
        expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
    )


@routes.get(
    "/api/v1/chat/attachments/{attachment_id:uuid}/content",
    query=ContentQuery,
    auth="public",
    returns={"content": {t: {"schema": {"type": "string", "format": "binary"}} for t in _ACCEPTED}},
    responses={403: "Link expired or forged"},
)
async def attachment_content(call: Call[None, ContentQuery]) -> web.Response:
    """An attachment's bytes, through a signed link from ``.../url``."""
    aid = call.path_uuid("attachment_id")
    svc = _svc(call)
    svc.verify(aid, call.query.exp, call.query.sig, time.time())
    ctype, data = await svc.download(aid)
    return web.Response(
        body=data,
        content_type=ctype,
        headers={
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": "inline" if ctype.startswith("image/") else "attachment",
        },
    )


def _policy_clinic(call: Call[Any, Any]) -> UUID:
    clinic_id = call.path_uuid("clinic_id")
    if call.user.role == Role.CLINIC_STAFF and call.user.clinic_id != clinic_id:
        raise NotFound("no such clinic")
    return clinic_id


@routes.get(
    "/api/v1/chat/clinics/{clinic_id:uuid}/policy",
    returns=Policy,
    auth={Role.CLINIC_STAFF, Role.ADMIN},
)
async def get_policy(call: Call[None, None]) -> Policy:
    """The clinic's chat policy: what its staff may do in its conversations
    (``none``, ``read``, or ``write``; ``write`` unless set)."""
    value = await staff_policy(call.pool, _policy_clinic(call))
    return Policy(staff_access=value)  # type: ignore[arg-type]


@routes.put(
    "/api/v1/chat/clinics/{clinic_id:uuid}/policy",
    body=Policy,
    returns=Policy,
    auth={Role.CLINIC_STAFF, Role.ADMIN},
)
async def set_policy(call: Call[Policy, None]) -> Policy:
    """Set the clinic's chat policy for its staff. Open WebSocket sessions
    keep the rights they had when they subscribed."""
    await set_staff_policy(
        call.pool, _policy_clinic(call), call.body.staff_access, call.user.user_id
    )
    return call.body


# -- WebSocket ---------------------------------------------------------------------


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
            acc = await access(self.svc.pool, self.principal, cid)
            self.access[cid] = acc
        return acc

    async def _change(
        self,
        frame: protocol.Send | protocol.Edit | protocol.Delete,
        change: Callable[..., Awaitable[ServiceAck]],
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
                last = await self.svc.pool.fetchval(
                    "SELECT last_seq FROM chat_conversations WHERE id = $1", acc.conversation_id
                )
                if frame.after is not None and frame.after > last:
                    raise BadSequence(f"after = {frame.after} is past the last sequence ({last})")
                # The backlog that follows is a read of the conversation.
                await _audit_read(self.svc.pool, who, acc)
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
                events = await eventlog.events_before(
                    self.svc.pool,
                    self.svc.keyring,
                    acc.conversation_id,
                    frame.before,
                    limit=frame.limit,
                )
                await _audit_read(self.svc.pool, who, acc)
                self._answer("history", frame, acc.conversation_id, events=events)


def _error(exc: Exception, ref: str | None) -> dict[str, object]:
    if isinstance(exc, protocol.InvalidFrame):
        return protocol.error_frame(exc.code, exc.detail, ref=ref, errors=exc.errors)
    if isinstance(exc, WadudError):
        extra: dict[str, Any] = {
            k: v for k, v in exc.extra.items() if isinstance(v, int | float | str)
        }
        return protocol.error_frame(exc.code, exc.detail, ref=ref, **extra)
    return protocol.error_frame("invalid", str(exc), ref=ref)


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
            client.queue.put_nowait(
                protocol.encode(
                    protocol.error_frame(
                        "session-revoked", f"this session ended ({reason}); sign in", fatal=True
                    )
                )
            )
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
                session.send(protocol.error_frame("bad-frame", "frames are JSON text, not binary"))
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
        session.send(_error(exc, exc.ref))
    except (ChatError, WadudError) as exc:
        session.send(_error(exc, ref))
    except Exception:
        log.exception("chat frame failed")
        session.send(
            protocol.error_frame("internal-error", "the server failed; try again", ref=ref)
        )


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
                await ws.send_str(
                    protocol.encode(
                        protocol.error_frame("unauthorized", "auth timed out", fatal=True)
                    )
                )
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
        err = protocol.error_frame(
            "unauthorized", getattr(exc, "detail", str(exc)), ref=ref, fatal=True
        )
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


# -- assembly ----------------------------------------------------------------------


async def _chat_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    keyring = Keyring.from_settings(settings)
    hub = Hub(
        app[keys.DB],
        app[keys.BUS],
        keyring,
        reconcile_interval=settings.chat_reconcile_interval,
        typing_interval=settings.chat_typing_interval,
    )
    await hub.start()
    app[CHAT] = ChatService(app[keys.DB], hub, keyring, settings, storage_of(app))
    try:
        yield
    finally:
        await hub.close()


def install(app: web.Application) -> None:
    routes.install(app)
    app.router.add_get("/api/v1/chat/ws", websocket, name="chat-ws")
    app.cleanup_ctx.append(_chat_context)


__all__ = ["CHAT", "NotAllowed", "install", "routes"]
