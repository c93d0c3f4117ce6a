"""RTCP's own packets (RFC 3550 sections 6.4 to 6.6): sender and receiver
reports with their report blocks, source descriptions (SDES) and BYE.

Each is a :class:`~rtc.rtcp.framing.Framed` dataclass: ``parse`` of exactly
one packet, ``__bytes__`` that our parser reads back to an equal value. SDES
with extra nulls parses to the same values but is re-encoded canonically.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar, Self

from rtc.errors import RtcpParseError
from rtc.rtcp.framing import BYE, RR, SDES, SR, Buffer, Framed

__all__ = [
    "SDES_CNAME",
    "Bye",
    "ReceiverReport",
    "ReportBlock",
    "SdesChunk",
    "SenderReport",
    "SourceDescription",
    "compact_ntp",
]

_U32 = struct.Struct("!I")
_SENDER_INFO = struct.Struct("!IQIII")  # SSRC, NTP, RTP ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")


def compact_ntp(ntp: int) -> int:
    """Middle 32 bits of a 64-bit NTP timestamp: the LSR of a report block (RFC 3550 6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


# -- reports (RFC 3550 6.4) ---------------------------------------------------------


@dataclass(slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 section 6.4.1)."""

    ssrc: int
    fraction_lost: int = 0
    packets_lost: int = 0
    """Cumulative, signed 24 bits (duplicates can make it negative)."""
    highest_sequence: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    SIZE: ClassVar[int] = 24

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse one 24-byte block."""
        if len(data) != cls.SIZE:
            raise RtcpParseError("a report block is 24 bytes")
        return cls._unpack(data, 0)

    @classmethod
    def _unpack(cls, data: Buffer, offset: int) -> Self:
        ssrc, lost_word, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr)

    def __bytes__(self) -> bytes:
        if not -0x800000 <= self.packets_lost <= 0x7FFFFF:
            raise ValueError("packets_lost does not fit 24 signed bits; clamp it")
        return _BLOCK.pack(
            self.ssrc,
            (self.fraction_lost << 24) | (self.packets_lost & 0xFFFFFF),
            self.highest_sequence,
            self.jitter,
            self.lsr,
            self.dlsr,
        )


def _unpack_blocks(
    body: bytes, offset: int, count: int, kind: str
) -> tuple[list[ReportBlock], bytes]:
    """An SR's or RR's ``count`` report blocks from ``offset`` on, and the
    extension after them (RFC 3550 section 6.4)."""
    need = offset + ReportBlock.SIZE * count
    if len(body) < need:
        raise RtcpParseError(f"RTCP {kind} is shorter than its report count")
    blocks = [ReportBlock._unpack(body, offset + ReportBlock.SIZE * i) for i in range(count)]
    return blocks, body[need:]


def _pack_blocks(reports: list[ReportBlock], extension: bytes, kind: str) -> bytes:
    """An SR's or RR's report blocks and the extension after them."""
    if len(extension) % 4:
        raise ValueError(f"{kind} extension must be a multiple of 4 bytes")
    return b"".join(bytes(r) for r in reports) + extension


@dataclass(slots=True)
class SenderReport(Framed):
    """SR: sender info and report blocks (RFC 3550 section 6.4.1)."""

    PACKET_TYPE = SR

    ssrc: int
    ntp_timestamp: int = 0
    rtp_timestamp: int = 0
    packet_count: int = 0
    octet_count: int = 0
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""
    """Profile-specific extension after the blocks, kept raw (a multiple of 4 bytes)."""

    @classmethod
    def decode(cls, count: int, body: bytes) -> Self:
        reports, extension = _unpack_blocks(body, _SENDER_INFO.size, count, "SR")
        ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(body)
        return cls(ssrc, ntp, rtp_ts, packets, octets, reports, extension)

    def _encode(self) -> tuple[int, int, bytes]:
        tail = _pack_blocks(self.reports, self.extension, "SR")
        head = _SENDER_INFO.pack(
            self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count
        )
        return len(self.reports), SR, head + tail


@dataclass(slots=True)
class ReceiverReport(Framed):
    """RR: report blocks from a receiver that sends nothing (RFC 3550 section 6.4.2)."""

    PACKET_TYPE = RR

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""
    """Profile-specific extension after the blocks, kept raw (a multiple of 4 bytes)."""

    @classmethod
    def decode(cls, count: int, body: bytes) -> Self:
        reports, extension = _unpack_blocks(body, _U32.size, count, "RR")
        (ssrc,) = _U32.unpack_from(body)
        return cls(ssrc, reports, extension)

    def _encode(self) -> tuple[int, int, bytes]:
        tail = _pack_blocks(self.reports, self.extension, "RR")
        return len(self.reports), RR, _U32.pack(self.ssrc) + tail


# -- SDES and BYE (RFC 3550 6.5, 6.6) -------------------------------------------------


SDES_CNAME = 1


@dataclass(slots=True)
class SdesChunk:
    """One SSRC's SDES items as ``(type, value)`` pairs (RFC 3550 section 6.5)."""

    ssrc: int
    items: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def cname(self) -> str | None:
        """The CNAME item (RFC 3550 6.5.1), decoded leniently."""
        for t, v in self.items:
            if t == SDES_CNAME:
                return v.decode("utf-8", "replace")
        return None


@dataclass(slots=True)
class SourceDescription(Framed):
    """SDES: chunks of items per source (RFC 3550 section 6.5)."""

    PACKET_TYPE = SDES

    chunks: list[SdesChunk] = field(default_factory=list)

    @classmethod
    def for_cname(cls, ssrc: int, cname: str) -> Self:
        """The usual SDES: one chunk with one CNAME item (RFC 3550 6.5.1)."""
        return cls([SdesChunk(ssrc, [(SDES_CNAME, cname.encode())])])

    @classmethod
    def decode(cls, count: int, body: bytes) -> Self:
        chunks = []
        pos, n = 0, len(body)
        for _ in range(count):
            if pos + 4 > n:
                raise RtcpParseError("RTCP SDES chunk is truncated")
            (ssrc,) = _U32.unpack_from(body, pos)
            pos += 4
            items = []
            while True:
                if pos >= n:
                    raise RtcpParseError("RTCP SDES chunk has no terminating null")
                item_type = body[pos]
                if item_type == 0:
                    pos += 1
                    break
                if pos + 2 > n or pos + 2 + body[pos + 1] > n:
                    raise RtcpParseError("RTCP SDES item is truncated")
                end = pos + 2 + body[pos + 1]
                items.append((item_type, body[pos + 2 : end]))
                pos = end
            # The null list end is followed by nulls up to the next word.
            pos = (pos + 3) & ~3
            if pos > n:
                raise RtcpParseError("RTCP SDES chunk padding is truncated")
            chunks.append(SdesChunk(ssrc, items))
        if any(body[pos:]):
            raise RtcpParseError("RTCP SDES has data after its last chunk")
        return cls(chunks)

    def _encode(self) -> tuple[int, int, bytes]:
        out = bytearray()
        for chunk in self.chunks:
            out += _U32.pack(chunk.ssrc)
            for item_type, value in chunk.items:
                if not 1 <= item_type <= 255 or len(value) > 255:
                    raise ValueError("an SDES item has a type 1-255 and at most 255 bytes")
                out += bytes((item_type, len(value)))
                out += value
            # One to four nulls: the end of the list, then alignment.
            out += bytes(4 - len(out) % 4)
        return len(self.chunks), SDES, bytes(out)


@dataclass(slots=True)
class Bye(Framed):
    """BYE: sources leaving, with an optional reason (RFC 3550 section 6.6)."""

    PACKET_TYPE = BYE

    sources: list[int] = field(default_factory=list)
    reason: bytes | None = None

    @classmethod
    def decode(cls, count: int, body: bytes) -> Self:
        need = 4 * count
        if len(body) < need:
            raise RtcpParseError("RTCP BYE is shorter than its source count")
        sources = list(struct.unpack_from(f"!{count}I", body))
        reason = None
        pos = need
        if pos < len(body):
            length = body[pos]
            if pos + 1 + length > len(body):
                raise RtcpParseError("RTCP BYE reason is truncated")
            reason = body[pos + 1 : pos + 1 + length]
            pos += 1 + length
            if any(body[pos:]):
                raise RtcpParseError("RTCP BYE has data after its reason")
        return cls(sources, reason)

    def _encode(self) -> tuple[int, int, bytes]:
        out = b"".join(_U32.pack(s) for s in self.sources)
        if self.reason is not None:
            if len(self.reason) > 255:
                raise ValueError("a BYE reason is at most 255 bytes")
            out += bytes((len(self.reason),)) + self.reason
            out += bytes(-len(out) % 4)
        return len(self.sources), BYE, out
