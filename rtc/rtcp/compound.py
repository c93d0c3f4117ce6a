"""Compound RTCP (RFC 3550 section 6.1): :func:`parse_compound` splits what
one SRTCP datagram carries into packets, :func:`build_compound` joins them,
and :class:`UnknownRtcp` keeps any packet we have no class for (APP, XR,
other feedback formats) opaque, serialized back byte for byte.

Parsing is strict about framing (version, length words, padding) and about
the layouts of :mod:`rtc.rtcp.reports`, :mod:`rtc.rtcp.feedback` and
:mod:`rtc.rtcp.transport_cc`, and raises :class:`~rtc.errors.RtcpParseError`
(a ``ValueError``) and nothing else; the caller counts and drops the
datagram. Our encoder is canonical: a packet we built parses back to an
equal value and serializes to the same bytes. Non-canonical input (RTCP
padding on a packet other than transport-cc, extra SDES nulls, a REMB
mantissa that is not normalized) parses to the same values but is re-encoded
canonically.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Self

from rtc.errors import RtcpParseError
from rtc.rtcp.feedback import Fir, Nack, Pli, Remb
from rtc.rtcp.framing import (
    BYE,
    FMT_AFB,
    FMT_FIR,
    FMT_NACK,
    FMT_PLI,
    FMT_TCC,
    HEADER,
    PSFB,
    RR,
    RTPFB,
    SDES,
    SR,
    Buffer,
    read_compound,
)
from rtc.rtcp.reports import Bye, ReceiverReport, SenderReport, SourceDescription
from rtc.rtcp.transport_cc import TransportCc

__all__ = ["RtcpPacket", "UnknownRtcp", "build_compound", "parse_compound"]


@dataclass(slots=True)
class UnknownRtcp:
    """Any other RTCP packet (APP, XR, other feedback formats), kept opaque.

    ``payload`` is everything after the 4-byte header, padding included when
    ``padded`` is set, so the packet serializes back byte for byte.
    """

    packet_type: int
    count: int
    payload: bytes = b""
    padded: bool = False

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse exactly one packet that no other class carries (RFC 3550 section 6.1 framing)."""
        packets = parse_compound(data)
        if len(packets) != 1:
            raise RtcpParseError(f"expected one RTCP packet, found {len(packets)}")
        packet = packets[0]
        if not isinstance(packet, cls):
            raise RtcpParseError(f"expected {cls.__name__}, found {type(packet).__name__}")
        return packet

    def __bytes__(self) -> bytes:
        if not 0 <= self.count <= 31 or len(self.payload) % 4:
            raise ValueError("count must fit 5 bits and the payload be whole words")
        b0 = 0x80 | (0x20 if self.padded else 0) | self.count
        return HEADER.pack(b0, self.packet_type, len(self.payload) // 4) + self.payload


RtcpPacket = (
    SenderReport
    | ReceiverReport
    | SourceDescription
    | Bye
    | Nack
    | TransportCc
    | Pli
    | Fir
    | Remb
    | UnknownRtcp
)


def parse_compound(data: Buffer) -> list[RtcpPacket]:
    """Every packet of a compound RTCP packet, in order (RFC 3550 section 6.1).

    Checks version 2, that the length fields tile the datagram exactly, and
    padding counts. It does not insist that the first packet be an SR or RR:
    reduced-size RTCP (RFC 5506), which browsers use, sends feedback alone.
    Raises :class:`RtcpParseError` on any malformation.
    """
    return read_compound(data, _decode)


def _decode(count: int, packet_type: int, body: bytes, payload: bytes, padded: bool) -> RtcpPacket:
    if packet_type == RTPFB:
        if count == FMT_NACK:
            return Nack.decode(count, body)
        if count == FMT_TCC:
            return TransportCc.decode(count, body)
    elif packet_type == PSFB:
        if count == FMT_PLI:
            return Pli.decode(count, body)
        if count == FMT_FIR:
            return Fir.decode(count, body)
        if count == FMT_AFB and len(body) >= 16 and body[8:12] == b"REMB":
            return Remb.decode(count, body)
    elif packet_type == SR:
        return SenderReport.decode(count, body)
    elif packet_type == RR:
        return ReceiverReport.decode(count, body)
    elif packet_type == SDES:
        return SourceDescription.decode(count, body)
    elif packet_type == BYE:
        return Bye.decode(count, body)
    return UnknownRtcp(packet_type, count, payload, padded)


def build_compound(packets: Iterable[RtcpPacket]) -> bytes:
    """One compound RTCP packet from packets, in order (RFC 3550 section 6.1)."""
    return b"".join(bytes(p) for p in packets)
