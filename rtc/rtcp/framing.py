"""RTCP framing (RFC 3550 section 6.1): the common header every packet
opens with, the packet and feedback message types it names, and the walk
over a compound packet.

Each packet class (:mod:`rtc.rtcp.reports`, :mod:`rtc.rtcp.feedback`,
:mod:`rtc.rtcp.transport_cc`) is a :class:`Framed` dataclass with
``parse(data) -> Self`` (exactly one packet of its class) and ``__bytes__``;
:func:`read_compound` checks a compound packet's framing and hands each
packet to a decoder, and :func:`rtc.rtcp.compound.parse_compound` is that
walk with every class's decoder. Parsing raises
:class:`~rtc.errors.RtcpParseError` (a ``ValueError``) and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import ClassVar, Self, TypeVar

from rtc.errors import RtcpParseError

__all__ = [
    "APP",
    "BYE",
    "FMT_AFB",
    "FMT_FIR",
    "FMT_NACK",
    "FMT_PLI",
    "FMT_TCC",
    "HEADER",
    "PSFB",
    "RR",
    "RTPFB",
    "SDES",
    "SR",
    "XR",
    "Buffer",
    "Framed",
    "read_compound",
]

Buffer = bytes | bytearray | memoryview

# Packet types (RFC 3550 12.1, RFC 4585 6.1, RFC 3611).
SR = 200
RR = 201
SDES = 202
BYE = 203
APP = 204
RTPFB = 205
PSFB = 206
XR = 207

# Feedback message types (FMT).
FMT_NACK = 1  # RFC 4585 6.2.1
FMT_TCC = 15  # draft-holmer-rmcat-transport-wide-cc-extensions-01 3.1
FMT_PLI = 1  # RFC 4585 6.3.1
FMT_FIR = 4  # RFC 5104 4.3.1
FMT_AFB = 15  # application layer feedback (RFC 4585 6.4), REMB's home

HEADER = struct.Struct("!BBH")
"""The common header: V/P/count or FMT, packet type, length in 32-bit words minus one."""

T = TypeVar("T")


def read_compound(data: Buffer, decode: Callable[[int, int, bytes, bytes, bool], T]) -> list[T]:
    """``decode(count, packet_type, body, payload, padded)`` of every packet of
    a compound packet, in order (RFC 3550 section 6.1); ``body`` is the
    payload without its padding.

    Checks version 2, that the length fields tile the datagram exactly, and
    padding counts. Raises :class:`RtcpParseError` on any malformation.
    """
    data = bytes(data)
    n = len(data)
    if n == 0:
        raise RtcpParseError("empty RTCP packet")
    packets: list[T] = []
    pos = 0
    while pos < n:
        if pos + 4 > n:
            raise RtcpParseError("RTCP header is truncated")
        b0, packet_type, words = HEADER.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise RtcpParseError("RTCP version is not 2")
        end = pos + 4 + 4 * words
        if end > n:
            raise RtcpParseError("RTCP packet is longer than the datagram")
        payload = data[pos + 4 : end]
        body = payload
        if b0 & 0x20:
            pad = payload[-1] if payload else 0
            if pad == 0 or pad > len(payload):
                raise RtcpParseError("RTCP padding length is invalid")
            body = payload[: len(payload) - pad]
        packets.append(decode(b0 & 0x1F, packet_type, body, payload, bool(b0 & 0x20)))
        pos = end
    return packets


class Framed:
    """Common framing: ``parse`` of exactly one packet and ``__bytes__`` with the header.

    A class names the header that carries it: ``PACKET_TYPE``, and ``FMT``
    for feedback, whose count field is its message type (RFC 4585 section 6.1).
    """

    __slots__ = ()

    PACKET_TYPE: ClassVar[int]
    FMT: ClassVar[int | None] = None

    @classmethod
    def carries(cls, count: int, packet_type: int, body: bytes) -> bool:
        """Whether a packet with this header's count or FMT, type and body is one of this class."""
        return packet_type == cls.PACKET_TYPE and (cls.FMT is None or count == cls.FMT)

    @classmethod
    def decode(cls, count: int, body: bytes) -> Self:
        """The packet from its body (padding removed) and its header's count or FMT."""
        raise NotImplementedError

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse exactly one packet of this class (RFC 3550 section 6.1 framing)."""
        packets = read_compound(data, cls._decode_own)
        if len(packets) != 1:
            raise RtcpParseError(f"expected one RTCP packet, found {len(packets)}")
        return packets[0]

    @classmethod
    def _decode_own(
        cls, count: int, packet_type: int, body: bytes, payload: bytes, padded: bool
    ) -> Self:
        if not cls.carries(count, packet_type, body):
            raise RtcpParseError(
                f"expected {cls.__name__}, found RTCP packet type {packet_type} ({count})"
            )
        return cls.decode(count, body)

    def _encode(self) -> tuple[int, int, bytes]:
        """``(count or FMT, packet type, payload)``; a payload not on a word boundary is padded."""
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        count, packet_type, payload = self._encode()
        if not 0 <= count <= 31:
            raise ValueError(f"RTCP count/FMT {count} does not fit 5 bits")
        pad = -len(payload) % 4
        if pad:
            # RFC 3550 6.4.1 padding: zeros, the last byte is the count.
            payload = payload + bytes(pad - 1) + bytes((pad,))
        words = len(payload) // 4
        if words > 0xFFFF:
            raise ValueError("RTCP packet too long for its length field")
        return HEADER.pack(0x80 | (0x20 if pad else 0) | count, packet_type, words) + payload
