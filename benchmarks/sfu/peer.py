"""Synthetic WebRTC peers for the SFU benchmark, built from our own rtc/ cores.

A benchmark that drives one media worker with hundreds of transports cannot
afford aiortc (its receivers decode, and its Python per-packet path costs more
than the worker under test). A synthetic transport here is one UDP socket and
the three things a browser's transport does before media flows:

* ICE as the controlling full agent (RFC 8445 section 7.2.4): Binding requests
  with USERNAME ``server:ours``, PRIORITY, ICE-CONTROLLING, USE-CANDIDATE,
  MESSAGE-INTEGRITY keyed with the server's password and FINGERPRINT, built with
  :mod:`rtc.stun`; later the same requests keep consent fresh (RFC 7675);
* DTLS-SRTP (RFC 5764) with :class:`rtc.dtls.DtlsEndpoint`, in the role the
  SDP gave us (RFC 8842 section 5);
* SRTP with :class:`rtc.srtp.SrtpSession` keyed from the handshake.

Descriptions come from :mod:`rtc.sdp`: :func:`publish_offer` is a minimal
Chromium-like offer of one VP8 video track (with RTX and the mid,
abs-send-time and transport-wide-cc extensions), or with ``rids`` of one
simulcast track as Chromium offers it (RFC 8853: ``a=rid`` and
``a=simulcast``, the RID extensions, no ``a=ssrc``), and
:func:`subscribe_answer` answers the worker's offer with
:func:`sfu.transport.offer_answer.answer`, which already mirrors an offer the way a receive-only
endpoint must.

:func:`build_frames` makes the RTP a publisher sends: VP8 payload descriptors
(RFC 7741 section 4.2) with a keyframe first and every ``keyframe_every``
frames (and the keyframe version of every other frame's first packet, for a
publisher that answers PLI), the RFC 8285 one-byte extensions (a simulcast
layer's first packets carry MID and RID, as Chromium's do until the SSRC is
acknowledged), ~1200 octets per packet and, in the
last eight payload octets, the publisher number and packet index so a
receiver that unprotects can match each packet with its send time.

Transports take ``now`` (seconds, monotonic); only :func:`handshake`, the
blocking loop that drives many of them at once, reads the clock (and
:func:`fan_out_in_process`, which makes a certificate and calls it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import secrets
import selectors
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from rtc import stun
from rtc.dtls import DtlsCertificate, DtlsEndpoint, DtlsRole, HandshakeComplete, HandshakeFailed
from rtc.errors import StunParseError
from rtc.ice import random_credentials
from rtc.rtp.extensions import EXTENSION_HEADER, extension_elements
from rtc.rtp.header import FIXED_HEADER
from rtc.sdp.attributes import (
    ABS_SEND_TIME,
    MID,
    REPAIRED_RTP_STREAM_ID,
    RTP_STREAM_ID,
    TRANSPORT_CC,
    Attribute,
    Codec,
    Direction,
    Extmap,
    Msid,
    RtcpFeedback,
    SsrcAttribute,
    SsrcGroup,
)
from rtc.sdp.media import ConnectionData, MediaDescription
from rtc.sdp.session import Group, Origin, SessionDescription
from rtc.sdp.transport import Fingerprint, Setup
from rtc.srtp import SrtpSession
from sfu.transport import offer_answer

if TYPE_CHECKING:
    from sfu.node.worker import MediaWorker

HOST = "127.0.0.1"

VP8_PT = 96
RTX_PT = 97
# Chromium's audio numbering: Opus, and RED (RFC 2198) over it.
OPUS_PT = 111
RED_PT = 63
AUDIO_CLOCK_RATE = 48_000
AUDIO_MID = "1"
# Chromium's numbering; the worker keeps the publisher's ids (sfu.transport.offer_answer.answer).
EXT_ABS_SEND_TIME = 2
EXT_TRANSPORT_CC = 3
EXT_MID = 4
EXT_RID = 10
EXT_REPAIRED_RID = 11
#: Chromium's simulcast layers of a 1280x720 camera, lowest first:
#: (RID, width, height, packets per frame at 30 fps, packet size). The
#: packet counts follow libwebrtc's targets for the sizes (about 150 kbit/s,
#: 500 kbit/s and 1.7 Mbit/s); the top layer's are the benchmark's --pps.
SIMULCAST_LAYERS = (("q", 320, 180, 1, 600), ("h", 640, 360, 2, 1000), ("f", 1280, 720, 0, 0))
CLOCK_RATE = 90_000

# Bytes of the RTP fixed header plus our extension block (see build_frames).
_TAG = struct.Struct("!II")  # publisher number, packet index
TAG_SIZE = _TAG.size


class PeerError(Exception):
    """A synthetic transport could not be set up (bad SDP, ICE or DTLS failure)."""


@dataclass
class RemoteParameters:
    """What the worker's description says about its end of one transport."""

    ufrag: str
    pwd: str
    fingerprints: list[tuple[str, str]]
    address: tuple[str, int]
    role: DtlsRole  # ours, from the worker's a=setup


def remote_parameters(description: str, *, offerer: bool) -> RemoteParameters:
    """ICE, DTLS and candidate parameters from the worker's answer or offer.

    ``offerer``: we sent the offer (publish) and this is the answer; then its
    ``a=setup`` fixes our role (RFC 8842 section 5.3). When the worker offered
    (subscribe) we answered ``active`` and are the DTLS client.
    """
    desc = SessionDescription.parse(description)
    t = desc.transport()
    if not t.ice_ufrag or not t.ice_pwd or not t.fingerprints:
        raise PeerError("worker description lacks ICE credentials or a fingerprint")
    udp = [c for c in t.candidates if c.transport.lower() == "udp"]
    if not udp:
        raise PeerError("worker description has no UDP candidate")
    best = max(udp, key=lambda c: c.priority)
    if offerer:
        if t.setup is Setup.ACTIVE:
            role = DtlsRole.SERVER
        elif t.setup is Setup.PASSIVE:
            role = DtlsRole.CLIENT
        else:
            raise PeerError(f"answer has a=setup:{t.setup}")
    else:
        role = DtlsRole.CLIENT
    return RemoteParameters(
        ufrag=t.ice_ufrag,
        pwd=t.ice_pwd,
        fingerprints=[(f.algorithm, f.value) for f in t.fingerprints],
        address=(best.address, best.port),
        role=role,
    )


class Transport:
    """One synthetic peer connection: a UDP socket on loopback with ICE, DTLS and SRTP.

    Sans-I/O apart from owning its socket: :meth:`on_datagram` takes what the
    socket received with ``now``, :meth:`poll` sends what is due (ICE checks,
    DTLS flights and retransmissions) and says when it next wants to run.
    """

    def __init__(self, certificate: DtlsCertificate, *, rcvbuf: int = 1 << 20) -> None:
        self.certificate = certificate
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _grow_buffers(self.sock, rcvbuf)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.ufrag, self.pwd = random_credentials()
        self.tiebreaker = secrets.randbits(64)
        self.remote: RemoteParameters | None = None
        self.dtls: DtlsEndpoint | None = None
        self.srtp: SrtpSession | None = None
        self.profile = ""
        self.ice_ok = False
        self.error: str | None = None
        self._check_txid: bytes | None = None
        self._next_check = 0.0
        self._check_interval = 0.1

    # -- descriptions ----------------------------------------------------------

    def fingerprint(self) -> Fingerprint:
        return Fingerprint("sha-256", self.certificate.fingerprint("sha-256"))

    def local_parameters(self) -> offer_answer.LocalParameters:
        """Our side for :mod:`sfu.transport.offer_answer`: credentials, fingerprint, one host
        candidate.
        """
        return offer_answer.LocalParameters(
            ice_ufrag=self.ufrag,
            ice_pwd=self.pwd,
            fingerprints=[self.fingerprint()],
            addresses=[(HOST, self.port)],
        )

    def set_remote(self, remote: RemoteParameters) -> None:
        """Point the transport at the worker; media then comes only from there."""
        if self.remote is not None:
            if (remote.ufrag, remote.address) != (self.remote.ufrag, self.remote.address):
                raise PeerError("the worker changed ICE credentials or address (no ICE restart)")
            return
        self.remote = remote
        # A connected UDP socket filters strangers and lets send() skip the address.
        self.sock.connect(remote.address)

    # -- the handshake ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.srtp is not None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def binding_request(self, *, nominate: bool = True) -> bytes:
        """A check as a controlling full agent sends it (RFC 8445 section 7.2.4)."""
        remote = self._need_remote()
        txid = os.urandom(12)
        msg = stun.StunMessage(stun.BINDING, stun.REQUEST, txid)
        msg.set(stun.USERNAME, f"{remote.ufrag}:{self.ufrag}")
        # Host candidate priority (RFC 8445 section 5.1.2.1), type preference 126.
        msg.set(stun.PRIORITY, (126 << 24) | (65535 << 8) | 255)
        msg.set(stun.ICE_CONTROLLING, self.tiebreaker)
        if nominate:
            msg.set(stun.USE_CANDIDATE, None)
        msg.add_integrity(remote.pwd.encode()).add_fingerprint()
        self._check_txid = txid
        return bytes(msg)

    def start(self, now: float) -> None:
        """Begin: ICE checks now; the DTLS server role waits for a ClientHello."""
        remote = self._need_remote()
        self.dtls = DtlsEndpoint(self.certificate, remote.role, remote.fingerprints)
        if remote.role is DtlsRole.SERVER:
            self.dtls.start(now)
        self._next_check = now

    def on_datagram(self, data: bytes, now: float) -> None:
        """Handle one datagram outside the media fast path (STUN, DTLS, stray RTP)."""
        if not data:
            return
        first = data[0]
        if first < 4:
            self._on_stun(data, now)
        elif 20 <= first <= 63 and self.dtls is not None:
            self.dtls.receive(data, now)
            self._dtls_events()
            self._flush_dtls()

    def _on_stun(self, data: bytes, now: float) -> None:
        remote = self.remote
        if remote is None or self.ice_ok:
            return
        try:
            msg = stun.StunMessage.parse(data)
        except StunParseError:
            return
        if msg.transaction_id != self._check_txid or msg.method != stun.BINDING:
            return
        if msg.cls != stun.SUCCESS:
            self.error = f"ICE check refused: {msg.decoded(stun.ERROR_CODE)}"
            return
        if not stun.check_integrity(data, remote.pwd.encode()):
            self.error = "ICE response failed MESSAGE-INTEGRITY"
            return
        self.ice_ok = True
        assert self.dtls is not None
        if remote.role is DtlsRole.CLIENT:
            self.dtls.start(now)
            self._flush_dtls()

    def poll(self, now: float) -> float | None:
        """Send what is due now; returns when to be polled next (None: nothing pending)."""
        if self.connected or self.failed or self.dtls is None:
            return None
        if not self.ice_ok:
            if now >= self._next_check:
                self._send(self.binding_request())
                self._next_check = now + self._check_interval
                self._check_interval = min(self._check_interval * 2, 1.0)
            return self._next_check
        timer = self.dtls.get_timer()
        if timer is not None and now >= timer:
            self.dtls.handle_timer(now)
            self._dtls_events()
            self._flush_dtls()
            timer = self.dtls.get_timer()
        return timer

    def _dtls_events(self) -> None:
        assert self.dtls is not None
        while (event := self.dtls.next_event()) is not None:
            if isinstance(event, HandshakeComplete):
                self.srtp = SrtpSession.from_keys(event.keys, event.role)
                self.profile = event.profile.name
            elif isinstance(event, HandshakeFailed):
                self.error = f"DTLS failed: {event.error}"

    def _flush_dtls(self) -> None:
        assert self.dtls is not None
        for datagram in self.dtls.datagrams_to_send():
            self._send(datagram)

    def _send(self, data: bytes) -> None:
        # Loopback refuses only when the worker is gone; the handshake
        # deadline reports that.
        with contextlib.suppress(OSError):
            self.sock.send(data)

    def _need_remote(self) -> RemoteParameters:
        if self.remote is None:
            raise PeerError("set_remote() first")
        return self.remote

    def close(self) -> None:
        self.sock.close()


def _grow_buffers(sock: socket.socket, size: int) -> None:
    # A subscriber of a busy room gets bursts (a frame's packets back to back);
    # SO_RCVBUFFORCE passes net.core.rmem_max when we may, SO_RCVBUF otherwise.
    force = getattr(socket, "SO_RCVBUFFORCE", 33)
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def handshake(
    transports: Sequence[Transport],
    *,
    timeout: float = 20.0,
    tick: Callable[[], None] | None = None,
) -> None:
    """Drive ICE and DTLS of every transport until all are connected or ``timeout``.

    Raises :class:`PeerError` naming the first failure. ``tick`` runs on each
    turn of the loop (an in-process test server serves its socket there).
    """
    now = time.monotonic()
    deadline = now + timeout
    by_fd = {t.sock.fileno(): t for t in transports}
    with selectors.DefaultSelector() as sel:
        for t in transports:
            t.start(now)
            sel.register(t.sock, selectors.EVENT_READ)
        pending = list(transports)
        while pending:
            now = time.monotonic()
            if now > deadline:
                raise PeerError(f"{len(pending)} transports not connected after {timeout} s")
            due = [d for t in pending if (d := t.poll(now)) is not None]
            wait = min([0.02, *(max(0.0, d - now) for d in due)])
            if tick is not None:
                tick()
                wait = min(wait, 0.002)
            for key, _ in sel.select(wait):
                t = by_fd[key.fd]
                while True:
                    try:
                        data = t.sock.recv(4096)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        # ICMP port unreachable from a previous send: the worker
                        # is not there (yet); the deadline decides.
                        break
                    t.on_datagram(data, time.monotonic())
            failed = [t for t in pending if t.failed]
            if failed:
                raise PeerError(failed[0].error or "transport failed")
            pending = [t for t in pending if not t.connected]


@contextlib.asynccontextmanager
async def fan_out_in_process(
    worker: MediaWorker, room: str, ssrc: int, rtx_ssrc: int, *, subscribers: int = 10
) -> AsyncIterator[Transport]:
    """A publisher's transport, connected to ``worker`` (in this process).

    It publishes one video track in ``room`` as ``doctor``; ``subscribers``
    more transports subscribe to it as ``s0``, ``s1``, ...; then
    :func:`handshake` (off the event loop, which the worker needs) connects
    them all. Every transport is closed on the way out.
    """
    certificate = DtlsCertificate.generate(datetime.datetime.now(datetime.UTC))
    publisher = Transport(certificate)
    receivers = [Transport(certificate) for _ in range(subscribers)]
    try:
        result = await worker.publish(room, "doctor", publish_offer(publisher, ssrc, rtx_ssrc), {})
        publisher.set_remote(remote_parameters(result.answer, offerer=True))
        (track,) = result.added
        for i, t in enumerate(receivers):
            offer = await worker.subscribe(room, f"s{i}", [track.track_id])
            if offer is None:
                raise PeerError(f"the worker offered s{i} nothing")
            answer, _ = subscribe_answer(t, offer)
            t.set_remote(remote_parameters(offer, offerer=False))
            await worker.answer(room, f"s{i}", answer)
        await asyncio.to_thread(handshake, [publisher, *receivers], timeout=20.0)
        yield publisher
    finally:
        for t in (publisher, *receivers):
            t.close()


# -- descriptions ---------------------------------------------------------------


def publish_offer(
    transport: Transport,
    ssrc: int,
    rtx_ssrc: int,
    *,
    mid: str = "0",
    rids: Sequence[str] = (),
    audio: str = "",
    audio_ssrc: int = 0,
) -> str:
    """A sendonly VP8 offer as Chromium shapes it: BUNDLE, rtcp-mux, RTX, three extensions.

    With ``audio`` (``"opus"`` or ``"red"``) a sendonly audio section
    follows, mid :data:`AUDIO_MID` on ``audio_ssrc``: Opus with in-band FEC,
    and with ``"red"`` RED over it after Opus, as Chromium offers them.

    With ``rids`` (lowest layer first) it is Chromium's simulcast offer
    (RFC 8853): ``a=rid:X send`` per layer, ``a=simulcast:send q;h;f``, the
    RID and repaired-RID extensions, and no ``a=ssrc``: the worker learns
    each layer's SSRC from the extensions of its first packets.
    """
    local = transport.local_parameters()
    stream, track = f"bench-{ssrc}", f"video-{ssrc}"
    feedback = [
        RtcpFeedback("goog-remb"),
        RtcpFeedback("transport-cc"),
        RtcpFeedback("ccm", "fir"),
        RtcpFeedback("nack"),
        RtcpFeedback("nack", "pli"),
    ]
    base = [
        Extmap(EXT_ABS_SEND_TIME, ABS_SEND_TIME),
        Extmap(EXT_TRANSPORT_CC, TRANSPORT_CC),
        Extmap(EXT_MID, MID),
    ]

    def section(kind: str, mid: str, codecs: list[Codec], **more: Any) -> MediaDescription:
        """A sendonly section on this bundle's transport, as Chromium writes one."""
        return MediaDescription(
            kind=kind,
            port=9,
            proto="UDP/TLS/RTP/SAVPF",
            formats=[str(c.payload_type) for c in codecs],
            connection=ConnectionData("IN", "IP4", "0.0.0.0"),
            mid=mid,
            direction=Direction.SENDONLY,
            rtcp_mux=True,
            rtcp_rsize=True,
            ice_ufrag=local.ice_ufrag,
            ice_pwd=local.ice_pwd,
            fingerprints=local.fingerprints,
            setup=Setup.ACTPASS,
            codecs=codecs,
            candidates=local.candidates(),
            end_of_candidates=True,
            **more,
        )

    rid_exts = [
        Extmap(EXT_RID, RTP_STREAM_ID),
        Extmap(EXT_REPAIRED_RID, REPAIRED_RTP_STREAM_ID),
    ]
    sections = [
        section(
            "video",
            mid,
            [
                Codec(VP8_PT, "VP8", CLOCK_RATE, feedback=feedback),
                Codec(RTX_PT, "rtx", CLOCK_RATE, fmtp=f"apt={VP8_PT}"),
            ],
            extmaps=[*base, *(rid_exts if rids else [])],
            msids=[Msid(stream, track)],
            ssrc_groups=[] if rids else [SsrcGroup("FID", [ssrc, rtx_ssrc])],
            ssrcs=[]
            if rids
            else [
                SsrcAttribute(s, name, value)
                for s in (ssrc, rtx_ssrc)
                for name, value in (("cname", stream), ("msid", f"{stream} {track}"))
            ],
            rids=[f"{rid} send" for rid in rids],
            simulcast=f"send {';'.join(rids)}" if rids else None,
        )
    ]
    if audio:
        codecs = [Codec(OPUS_PT, "opus", AUDIO_CLOCK_RATE, 2, "minptime=10;useinbandfec=1",
                            [RtcpFeedback("transport-cc")])]  # fmt: skip
        if audio == "red":
            codecs.append(Codec(RED_PT, "red", AUDIO_CLOCK_RATE, 2, f"{OPUS_PT}/{OPUS_PT}"))
        audio_track = f"audio-{audio_ssrc}"
        sections.append(
            section(
                "audio",
                AUDIO_MID,
                codecs,
                extmaps=base,
                msids=[Msid(stream, audio_track)],
                ssrcs=[
                    SsrcAttribute(audio_ssrc, name, value)
                    for name, value in (("cname", stream), ("msid", f"{stream} {audio_track}"))
                ],
            )
        )
    desc = SessionDescription(
        origin=Origin("-", str(secrets.randbits(62)), "2", "IN", "IP4", "127.0.0.1"),
        groups=[Group("BUNDLE", [m.mid for m in sections if m.mid is not None])],
        extmap_allow_mixed=True,
        attributes=[Attribute("msid-semantic", " WMS " + stream)],
        media=sections,
    )
    return str(desc)


@dataclass
class OfferedTrack:
    """One live m= section of the worker's subscribe offer."""

    mid: str
    ssrc: int
    payload_type: int


def subscribe_answer(
    transport: Transport, offer: str, *, transport_cc: bool = True, red: bool = True
) -> tuple[str, list[OfferedTrack]]:
    """Answer the worker's subscribe offer as a receive-only client would.

    :func:`sfu.transport.offer_answer.answer` mirrors sendonly into recvonly, keeps payload types
    and extension ids, and answers ``actpass`` with ``active`` (we are the DTLS
    client, as browsers choose); only the ICE-lite flag is the server's and
    comes off. ``transport_cc`` False refuses transport-wide congestion
    control (its extension and feedback): a receiver that sends no feedback
    should not let the worker run an estimator that never hears from it.
    ``red`` False answers Opus without its RED (RFC 2198), as aiortc does.
    Returns the answer and the SSRC and payload type of each track.
    """
    desc = SessionDescription.parse(offer)
    ans = offer_answer.answer(desc, replace(transport.local_parameters(), red=red))
    ans.ice_lite = False
    if not transport_cc:
        for media in ans.media:
            media.extmaps = [e for e in media.extmaps if e.uri != TRANSPORT_CC]
            for codec in media.codecs:
                codec.feedback = [f for f in codec.feedback if f.type != "transport-cc"]
    tracks: list[OfferedTrack] = []
    for media in desc.media:
        if media.port == 0 or media.mid is None or not media.ssrcs:
            continue
        fid = media.fid_pairs()
        media_ssrcs = [s.ssrc for s in media.ssrcs if s.ssrc not in fid.values()]
        pts = [c.payload_type for c in media.codecs if not c.is_named("rtx")]
        if media_ssrcs and pts:
            tracks.append(OfferedTrack(media.mid, media_ssrcs[0], pts[0]))
    return str(ans), tracks


# -- RTP ------------------------------------------------------------------------------


@dataclass
class Stream:
    """A publisher's outgoing RTP: fixed SSRC, random starting numbers (RFC 3550 5.1)."""

    number: int
    ssrc: int
    mid: str = "0"
    seq: int = field(default_factory=lambda: secrets.randbits(16))
    timestamp: int = field(default_factory=lambda: secrets.randbits(32))
    twcc: int = 0


def _extension_block(mid: bytes, rid: bytes) -> tuple[bytes, int, int]:
    """The RFC 8285 one-byte extension block (profile and length included) and
    the offsets in it of the abs-send-time and transport-cc values."""
    elements = bytes([(EXT_MID << 4) | (len(mid) - 1)]) + mid
    if rid:
        elements += bytes([(EXT_RID << 4) | (len(rid) - 1)]) + rid
    abs_at = len(elements) + 1
    elements += bytes([(EXT_ABS_SEND_TIME << 4) | 2, 0, 0, 0])
    tcc_at = len(elements) + 1
    elements += bytes([(EXT_TRANSPORT_CC << 4) | 1, 0, 0])
    elements += bytes(-len(elements) % 4)
    block = EXTENSION_HEADER.pack(0xBEDE, len(elements) // 4) + elements
    return block, 4 + abs_at, 4 + tcc_at


def build_frames(
    stream: Stream,
    frames: int,
    per_frame: int,
    *,
    fps: float,
    size: int = 1200,
    keyframe_every: int = 60,
    start_index: int = 0,
    rid: str = "",
    rid_packets: int = 0,
    width: int = 1280,
    height: int = 720,
    keyframes: dict[int, bytes] | None = None,
) -> list[bytes]:
    """``frames * per_frame`` plain RTP packets of ``size`` octets, in sending order.

    Each frame's first packet starts a VP8 partition (S=1, PID=0; RFC 7741
    section 4.2) whose payload header (RFC 6386 section 9.1) says keyframe
    (of ``width`` x ``height``) for frame 0 and every ``keyframe_every``-th
    frame; the last packet of a frame has the marker bit. Extensions (RFC
    8285 one-byte form): mid, abs-send-time, transport-wide sequence number;
    with ``rid``, the first ``rid_packets`` packets carry the RID too (a
    simulcast layer, RFC 8852). ``keyframes``, when given, receives the
    keyframe version of every other frame's first packet by its index in the
    list (what the publisher sends instead when asked for a keyframe). The
    last eight payload octets are :data:`_TAG`: (stream number, packet index).
    """
    mid = stream.mid.encode()
    if not 1 <= len(mid) <= 16 or len(rid) > 16:
        raise PeerError("mid and rid must be 1 to 16 octets")
    plain = _extension_block(mid, b"")
    tagged = _extension_block(mid, rid.encode()) if rid else plain
    out: list[bytes] = []
    index = start_index
    ticks = round(CLOCK_RATE / fps)
    for frame in range(frames):
        key = frame % keyframe_every == 0
        picture_id = frame & 0x7FFF
        abs_value = int(frame / fps * 262144.0) & 0xFFFFFF  # 6.18 fixed-point seconds
        for part in range(per_frame):
            ext, abs_at, tcc_at = tagged if len(out) < rid_packets else plain
            header_len = 12 + len(ext)
            buf = bytearray(size)
            marker = 0x80 if part == per_frame - 1 else 0
            FIXED_HEADER.pack_into(
                buf, 0, 0x90, marker | VP8_PT, stream.seq, stream.timestamp, stream.ssrc
            )
            buf[12:header_len] = ext
            buf[12 + abs_at : 12 + abs_at + 3] = abs_value.to_bytes(3, "big")
            buf[12 + tcc_at : 12 + tcc_at + 2] = stream.twcc.to_bytes(2, "big")
            pos = header_len
            # VP8 payload descriptor: X, S on a frame's first packet, PID 0;
            # then I with a 15-bit picture id.
            buf[pos] = 0x90 if part == 0 else 0x80
            buf[pos + 1] = 0x80
            buf[pos + 2] = 0x80 | (picture_id >> 8)
            buf[pos + 3] = picture_id & 0xFF
            pos += 4
            _TAG.pack_into(buf, size - TAG_SIZE, stream.number, index)
            if part == 0:
                # VP8 payload header: P bit clear on keyframes, show_frame set.
                buf[pos] = 0x11
                if key or keyframes is not None:
                    kbuf = bytearray(buf)
                    kbuf[pos] = 0x10
                    kbuf[pos + 3 : pos + 6] = b"\x9d\x01\x2a"  # keyframe start code
                    kbuf[pos + 6 : pos + 10] = struct.pack("<HH", width, height)
                    if key:
                        buf = kbuf
                    elif keyframes is not None:
                        keyframes[len(out)] = bytes(kbuf)
            out.append(bytes(buf))
            index += 1
            stream.seq = (stream.seq + 1) & 0xFFFF
            stream.twcc = (stream.twcc + 1) & 0xFFFF
        stream.timestamp = (stream.timestamp + ticks) & 0xFFFFFFFF
    return out


def build_audio(stream: Stream, count: int, *, red: bool, size: int = 90) -> list[bytes]:
    """``count`` plain RTP packets of 20 ms Opus frames (``size`` octets each,
    ending in the :data:`_TAG`), in sending order; with ``red``, each in a RED
    payload (RFC 2198) carrying the frame before too, as Chromium sends it.
    Extensions as :func:`build_frames` writes them (mid, abs-send-time,
    transport-wide sequence number)."""
    ext, abs_at, tcc_at = _extension_block(stream.mid.encode(), b"")
    out: list[bytes] = []
    previous = b""
    for index in range(count):
        frame = bytearray(size)
        frame[0] = 0xFC  # an Opus TOC byte: CELT fullband 20 ms, one frame
        _TAG.pack_into(frame, size - TAG_SIZE, stream.number, index)
        if red and previous:
            payload = struct.pack("!IB", 0xEF000000 | 960 << 10 | len(previous), OPUS_PT)
            payload += previous + frame
        elif red:
            payload = bytes([OPUS_PT]) + frame
        else:
            payload = bytes(frame)
        previous = bytes(frame)
        header = FIXED_HEADER.pack(
            0x90, RED_PT if red else OPUS_PT, stream.seq, stream.timestamp, stream.ssrc
        )
        buf = bytearray(header + ext + payload)
        abs_value = int(index * 0.02 * 262144.0) & 0xFFFFFF
        buf[12 + abs_at : 12 + abs_at + 3] = abs_value.to_bytes(3, "big")
        buf[12 + tcc_at : 12 + tcc_at + 2] = stream.twcc.to_bytes(2, "big")
        out.append(bytes(buf))
        stream.seq = (stream.seq + 1) & 0xFFFF
        stream.twcc = (stream.twcc + 1) & 0xFFFF
        stream.timestamp = (stream.timestamp + 960) & 0xFFFFFFFF
    return out


def transport_cc_offset(packet: bytes) -> int:
    """Where a packet built by :func:`build_frames` holds its transport-wide
    sequence number (a publisher's layers share one counter, written at send time)."""
    for hdr, xid, _ in extension_elements(packet)[3]:
        if xid == EXT_TRANSPORT_CC:
            return hdr + 1
    raise PeerError("no transport-cc extension")


def read_tag(plain: bytes) -> tuple[int, int]:
    """(stream number, packet index) from an unprotected packet built by :func:`build_frames`."""
    number, index = _TAG.unpack_from(plain, len(plain) - TAG_SIZE)
    return int(number), int(index)


def protect_all(srtp: SrtpSession, packets: Iterable[bytes]) -> list[bytes]:
    """Pre-protect a publisher's packets, in order (libsrtp tracks the rollover counter)."""
    return [srtp.protect(p) for p in packets]
