"""What each subscriber gets: the choice of its simulcast layers, and dynacast.

The worker's side of simulcast, on top of the pure cores
(:mod:`sfu.forward.simulcast`, :mod:`sfu.feedback.estimator`,
:mod:`sfu.feedback.quality`) and the forwarder's layer switching
(:mod:`sfu.forward.groups`). :class:`Layers` holds the pieces it is made of:
what each publisher's video offers (:mod:`sfu.layers.published`: layers
learnt from their first packets, measured each tick), what it keeps of each
subscriber transport (:mod:`sfu.layers.subscribers`: the bandwidth estimate,
its probes and padding) and each participant's connection quality
(:mod:`sfu.layers.qualities`). What is its own:

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
  limit does not flap. When it wants more than the estimate, the estimator's
  probe or (on a policed path) padding up to the allocation's next step goes
  out, the padding paced every ``PADDING_INTERVAL``.
* **Dynacast.** A simulcast layer no subscriber or relay link has wanted for
  ``DYNACAST_DELAY`` seconds is dropped from the track's ``LayersWanted``
  event (signalling tells the publisher to stop that encoding); wanted again,
  it is added back at the next tick. The lowest layer is always wanted, so a
  new subscriber starts at once.

A sans-I/O core like :mod:`sfu.negotiation.transports`, held by the worker's
transports core: the worker hands it the subscribers' views and bandwidth
feedback through ``receive`` (:mod:`sfu.rooms.inputs`), calls :meth:`Layers.tick`
from its RTCP timer (:meth:`Layers.due` says when) and carries out what it queued
(:mod:`sfu.rooms.actions`): events, RTCP to flush, the padding and probes
its subscribers' estimators ask for, already protected.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

from rtc.machine import earliest
from sfu.control.messages import LayersWanted, TrackDisplay, TrackPaused
from sfu.errors import SfuStateError
from sfu.feedback.estimator import RAMP_REACH
from sfu.forward.simulcast import AUDIO_BITRATE, Wanted, allocate
from sfu.forward.table import Subscription
from sfu.layers.published import (
    HEADROOM,
    TICK,
    learn_layer,
    measure,
    newest_seen,
    offered,
    publishing,
    sending,
)
from sfu.layers.qualities import Qualities
from sfu.layers.subscribers import Reason, Sent, Subscriber, Subscribers, received_layer
from sfu.rooms.actions import ArmRtcp, Emit, FlushRtcp
from sfu.rooms.inputs import Core, SetAudioOnly, SetView, SubscriberFeedback
from sfu.rooms.records import MediaRoom, Peer, Section, Track, WorkerTables

__all__ = ["DYNACAST_DELAY", "HOLD", "LayerSource", "Layers"]

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
#: Smoothed loss at which RED goes to a subscriber that negotiated it however
#: short its bandwidth (unless that loss follows the rate: sfu.feedback.estimator),
#: and above which it does not.
RED_LOSS, RED_LOSS_MAX = 0.05, 0.4
#: What RED adds to plain Opus as a subscriber receives it (three frames a
#: packet instead of one; the header is not repeated): this times the plain rate.
RED_EXTRA = 1.5


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
        self.subscribers = Subscribers()
        """Each subscriber transport's estimate and allocation state."""
        self.qualities = Qualities(tables, self.subscribers)
        """Each participant's connection quality."""
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

    def left(self, room: MediaRoom, participant: str) -> None:
        """A participant leaves the room: forget its views and allocation."""
        p = room.participants.get(participant)
        if p is not None and p.subscribe is not None:
            self.forget(p.subscribe)
        for key in [k for k in room.views if k[0] == participant]:
            del room.views[key]
        room.audio_only.discard(participant)
        self.qualities.forget(room.name, participant)

    # -- inputs (sfu.rooms.inputs) ---------------------------------------------------------------

    def _handle_set_view(self, command: SetView, now: float) -> None:
        """How ``participant`` shows ``track_id`` (see
        :class:`sfu.control.messages.MediaControl`)."""
        r = self.tables.rooms.get(command.room)
        if r is None:
            raise SfuStateError(f"no room {command.room!r}")
        view = command.view
        width, height = max(0, view.width), max(0, view.height)
        r.views[(command.participant, command.track_id)] = TrackDisplay(width, height, view.visible)
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
        self.subscribers.feedback(feedback.peer, feedback.packet, now)

    handlers = {
        SetView: _handle_set_view,
        SetAudioOnly: _handle_set_audio_only,
        SubscriberFeedback: _handle_subscriber_feedback,
    }

    # -- learning layers (the slow branch of the hot path) ----------------------------------

    def learn_ssrc(self, peer: Peer, plain: bytes, ssrc: int, now: float) -> bool:
        """A publisher's packet from an unknown SSRC: a simulcast layer's (or its
        RTX's) first packets (:func:`sfu.layers.published.learn_layer`).
        True when the SSRC became known."""
        learnt = learn_layer(peer, plain, ssrc, self.tables.reports)
        if learnt == "layer":
            # Subscribers waiting for any layer may get it.
            self._allocate_room(peer.room, now)
            self._layers_start(now)
        return learnt is not None

    # -- subscribers' paths --------------------------------------------------------------

    def path_changed(self, peer: Peer, now: float) -> None:
        """A subscriber's path moved: its estimator forgets the old path's losses."""
        self.subscribers.path_changed(peer, now)

    def forget(self, peer: Peer) -> None:
        """A subscriber transport is down or gone."""
        self.subscribers.forget(peer)

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
                measure(room, now)
                self._allocate_room(room, now)
                self._relay_layers(room, now)
                self._dynacast(room, now)
                if self._ticks % 2 == 0:
                    self._out.extend(self.qualities.update(room, now))
            self.subscribers.forget_closed()
        padding, ramping = self.subscribers.pad(now)
        self._out.extend(padding)
        self._padding_when = now + PADDING_INTERVAL if ramping else None

    def _allocate_room(self, room: MediaRoom, now: float) -> None:
        for participant in list(room.participants):
            self.allocate(room, participant, now)

    def allocate(self, room: MediaRoom, participant: str, now: float) -> None:
        """Choose the layers ``participant`` receives now (see the module docstring)."""
        p = room.participants.get(participant)
        peer = p.subscribe if p is not None else None
        if peer is None or not peer.reporting:
            return
        state = self.subscribers.of(peer)
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
            if track.info.muted or not publishing(track, now):
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
                    offered(forwarder.simulcast.group(track.ssrc), track, now),
                    screen=track.info.source == "screen",
                    speaker=speaker is not None and track.info.participant == speaker,
                    width=view.width,
                    height=view.height,
                )
            )
        if len(state.audio) > audio:
            live = {s.track.ssrc for s in peer.sections if s.subscribed}
            state.audio = {k: v for k, v in state.audio.items() if k in live}
        estimate = state.estimate()
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
            current = received_layer(peer, tracks[tid])
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
        step = 0.0
        if estimator is not None and estimator.policed and lacking and state.wanted > estimate:
            # Where a ramp heads: the least rate at which more would be sent.
            step = _next_step(estimate, wanted, audio, audio_bitrate, chosen)
        resume = "bandwidth" in reasons.values()
        self._out.extend(
            self.subscribers.ramp(peer, state, estimate, sending, step, now, resume=resume)
        )

    def _set(self, peer: Peer, track: Track, index: int | None, now: float) -> None:
        forwarder = peer.forwarder
        try:
            if forwarder.simulcast.group(track.ssrc) is not None:
                forwarder.simulcast.set_layer(peer, track.ssrc, index, now)
            else:
                forwarder.set_paused(peer, track.ssrc, index is None, now)
        except SfuStateError:
            return

    # -- dynacast ---------------------------------------------------------------------------

    def _relay_layers(self, room: MediaRoom, now: float) -> None:
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
            # As for a local subscriber, a layer its publisher stopped alone
            # is left once QUIET behind the others, not after STALE: the
            # other region's viewers would see a frozen picture meanwhile.
            newest = newest_seen(track)
            live = [
                i
                for i, info in enumerate(track.layers)
                if info.ssrc and group.layers[i] is not None and sending(info, newest, now)
            ]
            if not live:
                continue
            for sub in group.subscriptions:
                if sub.key in egress:
                    forwarder.simulcast.set_layer(sub.key, track.ssrc, live[-1], now)

    def _dynacast(self, room: MediaRoom, now: float) -> None:
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


_ANY_VIEW = TrackDisplay()


def _red_next(state: Subscriber, estimate: float, lacking: bool, audio: float) -> bool:
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


def _audio_sent(peer: Peer, section: Section, state: Subscriber, now: float) -> float:
    """What ``peer``'s subscription on an audio ``section`` sends, in bits per
    second with headers (0 until measured)."""
    sub = peer.forwarder.subscription(peer, section.forwarded.ssrc)
    if sub is None:
        return 0.0
    ssrc = section.track.ssrc
    sent = state.audio.get(ssrc)
    if sent is None:
        state.audio[ssrc] = Sent(now, sub.octets_sent, sub.packets_sent)
        return 0.0
    return sent.update(now, sub.octets_sent, sub.packets_sent)


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
