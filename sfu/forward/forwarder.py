"""The SFU's forwarding core: routing table, per-packet fan-out and RTP repair.

Sans-I/O (STYLE.md): nothing here touches a socket or the clock. The worker's
adapter unprotects a publisher's SRTP packet once, hands the plain RTP to
:meth:`Forwarder.route` with ``now``, and protects and sends what comes back,
one packet per subscriber. RTCP the core wants sent (NACKs and keyframe
requests to publishers) is drained from :meth:`Forwarder.rtcp_to_send`, and
:meth:`Forwarder.get_timer` / :meth:`Forwarder.handle_timer` drive NACK
retries and throttled keyframe requests (aioquic's shape).

The table: a publisher's track is keyed by its SSRC; each track has a list of
subscriptions, one per subscriber that receives it. A subscription carries what
that subscriber's leg negotiated: its outgoing SSRC, a payload type map, the
header extension ids (Chromium and Firefox number RFC 8285 extensions
differently, so ids are rewritten per subscriber), an
:class:`rtc.rtp.RtpRewriter` that keeps sequence numbers and timestamps
continuous across pauses, RTX (RFC 4588) if negotiated, and pause state. The
transport-wide sequence counter (draft-holmer-rmcat-transport-wide-cc-
extensions-01) belongs to the subscriber, not the subscription: one counter
per transport, which BUNDLE makes one per subscriber.

The hot path (:meth:`Forwarder.route_view`) builds no object per packet beyond
the bytes it emits: one working ``bytearray`` per incoming packet is rewritten
in place for each subscriber in turn (mediasoup's "rewrite, emit, reuse":
:func:`sfu.forward.fanout.fan_out`, or the native leaf) and each subscriber
gets one ``bytes`` copy of it, which is what SRTP protect takes. The packet
comes parsed: the worker reads its header and extensions once, into an
:class:`~rtc.rtp.view.RtpView` it hands to :meth:`Forwarder.route_view`, and
nothing after reads them again (:meth:`Forwarder.route_into` parses bytes
into the forwarder's own view first).

What the core does on the way:

- drops duplicates and packets too late for the history, and keeps every
  packet in a per-track :class:`~sfu.forward.history.PacketHistory`;
- sees upstream gaps and asks the publisher for them (generic NACK, RFC 4585
  section 6.2.1) with a retry limit; packets repaired by the publisher's RTX
  stream (RFC 4588 section 4) are unwrapped and forwarded like late originals;
- holds a new (or resumed) video subscriber until a keyframe starts (VP8,
  RFC 7741 section 4.3; H.264, RFC 6184 section 5) and asks the publisher for
  one (PLI, RFC 4585 section 6.3.1, or FIR, RFC 5104 section 4.3.1), at most
  once per ``keyframe_interval`` per track, coalescing requests;
- answers a subscriber's NACK from the history, RTX-wrapped when negotiated.

The repair, both ways, is its :class:`~sfu.forward.repair.Repair`'s; the
forwarder's RTCP calls hand it on.

Malformed packets are counted in :attr:`Forwarder.stats` and dropped; the
routing calls raise nothing. Calls that change the table raise
:class:`~sfu.errors.SfuStateError` when asked for a track or subscription that
does not exist (or already does).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, MutableSequence
from typing import Literal

from rtc import red
from rtc.errors import RtpParseError
from rtc.rtcp.compound import RtcpPacket
from rtc.rtp.view import RtpView
from rtc.sdp.attributes import ABS_SEND_TIME, TRANSPORT_CC
from sfu.errors import SfuStateError
from sfu.forward.fanout import NativeRed, Routed, Steady, fan_out
from sfu.forward.groups import SimulcastGroups
from sfu.forward.history import DEFAULT_CAPACITY, DEFAULT_MAX_AGE, PacketHistory
from sfu.forward.keyframes import vp8_size
from sfu.forward.repair import Repair, padding_probe
from sfu.forward.simulcast import Vp8Rewriter
from sfu.forward.table import (
    ForwarderStats,
    SimulcastGroup,
    SourceStream,
    SubscriberTransport,
    Subscription,
)

__all__ = ["Forwarder"]

Buffer = bytes | bytearray | memoryview
Key = Hashable


class Forwarder:
    """Routing table and fan-out of one worker's RTP (RFC 3550 section 7.1 translator).

    Keys for publishers and subscribers are whatever the adapter uses for a
    peer (hashable). Times are seconds on any monotonic clock the adapter
    chooses.

    ``feedback_ssrc``, ``keyframe_interval``, ``keyframe_retry``,
    ``nack_delay``, ``nack_interval`` and ``nack_retries`` are its
    :class:`~sfu.forward.repair.Repair`'s (the adapter may set
    ``nack_interval`` from RTCP's RTT).
    ``red_depth``: redundant frames per RED packet (RFC 2198) for subscribers
    that negotiated RED: a publisher's packet that carries fewer (Chromium
    sends one) gets the frames of the packet before it too, up to this many
    (LiveKit sends two), so a subscriber's downlink may lose two packets in
    a row and still play every frame. 1 sends what the publisher sent.
    """

    def __init__(
        self,
        *,
        feedback_ssrc: int = 1,
        history_size: int = DEFAULT_CAPACITY,
        history_age: float = DEFAULT_MAX_AGE,
        keyframe_interval: float = 0.5,
        keyframe_retry: float = 1.0,
        nack_delay: float = 0.01,
        nack_interval: float = 0.1,
        nack_retries: int = 5,
        red_depth: int = 2,
        red_leaf: NativeRed | None = None,
        sendable: Callable[[Key], bool] | None = None,
    ) -> None:
        self.history_size = history_size
        self.history_age = history_age
        self.red_depth = red_depth
        self.stats = ForwarderStats()
        # route_into's parse of a packet handed in as bytes (the worker
        # hands route_view the one it made where the packet arrived).
        self._view = RtpView()
        self._tracks: dict[int, SourceStream] = {}
        self._rtx_tracks: dict[int, SourceStream] = {}
        self._transports: dict[Key, SubscriberTransport] = {}
        # Interned extension-id tables (at most one per distinct mapping).
        self._ext_tables: dict[bytes, bytes] = {}
        self._groups: dict[int, SimulcastGroup] = {}
        self.red_leaf: NativeRed | None = red_leaf
        """RED's per-packet steps in native code, if the adapter has them."""
        self.sendable = sendable
        """Whether a subscriber can be sent to now (None: always). One that
        cannot gets no copy, and its subscriptions stand still until it can."""
        self.switch_times: deque[float] = deque(maxlen=4096)
        """Seconds from each layer switch's decision to the new layer's first packet."""
        self.repair = Repair(
            self._tracks,
            self._groups,
            self._transports,
            self.stats,
            feedback_ssrc=feedback_ssrc,
            keyframe_interval=keyframe_interval,
            keyframe_retry=keyframe_retry,
            nack_delay=nack_delay,
            nack_interval=nack_interval,
            nack_retries=nack_retries,
        )
        """RTP repair: NACKs and keyframe requests upstream, answers to subscribers' NACKs."""
        self.simulcast = SimulcastGroups(
            self._tracks,
            self._rtx_tracks,
            self._groups,
            self.switch_times,
            history_age,
            self.add_track,
            self.repair.request_keyframe,
        )
        """Simulcast groups: add them and their layers, and choose a subscriber's layer."""

    # -- the table --------------------------------------------------------------

    def add_track(
        self,
        publisher: Key,
        ssrc: int,
        *,
        kind: Literal["audio", "video"],
        codec: str,
        clock_rate: int,
        rtx_ssrc: int | None = None,
        rtx_payload_types: Mapping[int, int] | None = None,
        extensions: Mapping[str, int] | None = None,
        nack: bool | None = None,
        fir: bool = False,
        red_payload_type: int | None = None,
    ) -> SourceStream:
        """Register a publisher's track by its media SSRC (RFC 3550 section 8).

        ``codec`` names the encoding (``"vp8"``, ``"h264"``, ``"opus"``); video
        in a codec without a keyframe detector is forwarded from any packet.
        ``rtx_payload_types`` maps the publisher's RTX payload types to the
        media payload types they repair (``apt``, RFC 4588 section 8.6).
        ``extensions`` maps URIs to the publisher's extension ids (RFC 8285).
        ``nack``: whether to NACK upstream gaps (default: video only, as
        browsers negotiate ``nack`` for video only); ``fir`` asks for
        keyframes with FIR instead of PLI. ``red_payload_type``: the
        publisher's RED payload type (RFC 2198, audio): a subscription whose
        payload type map lacks it gets each RED packet cut to its primary
        block (see :meth:`route_into`).
        """
        if ssrc in self._tracks or ssrc in self._rtx_tracks:
            raise SfuStateError(f"SSRC {ssrc} is already routed")
        if rtx_ssrc is not None and (rtx_ssrc in self._tracks or rtx_ssrc in self._rtx_tracks):
            raise SfuStateError(f"SSRC {rtx_ssrc} is already routed")
        exts = dict(extensions or {})
        track = SourceStream(
            publisher,
            ssrc,
            kind,
            codec,
            clock_rate,
            rtx_ssrc,
            dict(rtx_payload_types or {}),
            exts,
            kind == "video" if nack is None else nack,
            fir,
            PacketHistory(self.history_size, self.history_age),
        )
        if red_payload_type is not None:
            track.red_pt = red_payload_type
        self._tracks[ssrc] = track
        if rtx_ssrc is not None:
            self._rtx_tracks[rtx_ssrc] = track
        return track

    def remove_track(self, ssrc: int) -> None:
        """Unpublish: forget the track (or simulcast group) and every subscription to it."""
        group = self._groups.pop(ssrc, None)
        if group is not None:
            for layer in group.layers:
                if layer is not None:
                    self.remove_track(layer.ssrc)
            for sub in group.subscriptions:
                sub.transport.by_ssrc.pop(sub.ssrc, None)
            group.subscriptions = []
            group.idle.subscriptions = []
            return
        track = self._tracks.pop(ssrc, None)
        if track is None:
            raise SfuStateError(f"no track with SSRC {ssrc}")
        if track.rtx_ssrc is not None:
            self._rtx_tracks.pop(track.rtx_ssrc, None)
        for sub in track.subscriptions:
            sub.transport.by_ssrc.pop(sub.ssrc, None)
        track.subscriptions = []

    def remove_publisher(self, publisher: Key) -> None:
        """Forget every track of a publisher that left."""
        for gid in [g for g, x in self._groups.items() if x.publisher == publisher]:
            self.remove_track(gid)
        for ssrc in [s for s, t in self._tracks.items() if t.publisher == publisher]:
            self.remove_track(ssrc)

    def track(self, ssrc: int) -> SourceStream:
        """The track with this media SSRC (a group's idle track for its id)."""
        group = self._groups.get(ssrc)
        if group is not None:
            return group.idle
        track = self._tracks.get(ssrc)
        if track is None:
            raise SfuStateError(f"no track with SSRC {ssrc}")
        return track

    @property
    def tracks(self) -> list[SourceStream]:
        """Every published track."""
        return list(self._tracks.values())

    def subscribe(
        self,
        subscriber: Key,
        track_ssrc: int,
        now: float,
        *,
        ssrc: int,
        payload_types: Mapping[int, int] | None = None,
        extensions: Mapping[str, int] | None = None,
        rtx_ssrc: int | None = None,
        rtx_payload_types: Mapping[int, int] | None = None,
    ) -> Subscription:
        """Forward a track to a subscriber under its own SSRC (RFC 3550 section 7.1).

        ``payload_types`` maps the publisher's payload types to the
        subscriber's (identity by default; a payload type not in a given map
        is not forwarded). ``extensions`` maps URIs to the subscriber's
        extension ids (the publisher's ids by default): elements the
        subscriber did not negotiate are blanked to RFC 8285 padding.
        ``rtx_payload_types`` maps the subscriber's media payload types to its
        RTX payload types; with ``rtx_ssrc``, retransmissions go as RTX
        (RFC 4588 section 4). A video subscription waits for a keyframe, and
        one is requested.
        """
        track = self.track(track_ssrc)
        transport = self._transports.get(subscriber)
        if transport is None:
            transport = self._transports[subscriber] = SubscriberTransport(subscriber)
        if ssrc in transport.by_ssrc or (rtx_ssrc is not None and rtx_ssrc in transport.by_ssrc):
            raise SfuStateError(f"subscriber {subscriber!r} already receives SSRC {ssrc}")
        group = self._groups.get(track_ssrc)
        if any(
            s.transport is transport
            for s in (track.subscriptions if group is None else group.subscriptions)
        ):
            raise SfuStateError(f"subscriber {subscriber!r} already receives track {track_ssrc}")
        pub_exts = track.extensions
        ext_table: bytes | None = None
        twcc = track.tcc_id != 0
        abs_time = track.abs_id != 0
        if extensions is not None:
            # Ids the publisher never negotiated are blanked too: they mean
            # nothing we could translate.
            table = bytearray(256)
            for uri, pub_id in pub_exts.items():
                table[pub_id] = extensions.get(uri, 0)
            if any(table[i] != i for i in pub_exts.values()):
                ext_table = self._ext_tables.setdefault(bytes(table), bytes(table))
            twcc = twcc and extensions.get(TRANSPORT_CC, 0) != 0
            abs_time = abs_time and extensions.get(ABS_SEND_TIME, 0) != 0
        sub = Subscription(
            subscriber,
            track,
            transport,
            ssrc,
            None if payload_types is None else dict(payload_types),
            ext_table,
            twcc,
            abs_time,
            rtx_ssrc,
            dict(rtx_payload_types or {}),
        )
        track.subscriptions.append(sub)
        transport.by_ssrc[ssrc] = sub
        group = self._groups.get(track_ssrc)
        if group is not None:
            # Nothing until simulcast.set_layer gives it a layer.
            sub.group = group
            sub.waiting_keyframe = False
            group.subscriptions.append(sub)
            if track.codec == "vp8":
                sub.vp8 = Vp8Rewriter()
            return sub
        if sub.waiting_keyframe:
            if track.is_keyframe is None:
                sub.waiting_keyframe = False
            else:
                track.waiting += 1
                self.repair.request_keyframe(track_ssrc, now)
        return sub

    def unsubscribe(self, subscriber: Key, track_ssrc: int) -> None:
        """Stop forwarding a track to a subscriber."""
        sub = self.subscription_to(subscriber, track_ssrc)
        self._detach(sub)
        sub.transport.by_ssrc.pop(sub.ssrc, None)

    def remove_subscriber(self, subscriber: Key) -> None:
        """Forget a subscriber that left: all its subscriptions and its transport counter."""
        transport = self._transports.pop(subscriber, None)
        if transport is None:
            return
        for sub in list(transport.by_ssrc.values()):
            self._detach(sub)
        transport.by_ssrc.clear()

    def subscription(self, subscriber: Key, ssrc: int) -> Subscription | None:
        """The subscription a subscriber knows by its outgoing SSRC, if any."""
        transport = self._transports.get(subscriber)
        return None if transport is None else transport.by_ssrc.get(ssrc)

    def _detach(self, sub: Subscription) -> None:
        """Take a subscription out of every list of the table."""
        track = sub.track
        track.subscriptions = [s for s in track.subscriptions if s is not sub]
        if sub.waiting_keyframe:
            track.waiting -= 1
        if sub.group is not None:
            self.simulcast.leave(sub)

    def subscription_to(self, subscriber: Key, track_ssrc: int) -> Subscription:
        """The subscription of ``subscriber`` to the track (or simulcast group)
        ``track_ssrc``; :class:`~sfu.errors.SfuStateError` when it has none."""
        group = self._groups.get(track_ssrc)
        subs = self.track(track_ssrc).subscriptions if group is None else group.subscriptions
        for sub in subs:
            if sub.key == subscriber:
                return sub
        raise SfuStateError(f"subscriber {subscriber!r} does not receive track {track_ssrc}")

    def set_paused(self, subscriber: Key, track_ssrc: int, paused: bool, now: float) -> None:
        """Pause or resume one subscription (the subscriber muted it or lacks bandwidth).

        Resuming starts a new run of the rewriter, so the subscriber sees no
        sequence gap, and a video subscription waits for a keyframe.
        """
        sub = self.subscription_to(subscriber, track_ssrc)
        if sub.paused == paused:
            return
        sub.paused = paused
        if not paused:
            self._resume(sub, now)

    def set_red(self, subscriber: Key, track_ssrc: int, payload_type: int | None) -> None:
        """Send a RED track (RFC 2198) to this subscriber as RED under its
        ``payload_type``, or (None) as the primary Opus block alone though
        it negotiated RED: where redundancy costs the rate it protects.
        Packets go either way from the next one; a receiver decodes every
        payload type it negotiated, so nothing else changes."""
        sub = self.subscription_to(subscriber, track_ssrc)
        red_pt, pt_map = sub.track.red_pt, sub.pt_map
        if red_pt < 0 or pt_map is None:
            return
        if payload_type is None:
            pt_map.pop(red_pt, None)
        else:
            pt_map[red_pt] = payload_type

    def set_muted(self, track_ssrc: int, muted: bool, now: float) -> None:
        """Mute or unmute a publisher's track for everyone; unmuting is a resume for each."""
        group = self._groups.get(track_ssrc)
        track = self.track(track_ssrc)
        if track.muted == muted:
            return
        track.muted = muted
        if group is not None:
            for layer in group.layers:
                if layer is not None:
                    layer.muted = muted
        subs = track.subscriptions if group is None else group.subscriptions
        if not muted:
            for sub in subs:
                if not sub.paused:
                    self._resume(sub, now)

    def _resume(self, sub: Subscription, now: float) -> None:
        sub.rewriter.switch()
        if sub.vp8 is not None:
            sub.vp8.switch()
        track = sub.track
        if sub.group is not None and track is sub.group.idle:
            return
        if track.is_video and track.is_keyframe is not None and not sub.waiting_keyframe:
            sub.waiting_keyframe = True
            track.waiting += 1
            self.repair.request_keyframe(track.ssrc, now)

    # -- the hot path ------------------------------------------------------------

    def route(self, packet: bytes, now: float) -> Routed:
        """``[(subscriber, packet)]``: an incoming plain RTP packet, rewritten per subscriber."""
        out: Routed = []
        self.route_into(packet, now, out)
        return out

    def route_into(
        self, packet: bytes, now: float, out: Routed, steady: bool = False
    ) -> Steady | None:
        """Append ``(subscriber, packet)`` for each subscriber of the packet's track.

        ``packet`` is one unprotected RTP packet from a publisher; each emitted
        packet is ready for the subscriber's SRTP ``protect``. Nothing is
        appended for a malformed, unknown, duplicate or late packet (counted
        in :attr:`stats`). Never raises for any input bytes.

        A RED packet (RFC 2198, the track's ``red_payload_type``) goes as it
        is where the subscription's payload type map has RED, and as its
        primary block where it does not (the RTP header and its extensions
        kept, the padding and the redundant blocks dropped, the primary's
        payload type mapped): a subscriber that did not negotiate RED gets
        plain Opus. A malformed RED packet is dropped for everyone.

        With ``steady`` (the adapter has the native leaf), the copies are not
        made here: what the leaf needs is returned (:data:`Steady`), the
        adapter passes it to ``Fanout.forward``, which makes, protects and
        sends the steady-state ones, then to :meth:`route_rest` for those the
        leaf leaves. None when there is nothing to copy.
        """
        view = self._view
        view.size = 0  # a packet too short for the fixed header leaves the fields as they were
        try:
            view.parse(packet)
        except RtpParseError:
            self.refuse(view)
            return None
        return self.route_view(view, now, out, steady)

    def refuse(self, view: RtpView) -> None:
        """Count a packet whose parse into ``view`` failed: one of an unknown
        SSRC as such (its header says whose it is), any other as malformed."""
        stats = self.stats
        if (
            view.size >= 12
            and view.b0 & 0xC0 == 0x80
            and view.ssrc not in self._tracks
            and view.ssrc not in self._rtx_tracks
        ):
            stats.unknown_ssrc += 1
        else:
            stats.malformed += 1

    def route_view(
        self, view: RtpView, now: float, out: Routed, steady: bool = False
    ) -> Steady | None:
        """:meth:`route_into` for a packet already parsed into ``view``, which
        the forwarder may change (to an RTX packet's original, a RED packet's
        deeper copy) and the :data:`Steady` it returns refers to."""
        stats = self.stats
        track = self._tracks.get(view.ssrc)
        if track is None:
            track = self._rtx_tracks.get(view.ssrc)
            if track is None:
                stats.unknown_ssrc += 1
                return None
            if not self._unwrap_rtx(track, view):
                return None
        packet = view.packet
        seq, ts = view.seq, view.timestamp
        start, end = view.start, view.end
        elements = view.elements

        # Reception: duplicates, lateness and upstream gaps (RFC 3550 A.1's
        # extended sequence number, relative to the highest so far).
        highest = track.highest
        if highest < 0:
            track.highest = seq + 0x10000
        else:
            ext = highest + (((seq - highest + 0x8000) & 0xFFFF) - 0x8000)
            if ext > highest:
                if ext > highest + 1 and track.nack:
                    self.repair.gap(track, highest + 1, ext, now)
                track.highest = ext
            elif highest - ext >= self.history_size:
                stats.late += 1
                return None
            elif track.history.contains(seq):
                stats.duplicate += 1
                return None
            elif track.missing.pop(ext, None) is not None:
                stats.recovered += 1
        pt = view.payload_type
        # RED (RFC 2198): where its primary block starts, for the copies cut to it.
        primary = -1
        if pt == track.red_pt:
            leaf = self.red_leaf
            if leaf is None:
                primary = red.primary(packet, start, end)
            else:
                primary = leaf.red_primary(packet, start, end)
            if primary < 0:
                stats.red_malformed += 1
                return None
        track.history.put(seq, packet, now)
        stats.received += 1

        if track.muted:
            return None
        keyframe = False
        if track.waiting or track.sizing:
            detect = track.is_keyframe
            keyframe = detect is not None and detect(packet, start, end)
            if keyframe:
                track.kf_pending = False
                if track.sizing:
                    size = vp8_size(packet, start, end)
                    if size is not None:
                        track.width, track.height = size
                        track.sizing = False
                if track.pending:
                    self.simulcast.switch_in(track, now)
        subs = track.subscriptions
        if not subs:
            return None

        if primary >= 0 and self.red_depth > 1:
            # Deeper redundancy for the subscribers' downlinks, from the
            # packet before (as it came: the last one is kept at hand).
            previous = track.red_last
            deeper: object = None
            if previous is not None and track.red_last_seq == (seq - 1) & 0xFFFF:
                leaf = self.red_leaf
                p_start, p_end = track.red_last_start, track.red_last_end
                delta = (ts - track.red_last_ts) & 0xFFFFFFFF
                depth = self.red_depth
                if leaf is not None:
                    deeper = leaf.red_deepen(
                        previous, p_start, p_end, delta, packet, start, end, depth
                    )
                if leaf is None or deeper is NotImplemented:
                    deeper = red.deepen(previous, p_start, p_end, delta, packet, start, end, depth)
            track.red_last = packet
            track.red_last_seq = seq
            track.red_last_ts = ts
            track.red_last_start = start
            track.red_last_end = end
            if isinstance(deeper, bytes):
                tail = end - (primary & 0xFFFF)
                view.replace_payload(deeper)
                primary = (primary >> 16) << 16 | (view.end - tail)
        abs_value = -1
        tcc_off = abs_off = -1
        if elements:
            tcc_id, abs_id = track.tcc_id, track.abs_id
            header = 2 if view.two_byte else 1
            for hdr, xid, length in elements:
                if xid == tcc_id and length >= 2:
                    tcc_off = hdr + header
                elif xid == abs_id and length == 3:
                    abs_off = hdr + header
            if abs_off >= 0:
                abs_value = int(now * 262144.0) & 0xFFFFFF  # 6.18 fixed point seconds
        if steady:
            # The native leaf (sfu/forward/_fanout.c) makes every copy in the steady
            # state (a simulcast layer's PictureID and TL0PICIDX too); what
            # needs more (a keyframe wait, a run to start, RTP's or VP8's)
            # it leaves in ``rest`` for route_rest.
            return (
                subs, view, now, [], tcc_off, abs_off, abs_value, primary, stats, track, keyframe
            )  # fmt: skip
        fan_out(
            subs, track, view, now, keyframe, tcc_off, abs_off, abs_value, primary, stats, out,
            self.sendable,
        )  # fmt: skip
        return None

    def route_rest(self, steady: Steady, out: Routed) -> None:
        """Append ``(subscriber, packet)`` for the subscriptions the native leaf
        left in ``steady``'s rest (a keyframe wait, a run's first packet)."""
        _, view, now, rest, tcc_off, abs_off, abs_value, primary, stats, track, keyframe = steady
        fan_out(
            rest, track, view, now, keyframe, tcc_off, abs_off, abs_value, primary, stats, out,
            self.sendable,
        )  # fmt: skip

    def _unwrap_rtx(self, track: SourceStream, view: RtpView) -> bool:
        """Make ``view`` the original packet inside a publisher's RTX packet
        (RFC 4588 section 4); False when there is none to forward."""
        apt = track.rtx_apt.get(view.payload_type)
        if apt is None:
            self.stats.malformed += 1
            return False
        if not view.unwrap_rtx(apt, track.ssrc):
            # An RTX packet without a payload is a bandwidth probe, not a repair.
            self.stats.rtx_padding += 1
            return False
        return True

    # -- RTP repair (sfu.forward.repair) ---------------------------------------------

    @property
    def nack_interval(self) -> float:
        """Seconds between NACKs of one missing packet (:attr:`Repair.nack_interval`)."""
        return self.repair.nack_interval

    @nack_interval.setter
    def nack_interval(self, seconds: float) -> None:
        self.repair.nack_interval = seconds

    def request_keyframe(self, track_ssrc: int, now: float) -> None:
        """Ask the publisher for a keyframe, throttled (:meth:`Repair.request_keyframe`)."""
        self.repair.request_keyframe(track_ssrc, now)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next wants to run, or ``None``."""
        return self.repair.get_timer()

    def handle_timer(self, now: float) -> None:
        """Send due NACK retries and coalesced or retried keyframe requests."""
        self.repair.handle_timer(now)

    def rtcp_to_send(self) -> list[tuple[Key, RtcpPacket]]:
        """``[(publisher, packet)]`` of feedback to send upstream, drained."""
        return self.repair.rtcp_to_send()

    def handle_nack(
        self, subscriber: Key, media_ssrc: int, lost: Iterable[int], now: float
    ) -> Routed:
        """Answer a subscriber's generic NACK from the history (:meth:`Repair.handle_nack`)."""
        return self.repair.handle_nack(subscriber, media_ssrc, lost, now)

    def handle_keyframe_request(self, subscriber: Key, media_ssrc: int, now: float) -> None:
        """A subscriber's PLI or FIR for its SSRC: forwarded upstream, throttled."""
        self.repair.handle_keyframe_request(subscriber, media_ssrc, now)

    # -- a subscriber transport's probes ------------------------------------------

    def set_send_rings(
        self,
        subscriber: Key,
        sent_at: MutableSequence[float] | None,
        sizes: MutableSequence[int] | None,
    ) -> None:
        """Record each packet sent to ``subscriber`` with a transport sequence
        number into these rings (:meth:`sfu.feedback.estimator.SendSideEstimator.rings`)."""
        transport = self._transports.get(subscriber)
        if transport is None:
            transport = self._transports[subscriber] = SubscriberTransport(subscriber)
        transport.sent_at, transport.sizes = sent_at, sizes

    def padding(self, subscriber: Key, size: int, now: float) -> tuple[bytes, int] | None:
        """A padding-only RTX packet of about ``size`` octets for a bandwidth
        probe, with its transport-wide sequence number
        (:func:`sfu.forward.repair.padding_probe`)."""
        transport = self._transports.get(subscriber)
        return None if transport is None else padding_probe(transport, size, now)
