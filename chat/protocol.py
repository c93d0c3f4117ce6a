"""The chat WebSocket protocol, version 1: JSON text frames, no I/O here.

Every frame is one JSON object ``{"v": 1, "type": ..., "id": ..., ...}``.
``v`` is the protocol version (absent means 1); ``id`` is an optional
client-chosen request id that the server echoes as ``ref`` on the answer or
error, so a client can match them. :func:`parse` turns a text frame into one
of the typed client frames below or raises :class:`ProtocolError` carrying a
wire ``code``; the adapter answers with an ``error`` frame and keeps the
connection (``fatal`` errors close it). Server frames are plain dicts built by
the ``*_frame`` helpers and serialised with :func:`encode`.

The full protocol, with examples, is in ``docs/protocol.md`` ("Chat").
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import Field, StringConstraints

from wadud.frames import (
    VERSION,
    BadFrame,
    Envelope,
    Frame,
    InvalidFrame,
    ProtocolError,
    RequestId,
    UnknownType,
    UnsupportedVersion,
    encode,
    error_frame,
    reply,
    sound_text,
    types_of,
)

# The envelope (errors, ``Frame``, :func:`encode`, :func:`reply`,
# :func:`error_frame`) is shared with call signalling in wadud.frames and
# re-exported here, so ``chat.protocol.X`` still names it.
__all__ = [
    "CLOSE_AUTH_TIMEOUT",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOO_BIG",
    "CLOSE_UNAUTHORIZED",
    "TYPES",
    "VERSION",
    "Auth",
    "BadFrame",
    "BodyTooLarge",
    "ClientFrame",
    "Delete",
    "Edit",
    "Frame",
    "History",
    "InvalidFrame",
    "Ping",
    "ProtocolError",
    "Read",
    "RequestId",
    "Send",
    "Subscribe",
    "Typing",
    "UnknownType",
    "Unsubscribe",
    "UnsupportedVersion",
    "check_body",
    "encode",
    "error_frame",
    "parse",
    "reply",
    "sound_text",
]

#: Close codes (RFC 6455 section 7.4.2 leaves 4000-4999 to applications).
CLOSE_UNAUTHORIZED = 4401
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_SLOW_CONSUMER = 1013  # "try again later": resume from the last sequence
CLOSE_TOO_BIG = 1009


class BodyTooLarge(ProtocolError):
    http_status = 413
    code = "too-large"
    title = "Message body too large"


# -- client frames -------------------------------------------------------------

ClientId = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Seq = Annotated[int, Field(ge=0, le=2**62)]
TargetSeq = Annotated[int, Field(ge=1, le=2**62)]


class Auth(Frame):
    type: Literal["auth"] = "auth"
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class Subscribe(Frame):
    """Receive a conversation's events with ``seq > after`` (the backlog from
    PostgreSQL, then live). ``after`` null: only what comes next."""

    type: Literal["subscribe"] = "subscribe"
    conversation_id: UUID
    after: Seq | None = 0


class Unsubscribe(Frame):
    type: Literal["unsubscribe"] = "unsubscribe"
    conversation_id: UUID


class Send(Frame):
    type: Literal["send"] = "send"
    conversation_id: UUID
    client_id: ClientId
    body: str = ""
    attachment_id: UUID | None = None


class Edit(Frame):
    type: Literal["edit"] = "edit"
    conversation_id: UUID
    client_id: ClientId
    target_seq: TargetSeq
    body: str


class Delete(Frame):
    type: Literal["delete"] = "delete"
    conversation_id: UUID
    client_id: ClientId
    target_seq: TargetSeq


class Typing(Frame):
    type: Literal["typing"] = "typing"
    conversation_id: UUID


class Read(Frame):
    type: Literal["read"] = "read"
    conversation_id: UUID
    seq: Seq


class History(Frame):
    """Events before ``before`` (newest first), for scrolling back."""

    type: Literal["history"] = "history"
    conversation_id: UUID
    before: TargetSeq | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50


class Ping(Frame):
    type: Literal["ping"] = "ping"


ClientFrame = Auth | Subscribe | Unsubscribe | Send | Edit | Delete | Typing | Read | History | Ping

TYPES = types_of(ClientFrame)


def _uuid_strings(data: dict[str, Any], model: type[Frame], ref: str | None) -> dict[str, Any]:
    # JSON has no UUID type; strict mode would refuse the string, so convert
    # the UUID fields here and let everything else stay strict.
    out = dict(data)
    for name, info in model.model_fields.items():
        value = out.get(name)
        if isinstance(value, str) and info.annotation in (UUID, UUID | None):
            # Left as a string when malformed: validation then names the field.
            with contextlib.suppress(ValueError):
                out[name] = UUID(value)
    return out


def _checks(frame: Frame, ref: str | None) -> None:
    for name in ("id", "client_id", "body", "token"):
        value = getattr(frame, name, None)
        if isinstance(value, str) and not sound_text(value):
            # A JSON escape can smuggle in a lone surrogate, which is no
            # character at all: it cannot be stored or sent back as UTF-8.
            raise InvalidFrame(f"{name}: not valid Unicode text", ref=None if name == "id" else ref)
    if "\x00" in getattr(frame, "body", ""):
        # PostgreSQL text cannot hold U+0000 and no client means to send it.
        raise InvalidFrame("body: text may not contain the NUL character", ref=ref)


_ENVELOPE = Envelope(TYPES, prepare=_uuid_strings, check=_checks)


def parse(text: str | bytes) -> ClientFrame:
    """One client frame from a text frame; :class:`ProtocolError` if it is
    not one."""
    return _ENVELOPE.parse(text)  # type: ignore[return-value]


def check_body(body: str, max_bytes: int, *, ref: str | None = None) -> bytes:
    """The body as UTF-8, or :class:`BodyTooLarge`."""
    try:
        data = body.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidFrame("body: not valid Unicode text", ref=ref) from None
    if len(data) > max_bytes:
        raise BodyTooLarge(f"the body is {len(data)} bytes; at most {max_bytes}", ref=ref)
    return data
