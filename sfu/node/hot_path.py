"""The media worker's datagram side: every datagram demultiplexed, media forwarded right here.

:class:`HotPath` is the :class:`asyncio.DatagramProtocol` half of
:class:`sfu.node.worker.MediaWorker` (which is one): what the socket brings
and what goes out of it. The worker's control side (its MediaControl calls,
lifecycle, timers and metrics, :mod:`sfu.node.worker`) stands on it; what
this side asks of that one is named below (an input handed to a core and
its actions carried out, the timer armed), and it asks only off the
forwarding path or once in a while on it.

Demultiplexing (RFC 7983 section 7) on one port shared by every peer:

* a datagram from an address some transport validated with an ICE check is
  that transport's: SRTP goes straight to the hot path, SRTCP, STUN and DTLS
  to the slow path;
* STUN is always routed by the local ufrag in its USERNAME (RFC 8445 section
  7.3), even from a known address, so two transports that share a remote
  address (a client behind one NAT binding) cannot answer each other's checks;
* SRTP or SRTCP from an unknown address may be a connected peer whose NAT
  gave it a new port: the transport whose keys authenticate it moves its
  path there, with no renegotiation (:mod:`sfu.transport.strangers`); anything else is
  a forgery, counted and dropped. Authenticated media from another validated
  address of its own peer moves the path the same way (it changed pairs);
* a datagram from a relay link's peer address is the link's
  (:mod:`sfu.node.links`): SRTP media straight to the hot path, by the
  link's table of SSRCs, SRTCP and DTLS through the links core;
* anything else from an unknown address (DTLS from a stranger, garbage) is
  dropped and counted; nothing a peer sends raises.

The hot path runs synchronously in :meth:`HotPath.datagram_received`:
SRTP unprotect once, parse the RTP header and its extensions once into the
worker's one :class:`~rtc.rtp.view.RtpView` (which the receive statistics,
transport-wide feedback, the audio level and the forwarder all read;
the first two take the packet's arrival from the kernel's receive stamp,
:mod:`sfu.node.arrival`, not from when the loop read it, and so do the
RTCP reports' sender-report pairs and round trips),
:meth:`Forwarder.route_view` into one reused list, then
for each subscriber its own SRTP protect and ``sendto`` its selected address.
With the native fan-out (:mod:`sfu.forward.native`), ``route_view`` hands back the
steady-state copies instead of making them; the worker has the leaf make,
protect and send those with ``sendmmsg`` (``forward``), then the others the
forwarder makes (``route_rest``, ``send``).
No task, coroutine or queue per packet; the forwarder's keys *are* the
subscribers' peer records, so there is no lookup per subscriber either, and
the per-packet counters are plain attribute increments (the Prometheus
collector in :mod:`sfu.node.metrics` reads them at scrape time). What the
path reads per packet it holds on itself (the tables it looks addresses up
in, the reused list, ``sendto``, the native leaf), bound once. Recording:
:mod:`sfu.recording.core`.

A peer's RTCP is acted on here as it comes (reports, NACKs answered from the
forwarder's history, keyframe requests); a subscriber's bandwidth feedback
goes to the layers core. The RTCP the worker sends goes out through
:meth:`HotPath._send_rtcp`, protected with the peer's SRTCP context.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import pylibsrtp

from rtc import demux
from rtc.errors import RtcpParseError, RtpParseError
from rtc.ice import Address, local_ufrag_of
from rtc.rtcp.compound import RtcpPacket, parse_compound
from rtc.rtcp.feedback import Fir, Nack, Pli, Remb
from rtc.rtcp.reports import ReceiverReport, SenderReport
from rtc.rtcp.transport_cc import TransportCc
from rtc.rtp.view import RtpView
from sfu.feedback.reports import feedback_compounds, nack_interval_for
from sfu.forward import native
from sfu.layers.choice import Layers
from sfu.negotiation.transports import Transports
from sfu.node.arrival import ArrivalClock
from sfu.node.links import Links
from sfu.rooms import inputs
from sfu.rooms.actions import Action
from sfu.rooms.records import Link, MediaRoom, Peer, WorkerTables
from sfu.rooms.settings import WorkerSettings
from sfu.transport.strangers import RTCP_SSRCS, StrangerSearch

__all__ = ["HotPath"]

R = TypeVar("R")

# What pylibsrtp raises for a packet it refuses (auth, replay, size); the hot
# path catches these itself instead of going through rtc.srtp's wrapper.
_SRTP_ERRORS = (pylibsrtp.Error, ValueError, TypeError)
_SSRC = struct.Struct("!I")
#: What ReportScheduler.on_rtcp takes in of a compound; the rest is feedback.
_REPORTS = (SenderReport, ReceiverReport)


class HotPath(asyncio.DatagramProtocol):
    """The socket's side of a media worker (see the module docstring).

    It reads the worker's parts, which :class:`sfu.node.worker.MediaWorker`
    sets: its settings, tables and cores, and ``_when``, the deadline its timer
    is armed for (one comparison after each routed packet).
    """

    settings: WorkerSettings
    tables: WorkerTables
    transports: Transports
    links: Links
    layers: Layers
    _when: float | None

    def __init__(self, by_addr: dict[Address, Peer], link_addrs: dict[Address, Link]) -> None:
        # The hot path's own references to the tables it reads per datagram:
        # the transports' validated addresses and the links' peer addresses.
        self._by_addr = by_addr
        self._link_addrs = link_addrs
        self._strangers = StrangerSearch()
        self._routed: list[tuple[Any, bytes]] = []
        self._view = RtpView()
        """The packet being routed, parsed once (rtc/rtp/view.py), reused for every packet."""
        self._parse = native.PARSE
        """``RtpView.parse``, in native code when the extension is built and on."""
        self._transport: asyncio.DatagramTransport | None = None
        self._time: Callable[[], float] = _running_loop_time
        self._arrival: Callable[[float], float] = _as_read
        """The datagram being handled: when it reached the host, from the loop's ``now``."""
        self._sendto: Callable[[bytes, Any], None] = _no_socket
        self._fanout: native.Fanout | None = None
        """The native protect-and-sendmmsg leaf (sfu/forward/native.py), None for the Python loop.
        """
        self._fan: native.Fanout | None = None
        """``_fanout`` while writing is not paused: the hot path's choice of loop."""
        self._v6 = False

    # -- what it asks of the control side (sfu.node.worker.MediaWorker) -------------------

    def _receive(self, core: inputs.Core, input: inputs.Input[R], now: float | None = None) -> R:
        """Hand ``input`` to ``core`` and carry out what the cores queued."""
        raise NotImplementedError

    def _act(self, actions: list[Action]) -> None:
        """Carry out what a core queued."""
        raise NotImplementedError

    def _arm(self, when: float) -> None:
        """Arm the worker's timer for ``when`` (earlier than ``_when``)."""
        raise NotImplementedError

    def _soon(self, when: float | None) -> None:
        """Make sure the worker's timer fires by ``when``."""
        raise NotImplementedError

    # -- asyncio.DatagramProtocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._sendto = self._transport.sendto
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._arrival = ArrivalClock(sock)

    @property
    def kernel_stamps(self) -> bool:
        """Whether arrivals are the kernel's receive time stamps (else when the loop read them)."""
        return isinstance(self._arrival, ArrivalClock) and self._arrival.available

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away: its consent expires.
        self.tables.counters["socket_error"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._unplugged()

    def _unplugged(self) -> None:
        """The socket is gone: nothing goes out any more, nor through the native leaf."""
        self._transport = None
        self._sendto = _no_socket
        self._fanout = self._fan = None

    def pause_writing(self) -> None:
        # The kernel refused datagrams and the loop started queueing them in
        # user space: drop instead, as a full UDP socket would, so the queue
        # (and every subscriber's latency) cannot grow without bound.
        self.tables.counters["send_paused"] += 1
        self._sendto = self._drop_datagram
        self._fan = None

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._sendto = self._transport.sendto
            self._fan = self._fanout

    def _drop_datagram(self, data: bytes, addr: Any) -> None:
        self.tables.counters["send_dropped"] += 1

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Demultiplex one datagram; SRTP from a connected peer is forwarded right here."""
        if self._v6:
            addr = addr[:2]
        peer = self._by_addr.get(addr)
        if peer is not None and len(data) > 11:
            b0 = data[0]
            # RFC 7983: 128-191 is RTP/RTCP; RFC 5761: 192-223 in byte 1 is RTCP.
            if 127 < b0 < 192 and not 191 < data[1] < 224:
                unprotect = peer.unprotect
                if unprotect is None:
                    self.tables.counters["srtp_not_keyed"] += 1
                    return
                try:
                    plain = unprotect(data)
                except _SRTP_ERRORS:
                    peer.srtp_errors += 1
                    return
                peer.packets_in += 1
                peer.octets_in += len(data)
                if addr != peer.addr:
                    # The peer sends from another of its validated addresses:
                    # it changed pairs, so answer there.
                    self._path_moved(peer, addr, "pair_change")
                self._route(peer, plain, self._time())
                return
        elif peer is None:
            link = self._link_addrs.get(addr)
            if link is not None:
                self._link_datagram(link, data)
                return
        self._slow_path(data, addr, peer)

    def _link_datagram(self, link: Link, data: bytes) -> None:
        """A datagram from a relay link's peer address: SRTP media on the hot
        path, SRTCP and DTLS through the links core (RFC 7983 section 7)."""
        if len(data) > 11 and 127 < data[0] < 192:
            now = self._time()
            if 191 < data[1] < 224:
                for about, packets in self._receive(self.links, inputs.LinkRtcp(link, data), now):
                    self._rtcp_packets(about, packets, now)
                return
            unprotect = link.unprotect
            if unprotect is None:
                self.tables.counters["relay_not_keyed"] += 1
                return
            try:
                plain = unprotect(data)
            except _SRTP_ERRORS:
                link.forged += 1
                return
            link.core.heard = now
            link.packets_in += 1
            link.octets_in += len(data)
            leg = link.incoming.get(_SSRC.unpack_from(plain, 8)[0])
            if leg is None:
                link.unknown_ssrc += 1
                return
            fstats = leg.forwarder.stats
            before = fstats.received
            self._route(leg, plain, now)
            link.routed += fstats.received - before
            return
        if demux.classify(data) == demux.DTLS:
            self._receive(self.links, inputs.LinkDtls(link, data))
        else:
            self.tables.counters["relay_garbage"] += 1

    def _route(self, peer: Peer, plain: bytes, now: float) -> None:
        """Forward one unprotected RTP packet of a publisher (or a relay link's ingress leg)."""
        # The packet's header and extensions are parsed here, once: the
        # receive statistics, transport-wide feedback, the audio level, the
        # forwarder and the native leaf all read this view.
        view = self._view
        try:
            self._parse(view, plain)
            parsed = True
        except RtpParseError:
            # libsrtp refuses a packet shorter than its RTP header, and the
            # demultiplexer took only version 2, so the fixed header's fields
            # are read; the forwarder counts the packet and drops it.
            parsed = False
        seq, ts, ssrc = view.seq, view.timestamp, view.ssrc
        # Jitter and the sender's estimator measure the network, not this loop.
        arrival = self._arrival(now)
        stats = peer.recv_stats.get(ssrc)
        if stats is not None:
            stats.on_packet(seq, ts, arrival, len(plain))
        elif peer.rid_tracks and self._learn_ssrc(peer, plain, ssrc, now):
            stats = peer.recv_stats.get(ssrc)
            if stats is not None:
                stats.on_packet(seq, ts, arrival, len(plain))
        recording = peer.recording
        if recording is not None:
            recording.append((ssrc, plain, now))  # drained by sfu.recording.core, off this path
        if not parsed:
            peer.forwarder.refuse(view)
            return
        twcc = peer.twcc
        if twcc is not None:
            # Every packet with the extension, RTX and padding probes
            # too: the sender's estimator wants each one's arrival.
            offset, length = view.extension(peer.twcc_id)
            if length >= 2:
                twcc.on_packet((plain[offset] << 8) | plain[offset + 1], arrival)
        if peer.levels:
            self._audio_level(peer, view, now)
        out = self._routed
        forwarder = peer.forwarder
        fstats = forwarder.stats
        keyframe_requests = fstats.keyframe_requests
        fan = self._fan
        if fan is not None:
            # The native leaf makes, protects and sends the steady-state
            # copies; the forwarder makes the others, and the leaf sends those.
            steady = forwarder.route_view(view, now, out, True)
            if steady is not None:
                fan.forward(*steady)
                if steady[3]:
                    forwarder.route_rest(steady, out)
                if out:
                    fan.send(out)
                    out.clear()
        else:
            forwarder.route_view(view, now, out)
            sendto = self._sendto
            for sub, packet in out:
                protect = sub.protect
                if protect is not None:
                    try:
                        sendto(protect(packet), sub.addr)
                    except _SRTP_ERRORS:
                        sub.srtp_errors += 1
            out.clear()
        if fstats.keyframe_requests != keyframe_requests:
            # A long upstream gap: the forwarder asked for a keyframe
            # instead of NACKs; send it now, not at the next timer.
            self._flush_rtcp(peer.room)
        due = forwarder.get_timer()
        if due is not None and (self._when is None or due < self._when):
            self._arm(due)

    def _learn_ssrc(self, peer: Peer, plain: bytes, ssrc: int, now: float) -> bool:
        """The hot path's slow branch: an SSRC the publisher has not used before."""
        learnt = self.layers.learn_ssrc(peer, plain, ssrc, now)
        self._act(self.layers.take_actions())
        return learnt

    # -- the slow path ------------------------------------------------------------------

    def _slow_path(self, data: bytes, addr: Address, peer: Peer | None) -> None:
        kind = demux.classify(data)
        now = self._now()
        if kind == demux.STUN:
            ufrag = local_ufrag_of(data)
            target = self.tables.by_ufrag.get(ufrag) if ufrag is not None else None
            if target is None:
                # Indications and responses carry no ufrag: a known address's keepalive.
                target = peer
            if target is None:
                self.tables.counters["stun_unknown_ufrag"] += 1
                return
            ice = target.transport.ice
            checks = ice.counters["checks"]
            self._receive(self.transports, inputs.PeerDatagram(target, data, addr), now)
            if ufrag is not None and ice.counters["checks"] == checks:
                # A request for a known ufrag that failed its checks (401, 400, ...).
                self.tables.counters["stun_refused"] += 1
        elif peer is None:
            if kind in (demux.RTP, demux.RTCP) and len(data) > 11:
                self._stranger_media(data, addr, kind, now)
                return
            if kind == demux.DTLS:
                self._receive(self.links, inputs.EarlyDtls(data, addr), now)
            reason = {
                demux.DTLS: "dtls_stranger",
                demux.RTP: "srtp_stranger",
                demux.RTCP: "srtp_stranger",
            }.get(kind, "garbage")
            self.tables.counters[reason] += 1
        elif kind == demux.DTLS:
            self._receive(self.transports, inputs.PeerDatagram(peer, data, addr), now)
        elif kind == demux.RTCP:
            self._rtcp(peer, data, addr, now)
        else:
            self.tables.counters["garbage" if kind != demux.RTP else "rtp_too_short"] += 1

    def _stranger_media(self, data: bytes, addr: Address, kind: int, now: float) -> None:
        """SRTP or SRTCP from an address no transport validated: a NAT rebinding
        (the path moves there and the packet is used) or a forgery
        (:mod:`sfu.transport.strangers`)."""
        rtcp = kind == demux.RTCP
        found = self._strangers.find(data, rtcp, self.tables.peers, now)
        if not isinstance(found, tuple):
            if found == "forged":
                self.tables.paths["forged"] += 1
            self.tables.counters["srtp_stranger"] += 1
            return
        peer, plain = found
        self._path_moved(peer, addr, "rebinding")
        if rtcp:
            self._rtcp_plain(peer, plain, now)
        else:
            peer.packets_in += 1
            peer.octets_in += len(data)
            self._route(peer, plain, now)

    def _path_moved(self, peer: Peer, addr: Address, how: str) -> None:
        """Authenticated media came from ``addr``: the peer's path is there now."""
        self._receive(self.transports, inputs.PathMoved(peer, addr, how))

    def _rtcp(self, peer: Peer, data: bytes, addr: Address, now: float) -> None:
        unprotect = peer.unprotect_rtcp
        if unprotect is None:
            self.tables.counters["srtp_not_keyed"] += 1
            return
        try:
            plain = unprotect(data)
        except _SRTP_ERRORS:
            peer.srtp_errors += 1
            return
        if addr != peer.addr:
            self._path_moved(peer, addr, "pair_change")
        self._rtcp_plain(peer, plain, now)

    def _rtcp_plain(self, peer: Peer, plain: bytes, now: float) -> None:
        try:
            packets = parse_compound(plain)
        except RtcpParseError:
            self.tables.counters["rtcp_malformed"] += 1
            return
        peer.rtcp_in += 1
        (ssrc,) = _SSRC.unpack_from(plain, 4)
        known = peer.rtcp_ssrcs
        if ssrc not in known and len(known) < RTCP_SSRCS:
            known.add(ssrc)
        self._rtcp_packets(peer, packets, now)

    def _rtcp_packets(self, peer: Peer, packets: Sequence[RtcpPacket], now: float) -> None:
        """Act on a leg's RTCP: reports, NACKs answered from the history, keyframe requests."""
        forwarder = peer.forwarder
        # SRs (lip-sync mapping, LSR/DLSR of our RRs) and the report blocks
        # about what we send (RTT), RFC 3550 6.4, at the time the datagram
        # came (this runs inside its datagram_received), as RTP's arrivals
        # are: an SR's NTP/RTP pair is placed on our clock by its arrival,
        # and a report block's round trip ends there. Read late, both were off
        # by the hold-up (a subscriber's SRs behind its packets, an RTT long).
        # Only a compound with a report pays for the stamp (a system call):
        # most of a subscriber's RTCP is feedback alone, ten times a second.
        reports = self.tables.reports
        if (
            any(isinstance(p, _REPORTS) for p in packets)
            and reports.on_rtcp(peer, packets, self._arrival(now)) is not None
        ):
            self._update_nack_interval(peer.room)
        for packet in packets:
            if isinstance(packet, Nack):
                routed = forwarder.handle_nack(peer, packet.media_ssrc, packet.lost(), now)
                protect = peer.protect
                if protect is not None and peer.addr is not None:
                    for _, resent in routed:
                        try:
                            self._send(protect(resent), peer.addr)
                        except _SRTP_ERRORS:
                            peer.srtp_errors += 1
            elif isinstance(packet, Pli):
                forwarder.handle_keyframe_request(peer, packet.media_ssrc, now)
            elif isinstance(packet, Fir):
                for ssrc, _seq in packet.entries:
                    forwarder.handle_keyframe_request(peer, ssrc, now)
            elif isinstance(packet, TransportCc | Remb) and peer.sends:
                self._receive(self.layers, inputs.SubscriberFeedback(peer, packet), now)
        self._flush_rtcp(peer.room)
        self._soon(forwarder.get_timer())

    def _update_nack_interval(self, room: MediaRoom) -> None:
        """Space upstream NACK retries by the room's round-trip times (RFC 4585 3.2).

        Only subscriber legs measure an RTT (a publisher's leg carries no
        stream of ours for it to report on), and each participant's two legs
        share one path, so the slowest subscriber leg stands in for the
        slowest publisher: a retry sooner than its RTT would only duplicate.
        """
        rtt = self.tables.reports.slowest_rtt(
            p.subscribe for p in room.participants.values() if p.subscribe is not None
        )
        if rtt is not None:
            room.forwarder.nack_interval = nack_interval_for(rtt)

    def _audio_level(self, peer: Peer, view: RtpView, now: float) -> None:
        """An audio packet's ssrc-audio-level (RFC 6464) for the room's active speaker."""
        ssrc = view.ssrc
        ext_id = peer.levels.get(ssrc)
        if ext_id is None:
            return
        offset, length = view.extension(ext_id)
        if length < 1:
            return
        # A relay link's leg carries the audio of remote participants: each
        # speaks under its own name, so every worker computes the same speaker.
        owners = peer.owners
        who = peer.participant if owners is None else owners.get(ssrc, peer.participant)
        speaker = peer.room.speaker
        level = view.packet[offset]
        speaker.update(who, bool(level & 0x80), level & 0x7F, now)
        self._soon(speaker.get_timer())

    # -- the clock, and what goes out ----------------------------------------------------------

    def _now(self) -> float:
        return self._time()

    def _send(self, data: bytes, addr: Address) -> None:
        self._sendto(data, addr)

    def _flush_rtcp(self, room: MediaRoom) -> None:
        pending = room.forwarder.rtcp_to_send()
        if pending:
            self._send_feedback(pending)

    def _send_feedback(self, pending: Sequence[tuple[object, RtcpPacket]]) -> None:
        """Send feedback packets (NACK, PLI, FIR, transport-cc, REMB) to their peers."""
        for key, compounds, packets in feedback_compounds(pending, self.settings.feedback_ssrc):
            peer = cast(Peer, key)
            if peer.protect_rtcp is None or peer.addr is None:
                self.tables.counters["rtcp_unsent"] += packets
                continue
            for compound in compounds:
                self._send_rtcp(peer, compound)

    def _send_rtcp(self, peer: Peer, compound: bytes) -> None:
        """Protect and send one compound RTCP packet on a peer's transport (RFC 3711 3.4)."""
        protect = peer.protect_rtcp
        addr = peer.addr
        if protect is None or addr is None:
            self.tables.counters["rtcp_unsent"] += 1
            return
        try:
            self._send(protect(compound), addr)
        except _SRTP_ERRORS:
            peer.srtp_errors += 1
            return
        peer.rtcp_out += 1


# --- helpers --------------------------------------------------------------------------


def _running_loop_time() -> float:
    return asyncio.get_running_loop().time()


def _as_read(now: float) -> float:
    """No socket to ask: a datagram arrived when the loop read it."""
    return now


def _no_socket(data: bytes, addr: Any) -> None:
    """``sendto`` before the socket is open or after it closed: nothing goes out."""
