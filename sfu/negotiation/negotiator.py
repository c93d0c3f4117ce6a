"""The control side of a media worker: rooms, transports, offer/answer.

:class:`Negotiator` is what signalling's
:class:`sfu.control.messages.MediaControl` calls reach (through
:class:`sfu.node.worker.MediaWorker`, which awaits nothing around them): it
creates and closes each participant's transports, negotiates them (RFC 8829
offer/answer, one RFC 8843 BUNDLE transport per leg), registers tracks and
subscriptions with the room's :class:`~sfu.forward.forwarder.Forwarder`, and
acts on what each transport reports (addresses validated, connected, failed).
It works on the worker's :class:`~sfu.rooms.records.WorkerTables` and holds the
worker's :class:`~sfu.layers.choice.Layers`.

Everything reaches it through one verb, ``receive(input, now)``
(:mod:`sfu.rooms.inputs`): the MediaControl calls
(:class:`~sfu.rooms.inputs.Publish`, :class:`~sfu.rooms.inputs.Subscribe`,
...), a transport's STUN and DTLS (:class:`~sfu.rooms.inputs.PeerDatagram`), a
path that moved, a new active speaker; the transports' timers run through
:meth:`Negotiator.due` and :meth:`Negotiator.handle_timer`. What it wants done
(datagrams and RTCP to send, events, timers) it queues as
:mod:`sfu.rooms.actions` for the worker to take
(:meth:`Negotiator.take_actions`) and carry out.

Each participant has a *publish* transport (the client offers, we answer) and a
*subscribe* transport (we offer, the client answers), see
:mod:`sfu.control.messages`. A subscription is handed to the forwarder only
once the subscriber's transport is connected: the keyframe it asks for on
subscribing must not be spent before the subscriber can decrypt it.

Nothing here touches the socket, the event loop or the clock (ruff's TID251
holds it to that): every verb is given ``now``."""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, cast

from rtc.dtls import DtlsCertificate
from rtc.errors import DtlsError, IceStateError, SdpNegotiationError
from rtc.ice import (
    Address,
    CredentialsRetired,
    ForgottenAddress,
    SelectedAddress,
    ValidatedAddress,
)
from rtc.machine import earliest
from rtc.sdp.attributes import AUDIO_LEVEL, TRANSPORT_CC, Direction
from rtc.sdp.session import SessionDescription
from rtc.sdp.transport import Fingerprint, Setup
from sfu.control.messages import (
    ActiveSpeaker,
    PublishResult,
    Restart,
    Source,
    TrackInfo,
    TransportState,
)
from sfu.errors import SfuStateError
from sfu.feedback.bandwidth import RembEstimator, TransportCcRecorder
from sfu.feedback.receiving import ReceiveStatistics
from sfu.feedback.sending import SendStatistics
from sfu.feedback.speaker import SpeakerDetector
from sfu.forward import native
from sfu.forward.forwarder import Forwarder
from sfu.forward.table import ForwarderStats, Subscription
from sfu.layers.choice import Layers, LayerSource
from sfu.negotiation.sections import negotiate, new_section, new_ssrc
from sfu.rooms.actions import Arm, ArmRtcp, Emit, FlushRtcp, Rearm, Send, SendRtcp
from sfu.rooms.inputs import (
    Answer,
    CloseRoom,
    Core,
    Leave,
    PathMoved,
    PeerDatagram,
    Publish,
    SetMuted,
    SpeakerChanged,
    Subscribe,
    Unpublish,
)
from sfu.rooms.records import (
    LayerInfo,
    Leg,
    Participant,
    Peer,
    Room,
    Section,
    Track,
    WorkerTables,
    bind_srtp,
)
from sfu.transport.offer_answer import LocalParameters, answer, offer_for_subscriber
from sfu.transport.offered import OfferedTrack, parse_tracks
from sfu.transport.peer import (
    TERMINAL,
    PeerState,
    PeerStateChanged,
    PeerTransport,
)

__all__ = ["Negotiator"]

log = logging.getLogger("wadud.sfu.worker")


class Negotiator(Core):
    """Rooms, transports and offer/answer of one media worker (see the module docstring).

    ``candidates`` gives the worker's host candidates (known once its socket
    is bound); the other settings are :class:`sfu.node.worker.MediaWorker`'s.
    """

    def __init__(
        self,
        tables: WorkerTables,
        layers: Layers,
        *,
        certificate: DtlsCertificate,
        candidates: Callable[[], list[Address]],
        consent_timeout: float,
        connect_timeout: float,
        forwarder_options: dict[str, Any],
        simulcast: bool,
        red: bool,
        feedback_ssrc: int,
        remb_max_bitrate: int,
    ) -> None:
        self.tables = tables
        self.layers = layers
        self.certificate = certificate
        self.candidates = candidates
        self.consent_timeout = consent_timeout
        self.connect_timeout = connect_timeout
        self.forwarder_options = forwarder_options
        self.simulcast = simulcast
        self.red = red
        self.feedback_ssrc = feedback_ssrc
        self.remb_max_bitrate = remb_max_bitrate
        self._fingerprint = certificate.fingerprint("sha-256")
        super().__init__()

    def _pass_on_layers(self) -> None:
        """Queue what the layers core wants done, where it wanted it."""
        self._out += self.layers.take_actions()

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
            addresses=self.candidates(),
            simulcast=self.simulcast and direction == "publish",
            red=self.red,
        )
        peer = Peer(room, participant, direction, transport, local)
        self.tables.peers.add(peer)
        self.tables.by_ufrag[transport.local_ufrag] = peer
        return peer

    def _close_peer(self, peer: Peer, reason: str, now: float) -> None:
        if peer.transport.state not in TERMINAL:
            peer.transport.close(reason)
            self._service(peer, now)
        if peer.direction == "subscribe":
            peer.forwarder.remove_subscriber(peer)
        else:
            for track in list(peer.tracks.values()):
                self.remove_track(peer.room, track, now)

    # -- events ------------------------------------------------------------------------------

    def _speaker_changed(self, room: Room, speaker: str | None) -> None:
        """The room's speaker detector chose ``speaker``: tell listeners if it is news."""
        if speaker == room.speaker_sent:
            return
        room.speaker_sent = speaker
        self._out.append(Emit(ActiveSpeaker(room.name, speaker)))

    # -- rooms ----------------------------------------------------------------------------

    def room(self, name: str) -> Room:
        """The room called ``name``, made now if the worker has none."""
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

    def forget_if_empty(self, room: Room) -> None:
        """Forget a room no participant and no relay link uses; its counters go to the totals."""
        if room.participants or room.relays or self.tables.rooms.get(room.name) is not room:
            return
        del self.tables.rooms[room.name]
        self._add_totals(room.forwarder.stats)

    def _add_totals(self, stats: ForwarderStats) -> None:
        for name, value in stats.as_dict().items():
            self.tables.totals[name] += value

    def _leave(self, room: Room, participant: str, reason: str, now: float) -> None:
        self.layers.left(room, participant)
        self._pass_on_layers()
        p = room.participants.pop(participant, None)
        if p is None:
            return
        for peer in (p.publish, p.subscribe):
            if peer is not None:
                self._close_peer(peer, reason, now)
        self.speaker_left(room, participant, now)

    def speaker_left(self, room: Room, participant: str, now: float) -> None:
        """A participant (local, or remote behind a relay link) has no audio here any more."""
        change = room.speaker.remove(participant, now)
        if change is not None:
            self._speaker_changed(room, cast(str | None, change.speaker))

    def remove_track(self, room: Room, track: Track, now: float) -> None:
        """A track ends: forwarding, reports, relay links and subscriptions forget it."""
        if not track.live:
            return
        track.live = False
        with contextlib.suppress(SfuStateError):
            room.forwarder.remove_track(track.ssrc)
        room.tracks.pop(track.info.track_id, None)
        if room.relays:
            self._unrelay(room, track)
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
        for p in room.participants.values():
            sub = p.subscribe
            if sub is not None:
                for section in sub.sections:
                    if section.track is track and section.subscribed:
                        section.subscribed = False
                        self._end_send(sub, section, now)

    def _unrelay(self, room: Room, track: Track) -> None:
        """A local track ended: forget it on every relay link it went over
        (:mod:`sfu.node.links`)."""
        for relay in room.relays.values():
            entry = relay.sent.get(track.info.track_id)
            if entry is None or entry[1] is not track:
                continue
            relay.sent.pop(track.info.track_id)
            relay.subscribed.discard(track.info.track_id)
            relayed = entry[0]
            self.tables.reports.remove_send(relay.egress, relayed.ssrc)
            relay.outgoing.pop(relayed.ssrc, None)
            if relayed.rtx_ssrc is not None:
                relay.outgoing.pop(relayed.rtx_ssrc, None)

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
                self._out.append(SendRtcp(peer, compound))
        self.tables.reports.remove_send(peer, forwarded.ssrc)

    # -- inputs (sfu.rooms.inputs): MediaControl calls ---------------------------------------------

    def _handle_publish(self, command: Publish, now: float) -> PublishResult:
        """Answer a publish offer (RFC 8829 5.3) and register its tracks with the forwarder."""
        desc = SessionDescription.parse(command.offer)
        r = self.room(command.room)
        try:
            return self._publish(r, command.participant, desc, command.sources, now)
        finally:
            self.forget_if_empty(r)
            self._out += (FlushRtcp(r), Rearm())

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
            or peer.transport.is_new_connection(params.ice_ufrag, params.ice_pwd, fingerprints)
        )
        if fresh:
            peer = self._new_peer(room, participant, "publish", now)
        assert peer is not None
        if not fresh and peer.transport.restarts_ice(params.ice_ufrag, params.ice_pwd):
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
                self._close_peer(old, "replaced by a new publish transport", now)
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
                self.remove_track(room, existing, now)
            added.append(self._add_track(room, peer, item, sources, now).info)
        for mid, track in list(peer.tracks.items()):
            if mid not in seen:
                removed.append(track.info.track_id)
                self.remove_track(room, track, now)
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
        taken = room.ssrcs_in_use(but=peer)
        seen: set[int] = set()
        for item in parsed:
            for ssrc in (item.ssrc, item.rtx_ssrc):
                if not ssrc:
                    continue
                if ssrc in taken or ssrc in seen:
                    raise SdpNegotiationError(f"SSRC {ssrc} is already in use in this room")
                seen.add(ssrc)

    def _add_track(
        self,
        room: Room,
        peer: Peer,
        item: OfferedTrack,
        sources: Mapping[str, Source],
        now: float,
    ) -> Track:
        default: Source = "microphone" if item.kind == "audio" else "camera"
        source = sources.get(item.mid, default)
        track_id = _new_id("t-", room.tracks)
        info = TrackInfo(track_id, peer.participant, item.kind, source, item.mid, rids=item.rids)
        if item.rids:
            return self._add_simulcast_track(room, peer, item, info, now)
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
        self, room: Room, peer: Peer, item: OfferedTrack, info: TrackInfo, now: float
    ) -> Track:
        """A simulcast track: a forwarder group under an id no packet uses;
        its layers' SSRCs are learnt from the first packets (sfu.layers.choice)."""
        gid = new_ssrc(room.ssrcs_in_use())
        room.forwarder.simulcast.add_group(
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
        track.layers = [LayerInfo(rid, now) for rid in item.rids]
        room.tracks[info.track_id] = track
        peer.tracks[item.mid] = track
        peer.rid_tracks[item.mid] = track
        return track

    def _handle_subscribe(self, command: Subscribe, now: float) -> str | None:
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
        r = self.room(command.room)
        wanted = list(dict.fromkeys(command.track_ids))
        try:
            return self._subscribe(r, command.participant, wanted, now, command.restart)
        finally:
            self.forget_if_empty(r)
            self._out += (FlushRtcp(r), Rearm())

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
            self._close_peer(peer, "replaced", now)
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
                peer.sections.append(new_section(peer, track, self.red))
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

    def _handle_answer(self, command: Answer, now: float) -> None:
        """Take the subscriber's answer (RFC 3264 section 6): transport and negotiated formats."""
        desc = SessionDescription.parse(command.sdp)
        r = self.tables.rooms.get(command.room)
        p = r.participants.get(command.participant) if r is not None else None
        peer = p.subscribe if p is not None else None
        if r is None or peer is None or not peer.pending_offer:
            raise SfuStateError("no subscribe offer is waiting for an answer")
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
            negotiate(section, desc.media_by_mid(section.forwarded.mid), index == 0)
        peer.pending_offer = False
        log.info(
            "%s answered: %s",
            peer,
            [(x.forwarded.mid, x.negotiated, x.live) for x in peer.sections],
        )
        self._service(peer, now)
        if peer.transport.state is PeerState.CONNECTED:
            self.apply_subscriptions(peer, now)
        self._out += (FlushRtcp(r), Rearm())

    def apply_subscriptions(self, peer: Peer, now: float) -> None:
        """Hand a connected subscriber's negotiated sections to the forwarder."""
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
                source = cast(ReceiveStatistics, LayerSource(sub, track))
            if peer.reporting and source is not None:
                # SRs carry the publisher's NTP/RTP pairing through this
                # subscription's timestamp offset, under the CNAME its offer
                # gave the SSRC, so the subscriber lip-syncs the participant.
                self.tables.reports.add_send(
                    peer,
                    SendStatistics(sub, source, _offset_of(sub), cname=forwarded.cname or ""),
                )
        self.layers.subscribed(peer, now)
        self._pass_on_layers()

    def _handle_set_muted(self, command: SetMuted, now: float) -> None:
        """Stop or resume forwarding a track; resuming video waits for a keyframe (requested)."""
        r = self.tables.rooms.get(command.room)
        track = r.tracks.get(command.track_id) if r is not None else None
        if r is None or track is None:
            raise SfuStateError(f"no track {command.track_id!r} in room {command.room!r}")
        muted = command.muted
        r.forwarder.set_muted(track.ssrc, muted, now)
        track.info = replace(track.info, muted=muted)
        level_id = track.extensions.get(AUDIO_LEVEL)
        if track.info.kind == "audio" and level_id:
            # A muted participant must not become the active speaker.
            if muted:
                track.publisher.levels.pop(track.ssrc, None)
            else:
                track.publisher.levels[track.ssrc] = level_id
        self._out += (FlushRtcp(r), Rearm())

    def _handle_unpublish(self, command: Unpublish, now: float) -> None:
        """Forget a track and every subscription to it.

        Subscribers' sections for it stop with their next offer."""
        room, participant, track_id = command.room, command.participant, command.track_id
        r = self.tables.rooms.get(room)
        track = r.tracks.get(track_id) if r is not None else None
        if r is None or track is None or track.info.participant != participant:
            raise SfuStateError(f"{participant!r} publishes no track {track_id!r} in {room!r}")
        self.remove_track(r, track, now)
        self._out.append(Rearm())

    def _handle_leave(self, command: Leave, now: float) -> None:
        """Close the participant's transports, forget its tracks and subscriptions (idempotent)."""
        r = self.tables.rooms.get(command.room)
        if r is None:
            return
        self._leave(r, command.participant, "left", now)
        self.forget_if_empty(r)
        self._out.append(Rearm())

    def _handle_close_room(self, command: CloseRoom, now: float) -> None:
        """Everyone leaves; the room is forgotten unless a relay link still
        uses it, which the links core ends on the same input (idempotent)."""
        room = self.tables.rooms.get(command.room)
        if room is None:
            return
        for participant in list(room.participants):
            self._leave(room, participant, command.reason, now)
        self.forget_if_empty(room)
        self._out.append(Rearm())

    # -- what the worker's socket and timers bring ----------------------------------------

    def _handle_peer_datagram(self, datagram: PeerDatagram, now: float) -> None:
        """A STUN or DTLS datagram for a peer's transport (RFC 7983 section 7)."""
        transport = datagram.peer.transport
        transport.receive_datagram(datagram.data, datagram.addr, now)
        self._service(datagram.peer, now)
        due = transport.get_timer()
        if due is not None:
            self._out.append(Arm(due))

    def _handle_path_moved(self, moved: PathMoved, now: float) -> None:
        """Authenticated media came from another address: the peer's path is
        there now (a NAT rebinding, or the peer changed pairs)."""
        if moved.peer.transport.rebind(moved.addr, now):
            self.tables.paths[moved.how] += 1
            self._service(moved.peer, now)

    def _handle_speaker_changed(self, change: SpeakerChanged, now: float) -> None:
        self._speaker_changed(change.room, change.speaker)

    handlers = {
        Publish: _handle_publish,
        Subscribe: _handle_subscribe,
        Answer: _handle_answer,
        SetMuted: _handle_set_muted,
        Unpublish: _handle_unpublish,
        Leave: _handle_leave,
        CloseRoom: _handle_close_room,
        PeerDatagram: _handle_peer_datagram,
        PathMoved: _handle_path_moved,
        SpeakerChanged: _handle_speaker_changed,
    }

    # -- timers ------------------------------------------------------------------------

    def due(self) -> float | None:
        """The transports' next deadline (ICE consent, DTLS retransmissions)."""
        return earliest(peer.transport.get_timer() for peer in self.tables.peers)

    def handle_timer(self, now: float) -> None:
        """Run the transports whose deadline has come, and act on what they report."""
        for peer in list(self.tables.peers):
            due = peer.transport.get_timer()
            if due is not None and due <= now:
                peer.transport.handle_timer(now)
                self._service(peer, now)

    # -- transport events ---------------------------------------------------------------

    def _service(self, peer: Peer, now: float) -> None:
        """Send what a transport wants sent and act on its events (after any
        input to it: a datagram, a timer, a close, new remote parameters)."""
        transport = peer.transport
        for datagram, addr in transport.datagrams_to_send():
            self._out.append(Send(datagram, addr))
        while (event := transport.next_event()) is not None:
            if isinstance(event, ValidatedAddress):
                self.tables.by_addr[event.address] = peer
                peer.addresses.add(event.address)
            elif isinstance(event, ForgottenAddress):
                if self.tables.by_addr.get(event.address) is peer:
                    del self.tables.by_addr[event.address]
                peer.addresses.discard(event.address)
            elif isinstance(event, SelectedAddress):
                moved = peer.addr is not None and peer.addr != event.address
                peer.addr = event.address
                if moved and transport.state is PeerState.CONNECTED:
                    self.tables.paths["moved"] += 1
                    self.layers.path_changed(peer, now)
                    if peer.direction == "subscribe":
                        # What the old path swallowed may be past repair by
                        # NACK: a keyframe lets the decoder start clean.
                        for section in peer.sections:
                            if section.subscribed and section.track.info.kind == "video":
                                peer.forwarder.request_keyframe(section.track.ssrc, now)
                        self._out.append(FlushRtcp(peer.room))
                    log.info(
                        "%s path moved to %s",
                        peer,
                        event.address,
                        extra={
                            "room": peer.room.name,
                            "participant": peer.participant,
                            "direction": peer.direction,
                            "address": event.address,
                        },
                    )
            elif isinstance(event, CredentialsRetired):
                if self.tables.by_ufrag.get(event.ufrag) is peer:
                    del self.tables.by_ufrag[event.ufrag]
                self.tables.paths["ice_restart_completed"] += 1
                if transport.state is PeerState.CONNECTED:
                    self._out.append(
                        Emit(
                            TransportState(
                                peer.room.name,
                                peer.participant,
                                peer.direction,
                                "connected",
                                "ICE restart completed",
                            )
                        )
                    )
            elif isinstance(event, PeerStateChanged):
                if event.new is PeerState.CONNECTED:
                    self._connected(peer, now)
                elif event.new in TERMINAL:
                    self._down(peer, event.new, event.reason)

    def _connected(self, peer: Peer, now: float) -> None:
        srtp = peer.transport.srtp
        assert srtp is not None  # CONNECTED means keyed
        peer.addr = peer.transport.remote
        bind_srtp(peer, srtp)
        log.info(
            "%s %s transport connected from %s",
            peer,
            srtp.profile,
            peer.addr,
            extra={
                "room": peer.room.name,
                "participant": peer.participant,
                "direction": peer.direction,
                "address": peer.addr,
                "profile": srtp.profile,
            },
        )
        self._out.append(
            Emit(TransportState(peer.room.name, peer.participant, peer.direction, "connected"))
        )
        # Reports start with the connection: before it nothing can be sent or received.
        if not peer.reporting:
            self.tables.reports.add_leg(peer, now)
            peer.reporting = True
            for stats in peer.recv_stats.values():
                self.tables.reports.add_receive(peer, stats)
        if peer.direction == "subscribe":
            self.apply_subscriptions(peer, now)
        else:
            self._start_bandwidth_feedback(peer, now)
            # Subscribers may have waited for this publisher: ask for keyframes now.
            for track in peer.tracks.values():
                if track.info.kind == "video" and track.live:
                    peer.forwarder.request_keyframe(track.ssrc, now)
        self._out.append(FlushRtcp(peer.room))
        self._out.append(ArmRtcp())
        due = peer.forwarder.get_timer()
        if due is not None:
            self._out.append(Arm(due))

    def _start_bandwidth_feedback(self, peer: Peer, now: float) -> None:
        """Give a connected publisher transport-cc feedback, else REMB, if it negotiated one.

        transport-cc (draft-holmer-rmcat-transport-wide-cc-extensions-01)
        needs both the rtcp-fb and the header extension; it is per transport
        (BUNDLE), so the first track that has it sets it up. REMB
        (draft-alvestrand-rmcat-remb-03) goes only to publishers without
        transport-cc: libwebrtc takes a REMB as a cap even when it runs its
        own transport-cc estimator. Called again as tracks are added, so a
        REMB estimator counts every video track.
        """
        if not peer.reporting:
            return  # again when it connects
        member = self.tables.bandwidth.get(peer)
        if member is None:
            for track in peer.tracks.values():
                ext_id = track.extensions.get(TRANSPORT_CC, 0)
                if ext_id and track.codec.has_feedback("transport-cc"):
                    recorder = TransportCcRecorder(self.feedback_ssrc, media_ssrc=track.ssrc)
                    peer.twcc, peer.twcc_id = recorder, ext_id
                    self.tables.bandwidth.add(peer, recorder, now)
                    self._out.append(ArmRtcp())
                    return
            if not any(
                t.info.kind == "video" and t.codec.has_feedback("goog-remb")
                for t in peer.tracks.values()
            ):
                return
            member = RembEstimator(self.feedback_ssrc, max_bitrate=self.remb_max_bitrate)
            self.tables.bandwidth.add(peer, member, now)
            self._out.append(ArmRtcp())
        if isinstance(member, RembEstimator):
            for track in peer.tracks.values():
                stats = peer.recv_stats.get(track.ssrc)
                if (
                    track.info.kind == "video"
                    and stats is not None
                    and track.ssrc not in member.sources
                ):
                    member.add_source(stats)

    def _down(self, peer: Peer, state: PeerState, reason: str) -> None:
        bind_srtp(peer, None)
        self.tables.reports.remove_leg(peer)
        self.tables.bandwidth.remove(peer)
        peer.reporting = False
        peer.twcc = None
        for address in peer.addresses:
            if self.tables.by_addr.get(address) is peer:
                del self.tables.by_addr[address]
        peer.addresses.clear()
        for ufrag in (peer.transport.local_ufrag, peer.transport.ice.previous_ufrag):
            if ufrag is not None and self.tables.by_ufrag.get(ufrag) is peer:
                del self.tables.by_ufrag[ufrag]
        self.tables.peers.discard(peer)
        for name, value in peer.transport.counters.items():
            self.tables.counters[f"transport_{name}"] += value
        if peer.direction == "subscribe":
            peer.forwarder.remove_subscriber(peer)
            self.layers.forget(peer)
            for section in peer.sections:
                section.subscribed = False
        level = logging.INFO if state is PeerState.CLOSED else logging.WARNING
        log.log(
            level,
            "%s transport %s: %s",
            peer,
            state.value,
            reason,
            extra={
                "room": peer.room.name,
                "participant": peer.participant,
                "direction": peer.direction,
                "reason": reason,
            },
        )
        self._out.append(
            Emit(
                TransportState(
                    peer.room.name,
                    peer.participant,
                    peer.direction,
                    "failed" if state is PeerState.FAILED else "closed",
                    reason,
                )
            )
        )


# --- helpers --------------------------------------------------------------------------


def _offset_of(sub: Subscription) -> Callable[[], int | None]:
    """The subscription's current RTP timestamp offset, read when a report is built."""
    rewriter = sub.rewriter
    return lambda: rewriter.timestamp_offset


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


def _new_id(prefix: str, taken: Iterable[str]) -> str:
    existing = set(taken)
    while True:
        ident = prefix + secrets.token_hex(4)
        if ident not in existing:
            return ident
