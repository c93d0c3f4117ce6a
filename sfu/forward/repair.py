"""RTP repair of the forwarder, both ways, as RTCP feedback (RFC 4585).

Upstream, what publishers are asked for: the forwarder's hot path sees each
track's gaps (:meth:`Repair.gap`) and they are NACKed (generic NACK, RFC 4585
section 6.2.1) after a short wait for a reordering, again while they stay
missing, up to a retry limit; a gap too long to NACK, a new or resumed
subscriber, or a subscriber's own PLI or FIR asks the publisher for a
keyframe (PLI, RFC 4585 section 6.3.1, or FIR, RFC 5104 section 4.3.1), at
most once per ``keyframe_interval`` per track, coalescing requests. The RTCP
is queued for the adapter (:meth:`Repair.rtcp_to_send`); retries and
coalesced requests are timer output (:meth:`Repair.get_timer`,
:meth:`Repair.handle_timer`).

Downstream, what a subscriber gets again, or gets to probe its path: a
subscriber's NACK is answered from the history (:func:`retransmission`,
RTX-wrapped per RFC 4588 when negotiated), and padding-only RTX packets make
bandwidth probes (:func:`padding_probe`).

:class:`Repair` is held by :class:`sfu.forward.forwarder.Forwarder`, whose
tables it is handed; nothing here is on the per-packet path but
:meth:`Repair.gap`, called for a gap only.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Iterable

from rtc import red
from rtc.rtcp.compound import RtcpPacket
from rtc.rtcp.feedback import Fir, Nack, Pli
from rtc.rtp.extensions import extension_elements
from rtc.rtp.header import FIXED_HEADER, HEADER_REWRITE, payload_range
from sfu.forward.fanout import Routed
from sfu.forward.simulcast import vp8_picture
from sfu.forward.table import (
    ForwarderStats,
    SimulcastGroup,
    SourceStream,
    SubscriberTransport,
    Subscription,
    remap_extensions,
)

__all__ = ["Repair", "padding_probe", "retransmission"]

Key = Hashable

_U16 = struct.Struct("!H")


def retransmission(
    sub: Subscription, packet: bytes, now: float, stats: ForwarderStats
) -> bytes | None:
    """A packet from the history again for ``sub``: RTX-wrapped (RFC 4588
    section 4) when it negotiated RTX, else as the original; rewritten as the
    hot path first rewrote it (the sequence number and timestamp the
    subscriber saw, RFC 3550 section 5.1, and a simulcast layer's VP8
    PictureID and TL0PICIDX, RFC 7741 section 4.2), with a new transport-wide
    sequence number; the rewriters' state is left as it is. None when the
    subscription cannot take it (its payload type), or when the packet was
    not sent in the rewriter's latest run (its number is no longer known)."""
    b1 = packet[1]
    _, _, seq, ts, _ = FIXED_HEADER.unpack_from(packet)
    pt = b1 & 0x7F
    pt_map = sub.pt_map
    out_pt = pt if pt_map is None else pt_map.get(pt)
    # The history only holds packets the hot path already parsed (RED included).
    start, end = payload_range(packet)
    cut: bytearray | None = None
    if out_pt is None and pt_map is not None and pt == sub.track.red_pt:
        # As in route_into: the primary block for a subscriber without RED.
        primary = red.primary(packet, start, end)
        out_pt = pt_map.get(primary >> 16)
        if out_pt is not None:
            cut = bytearray(packet[:start])
            cut += packet[primary & 0xFFFF : end]
            cut[0] &= 0xDF
    # As first sent, by the latest run's offsets: never rewrite(), which would
    # start a pending run with this old packet and move the live stream.
    mapped = sub.rewriter.sent_as(seq, ts)
    if out_pt is None or mapped is None:
        return None
    if cut is not None:
        packet = bytes(cut)
        stats.red_stripped += 1
    vp8 = sub.vp8
    if vp8 is not None:
        # A simulcast layer's PictureID and TL0PICIDX as the subscriber first
        # got them (RFC 7741 section 4.2), not the layer's own.
        picture = vp8_picture(packet, start, end)
        if picture is not None:
            rewritten = bytearray(packet)
            vp8.resend(rewritten, picture)
            packet = bytes(rewritten)
    two_byte, _, _, elements = extension_elements(packet)
    rtx_pt = sub.rtx_pt.get(out_pt) if sub.rtx_ssrc is not None else None
    if rtx_pt is not None and sub.rtx_ssrc is not None:
        buf = bytearray(packet[:start])
        buf += _U16.pack(mapped[0])
        buf += packet[start:]
        HEADER_REWRITE.pack_into(buf, 1, (b1 & 0x80) | rtx_pt, sub.rtx_seq, mapped[1], sub.rtx_ssrc)
        sub.rtx_seq = (sub.rtx_seq + 1) & 0xFFFF
    else:
        buf = bytearray(packet)
        HEADER_REWRITE.pack_into(buf, 1, (b1 & 0x80) | out_pt, mapped[0], mapped[1], sub.ssrc)
    if elements:
        if sub.ext_table is not None:
            remap_extensions(buf, elements, sub.ext_table, two_byte)
        track = sub.track
        for hdr, xid, length in elements:
            off = hdr + (2 if two_byte else 1)
            if xid == track.tcc_id and length >= 2 and sub.twcc:
                transport = sub.transport
                tseq = transport.twcc_seq
                _U16.pack_into(buf, off, tseq)
                transport.twcc_seq = (tseq + 1) & 0xFFFF
                if transport.sent_at is not None and transport.sizes is not None:
                    slot = tseq & (len(transport.sent_at) - 1)
                    transport.sent_at[slot] = now
                    transport.sizes[slot] = len(buf)
            elif xid == track.abs_id and length == 3 and sub.abs_send_time:
                value = int(now * 262144.0) & 0xFFFFFF
                buf[off : off + 3] = value.to_bytes(3, "big")
    return bytes(buf)


def padding_probe(
    transport: SubscriberTransport, size: int, now: float
) -> tuple[bytes, int] | None:
    """A padding-only RTX packet (RFC 4588, RFC 3550 5.1 P bit) of about
    ``size`` octets for a bandwidth probe, with the transport-wide
    sequence number (returned with it); None when the subscriber has no
    video subscription with RTX and transport-cc to carry one."""
    for sub in transport.by_ssrc.values():
        if sub.rtx_ssrc is None or not sub.rtx_pt or not sub.twcc or not sub.packets_sent:
            continue
        tcc_id = sub.track.tcc_id
        ext_id = tcc_id if sub.ext_table is None else sub.ext_table[tcc_id]
        if not 0 < ext_id < 15:
            continue
        count = max(1, min(255, size - 20))
        tseq = transport.twcc_seq
        transport.twcc_seq = (tseq + 1) & 0xFFFF
        buf = bytearray(20 + count)
        rtx_pt = next(iter(sub.rtx_pt.values()))
        FIXED_HEADER.pack_into(
            buf, 0, 0xB0, rtx_pt, sub.rtx_seq, sub.rewriter.highest[1], sub.rtx_ssrc
        )
        sub.rtx_seq = (sub.rtx_seq + 1) & 0xFFFF
        sub.padded += 1
        # RFC 8285 one-byte header: the transport-wide sequence number.
        buf[12:20] = bytes((0xBE, 0xDE, 0, 1, ext_id << 4 | 1, tseq >> 8, tseq & 0xFF, 0))
        buf[-1] = count
        if transport.sent_at is not None and transport.sizes is not None:
            slot = tseq & (len(transport.sent_at) - 1)
            transport.sent_at[slot] = now
            transport.sizes[slot] = len(buf)
        return bytes(buf), tseq
    return None


# Upstream gaps larger than this are a stream restart or a long outage: NACKing
# each packet would flood the publisher, so ask for a keyframe instead.
_MAX_NACK_GAP = 256
# Missing packets tracked per track; beyond this the oldest are given up.
_MAX_MISSING = 512


class Repair:
    """RTP repair of one forwarder (see the module docstring), on the
    forwarder's tables: its tracks by media SSRC, its simulcast groups and its
    subscriber transports, and its counters.

    ``keyframe_interval``: at most one keyframe request per track per this
    many seconds; requests in between are coalesced into one at its end.
    ``keyframe_retry``: while a subscriber still waits, ask again this often.
    ``nack_delay``: how long a gap may be a reordering before it is NACKed;
    ``nack_interval``/``nack_retries``: spacing and count of requests per
    missing packet (about one round trip apart is best; the adapter may set
    ``nack_interval`` from RTCP's RTT). ``feedback_ssrc`` sends the requests.
    """

    def __init__(
        self,
        tracks: dict[int, SourceStream],
        groups: dict[int, SimulcastGroup],
        transports: dict[Key, SubscriberTransport],
        stats: ForwarderStats,
        *,
        feedback_ssrc: int,
        keyframe_interval: float,
        keyframe_retry: float,
        nack_delay: float,
        nack_interval: float,
        nack_retries: int,
    ) -> None:
        self._tracks = tracks
        self._groups = groups
        self._transports = transports
        self.stats = stats
        self.feedback_ssrc = feedback_ssrc
        self.keyframe_interval = keyframe_interval
        self.keyframe_retry = keyframe_retry
        self.nack_delay = nack_delay
        self.nack_interval = nack_interval
        self.nack_retries = nack_retries
        self._rtcp: list[tuple[Key, RtcpPacket]] = []
        self._timer: float | None = None

    # -- upstream: what publishers are asked for -----------------------------------------

    def gap(self, track: SourceStream, first: int, stop: int, now: float) -> None:
        """Packets ``first`` to ``stop - 1`` (extended sequence numbers) of
        ``track`` did not come: NACKed once ``nack_delay`` passed, or a
        keyframe asked for instead when the gap is too long to NACK."""
        missing = track.missing
        if stop - first > _MAX_NACK_GAP:
            missing.clear()
            self.request_keyframe(track.ssrc, now)
            return
        due = now + self.nack_delay
        for ext in range(first, stop):
            missing[ext] = [0, due]
        while len(missing) > _MAX_MISSING:
            del missing[next(iter(missing))]
            self.stats.nack_gave_up += 1
        self._arm(due)

    def _arm(self, when: float) -> None:
        if self._timer is None or when < self._timer:
            self._timer = when

    def request_keyframe(self, track_ssrc: int, now: float) -> None:
        """Ask the publisher for a keyframe (PLI, RFC 4585 6.3.1; FIR, RFC 5104 4.3.1), throttled.

        At most one request per track per ``keyframe_interval``; a request
        inside the interval is coalesced into one sent when it ends. A
        subscriber's PLI or FIR is forwarded upstream through here.
        """
        track = self._tracks.get(track_ssrc)
        if track is None:
            group = self._groups.get(track_ssrc)
            if group is not None:
                # For the group: each layer someone waits for or receives.
                for layer in group.layers:
                    if layer is not None and (layer.waiting or layer.subscriptions):
                        self.request_keyframe(layer.ssrc, now)
            return
        if now - track.kf_last >= self.keyframe_interval:
            self._send_keyframe_request(track, now)
        else:
            track.kf_pending = True
            self._arm(track.kf_last + self.keyframe_interval)

    def _send_keyframe_request(self, track: SourceStream, now: float) -> None:
        track.kf_last = now
        track.kf_pending = False
        packet: RtcpPacket
        if track.fir:
            track.fir_seq = (track.fir_seq + 1) & 0xFF
            packet = Fir(self.feedback_ssrc, [(track.ssrc, track.fir_seq)])
        else:
            packet = Pli(self.feedback_ssrc, track.ssrc)
        self._rtcp.append((track.publisher, packet))
        self.stats.keyframe_requests += 1
        if track.waiting:
            self._arm(now + self.keyframe_retry)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next wants to run, or ``None``."""
        return self._timer

    def handle_timer(self, now: float) -> None:
        """Send due NACK retries and coalesced or retried keyframe requests."""
        self._timer = None
        interval = self.nack_interval
        retries = self.nack_retries
        for track in self._tracks.values():
            if track.kf_pending or track.waiting:
                wait = self.keyframe_interval if track.kf_pending else self.keyframe_retry
                due = track.kf_last + wait
                if now >= due:
                    self._send_keyframe_request(track, now)
                else:
                    self._arm(due)
            missing = track.missing
            if not missing:
                continue
            lost: list[int] = []
            given_up: list[int] = []
            for ext, entry in missing.items():
                if entry[1] <= now:
                    if entry[0] >= retries:
                        given_up.append(ext)
                        continue
                    entry[0] += 1
                    entry[1] = now + interval
                    lost.append(ext & 0xFFFF)
                self._arm(entry[1])
            for ext in given_up:
                del missing[ext]
            self.stats.nack_gave_up += len(given_up)
            if lost:
                self._rtcp.append(
                    (track.publisher, Nack.from_lost(self.feedback_ssrc, track.ssrc, lost))
                )
                self.stats.nack_requested += len(lost)

    def rtcp_to_send(self) -> list[tuple[Key, RtcpPacket]]:
        """``[(publisher, packet)]`` of feedback to send upstream, drained."""
        out, self._rtcp = self._rtcp, []
        return out

    # -- downstream: what subscribers ask for -----------------------------------------

    def handle_nack(
        self, subscriber: Key, media_ssrc: int, lost: Iterable[int], now: float
    ) -> Routed:
        """Answer a subscriber's generic NACK (RFC 4585 section 6.2.1) from the history.

        ``media_ssrc`` and ``lost`` are the subscriber's (its SSRC and sequence
        numbers, as in :meth:`rtc.rtcp.Nack.lost`). Each packet still in the
        history is rewritten as it was first sent, RTX-wrapped if negotiated
        (RFC 4588 section 4: original sequence number first, the RTX SSRC, its
        payload type and its own sequence numbers). The rest are counted.
        """
        out: Routed = []
        sub = self._subscription(subscriber, media_ssrc)
        if sub is None:
            self.stats.unknown_ssrc += 1
            return out
        # The history of the track the numbers were sent from: after a move
        # through no layer, ``sub.track`` is already the next layer, whose
        # sequence numbers are its own (RFC 3550 section 5.1).
        history = sub.sent_from.history
        stats = self.stats
        for out_seq in lost:
            stats.nack_received += 1
            seq = sub.rewriter.original_sequence(out_seq & 0xFFFF)
            packet = None if seq is None else history.get(seq, now)
            if packet is None or sub.paused:
                stats.nack_unanswered += 1
                sub.unanswered += 1
                continue
            built = retransmission(sub, packet, now, self.stats)
            if built is None:
                stats.nack_unanswered += 1
                sub.unanswered += 1
                continue
            out.append((subscriber, built))
            stats.retransmitted += 1
            sub.retransmitted += 1
        return out

    def handle_keyframe_request(self, subscriber: Key, media_ssrc: int, now: float) -> None:
        """A subscriber's PLI or FIR for its SSRC: forwarded upstream, throttled."""
        sub = self._subscription(subscriber, media_ssrc)
        if sub is None:
            self.stats.unknown_ssrc += 1
            return
        self.request_keyframe(sub.track.ssrc, now)

    def _subscription(self, subscriber: Key, ssrc: int) -> Subscription | None:
        transport = self._transports.get(subscriber)
        return None if transport is None else transport.by_ssrc.get(ssrc)
