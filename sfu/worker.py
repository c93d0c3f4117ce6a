"""The media worker: one UDP socket, every peer's transport, and the forwarding hot path.

:class:`MediaWorker` is the asyncio adapter around the sans-I/O cores. It owns
the socket (an :class:`asyncio.DatagramProtocol`, so uvloop reads it), the one
timer handle, and the tables that say which datagram belongs to whom; the
protocol work is done by :class:`sfu.transport.PeerTransport` (ICE-lite,
DTLS-SRTP), :class:`sfu.forward.Forwarder` (routing, rewriting, repair) and
:class:`sfu.speaker.ActiveSpeaker`. It implements :class:`sfu.control.MediaControl`,
the interface signalling drives.

Demultiplexing (RFC 7983 section 7) on one port shared by every peer:

* a datagram from an address some transport validated with an ICE check is
  that transport's: SRTP goes straight to the hot path, SRTCP, STUN and DTLS
  to the slow path;
* STUN is always routed by the local ufrag in its USERNAME (RFC 8445 section
  7.3), even from a known address, so two transports that share a remote
  address (a client behind one NAT binding) cannot answer each other's checks;
* anything else from an unknown address (DTLS or SRTP from a stranger,
  garbage) is dropped and counted; nothing a peer sends raises.

The hot path runs synchronously in :meth:`MediaWorker.datagram_received`:
SRTP unprotect once, :meth:`Forwarder.route_into` into one reused list, then
for each subscriber its own SRTP protect and ``sendto`` its selected address.
No task, coroutine or queue per packet; the forwarder's keys *are* the
subscribers' peer records, so there is no lookup per subscriber either, and
the per-packet counters are plain attribute increments (the Prometheus
collector in :mod:`sfu.metrics` reads them at scrape time).

One :class:`Forwarder` per room, not per worker: a room's NACK and keyframe
timers then walk only its own tracks, its counters are the room's metrics for
free, and SSRCs only need to be unique within a room (two rooms may carry a
publisher that picked the same random SSRC). The hot path pays nothing for
it: each peer record holds its room's forwarder.

Timers: every core says when it next wants to run (``get_timer``); the worker
keeps one ``loop.call_at`` handle armed at the earliest of them and moves it
only when something earlier appears (the forwarder may ask for a NACK 10 ms
after a gap, checked after each routed packet with one comparison).

Each participant has a *publish* transport (the client offers, we answer) and
a *subscribe* transport (we offer, the client answers), see
:mod:`sfu.control`. A subscription is handed to the forwarder only once the
subscriber's transport is connected: the keyframe it asks for on subscribing
must not be spent before the subscriber can decrypt it.

RTCP reports and bandwidth feedback (:mod:`sfu.reports`, :mod:`sfu.bandwidth`)
are one :class:`~sfu.reports.ReportScheduler` and one
:class:`~sfu.bandwidth.BandwidthFeedback` per worker, not per room, as their
cores are written: each publisher's tracks have a
:class:`~sfu.reports.ReceiveStatistics` fed on the hot path, each subscription
a :class:`~sfu.reports.SendStatistics`, each publisher transport a
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
import itertools
import logging
import secrets
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import pylibsrtp

from rtc import demux
from rtc.dtls import DtlsCertificate
from rtc.errors import DtlsError, RtcpParseError, RtpParseError, SdpNegotiationError
from rtc.ice import CONNECT_TIMEOUT, CONSENT_TIMEOUT, Address, local_ufrag_of
from rtc.rtcp import (
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    RtcpPacket,
    TransportCc,
    parse_compound,
)
from rtc.rtp import audio_level, transport_sequence_number
from rtc.sdp import (
    ABS_SEND_TIME,
    AUDIO_LEVEL,
    TRANSPORT_CC,
    Codec,
    Direction,
    Extmap,
    Fingerprint,
    ForwardedTrack,
    LocalParameters,
    MediaDescription,
    RtcpFeedback,
    SessionDescription,
    Setup,
    answer,
    offer_for_subscriber,
)
from sfu import metrics
from sfu.bandwidth import BandwidthFeedback, RembEstimator, TransportCcRecorder
from sfu.control import (
    ActiveSpeaker,
    MediaEvent,
    PublishResult,
    Source,
    TrackInfo,
    TransportState,
)
from sfu.errors import SfuStateError
from sfu.forward import Forwarder, ForwarderStats, Subscription
from sfu.reports import ReceiveStatistics, ReportScheduler, SendStatistics, nack_interval_for
from sfu.speaker import ActiveSpeaker as SpeakerDetector
from sfu.transport import (
    TERMINAL,
    AddressForgotten,
    AddressSelected,
    AddressValidated,
    PeerState,
    PeerTransport,
    StateChanged,
)

__all__ = ["MediaWorker"]

log = logging.getLogger("wadud.sfu.worker")

_Leg = Literal["publish", "subscribe"]

# What pylibsrtp raises for a packet it refuses (auth, replay, size); the hot
# path catches these itself instead of going through rtc.srtp's wrapper.
_SRTP_ERRORS = (pylibsrtp.Error, ValueError, TypeError)
_SSRC = struct.Struct("!I")
_FIXED = struct.Struct("!BBHII")
# Extensions forwarded to subscribers. The mid extension is not among them:
# its value is the publisher's mid, which means nothing on the subscriber's
# transport, and our offers carry a=ssrc lines to demultiplex by.
_FORWARDED_EXTENSIONS = (ABS_SEND_TIME, TRANSPORT_CC, AUDIO_LEVEL)
# Dynamic payload types (RFC 3551 section 6), then the range RFC 7587-era
# browsers use when 96-127 are full (RFC 8866 section 6.6 allows 35-63 with rtcp-mux).
_FREE_PAYLOAD_TYPES = tuple(itertools.chain(range(96, 128), range(35, 64)))
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
# Feedback compounds are split to stay under this many bytes before SRTCP
# (the size our transport-cc feedback is built for).
_RTCP_MAX = 1200


# --- records -------------------------------------------------------------------------


class _Room:
    __slots__ = ("forwarder", "name", "participants", "speaker", "speaker_sent", "tracks")

    def __init__(self, name: str, forwarder: Forwarder, speaker: SpeakerDetector) -> None:
        self.name = name
        self.forwarder = forwarder
        self.speaker = speaker
        self.speaker_sent: str | None = None
        self.participants: dict[str, _Participant] = {}
        self.tracks: dict[str, _Track] = {}


class _Participant:
    __slots__ = ("id", "publish", "room", "subscribe")

    def __init__(self, room: _Room, participant: str) -> None:
        self.room = room
        self.id = participant
        self.publish: _Peer | None = None
        self.subscribe: _Peer | None = None


class _Peer:
    """One transport of one participant, and the forwarder's key for it.

    The hot path reads ``addr``, ``forwarder``, ``levels``, ``recv_stats``,
    ``twcc``/``twcc_id``, the SRTP methods (bound once when the transport
    connects, None when it is not) and bumps ``packets_in``/``octets_in``.
    """

    __slots__ = (
        "addr",
        "addresses",
        "direction",
        "ext_ids",
        "forwarder",
        "levels",
        "local",
        "next_mid",
        "octets_in",
        "packets_in",
        "participant",
        "pending_offer",
        "protect",
        "protect_rtcp",
        "recv_stats",
        "reporting",
        "room",
        "rtcp_in",
        "rtcp_out",
        "sections",
        "srtp_errors",
        "ssrcs",
        "tracks",
        "transport",
        "twcc",
        "twcc_id",
        "unprotect",
        "unprotect_rtcp",
    )

    def __init__(
        self,
        room: _Room,
        participant: str,
        direction: _Leg,
        transport: PeerTransport,
        local: LocalParameters,
    ) -> None:
        self.addr: Address | None = None
        self.forwarder = room.forwarder
        self.levels: dict[int, int] = {}
        """Publisher's audio SSRC -> its ssrc-audio-level extension id (RFC 6464)."""
        self.recv_stats: dict[int, ReceiveStatistics] = {}
        """Publisher's media SSRC -> its reception statistics (RFC 3550 A.1, A.3, A.8)."""
        self.twcc: TransportCcRecorder | None = None
        """Set while the worker sends this publisher transport-cc feedback."""
        self.twcc_id = 0
        """The publisher's transport-wide-cc extension id (RFC 8285), with ``twcc``."""
        self.octets_in = 0
        self.packets_in = 0
        self.protect: Callable[[bytes], bytes] | None = None
        self.protect_rtcp: Callable[[bytes], bytes] | None = None
        self.unprotect: Callable[[bytes], bytes] | None = None
        self.unprotect_rtcp: Callable[[bytes], bytes] | None = None
        self.addresses: set[Address] = set()
        self.direction: _Leg = direction
        self.ext_ids: dict[str, int] = {}
        self.local = local
        self.next_mid = 0
        self.participant = participant
        self.pending_offer = False
        self.room = room
        self.reporting = False
        """Whether the worker's report scheduler has this leg (from its connection on)."""
        self.rtcp_in = 0
        self.rtcp_out = 0
        self.sections: list[_Section] = []
        self.ssrcs: set[int] = set()
        self.srtp_errors = 0
        self.tracks: dict[str, _Track] = {}
        """Publish side: mid -> track."""
        self.transport = transport

    def __repr__(self) -> str:
        return f"<peer {self.room.name}/{self.participant} {self.direction}>"


class _Track:
    __slots__ = ("codec", "extensions", "info", "live", "publisher", "rtx", "rtx_ssrc", "ssrc")

    def __init__(
        self,
        info: TrackInfo,
        publisher: _Peer,
        ssrc: int,
        rtx_ssrc: int | None,
        codec: Codec,
        rtx: Codec | None,
        extensions: dict[str, int],
    ) -> None:
        self.info = info
        self.publisher = publisher
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.codec = codec
        self.rtx = rtx
        self.extensions = extensions
        self.live = True


class _Section:
    """One m= section of a subscribe transport: the track it carries as the subscriber sees it.

    A section whose track ended is *stopped* (port 0, RFC 3264 section 8.2),
    except the first one, which is *parked* instead: it carries the BUNDLE tag
    (RFC 8843 section 7.2), and rejecting it would move the BUNDLE transport
    to another m= section (section 7.5.3), which Chromium does by closing the
    DTLS association and starting a new one. A parked section stays in the
    BUNDLE group with its port, ``a=inactive``, no msid and no SSRC.
    """

    __slots__ = (
        "forwarded",
        "negotiated",
        "parked",
        "pt_map",
        "rtx_map",
        "sub_extensions",
        "subscribed",
        "track",
        "use_rtx",
    )

    def __init__(self, track: _Track, forwarded: ForwardedTrack, pt_map: dict[int, int]) -> None:
        self.track = track
        self.forwarded = forwarded
        self.pt_map = pt_map
        """Publisher payload type -> the subscriber's (media only; RTX is the forwarder's)."""
        self.rtx_map: dict[int, int] = {}
        self.sub_extensions: dict[str, int] = {}
        self.negotiated = False
        self.parked = False
        self.subscribed = False
        self.use_rtx = False

    @property
    def live(self) -> bool:
        """Whether the section carries its track (neither stopped nor parked)."""
        return not self.forwarded.stopped and not self.parked

    def stop(self, first: bool) -> None:
        if first:
            self.parked = True
        else:
            self.forwarded = replace(self.forwarded, stopped=True)


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A publish offer's m= section that carries a track, as answered."""

    mid: str
    kind: Literal["audio", "video"]
    ssrc: int
    rtx_ssrc: int | None
    codec: Codec
    rtx: Codec | None
    rtx_payload_types: dict[int, int]
    extensions: dict[str, int]
    nack: bool
    fir: bool


# --- the worker -------------------------------------------------------------------------


class MediaWorker(asyncio.DatagramProtocol):
    """An SFU worker on one UDP port (RFC 8445 2.5 ICE-lite, RFC 5764 DTLS-SRTP, RFC 3550 7.1).

    ``host``/``port``: what the socket binds (port 0: any free port).
    ``announced_addresses``: the IPs put in host candidates when peers reach
    the worker at another address (NAT, cloud); default the bound host.
    ``consent_timeout``: seconds without ICE consent checks (RFC 7675) before
    a transport fails. ``forwarder_options`` go to each room's
    :class:`~sfu.forward.Forwarder`. ``remb_max_bitrate`` (bits/s) caps the
    REMB estimate sent to publishers without transport-cc
    (draft-alvestrand-rmcat-remb-03).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        announced_addresses: Sequence[str] = (),
        consent_timeout: float = CONSENT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        certificate: DtlsCertificate | None = None,
        forwarder_options: Mapping[str, Any] | None = None,
        remb_max_bitrate: int = 2_500_000,
    ) -> None:
        self.host = host
        self.port = port
        self.announced_addresses = list(announced_addresses)
        self.consent_timeout = consent_timeout
        self.connect_timeout = connect_timeout
        self.certificate = certificate or DtlsCertificate.generate(
            datetime.datetime.now(datetime.UTC)
        )
        self._fingerprint = self.certificate.fingerprint("sha-256")
        self.forwarder_options = dict(forwarder_options or {})
        self.remb_max_bitrate = remb_max_bitrate
        self.feedback_ssrc = secrets.randbits(32) or 1
        """The SSRC our RTCP (reports, NACK, PLI, bandwidth feedback) is sent from."""
        self.reports = ReportScheduler(
            ssrc=self.feedback_ssrc,
            cname="wadud",
            wall_offset=0.0,
            max_size=_ONE_REPORT_PER_COMPOUND,
        )
        """SR/RR/SDES of every leg (RFC 3550 6.4); ``wall_offset`` is set by :meth:`start`."""
        self.bandwidth = BandwidthFeedback()
        """transport-cc or REMB to every publisher transport that negotiated one."""
        self.counters: Counter[str] = Counter()
        """Datagrams dropped by the worker itself, by reason (metrics: ``sfu_dropped_total``)."""
        self.totals: Counter[str] = Counter()
        """Forwarder counters of rooms that are gone, so worker totals never go down."""
        self._rooms: dict[str, _Room] = {}
        self._peers: set[_Peer] = set()
        self._by_addr: dict[Address, _Peer] = {}
        self._by_ufrag: dict[str, _Peer] = {}
        self._listeners: list[Callable[[MediaEvent], None]] = []
        self._routed: list[tuple[Any, bytes]] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._time: Callable[[], float] = _running_loop_time
        self._sendto: Callable[[bytes, Any], None] = _no_socket
        self._v6 = False
        self._timer: asyncio.TimerHandle | None = None
        self._when: float | None = None
        self._rtcp_timer: asyncio.TimerHandle | None = None
        self._rtcp_when: float | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket; raises OSError (EADDRINUSE) if the port is taken."""
        loop = self._loop = asyncio.get_running_loop()
        self._time = loop.time
        # NTP timestamps in reports are wall-clock time; everything else runs on the loop's clock.
        self.reports.wall_offset = time.time() - loop.time()
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
        for name in list(self._rooms):
            self._close_room(name, "worker closed")
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
        r = self._rooms.get(room)
        return None if r is None else r.forwarder

    def rooms(self) -> list[str]:
        return list(self._rooms)

    # -- asyncio.DatagramProtocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._sendto = self._transport.sendto

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away: its consent expires.
        self.counters["socket_error"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._sendto = _no_socket

    def pause_writing(self) -> None:
        # The kernel refused datagrams and the loop started queueing them in
        # user space: drop instead, as a full UDP socket would, so the queue
        # (and every subscriber's latency) cannot grow without bound.
        self.counters["send_paused"] += 1
        self._sendto = self._drop_datagram

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._sendto = self._transport.sendto

    def _drop_datagram(self, data: bytes, addr: Any) -> None:
        self.counters["send_dropped"] += 1

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
                    self.counters["srtp_not_keyed"] += 1
                    return
                try:
                    plain = unprotect(data)
                except _SRTP_ERRORS:
                    peer.srtp_errors += 1
                    return
                peer.packets_in += 1
                peer.octets_in += len(data)
                now = self._time()
                # libsrtp refuses a packet shorter than its RTP header, so
                # the fixed header is there to read.
                _, _, seq, ts, ssrc = _FIXED.unpack_from(plain)
                stats = peer.recv_stats.get(ssrc)
                if stats is not None:
                    stats.on_packet(seq, ts, now, len(plain))
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
                forwarder.route_into(plain, now, out)
                if out:
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
                return
        self._slow_path(data, addr, peer)

    # -- the slow path ------------------------------------------------------------------

    def _slow_path(self, data: bytes, addr: Address, peer: _Peer | None) -> None:
        kind = demux.classify(data)
        now = self._now()
        if kind == demux.STUN:
            ufrag = local_ufrag_of(data)
            target = self._by_ufrag.get(ufrag) if ufrag is not None else None
            if target is None:
                # Indications and responses carry no ufrag: a known address's keepalive.
                target = peer
            if target is None:
                self.counters["stun_unknown_ufrag"] += 1
                return
            ice = target.transport.ice
            checks = ice.counters["checks"]
            target.transport.receive_datagram(data, addr, now)
            if ufrag is not None and ice.counters["checks"] == checks:
                # A request for a known ufrag that failed its checks (401, 400, ...).
                self.counters["stun_refused"] += 1
            self._service(target)
            self._soon(target.transport.get_timer())
        elif peer is None:
            reason = {
                demux.DTLS: "dtls_stranger",
                demux.RTP: "srtp_stranger",
                demux.RTCP: "srtp_stranger",
            }.get(kind, "garbage")
            self.counters[reason] += 1
        elif kind == demux.DTLS:
            peer.transport.receive_datagram(data, addr, now)
            self._service(peer)
            self._soon(peer.transport.get_timer())
        elif kind == demux.RTCP:
            self._rtcp(peer, data, now)
        else:
            self.counters["garbage" if kind != demux.RTP else "rtp_too_short"] += 1

    def _rtcp(self, peer: _Peer, data: bytes, now: float) -> None:
        unprotect = peer.unprotect_rtcp
        if unprotect is None:
            self.counters["srtp_not_keyed"] += 1
            return
        try:
            plain = unprotect(data)
        except _SRTP_ERRORS:
            peer.srtp_errors += 1
            return
        try:
            packets = parse_compound(plain)
        except RtcpParseError:
            self.counters["rtcp_malformed"] += 1
            return
        peer.rtcp_in += 1
        forwarder = peer.forwarder
        # SRs (lip-sync mapping, LSR/DLSR of our RRs) and the report blocks
        # about what we send (RTT), RFC 3550 6.4.
        if self.reports.on_rtcp(peer, packets, now) is not None:
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
            elif isinstance(packet, TransportCc | Remb):
                # HOOK sfu.bandwidth: a subscriber's bandwidth feedback (layer choice).
                pass
        self._flush_rtcp(peer.room)
        self._soon(forwarder.get_timer())

    def _update_nack_interval(self, room: _Room) -> None:
        """Space upstream NACK retries by the room's round-trip times (RFC 4585 3.2).

        Only subscriber legs measure an RTT (a publisher's leg carries no
        stream of ours for it to report on), and each participant's two legs
        share one path, so the slowest subscriber leg stands in for the
        slowest publisher: a retry sooner than its RTT would only duplicate.
        """
        rtts = []
        for p in room.participants.values():
            if p.subscribe is not None:
                rtt = self.reports.rtt(p.subscribe)
                if rtt is not None:
                    rtts.append(rtt)
        if rtts:
            room.forwarder.nack_interval = nack_interval_for(max(rtts))

    def _audio_level(self, peer: _Peer, plain: bytes, now: float) -> None:
        ext_id = peer.levels.get(_SSRC.unpack_from(plain, 8)[0])
        if ext_id is None:
            return
        try:
            level = audio_level(plain, ext_id)
        except RtpParseError:
            return
        if level is None:
            return
        speaker = peer.room.speaker
        speaker.update(peer.participant, level[0], level[1], now)
        due = speaker.get_timer()
        if due is not None and (self._when is None or due < self._when):
            self._arm(due)

    # -- transports ----------------------------------------------------------------------

    def _service(self, peer: _Peer) -> None:
        """Send what a transport wants sent and act on its events."""
        transport = peer.transport
        for datagram, addr in transport.datagrams_to_send():
            self._send(datagram, addr)
        while (event := transport.next_event()) is not None:
            if isinstance(event, AddressValidated):
                self._by_addr[event.address] = peer
                peer.addresses.add(event.address)
            elif isinstance(event, AddressForgotten):
                if self._by_addr.get(event.address) is peer:
                    del self._by_addr[event.address]
                peer.addresses.discard(event.address)
            elif isinstance(event, AddressSelected):
                peer.addr = event.address
            elif isinstance(event, StateChanged):
                if event.new is PeerState.CONNECTED:
                    self._connected(peer)
                elif event.new in TERMINAL:
                    self._down(peer, event.new, event.reason)

    def _connected(self, peer: _Peer) -> None:
        srtp = peer.transport.srtp
        assert srtp is not None  # CONNECTED means keyed
        peer.addr = peer.transport.remote
        peer.unprotect = srtp.inbound.unprotect
        peer.unprotect_rtcp = srtp.inbound.unprotect_rtcp
        peer.protect = srtp.outbound.protect
        peer.protect_rtcp = srtp.outbound.protect_rtcp
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
        self._emit(TransportState(peer.room.name, peer.participant, peer.direction, "connected"))
        now = self._now()
        # Reports start with the connection: before it nothing can be sent or received.
        if not peer.reporting:
            self.reports.add_leg(peer, now)
            peer.reporting = True
            for stats in peer.recv_stats.values():
                self.reports.add_receive(peer, stats)
        if peer.direction == "subscribe":
            self._apply_subscriptions(peer, now)
        else:
            self._start_bandwidth_feedback(peer, now)
            # Subscribers may have waited for this publisher: ask for keyframes now.
            for track in peer.tracks.values():
                if track.info.kind == "video" and track.live:
                    peer.forwarder.request_keyframe(track.ssrc, now)
        self._flush_rtcp(peer.room)
        self._soon(peer.forwarder.get_timer())
        self._soon_rtcp()

    def _start_bandwidth_feedback(self, peer: _Peer, now: float) -> None:
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
        member = self.bandwidth.get(peer)
        if member is None:
            for track in peer.tracks.values():
                ext_id = track.extensions.get(TRANSPORT_CC, 0)
                if ext_id and _has_feedback(track.codec, "transport-cc"):
                    recorder = TransportCcRecorder(self.feedback_ssrc, media_ssrc=track.ssrc)
                    peer.twcc, peer.twcc_id = recorder, ext_id
                    self.bandwidth.add(peer, recorder, now)
                    self._soon_rtcp()
                    return
            if not any(
                t.info.kind == "video" and _has_feedback(t.codec, "goog-remb")
                for t in peer.tracks.values()
            ):
                return
            member = RembEstimator(self.feedback_ssrc, max_bitrate=self.remb_max_bitrate)
            self.bandwidth.add(peer, member, now)
            self._soon_rtcp()
        if isinstance(member, RembEstimator):
            for track in peer.tracks.values():
                stats = peer.recv_stats.get(track.ssrc)
                if (
                    track.info.kind == "video"
                    and stats is not None
                    and track.ssrc not in member.sources
                ):
                    member.add_source(stats)

    def _down(self, peer: _Peer, state: PeerState, reason: str) -> None:
        peer.unprotect = peer.unprotect_rtcp = peer.protect = peer.protect_rtcp = None
        self.reports.remove_leg(peer)
        self.bandwidth.remove(peer)
        peer.reporting = False
        peer.twcc = None
        for address in peer.addresses:
            if self._by_addr.get(address) is peer:
                del self._by_addr[address]
        peer.addresses.clear()
        if self._by_ufrag.get(peer.transport.local_ufrag) is peer:
            del self._by_ufrag[peer.transport.local_ufrag]
        self._peers.discard(peer)
        for name, value in peer.transport.counters.items():
            self.counters[f"transport_{name}"] += value
        if peer.direction == "subscribe":
            peer.forwarder.remove_subscriber(peer)
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
        self._emit(
            TransportState(
                peer.room.name,
                peer.participant,
                peer.direction,
                "failed" if state is PeerState.FAILED else "closed",
                reason,
            )
        )

    def _new_peer(self, room: _Room, participant: str, direction: _Leg, now: float) -> _Peer:
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
        )
        peer = _Peer(room, participant, direction, transport, local)
        self._peers.add(peer)
        self._by_ufrag[transport.local_ufrag] = peer
        return peer

    def _close_peer(self, peer: _Peer, reason: str) -> None:
        if peer.transport.state not in TERMINAL:
            peer.transport.close(reason)
            self._service(peer)
        if peer.direction == "subscribe":
            peer.forwarder.remove_subscriber(peer)
        else:
            for track in list(peer.tracks.values()):
                self._remove_track(peer.room, track)

    # -- timers and output ------------------------------------------------------------------

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
        when: float | None = None
        for room in self._rooms.values():
            for due in (room.forwarder.get_timer(), room.speaker.get_timer()):
                if due is not None and (when is None or due < when):
                    when = due
        for peer in self._peers:
            due = peer.transport.get_timer()
            if due is not None and (when is None or due < when):
                when = due
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
        for room in list(self._rooms.values()):
            forwarder = room.forwarder
            when = forwarder.get_timer()
            if when is not None and when <= now:
                forwarder.handle_timer(now)
            when = room.speaker.get_timer()
            if when is not None and when <= now:
                change = room.speaker.handle_timer(now)
                if change is not None:
                    self._speaker_changed(room, cast(str | None, change.speaker))
            self._flush_rtcp(room)
        for peer in list(self._peers):
            when = peer.transport.get_timer()
            if when is not None and when <= now:
                peer.transport.handle_timer(now)
                self._service(peer)
        self._rearm()

    # -- the periodic RTCP timer: reports and bandwidth feedback ---------------------------

    def _rtcp_due(self) -> float | None:
        when = self.bandwidth.get_timer()
        due = self.reports.get_timer()
        if due is not None:
            due += _REPORT_SLACK
            if when is None or due < when:
                when = due
        return when

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
        when = self.reports.get_timer()
        if when is not None and when <= now:
            for key, compound in self.reports.handle_timer(now):
                self._send_rtcp(cast(_Peer, key), compound)
        when = self.bandwidth.get_timer()
        if when is not None and when <= now:
            feedback = self.bandwidth.handle_timer(now)
            if feedback:
                self._send_feedback(feedback)
        self._soon_rtcp()

    def _flush_rtcp(self, room: _Room) -> None:
        pending = room.forwarder.rtcp_to_send()
        if pending:
            self._send_feedback(pending)

    def _send_feedback(self, pending: Sequence[tuple[object, RtcpPacket]]) -> None:
        """Send feedback packets (NACK, PLI, FIR, transport-cc, REMB) to their peers.

        A compound packet starts with a report (RFC 3550 6.1): an empty RR
        keeps peers that did not negotiate rtcp-rsize (RFC 5506) happy. One
        compound per peer, split where it would pass ``_RTCP_MAX`` bytes.
        """
        by_peer: dict[_Peer, list[bytes]] = {}
        for key, packet in pending:
            by_peer.setdefault(cast(_Peer, key), []).append(bytes(packet))
        head = bytes(ReceiverReport(self.feedback_ssrc))
        for peer, packets in by_peer.items():
            if peer.protect_rtcp is None or peer.addr is None:
                self.counters["rtcp_unsent"] += len(packets)
                continue
            compound = [head]
            size = len(head)
            for data in packets:
                if len(compound) > 1 and size + len(data) > _RTCP_MAX:
                    self._send_rtcp(peer, b"".join(compound))
                    compound, size = [head], len(head)
                compound.append(data)
                size += len(data)
            self._send_rtcp(peer, b"".join(compound))

    def _send_rtcp(self, peer: _Peer, compound: bytes) -> None:
        """Protect and send one compound RTCP packet on a peer's transport (RFC 3711 3.4)."""
        protect = peer.protect_rtcp
        addr = peer.addr
        if protect is None or addr is None:
            self.counters["rtcp_unsent"] += 1
            return
        try:
            self._send(protect(compound), addr)
        except _SRTP_ERRORS:
            peer.srtp_errors += 1
            return
        peer.rtcp_out += 1

    def _emit(self, event: MediaEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("media event listener failed", extra={"event": repr(event)})

    def _speaker_changed(self, room: _Room, speaker: str | None) -> None:
        if speaker == room.speaker_sent:
            return
        room.speaker_sent = speaker
        self._emit(ActiveSpeaker(room.name, speaker))

    # -- rooms ----------------------------------------------------------------------------

    def _room(self, name: str) -> _Room:
        room = self._rooms.get(name)
        if room is None:
            forwarder = Forwarder(feedback_ssrc=self.feedback_ssrc, **self.forwarder_options)
            room = self._rooms[name] = _Room(name, forwarder, SpeakerDetector())
        return room

    def _participant(self, room: _Room, participant: str) -> _Participant:
        p = room.participants.get(participant)
        if p is None:
            p = room.participants[participant] = _Participant(room, participant)
        return p

    def _forget_if_empty(self, room: _Room) -> None:
        if room.participants or self._rooms.get(room.name) is not room:
            return
        del self._rooms[room.name]
        self._add_totals(room.forwarder.stats)

    def _add_totals(self, stats: ForwarderStats) -> None:
        for name, value in stats.as_dict().items():
            self.totals[name] += value

    def _close_room(self, name: str, reason: str) -> None:
        room = self._rooms.get(name)
        if room is None:
            return
        for participant in list(room.participants):
            self._leave(room, participant, reason)
        self._forget_if_empty(room)

    def _leave(self, room: _Room, participant: str, reason: str) -> None:
        p = room.participants.pop(participant, None)
        if p is None:
            return
        for peer in (p.publish, p.subscribe):
            if peer is not None:
                self._close_peer(peer, reason)
        change = room.speaker.remove(participant, self._now())
        if change is not None:
            self._speaker_changed(room, cast(str | None, change.speaker))

    def _remove_track(self, room: _Room, track: _Track) -> None:
        if not track.live:
            return
        track.live = False
        with contextlib.suppress(SfuStateError):
            room.forwarder.remove_track(track.ssrc)
        room.tracks.pop(track.info.track_id, None)
        publisher = track.publisher
        if publisher.tracks.get(track.info.mid) is track:
            del publisher.tracks[track.info.mid]
        publisher.levels.pop(track.ssrc, None)
        publisher.recv_stats.pop(track.ssrc, None)
        self.reports.remove_receive(publisher, track.ssrc)
        estimator = self.bandwidth.get(publisher)
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

    def _end_send(self, peer: _Peer, section: _Section, now: float) -> None:
        """A subscription ended: say BYE for its SSRCs (RFC 3550 6.6), stop reporting on it.

        The BYE lets the subscriber end the stream at once rather than time
        it out; the section itself stops with the next offer.
        """
        forwarded = section.forwarded
        ssrcs = [forwarded.ssrc]
        if section.use_rtx and forwarded.rtx_ssrc is not None:
            ssrcs.append(forwarded.rtx_ssrc)
        if peer.reporting:
            for compound in self.reports.goodbye(peer, ssrcs, now):
                self._send_rtcp(peer, compound)
        self.reports.remove_send(peer, forwarded.ssrc)

    # -- MediaControl ----------------------------------------------------------------------

    def add_listener(self, listener: Callable[[MediaEvent], None]) -> None:
        self._listeners.append(listener)

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
        room: _Room,
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
        try:
            try:
                # A renegotiation repeats the same parameters (a no-op); new
                # ones would be an ICE restart, which needs a new transport.
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
            parsed = _parse_tracks(desc, answered)
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
            if existing is not None and existing.ssrc == item.ssrc:
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

    def _discard_new_peer(self, peer: _Peer) -> None:
        peer.transport.close("negotiation failed")
        peer.transport.datagrams_to_send()
        self._peers.discard(peer)
        if self._by_ufrag.get(peer.transport.local_ufrag) is peer:
            del self._by_ufrag[peer.transport.local_ufrag]

    def _check_ssrcs(self, room: _Room, peer: _Peer, parsed: list[_Parsed]) -> None:
        """Refuse SSRCs another track of the room routes (RFC 3550 8.2 collision) before
        anything changes; this offer's own tracks, kept or replaced, do not count."""
        taken: dict[int, _Track] = {}
        for track in room.tracks.values():
            if track.publisher is peer:
                continue
            taken[track.ssrc] = track
            if track.rtx_ssrc is not None:
                taken[track.rtx_ssrc] = track
        seen: set[int] = set()
        for item in parsed:
            for ssrc in (item.ssrc, item.rtx_ssrc):
                if ssrc is None:
                    continue
                if ssrc in taken or ssrc in seen:
                    raise SdpNegotiationError(f"SSRC {ssrc} is already in use in this room")
                seen.add(ssrc)

    def _add_track(
        self, room: _Room, peer: _Peer, item: _Parsed, sources: Mapping[str, Source]
    ) -> _Track:
        default: Source = "microphone" if item.kind == "audio" else "camera"
        source = sources.get(item.mid, default)
        track_id = _new_id("t-", room.tracks)
        info = TrackInfo(track_id, peer.participant, item.kind, source, item.mid)
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
        )
        track = _Track(
            info, peer, item.ssrc, item.rtx_ssrc, item.codec, item.rtx, dict(item.extensions)
        )
        room.tracks[track_id] = track
        peer.tracks[item.mid] = track
        stats = ReceiveStatistics(item.ssrc, item.codec.clock_rate)
        peer.recv_stats[item.ssrc] = stats
        if peer.reporting:
            self.reports.add_receive(peer, stats)
        level_id = item.extensions.get(AUDIO_LEVEL)
        if item.kind == "audio" and level_id:
            peer.levels[item.ssrc] = level_id
        return track

    async def subscribe(self, room: str, participant: str, track_ids: Sequence[str]) -> str | None:
        """Offer exactly ``track_ids`` on the participant's subscribe transport (RFC 8829 5.2).

        Returns None when nothing changed (or the participant receives nothing
        and has no subscribe transport yet). Forwarding of dropped tracks stops
        at once; their sections stay, stopped (see :class:`_Section`), so mids
        line up. Each new track gets a new section at the end, with a new SSRC.
        Raises SfuStateError for an unknown track, the participant's own
        track, or while the previous offer is unanswered.
        """
        now = self._now()
        r = self._room(room)
        try:
            return self._subscribe(r, participant, list(dict.fromkeys(track_ids)), now)
        finally:
            self._forget_if_empty(r)
            self._flush_rtcp(r)
            self._rearm()

    def _subscribe(
        self, room: _Room, participant: str, wanted: list[str], now: float
    ) -> str | None:
        tracks: list[_Track] = []
        for track_id in wanted:
            track = room.tracks.get(track_id)
            if track is None:
                raise SfuStateError(f"no track {track_id!r} in room {room.name!r}")
            if track.info.participant == participant:
                raise SfuStateError(f"{participant!r} cannot subscribe to its own track")
            tracks.append(track)
        p = room.participants.get(participant)
        peer = p.subscribe if p is not None else None
        if peer is not None and peer.transport.state in TERMINAL:
            # Its client needs a new peer connection: start over, whatever
            # offer the dead transport still had outstanding.
            self._close_peer(peer, "replaced")
            assert p is not None
            p.subscribe = peer = None
        if peer is not None and peer.pending_offer:
            raise SfuStateError("the last subscribe offer is not answered yet")
        if peer is None and not tracks:
            return None

        if peer is None:
            peer = self._new_peer(room, participant, "subscribe", now)
            self._participant(room, participant).subscribe = peer
        wanted_set = set(wanted)
        changed = False
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

    def _new_section(self, peer: _Peer, track: _Track) -> _Section:
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
        if track.rtx is not None and track.rtx_ssrc is not None:
            rtx = replace(track.rtx, fmtp=f"apt={media_pt}", feedback=[])
            rtx_pt = _payload_type(used, _meaning(kind, rtx), track.rtx.payload_type)
            rtx = replace(rtx, payload_type=rtx_pt)
            rtx_ssrc = _new_ssrc(peer.ssrcs)
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
        )
        return _Section(track, forwarded, {track.codec.payload_type: media_pt})

    async def answer(self, room: str, participant: str, sdp: str) -> None:
        """Take the subscriber's answer (RFC 3264 section 6): transport and negotiated formats."""
        desc = SessionDescription.parse(sdp)
        r = self._rooms.get(room)
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

    def _negotiate(self, section: _Section, media: MediaDescription | None, first: bool) -> None:
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

    def _apply_subscriptions(self, peer: _Peer, now: float) -> None:
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
            source = track.publisher.recv_stats.get(track.ssrc)
            if peer.reporting and source is not None:
                # SRs carry the publisher's NTP/RTP pairing through this
                # subscription's timestamp offset, under the CNAME its offer
                # gave the SSRC, so the subscriber lip-syncs the participant.
                self.reports.add_send(
                    peer,
                    SendStatistics(sub, source, _offset_of(sub), cname=forwarded.cname or ""),
                )

    async def set_muted(self, room: str, track_id: str, muted: bool) -> None:
        """Stop or resume forwarding a track; resuming video waits for a keyframe (requested)."""
        r = self._rooms.get(room)
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
        r = self._rooms.get(room)
        track = r.tracks.get(track_id) if r is not None else None
        if r is None or track is None or track.info.participant != participant:
            raise SfuStateError(f"{participant!r} publishes no track {track_id!r} in {room!r}")
        self._remove_track(r, track)
        self._rearm()

    async def leave(self, room: str, participant: str) -> None:
        """Close the participant's transports, forget its tracks and subscriptions (idempotent)."""
        r = self._rooms.get(room)
        if r is None:
            return
        self._leave(r, participant, "left")
        self._forget_if_empty(r)
        self._rearm()

    async def close_room(self, room: str) -> None:
        """Everyone leaves and the room is forgotten (idempotent)."""
        self._close_room(room, "room closed")
        self._rearm()

    # -- metrics -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counters and gauges for :mod:`sfu.metrics`, read at scrape time."""
        rooms = []
        totals = Counter(self.totals)
        for room in self._rooms.values():
            stats = room.forwarder.stats.as_dict()
            totals.update(stats)
            peers = []
            for p in room.participants.values():
                for peer in (p.publish, p.subscribe):
                    if peer is None:
                        continue
                    sent = octets = 0
                    if peer.direction == "subscribe":
                        for section in peer.sections:
                            sub = room.forwarder.subscription(peer, section.forwarded.ssrc)
                            if sub is not None:
                                sent += sub.packets_sent + sub.retransmitted
                                octets += sub.octets_sent
                    estimator = self.bandwidth.get(peer)
                    peers.append(
                        {
                            "participant": p.id,
                            "direction": peer.direction,
                            "state": peer.transport.state.value,
                            "packets_in": peer.packets_in,
                            "octets_in": peer.octets_in,
                            "rtcp_in": peer.rtcp_in,
                            "rtcp_out": peer.rtcp_out,
                            "packets_out": sent,
                            "payload_octets_out": octets,
                            "srtp_errors": peer.srtp_errors,
                            # RFC 3550 A.3: expected less received, over its tracks.
                            "packets_lost": sum(
                                s.cumulative_lost for s in peer.recv_stats.values()
                            ),
                            "rtt": self.reports.rtt(peer),
                            "remb_bitrate": (
                                estimator.estimate if isinstance(estimator, RembEstimator) else None
                            ),
                            "twcc_feedback": (
                                estimator.sent
                                if isinstance(estimator, TransportCcRecorder)
                                else None
                            ),
                        }
                    )
            rooms.append(
                {
                    "room": room.name,
                    "participants": len(room.participants),
                    "tracks": len(room.tracks),
                    "stats": stats,
                    "peers": peers,
                }
            )
        return {
            "port": self.port,
            "dropped": dict(self.counters),
            "totals": dict(totals),
            "transports": len(self._peers),
            "rooms": rooms,
        }


# --- helpers --------------------------------------------------------------------------


def _running_loop_time() -> float:
    return asyncio.get_running_loop().time()


def _no_socket(data: bytes, addr: Any) -> None:
    """``sendto`` before the socket is open or after it closed: nothing goes out."""


def _offset_of(sub: Subscription) -> Callable[[], int | None]:
    """The subscription's current RTP timestamp offset, read when a report is built."""
    rewriter = sub.rewriter
    return lambda: rewriter.timestamp_offset


def _has_feedback(codec: Codec, kind: str) -> bool:
    """Whether a negotiated codec carries ``a=rtcp-fb`` ``kind`` (RFC 4585 4.2)."""
    return any(f.type == kind and not f.parameter for f in codec.feedback)


def _parse_tracks(offer: SessionDescription, answered: SessionDescription) -> list[_Parsed]:
    """The tracks a publish offer sends, with what our answer accepted for each."""
    out: list[_Parsed] = []
    for offered, section in zip(offer.media, answered.media, strict=True):
        if section.port == 0 or section.mid is None:
            continue
        if (offered.direction or Direction.SENDRECV) not in (
            Direction.SENDRECV,
            Direction.SENDONLY,
        ):
            continue
        if offered.kind not in ("audio", "video"):
            continue
        media = [c for c in section.codecs if not c.is_named("rtx")]
        if not media:
            continue
        codec = media[0]
        fid = offered.fid_pairs()
        rtx_ssrcs = set(fid.values())
        ssrcs = [s.ssrc for s in offered.ssrcs if s.ssrc not in rtx_ssrcs]
        if not ssrcs:
            # RFC 8851 simulcast without a=ssrc: not forwarded yet (the SSRCs
            # would have to be learnt from the RID header extension).
            continue
        ssrc = ssrcs[0]
        rtx = section.rtx_for(codec.payload_type)
        rtx_ssrc = fid.get(ssrc) if rtx is not None else None
        feedback = {(f.type, f.parameter) for f in codec.feedback}
        out.append(
            _Parsed(
                mid=section.mid,
                kind=cast(Literal["audio", "video"], offered.kind),
                ssrc=ssrc,
                rtx_ssrc=rtx_ssrc,
                codec=codec,
                rtx=rtx if rtx_ssrc is not None else None,
                rtx_payload_types={
                    c.payload_type: c.apt
                    for c in section.codecs
                    if c.is_named("rtx") and c.apt is not None
                },
                extensions={e.uri: e.id for e in section.extmaps},
                nack=("nack", None) in feedback,
                fir=("nack", "pli") not in feedback and ("ccm", "fir") in feedback,
            )
        )
    return out


def _new_connection(
    transport: PeerTransport, ufrag: str, pwd: str, fingerprints: list[tuple[str, str]]
) -> bool:
    """Whether an offer comes from another peer connection than ``transport``'s.

    New ICE credentials *and* a new certificate: the client made a new
    ``RTCPeerConnection`` (browsers make a certificate per connection), which
    gets a new transport. New credentials with the same certificate are an
    ICE restart (RFC 8445 section 9) on the old connection, which keeps its
    DTLS association: not supported, and ``set_remote`` refuses it.
    """
    ice = transport.ice
    if ice.remote_ufrag is None or (ice.remote_ufrag, ice.remote_pwd) == (ufrag, pwd):
        return False
    known = {(a.lower(), v.strip().upper()) for a, v in transport.remote_fingerprints}
    return not known & {(a.lower(), v.strip().upper()) for a, v in fingerprints}


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
