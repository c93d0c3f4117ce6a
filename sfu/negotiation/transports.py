"""A media worker's rooms and each participant's transports in them.

:class:`Transports` is the core under the offer/answer negotiator
(:class:`sfu.negotiation.negotiator.Negotiator`, which holds it) and the relay
links (:class:`sfu.node.links.Links`): it keeps the worker's rooms, makes and
closes each participant's :class:`~sfu.transport.peer.PeerTransport`, and acts
on what each transport reports (addresses validated and forgotten, a path
that moved, an ICE restart completed, connected, failed or closed). Once a
transport is connected its media starts: RTCP reports, the bandwidth
feedback a publisher negotiated (transport-cc or REMB), and a subscriber's
subscriptions, which the forwarder is handed only then: the keyframe a
subscription asks for must not be spent before the subscriber can decrypt it.
A participant that leaves, and a track that ends, are forgotten here too:
forwarding, reports, relay links and the room's active speaker.

Everything from outside reaches it through one verb, ``receive(input, now)``
(:mod:`sfu.rooms.inputs`): a transport's STUN and DTLS
(:class:`~sfu.rooms.inputs.PeerDatagram`), a path that moved, a new active
speaker, a participant that leaves, a room that closes; the transports'
timers run through :meth:`Transports.due` and :meth:`Transports.handle_timer`.
It works on the worker's :class:`~sfu.rooms.records.WorkerTables` with the
worker's :class:`~sfu.rooms.settings.WorkerSettings`, and tells the layers
core (:class:`~sfu.layers.choice.Layers`) of subscriptions, paths and
departures by its methods. What it wants done (datagrams and RTCP to send,
events, timers) it queues as :mod:`sfu.rooms.actions`; the worker takes them
(:meth:`Transports.take_actions`), and the layers core's own, and carries
them out.

Nothing here touches the socket, the event loop or the clock (ruff's TID251
holds it to that): every verb is given ``now``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Literal, cast

from rtc.errors import IceStateError
from rtc.ice import Address, CredentialsRetired, ForgottenAddress, SelectedAddress, ValidatedAddress
from rtc.machine import earliest
from rtc.sdp.attributes import TRANSPORT_CC
from rtc.sdp.transport import Fingerprint
from sfu.control.messages import ActiveSpeaker, TransportState
from sfu.errors import SfuStateError
from sfu.feedback.bandwidth import RembEstimator, TransportCcRecorder
from sfu.feedback.receiving import ReceiveStatistics
from sfu.feedback.sending import SendStatistics
from sfu.feedback.speaker import SpeakerDetector
from sfu.forward import native
from sfu.forward.forwarder import Forwarder
from sfu.forward.table import ForwarderStats, Subscription
from sfu.layers.choice import Layers, LayerSource
from sfu.rooms.actions import Arm, ArmRtcp, Emit, FlushRtcp, Rearm, SendDatagram, SendRtcp
from sfu.rooms.inputs import CloseRoom, Core, LeaveRoom, PathMoved, PeerDatagram, SpeakerChosen
from sfu.rooms.records import (
    Leg,
    MediaParticipant,
    MediaRoom,
    Peer,
    Section,
    Track,
    WorkerTables,
    bind_srtp,
    keyed,
)
from sfu.rooms.settings import WorkerSettings
from sfu.transport.offer_answer import LocalParameters
from sfu.transport.peer import TERMINAL, PeerState, PeerStateChanged, PeerTransport

__all__ = ["Transports"]

log = logging.getLogger("wadud.sfu.worker")


class Transports(Core):
    """Rooms and transports of one media worker (see the module docstring).

    ``candidates`` gives the worker's host candidates (known once its socket
    is bound); ``layers`` is the worker's layers core, told of what changes
    for its subscribers.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        tables: WorkerTables,
        layers: Layers,
        candidates: Callable[[], list[Address]],
    ) -> None:
        self.settings = settings
        self.tables = tables
        self.layers = layers
        self.candidates = candidates
        super().__init__()

    # -- transports ----------------------------------------------------------------------------

    def new_peer(self, room: MediaRoom, participant: str, direction: Leg, now: float) -> Peer:
        """A new transport for ``participant``'s ``direction`` leg, known by its ufrag;
        the caller makes it the participant's once its negotiation holds."""
        settings = self.settings
        transport = PeerTransport(
            settings.certificate,
            now=now,
            consent_timeout=settings.consent_timeout,
            connect_timeout=settings.connect_timeout,
        )
        local = LocalParameters(
            ice_ufrag=transport.local_ufrag,
            ice_pwd=transport.local_pwd,
            fingerprints=[Fingerprint("sha-256", settings.fingerprint)],
            addresses=self.candidates(),
            simulcast=settings.simulcast and direction != "subscribe",
            red=settings.red,
        )
        peer = Peer(room, participant, direction, transport, local)
        self.tables.peers.add(peer)
        self.tables.by_ufrag[transport.local_ufrag] = peer
        return peer

    def close_peer(self, peer: Peer, reason: str, now: float) -> None:
        """Close a transport (DTLS close_notify if it was up) and forget what it
        carried: a subscriber's subscriptions, a publisher's tracks."""
        if peer.transport.state not in TERMINAL:
            peer.transport.close(reason)
            self.service(peer, now)
        if peer.sends:
            peer.forwarder.remove_subscriber(peer)
        if peer.receives:
            for track in list(peer.tracks.values()):
                self.remove_track(peer.room, track, now)

    def discard_new_peer(self, peer: Peer) -> None:
        """Forget a transport :meth:`new_peer` made for a negotiation that failed."""
        peer.transport.close("negotiation failed")
        peer.transport.datagrams_to_send()
        self.tables.peers.discard(peer)
        if self.tables.by_ufrag.get(peer.transport.local_ufrag) is peer:
            del self.tables.by_ufrag[peer.transport.local_ufrag]

    def restart_ice(self, peer: Peer, now: float) -> None:
        """New local ICE credentials on ``peer``'s transport, in its next SDP too.

        Checks reach the peer by either ufrag until the restart completes, when
        the worker forgets the old one (:class:`rtc.ice.CredentialsRetired`).
        """
        transport = peer.transport
        try:
            transport.restart_ice(now)
        except IceStateError as exc:
            raise SfuStateError(str(exc)) from exc
        self.tables.by_ufrag[transport.local_ufrag] = peer
        self.tables.paths["ice_restart"] += 1
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

    # -- events ------------------------------------------------------------------------------

    def _speaker_changed(self, room: MediaRoom, speaker: str | None) -> None:
        """The room's speaker detector chose ``speaker``: tell listeners if it is news."""
        if speaker == room.speaker_sent:
            return
        room.speaker_sent = speaker
        self._out.append(Emit(ActiveSpeaker(room.name, speaker)))

    # -- rooms ----------------------------------------------------------------------------

    def room(self, name: str) -> MediaRoom:
        """The room called ``name``, made now if the worker has none."""
        room = self.tables.rooms.get(name)
        if room is None:
            forwarder = Forwarder(
                feedback_ssrc=self.settings.feedback_ssrc,
                red_leaf=native.RED,
                sendable=keyed,
                **self.settings.forwarder_options,
            )
            room = self.tables.rooms[name] = MediaRoom(name, forwarder, SpeakerDetector())
        return room

    def participant(self, room: MediaRoom, name: str) -> MediaParticipant:
        """The participant called ``name`` in ``room``, made now if it has none."""
        p = room.participants.get(name)
        if p is None:
            p = room.participants[name] = MediaParticipant(room, name)
        return p

    def forget_if_empty(self, room: MediaRoom) -> None:
        """Forget a room no participant and no relay link uses; its counters go to the totals."""
        if room.participants or room.relays or self.tables.rooms.get(room.name) is not room:
            return
        del self.tables.rooms[room.name]
        self._add_totals(room.forwarder.stats)

    def _add_totals(self, stats: ForwarderStats) -> None:
        for name, value in stats.as_dict().items():
            self.tables.totals[name] += value

    def _leave(self, room: MediaRoom, participant: str, reason: str, now: float) -> None:
        self.layers.left(room, participant)
        p = room.participants.pop(participant, None)
        if p is None:
            return
        for peer in p.legs:
            self.close_peer(peer, reason, now)
        self.speaker_left(room, participant, now)

    def speaker_left(self, room: MediaRoom, participant: str, now: float) -> None:
        """A participant (local, or remote behind a relay link) has no audio here any more."""
        change = room.speaker.remove(participant, now)
        if change is not None:
            self._speaker_changed(room, cast(str | None, change.speaker))

    def remove_track(self, room: MediaRoom, track: Track, now: float) -> None:
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
                        self.end_send(sub, section, now)

    def _unrelay(self, room: MediaRoom, track: Track) -> None:
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

    def end_send(self, peer: Peer, section: Section, now: float) -> None:
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

    # -- inputs (sfu.rooms.inputs) ---------------------------------------------------------------

    def _handle_leave(self, command: LeaveRoom, now: float) -> None:
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

    def _handle_peer_datagram(self, datagram: PeerDatagram, now: float) -> None:
        """A STUN or DTLS datagram for a peer's transport (RFC 7983 section 7)."""
        transport = datagram.peer.transport
        transport.receive_datagram(datagram.data, datagram.addr, now)
        self.service(datagram.peer, now)
        due = transport.get_timer()
        if due is not None:
            self._out.append(Arm(due))

    def _handle_path_moved(self, moved: PathMoved, now: float) -> None:
        """Authenticated media came from another address: the peer's path is
        there now (a NAT rebinding, or the peer changed pairs)."""
        if moved.peer.transport.rebind(moved.addr, now):
            self.tables.paths[moved.how] += 1
            self.service(moved.peer, now)

    def _handle_speaker_changed(self, change: SpeakerChosen, now: float) -> None:
        self._speaker_changed(change.room, change.speaker)

    handlers = {
        LeaveRoom: _handle_leave,
        CloseRoom: _handle_close_room,
        PeerDatagram: _handle_peer_datagram,
        PathMoved: _handle_path_moved,
        SpeakerChosen: _handle_speaker_changed,
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
                self.service(peer, now)

    # -- transport events ---------------------------------------------------------------

    def service(self, peer: Peer, now: float) -> None:
        """Send what a transport wants sent and act on its events (after any
        input to it: a datagram, a timer, a close, new remote parameters)."""
        transport = peer.transport
        for datagram, addr in transport.datagrams_to_send():
            self._out.append(SendDatagram(datagram, addr))
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
                    if peer.sends:
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
                    self._emit_state(peer, "connected", "ICE restart completed")
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
        self._emit_state(peer, "connected")
        # Reports start with the connection: before it nothing can be sent or received.
        if not peer.reporting:
            self.tables.reports.add_leg(peer, now)
            peer.reporting = True
            for stats in peer.recv_stats.values():
                self.tables.reports.add_receive(peer, stats)
        if peer.sends:
            self.apply_subscriptions(peer, now)
        if peer.receives:
            self.start_bandwidth_feedback(peer, now)
            # Subscribers may have waited for this publisher: ask for keyframes now.
            for track in peer.tracks.values():
                if track.info.kind == "video" and track.live:
                    peer.forwarder.request_keyframe(track.ssrc, now)
        self._out.append(FlushRtcp(peer.room))
        self._out.append(ArmRtcp())
        due = peer.forwarder.get_timer()
        if due is not None:
            self._out.append(Arm(due))

    def start_bandwidth_feedback(self, peer: Peer, now: float) -> None:
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
                    recorder = TransportCcRecorder(
                        self.settings.feedback_ssrc, media_ssrc=track.ssrc
                    )
                    peer.twcc, peer.twcc_id = recorder, ext_id
                    self.tables.bandwidth.add(peer, recorder, now)
                    self._out.append(ArmRtcp())
                    return
            if not any(
                t.info.kind == "video" and t.codec.has_feedback("goog-remb")
                for t in peer.tracks.values()
            ):
                return
            member = RembEstimator(
                self.settings.feedback_ssrc, max_bitrate=self.settings.remb_max_bitrate
            )
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
        if peer.sends:
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
        self._emit_state(peer, "failed" if state is PeerState.FAILED else "closed", reason)

    def _emit_state(
        self, peer: Peer, state: Literal["connected", "failed", "closed"], reason: str = ""
    ) -> None:
        """Tell the control plane that ``peer``'s transport is now ``state``."""
        self._out.append(
            Emit(TransportState(peer.room.name, peer.participant, peer.direction, state, reason))
        )

    # -- media on a connected transport ------------------------------------------------

    def apply_subscriptions(self, peer: Peer, now: float) -> None:
        """Hand a connected subscriber's negotiated sections to the forwarder.

        When its transport connects (:meth:`service`), and when an answer
        comes for one already connected (the negotiator's ``SubscribeAnswer``); the
        layers core then allocates its layers."""
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


# --- helpers --------------------------------------------------------------------------


def _offset_of(sub: Subscription) -> Callable[[], int | None]:
    """The subscription's current RTP timestamp offset, read when a report is built."""
    rewriter = sub.rewriter
    return lambda: rewriter.timestamp_offset
