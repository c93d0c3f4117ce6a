"""The control side of a media worker: rooms, transports, offer/answer, :class:`MediaControl`.

:class:`WorkerControl` is the half of :class:`sfu.worker.MediaWorker` that
signalling drives through :class:`sfu.control.MediaControl`: it creates and
closes each participant's transports, negotiates them (RFC 8829 offer/answer,
one RFC 8843 BUNDLE transport per leg), registers tracks and subscriptions
with the room's :class:`~sfu.forward.Forwarder` and tells listeners what
happened. Everything a datagram or a timer sets off (demultiplexing, the
forwarding hot path, a transport's state changes, RTCP, timers) is the other
half, :mod:`sfu.worker`, which inherits this class and provides the few
things it needs from there: the clock, a transport's service, the timers and
RTCP output, declared below as abstract methods. The records both halves
share are in :mod:`sfu.records`.

Each participant has a *publish* transport (the client offers, we answer) and
a *subscribe* transport (we offer, the client answers), see
:mod:`sfu.control`. A subscription is handed to the forwarder only once the
subscriber's transport is connected: the keyframe it asks for on subscribing
must not be spent before the subscriber can decrypt it.

Nothing here touches the socket, the event loop or the clock (ruff's TID251
holds it to that); the coroutines of :class:`MediaControl` never wait.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

from rtc.dtls import DtlsCertificate
from rtc.errors import DtlsError, IceStateError, SdpNegotiationError
from rtc.ice import Address
from rtc.sdp import (
    ABS_SEND_TIME,
    AUDIO_LEVEL,
    TRANSPORT_CC,
    Codec,
    Direction,
    Extmap,
    Fingerprint,
    MediaDescription,
    RtcpFeedback,
    SessionDescription,
    Setup,
)
from sfu import native
from sfu.bandwidth import RembEstimator
from sfu.control import ActiveSpeaker, MediaEvent, PublishResult, Restart, Source, TrackInfo
from sfu.errors import SfuStateError
from sfu.forward import Forwarder
from sfu.offer_answer import ForwardedTrack, LocalParameters, answer, offer_for_subscriber
from sfu.offered import OfferedTrack, parse_tracks
from sfu.records import LayerInfo, Leg, Participant, Peer, Room, Section, Track, WorkerTables
from sfu.reports import ReceiveStatistics, SendStatistics
from sfu.speaker import SpeakerDetector
from sfu.table import ForwarderStats, Subscription
from sfu.transport import TERMINAL, PeerState, PeerTransport

__all__ = ["WorkerControl"]

log = logging.getLogger("wadud.sfu.worker")

# Extensions forwarded to subscribers. The mid extension is not among them:
# its value is the publisher's mid, which means nothing on the subscriber's
# transport, and our offers carry a=ssrc lines to demultiplex by.
_FORWARDED_EXTENSIONS = (ABS_SEND_TIME, TRANSPORT_CC, AUDIO_LEVEL)
# Dynamic payload types (RFC 3551 section 6), then the range RFC 7587-era
# browsers use when 96-127 are full (RFC 8866 section 6.6 allows 35-63 with rtcp-mux).
_FREE_PAYLOAD_TYPES = tuple(itertools.chain(range(96, 128), range(35, 64)))


class WorkerControl(abc.ABC):
    """The :class:`sfu.control.MediaControl` half of :class:`sfu.worker.MediaWorker`.

    Not used on its own: the worker inherits it, sets the attributes declared
    here in its ``__init__`` and implements the abstract methods.
    """

    # The worker's settings and the tables both halves share (see sfu.worker.MediaWorker).
    certificate: DtlsCertificate
    consent_timeout: float
    connect_timeout: float
    forwarder_options: dict[str, Any]
    simulcast: bool
    red: bool
    feedback_ssrc: int
    tables: WorkerTables
    _fingerprint: str
    _listeners: list[Callable[[MediaEvent], None]]

    # -- provided by the datagram side ------------------------------------------------------

    @property
    @abc.abstractmethod
    def candidate_addresses(self) -> list[Address]:
        """(address, port) of each host candidate (RFC 8445 section 5.1.1.1)."""

    @abc.abstractmethod
    def _now(self) -> float:
        """The worker's clock (the event loop's)."""

    @abc.abstractmethod
    def _service(self, peer: Peer) -> None:
        """Send what a transport wants sent and act on its events."""

    @abc.abstractmethod
    def _start_bandwidth_feedback(self, peer: Peer, now: float) -> None:
        """Give a connected publisher transport-cc or REMB feedback for its tracks."""

    @abc.abstractmethod
    def _flush_rtcp(self, room: Room) -> None:
        """Send the feedback a room's forwarder has pending (NACK, PLI, FIR)."""

    @abc.abstractmethod
    def _send_rtcp(self, peer: Peer, compound: bytes) -> None:
        """Protect and send one compound RTCP packet on a peer's transport."""

    @abc.abstractmethod
    def _rearm(self) -> None:
        """Re-arm the worker's timer at the earliest deadline of every core."""

    # -- provided by the relay-link side (sfu.links) ----------------------------------------

    @abc.abstractmethod
    def _relay_track_removed(self, room: Room, track: Track) -> None:
        """A local track ended: forget it on the relay links it went over."""

    @abc.abstractmethod
    def _close_room_relays(self, room: Room) -> None:
        """The room closes: stop relaying it either way."""

    # -- transports ----------------------------------------------------------------------------

    def _new_peer(self, room: Room, participant: str, direction: Leg, now: float) -> Peer:
        transport = PeerTransport(
            self.certificate,
            now=now,
            consent_timeout=self.consent_timeout,
            connect_timeout=self.connect_timeout,
        )
        local = LocalParameters(
            ice_ufrag=transport.local_ufrag,
            ice_pwd=transport.local_pwd,
            fingerprints=[Fingerprint("sha-256", self._fingerprint)],
            addresses=self.candidate_addresses,
            simulcast=self.simulcast and direction == "publish",
            red=self.red,
        )
        peer = Peer(room, participant, direction, transport, local)
        self.tables.peers.add(peer)
        self.tables.by_ufrag[transport.local_ufrag] = peer
        return peer

    def _close_peer(self, peer: Peer, reason: str) -> None:
        if peer.transport.state not in TERMINAL:
            peer.transport.close(reason)
            self._service(peer)
        if peer.direction == "subscribe":
            peer.forwarder.remove_subscriber(peer)
        else:
            for track in list(peer.tracks.values()):
                self._remove_track(peer.room, track)

    # -- events ------------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[MediaEvent], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, event: MediaEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("media event listener failed", extra={"event": repr(event)})

    def _speaker_changed(self, room: Room, speaker: str | None) -> None:
        if speaker == room.speaker_sent:
            return
        room.speaker_sent = speaker
        self._emit(ActiveSpeaker(room.name, speaker))

    # -- rooms ----------------------------------------------------------------------------

    def _room(self, name: str) -> Room:
        room = self.tables.rooms.get(name)
        if room is None:
            forwarder = Forwarder(
                feedback_ssrc=self.feedback_ssrc, red_leaf=native.RED, **self.forwarder_options
            )
            room = self.tables.rooms[name] = Room(name, forwarder, SpeakerDetector())
        return room

    def _participant(self, room: Room, participant: str) -> Participant:
        p = room.participants.get(participant)
        if p is None:
            p = room.participants[participant] = Participant(room, participant)
        return p

    def _forget_if_empty(self, room: Room) -> None:
        if room.participants or room.relays or self.tables.rooms.get(room.name) is not room:
            return
        del self.tables.rooms[room.name]
        self._add_totals(room.forwarder.stats)

    def _add_totals(self, stats: ForwarderStats) -> None:
        for name, value in stats.as_dict().items():
            self.tables.totals[name] += value

    def _close_room(self, name: str, reason: str) -> None:
        room = self.tables.rooms.get(name)
        if room is None:
            return
        for participant in list(room.participants):
            self._leave(room, participant, reason)
        self._close_room_relays(room)
        self._forget_if_empty(room)

    def _leave(self, room: Room, participant: str, reason: str) -> None:
        p = room.participants.pop(participant, None)
        if p is None:
            return
        for peer in (p.publish, p.subscribe):
            if peer is not None:
                self._close_peer(peer, reason)
        self._speaker_left(room, participant)

    def _speaker_left(self, room: Room, participant: str) -> None:
        """A participant (local, or remote behind a relay link) has no audio here any more."""
        change = room.speaker.remove(participant, self._now())
        if change is not None:
            self._speaker_changed(room, cast(str | None, change.speaker))

    def _remove_track(self, room: Room, track: Track) -> None:
        if not track.live:
            return
        track.live = False
        with contextlib.suppress(SfuStateError):
            room.forwarder.remove_track(track.ssrc)
        room.tracks.pop(track.info.track_id, None)
        if room.relays:
            self._relay_track_removed(room, track)
        publisher = track.publisher
        if publisher.tracks.get(track.info.mid) is track:
            del publisher.tracks[track.info.mid]
        publisher.levels.pop(track.ssrc, None)
        publisher.recv_stats.pop(track.ssrc, None)
        self.tables.reports.remove_receive(publisher, track.ssrc)
        if publisher.rid_tracks.get(track.info.mid) is track:
            del publisher.rid_tracks[track.info.mid]
        for layer in track.layers:
            if layer.ssrc:
                publisher.recv_stats.pop(layer.ssrc, None)
                self.tables.reports.remove_receive(publisher, layer.ssrc)
        estimator = self.tables.bandwidth.get(publisher)
        if isinstance(estimator, RembEstimator):
            estimator.remove_source(track.ssrc)
        now = self._now()
        for p in room.participants.values():
            sub = p.subscribe
            if sub is not None:
                for section in sub.sections:
                    if section.track is track and section.subscribed:
                        section.subscribed = False
                        self._end_send(sub, section, now)

    def _end_send(self, peer: Peer, section: Section, now: float) -> None:
        """A subscription ended: say BYE for its SSRCs (RFC 3550 6.6), stop reporting on it.

        The BYE lets the subscriber end the stream at once rather than time
        it out; the section itself stops with the next offer.
        """
        forwarded = section.forwarded
        ssrcs = [forwarded.ssrc]
        if section.use_rtx and forwarded.rtx_ssrc is not None:
            ssrcs.append(forwarded.rtx_ssrc)
        if peer.reporting:
            for compound in self.tables.reports.goodbye(peer, ssrcs, now):
                self._send_rtcp(peer, compound)
        self.tables.reports.remove_send(peer, forwarded.ssrc)

    # -- MediaControl ----------------------------------------------------------------------

    async def publish(
        self, room: str, participant: str, offer: str, sources: Mapping[str, Source]
    ) -> PublishResult:
        """Answer a publish offer (RFC 8829 5.3) and register its tracks with the forwarder."""
        desc = SessionDescription.parse(offer)
        now = self._now()
        r = self._room(room)
        try:
            return self._publish(r, participant, desc, sources, now)
        finally:
            self._forget_if_empty(r)
            self._flush_rtcp(r)
            self._rearm()

    def _publish(
        self,
        room: Room,
        participant: str,
        desc: SessionDescription,
        sources: Mapping[str, Source],
        now: float,
    ) -> PublishResult:
        params = desc.transport()
        if not params.ice_ufrag or not params.ice_pwd:
            raise SdpNegotiationError("offer has no ICE credentials")
        p = room.participants.get(participant)
        peer = p.publish if p is not None else None
        removed: list[str] = []
        fingerprints = [(f.algorithm, f.value) for f in params.fingerprints]
        fresh = (
            peer is None
            or peer.transport.state in TERMINAL
            or _new_connection(peer.transport, params.ice_ufrag, params.ice_pwd, fingerprints)
        )
        if fresh:
            peer = self._new_peer(room, participant, "publish", now)
        assert peer is not None
        if not fresh and _ice_restart(peer.transport, params.ice_ufrag, params.ice_pwd):
            _restart_ice(peer, self.tables.by_ufrag, now)
            self.tables.paths["ice_restart"] += 1
        try:
            try:
                # A renegotiation repeats the same parameters (a no-op); after
                # an ICE restart the peer's new credentials are taken.
                peer.transport.set_remote(
                    params.ice_ufrag,
                    params.ice_pwd,
                    fingerprints,
                    str(params.setup or Setup.ACTPASS),
                    now,
                )
            except (DtlsError, SfuStateError) as exc:
                raise SdpNegotiationError(str(exc)) from exc
            local = peer.local
            if not fresh:
                local.session_version += 1
            answered = answer(desc, local)
            parsed = parse_tracks(desc, answered)
            self._check_ssrcs(room, peer, parsed)
        except BaseException:
            if fresh:
                self._discard_new_peer(peer)
            raise
        p = self._participant(room, participant)
        if fresh:
            old = p.publish
            if old is not None:
                removed = [t.info.track_id for t in old.tracks.values()]
                self._close_peer(old, "replaced by a new publish transport")
            p.publish = peer

        added: list[TrackInfo] = []
        seen: set[str] = set()
        for item in parsed:
            seen.add(item.mid)
            existing = peer.tracks.get(item.mid)
            if existing is not None and (
                existing.info.rids == item.rids if item.rids else existing.ssrc == item.ssrc
            ):
                continue
            if existing is not None:
                removed.append(existing.info.track_id)
                self._remove_track(room, existing)
            added.append(self._add_track(room, peer, item, sources).info)
        for mid, track in list(peer.tracks.items()):
            if mid not in seen:
                removed.append(track.info.track_id)
                self._remove_track(room, track)
        if added:
            self._start_bandwidth_feedback(peer, now)
        log.info(
            "%s/%s publish negotiated: added %s, removed %s",
            room.name,
            participant,
            [t.track_id for t in added],
            removed,
            extra={
                "room": room.name,
                "participant": participant,
                "added": [t.track_id for t in added],
                "removed": removed,
            },
        )
        return PublishResult(answer=str(answered), added=added, removed=removed)

    def _discard_new_peer(self, peer: Peer) -> None:
        peer.transport.close("negotiation failed")
        peer.transport.datagrams_to_send()
        self.tables.peers.discard(peer)
        if self.tables.by_ufrag.get(peer.transport.local_ufrag) is peer:
            del self.tables.by_ufrag[peer.transport.local_ufrag]

    def _check_ssrcs(self, room: Room, peer: Peer, parsed: list[OfferedTrack]) -> None:
        """Refuse SSRCs another track of the room routes (RFC 3550 8.2 collision) before
        anything changes; this offer's own tracks, kept or replaced, do not count."""
        taken: dict[int, Track] = {}
        for track in room.tracks.values():
            if track.publisher is peer:
                continue
            taken[track.ssrc] = track
            if track.rtx_ssrc is not None:
                taken[track.rtx_ssrc] = track
        seen: set[int] = set()
        for item in parsed:
            for ssrc in (item.ssrc, item.rtx_ssrc):
                if not ssrc:
                    continue
                if ssrc in taken or ssrc in seen:
                    raise SdpNegotiationError(f"SSRC {ssrc} is already in use in this room")
                seen.add(ssrc)

    def _add_track(
        self, room: Room, peer: Peer, item: OfferedTrack, sources: Mapping[str, Source]
    ) -> Track:
        default: Source = "microphone" if item.kind == "audio" else "camera"
        source = sources.get(item.mid, default)
        track_id = _new_id("t-", room.tracks)
        info = TrackInfo(track_id, peer.participant, item.kind, source, item.mid, rids=item.rids)
        if item.rids:
            return self._add_simulcast_track(room, peer, item, info)
        room.forwarder.add_track(
            peer,
            item.ssrc,
            kind=item.kind,
            codec=item.codec.name or "",
            clock_rate=item.codec.clock_rate,
            rtx_ssrc=item.rtx_ssrc,
            rtx_payload_types=item.rtx_payload_types,
            extensions=item.extensions,
            nack=item.nack,
            fir=item.fir,
            red_payload_type=None if item.red is None else item.red.payload_type,
        )
        track = Track(
            info, peer, item.ssrc, item.rtx_ssrc, item.codec, item.rtx, dict(item.extensions)
        )
        track.red = item.red
        room.tracks[track_id] = track
        peer.tracks[item.mid] = track
        stats = ReceiveStatistics(item.ssrc, item.codec.clock_rate)
        peer.recv_stats[item.ssrc] = stats
        if peer.reporting:
            self.tables.reports.add_receive(peer, stats)
        level_id = item.extensions.get(AUDIO_LEVEL)
        if item.kind == "audio" and level_id:
            peer.levels[item.ssrc] = level_id
        return track

    def _add_simulcast_track(
        self, room: Room, peer: Peer, item: OfferedTrack, info: TrackInfo
    ) -> Track:
        """A simulcast track: a forwarder group under an id no packet uses;
        its layers' SSRCs are learnt from the first packets (sfu.layers)."""
        taken = {t.ssrc for t in room.tracks.values()} | {
            t.rtx_ssrc for t in room.tracks.values() if t.rtx_ssrc
        }
        gid = _new_ssrc(taken)
        room.forwarder.add_group(
            peer,
            gid,
            len(item.rids),
            codec=item.codec.name or "",
            clock_rate=item.codec.clock_rate,
            rtx_payload_types=item.rtx_payload_types,
            extensions=item.extensions,
            nack=item.nack,
            fir=item.fir,
        )
        track = Track(info, peer, gid, None, item.codec, item.rtx, dict(item.extensions))
        now = self._now()
        track.layers = [LayerInfo(rid, now) for rid in item.rids]
        room.tracks[info.track_id] = track
        peer.tracks[item.mid] = track
        peer.rid_tracks[item.mid] = track
        return track

    async def subscribe(
        self,
        room: str,
        participant: str,
        track_ids: Sequence[str],
        restart: Restart | None = None,
    ) -> str | None:
        """Offer exactly ``track_ids`` on the participant's subscribe transport (RFC 8829 5.2).

        Returns None when nothing changed (or the participant receives nothing
        and has no subscribe transport yet). Forwarding of dropped tracks stops
        at once; their sections stay, stopped (see :class:`Section`), so mids
        line up. Each new track gets a new section at the end, with a new SSRC.
        ``restart="ice"`` offers new ICE credentials on the same transport
        (RFC 8445 section 9: DTLS, SRTP, SSRCs and layers stay);
        ``restart="transport"`` closes the transport and offers on a new one.
        Raises SfuStateError for an unknown track, the participant's own
        track, or while the previous offer is unanswered.
        """
        now = self._now()
        r = self._room(room)
        try:
            return self._subscribe(r, participant, list(dict.fromkeys(track_ids)), now, restart)
        finally:
            self._forget_if_empty(r)
            self._flush_rtcp(r)
            self._rearm()

    def _subscribe(
        self,
        room: Room,
        participant: str,
        wanted: list[str],
        now: float,
        restart: Restart | None = None,
    ) -> str | None:
        tracks: list[Track] = []
        for track_id in wanted:
            track = room.tracks.get(track_id)
            if track is None:
                raise SfuStateError(f"no track {track_id!r} in room {room.name!r}")
            if track.info.participant == participant:
                raise SfuStateError(f"{participant!r} cannot subscribe to its own track")
            tracks.append(track)
        p = room.participants.get(participant)
        peer = p.subscribe if p is not None else None
        if peer is not None and (peer.transport.state in TERMINAL or restart == "transport"):
            # Its client needs a new peer connection: start over, whatever
            # offer the old transport still had outstanding.
            self._close_peer(peer, "replaced")
            assert p is not None
            p.subscribe = peer = None
        if peer is not None and peer.pending_offer:
            raise SfuStateError("the last subscribe offer is not answered yet")
        if peer is None and not tracks:
            return None

        changed = False
        if peer is None:
            peer = self._new_peer(room, participant, "subscribe", now)
            self._participant(room, participant).subscribe = peer
        elif restart == "ice" and peer.transport.dtls is not None:
            _restart_ice(peer, self.tables.by_ufrag, now)
            self.tables.paths["ice_restart"] += 1
            changed = True
        wanted_set = set(wanted)
        current: set[str] = set()
        for index, section in enumerate(peer.sections):
            if not section.live:
                continue
            track = section.track
            if track.live and track.info.track_id in wanted_set:
                current.add(track.info.track_id)
                continue
            # Unsubscribed or unpublished: the section stays, stopped or parked.
            if section.subscribed:
                with contextlib.suppress(SfuStateError):
                    peer.forwarder.unsubscribe(peer, track.ssrc)
                section.subscribed = False
                self._end_send(peer, section, now)
            section.stop(index == 0)
            changed = True
        for track in tracks:
            if track.info.track_id not in current:
                peer.sections.append(self._new_section(peer, track))
                changed = True
        if not changed:
            return None
        peer.local.session_version += 1
        offer = offer_for_subscriber([s.forwarded for s in peer.sections], peer.local)
        for section, media in zip(peer.sections, offer.media, strict=True):
            if section.parked:
                media.direction = Direction.INACTIVE
                media.msids = []
                media.ssrcs = []
                media.ssrc_groups = []
            elif media.port == 0:
                # aiortc (our Python client) refuses any m= section without ICE
                # credentials, stopped ones included; browsers ignore them there.
                media.ice_ufrag = peer.local.ice_ufrag
                media.ice_pwd = peer.local.ice_pwd
                media.fingerprints = list(peer.local.fingerprints)
                media.setup = Setup.ACTPASS
        peer.pending_offer = True
        log.info(
            "%s offers %s",
            peer,
            [(x.forwarded.mid, x.track.info.track_id, x.live) for x in peer.sections],
        )
        return str(offer)

    def _new_section(self, peer: Peer, track: Track) -> Section:
        mid = str(peer.next_mid)
        peer.next_mid += 1
        used: dict[int, tuple[object, ...]] = {}
        for section in peer.sections:
            if section.forwarded.stopped:
                continue
            f = section.forwarded
            used[f.codec.payload_type] = _meaning(f.kind, f.codec)
            if f.rtx is not None:
                used[f.rtx.payload_type] = _meaning(f.kind, f.rtx)
            if f.red is not None:
                used[f.red.payload_type] = _meaning(f.kind, f.red)
        kind = track.info.kind
        feedback_ok = {"nack", "ccm", "goog-remb"}
        extmaps: list[Extmap] = []
        for uri in _FORWARDED_EXTENSIONS:
            if uri not in track.extensions or (uri == AUDIO_LEVEL and kind != "audio"):
                continue
            extmaps.append(Extmap(_extension_id(peer.ext_ids, uri, track.extensions[uri]), uri))
            if uri == TRANSPORT_CC:
                feedback_ok.add("transport-cc")
        codec = replace(
            track.codec,
            feedback=[
                RtcpFeedback(f.type, f.parameter)
                for f in track.codec.feedback
                if f.type in feedback_ok
            ],
        )
        media_pt = _payload_type(used, _meaning(kind, codec), codec.payload_type)
        codec = replace(codec, payload_type=media_pt)
        used[media_pt] = _meaning(kind, codec)
        rtx: Codec | None = None
        rtx_ssrc: int | None = None
        if track.rtx is not None and (track.rtx_ssrc is not None or track.layers):
            rtx = replace(track.rtx, fmtp=f"apt={media_pt}", feedback=[])
            rtx_pt = _payload_type(used, _meaning(kind, rtx), track.rtx.payload_type)
            rtx = replace(rtx, payload_type=rtx_pt)
            rtx_ssrc = _new_ssrc(peer.ssrcs)
        red: Codec | None = None
        if self.red and track.red is not None and media_pt == track.codec.payload_type:
            # Only under the publisher's own Opus payload type: the RED blocks
            # name it, and the forwarder passes them on unchanged.
            red = replace(track.red, fmtp=f"{media_pt}/{media_pt}", feedback=[])
            red_pt = _payload_type(used, _meaning(kind, red), track.red.payload_type)
            red = replace(red, payload_type=red_pt)
            used[red_pt] = _meaning(kind, red)
        ssrc = _new_ssrc(peer.ssrcs)
        forwarded = ForwardedTrack(
            kind=kind,
            mid=mid,
            stream_id=track.info.participant,
            track_id=track.info.track_id,
            ssrc=ssrc,
            codec=codec,
            rtx_ssrc=rtx_ssrc,
            rtx=rtx,
            extensions=extmaps,
            cname=track.info.participant,
            red=red,
        )
        return Section(track, forwarded, {track.codec.payload_type: media_pt})

    async def answer(self, room: str, participant: str, sdp: str) -> None:
        """Take the subscriber's answer (RFC 3264 section 6): transport and negotiated formats."""
        desc = SessionDescription.parse(sdp)
        r = self.tables.rooms.get(room)
        p = r.participants.get(participant) if r is not None else None
        peer = p.subscribe if p is not None else None
        if r is None or peer is None or not peer.pending_offer:
            raise SfuStateError("no subscribe offer is waiting for an answer")
        now = self._now()
        params = desc.transport()
        if not params.ice_ufrag or not params.ice_pwd:
            raise SdpNegotiationError("answer has no ICE credentials")
        if not params.fingerprints:
            raise SdpNegotiationError("answer has no DTLS fingerprint")
        if params.setup not in (Setup.ACTIVE, Setup.PASSIVE):
            raise SdpNegotiationError(
                f"an answer's a=setup must be active or passive, not {params.setup}"
            )
        try:
            peer.transport.set_remote(
                params.ice_ufrag,
                params.ice_pwd,
                [(f.algorithm, f.value) for f in params.fingerprints],
                str(params.setup),
                now,
            )
        except (DtlsError, SfuStateError) as exc:
            raise SdpNegotiationError(str(exc)) from exc
        for index, section in enumerate(peer.sections):
            if not section.live or section.negotiated:
                continue
            self._negotiate(section, desc.media_by_mid(section.forwarded.mid), index == 0)
        peer.pending_offer = False
        log.info(
            "%s answered: %s",
            peer,
            [(x.forwarded.mid, x.negotiated, x.live) for x in peer.sections],
        )
        self._service(peer)
        if peer.transport.state is PeerState.CONNECTED:
            self._apply_subscriptions(peer, now)
        self._flush_rtcp(r)
        self._rearm()

    def _negotiate(self, section: Section, media: MediaDescription | None, first: bool) -> None:
        forwarded = section.forwarded
        accepted = {c.payload_type for c in media.codecs} if media is not None else set()
        if (
            media is None
            or media.port == 0
            or media.direction in (Direction.SENDONLY, Direction.INACTIVE)
            or forwarded.codec.payload_type not in accepted
        ):
            # Refused (no common codec, or the client stopped it): keep it stopped.
            section.stop(first)
            return
        section.negotiated = True
        offered = {e.uri for e in forwarded.extensions}
        section.sub_extensions = {e.uri: e.id for e in media.extmaps if e.uri in offered}
        rtx = forwarded.rtx
        section.use_rtx = (
            rtx is not None and forwarded.rtx_ssrc is not None and rtx.payload_type in accepted
        )
        section.rtx_map = (
            {forwarded.codec.payload_type: rtx.payload_type}
            if section.use_rtx and rtx is not None
            else {}
        )
        # RED goes as it is only if the answer kept it; else the forwarder
        # cuts each RED packet to its Opus block (sfu.forward).
        red = forwarded.red
        track_red = section.track.red
        if red is not None and track_red is not None and red.payload_type in accepted:
            section.pt_map[track_red.payload_type] = red.payload_type

    def _apply_subscriptions(self, peer: Peer, now: float) -> None:
        forwarder = peer.forwarder
        for section in peer.sections:
            track = section.track
            if not section.live or not section.negotiated or section.subscribed or not track.live:
                continue
            forwarded = section.forwarded
            sub = forwarder.subscribe(
                peer,
                track.ssrc,
                now,
                ssrc=forwarded.ssrc,
                payload_types=section.pt_map,
                extensions=section.sub_extensions,
                rtx_ssrc=forwarded.rtx_ssrc if section.use_rtx else None,
                rtx_payload_types=section.rtx_map,
            )
            section.subscribed = True
            source: ReceiveStatistics | None = track.publisher.recv_stats.get(track.ssrc)
            if track.layers:
                source = cast(ReceiveStatistics, _LayerSource(sub, track))
            if peer.reporting and source is not None:
                # SRs carry the publisher's NTP/RTP pairing through this
                # subscription's timestamp offset, under the CNAME its offer
                # gave the SSRC, so the subscriber lip-syncs the participant.
                self.tables.reports.add_send(
                    peer,
                    SendStatistics(sub, source, _offset_of(sub), cname=forwarded.cname or ""),
                )

    async def set_muted(self, room: str, track_id: str, muted: bool) -> None:
        """Stop or resume forwarding a track; resuming video waits for a keyframe (requested)."""
        r = self.tables.rooms.get(room)
        track = r.tracks.get(track_id) if r is not None else None
        if r is None or track is None:
            raise SfuStateError(f"no track {track_id!r} in room {room!r}")
        now = self._now()
        r.forwarder.set_muted(track.ssrc, muted, now)
        track.info = replace(track.info, muted=muted)
        level_id = track.extensions.get(AUDIO_LEVEL)
        if track.info.kind == "audio" and level_id:
            # A muted participant must not become the active speaker.
            if muted:
                track.publisher.levels.pop(track.ssrc, None)
            else:
                track.publisher.levels[track.ssrc] = level_id
        self._flush_rtcp(r)
        self._rearm()

    async def unpublish(self, room: str, participant: str, track_id: str) -> None:
        """Forget a track and every subscription to it.

        Subscribers' sections for it stop with their next offer."""
        r = self.tables.rooms.get(room)
        track = r.tracks.get(track_id) if r is not None else None
        if r is None or track is None or track.info.participant != participant:
            raise SfuStateError(f"{participant!r} publishes no track {track_id!r} in {room!r}")
        self._remove_track(r, track)
        self._rearm()

    async def leave(self, room: str, participant: str) -> None:
        """Close the participant's transports, forget its tracks and subscriptions (idempotent)."""
        r = self.tables.rooms.get(room)
        if r is None:
            return
        self._leave(r, participant, "left")
        self._forget_if_empty(r)
        self._rearm()

    async def close_room(self, room: str) -> None:
        """Everyone leaves and the room is forgotten (idempotent)."""
        self._close_room(room, "room closed")
        self._rearm()


# --- helpers --------------------------------------------------------------------------


class _LayerSource:
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


def _offset_of(sub: Subscription) -> Callable[[], int | None]:
    """The subscription's current RTP timestamp offset, read when a report is built."""
    rewriter = sub.rewriter
    return lambda: rewriter.timestamp_offset


def _new_connection(
    transport: PeerTransport, ufrag: str, pwd: str, fingerprints: list[tuple[str, str]]
) -> bool:
    """Whether an offer comes from another peer connection than ``transport``'s.

    New ICE credentials *and* a new certificate: the client made a new
    ``RTCPeerConnection`` (browsers make a certificate per connection), which
    gets a new transport. New credentials with the same certificate are an
    ICE restart (RFC 8445 section 9) on the old connection, which keeps its
    DTLS association (:func:`_ice_restart`).
    """
    ice = transport.ice
    if ice.remote_ufrag is None or (ice.remote_ufrag, ice.remote_pwd) == (ufrag, pwd):
        return False
    known = {(a.lower(), v.strip().upper()) for a, v in transport.remote_fingerprints}
    return not known & {(a.lower(), v.strip().upper()) for a, v in fingerprints}


def _ice_restart(transport: PeerTransport, ufrag: str, pwd: str) -> bool:
    """Whether an offer on ``transport``'s own peer connection (same certificate:
    :func:`_new_connection` said so) carries new ICE credentials: the client
    restarts ICE (RFC 8445 section 9, RFC 8839 section 4.4.1.1.1)."""
    ice = transport.ice
    if transport.dtls is None or ice.remote_ufrag is None:
        return False
    return (ice.remote_ufrag, ice.remote_pwd) != (ufrag, pwd)


def _restart_ice(peer: Peer, by_ufrag: dict[str, Peer], now: float) -> None:
    """New local ICE credentials on ``peer``'s transport, in its next SDP too.

    Checks reach the peer by either ufrag until the restart completes, when
    the worker forgets the old one (:class:`rtc.ice.CredentialsRetired`).
    """
    transport = peer.transport
    try:
        transport.restart_ice(now)
    except IceStateError as exc:
        raise SfuStateError(str(exc)) from exc
    by_ufrag[transport.local_ufrag] = peer
    peer.local.ice_ufrag = transport.local_ufrag
    peer.local.ice_pwd = transport.local_pwd
    log.info(
        "%s restarts ICE",
        peer,
        extra={
            "room": peer.room.name,
            "participant": peer.participant,
            "direction": peer.direction,
        },
    )


def _meaning(kind: str, codec: Codec) -> tuple[object, ...]:
    # What a payload type means within one BUNDLE group (RFC 8843 section 9.1).
    return (kind, (codec.name or "").lower(), codec.clock_rate, codec.channels, codec.fmtp)


def _payload_type(
    used: dict[int, tuple[object, ...]], meaning: tuple[object, ...], preferred: int
) -> int:
    """The publisher's payload type when free on this transport, else one that is."""
    for pt, m in used.items():
        if m == meaning:
            return pt
    if preferred not in used:
        return preferred
    for pt in _FREE_PAYLOAD_TYPES:
        if pt not in used:
            return pt
    raise SdpNegotiationError("no payload type left on this subscribe transport")


def _extension_id(ids: dict[str, int], uri: str, preferred: int) -> int:
    """One id per URI on a transport (RFC 8285 section 5), the publisher's when free."""
    known = ids.get(uri)
    if known is not None:
        return known
    taken = set(ids.values())
    ident = preferred if 0 < preferred < 15 and preferred not in taken else None
    if ident is None:
        ident = next((i for i in range(1, 15) if i not in taken), None)
    if ident is None:
        raise SdpNegotiationError("no header extension id left on this subscribe transport")
    ids[uri] = ident
    return ident


def _new_ssrc(taken: set[int]) -> int:
    while True:
        ssrc = secrets.randbits(32)
        if ssrc and ssrc not in taken:
            taken.add(ssrc)
            return ssrc


def _new_id(prefix: str, taken: Iterable[str]) -> str:
    existing = set(taken)
    while True:
        ident = prefix + secrets.token_hex(4)
        if ident not in existing:
            return ident
