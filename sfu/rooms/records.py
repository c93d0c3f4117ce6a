"""What a media worker knows of its rooms: rooms, participants, transports, tracks, m= sections.

The records the parts of :class:`sfu.node.worker.MediaWorker` share (a relay
link to another worker is a :class:`Link`), and :class:`WorkerTables`, the
one record of its tables that it hands them. The datagram
side (:mod:`sfu.node.hot_path`) reads a :class:`Peer` on every packet: its SRTP
methods, selected address, forwarder and per-packet counters. The control
side (:mod:`sfu.negotiation.transports`, :mod:`sfu.negotiation.negotiator`)
creates and changes them as participants publish, subscribe and leave. A
:class:`Peer` is also the forwarder's key for its subscriber, so the hot path
needs no lookup per subscriber.

Plain classes with ``__slots__`` rather than dataclasses: the hot path reads
their attributes per packet, and identity (not equality) is what the
forwarder's and the report scheduler's tables key on.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import Literal

from rtc.ice import Address
from rtc.sdp.attributes import Codec
from rtc.srtp import SrtpSession
from sfu.control.messages import RelayedTrack, TrackDisplay, TrackInfo
from sfu.feedback.bandwidth import BandwidthFeedback, TransportCcRecorder
from sfu.feedback.receiving import ReceiveStatistics
from sfu.feedback.reports import ReportScheduler
from sfu.feedback.speaker import SpeakerDetector
from sfu.forward import native
from sfu.forward.forwarder import Forwarder
from sfu.transport.offer_answer import ForwardedTrack, LocalParameters
from sfu.transport.peer import PeerTransport
from sfu.transport.relay import RelayLink

__all__ = [
    "LayerInfo",
    "Leg",
    "Link",
    "MediaParticipant",
    "MediaRoom",
    "Peer",
    "RelayRoom",
    "Section",
    "Track",
    "WorkerTables",
    "bind_srtp",
    "keyed",
]

Leg = Literal["publish", "subscribe", "single"]
"""A participant's transports: it publishes on one and receives on the other,
or does both on a ``single`` one (docs/protocol.md, "Media: one peer
connection"), which is then its ``publish`` and its ``subscribe`` leg."""


class MediaRoom:
    __slots__ = (
        "audio_only",
        "forwarder",
        "name",
        "participants",
        "recording",
        "relays",
        "speaker",
        "speaker_sent",
        "tracks",
        "views",
    )

    def __init__(self, name: str, forwarder: Forwarder, speaker: SpeakerDetector) -> None:
        self.name = name
        self.forwarder = forwarder
        self.speaker = speaker
        self.speaker_sent: str | None = None
        self.participants: dict[str, MediaParticipant] = {}
        self.tracks: dict[str, Track] = {}
        self.relays: dict[str, RelayRoom] = {}
        """Peer worker id -> what this room sends to and receives from it (:mod:`sfu.node.links`).
        """
        self.views: dict[tuple[str, str], TrackDisplay] = {}
        """(subscriber, track id) -> how the subscriber shows the track (:mod:`sfu.layers.choice`).
        """
        self.audio_only: set[str] = set()
        """Subscribers that asked for no video."""
        self.recording: deque[tuple[int, bytes, float]] | None = None
        """While the room is recorded, the queue its peers' packets go to
        (:mod:`sfu.recording.core`).
        """

    def ssrcs_in_use(self, but: Peer | None = None) -> set[int]:
        """The SSRCs, media and RTX, of the room's tracks but those ``but``
        publishes: what no other source of the room may send on (RFC 3550 8.2)."""
        used: set[int] = set()
        for track in self.tracks.values():
            if track.publisher is not but:
                used.add(track.ssrc)
                if track.rtx_ssrc is not None:
                    used.add(track.rtx_ssrc)
        return used


class MediaParticipant:
    __slots__ = ("id", "publish", "room", "subscribe")

    def __init__(self, room: MediaRoom, participant: str) -> None:
        self.room = room
        self.id = participant
        self.publish: Peer | None = None
        self.subscribe: Peer | None = None

    @property
    def legs(self) -> tuple[Peer, ...]:
        """Its transports, each once (a single connection is both legs)."""
        if self.publish is not None and self.publish is self.subscribe:
            return (self.publish,)
        return tuple(x for x in (self.publish, self.subscribe) if x is not None)


class Peer:
    """One transport of one participant, and the forwarder's key for it.

    The hot path reads ``addr``, ``forwarder``, ``levels``, ``recording``, ``recv_stats``,
    ``twcc``/``twcc_id``, the SRTP methods (bound once when the transport
    connects, None when it is not) and bumps ``packets_in``/``octets_in``.
    """

    __slots__ = (
        "addr",
        "addresses",
        "direction",
        "ext_ids",
        "forwarder",
        "levels",
        "local",
        "next_mid",
        "octets_in",
        "owners",
        "packets_in",
        "participant",
        "pending_offer",
        "protect",
        "protect_rtcp",
        "recording",
        "recv_stats",
        "reporting",
        "rid_tracks",
        "room",
        "rtcp_in",
        "rtcp_out",
        "rtcp_ssrcs",
        "sections",
        "spent",
        "srtp_errors",
        "ssrcs",
        "tracks",
        "transport",
        "twcc",
        "twcc_id",
        "unprotect",
        "unprotect_rtcp",
        "wire",
    )

    def __init__(
        self,
        room: MediaRoom,
        participant: str,
        direction: Leg,
        transport: PeerTransport,
        local: LocalParameters,
    ) -> None:
        self.addr: Address | None = None
        self.forwarder = room.forwarder
        self.levels: dict[int, int] = {}
        """Publisher's audio SSRC -> its ssrc-audio-level extension id (RFC 6464)."""
        self.recv_stats: dict[int, ReceiveStatistics] = {}
        """Publisher's media SSRC -> its reception statistics (RFC 3550 A.1, A.3, A.8)."""
        self.recording = room.recording
        """The room's recording queue while it is recorded, else None (:mod:`sfu.recording.core`).
        """
        self.twcc: TransportCcRecorder | None = None
        """Set while the worker sends this publisher transport-cc feedback."""
        self.twcc_id = 0
        """The publisher's transport-wide-cc extension id (RFC 8285), with ``twcc``."""
        self.octets_in = 0
        self.packets_in = 0
        self.protect: Callable[[bytes], bytes] | None = None
        self.protect_rtcp: Callable[[bytes], bytes] | None = None
        self.unprotect: Callable[[bytes], bytes] | None = None
        self.unprotect_rtcp: Callable[[bytes], bytes] | None = None
        self.wire: object = None
        """The native fan-out's cache of this leg's SRTP session and address
        (sfu/forward/native.py).
        """
        self.addresses: set[Address] = set()
        self.direction: Leg = direction
        self.ext_ids: dict[str, int] = {}
        self.local = local
        self.next_mid = 0
        self.owners: dict[int, str] | None = None
        """A relay link's leg only: its tracks' SSRCs -> the remote participants (speakers)."""
        self.participant = participant
        self.pending_offer = False
        self.room = room
        self.reporting = False
        """Whether the worker's report scheduler has this leg (from its connection on)."""
        self.rtcp_in = 0
        self.rtcp_out = 0
        self.rtcp_ssrcs: set[int] = set()
        """Sender SSRCs of the peer's SRTCP that authenticated (a few: one per
        receiver on some clients): how SRTCP from a new address (a NAT
        rebinding) finds its transport."""
        self.sections: list[Section] = []
        self.spent: set[str] = set()
        """A single connection's receiving mids that carried a track: never
        given another (a receiver may not follow a new SSRC; aiortc's does not)."""
        self.ssrcs: set[int] = set()
        self.srtp_errors = 0
        self.tracks: dict[str, Track] = {}
        """Publish side: mid -> track."""
        self.rid_tracks: dict[str, Track] = {}
        """Publish side: mid -> simulcast track with layers whose SSRCs are not known yet."""
        self.transport = transport

    def __repr__(self) -> str:
        return f"<peer {self.room.name}/{self.participant} {self.direction}>"

    @property
    def sends(self) -> bool:
        """Whether the worker forwards tracks to this leg (its ``sections``)."""
        return self.direction != "publish"

    @property
    def receives(self) -> bool:
        """Whether this leg publishes tracks to the worker (its ``tracks``)."""
        return self.direction != "subscribe"


def bind_srtp(record: Peer | Link, srtp: SrtpSession | None) -> None:
    """Bind a keyed session's protect and unprotect calls onto the peer or
    link, where the hot path reads them per packet with no lookup through its
    transport; None unbinds them (not keyed, or gone: the hot path drops).
    The unprotect calls are the native leaf's when it is there
    (:func:`sfu.forward.native.unprotector`)."""
    if srtp is None:
        record.protect = record.protect_rtcp = record.unprotect = record.unprotect_rtcp = None
    else:
        record.protect = srtp.outbound.protect
        record.protect_rtcp = srtp.outbound.protect_rtcp
        record.unprotect = native.unprotector(srtp.inbound)
        record.unprotect_rtcp = native.unprotector(srtp.inbound, rtcp=True)


def keyed(record: Hashable) -> bool:
    """Whether a forwarder's subscriber (a peer, or a relay link's leg) can be
    sent to now: its transport is keyed (the forwarder's ``sendable``)."""
    return isinstance(record, Peer) and record.protect is not None


class RelayRoom:
    """One room's share of a relay link (:mod:`sfu.node.links`): two legs that the
    room's forwarder sees as a subscriber (``egress``: our local tracks the
    peer worker receives, each under a link SSRC) and a publisher
    (``ingress``: the peer's tracks, whose ``tracks`` are keyed by track id)."""

    __slots__ = ("egress", "ingress", "outgoing", "peer_worker", "room", "sent", "subscribed")

    def __init__(
        self,
        room: MediaRoom,
        peer_worker: str,
        egress: Peer,
        ingress: Peer,
        outgoing: dict[int, Peer],
    ) -> None:
        self.room = room
        self.peer_worker = peer_worker
        self.egress = egress
        self.ingress = ingress
        self.outgoing = outgoing
        """The link's own table of the SSRCs it sends -> their egress leg (shared by
        every room on the link): a track that ends leaves it (:mod:`sfu.negotiation.transports`)."""
        self.sent: dict[str, tuple[RelayedTrack, Track]] = {}
        """Track id -> how it goes on the link, and the local track."""
        self.subscribed: set[str] = set()
        """Track ids of ``sent`` the forwarder has a subscription for."""

    @property
    def used(self) -> bool:
        return bool(self.sent or self.ingress.tracks)


class Link:
    """A relay link to one peer worker as the worker keeps it: the core, the
    rooms that use it, and the SSRC tables its datagrams are routed by."""

    __slots__ = (
        "core",
        "forged",
        "incoming",
        "octets_in",
        "outgoing",
        "packets_in",
        "protect",
        "protect_rtcp",
        "rooms",
        "routed",
        "rtcp_in",
        "sent_gone",
        "unknown_ssrc",
        "unprotect",
        "unprotect_rtcp",
    )

    def __init__(self, core: RelayLink) -> None:
        self.core = core
        self.rooms: dict[str, RelayRoom] = {}
        self.incoming: dict[int, Peer] = {}
        """Link SSRCs (media and RTX) the peer sends us -> the room's ingress leg."""
        self.outgoing: dict[int, Peer] = {}
        """Link SSRCs we send the peer -> the room's egress leg (RTCP about them)."""
        self.protect: Callable[[bytes], bytes] | None = None
        self.protect_rtcp: Callable[[bytes], bytes] | None = None
        self.unprotect: Callable[[bytes], bytes] | None = None
        self.unprotect_rtcp: Callable[[bytes], bytes] | None = None
        self.packets_in = 0
        self.octets_in = 0
        self.rtcp_in = 0
        self.routed = 0
        """Packets from the link the forwarders accepted (no duplicates)."""
        self.forged = 0
        """Datagrams from the peer's address that failed SRTP authentication."""
        self.unknown_ssrc = 0
        self.sent_gone = 0
        """Packets sent by subscriptions that ended."""

    @property
    def peer_worker(self) -> str:
        return self.core.peer.worker

    @property
    def used(self) -> bool:
        return any(r.used for r in self.rooms.values())


class LayerInfo:
    """One simulcast layer of a track as the worker measures it (:mod:`sfu.layers.published`)."""

    __slots__ = (
        "active",
        "bitrate",
        "octets",
        "rid",
        "rtx_ssrc",
        "seen",
        "since",
        "ssrc",
        "wanted_at",
    )

    def __init__(self, rid: str, now: float) -> None:
        self.rid = rid
        self.since = now
        """When it was offered (its track published)."""
        self.ssrc = 0
        """0 until learnt from the RID header extension."""
        self.rtx_ssrc: int | None = None
        self.bitrate = 0.0
        """Measured bits per second (smoothed), 0 before any."""
        self.octets = 0
        self.seen = float("-inf")
        """When its last packet arrived, as the last layers tick read it."""
        self.wanted_at = now
        """Dynacast: when some subscriber last wanted it."""
        self.active = True
        """Dynacast: whether the publisher was last told to send it."""


class Track:
    __slots__ = (
        "codec",
        "extensions",
        "info",
        "layers",
        "live",
        "measured",
        "publisher",
        "red",
        "rtx",
        "rtx_ssrc",
        "ssrc",
    )

    def __init__(
        self,
        info: TrackInfo,
        publisher: Peer,
        ssrc: int,
        rtx_ssrc: int | None,
        codec: Codec,
        rtx: Codec | None,
        extensions: dict[str, int],
    ) -> None:
        self.info = info
        self.publisher = publisher
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.codec = codec
        self.rtx = rtx
        self.extensions = extensions
        self.live = True
        self.layers: list[LayerInfo] = []
        """A simulcast track's layers, lowest first (``ssrc`` is then the
        forwarder's group id, not an SSRC on the wire)."""
        self.measured: LayerInfo | None = None
        """A single-layer video track's measured bitrate (:mod:`sfu.layers.published`)."""
        self.red: Codec | None = None
        """Its Opus RED (RFC 2198) as the publisher sends it, if negotiated."""


class Section:
    """One m= section of a subscribe transport: the track it carries as the subscriber sees it.

    A section whose track ended is *stopped* (port 0, RFC 3264 section 8.2),
    except the first one, which is *parked* instead: it carries the BUNDLE tag
    (RFC 8843 section 7.2), and rejecting it would move the BUNDLE transport
    to another m= section (section 7.5.3), which Chromium does by closing the
    DTLS association and starting a new one. A parked section stays in the
    BUNDLE group with its port, ``a=inactive``, no msid and no SSRC.
    """

    __slots__ = (
        "forwarded",
        "negotiated",
        "parked",
        "pt_map",
        "rtx_map",
        "sub_extensions",
        "subscribed",
        "track",
        "use_rtx",
    )

    def __init__(self, track: Track, forwarded: ForwardedTrack, pt_map: dict[int, int]) -> None:
        self.track = track
        self.forwarded = forwarded
        self.pt_map = pt_map
        """Publisher payload type -> the subscriber's (media only; RTX is the forwarder's)."""
        self.rtx_map: dict[int, int] = {}
        self.sub_extensions: dict[str, int] = {}
        self.negotiated = False
        self.parked = False
        self.subscribed = False
        self.use_rtx = False

    @property
    def live(self) -> bool:
        """Whether the section carries its track (neither stopped nor parked)."""
        return not self.forwarded.stopped and not self.parked

    def stop(self, first: bool) -> None:
        if first:
            self.parked = True
        else:
            self.forwarded = replace(self.forwarded, stopped=True)


class WorkerTables:
    """What a media worker's parts share: its rooms, its transports and the
    tables a datagram is routed by, the per-worker RTCP cores, and counters.

    :class:`sfu.node.worker.MediaWorker` owns it and hands the same record to
    its transports (:mod:`sfu.negotiation.transports`), negotiator
    (:mod:`sfu.negotiation.negotiator`), relay links (:mod:`sfu.node.links`)
    and layers (:mod:`sfu.layers.choice`); each changes the tables, none holds
    another copy of them.
    """

    __slots__ = (
        "bandwidth",
        "by_addr",
        "by_ufrag",
        "counters",
        "paths",
        "peers",
        "reports",
        "rooms",
        "timer_failures",
        "totals",
    )

    def __init__(self, reports: ReportScheduler, bandwidth: BandwidthFeedback) -> None:
        self.rooms: dict[str, MediaRoom] = {}
        self.peers: set[Peer] = set()
        """Every participant transport (not relay links' legs)."""
        self.by_addr: dict[Address, Peer] = {}
        """Addresses some transport validated with an ICE check -> its peer."""
        self.by_ufrag: dict[str, Peer] = {}
        """Local ICE ufrags (and, during a restart, the one before) -> their peer."""
        self.reports = reports
        """SR/RR/SDES of every leg (RFC 3550 6.4)."""
        self.bandwidth = bandwidth
        """transport-cc or REMB to every publisher transport that negotiated one."""
        self.counters: Counter[str] = Counter()
        """Datagrams dropped by the worker itself, by reason (metrics: ``sfu_dropped_total``)."""
        self.paths: Counter[str] = Counter()
        """Path changes of peer transports, by event (metrics: ``sfu_path_changes_total``)."""
        self.totals: Counter[str] = Counter()
        """Forwarder counters of rooms that are gone, so worker totals never go down."""
        self.timer_failures = 0
        """RTCP timer rounds that raised (metrics: ``sfu_timer_rounds_failed``)."""
