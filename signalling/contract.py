"""The call signalling protocol as a contract: every frame both ways as a
JSON Schema, every refusal and close code, and what this server offers.

Client frames are :mod:`signalling.protocol`'s models, the ones the server
parses every frame with, so what the schema allows is what the server
takes. Server frames are built as plain dicts where they happen (the room
core, the service); their shapes are the models below, which the tests hold
every frame the server sends to (tests/conftest.py checks each one against
the schema as it goes out). The refusals are :mod:`signalling.errors`'s
classes that close the connection.

``python -m signalling.contract`` prints the schema; docs/protocol.schema.json
is that output (a test holds them equal), docs/protocol.md the prose.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from signalling import errors, protocol
from wadud import __version__

__all__ = [
    "CODECS",
    "FEATURES",
    "PROTOCOLS",
    "SERVER_FRAMES",
    "ServerFrame",
    "offered",
    "refusals",
    "schema",
]

#: The protocol versions this server speaks (a ``join`` may ask for one).
PROTOCOLS = (1,)
#: The codecs the media worker forwards, by kind, in its preference order.
CODECS = {"audio": ["opus"], "video": ["VP8", "H264"]}
#: What this server does, for a client to rely on rather than guess.
FEATURES = [
    "simulcast",
    "red",
    "rtx",
    "transport-cc",
    "ice-restart",
    "reconnect-media",
    "resume",
    "recording",
    "guests",
    "phone",
    "track-view",
    "audio-only",
    "single-connection",
]


def offered() -> dict[str, Any]:
    """What ``joined`` says of the server: its protocol and version, codecs
    and features."""
    return {
        "protocol": PROTOCOLS[-1],
        "server": f"wadud/{__version__}",
        "codecs": CODECS,
        "features": FEATURES,
    }


# -- server frames ---------------------------------------------------------------


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ServerFrame(_Closed):
    """Every server frame: ``v``, its ``type``, and ``ref`` (the ``id`` of the
    request it answers) on answers."""

    v: Literal[1] = 1
    ref: str | None = None


Id = Annotated[str, Field(min_length=1, max_length=64)]


class Grants(_Closed):
    publish: bool
    subscribe: bool
    admin: bool


class Participant(_Closed):
    id: Id
    identity: str
    name: str
    role: str
    device: Literal["phone"] | None = None


class Me(Participant):
    grants: Grants
    actions: list[str]


class Waiting(Participant):
    awaiting_approval: Literal[True] | None = None


class Guest(Participant):
    invite_id: str


class Track(_Closed):
    track_id: Id
    participant: Id
    kind: Literal["audio", "video"]
    source: str
    mid: str | None
    muted: bool


class OfferedTrack(_Closed):
    mid: str
    track_id: Id
    participant: Id
    kind: Literal["audio", "video"]
    source: str


class IceServer(BaseModel):
    """As ``RTCIceServer`` (W3C webrtc-pc), with the credentials' ``ttl``."""

    model_config = ConfigDict(extra="allow")
    urls: list[str] | str
    username: str | None = None
    credential: str | None = None
    ttl: int | None = None


class Recording(_Closed):
    state: Literal["off", "asking", "on"]
    recording_id: str | None
    requested_by: str | None = None
    reason: Literal["stopped", "refused", "failed"] | None = None
    by: str | None = None


class JoinedRecording(Recording):
    asked: bool


class Codecs(_Closed):
    audio: list[str]
    video: list[str]


class Joined(ServerFrame):
    type: Literal["joined"]
    room: str
    participant: Me
    session: str
    ice_servers: list[IceServer]
    participants: list[Participant]
    tracks: list[Track]
    waiting: list[Waiting]
    require_admission: bool
    active_speaker: str | None
    ping_interval: float
    recording: JoinedRecording
    #: Seconds the seat is kept once the socket is taken for dropped.
    resume_grace: float
    #: ``single``: one peer connection both ways (the join asked), else ``pair``.
    connection: Literal["single", "pair"]
    phone_calls: bool
    guests_awaiting: list[Guest]
    protocol: int
    server: str
    codecs: Codecs
    features: list[str]


class WaitingFrame(ServerFrame):
    """To the one who waits (with ``ref``, ``participant``, ``session``), or
    to hosts: who waits now (``waiting``)."""

    type: Literal["waiting"]
    participant: Me | None = None
    session: str | None = None
    waiting: list[Waiting] | None = None


class PhoneCallView(_Closed):
    id: str
    booking_id: str
    to: Literal["patient", "other"]
    number: str
    state: str
    reason: str | None
    created_at: str
    updated_at: str


class Ok(ServerFrame):
    type: Literal["ok"]
    #: The answer to ``call_phone``.
    call: PhoneCallView | None = None


class Published(ServerFrame):
    type: Literal["published"]
    sdp: str
    tracks: list[Track]
    #: A single connection's sections that carry a track to you.
    receiving: list[OfferedTrack] | None = None


class Renegotiate(ServerFrame):
    """A single connection should offer again, with this many more
    ``recvonly`` sections of each kind."""

    type: Literal["renegotiate"]
    audio: Annotated[int, Field(ge=0)]
    video: Annotated[int, Field(ge=0)]


class Offer(ServerFrame):
    type: Literal["offer"]
    sdp: str
    tracks: list[OfferedTrack]


class Pong(ServerFrame):
    """The answer to a client's ``ping`` (with ``server_time``, Unix
    milliseconds); or the answer to nothing, never sent."""

    type: Literal["pong"]
    server_time: int | None = None


class IceServers(ServerFrame):
    """Fresh TURN credentials, before those in hand expire."""

    type: Literal["ice_servers"]
    ice_servers: list[IceServer]


class Ping(ServerFrame):
    type: Literal["ping"]


class ParticipantJoined(ServerFrame):
    type: Literal["participant_joined"]
    participant: Participant


class ParticipantLeft(ServerFrame):
    type: Literal["participant_left"]
    participant_id: Id
    reason: str


class TrackPublished(ServerFrame):
    type: Literal["track_published"]
    track: Track


class TrackUnpublished(ServerFrame):
    type: Literal["track_unpublished"]
    track_id: Id


class TrackMuted(ServerFrame):
    type: Literal["track_muted"]
    track_id: Id
    muted: bool
    by: Id | None


class ActiveSpeaker(ServerFrame):
    type: Literal["active_speaker"]
    participant_id: Id | None


class GuestsAwaiting(ServerFrame):
    type: Literal["guests_awaiting"]
    guests: list[Guest]


class RoomSettings(ServerFrame):
    type: Literal["room_settings"]
    require_admission: bool


class Removed(ServerFrame):
    type: Literal["removed"]
    reason: Literal["invite-revoked", "signed-out"] | None = None


class Denied(ServerFrame):
    type: Literal["denied"]
    reason: Literal["refused"] | None = None


class RoomEnded(ServerFrame):
    type: Literal["room_ended"]
    reason: str | None = None


class Replaced(ServerFrame):
    type: Literal["replaced"]


class MediaReconnect(ServerFrame):
    type: Literal["media_reconnect"]
    reason: Literal["media-lost", "media-draining"]


class RecordingAsked(ServerFrame):
    type: Literal["recording_asked"]
    recording_id: str
    requested_by: str | None


class RecordingFrame(ServerFrame, Recording):
    type: Literal["recording"]


class PhoneCall(ServerFrame):
    type: Literal["phone_call"]
    call: str
    state: str
    to: Literal["patient", "other"]
    reason: str | None = None


class ErrorFrame(ServerFrame):
    """An error: a refusal (``fatal``, then the server closes) or a request
    the server did not do. Besides its ``code`` and ``message``, what it
    carries depends on the code (``action`` and ``role`` for ``forbidden``,
    ``reason`` for ``booking-closed``, ``missing`` for ``consent_required``,
    ``errors`` for ``invalid``, ...)."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["error"]
    code: str
    message: str
    fatal: bool | None = None


def _event(model: type[protocol.ServerEvent]) -> type[ServerFrame]:
    """The weak-network events (protocol.EVENTS), as server frames."""
    return type(model.__name__, (ServerFrame, model), {})


#: Every server frame's model, by its type.
SERVER_FRAMES: dict[str, type[BaseModel]] = {
    **{
        m.model_fields["type"].annotation.__args__[0]: m  # type: ignore[union-attr]
        for m in (
            Joined,
            WaitingFrame,
            Ok,
            Published,
            Offer,
            Pong,
            IceServers,
            Ping,
            ParticipantJoined,
            ParticipantLeft,
            TrackPublished,
            TrackUnpublished,
            TrackMuted,
            ActiveSpeaker,
            GuestsAwaiting,
            RoomSettings,
            Removed,
            Denied,
            RoomEnded,
            Replaced,
            MediaReconnect,
            Renegotiate,
            RecordingAsked,
            RecordingFrame,
            PhoneCall,
            ErrorFrame,
        )
    },
    **{kind: _event(model) for kind, model in protocol.EVENTS.items()},
}


# -- refusals ----------------------------------------------------------------------


def _subclasses(cls: type[errors.SignallingError]) -> list[type[errors.SignallingError]]:
    out: list[type[errors.SignallingError]] = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def refusals() -> list[dict[str, Any]]:
    """Every refusal: the error codes that close the connection, with their
    close code and what they mean, in the order of the errors module."""
    seen: dict[str, dict[str, Any]] = {}
    for cls in _subclasses(errors.SignallingError):
        close = getattr(cls, "close_code", None)
        if close is None or cls.code in seen:
            continue
        seen[cls.code] = {"code": cls.code, "close": close, "title": cls.title}
    return list(seen.values())


def _codes() -> list[dict[str, Any]]:
    """Every error code a request may get without the connection closing."""
    base = errors.SignallingError
    seen: dict[str, dict[str, Any]] = {base.code: {"code": base.code, "title": base.title}}
    for cls in _subclasses(errors.SignallingError):
        if getattr(cls, "close_code", None) is None and cls.code not in seen:
            seen[cls.code] = {"code": cls.code, "title": cls.title}
    return list(seen.values())


CLOSE_CODES = {
    errors.CLOSE_NORMAL: "left (after leave)",
    errors.CLOSE_GOING_AWAY: "the server is stopping: come back with resume",
    errors.CLOSE_TOO_BIG: "a frame over call_max_frame_bytes",
    errors.CLOSE_RECONNECT: "come back at once with resume",
    1013: "the client stopped reading: come back with resume",
    errors.CLOSE_UNAUTHORIZED: "refused: bad token, or signed out",
    errors.CLOSE_FORBIDDEN: "refused, removed, denied, invite revoked",
    errors.CLOSE_TIMEOUT: "no join in time, or pings unanswered",
    errors.CLOSE_REPLACED: "another connection took the participant over",
    errors.CLOSE_ENDED: "the room or visit is over, the invite closed",
    errors.CLOSE_FULL: "the room is full",
    errors.CLOSE_PROTOCOL: "refused: no protocol version both sides speak",
}


# -- the schema ----------------------------------------------------------------------


def schema() -> dict[str, Any]:
    """The contract as one JSON Schema document (draft 2020-12): ``client``
    and ``server`` are each a ``oneOf`` of the frames one side sends;
    ``x-refusals``, ``x-errors`` and ``x-close-codes`` list the codes."""
    client_union = Annotated[protocol.ClientFrame, Field(discriminator="type")]
    client = TypeAdapter(client_union).json_schema(ref_template="#/$defs/{model}")
    defs: dict[str, Any] = dict(client.pop("$defs", {}))
    server_models = list(SERVER_FRAMES.values())
    server_union: Any = server_models[0]
    for m in server_models[1:]:
        server_union = server_union | m
    server = TypeAdapter(Annotated[server_union, Field(discriminator="type")]).json_schema(
        ref_template="#/$defs/{model}"
    )
    defs.update(server.pop("$defs", {}))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://wadud.example/protocol/calls/v1.json",
        "title": "Wadud call signalling, version 1",
        "x-protocols": list(PROTOCOLS),
        "client": client,
        "server": server,
        "$defs": defs,
        "x-refusals": refusals(),
        "x-errors": _codes(),
        "x-close-codes": [{"code": k, "meaning": v} for k, v in sorted(CLOSE_CODES.items())],
    }


def main() -> None:
    json.dump(schema(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
