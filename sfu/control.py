"""How signalling drives a media worker: requests, results and events.

Signalling never touches media; it asks a worker to negotiate transports and
to change the routing table, and learns what happens on the media plane
(a transport connected or timed out, the active speaker changed) from events.
:class:`MediaControl` is that interface. In ``wadud serve`` the worker
(:class:`sfu.worker.MediaWorker`) implements it in the same process; when
media runs as separate processes and nodes the same calls travel over the bus
as request/reply, and the events as messages, so every argument and result
here is plain data that serialises to JSON (:func:`event_to_dict`).

Each participant has up to two transports on the worker's one UDP port: a
*publish* transport (the client offers its outgoing tracks, the worker
answers) and a *subscribe* transport (the worker offers the tracks the
participant receives, the client answers). Keeping them apart means a new
track in the room never renegotiates what a participant sends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "ActiveSpeaker",
    "MediaControl",
    "MediaEvent",
    "PublishResult",
    "Source",
    "TrackInfo",
    "TransportState",
    "event_from_dict",
    "event_to_dict",
]

Source = Literal["microphone", "camera", "screen", "screen_audio"]
Direction = Literal["publish", "subscribe"]


@dataclass(frozen=True)
class TrackInfo:
    """A published track as the room sees it. ``track_id`` is unique in the room
    and stable for the track's life; ``mid`` is the publisher's m= section."""

    track_id: str
    participant: str
    kind: Literal["audio", "video"]
    source: Source
    mid: str
    muted: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackInfo:
        """The inverse of :func:`dataclasses.asdict` (data that crossed the bus)."""
        return cls(
            track_id=str(data["track_id"]),
            participant=str(data["participant"]),
            kind=data["kind"],
            source=data["source"],
            mid=str(data["mid"]),
            muted=bool(data.get("muted", False)),
        )


@dataclass(frozen=True)
class PublishResult:
    """The worker's answer to a publish offer and what it changed: tracks new
    in this offer, and track ids whose m= sections the offer stopped."""

    answer: str
    added: list[TrackInfo] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PublishResult:
        """The inverse of :func:`dataclasses.asdict` (data that crossed the bus)."""
        return cls(
            answer=str(data["answer"]),
            added=[TrackInfo.from_dict(t) for t in data.get("added", ())],
            removed=[str(t) for t in data.get("removed", ())],
        )


@dataclass(frozen=True)
class TransportState:
    """A participant's transport changed state. ``state`` is ``connected`` once
    ICE and DTLS are up and SRTP keyed; ``failed`` when ICE, DTLS or consent
    freshness (RFC 7675) gave up; ``closed`` when the worker closed it."""

    room: str
    participant: str
    direction: Direction
    state: Literal["connected", "failed", "closed"]
    reason: str = ""
    type: Literal["transport_state"] = "transport_state"


@dataclass(frozen=True)
class ActiveSpeaker:
    """The room's dominant speaker changed (from RFC 6464 audio levels);
    ``participant`` is None when nobody is speaking."""

    room: str
    participant: str | None
    type: Literal["active_speaker"] = "active_speaker"


MediaEvent = TransportState | ActiveSpeaker


def event_to_dict(event: MediaEvent) -> dict[str, object]:
    """An event as JSON-ready data (for the bus)."""
    return asdict(event)


def event_from_dict(data: Mapping[str, Any]) -> MediaEvent:
    """The inverse of :func:`event_to_dict`; ValueError for an unknown ``type``."""
    kind = data.get("type")
    if kind == "transport_state":
        return TransportState(
            room=str(data["room"]),
            participant=str(data["participant"]),
            direction=data["direction"],
            state=data["state"],
            reason=str(data.get("reason", "")),
        )
    if kind == "active_speaker":
        speaker = data.get("participant")
        return ActiveSpeaker(
            room=str(data["room"]), participant=None if speaker is None else str(speaker)
        )
    raise ValueError(f"not a media event: {kind!r}")


class MediaControl(Protocol):
    """What signalling asks of a media worker. Every method may raise
    :class:`rtc.errors.SdpError` (bad or unanswerable SDP: the client's fault)
    or :class:`sfu.errors.SfuStateError` (no such room, participant or track)."""

    async def publish(
        self, room: str, participant: str, offer: str, sources: Mapping[str, Source]
    ) -> PublishResult:
        """Answer a participant's publish offer (first or renegotiation of the
        same transport). ``sources`` maps the offer's mids to what they carry;
        a mid not in it is ``microphone`` for audio, ``camera`` for video."""
        ...

    async def subscribe(self, room: str, participant: str, track_ids: Sequence[str]) -> str | None:
        """Make ``track_ids`` exactly the set the participant receives; returns
        the worker's new offer for the subscribe transport, or None when the
        set did not change. Stopped tracks keep their m= section (port 0) so
        later offers line up. The next offer waits for :meth:`answer`."""
        ...

    async def answer(self, room: str, participant: str, sdp: str) -> None:
        """The participant's answer to the last subscribe offer."""
        ...

    async def set_muted(self, room: str, track_id: str, muted: bool) -> None:
        """Stop (or resume) forwarding a track to everyone; resuming video
        waits for a keyframe, which is requested."""
        ...

    async def unpublish(self, room: str, participant: str, track_id: str) -> None:
        """Forget a track and every subscription to it."""
        ...

    async def leave(self, room: str, participant: str) -> None:
        """Close the participant's transports and forget its tracks and subscriptions."""
        ...

    async def close_room(self, room: str) -> None:
        """Everyone leaves; the room is forgotten."""
        ...

    def add_listener(self, listener: Callable[[MediaEvent], None]) -> None:
        """Call ``listener`` with every event (synchronously, from the worker's loop)."""
        ...
