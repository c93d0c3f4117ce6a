"""The call signalling protocol, version 1: JSON text frames, no I/O here.

Every frame is one JSON object ``{"v": 1, "type": ..., "id": ..., ...}``, as
in chat: ``v`` is the protocol version (absent means 1), ``id`` an optional
client-chosen request id that the server echoes as ``ref`` on the answer or
error. :func:`parse` turns a text frame into one of the typed client frames
below or raises a :class:`ProtocolError` carrying the wire ``code``; the
adapter answers with an ``error`` frame and keeps the connection. Server
frames are plain dicts built by the helpers at the bottom and serialised with
:func:`encode`.

SDP travels as text inside the frames (RFC 8829 section 4.1.13's
``RTCSessionDescriptionInit.sdp``); it is not parsed here but by the media
worker, whose :class:`rtc.errors.SdpError` becomes ``bad-sdp``.

The full protocol, with examples: docs/protocol.md, "Calls (signalling)".
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from signalling.errors import SignallingError
from wadud.errors import BadRequest

VERSION = 1

__all__ = [
    "TYPES",
    "VERSION",
    "Admit",
    "Answer",
    "BadFrame",
    "Candidate",
    "ClientFrame",
    "Deny",
    "End",
    "IceCandidateInit",
    "InvalidFrame",
    "Join",
    "Leave",
    "Mute",
    "Ping",
    "Pong",
    "ProtocolError",
    "Publish",
    "Remove",
    "RoomSettings",
    "TooLarge",
    "UnknownType",
    "Unpublish",
    "UnsupportedVersion",
    "encode",
    "error_frame",
    "parse",
    "reply",
]


class ProtocolError(SignallingError, BadRequest):
    """The peer sent something this protocol does not allow. ``ref`` is the
    offending frame's ``id`` when it had a usable one. Never fatal."""

    code = "bad-frame"
    title = "Malformed frame"

    def __init__(self, detail: str, *, ref: str | None = None) -> None:
        super().__init__(detail)
        self.ref = ref


class BadFrame(ProtocolError):
    """Not JSON, not an object, no string ``type``, a binary frame, ``join`` twice."""

    code = "bad-frame"


class UnsupportedVersion(ProtocolError):
    code = "unsupported-version"
    title = "Unsupported protocol version"


class UnknownType(ProtocolError):
    code = "unknown-type"
    title = "Unknown frame type"


class InvalidFrame(ProtocolError):
    """A field missing, of the wrong type, out of range or unknown; ``errors``
    lists each (pydantic's locations and messages, without the input)."""

    code = "invalid"
    title = "Invalid frame fields"

    def __init__(
        self, detail: str, *, ref: str | None = None, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(detail, ref=ref)
        self.errors = errors or []


class TooLarge(ProtocolError):
    """A frame over ``call_max_frame_bytes``. aiohttp refuses such a frame
    before it is read and closes with 1009, so this is for adapters that
    learn the size first."""

    http_status = 413
    code = "too-large"
    title = "Frame too large"


# -- client frames -------------------------------------------------------------

RequestId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Ident = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
# Bounded well above any real offer (a dozen m= sections with simulcast is
# ~20 KB) and below any frame size one would configure.
Sdp = Annotated[str, StringConstraints(min_length=1, max_length=262_144)]
# RFC 8843 section 4: a mid is an RFC 8866 token; browsers use "0", "1", ...
Mid = Annotated[
    str,
    StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9!#$%&'*+\-.^_`{|}~]+$"),
]
SourceName = Literal["microphone", "camera", "screen", "screen_audio"]


class Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: Literal[1] = 1
    id: RequestId | None = None


class Join(Frame):
    """Enter the room with a room token; ``resume`` is the ``session`` of an
    earlier connection whose participant is still in the room."""

    type: Literal["join"] = "join"
    token: Token
    resume: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None


class Publish(Frame):
    """An offer for the publish connection (RFC 8829 section 5.2); ``sources``
    says what each of its mids carries."""

    type: Literal["publish"] = "publish"
    sdp: Sdp
    sources: Annotated[dict[Mid, SourceName], Field(max_length=64)] = Field(default_factory=dict)


class Answer(Frame):
    """The answer to the last subscribe ``offer`` (RFC 8829 section 5.3)."""

    type: Literal["answer"] = "answer"
    sdp: Sdp


class IceCandidateInit(BaseModel):
    """WebRTC's ``RTCIceCandidateInit`` as ``candidate.toJSON()`` gives it. The
    one place unknown keys are ignored: the dictionary is the browsers', and
    the server (ICE-lite, RFC 8445 section 2.5) learns addresses from checks
    anyway, so a browser adding a member must not break calls."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    candidate: Annotated[str, StringConstraints(max_length=1024)]
    # camelCase: the W3C dictionary's spelling.
    sdpMid: Mid | None = None
    sdpMLineIndex: Annotated[int, Field(ge=0, le=1023)] | None = None
    usernameFragment: Annotated[str, StringConstraints(max_length=256)] | None = None


class Candidate(Frame):
    """A trickled candidate; ``candidate`` null (or an empty ``candidate``
    string) ends the client's trickle for that connection (RFC 8838 section 8.2)."""

    type: Literal["candidate"] = "candidate"
    transport: Literal["publish", "subscribe"]
    candidate: IceCandidateInit | None

    @property
    def end_of_candidates(self) -> bool:
        return self.candidate is None or not self.candidate.candidate


class Mute(Frame):
    type: Literal["mute"] = "mute"
    track_id: Ident
    muted: bool


class Unpublish(Frame):
    type: Literal["unpublish"] = "unpublish"
    track_id: Ident


class Admit(Frame):
    type: Literal["admit"] = "admit"
    participant_id: Ident


class Deny(Frame):
    type: Literal["deny"] = "deny"
    participant_id: Ident


class Remove(Frame):
    type: Literal["remove"] = "remove"
    participant_id: Ident


class RoomSettings(Frame):
    type: Literal["room_settings"] = "room_settings"
    require_admission: bool


class End(Frame):
    type: Literal["end"] = "end"


class Leave(Frame):
    type: Literal["leave"] = "leave"


class Ping(Frame):
    type: Literal["ping"] = "ping"


class Pong(Frame):
    type: Literal["pong"] = "pong"


ClientFrame = (
    Join
    | Publish
    | Answer
    | Candidate
    | Mute
    | Unpublish
    | Admit
    | Deny
    | Remove
    | RoomSettings
    | End
    | Leave
    | Ping
    | Pong
)

TYPES: dict[str, type[Frame]] = {
    m.model_fields["type"].default: m
    for m in (
        Join,
        Publish,
        Answer,
        Candidate,
        Mute,
        Unpublish,
        Admit,
        Deny,
        Remove,
        RoomSettings,
        End,
        Leave,
        Ping,
        Pong,
    )
}


def _sound(value: object, depth: int = 0) -> bool:
    """True if every string in ``value`` (keys included) encodes as UTF-8. A
    JSON escape can smuggle in a lone surrogate, which is no character at all
    and could not be sent back out."""
    if depth > 8:
        return True  # deeper values fail validation anyway
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_sound(k, depth) and _sound(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_sound(v, depth + 1) for v in value)
    return True


def parse(text: str | bytes) -> ClientFrame:
    """One client frame from a text frame; :class:`ProtocolError` if it is not one."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadFrame("the frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadFrame("a frame is a JSON object")
    raw_id = data.get("id")
    ref = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 64 and _sound(raw_id) else None
    version = data.get("v", VERSION)
    if version != VERSION or isinstance(version, bool):
        raise UnsupportedVersion(f"this server speaks version {VERSION}", ref=ref)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise BadFrame('a frame needs a string "type"', ref=ref)
    model = TYPES.get(kind)
    if model is None:
        raise UnknownType(f"unknown frame type {kind[:40]!r}", ref=ref)
    if not _sound(data):
        raise InvalidFrame("the frame holds text that is not valid Unicode", ref=ref)
    try:
        frame = model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = [
            {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        first = errors[0]
        raise InvalidFrame(
            f"{'.'.join(first['loc']) or 'frame'}: {first['msg']}", ref=ref, errors=errors
        ) from None
    return frame  # type: ignore[return-value]


def encode(frame: Frame | dict[str, Any]) -> str:
    """A frame as the JSON text sent on the wire (UTF-8 as is: names in Urdu
    and Arabic travel as themselves)."""
    if isinstance(frame, Frame):
        fields = type(frame).model_fields
        # Leave out a None only where None is the default, so an explicit
        # ``"candidate": null`` (end of candidates) survives the round trip.
        data = {
            k: v
            for k, v in frame.model_dump(mode="json").items()
            if v is not None or not (fields[k].default is None and not fields[k].is_required())
        }
    else:
        data = frame
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


# -- server frames -------------------------------------------------------------


def reply(kind: str, ref: str | None = None, **fields: Any) -> dict[str, Any]:
    """A server frame: an answer (with ``ref``) or an event (without)."""
    frame: dict[str, Any] = {"v": VERSION, "type": kind, **fields}
    if ref is not None:
        frame["ref"] = ref
    return frame


def error_frame(
    code: str, message: str, *, ref: str | None = None, fatal: bool = False, **extra: Any
) -> dict[str, Any]:
    frame = reply("error", ref, code=code, message=message)
    if fatal:
        frame["fatal"] = True
    frame.update(extra)
    return frame


def error_from(exc: SignallingError, ref: str | None = None) -> dict[str, Any]:
    """The ``error`` frame for one of our errors (``ref`` from the error when it has one)."""
    ref = getattr(exc, "ref", None) or ref
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidFrame) and exc.errors:
        extra["errors"] = exc.errors
    return error_frame(exc.code, exc.detail, ref=ref, fatal=exc.fatal, **extra)


def frame_types() -> Iterable[str]:
    """The client frame types, for metrics labels (anything else counts as unknown)."""
    return TYPES.keys()
