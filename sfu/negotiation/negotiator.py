"""The offer/answer side of a media worker: publish, subscribe, answer, tracks.

:class:`Negotiator` is what signalling's offer/answer calls of
:class:`sfu.control.messages.MediaControl` reach (through
:class:`sfu.node.worker.MediaWorker`, which awaits nothing around them): it
negotiates each participant's transports (RFC 8829 offer/answer, one RFC
8843 BUNDLE transport per leg), checks a publisher's SSRCs against the
room's, registers its tracks with the room's
:class:`~sfu.forward.forwarder.Forwarder`, builds a subscriber's m= sections
(:mod:`sfu.negotiation.sections`) and takes its answer; it mutes and ends
tracks. The transports themselves, and the rooms they are in, are the
:class:`~sfu.negotiation.transports.Transports` core it holds: it asks that
one for a new transport, an ICE restart, a transport closed, the
subscriptions handed to the forwarder.

Everything reaches it through one verb, ``receive(input, now)``
(:mod:`sfu.rooms.inputs`: :class:`~sfu.rooms.inputs.PublishOffer`,
:class:`~sfu.rooms.inputs.SetSubscriptions`, :class:`~sfu.rooms.inputs.SubscribeAnswer`,
:class:`~sfu.rooms.inputs.SetMuted`, :class:`~sfu.rooms.inputs.EndTrack`).
What it wants done itself (the room's RTCP flushed, the timer re-armed) it
queues as :mod:`sfu.rooms.actions`; what the transports and layers cores
it called want done they queue as theirs, and the worker takes each core's
(:meth:`Negotiator.take_actions`, ...) and carries them out.

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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace

from rtc.errors import DtlsError, SdpNegotiationError
from rtc.sdp.attributes import AUDIO_LEVEL, Direction
from rtc.sdp.session import SessionDescription
from rtc.sdp.transport import Setup
from sfu.control.messages import PublishResult, Restart, Source, TrackInfo
from sfu.errors import SfuStateError
from sfu.feedback.receiving import ReceiveStatistics
from sfu.negotiation.sections import negotiate, new_section, new_ssrc, slot_section
from sfu.negotiation.transports import Transports
from sfu.rooms.actions import FlushRtcp, Rearm
from sfu.rooms.inputs import (
    Core,
    EndTrack,
    PublishOffer,
    SetMuted,
    SetSubscriptions,
    SubscribeAnswer,
)
from sfu.rooms.records import LayerInfo, Leg, MediaRoom, Peer, Section, Track
from sfu.rooms.settings import WorkerSettings
from sfu.transport.offer_answer import answer, answer_sending, offer_for_subscriber
from sfu.transport.offered import OfferedTrack, parse_tracks
from sfu.transport.peer import TERMINAL, PeerState

__all__ = ["Negotiator"]

log = logging.getLogger("wadud.sfu.worker")


class Negotiator(Core):
    """Offer/answer of one media worker (see the module docstring), over its
    :class:`~sfu.negotiation.transports.Transports` core and with the
    worker's :class:`~sfu.rooms.settings.WorkerSettings`."""

    def __init__(self, settings: WorkerSettings, transports: Transports) -> None:
        self.settings = settings
        self.transports = transports
        self.tables = transports.tables
        super().__init__()

    @contextlib.contextmanager
    def _changing(self, name: str) -> Iterator[MediaRoom]:
        """The room ``name`` (made if new) for an offer/answer step; after it,
        even one that raised, a room left with nobody is forgotten, and the
        forwarder's pending feedback is flushed and the timer rearmed."""
        room = self.transports.room(name)
        try:
            yield room
        finally:
            self.transports.forget_if_empty(room)
            self._out += (FlushRtcp(room), Rearm())

    # -- inputs (sfu.rooms.inputs): MediaControl calls ---------------------------------------------

    def _handle_publish(self, command: PublishOffer, now: float) -> PublishResult:
        """Answer a publish offer (RFC 8829 5.3) and register its tracks with the forwarder."""
        desc = SessionDescription.parse(command.offer)
        with self._changing(command.room) as r:
            return self._publish(
                r, command.participant, desc, command.sources, now, command.receive
            )

    def _publish(
        self,
        room: MediaRoom,
        participant: str,
        desc: SessionDescription,
        sources: Mapping[str, Source],
        now: float,
        receive: tuple[str, ...] | None = None,
    ) -> PublishResult:
        params = desc.transport()
        if not params.ice_ufrag or not params.ice_pwd:
            raise SdpNegotiationError("offer has no ICE credentials")
        leg: Leg = "publish" if receive is None else "single"
        p = room.participants.get(participant)
        peer = p.publish if p is not None else None
        removed: list[str] = []
        fingerprints = [(f.algorithm, f.value) for f in params.fingerprints]
        fresh = (
            peer is None
            or peer.direction != leg
            or peer.transport.state in TERMINAL
            or peer.transport.is_new_connection(params.ice_ufrag, params.ice_pwd, fingerprints)
        )
        if fresh:
            peer = self.transports.new_peer(room, participant, leg, now)
        assert peer is not None
        if not fresh and peer.transport.restarts_ice(params.ice_ufrag, params.ice_pwd):
            self.transports.restart_ice(peer, now)
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
                self.transports.discard_new_peer(peer)
            raise
        p = self.transports.participant(room, participant)
        if fresh:
            old = p.publish
            if old is not None:
                removed = [t.info.track_id for t in old.tracks.values()]
                self.transports.close_peer(old, "replaced by a new publish transport", now)
            if leg == "single" or (old is not None and old is p.subscribe):
                # One connection both ways now, or no longer: the old one's
                # subscriptions went with it.
                sub = p.subscribe
                if sub is not None and sub is not old:
                    self.transports.close_peer(sub, "replaced by a single connection", now)
                p.subscribe = peer if leg == "single" else None
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
                self.transports.remove_track(room, existing, now)
            added.append(self._add_track(room, peer, item, sources, now).info)
        for mid, track in list(peer.tracks.items()):
            if mid not in seen:
                removed.append(track.info.track_id)
                self.transports.remove_track(room, track, now)
        if added:
            self.transports.start_bandwidth_feedback(peer, now)
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
        if receive is None:
            return PublishResult(answer=str(answered), added=added, removed=removed)
        receiving, free = self._fill(room, peer, desc, answered, receive, now)
        return PublishResult(
            answer=str(answered), added=added, removed=removed, receiving=receiving, free=free
        )

    def _fill(
        self,
        room: MediaRoom,
        peer: Peer,
        offer: SessionDescription,
        answered: SessionDescription,
        wanted: tuple[str, ...],
        now: float,
    ) -> tuple[dict[str, str], dict[str, int]]:
        """A single connection's receiving sections (docs/protocol.md, "Media:
        one peer connection"): each ``recvonly`` m= section of the client's
        offer carries one of the ``wanted`` tracks, or nothing (answered
        ``inactive``). A track keeps its section while it is wanted and the
        client still offers it; a section a track left stays empty for good
        (:attr:`~sfu.rooms.records.Peer.spent`), as a stopped one of a
        subscribe connection does. Returns mid -> track id, and the empty
        sections a track may still go to, by kind."""
        slots: dict[str, int] = {}
        for index, (offered, ours) in enumerate(zip(offer.media, answered.media, strict=True)):
            room_for_one = offered.direction is Direction.RECVONLY
            if offered.mid is not None and ours.port != 0 and room_for_one:
                slots[offered.mid] = index
            for line in offered.ssrcs:
                # One RTP session (RFC 8843): ours must not collide with theirs.
                peer.ssrcs.add(line.ssrc)
        wanted_set = set(wanted)
        kept: list[Section] = []
        for section in peer.sections:
            track = section.track
            mid = section.forwarded.mid
            if mid in slots and track.live and track.info.track_id in wanted_set:
                kept.append(section)
                continue
            if section.subscribed:
                with contextlib.suppress(SfuStateError):
                    peer.forwarder.unsubscribe(peer, track.ssrc)
                section.subscribed = False
                self.transports.end_send(peer, section, now)
            peer.spent.add(mid)
        peer.sections = kept
        have = {s.track.info.track_id for s in kept}
        taken = {s.forwarded.mid for s in kept} | peer.spent
        for track_id in wanted:
            wanted_track = room.tracks.get(track_id)
            if wanted_track is None or not wanted_track.live or track_id in have:
                continue
            if wanted_track.info.participant == peer.participant:
                continue
            for mid, index in slots.items():
                offered = offer.media[index]
                if mid in taken or offered.kind != wanted_track.info.kind:
                    continue
                placed = slot_section(peer, wanted_track, offered, self.settings.red)
                if placed is None:
                    continue
                taken.add(mid)
                have.add(track_id)
                peer.sections.append(placed)
                break
        for section in peer.sections:
            index = slots[section.forwarded.mid]
            answered.media[index] = answer_sending(
                answered.media[index], section.forwarded, peer.local
            )
        free: dict[str, int] = {}
        for mid, index in slots.items():
            if mid not in taken:
                kind = offer.media[index].kind
                free[kind] = free.get(kind, 0) + 1
        if peer.transport.state is PeerState.CONNECTED:
            self.transports.apply_subscriptions(peer, now)
        receiving = {s.forwarded.mid: s.track.info.track_id for s in peer.sections}
        log.info(
            "%s receives %s, %s empty",
            peer,
            receiving,
            free,
            extra={"room": room.name, "participant": peer.participant, "free": free},
        )
        return receiving, free

    def _check_ssrcs(self, room: MediaRoom, peer: Peer, parsed: list[OfferedTrack]) -> None:
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
        room: MediaRoom,
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
        self, room: MediaRoom, peer: Peer, item: OfferedTrack, info: TrackInfo, now: float
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

    def _handle_subscribe(self, command: SetSubscriptions, now: float) -> str | None:
        """Offer exactly ``track_ids`` on the participant's subscribe transport (RFC 8829 5.2).

        Returns None when nothing changed (or the participant receives nothing
        and has no subscribe transport yet). Forwarding of dropped tracks stops
        at once; their sections stay, stopped (see :class:`~sfu.rooms.records.Section`), so mids
        line up. Each new track gets a new section at the end, with a new SSRC.
        ``restart="ice"`` offers new ICE credentials on the same transport
        (RFC 8445 section 9: DTLS, SRTP, SSRCs and layers stay);
        ``restart="transport"`` closes the transport and offers on a new one.
        Raises SfuStateError for an unknown track, the participant's own
        track, or while the previous offer is unanswered.
        """
        wanted = list(dict.fromkeys(command.track_ids))
        with self._changing(command.room) as r:
            return self._subscribe(r, command.participant, wanted, now, command.restart)

    def _subscribe(
        self,
        room: MediaRoom,
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
        if peer is not None and peer.direction == "single":
            raise SfuStateError(f"{participant!r} receives on its single connection's offers")
        if peer is not None and (peer.transport.state in TERMINAL or restart == "transport"):
            # Its client needs a new peer connection: start over, whatever
            # offer the old transport still had outstanding.
            self.transports.close_peer(peer, "replaced", now)
            assert p is not None
            p.subscribe = peer = None
        if peer is not None and peer.pending_offer:
            raise SfuStateError("the last subscribe offer is not answered yet")
        if peer is None and not tracks:
            return None

        changed = False
        if peer is None:
            peer = self.transports.new_peer(room, participant, "subscribe", now)
            self.transports.participant(room, participant).subscribe = peer
        elif restart == "ice" and peer.transport.dtls is not None:
            self.transports.restart_ice(peer, now)
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
                self.transports.end_send(peer, section, now)
            section.stop(index == 0)
            changed = True
        for track in tracks:
            if track.info.track_id not in current:
                peer.sections.append(new_section(peer, track, self.settings.red))
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

    def _handle_answer(self, command: SubscribeAnswer, now: float) -> None:
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
        self.transports.service(peer, now)
        if peer.transport.state is PeerState.CONNECTED:
            self.transports.apply_subscriptions(peer, now)
        self._out += (FlushRtcp(r), Rearm())

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

    def _handle_unpublish(self, command: EndTrack, now: float) -> None:
        """Forget a track and every subscription to it.

        Subscribers' sections for it stop with their next offer."""
        room, participant, track_id = command.room, command.participant, command.track_id
        r = self.tables.rooms.get(room)
        track = r.tracks.get(track_id) if r is not None else None
        if r is None or track is None or track.info.participant != participant:
            raise SfuStateError(f"{participant!r} publishes no track {track_id!r} in {room!r}")
        self.transports.remove_track(r, track, now)
        self._out.append(Rearm())

    handlers = {
        PublishOffer: _handle_publish,
        SetSubscriptions: _handle_subscribe,
        SubscribeAnswer: _handle_answer,
        SetMuted: _handle_set_muted,
        EndTrack: _handle_unpublish,
    }


# --- helpers --------------------------------------------------------------------------


def _new_id(prefix: str, taken: Iterable[str]) -> str:
    existing = set(taken)
    while True:
        ident = prefix + secrets.token_hex(4)
        if ident not in existing:
            return ident
