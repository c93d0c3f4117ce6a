"""What a subscriber gets again, or gets to probe its path: retransmissions
(RFC 4585 generic NACK answered from the history, RTX-wrapped per RFC 4588)
and padding-only RTX packets for bandwidth probes.

Functions of the forwarder's records (:mod:`sfu.forward.table`), called by
:class:`sfu.forward.forwarder.Forwarder`; nothing here is on the per-packet path.
"""

from __future__ import annotations

import struct

from rtc import red
from rtc.rtp.extensions import extension_elements
from rtc.rtp.header import payload_range
from sfu.forward.simulcast import vp8_picture
from sfu.forward.table import ForwarderStats, SubscriberTransport, Subscription, remap_extensions

__all__ = ["padding_probe", "retransmission"]

_FIXED = struct.Struct("!BBHII")
_REWRITE = struct.Struct("!BHII")
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
    _, _, seq, ts, _ = _FIXED.unpack_from(packet)
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
        _REWRITE.pack_into(buf, 1, (b1 & 0x80) | rtx_pt, sub.rtx_seq, mapped[1], sub.rtx_ssrc)
        sub.rtx_seq = (sub.rtx_seq + 1) & 0xFFFF
    else:
        buf = bytearray(packet)
        _REWRITE.pack_into(buf, 1, (b1 & 0x80) | out_pt, mapped[0], mapped[1], sub.ssrc)
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
                    transport.sent_at[tseq] = now
                    transport.sizes[tseq] = len(buf)
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
        _FIXED.pack_into(buf, 0, 0xB0, rtx_pt, sub.rtx_seq, sub.rewriter.highest[1], sub.rtx_ssrc)
        sub.rtx_seq = (sub.rtx_seq + 1) & 0xFFFF
        # RFC 8285 one-byte header: the transport-wide sequence number.
        buf[12:20] = bytes((0xBE, 0xDE, 0, 1, ext_id << 4 | 1, tseq >> 8, tseq & 0xFF, 0))
        buf[-1] = count
        if transport.sent_at is not None and transport.sizes is not None:
            transport.sent_at[tseq] = now
            transport.sizes[tseq] = len(buf)
        return bytes(buf), tseq
    return None
