"""The fixed RTP header (RFC 3550 section 5.1), read and rewritten in place.

The forwarding path reads and rewrites header fields with precompiled
:class:`struct.Struct` objects, on the one ``bytearray`` a datagram arrived
in: no object per packet (mediasoup's habit: rewrite, send, rewrite for the
next subscriber). Functions here never copy the packet, except
:func:`rtx_original`, which builds the packet an RTX packet repairs.

Readers take ``bytes``, ``bytearray`` or ``memoryview``; writers need a
writable ``bytearray`` or ``memoryview``. A malformed packet raises
:class:`~rtc.errors.RtpParseError` and nothing else. Header extensions are
:mod:`rtc.rtp.extensions`; the packet as a value is :mod:`rtc.rtp.packet`.
"""

from __future__ import annotations

import struct

from rtc.errors import RtpParseError

__all__ = [
    "FIXED_HEADER",
    "HEADER_REWRITE",
    "HEADER_SIZE",
    "Buffer",
    "WritableBuffer",
    "header_fields",
    "header_length",
    "marker",
    "padding_length",
    "payload_range",
    "payload_type",
    "rewrite_header",
    "rtx_original",
    "sequence_number",
    "set_marker",
    "set_payload_type",
    "set_sequence_number",
    "set_ssrc",
    "set_timestamp",
    "ssrc",
    "timestamp",
]

Buffer = bytes | bytearray | memoryview
WritableBuffer = bytearray | memoryview

HEADER_SIZE = 12
"""Size of the fixed RTP header (RFC 3550 section 5.1)."""

FIXED_HEADER = struct.Struct("!BBHII")
"""The fixed header: V/P/X/CC, M/PT, sequence number, timestamp, SSRC (RFC 3550 5.1)."""
HEADER_REWRITE = struct.Struct("!BHII")
"""The fixed header from offset 1: M/PT, sequence number, timestamp, SSRC, in
one ``pack_into(buf, 1, ...)`` (what a forwarder rewrites per copy)."""
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def header_length(data: Buffer) -> int:
    """Length of the header: fixed part, CSRCs and extension block (RFC 3550 5.1, 5.3.1).

    Raises :class:`RtpParseError` unless the version is 2 and the header fits.
    """
    n = len(data)
    if n < HEADER_SIZE:
        raise RtpParseError("RTP packet shorter than the fixed header")
    b0 = data[0]
    if b0 >> 6 != 2:
        raise RtpParseError("RTP version is not 2")
    pos = HEADER_SIZE + (b0 & 0x0F) * 4
    if b0 & 0x10:
        if n < pos + 4:
            raise RtpParseError("RTP header extension is truncated")
        pos += 4 + ((data[pos + 2] << 8) | data[pos + 3]) * 4
    if n < pos:
        raise RtpParseError("RTP header is truncated")
    return pos


def padding_length(data: Buffer) -> int:
    """Bytes of padding at the end of the packet, 0 without the P bit (RFC 3550 5.1).

    Raises :class:`RtpParseError` if the count is zero or reaches into the header.
    """
    hl = header_length(data)
    if not data[0] & 0x20:
        return 0
    pad = data[-1]
    if pad == 0 or hl + pad > len(data):
        raise RtpParseError("RTP padding length is invalid")
    return pad


def payload_range(data: Buffer) -> tuple[int, int]:
    """``(start, end)`` of the payload: after the header, before the padding (RFC 3550 5.1).

    Validates the whole packet's framing; a packet it accepts is safe to forward.
    """
    hl = header_length(data)
    end = len(data)
    if data[0] & 0x20:
        pad = data[-1]
        if pad == 0 or hl + pad > end:
            raise RtpParseError("RTP padding length is invalid")
        end -= pad
    return hl, end


def rtx_original(packet: Buffer, payload_type: int, ssrc: int) -> bytes | None:
    """The original packet inside an RTX packet (RFC 4588 section 4): the
    RTX header with the original sequence number (the payload's first two
    bytes), ``payload_type`` and ``ssrc`` of the stream it repairs, and the
    rest of the payload. None for an RTX packet without a payload (a
    bandwidth probe, no repair); :class:`RtpParseError` if it is not RTP."""
    start, end = payload_range(packet)
    if end - start < 2:
        return None
    osn = (packet[start] << 8) | packet[start + 1]
    buf = bytearray(packet[:start])
    buf += packet[start + 2 : end]
    buf[0] &= 0xDF  # the RTX padding is not the original's
    HEADER_REWRITE.pack_into(
        buf, 1, (packet[1] & 0x80) | payload_type, osn, _U32.unpack_from(packet, 4)[0], ssrc
    )
    return bytes(buf)


def header_fields(data: Buffer) -> tuple[int, int, int, int, int]:
    """``(marker, payload_type, sequence_number, timestamp, ssrc)`` in one read (RFC 3550 5.1).

    Checks only that the fixed header is there; see :func:`payload_range`.
    """
    if len(data) < HEADER_SIZE:
        raise RtpParseError("RTP packet shorter than the fixed header")
    _, b1, seq, ts, ssrc_ = FIXED_HEADER.unpack_from(data)
    return b1 >> 7, b1 & 0x7F, seq, ts, ssrc_


def rewrite_header(
    buf: WritableBuffer, payload_type: int, sequence_number: int, timestamp: int, ssrc: int
) -> None:
    """Rewrite payload type, sequence number, timestamp and SSRC in place, keeping the marker.

    One ``pack_into`` over bytes 1-11 of the fixed header (RFC 3550 5.1); the
    forwarding path's only write per subscriber.
    """
    HEADER_REWRITE.pack_into(
        buf, 1, (buf[1] & 0x80) | payload_type, sequence_number, timestamp, ssrc
    )


def marker(data: Buffer) -> bool:
    """The M bit (RFC 3550 5.1): end of a video frame, start of an audio talkspurt."""
    return bool(data[1] & 0x80)


def set_marker(buf: WritableBuffer, value: bool) -> None:
    """Set or clear the M bit in place (RFC 3550 5.1)."""
    buf[1] = (buf[1] | 0x80) if value else (buf[1] & 0x7F)


def payload_type(data: Buffer) -> int:
    """The 7-bit payload type (RFC 3550 5.1)."""
    return data[1] & 0x7F


def set_payload_type(buf: WritableBuffer, value: int) -> None:
    """Rewrite the payload type in place, keeping the marker (RFC 3550 5.1)."""
    buf[1] = (buf[1] & 0x80) | value


def sequence_number(data: Buffer) -> int:
    """The 16-bit sequence number (RFC 3550 5.1)."""
    return int(_U16.unpack_from(data, 2)[0])


def set_sequence_number(buf: WritableBuffer, value: int) -> None:
    """Rewrite the sequence number in place (RFC 3550 5.1)."""
    _U16.pack_into(buf, 2, value)


def timestamp(data: Buffer) -> int:
    """The 32-bit RTP timestamp (RFC 3550 5.1)."""
    return int(_U32.unpack_from(data, 4)[0])


def set_timestamp(buf: WritableBuffer, value: int) -> None:
    """Rewrite the RTP timestamp in place (RFC 3550 5.1)."""
    _U32.pack_into(buf, 4, value)


def ssrc(data: Buffer) -> int:
    """The synchronization source (RFC 3550 5.1)."""
    return int(_U32.unpack_from(data, 8)[0])


def set_ssrc(buf: WritableBuffer, value: int) -> None:
    """Rewrite the SSRC in place (RFC 3550 5.1)."""
    _U32.pack_into(buf, 8, value)
