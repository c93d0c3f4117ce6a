"""RTP and RTCP as the load tester writes and reads them (RFC 3550, RFC 4585,
RFC 8285's header extensions, transport-wide CC feedback): a few fixed
layouts, no objects."""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "FIXED",
    "Header",
    "nack",
    "packet",
    "pli",
    "read_header",
    "receiver_report",
    "rtcp_packets",
    "sender_report",
    "transport_feedback",
    "transport_sequence",
    "vp8_payloads",
]

#: The fixed RTP header (RFC 3550 5.1): first byte, second byte, sequence
#: number, timestamp, SSRC.
FIXED = struct.Struct(">BBHII")
_REPORT_BLOCK = struct.Struct(">IIIIII")
_EXT_HEAD = struct.Struct(">HH")
_TCC_HEAD = struct.Struct(">BBHIIHHI")
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
    head = FIXED.pack(
        first, (0x80 if marker else 0) | pt, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc
    )
    return head + ext + payload


def read_header(data: bytes) -> Header | None:
    """The fixed header of an RTP packet and where its payload is; None for
    what is too short or not version 2."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    first, second, seq, ts, ssrc = FIXED.unpack_from(data)
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


def transport_sequence(data: bytes, xid: int) -> int | None:
    """The transport-wide sequence number an RTP packet carries in header
    extension ``xid`` (one- or two-byte form, RFC 8285), None without one.
    The extension block is in the clear on an SRTP packet too."""
    if len(data) < 16 or not data[0] & 0x10:
        return None
    at = 12 + 4 * (data[0] & 0x0F)
    if len(data) < at + 4:
        return None
    profile, words = _EXT_HEAD.unpack_from(data, at)
    at += 4
    end = min(at + 4 * words, len(data))
    two_byte = profile & 0xFFF0 == 0x1000
    if not two_byte and profile != 0xBEDE:
        return None
    while at < end:
        first = data[at]
        if first == 0:  # padding between elements
            at += 1
            continue
        if two_byte:
            if at + 2 > end:
                return None
            size, at = data[at + 1], at + 2
        else:
            if first >> 4 == 15:  # reserved: stop reading (RFC 8285 4.2)
                return None
            first, size, at = first >> 4, (first & 0x0F) + 1, at + 1
        if first == xid:
            return (data[at] << 8 | data[at + 1]) if size >= 2 and at + 2 <= end else None
        at += size
    return None


def transport_feedback(
    sender: int, media: int, base: int, reference: int, count: int, deltas: list[int | None]
) -> bytes:
    """Transport-wide CC feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01
    section 3.1) for the packets numbered from ``base``: each one's receive
    delta in 250 µs ticks after the one received before it (the first one's
    after ``reference``, in 64 ms units), or None when it was not received.
    A delta must fit 16 signed bits. Its status chunks: a run-length chunk
    for 14 or more alike, else a one-bit vector of 14 where all are small
    or missing, else a two-bit vector of 7."""
    statuses = [0 if d is None else 1 if 0 <= d <= 0xFF else 2 for d in deltas]
    chunks = []
    i, n = 0, len(statuses)
    while i < n:
        run = i + 1
        while run < n and statuses[run] == statuses[i] and run - i < 0x1FFF:
            run += 1
        if run - i >= 14:
            chunks.append(statuses[i] << 13 | (run - i))
            i = run
        elif max(statuses[i : i + 14]) <= 1:
            bits = 0
            for k, status in enumerate(statuses[i : i + 14]):
                bits |= status << (13 - k)
            chunks.append(0x8000 | bits)
            i += 14
        else:
            bits = 0
            for k, status in enumerate(statuses[i : i + 7]):
                bits |= status << (12 - 2 * k)
            chunks.append(0xC000 | bits)
            i += 7
    body = struct.pack(f">{len(chunks)}H", *chunks) + b"".join(
        bytes([d]) if s == 1 else struct.pack(">h", d)
        for d, s in zip(deltas, statuses, strict=True)
        if d is not None
    )
    pad = -(len(body) + 20) % 4
    if pad:
        body += b"\0" * (pad - 1) + bytes([pad])
    head = _TCC_HEAD.pack(
        (0xA0 if pad else 0x80) | 15, 205, (20 + len(body)) // 4 - 1, sender, media,
        base & 0xFFFF, n, (reference & 0xFFFFFF) << 8 | (count & 0xFF),
    )  # fmt: skip
    return head + body
