"""Relay links between media workers: the worker's side of :mod:`sfu.transport.relay`.

A room may live on several workers (participants are placed in their own
region). When a track has subscribers on another worker, signalling asks the
publishing worker to send it there (:class:`~sfu.rooms.inputs.RelaySend`) and the
other worker to take it (:class:`~sfu.rooms.inputs.RelayReceive`); the track then
crosses once, however many subscribers it has over there, and each worker
fans it out to its own.

One :class:`Link` per peer worker carries every room the two share, both
ways, over one DTLS-SRTP association (:class:`sfu.transport.relay.RelayLink`). Inside
each room it shares, a link is two legs of the room's
:class:`~sfu.forward.forwarder.Forwarder` (:class:`sfu.rooms.records.RelayRoom`):
*egress*, a subscriber to the local tracks it sends, and *ingress*, a
publisher of the remote tracks it receives (:mod:`sfu.node.relay_tracks`).

No transport-cc or REMB is sent on a link: congestion feedback ends at each
hop. The link's SRTP session is shared by every room, so an incoming
datagram is routed by SSRC to its room's ingress leg (media) or to the leg
its RTCP is about.

The link is set up on first use and closed when no room uses it either way;
a link that fails retries while it is used (:mod:`sfu.transport.relay`). Its state
changes go to listeners as :class:`~sfu.control.messages.RelayState`.

Like :mod:`sfu.negotiation.transports`, :class:`Links` is a core that never touches the
socket, the loop or the clock: what reaches it from outside comes through one
verb, ``receive(input, now)`` (:mod:`sfu.rooms.inputs`: RelaySend, RelayReceive,
CloseRoom, CloseLinks, and the link's SRTCP and DTLS), its links' timers
through :meth:`Links.due` and :meth:`Links.handle_timer`, and it queues
what it wants done (:mod:`sfu.rooms.actions`). A link's SRTP media is the worker's
hot path (:meth:`sfu.node.worker.MediaWorker.datagram_received`), which finds the
link by :attr:`Links.by_addr` and the room's ingress leg by the link's
``incoming`` table, with no record made per packet.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, cast

from rtc.errors import RtcpParseError
from rtc.ice import Address
from rtc.machine import earliest
from rtc.rtcp.compound import RtcpPacket, parse_compound
from rtc.rtcp.feedback import Fir, Nack, Pli
from rtc.rtcp.reports import ReceiverReport, SenderReport
from sfu.control.messages import RelayedTrack, RelayPeer, RelayState
from sfu.errors import SfuStateError
from sfu.negotiation.transports import Transports
from sfu.node.relay_tracks import set_received, set_sent, subscribe_sent
from sfu.rooms.actions import Arm, ArmRtcp, Emit, FlushRtcp, Rearm, SendDatagram
from sfu.rooms.inputs import (
    CloseLinks,
    CloseRoom,
    Core,
    EarlyDtls,
    LegsRtcp,
    LinkDtls,
    LinkRtcp,
    RelayReceive,
    RelaySend,
)
from sfu.rooms.records import Link, MediaRoom, Peer, RelayRoom, Track, WorkerTables, bind_srtp
from sfu.rooms.settings import WorkerSettings
from sfu.transport.offer_answer import LocalParameters
from sfu.transport.peer import PeerTransport
from sfu.transport.relay import LinkState, RelayLink, parse_fingerprint

__all__ = ["Links"]

log = logging.getLogger("wadud.sfu.links")

# DTLS ClientHellos kept from addresses no link knows yet: a link's client may
# learn of the link (and send its first flight) before the server does.
_EARLY_ADDRESSES = 16
_EARLY_PER_ADDRESS = 4


def _srtp_errors() -> tuple[type[BaseException], ...]:
    import pylibsrtp

    return (pylibsrtp.Error, ValueError, TypeError)


_SRTP_ERRORS = _srtp_errors()


class Links(Core):
    """A media worker's relay links (see the module docstring), on the worker's
    :class:`~sfu.rooms.records.WorkerTables`, with its
    :class:`~sfu.rooms.settings.WorkerSettings` and over its
    :class:`~sfu.negotiation.transports.Transports` (rooms and tracks are its:
    what it queues when a relayed track ends is its own, for the worker to take).

    What it wants done (datagrams, RTCP to flush, events, timers) it queues
    as :mod:`sfu.rooms.actions` for :meth:`take_actions`. A link's SRTP media
    never passes through here: the worker routes it by :attr:`by_addr` and
    each link's ``incoming`` table on its hot path.
    """

    def __init__(
        self, settings: WorkerSettings, tables: WorkerTables, transports: Transports
    ) -> None:
        self.settings = settings
        self.tables = tables
        self.transports = transports
        self._links: dict[str, Link] = {}
        self.by_addr: dict[Address, Link] = {}
        """A peer worker's address -> its link: how the worker knows a link's datagrams."""
        self._early_dtls: dict[Address, list[bytes]] = {}
        super().__init__()

    # -- MediaControl --------------------------------------------------------------------

    def relay_identity(self) -> tuple[str, str]:
        """This worker's id and DTLS fingerprint, ``"sha-256 AB:CD:..."`` (RFC 8122 section 5)."""
        return self.settings.worker_id, f"sha-256 {self.settings.fingerprint}"

    def _handle_relay_send(self, command: RelaySend, now: float) -> list[RelayedTrack]:
        """Send exactly ``track_ids`` (local tracks of ``room``) to ``peer``; see
        :meth:`sfu.control.messages.MediaControl.relay_send`."""
        room, peer = command.room, command.peer
        wanted = list(dict.fromkeys(command.track_ids))
        self._check_peer(peer)
        r = self.tables.rooms.get(room)
        tracks: list[Track] = []
        for track_id in wanted:
            track = r.tracks.get(track_id) if r is not None else None
            if r is None or track is None:
                raise SfuStateError(f"no track {track_id!r} in room {room!r}")
            if track.publisher.owners is not None:
                raise SfuStateError(f"track {track_id!r} is relayed here, not published here")
            tracks.append(track)
        if r is None:
            return []
        link = self._links.get(peer.worker)
        if not tracks and (link is None or room not in link.rooms):
            return []
        link = self._link(peer, now)
        try:
            relay = self._relay_room(link, r, now)
            set_sent(self.tables.reports, link, relay, tracks, now)
            return [relay.sent[t][0] for t in wanted]
        finally:
            self._after(link, r, now)

    def _handle_relay_receive(self, command: RelayReceive, now: float) -> None:
        """Receive exactly ``tracks`` of ``room`` from ``peer``; see
        :meth:`sfu.control.messages.MediaControl.relay_receive`."""
        room, peer, tracks = command.room, command.peer, command.tracks
        self._check_peer(peer)
        wanted = {t.info.track_id: t for t in tracks}
        r = self.tables.rooms.get(room)
        link = self._links.get(peer.worker)
        if not wanted and (r is None or link is None or room not in link.rooms):
            return
        r = self.transports.room(room)
        current = r.relays.get(peer.worker)
        mine = current.ingress if current is not None else None
        ours: set[int] = set()
        for ssrc, leg in link.incoming.items() if link is not None else ():
            if leg.room is not r:
                ours.add(ssrc)  # another room on this link: the sender keeps them unique
        taken = r.ssrcs_in_use(but=mine)
        for t in tracks:
            existing = r.tracks.get(t.info.track_id)
            if existing is not None and existing.publisher is not mine:
                self.transports.forget_if_empty(r)
                raise SfuStateError(f"room {room!r} already has a track {t.info.track_id!r}")
            for maybe in (t.ssrc, t.rtx_ssrc):
                if maybe is not None and (maybe in taken or maybe in ours):
                    self.transports.forget_if_empty(r)
                    raise SfuStateError(f"SSRC {maybe} is already in use in room {room!r}")
        link = self._link(peer, now)
        try:
            relay = self._relay_room(link, r, now)
            set_received(self.transports, link, relay, wanted, now)
        finally:
            self._after(link, r, now)

    def _check_peer(self, peer: RelayPeer) -> None:
        if peer.worker == self.settings.worker_id:
            raise SfuStateError("a worker cannot relay to itself")
        try:
            parse_fingerprint(peer.fingerprint)
        except ValueError as exc:
            raise SfuStateError(str(exc)) from None

    def _after(self, link: Link, room: MediaRoom, now: float) -> None:
        relay = room.relays.get(link.peer_worker)
        if relay is not None and not relay.used:
            self._drop_relay_room(link, relay, now)
        if not link.used:
            self._close_link(link, "no room uses the link", now)
        self.transports.forget_if_empty(room)
        self._out.append(FlushRtcp(room))
        self._service_link(link, now)
        self._out.append(Rearm())

    # -- links ---------------------------------------------------------------------------

    def _link(self, peer: RelayPeer, now: float) -> Link:
        """The link to ``peer``, set up now if new; a peer with another address or
        certificate (a new incarnation) starts it over, and so does a call while
        it is failed (signalling still wants it: no need to wait for the retry)."""
        link = self._links.get(peer.worker)
        if link is None:
            settings = self.settings
            core = RelayLink(
                settings.certificate, settings.worker_id, peer, now=now, **settings.link_options
            )
            link = self._links[peer.worker] = Link(core)
            self.by_addr[core.address] = link
            core.start(now)
            log.info(
                "relay link to %s at %s:%d (%s)",
                peer.worker,
                peer.host,
                peer.port,
                core.role.value,
                extra={"peer_worker": peer.worker, "role": core.role.value},
            )
            for data in self._early_dtls.pop(core.address, ()):
                core.receive_datagram(data, now)
        elif link.core.peer != peer:
            old = link.core.address
            if self.by_addr.get(old) is link:
                del self.by_addr[old]
            link.core.restart(peer, now)
            self.by_addr[link.core.address] = link
        elif link.core.state is LinkState.FAILED:
            link.core.start(now, "asked for again")
        self._service_link(link, now)
        return link

    def _relay_room(self, link: Link, room: MediaRoom, now: float) -> RelayRoom:
        relay = room.relays.get(link.peer_worker)
        if relay is None:
            egress = self._leg(room, link, "subscribe", now)
            ingress = self._leg(room, link, "publish", now)
            relay = room.relays[link.peer_worker] = RelayRoom(
                room, link.peer_worker, egress, ingress, link.outgoing
            )
            link.rooms[room.name] = relay
            if link.core.state is LinkState.CONNECTED:
                self._leg_up(link, egress, now)
                self._leg_up(link, ingress, now)
        return relay

    def _leg(self, room: MediaRoom, link: Link, direction: str, now: float) -> Peer:
        # A leg is a Peer to the forwarder and the report scheduler; its
        # transport is never used (the link's DTLS is the link's own).
        transport = PeerTransport(self.settings.certificate, now=now)
        transport.close("a relay link's leg")
        local = LocalParameters(transport.local_ufrag, transport.local_pwd, [], [])
        leg = Peer(
            room,
            f"relay:{link.peer_worker}",
            "subscribe" if direction == "subscribe" else "publish",
            transport,
            local,
        )
        leg.owners = {}
        return leg

    def _leg_up(self, link: Link, leg: Peer, now: float) -> None:
        leg.addr = link.core.address
        leg.protect = link.protect
        leg.protect_rtcp = link.protect_rtcp
        if not leg.reporting:
            self.tables.reports.add_leg(leg, now)
            leg.reporting = True
            for stats in leg.recv_stats.values():
                self.tables.reports.add_receive(leg, stats)

    def _leg_down(self, leg: Peer) -> None:
        leg.protect = leg.protect_rtcp = None
        if leg.reporting:
            self.tables.reports.remove_leg(leg)
            leg.reporting = False

    def _drop_relay_room(self, link: Link, relay: RelayRoom, now: float) -> None:
        room = relay.room
        set_sent(self.tables.reports, link, relay, [], now)
        set_received(self.transports, link, relay, {}, now)
        for leg in (relay.egress, relay.ingress):
            self._leg_down(leg)
        room.forwarder.remove_subscriber(relay.egress)
        if room.relays.get(link.peer_worker) is relay:
            del room.relays[link.peer_worker]
        if link.rooms.get(room.name) is relay:
            del link.rooms[room.name]

    def _close_link(self, link: Link, reason: str, now: float) -> None:
        for relay in list(link.rooms.values()):
            self._drop_relay_room(link, relay, now)
        core = link.core
        core.close(reason)
        self._service_link(link, now)
        if self._links.get(link.peer_worker) is link:
            del self._links[link.peer_worker]
        if self.by_addr.get(core.address) is link:
            del self.by_addr[core.address]
        self.tables.totals["relay_in"] += link.packets_in
        self.tables.totals["relay_out"] += self._link_sent(link)
        self.tables.totals["relay_routed"] += link.routed
        self.tables.totals["relay_forged"] += link.forged

    def _handle_close_links(self, command: CloseLinks, now: float) -> None:
        """Close every link (the worker closes)."""
        for link in list(self._links.values()):
            self._close_link(link, command.reason, now)

    def _handle_close_room(self, command: CloseRoom, now: float) -> None:
        """A room closed: stop relaying it either way, and forget it if nothing
        else uses it (after the transports core took the same input)."""
        room = self.tables.rooms.get(command.room)
        if room is None:
            return
        for peer_worker, relay in list(room.relays.items()):
            link = self._links.get(peer_worker)
            if link is None:
                del room.relays[peer_worker]
                continue
            self._drop_relay_room(link, relay, now)
            if not link.used:
                self._close_link(link, "no room uses the link", now)
        self.transports.forget_if_empty(room)
        self._out.append(Rearm())

    def _service_link(self, link: Link, now: float) -> None:
        core = link.core
        for datagram in core.datagrams_to_send():
            self._out.append(SendDatagram(datagram, core.address))
        while (event := core.next_event()) is not None:
            if event.new is LinkState.CONNECTED:
                self._link_up(link, now)
            elif event.old is LinkState.CONNECTED:
                self._link_down(link)
            if event.new in (LinkState.CONNECTED, LinkState.FAILED, LinkState.CLOSED):
                state = cast(Any, event.new.value)
                level = logging.INFO if event.new is not LinkState.FAILED else logging.WARNING
                log.log(
                    level,
                    "relay link to %s %s: %s",
                    link.peer_worker,
                    event.new.value,
                    event.reason,
                    extra={"peer_worker": link.peer_worker, "reason": event.reason},
                )
                self._out.append(Emit(RelayState(link.peer_worker, state, event.reason)))
        due = core.get_timer()
        if due is not None:
            self._out.append(Arm(due))

    def _link_up(self, link: Link, now: float) -> None:
        srtp = link.core.srtp
        assert srtp is not None  # CONNECTED means keyed
        bind_srtp(link, srtp)
        for relay in link.rooms.values():
            self._leg_up(link, relay.egress, now)
            self._leg_up(link, relay.ingress, now)
            subscribe_sent(self.tables.reports, relay, now)
            # Local subscribers may have waited for the link: ask for keyframes now.
            for track in relay.ingress.tracks.values():
                if track.info.kind == "video" and track.live:
                    relay.room.forwarder.request_keyframe(track.ssrc, now)
            self._out.append(FlushRtcp(relay.room))
        self._out.append(ArmRtcp())

    def _link_down(self, link: Link) -> None:
        bind_srtp(link, None)
        for relay in link.rooms.values():
            # Subscriptions stay: their sequence numbers go on where they
            # stopped when the link is back, which the peer sees as a gap.
            self._leg_down(relay.egress)
            self._leg_down(relay.ingress)

    # -- datagrams -----------------------------------------------------------------------

    def _handle_link_dtls(self, datagram: LinkDtls, now: float) -> None:
        """A DTLS datagram from a link's peer address (RFC 7983 section 7)."""
        link = datagram.link
        link.core.receive_datagram(datagram.data, now)
        self._service_link(link, now)

    def _handle_link_rtcp(self, datagram: LinkRtcp, now: float) -> LegsRtcp:
        """SRTCP from a link's peer: its packets by the leg each is about, for
        the worker to act on as on any leg's RTCP."""
        link, data = datagram.link, datagram.data
        unprotect = link.unprotect_rtcp
        if unprotect is None:
            self.tables.counters["relay_not_keyed"] += 1
            return []
        try:
            plain = unprotect(data)
        except _SRTP_ERRORS:
            link.forged += 1
            return []
        link.core.heard = now
        link.rtcp_in += 1
        try:
            packets = parse_compound(plain)
        except RtcpParseError:
            self.tables.counters["rtcp_malformed"] += 1
            return []
        # One SRTCP session for every room on the link: each packet goes to
        # the leg whose stream it is about.
        by_leg: dict[Peer, list[RtcpPacket]] = {}
        for packet in packets:
            legs: list[Peer | None] = []
            if isinstance(packet, SenderReport):
                legs.append(link.incoming.get(packet.ssrc))
                legs.extend(link.outgoing.get(b.ssrc) for b in packet.reports)
            elif isinstance(packet, ReceiverReport):
                legs.extend(link.outgoing.get(b.ssrc) for b in packet.reports)
            elif isinstance(packet, Nack | Pli):
                legs.append(link.outgoing.get(packet.media_ssrc))
            elif isinstance(packet, Fir):
                legs.extend(link.outgoing.get(ssrc) for ssrc, _ in packet.entries)
            for leg in legs:
                if leg is not None:
                    found = by_leg.setdefault(leg, [])
                    if not found or found[-1] is not packet:
                        found.append(packet)
        return list(by_leg.items())

    def _handle_early_dtls(self, datagram: EarlyDtls, now: float) -> None:
        """Keep a few DTLS datagrams from an unknown address for a link set up soon."""
        early = self._early_dtls.get(datagram.addr)
        if early is None:
            if len(self._early_dtls) >= _EARLY_ADDRESSES:
                self._early_dtls.pop(next(iter(self._early_dtls)))
            early = self._early_dtls[datagram.addr] = []
        if len(early) < _EARLY_PER_ADDRESS:
            early.append(datagram.data)

    handlers = {
        RelaySend: _handle_relay_send,
        RelayReceive: _handle_relay_receive,
        CloseRoom: _handle_close_room,
        CloseLinks: _handle_close_links,
        LinkDtls: _handle_link_dtls,
        LinkRtcp: _handle_link_rtcp,
        EarlyDtls: _handle_early_dtls,
    }

    # -- timers --------------------------------------------------------------------------

    def due(self) -> float | None:
        """The links' next deadline (retransmissions, keepalives, retries)."""
        return earliest(link.core.get_timer() for link in self._links.values())

    def handle_timer(self, now: float) -> None:
        """Run the links whose deadline has come."""
        for link in list(self._links.values()):
            due = link.core.get_timer()
            if due is not None and due <= now:
                link.core.handle_timer(now)
                self._service_link(link, now)

    # -- metrics -------------------------------------------------------------------------

    def _link_sent(self, link: Link) -> int:
        sent = link.sent_gone
        for relay in link.rooms.values():
            for relayed, _ in relay.sent.values():
                sub = relay.room.forwarder.subscription(relay.egress, relayed.ssrc)
                if sub is not None:
                    sent += sub.packets_sent + sub.retransmitted
        return sent

    def snapshot(self) -> dict[str, Any]:
        """Relay links for metrics: totals that never go down, and one entry per link."""
        links = []
        totals = Counter(
            {
                "in": self.tables.totals["relay_in"],
                "out": self.tables.totals["relay_out"],
                "routed": self.tables.totals["relay_routed"],
                "forged": self.tables.totals["relay_forged"],
            }
        )
        for link in self._links.values():
            sent = self._link_sent(link)
            expected = lost = 0
            rtts: list[float] = []
            for relay in link.rooms.values():
                for stats in relay.ingress.recv_stats.values():
                    if stats.started:
                        expected += stats.expected
                        lost += max(0, stats.cumulative_lost)
                rtt = self.tables.reports.rtt(relay.egress)
                if rtt is not None:
                    rtts.append(rtt)
            totals["in"] += link.packets_in
            totals["out"] += sent
            totals["routed"] += link.routed
            totals["forged"] += link.forged
            links.append(
                {
                    "peer_worker": link.peer_worker,
                    "state": link.core.state.value,
                    "rooms": len(link.rooms),
                    "packets_in": link.packets_in,
                    "octets_in": link.octets_in,
                    "packets_out": sent,
                    "rtcp_in": link.rtcp_in,
                    "forged": link.forged,
                    "unknown_ssrc": link.unknown_ssrc,
                    "loss": lost / expected if expected else None,
                    "rtt": max(rtts) if rtts else None,
                    **{f"link_{k}": v for k, v in link.core.counters.items()},
                }
            )
        return {**totals, "links": links}

    def link_of(self, peer_worker: str) -> Link | None:
        """The live link to a peer worker (for tests and tools)."""
        return self._links.get(peer_worker)
