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
import json
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from chat.errors import ChatError
from wadud.errors import BadRequest

VERSION = 1
#: Close codes (RFC 6455 section 7.4.2 leaves 4000-4999 to applications).
CLOSE_UNAUTHORIZED = 4401
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_SLOW_CONSUMER = 1013  # "try again later": resume from the last sequence
CLOSE_TOO_BIG = 1009


class ProtocolError(ChatError, BadRequest):
    """The peer sent something this protocol does not allow. ``code`` is the
    ``error`` frame's code; ``ref`` the offending frame's ``id`` if it had
    one."""

    code = "bad-frame"
    title = "Malformed frame"
    fatal: ClassVar[bool] = False

    def __init__(self, detail: str, *, ref: str | None = None) -> None:
        super().__init__(detail)
        self.ref = ref


class BadFrame(ProtocolError):
    code = "bad-frame"


class UnsupportedVersion(ProtocolError):
    code = "unsupported-version"
    title = "Unsupported protocol version"


class UnknownType(ProtocolError):
    code = "unknown-type"
    title = "Unknown frame type"


class InvalidFrame(ProtocolError):
    code = "invalid"
    title = "Invalid frame fields"

    def __init__(
        self, detail: str, *, ref: str | None = None, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(detail, ref=ref)
        self.errors = errors or []


class BodyTooLarge(ProtocolError):
    http_status = 413
    code = "too-large"
    title = "Message body too large"


# -- client frames -------------------------------------------------------------

ClientId = Annotated[str, StringConstraints(min_length=1, max_length=100)]
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Seq = Annotated[int, Field(ge=0, le=2**62)]
TargetSeq = Annotated[int, Field(ge=1, le=2**62)]


class Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: Literal[1] = 1
    id: RequestId | None = None


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

TYPES: dict[str, type[Frame]] = {
    "auth": Auth,
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "send": Send,
    "edit": Edit,
    "delete": Delete,
    "typing": Typing,
    "read": Read,
    "history": History,
    "ping": Ping,
}


def _uuid_strings(data: dict[str, Any], model: type[Frame]) -> dict[str, Any]:
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


def parse(text: str | bytes) -> ClientFrame:
    """One client frame from a text frame; :class:`ProtocolError` if it is
    not one."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadFrame("the frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadFrame("a frame is a JSON object")
    raw_id = data.get("id")
    ref = (
        raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 64 and sound_text(raw_id) else None
    )
    version = data.get("v", VERSION)
    if version != VERSION or isinstance(version, bool):
        raise UnsupportedVersion(f"this server speaks version {VERSION}", ref=ref)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise BadFrame('a frame needs a string "type"', ref=ref)
    model = TYPES.get(kind)
    if model is None:
        raise UnknownType(f"unknown frame type {kind[:40]!r}", ref=ref)
    try:
        frame = model.model_validate(_uuid_strings(data, model))
    except pydantic.ValidationError as exc:
        errors = [
            {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        first = errors[0]
        raise InvalidFrame(
            f"{'.'.join(first['loc']) or 'frame'}: {first['msg']}", ref=ref, errors=errors
        ) from None
    for name in ("id", "client_id", "body", "token"):
        value = getattr(frame, name, None)
        if isinstance(value, str) and not sound_text(value):
            # A JSON escape can smuggle in a lone surrogate, which is no
            # character at all: it cannot be stored or sent back as UTF-8.
            raise InvalidFrame(f"{name}: not valid Unicode text", ref=None if name == "id" else ref)
    if "\x00" in getattr(frame, "body", ""):
        # PostgreSQL text cannot hold U+0000 and no client means to send it.
        raise InvalidFrame("body: text may not contain the NUL character", ref=ref)
    return frame  # type: ignore[return-value]


def sound_text(text: str) -> bool:
    """True if ``text`` encodes as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_body(body: str, max_bytes: int, *, ref: str | None = None) -> bytes:
    """The body as UTF-8, or :class:`BodyTooLarge`."""
    try:
        data = body.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidFrame("body: not valid Unicode text", ref=ref) from None
    if len(data) > max_bytes:
        raise BodyTooLarge(f"the body is {len(data)} bytes; at most {max_bytes}", ref=ref)
    return data


def encode(frame: Frame | dict[str, Any]) -> str:
    """A frame as the JSON text sent on the wire (UTF-8 as is, not escaped:
    Urdu and Arabic travel as themselves)."""
    if isinstance(frame, Frame):
        fields = type(frame).model_fields
        # Leave out a None only where None is the default, so an explicit
        # ``"after": null`` survives the round trip.
        data = {
            k: v
            for k, v in frame.model_dump(mode="json").items()
            if v is not None or fields[k].default is not None
        }
    else:
        data = frame
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


# -- server frames -------------------------------------------------------------


def error_frame(
    code: str, message: str, *, ref: str | None = None, fatal: bool = False, **extra: Any
) -> dict[str, Any]:
    frame: dict[str, Any] = {"v": VERSION, "type": "error", "code": code, "message": message}
    if ref is not None:
        frame["ref"] = ref
    if fatal:
        frame["fatal"] = True
    frame.update(extra)
    return frame


def reply(kind: str, ref: str | None, **fields: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"v": VERSION, "type": kind, **fields}
    if ref is not None:
        frame["ref"] = ref
    return frame
