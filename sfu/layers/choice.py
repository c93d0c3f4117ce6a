"""What each subscriber gets: simulcast layers, bandwidth, dynacast and connection quality.

The worker's side of simulcast, on top of the pure cores
(:mod:`sfu.forward.simulcast`, :mod:`sfu.feedback.estimator`, :mod:`sfu.feedback.quality`) and the
forwarder's layer switching (:mod:`sfu.forward.groups`):

* **Learning layers.** A browser sends RFC 8853 simulcast without
  ``a=ssrc``: each layer's first packets carry the MID and RID header
  extensions (RTX: the repaired RID, RFC 8852). A packet from an SSRC the
  worker does not know, on a publisher with such layers still unknown, is
  looked at in the slow branch (:meth:`Layers.learn_ssrc`) and its
  SSRC becomes that layer's.
* **Estimation.** Each subscriber transport that negotiated transport-cc
  has a :class:`~sfu.feedback.estimator.SendSideEstimator`: the forwarder records
  each packet's send time and size into its rings, the subscriber's
  feedback feeds it. Without transport-cc the subscriber's REMB is the
  estimate; without either the bandwidth counts as unlimited. When the
  allocation wants more than the estimate, the estimator asks for a probe,
  sent as padding-only RTX packets; on a policed path, where the media alone
  never shows that more would pass, it asks for padding up to the
  allocation's next step instead, paced every ``PADDING_INTERVAL``.
* **Allocation.** Every ``TICK`` seconds, per subscriber:
  :func:`sfu.forward.simulcast.allocate` with the estimate, each video track's layers
  (sizes from keyframes, bitrates measured from what arrives; not a layer its
  publisher stopped, silent for ``STALE`` or ``QUIET`` behind another layer of
  the track), the subscriber's views (:meth:`set_view`) and the active
  speaker. The result sets each subscription's layer or pauses it
  (``TrackPaused`` events: ``hidden``, ``bandwidth``, ``audio_only``, and
  ``off`` for a video its publisher sends nothing of: muted, or no layer
  arrived for ``STALE`` seconds, as when a camera is turned off; never counted
  as a weak link). A downgrade forced by the estimate holds the subscriber's
  upgrades back for ``HOLD`` seconds (mediasoup's 10 s), so a link at its
  limit does not flap.
* **Dynacast.** A simulcast layer no subscriber or relay link has wanted for
  ``DYNACAST_DELAY`` seconds is dropped from the track's ``LayersWanted``
  event (signalling tells the publisher to stop that encoding); wanted again,
  it is added back at the next tick. The lowest layer is always wanted, so a
  new subscriber starts at once.
* **Quality.** Every second, per participant, a
  :class:`~sfu.feedback.quality.QualityTracker` fed by both legs; ``ConnectionQuality``
  events on change.

A sans-I/O core like :mod:`sfu.negotiation.transports`, held by the worker's
transports core: the worker hands it the subscribers' views and bandwidth
feedback through ``receive`` (:mod:`sfu.rooms.inputs`), calls :meth:`Layers.tick`
from its RTCP timer (:meth:`Layers.due` says when) and carries out what it queued
(:mod:`sfu.rooms.actions`): events, RTCP to flush, the padding and probes
:meth:`Layers._send_padding` builds, already protected.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Literal

from rtc.errors import RtpParseError
from rtc.machine import earliest
from rtc.rtcp import TransportCc
from rtc.rtp import extension_elements
from rtc.sdp import MID, REPAIRED_RTP_STREAM_ID, RTP_STREAM_ID, TRANSPORT_CC
from sfu.control.messages import ConnectionQuality, LayersWanted, TrackPaused, View
from sfu.errors import SfuStateError
from sfu.feedback.estimator import RAMP_REACH, SendSideEstimator
from sfu.feedback.quality import QualityTracker, Sample
from sfu.feedback.reports import ReceiveStatistics
from sfu.forward.simulcast import AUDIO_BITRATE, Layer, Wanted, allocate
from sfu.forward.table import Group, Subscription
from sfu.rooms import call_samples
from sfu.rooms.actions import ArmRtcp, Emit, FlushRtcp, Send
from sfu.rooms.inputs import Core, SetAudioOnly, SetView, SubscriberFeedback
from sfu.rooms.records import LayerInfo, Peer, Room, Section, Track, WorkerTables

__all__ = ["DYNACAST_DELAY", "HOLD", "QUIET", "STALE", "TICK", "LayerSource", "Layers"]

#: Seconds between allocations.
TICK = 0.5
#: Seconds between sends of a ramp's padding (paced: a policer with a small
#: bucket drops a tick's worth sent at once).
PADDING_INTERVAL = 0.05
#: Seconds a congestion downgrade holds back a subscriber's upgrades.
HOLD = 10.0
#: Seconds the estimate must stay below a video's lowest layer before that
#: video is paused (shorter dips keep the lowest layer).
PAUSE_AFTER = 2.0
#: Seconds after a bandwidth pause (or the last congestion) before a paused
#: video comes back on its lowest layer, when the estimate carries it.
RESUME_AFTER = 3.0
#: Seconds a layer nobody wants keeps being sent.
DYNACAST_DELAY = 5.0
#: A layer that sent nothing for this long is not offered (the publisher stopped it).
STALE = 2.0
#: A layer whose last packet came this long before another layer's of its
#: track is not offered either: its publisher stopped that layer alone (a
#: browser short of CPU or uplink drops its top layers first), and a
#: subscriber on it sees a frozen picture until it moves down. Compared by
#: each layer's last packet's arrival (``_measure``), not by the ticks that
#: read them: every layer of a sending track carries a packet each frame, so
#: half a second behind is fifteen frames at 30 fps, and a subscriber moves
#: within QUIET to QUIET + TICK of the stop.
QUIET = 0.5
#: Where a subscriber's estimate starts (bits per second).
START_ESTIMATE = 1_000_000
#: What a single-layer video counts for when sharing a subscriber's bandwidth.
SINGLE_LAYER_COST = 200_000
#: A measured layer bitrate counts this much over the average (bursts, keyframes).
HEADROOM = 1.1
#: Bytes an audio packet carries besides its payload, as the estimator counts
#: it: the RTP header with its extensions (audio level, transport-cc, time).
AUDIO_HEADER = 28
#: Smoothed loss at which RED goes to a subscriber that negotiated it however
#: short its bandwidth (unless that loss follows the rate: sfu.feedback.estimator),
#: and above which it does not.
RED_LOSS, RED_LOSS_MAX = 0.05, 0.4
#: What RED adds to plain Opus as a subscriber receives it (three frames a
#: packet instead of one; the header is not repeated): this times the plain rate.
RED_EXTRA = 1.5

Reason = Literal["bandwidth", "hidden", "audio_only", "off"]


class _Subscriber:
    """A subscriber transport's allocation state."""

    __slots__ = (
        "audio",
        "downgraded_at",
        "estimator",
        "padded_at",
        "padding",
        "paused",
        "red",
        "remb",
        "short_since",
        "wanted",
    )

    def __init__(self) -> None:
        self.estimator: SendSideEstimator | None = None
        self.remb: int | None = None
        self.paused: dict[str, Reason] = {}
        """Track id -> why it is paused now."""
        self.short_since: dict[str, float] = {}
        """Track id -> since when the estimate has not carried its lowest layer."""
        self.downgraded_at = -math.inf
        self.wanted = 0
        """What the last allocation would have sent with no bandwidth limit."""
        self.audio: dict[int, _Sent] = {}
        """Audio track SSRC -> what its subscription has sent this subscriber."""
        self.red = True
        """Whether audio it negotiated RED for goes as RED (see :func:`_red_next`)."""
        self.padding = 0.0
        """Bits per second of padding its estimator asked for (a ramp)."""
        self.padded_at = 0.0
        """When padding was last sent."""


class _Sent:
    """What one subscription sent, measured tick to tick: bits per second
    with headers, as the subscriber's link carries it (0 before measured)."""

    __slots__ = ("at", "bitrate", "octets", "packets")

    def __init__(self, now: float, octets: int, packets: int) -> None:
        self.at, self.octets, self.packets = now, octets, packets
        self.bitrate = 0.0

    def update(self, now: float, octets: int, packets: int) -> float:
        dt = now - self.at
        if dt >= TICK / 2:
            size = octets - self.octets + (packets - self.packets) * AUDIO_HEADER
            self.bitrate = _smoothed(self.bitrate, size * 8 / dt)
            self.at, self.octets, self.packets = now, octets, packets
        return self.bitrate


class LayerSource:
    """What a sender report reads of its source, for a simulcast subscription:
    the statistics of the layer it forwards now (RFC 3550 6.4.1)."""

    __slots__ = ("clock_rate", "sub", "track")

    def __init__(self, sub: Subscription, track: Track) -> None:
        self.sub = sub
        self.track = track
        self.clock_rate = track.codec.clock_rate

    def rtp_timestamp_at(self, now: float) -> int | None:
        stats = self.track.publisher.recv_stats.get(self.sub.track.ssrc)
        return None if stats is None else stats.rtp_timestamp_at(now)


class _Quality:
    __slots__ = ("expected", "lost", "peak", "rtcp", "sampled", "seen", "tracker")

    def __init__(self, now: float) -> None:
        self.tracker = QualityTracker()
        self.lost = 0
        self.expected = 0
        self.rtcp = -1
        self.seen = now
        self.sampled = -math.inf
        self.peak = 0.0


class Layers(Core):
    """Simulcast layers, estimation, dynacast and quality of a media worker's
    subscribers (see the module docstring), on the worker's shared
    :class:`~sfu.rooms.records.WorkerTables`.

    Its inputs come through ``receive`` (:mod:`sfu.rooms.inputs`: SetView,
    SetAudioOnly, a subscriber's bandwidth feedback), its timer is the tick
    (:meth:`tick`, when :meth:`due` says); the transports core tells it of
    subscriptions and paths by method, and the hot path's slow branch hands
    it a packet from an unknown SSRC (:meth:`learn_ssrc`: no record per RTP
    packet). What it wants done (events, RTCP to flush, padding to send, the
    RTCP timer to re-arm) it queues as :mod:`sfu.rooms.actions` for
    :meth:`take_actions`.
    """

    def __init__(self, tables: WorkerTables) -> None:
        self.tables = tables
        self.subscribers: dict[Peer, _Subscriber] = {}
        """A subscriber transport's allocation state, from its first allocation."""
        self._qualities: dict[tuple[str, str], _Quality] = {}
        self._layers_when: float | None = None
        self._padding_when: float | None = None
        self._ticks = 0
        super().__init__()

    # -- what the transports core tells it -----------------------------------------------

    def subscribed(self, peer: Peer, now: float) -> None:
        """A subscriber transport's subscriptions were handed to the forwarder."""
        # Simulcast subscriptions have no layer until allocated: do it now.
        self.allocate(peer.room, peer.participant, now)
        self._layers_start(now)

    def left(self, room: Room, participant: str) -> None:
        """A participant leaves the room: forget its views and allocation."""
        p = room.participants.get(participant)
        if p is not None and p.subscribe is not None:
            self.forget(p.subscribe)
        for key in [k for k in room.views if k[0] == participant]:
            del room.views[key]
        room.audio_only.discard(participant)
        self._qualities.pop((room.name, participant), None)

    # -- inputs (sfu.rooms.inputs) ---------------------------------------------------------------

    def _handle_set_view(self, command: SetView, now: float) -> None:
        """How ``participant`` shows ``track_id`` (see
        :class:`sfu.control.messages.MediaControl`)."""
        r = self.tables.rooms.get(command.room)
        if r is None:
            raise SfuStateError(f"no room {command.room!r}")
        view = command.view
        width, height = max(0, view.width), max(0, view.height)
        r.views[(command.participant, command.track_id)] = View(width, height, view.visible)
        self.allocate(r, command.participant, now)

    def _handle_set_audio_only(self, command: SetAudioOnly, now: float) -> None:
        """``participant`` receives no video while ``enabled``."""
        r = self.tables.rooms.get(command.room)
        if r is None:
            raise SfuStateError(f"no room {command.room!r}")
        if command.enabled:
            r.audio_only.add(command.participant)
        else:
            r.audio_only.discard(command.participant)
        self.allocate(r, command.participant, now)

    def _handle_subscriber_feedback(self, feedback: SubscriberFeedback, now: float) -> None:
        """A subscriber's transport-cc feedback
        (draft-holmer-rmcat-transport-wide-cc-extensions-01) or REMB."""
        peer, packet = feedback.peer, feedback.packet
        state = self.subscribers.get(peer)
        if state is None:
            state = self.subscriber(peer)
        if isinstance(packet, TransportCc):
            if state.estimator is not None:
                state.estimator.on_feedback(packet, now)
        else:
            state.remb = packet.bitrate

    handlers = {
        SetView: _handle_set_view,
        SetAudioOnly: _handle_set_audio_only,
        SubscriberFeedback: _handle_subscriber_feedback,
    }

    # -- learning layers (the slow branch of the hot path) ----------------------------------

    def learn_ssrc(self, peer: Peer, plain: bytes, ssrc: int, now: float) -> bool:
        """A publisher's packet from an unknown SSRC: a simulcast layer's (or its
        RTX's) first packets, by their MID and RID extensions (RFC 8852).
        True when the SSRC became known."""
        if not plain or not plain[0] & 0x10:
            return False
        try:
            two_byte, _, _, elements = extension_elements(plain)
        except RtpParseError:
            return False
        values: dict[int, bytes] = {}
        for hdr, xid, length in elements:
            start = hdr + (2 if two_byte else 1)
            values[xid] = plain[start : start + length]
        track: Track | None = None
        for candidate in peer.rid_tracks.values():
            mid_id = candidate.extensions.get(MID, 0)
            if mid_id and values.get(mid_id) == candidate.info.mid.encode():
                track = candidate
                break
        if track is None and len(peer.rid_tracks) == 1:
            track = next(iter(peer.rid_tracks.values()))
        if track is None:
            return False
        forwarder = peer.forwarder
        rid_id = track.extensions.get(RTP_STREAM_ID, 0)
        rrid_id = track.extensions.get(REPAIRED_RTP_STREAM_ID, 0)
        rid = values.get(rid_id) if rid_id else None
        repaired = values.get(rrid_id) if rrid_id else None
        if rid is not None:
            index = _index(track, rid)
            if index is None or track.layers[index].ssrc:
                return False
            try:
                forwarder.simulcast.add_layer(track.ssrc, index, ssrc)
            except SfuStateError:
                return False
            layer = track.layers[index]
            layer.ssrc = ssrc
            stats = ReceiveStatistics(ssrc, track.codec.clock_rate)
            peer.recv_stats[ssrc] = stats
            if peer.reporting:
                self.tables.reports.add_receive(peer, stats)
            self._layer_learnt(peer.room, track, index, now)
        elif repaired is not None:
            index = _index(track, repaired)
            if index is None or not track.layers[index].ssrc or track.layers[index].rtx_ssrc:
                return False
            try:
                forwarder.simulcast.add_layer_rtx(track.ssrc, index, ssrc)
            except SfuStateError:
                return False
            track.layers[index].rtx_ssrc = ssrc
        else:
            return False
        if all(layer.ssrc and layer.rtx_ssrc for layer in track.layers):
            peer.rid_tracks.pop(track.info.mid, None)
        return True

    def _layer_learnt(self, room: Room, track: Track, index: int, now: float) -> None:
        """A layer's SSRC is known: subscribers waiting for any layer may get it."""
        self._allocate_room(room, now)
        self._layers_start(now)

    # -- subscribers' estimates -----------------------------------------------------------

    def subscriber(self, peer: Peer) -> _Subscriber:
        """A subscriber transport's allocation state, made on first use."""
        state = self.subscribers.get(peer)
        if state is None:
            state = self.subscribers[peer] = _Subscriber()
        # Only when the subscriber took transport-cc in its answer: one that
        # refused it sends no feedback, and an estimator that never hears
        # would hold it at START_ESTIMATE for good.
        if state.estimator is None and any(
            s.subscribed
            and TRANSPORT_CC in s.sub_extensions
            and "transport-cc" in {f.type for f in s.forwarded.codec.feedback}
            for s in peer.sections
        ):
            state.estimator = SendSideEstimator(start=START_ESTIMATE)
            sent_at, sizes = state.estimator.rings()
            peer.forwarder.set_send_rings(peer, sent_at, sizes)
        return state

    def path_changed(self, peer: Peer, now: float) -> None:
        """A subscriber's path moved: its estimator forgets the old path's losses."""
        state = self.subscribers.get(peer)
        if state is not None and state.estimator is not None:
            state.estimator.path_changed(now)

    def forget(self, peer: Peer) -> None:
        """A subscriber transport is down or gone."""
        self.subscribers.pop(peer, None)

    # -- the tick ---------------------------------------------------------------------------

    def due(self) -> float | None:
        """When :meth:`tick` wants to run next: the tick, or a ramp's padding."""
        if not self.tables.rooms:
            return None
        return earliest((self._layers_when, self._padding_when))

    def _layers_start(self, now: float) -> None:
        if self._layers_when is None:
            self._layers_when = now + TICK
            self._out.append(ArmRtcp())

    def tick(self, now: float) -> None:
        """Measure layers, allocate every subscriber, dynacast, and (every
        other tick) connection quality; between ticks, every
        ``PADDING_INTERVAL``, the padding ramping subscribers asked for."""
        if self._layers_when is None or now >= self._layers_when:
            self._layers_when = now + TICK if self.tables.rooms else None
            self._ticks += 1
            for room in list(self.tables.rooms.values()):
                self._measure(room, now)
                self._allocate_room(room, now)
                self._relay_layers(room, now)
                self._dynacast(room, now)
                if self._ticks % 2 == 0:
                    self._quality(room, now)
            for peer in [p for p in self.subscribers if p.transport.state.value == "closed"]:
                del self.subscribers[peer]
        self._padding_when = None
        for peer, state in self.subscribers.items():
            if state.padding and state.estimator is not None:
                size = int(state.padding * min(now - state.padded_at, TICK) / 8)
                state.padded_at = now
                self._send_padding(peer, state.estimator, 0, size, now)
                self._padding_when = now + PADDING_INTERVAL

    def _measure(self, room: Room, now: float) -> None:
        for track in room.tracks.values():
            layers = track.layers or [_single(track)]
            for layer in layers:
                stats = track.publisher.recv_stats.get(layer.ssrc) if layer.ssrc else None
                if stats is None:
                    continue
                if stats.octets != layer.octets:
                    # When its last packet came, which this tick reads up
                    # to TICK later (LayerInfo.seen).
                    arrival = stats.last_arrival or now
                    if layer.seen > -math.inf:
                        dt = max(arrival - layer.seen, TICK)
                        rate = (stats.octets - layer.octets) * 8 / dt
                        layer.bitrate = _smoothed(layer.bitrate, rate)
                    layer.octets = stats.octets
                    layer.seen = arrival

    def _allocate_room(self, room: Room, now: float) -> None:
        for participant in list(room.participants):
            self.allocate(room, participant, now)

    def allocate(self, room: Room, participant: str, now: float) -> None:
        """Choose the layers ``participant`` receives now (see the module docstring)."""
        p = room.participants.get(participant)
        peer = p.subscribe if p is not None else None
        if peer is None or not peer.reporting:
            return
        state = self.subscriber(peer)
        forwarder = peer.forwarder
        audio = 0
        audio_bitrate = 0.0
        wanted: list[Wanted] = []
        tracks: dict[str, Track] = {}
        reasons: dict[str, Reason] = {}
        audio_only = participant in room.audio_only
        speaker = room.speaker_sent
        for section in peer.sections:
            track = section.track
            if not section.subscribed or not track.live:
                continue
            if track.info.kind == "audio":
                audio += 1
                _redundancy(peer, section, state.red)
                # What it really takes, once measured: every track the link
                # carries counts (Opus with RED is two to three times plain
                # Opus, and each packet's header is a fifth of it again).
                sent = _audio_sent(peer, section, state, now)
                if not sent:
                    sent = track.measured.bitrate if track.measured is not None else 0.0
                audio_bitrate += sent or AUDIO_BITRATE
                continue
            tid = track.info.track_id
            tracks[tid] = track
            view = room.views.get((participant, tid)) or _ANY_VIEW
            if track.info.muted or not _sending(track, now):
                # Its publisher sends nothing (camera off): no layer to
                # give, but not the subscriber's link either.
                reasons[tid] = "off"
                state.short_since.pop(tid, None)
                continue
            if audio_only:
                reasons[tid] = "audio_only"
                continue
            if not view.visible:
                reasons[tid] = "hidden"
                continue
            wanted.append(
                Wanted(
                    tid,
                    _layers(forwarder.simulcast.group(track.ssrc), track, now),
                    screen=track.info.source == "screen",
                    speaker=speaker is not None and track.info.participant == speaker,
                    width=view.width,
                    height=view.height,
                )
            )
        if len(state.audio) > audio:
            live = {s.track.ssrc for s in peer.sections if s.subscribed}
            state.audio = {k: v for k, v in state.audio.items() if k in live}
        estimate = self._estimate(state)
        chosen = allocate(estimate, wanted, audio, audio_bitrate)
        ideal = allocate(math.inf, wanted, audio, audio_bitrate)
        # What the estimate carries at the layers' measured rates, without
        # their HEADROOM: enough to keep a video already flowing on its
        # lowest layer (starting one needs the headroom; keeping it, not:
        # a link carrying just that would otherwise pause and resume it).
        # Only worked out when a flowing video would be paused.
        kept: dict[str, int | None] | None = None
        state.wanted = int(audio_bitrate + sum(_bitrate(w, ideal[w.track_id]) for w in wanted))
        # Whether the estimate keeps some video below the layer it wants.
        lacking = any(chosen[w.track_id] != ideal[w.track_id] for w in wanted)
        state.red = _red_next(state, estimate, lacking, audio_bitrate)
        congested = False
        sending = audio_bitrate
        for w in wanted:
            tid = w.track_id
            index = chosen[tid]
            current = self._current(peer, tracks[tid])
            best = ideal[tid]
            if index is None and state.estimator is None:
                # A REMB (the receiver's own estimate, which follows what it
                # gets) is good enough to pick a layer, not to pause video.
                index = w.layers[0].index if w.layers else None
            if index is None and current is not None and w.layers:
                # A dip of the estimate (a keyframe's burst, one overuse
                # signal) is not a weak link: keep the lowest layer until the
                # shortfall has lasted PAUSE_AFTER.
                short = state.short_since.setdefault(tid, now)
                if now - short >= PAUSE_AFTER and kept is None:
                    kept = allocate(estimate * HEADROOM, wanted, audio, audio_bitrate)
                if now - short < PAUSE_AFTER or (kept is not None and kept[tid] is not None):
                    index = w.layers[0].index
            elif index is not None:
                state.short_since.pop(tid, None)
            if index is None:
                reasons[tid] = "bandwidth"
                if current is not None:
                    congested = True
                continue
            if state.paused.get(tid) == "bandwidth":
                # Back from a pause once the estimate carries the lowest
                # layer again for RESUME_AFTER, on that layer; going higher
                # waits for HOLD like any upgrade after congestion.
                if now - state.downgraded_at < RESUME_AFTER:
                    reasons[tid] = "bandwidth"
                    continue
                index = w.layers[0].index
            elif current is not None and index < current and best is not None and best > index:
                congested = True
            elif (
                current is not None
                and index > current
                and now - state.downgraded_at < HOLD
                and any(x.index == current for x in w.layers)
            ):
                # Hold the layer taken after congestion, while its publisher
                # still sends it (a loaded encoder drops its top layers).
                index = current
            sending += _bitrate(w, index) / HEADROOM
            self._set(peer, tracks[tid], index, now)
        if congested:
            state.downgraded_at = now
        for tid, reason in reasons.items():
            self._set(peer, tracks[tid], None, now)
            if state.paused.get(tid) != reason:
                state.paused[tid] = reason
                self._out.append(Emit(TrackPaused(room.name, participant, tid, True, reason)))
        for tid in [t for t in state.paused if t not in reasons]:
            reason = state.paused.pop(tid)
            if tid in tracks:
                self._out.append(Emit(TrackPaused(room.name, participant, tid, False, reason)))
        self._out.append(FlushRtcp(room))
        estimator = state.estimator
        padded, state.padding = state.padding, 0.0
        if estimator is None or state.wanted <= estimate:
            return
        step = 0.0
        if lacking and estimator.policed:
            step = _next_step(estimate, wanted, audio, audio_bitrate, chosen)
        resume = "bandwidth" in reasons.values()
        padding = estimator.padding(sending, step, now, resume=resume)
        if padding and not padded:
            # A ramp starts: its padding is counted from now (one going on
            # keeps its clock, or the time since its last send is lost).
            state.padded_at = now
        state.padding = padding
        if padding:
            return
        probe = estimator.probe(int(state.wanted), now)
        if probe is not None:
            self._send_padding(peer, estimator, probe.cluster, probe.size, now)

    def _estimate(self, state: _Subscriber) -> float:
        if state.estimator is not None:
            return float(state.estimator.estimate)
        if state.remb is not None:
            return float(state.remb)
        return math.inf

    def _current(self, peer: Peer, track: Track) -> int | None:
        """The layer a subscriber gets now or is switching to (0 for a forwarded
        single-layer track), None when paused."""
        forwarder = peer.forwarder
        try:
            sub = forwarder._subscription_for(peer, track.ssrc)
        except SfuStateError:
            return None
        if sub.group is not None:
            return sub.target
        return None if sub.paused else 0

    def _set(self, peer: Peer, track: Track, index: int | None, now: float) -> None:
        forwarder = peer.forwarder
        try:
            if forwarder.simulcast.group(track.ssrc) is not None:
                forwarder.simulcast.set_layer(peer, track.ssrc, index, now)
            else:
                forwarder.set_paused(peer, track.ssrc, index is None, now)
        except SfuStateError:
            return

    def _send_padding(
        self, peer: Peer, estimator: SendSideEstimator, cluster: int, size: int, now: float
    ) -> None:
        """A probe cluster: padding-only RTX packets, sent at once (the
        subscriber's arrival spacing measures the path)."""
        protect, addr = peer.protect, peer.addr
        if protect is None or addr is None:
            return
        left = size
        while left > 0:
            built = peer.forwarder.padding(peer, min(left, 275), now)
            if built is None:
                return
            packet, tseq = built
            estimator.on_sent(tseq, len(packet), now, cluster)
            try:
                self._out.append(Send(protect(packet), addr))
            except Exception:
                peer.srtp_errors += 1
                return
            left -= len(packet)

    # -- dynacast ---------------------------------------------------------------------------

    def _relay_layers(self, room: Room, now: float) -> None:
        """A simulcast track relayed to another worker crosses as its best
        layer sending now (one layer: the receiving worker forwards it as a
        single-layer track)."""
        egress = {relay.egress for relay in room.relays.values()}
        if not egress:
            return
        forwarder = room.forwarder
        for track in room.tracks.values():
            group = forwarder.simulcast.group(track.ssrc) if track.layers else None
            if group is None:
                continue
            live = [
                i
                for i, info in enumerate(track.layers)
                if info.ssrc and now - info.seen < STALE and group.layers[i] is not None
            ]
            if not live:
                continue
            for sub in group.subscriptions:
                if sub.key in egress:
                    forwarder.simulcast.set_layer(sub.key, track.ssrc, live[-1], now)

    def _dynacast(self, room: Room, now: float) -> None:
        forwarder = room.forwarder
        for track in room.tracks.values():
            group = forwarder.simulcast.group(track.ssrc) if track.layers else None
            if group is None or track.publisher.owners is not None:
                continue  # a relayed track's publisher is another worker's
            wanted: set[int] = {0}
            for sub in group.subscriptions:
                target = sub.target
                if target is not None and not sub.paused:
                    wanted.add(target)
            for index, layer in enumerate(group.layers):
                # A relay link's egress leg subscribes to each layer it carries.
                if layer is not None and any(s.group is None for s in layer.subscriptions):
                    wanted.add(index)
            for index in wanted:
                track.layers[index].wanted_at = now
            changed = False
            for info in track.layers:
                # A layer never seen stays on: the publisher's browser starts
                # it when its own uplink estimate allows, and only a layer
                # learnt can be offered to a subscriber and so be wanted
                # (stopped before it ever came, it would never come).
                active = now - info.wanted_at < DYNACAST_DELAY or not info.ssrc
                if active != info.active:
                    info.active = active
                    changed = True
            if changed:
                self._out.append(
                    Emit(
                        LayersWanted(
                            room.name,
                            track.info.track_id,
                            track.info.participant,
                            [x.rid for x in track.layers],
                            [x.rid for x in track.layers if x.active],
                        )
                    )
                )

    # -- connection quality -------------------------------------------------------------

    def _quality(self, room: Room, now: float) -> None:
        for participant, p in room.participants.items():
            legs = [x for x in (p.publish, p.subscribe) if x is not None and x.reporting]
            if not legs:
                continue
            key = (room.name, participant)
            q = self._qualities.get(key)
            first = q is None
            if q is None:
                q = self._qualities[key] = _Quality(now)
            loss = 0.0
            jitter: float | None = None
            rtt: float | None = None
            available = wanted = 0.0
            activity = 0
            pub = p.publish
            if pub is not None:
                lost = sum(s.cumulative_lost for s in pub.recv_stats.values())
                expected = sum(s.expected for s in pub.recv_stats.values())
                if expected > q.expected:
                    loss = max(0.0, (lost - q.lost) / (expected - q.expected))
                q.lost, q.expected = lost, expected
                for stats in pub.recv_stats.values():
                    if stats.started and stats.clock_rate:
                        value = stats.jitter / stats.clock_rate
                        jitter = value if jitter is None else max(jitter, value)
                activity += pub.packets_in + pub.rtcp_in
            sub = p.subscribe
            if sub is not None:
                rtt = self.tables.reports.rtt(sub)
                state = self.subscribers.get(sub)
                if state is not None:
                    if state.estimator is not None:
                        loss = max(loss, state.estimator.loss)
                    estimate = self._estimate(state)
                    available = 0.0 if math.isinf(estimate) else estimate
                    wanted = float(state.wanted)
                activity += sub.rtcp_in
            if activity != q.rtcp:
                q.rtcp, q.seen = activity, now
            sample = Sample(
                loss=loss,
                rtt=rtt,
                jitter=jitter,
                available=available,
                wanted=wanted,
                silent=now - q.seen,
            )
            level = q.tracker.update(sample, now)
            if first and level is None:
                level = q.tracker.level
            if level is not None:
                self._out.append(Emit(ConnectionQuality(room.name, participant, level.value)))
            q.peak = max(q.peak, loss)
            if now - q.sampled >= call_samples.SAMPLE_EVERY:
                q.sampled, peak, q.peak = now, q.peak, 0.0
                got: list[tuple[Track, int | None]] = []
                paused: dict[str, Reason] = {}
                if sub is not None:
                    got = [(s.track, self._current(sub, s.track)) for s in sub.sections]
                    known = self.subscribers.get(sub)
                    paused = known.paused if known is not None else paused
                self._out.append(
                    Emit(
                        call_samples.sample(
                            room.name,
                            participant,
                            sample,
                            q.tracker.level,
                            call_samples.sent_bitrate(room.tracks.values(), pub),
                            call_samples.received_layers(got, paused),
                            peak,
                        )
                    )
                )


_ANY_VIEW = View()


def _smoothed(bitrate: float, rate: float) -> float:
    """A measured bitrate after one more tick's ``rate`` (the first as it is)."""
    return rate if not bitrate else 0.6 * bitrate + 0.4 * rate


def _red_next(state: _Subscriber, estimate: float, lacking: bool, audio: float) -> bool:
    """Whether a subscriber gets RED (RFC 2198) where it negotiated it, from
    the next tick on. RED's copies repair random loss; where loss comes only
    from exceeding a rate (a policer, a full queue: the estimate keeps below
    it) or there is none, they repair nothing and take the video's room on a
    link too narrow for what the subscriber wants. So: never while the loss
    follows the rate (sfu.feedback.estimator); always while there is loss that does
    not, up to ``RED_LOSS_MAX`` (beyond, two copies a packet repair little,
    and what they add may be the loss itself: an 80 kbit/s link lost half
    of two RED voices, 170 kbit/s, for good, and the loss never followed a
    rate the audio could not go under); else only while no video lacks
    bandwidth, back when the estimate carries everything wanted with RED's
    extra on top."""
    estimator = state.estimator
    if estimator is None:
        return True
    if estimator.loss_follows_rate or estimator.loss > RED_LOSS_MAX:
        return False
    if estimator.loss >= RED_LOSS:
        return True
    if state.red:
        return not lacking
    return estimate >= state.wanted + RED_EXTRA * audio


def _redundancy(peer: Peer, section: Section, red: bool) -> None:
    """RED to ``peer`` on this audio section as it negotiated (``red``), or
    the primary Opus alone (see :func:`_red_next`)."""
    codec = section.track.red
    if codec is None:
        return
    negotiated = section.pt_map.get(codec.payload_type)
    if negotiated is None:
        return  # stripped anyway (sfu.forward.forwarder)
    with contextlib.suppress(SfuStateError):
        peer.forwarder.set_red(peer, section.track.ssrc, negotiated if red else None)


def _audio_sent(peer: Peer, section: Section, state: _Subscriber, now: float) -> float:
    """What ``peer``'s subscription on an audio ``section`` sends, in bits per
    second with headers (0 until measured)."""
    sub = peer.forwarder.subscription(peer, section.forwarded.ssrc)
    if sub is None:
        return 0.0
    ssrc = section.track.ssrc
    sent = state.audio.get(ssrc)
    if sent is None:
        state.audio[ssrc] = _Sent(now, sub.octets_sent, sub.packets_sent)
        return 0.0
    return sent.update(now, sub.octets_sent, sub.packets_sent)


def _index(track: Track, rid: bytes) -> int | None:
    text = rid.decode("ascii", "replace")
    for i, layer in enumerate(track.layers):
        if layer.rid == text:
            return i
    return None


def _single(track: Track) -> LayerInfo:
    """A single-layer track's measurement record (audio, or video without simulcast)."""
    layer = track.measured
    if layer is None:
        layer = track.measured = LayerInfo("", 0.0)
        layer.ssrc = track.ssrc
    return layer


def _sending(track: Track, now: float) -> bool:
    """Whether a video's publisher sends it: some layer arrived in the last
    ``STALE`` seconds, or was learnt and not measured yet (a relayed track's
    layers are never measured here: they count as sending)."""
    if not track.layers:
        single = track.measured
        return single is None or single.seen == -math.inf or now - single.seen < STALE
    known = [x for x in track.layers if x.ssrc]
    return any(x.seen == -math.inf or now - x.seen < STALE for x in known)


def _layers(group: Group | None, track: Track, now: float) -> Sequence[Layer]:
    """The layers allocation may choose for a track: known, and sending now
    (or stopped by dynacast, which resumes them when chosen)."""
    if group is None:
        # A track that does not simulcast has nothing lower to offer: it is
        # paused only when the subscriber cannot carry even a small video
        # (the audio-only fallback), not whenever the estimate is below what
        # the publisher sends now (the estimate starts low and climbs).
        single = _single(track)
        bitrate = single.bitrate * HEADROOM if single.bitrate else SINGLE_LAYER_COST
        return [Layer(0, "", 0, 0, int(min(bitrate, SINGLE_LAYER_COST)))]
    group_layers = track.layers
    n = len(group_layers)
    newest = max((x.seen for x in group_layers if x.ssrc), default=-math.inf)
    out: list[Layer] = []
    for i, info in enumerate(group_layers):
        if not info.ssrc:
            continue
        fresh = now - info.seen < STALE
        dropped = newest - info.seen >= QUIET
        if (dropped or not fresh) and info.active and info.seen > -math.inf:
            continue  # the publisher stopped it on its own
        scale = 1 << (n - 1 - i)
        width, height = 1280 // scale, 720 // scale
        known = group.layers[i]
        if known is not None and known.width:
            width, height = known.width, known.height
        default = (150_000, 500_000, 1_700_000)[min(i + 3 - n, 2)] if n <= 3 else 500_000
        bitrate = info.bitrate * HEADROOM if fresh and info.bitrate else default
        out.append(Layer(i, info.rid, width, height, int(bitrate)))
    return out


def _next_step(
    estimate: float,
    wanted: Sequence[Wanted],
    audio: int,
    audio_bitrate: float,
    chosen: dict[str, int | None],
) -> float:
    """The least budget above ``estimate`` at which the allocation gives more
    than ``chosen``: in steps of 5 % up to ``RAMP_REACH`` times it (what a
    ramp reaches at once), coarser beyond; 0 when none does."""
    reach = round((RAMP_REACH - 1) / 0.05)
    for factor in [1 + 0.05 * k for k in range(1, reach + 1)] + [1.5, 2.0, 3.0, 5.0]:
        budget = estimate * factor
        if allocate(budget, wanted, audio, audio_bitrate) != chosen:
            return budget
    return 0.0


def _bitrate(wanted: Wanted, index: int | None) -> float:
    if index is None:
        return 0.0
    return float(next(x.bitrate for x in wanted.layers if x.index == index))
