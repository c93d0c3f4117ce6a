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

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from signalling.errors import SignallingError
from wadud import frames
from wadud.frames import VERSION, Frame, encode, error_frame, reply, sound_text

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
    "Frame",
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
    "error_from",
    "frame_types",
    "parse",
    "reply",
]


# The envelope is shared with chat (wadud.frames); the errors here also
# inherit SignallingError because the service answers every error of ours
# (frame errors included) with one ``except SignallingError``.


class ProtocolError(frames.ProtocolError, SignallingError):
    """The peer sent something this protocol does not allow. ``ref`` is the
    offending frame's ``id`` when it had a usable one. Never fatal."""


class BadFrame(ProtocolError, frames.BadFrame):
    """Not JSON, not an object, no string ``type``, a binary frame, ``join`` twice."""


class UnsupportedVersion(ProtocolError, frames.UnsupportedVersion):
    pass


class UnknownType(ProtocolError, frames.UnknownType):
    pass


class InvalidFrame(ProtocolError, frames.InvalidFrame):
    """A field missing, of the wrong type, out of range or unknown; ``errors``
    lists each (pydantic's locations and messages, without the input)."""


class TooLarge(ProtocolError):
    """A frame over ``call_max_frame_bytes``. aiohttp refuses such a frame
    before it is read and closes with 1009, so this is for adapters that
    learn the size first."""

    http_status = 413
    code = "too-large"
    title = "Frame too large"


# -- client frames -------------------------------------------------------------

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

TYPES = frames.types_of(ClientFrame)


def _sound(value: object, depth: int = 0) -> bool:
    """True if every string in ``value`` (keys included) encodes as UTF-8. A
    JSON escape can smuggle in a lone surrogate, which is no character at all
    and could not be sent back out."""
    if depth > 8:
        return True  # deeper values fail validation anyway
    if isinstance(value, str):
        return sound_text(value)
    if isinstance(value, dict):
        return all(_sound(k, depth) and _sound(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_sound(v, depth + 1) for v in value)
    return True


def _sound_frame(data: dict[str, Any], model: type[Frame], ref: str | None) -> dict[str, Any]:
    if not _sound(data):
        raise InvalidFrame("the frame holds text that is not valid Unicode", ref=ref)
    return data


_ENVELOPE = frames.Envelope(
    TYPES,
    errors=frames.ErrorFamily(BadFrame, UnsupportedVersion, UnknownType, InvalidFrame),
    prepare=_sound_frame,
)


def parse(text: str | bytes) -> ClientFrame:
    """One client frame from a text frame; :class:`ProtocolError` if it is not one."""
    return _ENVELOPE.parse(text)  # type: ignore[return-value]


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
