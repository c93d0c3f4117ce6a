"""RTP and RTCP as the load tester writes and reads them (RFC 3550, RFC 4585,
RFC 8285's one-byte header extensions): a few fixed layouts, no objects."""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "Header",
    "nack",
    "packet",
    "pli",
    "read_header",
    "receiver_report",
    "rtcp_packets",
    "sender_report",
    "vp8_payloads",
]

_FIXED = struct.Struct(">BBHII")
_REPORT_BLOCK = struct.Struct(">IIIIII")
VP8_MAX_PAYLOAD = 1100


@dataclass(frozen=True)
class Header:
    ssrc: int
    seq: int
    timestamp: int
    marker: bool
    payload_type: int
    #: Where the payload starts and ends (padding excluded).
    start: int
    end: int


def packet(
    pt: int,
    seq: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    *,
    marker: bool = False,
    extensions: list[tuple[int, bytes]] = (),  # type: ignore[assignment]
) -> bytes:
    """One RTP packet with one-byte header extensions ``(id, value)``."""
    first = 0x80
    ext = b""
    if extensions:
        first |= 0x10
        body = b"".join(bytes([(xid << 4) | (len(v) - 1)]) + v for xid, v in extensions)
        body += b"\0" * (-len(body) % 4)
        ext = struct.pack(">HH", 0xBEDE, len(body) // 4) + body
    head = _FIXED.pack(
        first, (0x80 if marker else 0) | pt, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc
    )
    return head + ext + payload


def read_header(data: bytes) -> Header | None:
    """The fixed header of an RTP packet and where its payload is; None for
    what is too short or not version 2."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    first, second, seq, ts, ssrc = _FIXED.unpack_from(data)
    start = 12 + 4 * (first & 0x0F)
    if first & 0x10:
        if len(data) < start + 4:
            return None
        start += 4 + 4 * struct.unpack_from(">H", data, start + 2)[0]
    end = len(data)
    if first & 0x20 and end > start:
        end -= data[-1]
    if start > end:
        return None
    return Header(ssrc, seq, ts, bool(second & 0x80), second & 0x7F, start, end)


def vp8_payloads(frame: bytes, picture_id: int, keyframe: bool) -> list[bytes]:
    """A VP8 frame's RTP payloads (RFC 7741): each with a descriptor that
    carries a 15-bit picture id; the first starts the partition."""
    pid = picture_id & 0x7FFF
    out = []
    for i in range(0, max(len(frame), 1), VP8_MAX_PAYLOAD):
        start = 0x10 if i == 0 else 0
        out.append(
            bytes([0x80 | start, 0x80, 0x80 | (pid >> 8), pid & 0xFF])
            + frame[i : i + VP8_MAX_PAYLOAD]
        )
    return out


def rtcp_packets(data: bytes) -> list[tuple[int, int, bytes]]:
    """(packet type, count or format, the packet) of each packet of a compound."""
    out = []
    i = 0
    while i + 4 <= len(data):
        length = (struct.unpack_from(">H", data, i + 2)[0] + 1) * 4
        out.append((data[i + 1], data[i] & 0x1F, data[i : i + length]))
        i += length
    return out


def pli(sender: int, media: int) -> bytes:
    """A Picture Loss Indication (RFC 4585 §6.3.1)."""
    return struct.pack(">BBHII", 0x81, 206, 2, sender, media)


def nack(sender: int, media: int, seqs: list[int]) -> bytes:
    """A generic NACK (RFC 4585 §6.2.1) for ``seqs``: one PID and BLP per
    run of up to 17 sequence numbers."""
    fci = []
    todo = sorted({s & 0xFFFF for s in seqs}, key=lambda s: (s - seqs[0]) & 0xFFFF)
    while todo:
        pid, blp = todo[0], 0
        rest = []
        for s in todo[1:]:
            d = (s - pid) & 0xFFFF
            if 1 <= d <= 16:
                blp |= 1 << (d - 1)
            else:
                rest.append(s)
        fci.append(struct.pack(">HH", pid, blp))
        todo = rest
    body = b"".join(fci)
    return struct.pack(">BBHII", 0x81, 205, 2 + len(body) // 4, sender, media) + body


def sender_report(ssrc: int, ntp: int, rtp_ts: int, packets: int, octets: int) -> bytes:
    """An SR with no report block (RFC 3550 §6.4.1)."""
    return struct.pack(
        ">BBHIQIII", 0x80, 200, 6, ssrc, ntp, rtp_ts & 0xFFFFFFFF, packets, octets & 0xFFFFFFFF
    )


def receiver_report(sender: int, blocks: list[tuple[int, int, int, int, int, int, int]]) -> bytes:
    """An RR (RFC 3550 §6.4.2): each block (ssrc, fraction lost, cumulative
    lost, extended highest sequence, jitter, LSR, DLSR)."""
    body = b"".join(
        _REPORT_BLOCK.pack(
            ssrc,
            (fraction & 0xFF) << 24 | (max(-(1 << 23), min(lost, (1 << 23) - 1)) & 0xFFFFFF),
            highest & 0xFFFFFFFF,
            jitter & 0xFFFFFFFF,
            lsr & 0xFFFFFFFF,
            dlsr & 0xFFFFFFFF,
        )
        for ssrc, fraction, lost, highest, jitter, lsr, dlsr in blocks[:31]
    )
    return struct.pack(">BBHI", 0x80 | len(blocks[:31]), 201, 1 + len(body) // 4, sender) + body
