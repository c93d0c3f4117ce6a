"""Chat's REST endpoints, declared with :class:`wadud.web.api.Routes` so they
are in the OpenAPI document: each handler reads its request, checks the
caller's rights, calls the chat service (``app[CHAT]``) once and renders its
answer. The WebSocket endpoint is :mod:`chat.socket`.

:func:`install` adds both and a cleanup context that starts the hub (bus
subscription, publisher, reconcile loop) after the pool and bus exist and
stops it before them.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from uuid import UUID

from aiohttp import web
from pydantic import Field, StringConstraints, field_validator, model_validator

from chat import protocol
from chat.crypto import Keyring
from chat.errors import BadSequence
from chat.hub import Hub
from chat.service import CHAT, ChatService
from chat.socket import websocket
from wadud.errors import Forbidden, NotFound, Unprocessable, UnsupportedMediaType
from wadud.state import keys
from wadud.state.storage import sniff_type, storage_of
from wadud.web.api import ApiModel, Call, Role, Routes, file_body
from wadud.web.http import read_upload

routes = Routes("chat", "Consultation chat: conversations, messages, attachments.")

_CONV = "/api/v1/chat/conversations/{conversation_id:uuid}"
ClientId = Annotated[str, StringConstraints(min_length=1, max_length=100)]
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


class AckOut(ApiModel):
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
    b = call.body
    if b.booking_id is None and call.user.role not in (Role.CLINIC_STAFF, Role.ADMIN):
        raise Forbidden("only clinic staff open conversations outside a booking")
    row = await _svc(call).open_conversation(
        call.user, booking_id=b.booking_id, patient_id=b.patient_id, doctor_id=b.doctor_id
    )
    return _conversation(row)


@routes.get("/api/v1/chat/conversations", query=ListQuery, returns=list[Conversation])
async def list_conversations(call: Call[None, ListQuery]) -> list[Conversation]:
    """The caller's conversations with unread counts, most recent first."""
    rows = await _svc(call).list_conversations(call.user, limit=call.query.limit)
    return [_conversation(r) for r in rows]


@routes.get(_CONV, returns=Conversation)
async def get_conversation(call: Call[None, None]) -> Conversation:
    """One conversation, with the caller's read position and unread count."""
    row = await _svc(call).get_conversation(call.user, call.path_uuid("conversation_id"))
    return _conversation(row)


@routes.get(_CONV + "/events", query=EventsQuery, returns=list[ChatEvent])
async def list_events(call: Call[None, EventsQuery]) -> list[ChatEvent]:
    """Events of a conversation: resume (``after``) or page back (``before``).

    Edits and deletes are events naming their ``target_seq``; the original
    message stays in the log."""
    q, svc = call.query, _svc(call)
    acc = await svc.authorize(call.user, call.path_uuid("conversation_id"))
    events = await svc.list_events(acc, call.user, after=q.after, before=q.before, limit=q.limit)
    return [ChatEvent.model_validate(e) for e in events]


@routes.post(_CONV + "/messages", body=SendMessage, returns=AckOut, status=201)
async def send_message(call: Call[SendMessage, None]) -> AckOut:
    """Send a message (the WebSocket ``send`` frame, over HTTP).

    Committed before the answer; a repeated ``client_id`` is answered with the
    first result (``duplicate: true``)."""
    b, svc = call.body, _svc(call)
    acc = await svc.authorize(call.user, call.path_uuid("conversation_id"))
    res = await svc.send(
        acc, call.user, client_id=b.client_id, body=b.body, attachment_id=b.attachment_id
    )
    return AckOut.model_validate(res.fields())


@routes.post(_CONV + r"/messages/{seq:\d{1,18}}/edit", body=EditMessage, returns=AckOut, status=201)
async def edit_message(call: Call[EditMessage, None]) -> AckOut:
    """Edit one of your messages (a new ``edit`` event; the original stays)."""
    svc = _svc(call)
    acc = await svc.authorize(call.user, call.path_uuid("conversation_id"))
    res = await svc.edit(
        acc,
        call.user,
        client_id=call.body.client_id,
        target_seq=_seq(call),
        body=call.body.body,
    )
    return AckOut.model_validate(res.fields())


@routes.post(
    _CONV + r"/messages/{seq:\d{1,18}}/delete", body=DeleteMessage, returns=AckOut, status=201
)
async def delete_message(call: Call[DeleteMessage, None]) -> AckOut:
    """Delete a message: yours, or any as writing clinic staff (a new
    ``delete`` event; the original stays for the clinic's audit)."""
    svc = _svc(call)
    acc = await svc.authorize(call.user, call.path_uuid("conversation_id"))
    res = await svc.delete(acc, call.user, client_id=call.body.client_id, target_seq=_seq(call))
    return AckOut.model_validate(res.fields())


def _seq(call: Call[Any, Any]) -> int:
    seq = int(call.path("seq"))
    if seq < 1:
        raise BadSequence("sequence numbers start at 1")
    return seq


@routes.post(_CONV + "/read", body=MarkRead, returns=ReadPosition)
async def mark_read(call: Call[MarkRead, None]) -> ReadPosition:
    """Move your read position forward (never back); unread counts follow."""
    svc = _svc(call)
    acc = await svc.authorize(call.user, call.path_uuid("conversation_id"))
    pos = await svc.read(acc, call.user, call.body.seq)
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
    request, svc = call.request, _svc(call)
    acc = await svc.authorize(call.user, call.path_uuid("conversation_id"), write=True)
    declared = request.content_type
    if declared not in _ACCEPTED and declared != "application/octet-stream":
        raise UnsupportedMediaType("send an image (JPEG, PNG, GIF, WebP) or a PDF")
    limit = call.settings.chat_attachment_max_bytes
    data = await read_upload(request, limit, "an attachment")
    if not data:
        raise Unprocessable("the attachment is empty")
    found = sniff_type(data)
    if found is None or (declared != "application/octet-stream" and found != declared):
        raise UnsupportedMediaType(f"the content is not {declared}")
    row = await svc.upload(acc, call.user, data)
    return Attachment.model_validate(row)


@routes.get("/api/v1/chat/attachments/{attachment_id:uuid}/url", returns=AttachmentUrl)
async def attachment_url(call: Call[None, None]) -> AttachmentUrl:
    """A short-lived signed link to an attachment, for members only."""
    path, expires = await _svc(call).attachment_link(call.user, call.path_uuid("attachment_id"))
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
    value = await _svc(call).get_policy(_policy_clinic(call))
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
    await _svc(call).set_policy(_policy_clinic(call), call.body.staff_access, call.user.user_id)
    return call.body


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


__all__ = ["install", "routes"]
