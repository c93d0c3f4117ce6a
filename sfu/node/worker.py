"""The media worker: one UDP socket, every peer's transport, and the forwarding hot path.

:class:`MediaWorker` is the asyncio adapter around the sans-I/O cores. It owns
the socket (an :class:`asyncio.DatagramProtocol`, so uvloop reads it), the one
timer handles, the native leaf and the record of the tables every part shares
(:class:`~sfu.rooms.records.WorkerTables`). It is the :class:`sfu.control.messages.MediaControl`
signalling drives, by composition: :class:`sfu.negotiation.negotiator.Negotiator`
(rooms, transports, offer/answer), :class:`sfu.node.links.Links` (relay links) and
:class:`sfu.layers.choice.Layers` (simulcast, estimates, quality) are cores it holds;
each takes its inputs through one verb, ``receive(input, now)``, with a record
of :mod:`sfu.rooms.inputs` (a MediaControl call, a transport's STUN or DTLS, a
link's SRTCP, ...), queues what it wants done (:mod:`sfu.rooms.actions`), and the
worker carries that out (:meth:`MediaWorker._act`) after each input
(:meth:`MediaWorker._receive`). The
protocol work below them is :class:`sfu.transport.peer.PeerTransport` (ICE-lite,
DTLS-SRTP), :class:`sfu.forward.forwarder.Forwarder` (routing, rewriting, repair) and
:class:`sfu.feedback.speaker.SpeakerDetector`. Forwarding is no action: the hot path
below sends each copy itself.

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
* anything else from an unknown address (DTLS from a stranger, garbage) is
  dropped and counted; nothing a peer sends raises.

The hot path runs synchronously in :meth:`MediaWorker.datagram_received`:
SRTP unprotect once, :meth:`Forwarder.route_into` into one reused list, then
for each subscriber its own SRTP protect and ``sendto`` its selected address.
With the native fan-out (:mod:`sfu.forward.native`), ``route_into`` hands back the
steady-state copies instead of making them; the worker has the leaf make,
protect and send those with ``sendmmsg`` (``forward``), then the others the
forwarder makes (``route_rest``, ``send``).
No task, coroutine or queue per packet; the forwarder's keys *are* the
subscribers' peer records, so there is no lookup per subscriber either, and
the per-packet counters are plain attribute increments (the Prometheus
collector in :mod:`sfu.node.metrics` reads them at scrape time). Recording:
:mod:`sfu.recording.core`.

One :class:`Forwarder` per room, not per worker: a room's NACK and keyframe
timers then walk only its own tracks, its counters are the room's metrics for
free, and SSRCs only need to be unique within a room (two rooms may carry a
publisher that picked the same random SSRC). The hot path pays nothing for
it: each peer record holds its room's forwarder.

Timers: every core says when it next wants to run (``get_timer``); the worker
keeps one ``loop.call_at`` handle armed at the earliest of them and moves it
only when something earlier appears (the forwarder may ask for a NACK 10 ms
after a gap, checked after each routed packet with one comparison).

RTCP reports and bandwidth feedback (:mod:`sfu.feedback.reports`, :mod:`sfu.feedback.bandwidth`)
are one :class:`~sfu.feedback.reports.ReportScheduler` and one
:class:`~sfu.feedback.bandwidth.BandwidthFeedback` per worker, not per room, as their
cores are written: each publisher's tracks have a
:class:`~sfu.feedback.reports.ReceiveStatistics` fed on the hot path, each subscription
a :class:`~sfu.feedback.reports.SendStatistics`, each publisher transport a
transport-cc recorder or a REMB estimator. Per worker, the feedback timer ticks
ten times a second however many rooms there are, and the reports of many legs
fall due together (they are run up to ``_REPORT_SLACK`` late, which the
interval's own randomisation over [0.5, 1.5] dwarfs). These periodic wake-ups
have a timer handle of their own: on the main one each would walk every room
and transport to re-arm, which at a few hundred transports cost more than the
reports themselves. Every room's forwarder uses the worker's feedback SSRC, so
a publisher sees its receiver reports, NACKs, PLIs and bandwidth feedback come
from one SSRC.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pylibsrtp

from rtc import demux
from rtc.dtls import DtlsCertificate
from rtc.errors import RtcpParseError, RtpParseError
from rtc.ice import CONNECT_TIMEOUT, CONSENT_TIMEOUT, Address, local_ufrag_of
from rtc.machine import earliest
from rtc.rtcp.compound import RtcpPacket, parse_compound
from rtc.rtcp.feedback import Fir, Nack, Pli, Remb
from rtc.rtcp.transport_cc import TransportCc
from rtc.rtp.extensions import transport_sequence_number
from sfu.control.messages import (
    MediaEvent,
    PublishResult,
    RecordingOrder,
    RelayedTrack,
    RelayPeer,
    Restart,
    Source,
    View,
)
from sfu.feedback.bandwidth import BandwidthFeedback
from sfu.feedback.reports import ReportScheduler, feedback_compounds, nack_interval_for
from sfu.forward import native
from sfu.forward.forwarder import Forwarder
from sfu.layers.choice import Layers
from sfu.negotiation.negotiator import Negotiator
from sfu.node import metrics
from sfu.node.links import Links
from sfu.recording.aio import RecordingWriter, recording_options
from sfu.rooms import inputs
from sfu.rooms.actions import (
    Action,
    Arm,
    ArmRtcp,
    Emit,
    FlushRtcp,
    Rearm,
    Send,
    SendRtcp,
    carried_out,
)
from sfu.rooms.records import Link, Peer, Room, WorkerTables
from sfu.rooms.snapshot import worker_snapshot
from sfu.transport.strangers import RTCP_SSRCS, StrangerSearch

__all__ = ["MediaWorker"]


if TYPE_CHECKING:
    from wadud.config import Settings

log = logging.getLogger("wadud.sfu.worker")

R = TypeVar("R")

# What pylibsrtp raises for a packet it refuses (auth, replay, size); the hot
# path catches these itself instead of going through rtc.srtp's wrapper.
_SRTP_ERRORS = (pylibsrtp.Error, ValueError, TypeError)
_SSRC = struct.Struct("!I")
_FIXED = struct.Struct("!BBHII")
_SOCKET_BUFFER = 4 * 1024 * 1024
# How late the report timer may run, so the reports of legs due close together
# go out in one wake-up (see the module docstring).
_REPORT_SLACK = 0.05
# A compound per SR (or RR), each with an SDES of one chunk. aiortc (our
# Python client) misreads an SDES of several chunks: it takes a chunk's end
# to be the null item type and one length octet, not the null octets up to
# the next 32-bit boundary (RFC 3550 6.5), so unless each CNAME's length is a
# multiple of 4 it loses the whole compound, SRs and BYE included. A few more,
# smaller packets per leg and second is all this costs.
_ONE_REPORT_PER_COMPOUND = 0


# --- the worker -------------------------------------------------------------------------


class MediaWorker(asyncio.DatagramProtocol):
    """An SFU worker on one UDP port (RFC 8445 2.5 ICE-lite, RFC 5764 DTLS-SRTP, RFC 3550 7.1).

    ``host``/``port``: what the socket binds (port 0: any free port).
    ``announced_addresses``: the IPs put in host candidates when peers reach
    the worker at another address (NAT, cloud); default the bound host.
    ``consent_timeout``: seconds without ICE consent checks (RFC 7675) before
    a transport fails. ``forwarder_options`` go to each room's
    :class:`~sfu.forward.forwarder.Forwarder`. ``remb_max_bitrate`` (bits/s) caps the
    REMB estimate sent to publishers without transport-cc
    (draft-alvestrand-rmcat-remb-03). ``worker_id`` names the worker to
    other workers' relay links (its registry id; random by default);
    ``link_options`` go to each :class:`~sfu.transport.relay.RelayLink`, ``recording`` to its
    recorder.
    ``simulcast``: accept publishers' RFC 8853 simulcast and pick a layer
    per subscriber (:mod:`sfu.layers.choice`). ``red``: accept publishers' Opus RED
    (RFC 2198) and offer it to subscribers (those that refuse it get plain
    Opus, :mod:`sfu.forward.forwarder`); off, audio is negotiated as plain Opus.
    """

    def __init__(
        self,
        *,
        worker_id: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        announced_addresses: Sequence[str] = (),
        consent_timeout: float = CONSENT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        certificate: DtlsCertificate | None = None,
        forwarder_options: Mapping[str, Any] | None = None,
        remb_max_bitrate: int = 2_500_000,
        link_options: Mapping[str, Any] | None = None,
        simulcast: bool = True,
        red: bool = True,
        recording: Mapping[str, Any] | None = None,
    ) -> None:
        self.simulcast = simulcast
        self.red = red
        self.worker_id = worker_id or f"worker-{secrets.token_hex(4)}"
        self.host = host
        self.port = port
        self.announced_addresses = list(announced_addresses)
        self.consent_timeout = consent_timeout
        self.connect_timeout = connect_timeout
        self.certificate = certificate or DtlsCertificate.generate(
            datetime.datetime.now(datetime.UTC)
        )
        self.forwarder_options = dict(forwarder_options or {})
        self.remb_max_bitrate = remb_max_bitrate
        self.link_options = dict(link_options or {})
        """Keyword arguments of each relay link (:class:`sfu.transport.relay.RelayLink`): timeouts.
        """
        self.feedback_ssrc = secrets.randbits(32) or 1
        """The SSRC our RTCP (reports, NACK, PLI, bandwidth feedback) is sent from."""
        self.tables = WorkerTables(
            ReportScheduler(
                ssrc=self.feedback_ssrc,
                cname="wadud",
                wall_offset=0.0,
                max_size=_ONE_REPORT_PER_COMPOUND,
            ),
            BandwidthFeedback(),
        )
        """The rooms, transports and routing tables every part of the worker
        shares; the reports' ``wall_offset`` is set by :meth:`start`."""
        # The hot path's own reference to the table it reads per datagram.
        self._by_addr = self.tables.by_addr
        self._strangers = StrangerSearch()
        self.layers = Layers(self.tables)
        """Simulcast layers, estimates, dynacast and quality of subscribers
        (:mod:`sfu.layers.choice`).
        """
        self.negotiator = Negotiator(
            self.tables,
            self.layers,
            certificate=self.certificate,
            candidates=lambda: self.candidate_addresses,
            consent_timeout=consent_timeout,
            connect_timeout=connect_timeout,
            forwarder_options=self.forwarder_options,
            simulcast=simulcast,
            red=red,
            feedback_ssrc=self.feedback_ssrc,
            remb_max_bitrate=remb_max_bitrate,
        )
        """Rooms, transports and offer/answer (:mod:`sfu.negotiation.negotiator`)."""
        self.links = Links(
            self.tables,
            self.negotiator,
            certificate=self.certificate,
            worker_id=self.worker_id,
            link_options=self.link_options,
        )
        """Relay links to other workers (:mod:`sfu.node.links`)."""
        # The hot path's own reference to the links' table of peer addresses.
        self._link_addrs = self.links.by_addr
        self._listeners: list[Callable[[MediaEvent], None]] = []
        self.recordings = RecordingWriter(self.tables, self._emit, **(recording or {}))
        self._routed: list[tuple[Any, bytes]] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._time: Callable[[], float] = _running_loop_time
        self._sendto: Callable[[bytes, Any], None] = _no_socket
        self._fanout: native.Fanout | None = None
        """The native protect-and-sendmmsg leaf (sfu/forward/native.py), None for the Python loop.
        """
        self._fan: native.Fanout | None = None
        """``_fanout`` while writing is not paused: the hot path's choice of loop."""
        self._v6 = False
        self._timer: asyncio.TimerHandle | None = None
        self._when: float | None = None
        self._rtcp_timer: asyncio.TimerHandle | None = None
        self._rtcp_when: float | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    def from_settings(
        cls, settings: Settings, port: int, worker_id: str | None = None
    ) -> MediaWorker:
        """A worker on ``port`` as the media_* settings describe it (the
        in-process worker of ``wadud serve`` and each of ``wadud media``'s)."""
        return cls(
            worker_id=worker_id,
            host=settings.media_host,
            port=port,
            announced_addresses=settings.media_announced_addresses,
            consent_timeout=settings.media_consent_timeout,
            remb_max_bitrate=settings.media_remb_max_bitrate,
            simulcast=settings.media_simulcast,
            red=settings.media_red,
            recording=recording_options(settings),
        )

    async def start(self) -> None:
        """Bind the socket; raises OSError (EADDRINUSE) if the port is taken."""
        loop = self._loop = asyncio.get_running_loop()
        self._time = loop.time
        # NTP timestamps in reports are wall-clock time; everything else runs on the loop's clock.
        self.tables.reports.wall_offset = time.time() - loop.time()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                # Video bursts (a keyframe is dozens of packets times the fan-out).
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
            sock.bind((self.host, self.port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._v6 = family == socket.AF_INET6
        transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._transport = transport
        self.port = sock.getsockname()[1]
        self._fanout = self._fan = native.fanout(sock)
        metrics.register_worker(self)
        log.info(
            "media worker listening on %s:%d",
            self.host,
            self.port,
            extra={"host": self.host, "port": self.port, "candidates": self.candidate_addresses},
        )

    async def close(self) -> None:
        """Close every transport (DTLS close_notify), cancel the timer, close the socket."""
        if self._closed:
            return
        self._closed = True
        await self.recordings.close()
        for name in list(self.tables.rooms):
            self._close_room(name, "worker closed")
        self._receive(self.links, inputs.CloseLinks("worker closed"))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._rtcp_timer is not None:
            self._rtcp_timer.cancel()
            self._rtcp_timer = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._sendto = _no_socket
        self._fanout = self._fan = None
        log.info("media worker stopped", extra={"port": self.port})

    async def __aenter__(self) -> MediaWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def address(self) -> Address:
        """The bound (host, port)."""
        return (self.host, self.port)

    @property
    def candidate_addresses(self) -> list[Address]:
        """(address, port) of each host candidate (RFC 8445 section 5.1.1.1)."""
        hosts = self.announced_addresses or [self.host]
        if hosts == ["0.0.0.0"] or hosts == ["::"]:
            # A wildcard is no candidate; without announced addresses only
            # this machine can reach the worker anyway.
            hosts = ["127.0.0.1"]
        return [(h, self.port) for h in hosts]

    def room_forwarder(self, room: str) -> Forwarder | None:
        """The forwarder of a live room (for tests and tools)."""
        r = self.tables.rooms.get(room)
        return None if r is None else r.forwarder

    def rooms(self) -> list[str]:
        return list(self.tables.rooms)

    # -- sfu.control.messages.MediaControl: each call is one input to a core
    # -------------------------

    def add_listener(self, listener: Callable[[MediaEvent], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, event: MediaEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("media event listener failed", extra={"event": repr(event)})

    def _receive(self, core: inputs.Core, input: inputs.Input[R], now: float | None = None) -> R:
        """Hand ``input`` to ``core`` (:meth:`sfu.rooms.inputs.Core.receive`) at ``now``
        (the clock's, unless given), then carry out what it queued, even if it raised."""
        with carried_out(core, self._act):
            return core.receive(input, self._now() if now is None else now)

    async def publish(
        self, room: str, participant: str, offer: str, sources: Mapping[str, Source]
    ) -> PublishResult:
        """Answer a publish offer (RFC 8829 5.3): :class:`sfu.rooms.inputs.Publish`."""
        return self._receive(self.negotiator, inputs.Publish(room, participant, offer, sources))

    async def subscribe(
        self,
        room: str,
        participant: str,
        track_ids: Sequence[str],
        restart: Restart | None = None,
    ) -> str | None:
        """Offer ``track_ids`` to ``participant`` (RFC 8829 5.2):
        :class:`sfu.rooms.inputs.Subscribe`.
        """
        return self._receive(
            self.negotiator, inputs.Subscribe(room, participant, track_ids, restart)
        )

    async def answer(self, room: str, participant: str, sdp: str) -> None:
        """Take a subscriber's answer (RFC 3264 section 6): :class:`sfu.rooms.inputs.Answer`."""
        self._receive(self.negotiator, inputs.Answer(room, participant, sdp))

    async def set_muted(self, room: str, track_id: str, muted: bool) -> None:
        """Stop or resume forwarding a track: :class:`sfu.rooms.inputs.SetMuted`."""
        self._receive(self.negotiator, inputs.SetMuted(room, track_id, muted))

    async def unpublish(self, room: str, participant: str, track_id: str) -> None:
        """Forget a track and every subscription to it: :class:`sfu.rooms.inputs.Unpublish`."""
        self._receive(self.negotiator, inputs.Unpublish(room, participant, track_id))

    async def record(self, room: str, order: RecordingOrder | None) -> None:
        """Record ``room``'s tracks, or stop (None): :meth:`RecordingWriter.record`."""
        self.recordings.record(room, order, self._now())

    async def leave(self, room: str, participant: str) -> None:
        """Close the participant's transports, forget its tracks (idempotent)."""
        self._receive(self.negotiator, inputs.Leave(room, participant))

    async def close_room(self, room: str) -> None:
        """Everyone leaves and the room is forgotten (idempotent)."""
        self._close_room(room, "room closed")

    def _close_room(self, name: str, reason: str) -> None:
        room = self.tables.rooms.get(name)
        close = inputs.CloseRoom(name, reason)
        self._receive(self.negotiator, close)
        if room is not None:
            self._receive(self.links, close)

    def link_of(self, peer_worker: str) -> Link | None:
        """The live link to a peer worker (for tests and tools)."""
        return self.links.link_of(peer_worker)

    def relay_identity(self) -> tuple[str, str]:
        """This worker's id and DTLS fingerprint, ``"sha-256 AB:CD:..."`` (RFC 8122 section 5)."""
        return self.links.relay_identity()

    async def relay_send(
        self, room: str, peer: RelayPeer, track_ids: Sequence[str]
    ) -> list[RelayedTrack]:
        """Send ``track_ids`` of ``room`` to ``peer``: :class:`sfu.rooms.inputs.RelaySend`."""
        return self._receive(self.links, inputs.RelaySend(room, peer, track_ids))

    async def relay_receive(
        self, room: str, peer: RelayPeer, tracks: Sequence[RelayedTrack]
    ) -> None:
        """Receive ``tracks`` of ``room`` from ``peer``: :class:`sfu.rooms.inputs.RelayReceive`."""
        self._receive(self.links, inputs.RelayReceive(room, peer, tracks))

    async def set_view(self, room: str, participant: str, track_id: str, view: View) -> None:
        """How ``participant`` shows ``track_id``: :class:`sfu.rooms.inputs.SetView`."""
        self._receive(self.layers, inputs.SetView(room, participant, track_id, view))

    async def set_audio_only(self, room: str, participant: str, enabled: bool) -> None:
        """``participant`` receives no video while ``enabled``:
        :class:`sfu.rooms.inputs.SetAudioOnly`.
        """
        self._receive(self.layers, inputs.SetAudioOnly(room, participant, enabled))

    # -- asyncio.DatagramProtocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._sendto = self._transport.sendto

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away: its consent expires.
        self.tables.counters["socket_error"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
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
        # libsrtp refuses a packet shorter than its RTP header, so
        # the fixed header is there to read.
        _, _, seq, ts, ssrc = _FIXED.unpack_from(plain)
        stats = peer.recv_stats.get(ssrc)
        if stats is not None:
            stats.on_packet(seq, ts, now, len(plain))
        elif peer.rid_tracks and self._learn_ssrc(peer, plain, ssrc, now):
            stats = peer.recv_stats.get(ssrc)
            if stats is not None:
                stats.on_packet(seq, ts, now, len(plain))
        recording = peer.recording
        if recording is not None:
            recording.append((ssrc, plain, now))  # drained by sfu.recording.core, off this path
        twcc = peer.twcc
        if twcc is not None:
            # Every packet with the extension, RTX and padding probes
            # too: the sender's estimator wants each one's arrival.
            try:
                tseq = transport_sequence_number(plain, peer.twcc_id)
            except RtpParseError:
                tseq = None
            if tseq is not None:
                twcc.on_packet(tseq, now)
        if peer.levels:
            self._audio_level(peer, plain, now)
        out = self._routed
        forwarder = peer.forwarder
        fstats = forwarder.stats
        keyframe_requests = fstats.keyframe_requests
        fan = self._fan
        if fan is not None:
            # The native leaf makes, protects and sends the steady-state
            # copies; the forwarder makes the others, and the leaf sends those.
            steady = forwarder.route_into(plain, now, out, True)
            if steady is not None:
                fan.forward(*steady)
                if steady[3]:
                    forwarder.route_rest(steady, out)
                if out:
                    fan.send(out)
                    out.clear()
        else:
            forwarder.route_into(plain, now, out)
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
            self._receive(self.negotiator, inputs.PeerDatagram(target, data, addr), now)
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
            self._receive(self.negotiator, inputs.PeerDatagram(peer, data, addr), now)
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
        self._receive(self.negotiator, inputs.PathMoved(peer, addr, how))

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
        # about what we send (RTT), RFC 3550 6.4.
        if self.tables.reports.on_rtcp(peer, packets, now) is not None:
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
            elif isinstance(packet, TransportCc | Remb) and peer.direction == "subscribe":
                self._receive(self.layers, inputs.SubscriberFeedback(peer, packet), now)
        self._flush_rtcp(peer.room)
        self._soon(forwarder.get_timer())

    def _update_nack_interval(self, room: Room) -> None:
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

    def _audio_level(self, peer: Peer, plain: bytes, now: float) -> None:
        ssrc = _SSRC.unpack_from(plain, 8)[0]
        ext_id = peer.levels.get(ssrc)
        if ext_id is None:
            return
        # A relay link's leg carries the audio of remote participants: each
        # speaks under its own name, so every worker computes the same speaker.
        owners = peer.owners
        who = peer.participant if owners is None else owners.get(ssrc, peer.participant)
        speaker = peer.room.speaker
        if speaker.hear(who, plain, ext_id, now):
            self._soon(speaker.get_timer())

    # -- timers and output ------------------------------------------------------------------

    def _act(self, actions: list[Action]) -> None:
        """Carry out what a core queued (:mod:`sfu.rooms.actions`), in its order."""
        for action in actions:
            match action:
                case Send(data, addr):
                    self._send(data, addr)
                case SendRtcp(peer, compound):
                    self._send_rtcp(peer, compound)
                case FlushRtcp(room):
                    self._flush_rtcp(room)
                case Emit(event):
                    self._emit(event)
                case Arm(when):
                    self._soon(when)
                case ArmRtcp():
                    self._soon_rtcp()
                case Rearm():
                    self._rearm()

    def _now(self) -> float:
        return self._time()

    def _send(self, data: bytes, addr: Address) -> None:
        self._sendto(data, addr)

    def _arm(self, when: float) -> None:
        if self._closed or self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._when = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _soon(self, when: float | None) -> None:
        """Make sure the timer fires by ``when``: O(1) for the datagram paths.

        A deadline that moved later (a consent check refreshed a transport)
        leaves the timer early; it then finds nothing due and re-arms with
        :meth:`_rearm`, which looks at every core.
        """
        if when is not None and (self._when is None or when < self._when):
            self._arm(when)

    def _rearm(self) -> None:
        rooms = self.tables.rooms.values()
        when = earliest(
            [self.negotiator.due(), self.links.due()]
            + [room.forwarder.get_timer() for room in rooms]
            + [room.speaker.get_timer() for room in rooms]
        )
        if when == self._when:
            return
        if when is None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._when = None
            return
        self._arm(when)

    def _on_timer(self) -> None:
        due = self._when
        self._timer = self._when = None
        # The loop's clock has millisecond steps: never hand a core a `now`
        # before the deadline it asked for, or it would ask again at once.
        now = self._now() if due is None else max(self._now(), due)
        for room in list(self.tables.rooms.values()):
            forwarder = room.forwarder
            when = forwarder.get_timer()
            if when is not None and when <= now:
                forwarder.handle_timer(now)
            when = room.speaker.get_timer()
            if when is not None and when <= now:
                change = room.speaker.handle_timer(now)
                if change is not None:
                    speaker = cast(str | None, change.speaker)
                    self._receive(self.negotiator, inputs.SpeakerChanged(room, speaker), now)
            self._flush_rtcp(room)
        self.negotiator.handle_timer(now)
        self._act(self.negotiator.take_actions())
        self.links.handle_timer(now)
        self._act(self.links.take_actions())
        self._rearm()

    # -- the periodic RTCP timer: reports and bandwidth feedback ---------------------------

    def _rtcp_due(self) -> float | None:
        reports = self.tables.reports.get_timer()
        return earliest(
            (
                self.tables.bandwidth.get_timer(),
                self.layers.due(),
                None if reports is None else reports + _REPORT_SLACK,
            )
        )

    def _soon_rtcp(self) -> None:
        """Make sure the RTCP timer fires by the reports' or the feedback's next deadline."""
        when = self._rtcp_due()
        if when is None or self._closed or self._loop is None:
            return
        if self._rtcp_when is not None and self._rtcp_when <= when:
            return
        if self._rtcp_timer is not None:
            self._rtcp_timer.cancel()
        self._rtcp_when = when
        self._rtcp_timer = self._loop.call_at(when, self._on_rtcp_timer)

    def _on_rtcp_timer(self) -> None:
        due = self._rtcp_when
        self._rtcp_timer = self._rtcp_when = None
        now = self._now() if due is None else max(self._now(), due)
        # A failing round (a bug) is counted and logged; the timer goes on.
        try:
            when = self.tables.reports.get_timer()
            if when is not None and when <= now:
                for key, compound in self.tables.reports.handle_timer(now):
                    self._send_rtcp(cast(Peer, key), compound)
            when = self.tables.bandwidth.get_timer()
            if when is not None and when <= now:
                self._send_feedback(self.tables.bandwidth.handle_timer(now))
            when = self.layers.due()
            if when is not None and when <= now:
                self.layers.tick(now)
                self._act(self.layers.take_actions())
        except Exception:
            self.tables.timer_failures += 1
            log.exception("media worker RTCP round failed", extra={"worker": self.worker_id})
        finally:
            self._soon_rtcp()

    def _flush_rtcp(self, room: Room) -> None:
        pending = room.forwarder.rtcp_to_send()
        if pending:
            self._send_feedback(pending)

    def _send_feedback(self, pending: Sequence[tuple[object, RtcpPacket]]) -> None:
        """Send feedback packets (NACK, PLI, FIR, transport-cc, REMB) to their peers."""
        for key, compounds, packets in feedback_compounds(pending, self.feedback_ssrc):
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

    # -- metrics -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counters and gauges for :mod:`sfu.node.metrics`, read at scrape time."""
        native_counters = self._fanout.counters() if self._fanout is not None else None
        snapshot = worker_snapshot(self.tables, self.links.snapshot(), native_counters, self.port)
        return {**snapshot, "recordings": self.recordings.counts()}


# --- helpers --------------------------------------------------------------------------


def _running_loop_time() -> float:
    return asyncio.get_running_loop().time()


def _no_socket(data: bytes, addr: Any) -> None:
    """``sendto`` before the socket is open or after it closed: nothing goes out."""
