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

import unicodedata
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from signalling.errors import SignallingError
from wadud import frames
from wadud.frames import VERSION, Frame, encode, error_frame, reply, sound_text

__all__ = [
    "EVENTS",
    "QUALITIES",
    "TYPES",
    "VERSION",
    "Admit",
    "Answer",
    "AudioOnly",
    "BadFrame",
    "CallPhone",
    "Candidate",
    "ClientFrame",
    "ClientInfo",
    "ConnectionQuality",
    "Deny",
    "DisplayName",
    "Encoding",
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
    "Record",
    "RecordingConsent",
    "Remove",
    "RoomSettings",
    "ServerEvent",
    "SetEncodings",
    "TooLarge",
    "TrackPaused",
    "TrackView",
    "UnknownType",
    "Unpublish",
    "UnsupportedVersion",
    "encode",
    "error_frame",
    "error_from",
    "frame_types",
    "parse",
    "parse_event",
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


def _display_name(value: str) -> str:
    # What others will read on a tile: one line of printable text. Control
    # and format characters (a newline, a right-to-left override) could
    # forge or hide what is shown, so they are refused, not stripped.
    value = unicodedata.normalize("NFC", value.strip())
    if not value:
        raise ValueError("a name needs a visible character")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        raise ValueError("a name may not hold control or format characters")
    return value


#: A person's name as others see it: trimmed, NFC, 1 to 64 characters.
DisplayName = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_display_name)
]


#: The platforms a client may say it runs on; ``ios`` and ``android`` are
#: mobile apps (react-native-webrtc, flutter_webrtc, native libwebrtc).
Platform = Literal["ios", "android", "web"]
APPS: frozenset[str] = frozenset({"ios", "android"})


class ClientInfo(BaseModel):
    """What a client says it is, in ``join``: its ``platform``, and for
    logs its ``sdk`` and ``version``. An app (``ios``, ``android``) keeps
    its seat for ``call_resume_grace_app`` when its socket drops."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    platform: Platform
    sdk: Annotated[str, StringConstraints(max_length=64)] | None = None
    version: Annotated[str, StringConstraints(max_length=64)] | None = None

    @property
    def app(self) -> bool:
        return self.platform in APPS


class Join(Frame):
    """Enter the room with a room token; ``resume`` is the ``session`` of an
    earlier connection whose participant is still in the room. ``name`` is
    the display name the person typed, used only when the token names
    nobody (an anonymous patient's link); a token's own ``name`` wins.
    ``client``: what the client runs on (:class:`ClientInfo`)."""

    type: Literal["join"] = "join"
    token: Token
    resume: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    name: DisplayName | None = None
    #: The protocol version the client speaks (``joined.protocol`` says the
    #: server's); one the server does not speak is refused
    #: (``unsupported-protocol``, 4426). Absent: 1.
    protocol: Annotated[int, Field(ge=1, le=1000)] | None = None
    client: ClientInfo | None = None
    #: ``single``: one peer connection publishes and receives (the client
    #: offers every change; ``renegotiate`` asks it to); ``pair`` (absent):
    #: a publish and a subscribe connection (docs/protocol.md, "Media").
    connection: Literal["single", "pair"] | None = None


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


class Record(Frame):
    """An admin asks to record the visit (``on`` true: everyone present is
    asked, ``recording_asked``) or stops the recording (false). Answered
    ``ok``; the room hears ``recording`` as its state changes."""

    type: Literal["record"] = "record"
    on: bool


class RecordingConsent(Frame):
    """A participant's answer to ``recording_asked``: ``agree`` false stops
    the recording for everyone. Answered ``ok``."""

    type: Literal["recording_consent"] = "recording_consent"
    recording_id: Ident
    agree: bool


class ApproveGuest(Frame):
    """The patient's answer about an invited guest who needs it (a family
    member, an observer): ``agree`` true lets them in (once a host is there
    to admit, as anyone), false turns them away and kills their link.
    Answered ``ok``. Only a role with ``approve_guests`` may send it."""

    type: Literal["approve_guest"] = "approve_guest"
    invite_id: Ident
    agree: bool


class CallPhone(Frame):
    """An admin of a booked visit asks the phone bridge to call the patient's
    phone into the room (``number`` absent) or a number the clinic's trunk
    allows (an interpreter's line). Answered ``ok`` with ``call`` (its id and
    ``state``); the room's admins then hear ``phone_call`` at each step."""

    type: Literal["call_phone"] = "call_phone"
    number: Annotated[str, StringConstraints(pattern=r"^\+[0-9]{6,15}$")] | None = None


#: Bound on a reported size: no screen is 16k CSS pixels times its scale.
Pixels = Annotated[int, Field(ge=0, le=16_384)]


class TrackView(Frame):
    """How large a remote video track is shown: the rendered size of the
    largest element showing it, in device pixels (CSS pixels times
    ``devicePixelRatio``), and whether anyone can see it (a hidden tab or
    tile: ``visible`` false). The server picks the layer to forward from it
    and sends nothing to a hidden one. No answer: sent often, on resize and
    visibility changes (debounced)."""

    type: Literal["track_view"] = "track_view"
    track_id: Ident
    width: Pixels
    height: Pixels
    visible: bool


class AudioOnly(Frame):
    """The participant's own choice to send and receive no video (a weak or
    metered link); ``enabled`` false turns video back on. Answered ``ok``."""

    type: Literal["audio_only"] = "audio_only"
    enabled: bool


class IceRestart(Frame):
    """The client restarts ICE (RFC 8445 section 9) because its path died or
    its network changed: the server offers new ICE credentials on the
    subscribe connection (the next ``offer``), keeping its DTLS and SRTP.
    The publish connection restarts with an ordinary ``publish`` offer.
    Answered ``ok``; the others see ``participant_media`` ``reconnecting``."""

    type: Literal["ice_restart"] = "ice_restart"


class ReconnectMedia(Frame):
    """An ICE restart did not bring the media back: the server drops the
    subscribe transport and offers every track on a new one (answer it from a
    new peer connection); the client publishes again on a new publish
    connection. Answered ``ok``."""

    type: Literal["reconnect_media"] = "reconnect_media"


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
    | Record
    | RecordingConsent
    | ApproveGuest
    | CallPhone
    | TrackView
    | AudioOnly
    | IceRestart
    | ReconnectMedia
    | Leave
    | Ping
    | Pong
)

TYPES = frames.types_of(ClientFrame)


# -- server events of the weak-network work --------------------------------------
#
# Built and checked here so signalling, the media worker and the Python client
# agree on their shape; the call page reads them (wadud-call.js). Each is a
# model (strict, closed, like client frames) with ``frame()`` giving the dict
# that ``encode`` sends, and ``parse_event`` reads one back (for clients).

#: Connection quality, best first: ``lost`` means nothing arrived for a while.
QUALITIES = ("excellent", "good", "poor", "lost")
Quality = Literal["excellent", "good", "poor", "lost"]
# RFC 8851 section 10: rid-id = 1*(alpha-numeric / "-" / "_"); browsers use
# short ones ("q", "h", "f"), and 16 is plenty.
Rid = Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=r"^[A-Za-z0-9_-]+$")]


class ServerEvent(BaseModel):
    """A server event: strict and closed, with ``v`` and ``type`` as sent."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: Literal[1] = 1

    def frame(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ConnectionQuality(ServerEvent):
    """A participant's connection quality changed (yours included), from the
    loss, round-trip time, jitter and bandwidth the media worker sees on its
    legs. Sent on change, to everyone in the room."""

    type: Literal["connection_quality"] = "connection_quality"
    participant_id: Ident
    quality: Quality


class ParticipantMedia(ServerEvent):
    """A participant's media is reconnecting (it restarted ICE or asked for
    new peer connections, most often because its network changed) or
    connected again. Sent to everyone else in the room: show them as
    reconnecting, not as gone."""

    type: Literal["participant_media"] = "participant_media"
    participant_id: str
    state: Literal["reconnecting", "connected"]


class TrackPaused(ServerEvent):
    """The server stopped (``paused`` true) or resumed forwarding a video
    track to this subscriber: ``bandwidth`` when its link cannot carry the
    lowest layer (audio goes on), ``hidden`` when no element shows it,
    ``audio_only`` when the subscriber chose audio only, ``off`` when its
    publisher sends nothing of it (camera off or muted; not a weak link).
    ``reason`` is informative on resume."""

    type: Literal["track_paused"] = "track_paused"
    track_id: Ident
    paused: bool
    reason: Literal["bandwidth", "hidden", "audio_only", "off"]


class Encoding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    rid: Rid
    active: bool


class SetEncodings(ServerEvent):
    """Dynacast: which simulcast encodings of one of your own tracks to keep
    sending (W3C webrtc-pc ``RTCRtpEncodingParameters.active``). Encodings
    not listed keep their state; the page applies it with
    ``RTCRtpSender.setParameters``."""

    type: Literal["set_encodings"] = "set_encodings"
    track_id: Ident
    encodings: Annotated[list[Encoding], Field(min_length=1, max_length=4)]


EVENTS: dict[str, type[ServerEvent]] = {
    m.model_fields["type"].default: m
    for m in (ConnectionQuality, TrackPaused, SetEncodings, ParticipantMedia)
}


def parse_event(data: dict[str, Any]) -> ServerEvent:
    """One of the events above from a decoded server frame (for clients and
    tests); ``ValueError`` (pydantic's) when it is not a valid one."""
    kind = data.get("type")
    model = EVENTS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ValueError(f"not a known server event: {kind!r}")
    return model.model_validate(data)


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
    # What the error carries besides its message (a closed booking's
    # ``reason``, the purposes a consent refusal names) goes out with it.
    extra: dict[str, Any] = dict(exc.extra)
    if isinstance(exc, InvalidFrame) and exc.errors:
        extra["errors"] = exc.errors
    return error_frame(exc.code, exc.detail, ref=ref, fatal=exc.fatal, **extra)


def frame_types() -> Iterable[str]:
    """The client frame types, for metrics labels (anything else counts as unknown)."""
    return TYPES.keys()
