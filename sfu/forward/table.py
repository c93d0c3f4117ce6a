"""The forwarder's routing table: its records and counters (see :mod:`sfu.forward.forwarder`).

Plain classes with ``__slots__``: the hot path reads and bumps their
attributes per packet. :class:`SourceStream` is one publisher SSRC with its history
and repair state, :class:`Subscription` one subscriber's view of a track,
:class:`SubscriberTransport` what a subscriber's transport shares (the
transport-wide sequence counter), :class:`SimulcastGroup` a simulcast track's layers;
:func:`remap_extensions` applies a subscription's extension-id table.
"""

from __future__ import annotations

from collections.abc import Hashable, MutableSequence

from rtc.rtp.sequence import RtpRewriter
from rtc.sdp.attributes import ABS_SEND_TIME, TRANSPORT_CC
from sfu.forward.history import PacketHistory
from sfu.forward.keyframes import KEYFRAME_DETECTORS
from sfu.forward.simulcast import Vp8Rewriter

__all__ = [
    "ForwarderStats",
    "SimulcastGroup",
    "SourceStream",
    "SubscriberTransport",
    "Subscription",
    "remap_extensions",
]

Key = Hashable


class ForwarderStats:
    """Counters of one forwarder, for metrics (plain ints: the hot path bumps them)."""

    __slots__ = (
        "duplicate",
        "forwarded",
        "keyframe_requests",
        "late",
        "malformed",
        "nack_gave_up",
        "nack_received",
        "nack_requested",
        "nack_unanswered",
        "received",
        "recovered",
        "red_malformed",
        "red_stripped",
        "retransmitted",
        "rtx_padding",
        "unknown_ssrc",
        "waiting_keyframe",
    )

    def __init__(self) -> None:
        self.received = 0
        """RTP packets from publishers accepted for forwarding."""
        self.forwarded = 0
        """Packets emitted to subscribers (not counting retransmissions)."""
        self.malformed = 0
        self.unknown_ssrc = 0
        self.duplicate = 0
        self.late = 0
        """Packets older than the history: too late to be useful."""
        self.recovered = 0
        """Packets that filled an upstream gap."""
        self.rtx_padding = 0
        """RTX packets with no payload (bandwidth probes)."""
        self.waiting_keyframe = 0
        """Packets held back from subscribers waiting for a keyframe."""
        self.keyframe_requests = 0
        self.nack_requested = 0
        """Sequence numbers asked of publishers (retries included)."""
        self.nack_gave_up = 0
        self.nack_received = 0
        """Sequence numbers subscribers asked for."""
        self.retransmitted = 0
        self.nack_unanswered = 0
        self.red_stripped = 0
        """Copies of RED packets (RFC 2198) cut to their primary block for a
        subscriber that did not negotiate RED (retransmissions included)."""
        self.red_malformed = 0
        """RED packets from publishers dropped as malformed."""

    def as_dict(self) -> dict[str, int]:
        """Every counter by name."""
        return {name: getattr(self, name) for name in self.__slots__}


class SubscriberTransport:
    """Per-subscriber state shared by its subscriptions: the transport-wide counter."""

    __slots__ = ("by_ssrc", "key", "sent_at", "sizes", "twcc_seq")

    def __init__(self, key: Key) -> None:
        self.key = key
        self.twcc_seq = 0
        self.by_ssrc: dict[int, Subscription] = {}
        # A send-side estimator's rings (sfu.feedback.estimator.SendSideEstimator.rings):
        # each packet's send time and size by its transport sequence number
        # modulo their length, a power of two.
        self.sent_at: MutableSequence[float] | None = None
        self.sizes: MutableSequence[int] | None = None


class Subscription:
    """One subscriber's view of one track: what its leg negotiated and where it stands.

    Read-only for callers except through :class:`Forwarder`; ``packets_sent``,
    ``octets_sent`` and ``rewriter.highest`` feed sender reports (RFC 3550 6.4.1).
    """

    __slots__ = (
        "abs_send_time",
        "ext_table",
        "group",
        "key",
        "octets_sent",
        "packets_sent",
        "padded",
        "paused",
        "pending_on",
        "pt_map",
        "retransmitted",
        "rewriter",
        "rtx_pt",
        "rtx_seq",
        "rtx_ssrc",
        "sent_from",
        "ssrc",
        "switch_started",
        "track",
        "transport",
        "twcc",
        "unanswered",
        "vp8",
        "waiting_keyframe",
    )

    def __init__(
        self,
        key: Key,
        track: SourceStream,
        transport: SubscriberTransport,
        ssrc: int,
        pt_map: dict[int, int] | None,
        ext_table: bytes | None,
        twcc: bool,
        abs_send_time: bool,
        rtx_ssrc: int | None,
        rtx_pt: dict[int, int],
    ) -> None:
        self.key = key
        self.track = track
        self.transport = transport
        self.ssrc = ssrc
        self.pt_map = pt_map
        self.ext_table = ext_table
        self.twcc = twcc
        self.abs_send_time = abs_send_time
        self.rtx_ssrc = rtx_ssrc
        self.rtx_pt = rtx_pt
        self.rtx_seq = 0
        self.rewriter = RtpRewriter(track.clock_rate)
        # The track the rewriter's latest run forwards, whose history answers
        # the run's NACKs: a simulcast subscription's ``track`` is the new
        # layer as soon as it moves, while the old run answers until the new
        # layer's keyframe starts the next (RtpRewriter.original_sequence).
        self.sent_from = track
        self.paused = False
        self.waiting_keyframe = track.is_video
        self.packets_sent = 0
        self.octets_sent = 0
        self.retransmitted = 0
        # Padding-only probes sent on this subscription's RTX stream
        # (sfu.forward.repair.padding_probe): not media, but packets the
        # subscriber receives on it.
        self.padded = 0
        self.unanswered = 0
        # Simulcast (see Group): the group, the layer waiting to take over
        # at its next keyframe, when that switch was decided, and the VP8
        # PictureID/TL0PICIDX rewriter that keeps the layers one stream.
        self.group: SimulcastGroup | None = None
        self.pending_on: SourceStream | None = None
        self.switch_started = 0.0
        self.vp8: Vp8Rewriter | None = None

    @property
    def layer(self) -> int | None:
        """The simulcast layer forwarded now (None: none, or not simulcast)."""
        return self.track.layer if self.group is not None else None

    @property
    def target(self) -> int | None:
        """The simulcast layer this subscription is switching to or on."""
        if self.pending_on is not None:
            return self.pending_on.layer
        return self.layer


class SourceStream:
    """A publisher's track (one media SSRC) with its history and upstream repair state."""

    __slots__ = (
        "abs_id",
        "clock_rate",
        "codec",
        "extensions",
        "fir",
        "fir_seq",
        "group",
        "height",
        "highest",
        "history",
        "is_keyframe",
        "is_video",
        "kf_last",
        "kf_pending",
        "layer",
        "missing",
        "muted",
        "nack",
        "pending",
        "publisher",
        "red_last",
        "red_last_end",
        "red_last_seq",
        "red_last_start",
        "red_last_ts",
        "red_pt",
        "rtx_apt",
        "rtx_ssrc",
        "sizing",
        "ssrc",
        "subscriptions",
        "tcc_id",
        "waiting",
        "width",
    )

    def __init__(
        self,
        publisher: Key,
        ssrc: int,
        kind: str,
        codec: str,
        clock_rate: int,
        rtx_ssrc: int | None,
        rtx_apt: dict[int, int],
        extensions: dict[str, int],
        nack: bool,
        fir: bool,
        history: PacketHistory,
    ) -> None:
        self.publisher = publisher
        self.ssrc = ssrc
        self.is_video = kind == "video"
        self.codec = codec.lower()
        self.is_keyframe = KEYFRAME_DETECTORS.get(self.codec)
        self.clock_rate = clock_rate
        self.rtx_ssrc = rtx_ssrc
        self.rtx_apt = rtx_apt
        self.extensions = extensions
        self.tcc_id = extensions.get(TRANSPORT_CC, 0)
        self.abs_id = extensions.get(ABS_SEND_TIME, 0)
        self.nack = nack
        self.fir = fir
        self.fir_seq = 0
        self.history = history
        self.subscriptions: list[Subscription] = []
        self.muted = False
        # Subscriptions waiting for a keyframe: the detector runs only while > 0.
        self.waiting = 0
        # Extended highest sequence number received, -1 before the first.
        self.highest = -1
        # Extended sequence number -> [requests sent, next request due].
        self.missing: dict[int, list[float]] = {}
        self.kf_last = float("-inf")
        self.kf_pending = False
        # Simulcast: the group and layer index, subscriptions that switch to
        # this layer at its next keyframe (counted in ``waiting`` too), and
        # the picture size its keyframes announce (``sizing`` until known).
        self.group: SimulcastGroup | None = None
        self.layer: int | None = None
        self.pending: list[Subscription] = []
        self.width = 0
        self.height = 0
        self.sizing = False
        # The publisher's RED payload type (RFC 2198), -1 without RED: its
        # packets go as they are to subscriptions whose map has it, cut to
        # their primary block for the others (sfu.forward.forwarder).
        self.red_pt = -1
        # The last RED packet, its sequence number and timestamp and where
        # its payload is, for the next one's deeper redundancy (sfu.forward.forwarder).
        self.red_last: bytes | None = None
        self.red_last_seq = -1
        self.red_last_ts = 0
        self.red_last_start = 0
        self.red_last_end = 0


class SimulcastGroup:
    """A simulcast track (RFC 8853): one picture sent as several layers, each
    its own forwarder :class:`SourceStream` (own SSRC, history, NACK and keyframe
    requests), lowest first; a layer is None until its SSRC is known (learnt
    from the RID header extension of its first packets, RFC 8852).

    A subscription to a group is fed by one layer at a time, on one outgoing
    SSRC. :meth:`SimulcastGroups.set_layer` moves it: while nothing is forwarded
    yet it moves at once and waits for a keyframe there; otherwise it keeps
    the old layer until the new one's next keyframe (which is requested),
    then cuts over in the hot path: the RTP rewriter starts a new run
    (sequence numbers and timestamps continue) and the VP8 rewriter keeps
    PictureID and TL0PICIDX continuous. A subscription with no layer sits on
    ``idle``, a track that never receives a packet.
    """

    __slots__ = ("id", "idle", "layers", "publisher", "subscriptions")

    def __init__(self, gid: int, publisher: Key, count: int, idle: SourceStream) -> None:
        self.id = gid
        self.publisher = publisher
        self.layers: list[SourceStream | None] = [None] * count
        self.idle = idle
        self.subscriptions: list[Subscription] = []

    @property
    def muted(self) -> bool:
        return self.idle.muted


def remap_extensions(
    buf: bytearray, elements: list[tuple[int, int, int]], table: bytes, two_byte: bool
) -> None:
    """Rewrite extension ids per ``table`` in place; 0 blanks to padding (RFC 8285 4.2)."""
    for hdr, xid, length in elements:
        new = table[xid]
        if new == xid:
            continue
        if two_byte:
            if new:
                buf[hdr] = new
                continue
            buf[hdr : hdr + 2 + length] = bytes(2 + length)
        else:
            if 0 < new < 15:
                buf[hdr] = (new << 4) | (length - 1)
                continue
            buf[hdr : hdr + 1 + length] = bytes(1 + length)
