"""How signalling drives a media worker: requests, results and events.

Signalling never touches media; it asks a worker to negotiate transports and
to change the routing table, and learns what happens on the media plane
(a transport connected or timed out, the active speaker changed) from events.
:class:`MediaControl` is that interface. In ``wadud serve`` the worker
(:class:`sfu.node.worker.MediaWorker`) implements it in the same process; when
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
    "CallSample",
    "ConnectionQuality",
    "LayersWanted",
    "MediaControl",
    "MediaEvent",
    "PublishResult",
    "RecordingOrder",
    "RecordingSegment",
    "RecordingStopped",
    "RelayCodec",
    "RelayPeer",
    "RelayState",
    "RelayedLayer",
    "RelayedTrack",
    "Restart",
    "Source",
    "TrackDisplay",
    "TrackInfo",
    "TrackPaused",
    "TransportState",
    "event_from_dict",
    "event_to_dict",
]

Source = Literal["microphone", "camera", "screen", "screen_audio"]
Direction = Literal["publish", "subscribe", "single"]
#: How :meth:`MediaControl.subscribe` renews a subscribe transport: new ICE
#: credentials on the same one (RFC 8445 section 9), or a new transport.
Restart = Literal["ice", "transport"]


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
    rids: tuple[str, ...] = ()
    """A simulcast track's RIDs (RFC 8851), lowest layer first; empty for one layer."""

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
            rids=tuple(str(r) for r in data.get("rids", ())),
        )


@dataclass(frozen=True)
class PublishResult:
    """The worker's answer to a publish offer and what it changed: tracks new
    in this offer, and track ids whose m= sections the offer stopped.

    On a single connection (``receive`` given to :meth:`MediaControl.publish`)
    also what the answer sends the participant: ``receiving`` maps the m=
    sections that carry a track (mid -> track id), ``free`` counts the
    offered receiving sections left empty, by kind."""

    answer: str
    added: list[TrackInfo] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    receiving: dict[str, str] = field(default_factory=dict)
    free: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PublishResult:
        """The inverse of :func:`dataclasses.asdict` (data that crossed the bus)."""
        return cls(
            answer=str(data["answer"]),
            added=[TrackInfo.from_dict(t) for t in data.get("added", ())],
            removed=[str(t) for t in data.get("removed", ())],
            receiving={str(k): str(v) for k, v in dict(data.get("receiving") or {}).items()},
            free={str(k): int(v) for k, v in dict(data.get("free") or {}).items()},
        )


@dataclass(frozen=True)
class TrackDisplay:
    """How a subscriber shows a video track (the page's ``track_view``): the
    largest element's size in device pixels (0 x 0: unknown, no cap) and
    whether it is visible."""

    width: int = 0
    height: int = 0
    visible: bool = True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackDisplay:
        """The inverse of :func:`dataclasses.asdict` (data that crossed the bus)."""
        return cls(int(data["width"]), int(data["height"]), bool(data["visible"]))


@dataclass(frozen=True)
class RelayPeer:
    """Another media worker, as a relay link to it needs it (from its registry
    entry, :class:`sfu.control.registry.WorkerInfo`): its id, the UDP address it
    announced and its DTLS certificate fingerprint, ``"sha-256 AB:CD:..."``
    (RFC 8122 section 5), which the link's handshake must present."""

    worker: str
    host: str
    port: int
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RelayPeer:
        """The inverse of :meth:`to_dict` (data that crossed the bus)."""
        return cls(
            worker=str(data["worker"]),
            host=str(data["host"]),
            port=int(data["port"]),
            fingerprint=str(data["fingerprint"]),
        )


@dataclass(frozen=True)
class RelayCodec:
    """A payload type as a relay link carries it: ``rtpmap`` (name, clock
    rate, channels), ``fmtp`` as sent, and the ``rtcp-fb`` values (``"nack"``,
    ``"nack pli"``, ``"ccm fir"``...; RFC 4585 section 4.2)."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int | None = None
    fmtp: str | None = None
    feedback: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "feedback": list(self.feedback)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RelayCodec:
        """The inverse of :meth:`to_dict` (data that crossed the bus)."""
        channels = data.get("channels")
        fmtp = data.get("fmtp")
        return cls(
            payload_type=int(data["payload_type"]),
            name=str(data["name"]),
            clock_rate=int(data["clock_rate"]),
            channels=None if channels is None else int(channels),
            fmtp=None if fmtp is None else str(fmtp),
            feedback=tuple(str(f) for f in data.get("feedback", ())),
        )


@dataclass(frozen=True)
class RelayedLayer:
    """One simulcast layer of a relayed track: its RID and the SSRCs the link
    carries it (and its RTX) with. ``ssrc`` 0: the layer is not crossing now
    (nobody on the receiving worker wants it)."""

    rid: str
    ssrc: int
    rtx_ssrc: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RelayedLayer:
        rtx = data.get("rtx_ssrc")
        return cls(
            rid=str(data["rid"]),
            ssrc=int(data["ssrc"]),
            rtx_ssrc=None if rtx is None else int(rtx),
        )


@dataclass(frozen=True)
class RelayedTrack:
    """A track as it arrives on a relay link: what the receiving worker needs
    to register it and offer it to its own subscribers as if it had been
    published there. ``info`` is the publisher's (its participant and mid on
    the publishing worker); ``ssrc`` is the SSRC the link carries it with
    (unique on the link, chosen by the sending worker), ``codec`` its media
    payload type on the link, ``rtx_ssrc``/``rtx`` its RTX stream (RFC 4588)
    when the link repairs with RTX, ``extensions`` the RFC 8285 header
    extensions URI -> id as written on the link. A simulcast track
    (``info.rids``) crosses as ``layers``, each on its own link SSRC, lowest
    first; ``ssrc``/``rtx_ssrc`` are then its lowest layer's (what a worker
    that knows nothing of layers would take). ``red``: the publisher's Opus
    RED (RFC 2198), whose packets cross as they are."""

    info: TrackInfo
    ssrc: int
    codec: RelayCodec
    rtx_ssrc: int | None = None
    rtx: RelayCodec | None = None
    extensions: Mapping[str, int] = field(default_factory=dict)
    layers: tuple[RelayedLayer, ...] = ()
    red: RelayCodec | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "info": {**asdict(self.info), "rids": list(self.info.rids)},
            "ssrc": self.ssrc,
            "codec": self.codec.to_dict(),
            "rtx_ssrc": self.rtx_ssrc,
            "rtx": None if self.rtx is None else self.rtx.to_dict(),
            "extensions": dict(self.extensions),
            "layers": [layer.to_dict() for layer in self.layers],
            "red": None if self.red is None else self.red.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RelayedTrack:
        """The inverse of :meth:`to_dict` (data that crossed the bus)."""
        rtx_ssrc = data.get("rtx_ssrc")
        rtx = data.get("rtx")
        red = data.get("red")
        return cls(
            info=TrackInfo.from_dict(data["info"]),
            ssrc=int(data["ssrc"]),
            codec=RelayCodec.from_dict(data["codec"]),
            rtx_ssrc=None if rtx_ssrc is None else int(rtx_ssrc),
            rtx=None if rtx is None else RelayCodec.from_dict(rtx),
            extensions={str(k): int(v) for k, v in dict(data.get("extensions", {})).items()},
            layers=tuple(RelayedLayer.from_dict(x) for x in data.get("layers", ())),
            red=None if red is None else RelayCodec.from_dict(red),
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


@dataclass(frozen=True)
class RelayState:
    """A relay link to another worker changed state: ``connected`` once DTLS
    is up (fingerprint verified) and SRTP keyed; ``failed`` when the handshake
    failed (a wrong fingerprint) or nothing came from the peer for a few
    seconds; ``closed`` when no room uses the link any more (or the worker
    closed). ``peer_worker`` is the other worker's id."""

    peer_worker: str
    state: Literal["connected", "failed", "closed"]
    reason: str = ""
    type: Literal["relay_state"] = "relay_state"


@dataclass(frozen=True)
class TrackPaused:
    """The worker stopped (``paused``) or resumed forwarding a video track to
    one subscriber (``participant``): ``bandwidth`` when the subscriber's
    estimated bandwidth cannot carry the track's lowest layer next to its
    audio (audio goes on; resumed by itself when it can), ``hidden`` when
    the subscriber's view of it is not visible (:meth:`MediaControl.set_view`),
    ``audio_only`` when the subscriber asked for audio only
    (:meth:`MediaControl.set_audio_only`), ``off`` when the publisher sends
    nothing of it (muted, or no layer arriving: a camera turned off). On
    resume ``reason`` says what the pause was. Signalling sends it to that
    subscriber as ``track_paused``."""

    room: str
    participant: str
    track_id: str
    paused: bool
    reason: Literal["bandwidth", "hidden", "audio_only", "off"]
    type: Literal["track_paused"] = "track_paused"


@dataclass(frozen=True)
class LayersWanted:
    """Dynacast: the simulcast layers of a track that some subscriber (or a
    relay link) on this worker wants. ``rids`` are all the track's RIDs,
    lowest first, ``active_rids`` those to keep sending; a layer nobody has
    wanted for ``dynacast_delay`` seconds is dropped from ``active_rids``,
    a layer wanted again is added at once. Signalling turns it into
    ``set_encodings`` for the publisher (``participant``). Emitted on change,
    and once when a simulcast track is published (every layer active)."""

    room: str
    track_id: str
    participant: str
    rids: list[str]
    active_rids: list[str]
    type: Literal["layers_wanted"] = "layers_wanted"


@dataclass(frozen=True)
class ConnectionQuality:
    """A participant's connection quality changed (``excellent``, ``good``,
    ``poor``, ``lost``), from the loss and jitter of what it sends, the loss
    and RTT its receiver reports give and the bandwidth estimated toward it
    (:mod:`sfu.feedback.quality`, with hysteresis). Emitted on change, and once with
    the first evaluation after the participant connects."""

    room: str
    participant: str
    quality: Literal["excellent", "good", "poor", "lost"]
    type: Literal["connection_quality"] = "connection_quality"


@dataclass(frozen=True)
class CallSample:
    """A participant's legs as the worker saw them over the last few seconds
    (``sfu.rooms.call_samples``, every ``SAMPLE_EVERY``), for the visit's call
    report: loss (0-1), RTT and jitter (seconds, None: unknown), what they
    send and receive and the bandwidth estimated toward them (bits per
    second), the simulcast layer (rid) of each video they receive (None:
    paused), and the quality level shown."""

    room: str
    participant: str
    loss: float
    rtt: float | None
    jitter: float | None
    sent: float
    received: float
    available: float
    layers: dict[str, str | None]
    quality: Literal["excellent", "good", "poor", "lost"]
    type: Literal["call_sample"] = "call_sample"


@dataclass(frozen=True)
class RecordingOrder:
    """What :meth:`MediaControl.record` records under: the recording's id (a
    UUID string) and its 32-byte AES-256 key, urlsafe base64 (plain data: it
    crosses the bus). The key seals every segment (:mod:`rtc.rtpdump`)."""

    recording: str
    key: str


@dataclass(frozen=True)
class RecordingSegment:
    """One sealed segment of a recorded track is stored: under ``key`` (the
    file store's SHA-256 hex) in ``size`` bytes, ``packets`` RTP packets that
    arrived from ``started`` to ``ended`` (Unix seconds). ``index`` counts a
    track's segments 0, 1, 2, ... without gaps; ``participant`` published
    the track."""

    room: str
    recording: str
    participant: str
    track_id: str
    kind: Literal["audio", "video"]
    index: int
    key: str
    packets: int
    size: int
    started: float
    ended: float
    type: Literal["recording_segment"] = "recording_segment"


@dataclass(frozen=True)
class RecordingStopped:
    """A room's recording on this worker ended: ``stopped`` (asked to, or the
    room closed; every segment is stored and reported before this) or
    ``failed`` (the store was too slow or refused a segment; ``detail``
    says which, and what was queued is dropped). The call goes on either way."""

    room: str
    recording: str
    reason: Literal["stopped", "failed"]
    detail: str
    type: Literal["recording_stopped"] = "recording_stopped"


MediaEvent = (
    TransportState
    | ActiveSpeaker
    | RelayState
    | TrackPaused
    | LayersWanted
    | ConnectionQuality
    | CallSample
    | RecordingSegment
    | RecordingStopped
)


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
    if kind == "relay_state":
        return RelayState(
            peer_worker=str(data["peer_worker"]),
            state=data["state"],
            reason=str(data.get("reason", "")),
        )
    if kind == "track_paused":
        return TrackPaused(
            room=str(data["room"]),
            participant=str(data["participant"]),
            track_id=str(data["track_id"]),
            paused=bool(data["paused"]),
            reason=data["reason"],
        )
    if kind == "layers_wanted":
        return LayersWanted(
            room=str(data["room"]),
            track_id=str(data["track_id"]),
            participant=str(data["participant"]),
            rids=[str(r) for r in data["rids"]],
            active_rids=[str(r) for r in data["active_rids"]],
        )
    if kind == "connection_quality":
        return ConnectionQuality(
            room=str(data["room"]),
            participant=str(data["participant"]),
            quality=data["quality"],
        )
    if kind == "call_sample":
        return CallSample(
            room=str(data["room"]),
            participant=str(data["participant"]),
            loss=float(data["loss"]),
            rtt=None if data.get("rtt") is None else float(data["rtt"]),
            jitter=None if data.get("jitter") is None else float(data["jitter"]),
            sent=float(data["sent"]),
            received=float(data["received"]),
            available=float(data["available"]),
            layers={str(k): None if v is None else str(v) for k, v in data["layers"].items()},
            quality=data["quality"],
        )
    if kind == "recording_segment":
        return RecordingSegment(
            room=str(data["room"]),
            recording=str(data["recording"]),
            participant=str(data["participant"]),
            track_id=str(data["track_id"]),
            kind=data["kind"],
            index=int(data["index"]),
            key=str(data["key"]),
            packets=int(data["packets"]),
            size=int(data["size"]),
            started=float(data["started"]),
            ended=float(data["ended"]),
        )
    if kind == "recording_stopped":
        return RecordingStopped(
            room=str(data["room"]),
            recording=str(data["recording"]),
            reason=data["reason"],
            detail=str(data.get("detail", "")),
        )
    raise ValueError(f"not a media event: {kind!r}")


class MediaControl(Protocol):
    """What signalling asks of a media worker. Every method may raise
    :class:`rtc.errors.SdpError` (bad or unanswerable SDP: the client's fault)
    or :class:`sfu.errors.SfuStateError` (no such room, participant or track)."""

    async def publish(
        self,
        room: str,
        participant: str,
        offer: str,
        sources: Mapping[str, Source],
        receive: Sequence[str] | None = None,
    ) -> PublishResult:
        """Answer a participant's publish offer (first or renegotiation of the
        same transport). ``sources`` maps the offer's mids to what they carry;
        a mid not in it is ``microphone`` for audio, ``camera`` for video.

        ``receive`` makes it a single connection that also receives: the
        track ids to send it, in the offer's ``recvonly`` m= sections, as
        many as fit (:class:`PublishResult` says which went where). A single
        connection gets no :meth:`subscribe` offers; each change of what it
        receives is another offer from the client."""
        ...

    async def subscribe(
        self,
        room: str,
        participant: str,
        track_ids: Sequence[str],
        restart: Restart | None = None,
    ) -> str | None:
        """Make ``track_ids`` exactly the set the participant receives; returns
        the worker's new offer for the subscribe transport, or None when the
        set did not change. Stopped tracks keep their m= section (port 0) so
        later offers line up. The next offer waits for :meth:`answer`.
        ``restart``: ``"ice"`` offers new ICE credentials on the same
        transport (an ICE restart: DTLS and SRTP stay), ``"transport"`` a new
        transport (a new peer connection on the client)."""
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

    async def set_view(
        self, room: str, participant: str, track_id: str, view: TrackDisplay
    ) -> None:
        """How the subscriber ``participant`` shows the video track
        ``track_id`` (:class:`TrackDisplay`). The worker sends the smallest simulcast
        layer that covers the size (within the bandwidth it estimates) and
        nothing to an invisible view (TrackPaused ``hidden``). May come before
        the subscription exists; kept until the participant leaves.
        SfuStateError for an unknown room."""
        ...

    async def set_audio_only(self, room: str, participant: str, enabled: bool) -> None:
        """The subscriber ``participant`` receives no video while ``enabled``
        (TrackPaused ``audio_only`` for each video track it receives), and
        video again when not. SfuStateError for an unknown room."""
        ...

    async def record(self, room: str, order: RecordingOrder | None) -> None:
        """Record every track of ``room`` this worker has (published here or relayed in),
        and any added later, until called with None (stop: the open segments are sealed
        and stored, then RecordingStopped(reason="stopped")). Idempotent for the same
        recording id; a different id while one runs: SfuStateError. SfuStateError for an
        unknown room.

        Each stored segment is a :class:`RecordingSegment` event; a store too
        slow or failing ends it with RecordingStopped(reason="failed"), never
        the call. Stopping returns at once; the events follow."""
        ...

    async def leave(self, room: str, participant: str) -> None:
        """Close the participant's transports and forget its tracks and subscriptions."""
        ...

    async def close_room(self, room: str) -> None:
        """Everyone leaves; the room is forgotten."""
        ...

    def relay_identity(self) -> tuple[str, str]:
        """This worker's id and its DTLS certificate fingerprint
        (``"sha-256 AB:CD:..."``), what another worker's :class:`RelayPeer`
        for it holds. Local only: over the bus the registry entry has both."""
        ...

    async def relay_send(
        self, room: str, peer: RelayPeer, track_ids: Sequence[str]
    ) -> list[RelayedTrack]:
        """Make ``track_ids`` exactly the set of this room's *local* tracks
        this worker sends to ``peer`` (idempotent; ``[]`` stops sending this
        room's tracks there). Returns each track as it will arrive on the link,
        for the peer's :meth:`relay_receive`. The link (one per pair of
        workers, both directions, every room) is set up on first use and torn
        down when no room uses it either way."""
        ...

    async def relay_receive(
        self, room: str, peer: RelayPeer, tracks: Sequence[RelayedTrack]
    ) -> None:
        """Make ``tracks`` exactly the remote tracks this worker receives from
        ``peer`` for this room (idempotent; ``[]`` stops). They are subscribable
        here by track id with :meth:`subscribe` like local tracks; a track no
        longer listed is removed with its subscriptions (like
        :meth:`unpublish`). SfuStateError for a track id the room already has
        from elsewhere."""
        ...

    def add_listener(self, listener: Callable[[MediaEvent], None]) -> None:
        """Call ``listener`` with every event (synchronously, from the worker's loop)."""
        ...
