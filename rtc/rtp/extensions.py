"""RTP header extensions (RFC 8285): the one- and two-byte forms, and the
elements the SFU reads and rewrites in place: transport-wide sequence number
(draft-holmer-rmcat-transport-wide-cc-extensions-01), abs-send-time
(webrtc.org) and audio level (RFC 6464).

Like :mod:`rtc.rtp.header`, readers and writers work on the datagram's own
buffer with precompiled :class:`struct.Struct` objects and never copy it; a
malformed extension block raises :class:`~rtc.errors.RtpParseError`.
"""

from __future__ import annotations

import struct

from rtc.errors import RtpParseError
from rtc.rtp.header import HEADER_SIZE, Buffer, WritableBuffer

__all__ = [
    "EXTENSION_HEADER",
    "ONE_BYTE_PROFILE",
    "TWO_BYTE_PROFILE",
    "abs_send_time",
    "abs_send_time_from_seconds",
    "audio_level",
    "build_extensions",
    "extension_block",
    "extension_elements",
    "find_extension",
    "get_extension",
    "parse_extensions",
    "set_abs_send_time",
    "set_audio_level",
    "set_extension",
    "set_transport_sequence_number",
    "transport_sequence_number",
]

ONE_BYTE_PROFILE = 0xBEDE
"""``defined by profile`` value of the one-byte extension form (RFC 8285 section 4.2)."""
TWO_BYTE_PROFILE = 0x1000
"""Two-byte extension form (RFC 8285 section 4.3); the low 4 bits ("appbits") may be set."""
EXTENSION_HEADER = struct.Struct("!HH")
"""The extension block's header: "defined by profile" and length in words (RFC 3550 5.3.1)."""
_U16 = struct.Struct("!H")

_ABSENT = (-1, 0)


def extension_block(data: Buffer) -> tuple[int, int, int]:
    """``(profile, start, end)`` of the extension block's body, ``(-1, 0, 0)`` without one.

    ``profile`` is the 16-bit "defined by profile" field (RFC 3550 5.3.1):
    0xBEDE for RFC 8285's one-byte form, 0x100X for the two-byte form.
    """
    if len(data) < HEADER_SIZE:
        raise RtpParseError("RTP packet shorter than the fixed header")
    b0 = data[0]
    if not b0 & 0x10:
        return -1, 0, 0
    pos = HEADER_SIZE + (b0 & 0x0F) * 4
    if len(data) < pos + 4:
        raise RtpParseError("RTP header extension is truncated")
    profile, words = EXTENSION_HEADER.unpack_from(data, pos)
    end = pos + 4 + words * 4
    if len(data) < end:
        raise RtpParseError("RTP header extension is truncated")
    return profile, pos + 4, end


def find_extension(data: Buffer, ext_id: int) -> tuple[int, int]:
    """``(offset, length)`` in the packet of extension element ``ext_id``'s value.

    ``(-1, 0)`` when the packet has no such element. Walks the one-byte
    (RFC 8285 section 4.2) or two-byte (section 4.3) form: zero bytes between
    elements are padding, and in the one-byte form ID 15 ends the walk. Other
    profiles hold no RFC 8285 elements. Raises :class:`RtpParseError` when any
    element runs past the block.
    """
    profile, pos, end = extension_block(data)
    walked = _walk_elements(data, pos, end, profile)
    if walked is not None:
        two_byte, elements = walked
        for offset, xid, length in elements:
            if xid == ext_id:
                return offset + (2 if two_byte else 1), length
    return _ABSENT


def get_extension(data: Buffer, ext_id: int) -> bytes | None:
    """The value of extension element ``ext_id`` (RFC 8285), or ``None``."""
    offset, length = find_extension(data, ext_id)
    if offset < 0:
        return None
    return bytes(data[offset : offset + length])


def set_extension(buf: WritableBuffer, ext_id: int, value: bytes) -> bool:
    """Overwrite element ``ext_id``'s value in place (RFC 8285); ``False`` if absent.

    The value must keep its length: changing it would move the payload, which
    in-place rewriting never does. A different length raises ``ValueError``.
    """
    offset, length = find_extension(buf, ext_id)
    if offset < 0:
        return False
    if len(value) != length:
        raise ValueError(f"extension {ext_id} holds {length} bytes, not {len(value)}")
    buf[offset : offset + length] = value
    return True


def transport_sequence_number(data: Buffer, ext_id: int) -> int | None:
    """Transport-wide sequence number (draft-holmer-rmcat-transport-wide-cc-extensions-01 2).

    Also reads the first two bytes of the 4-byte transport-wide-cc-02 form.
    """
    offset, length = find_extension(data, ext_id)
    if offset < 0:
        return None
    if length < 2:
        raise RtpParseError("transport-wide sequence number is shorter than 2 bytes")
    return int(_U16.unpack_from(data, offset)[0])


def set_transport_sequence_number(buf: WritableBuffer, ext_id: int, value: int) -> bool:
    """Rewrite the transport-wide sequence number in place; ``False`` if absent.

    An SFU terminates transport-cc per leg, so each subscriber's copy carries
    the sequence number of that subscriber's own transport.
    """
    offset, length = find_extension(buf, ext_id)
    if offset < 0:
        return False
    if length < 2:
        raise RtpParseError("transport-wide sequence number is shorter than 2 bytes")
    _U16.pack_into(buf, offset, value & 0xFFFF)
    return True


def abs_send_time(data: Buffer, ext_id: int) -> int | None:
    """abs-send-time: 24-bit seconds in 6.18 fixed point (webrtc.org abs-send-time)."""
    offset, length = find_extension(data, ext_id)
    if offset < 0:
        return None
    if length != 3:
        raise RtpParseError("abs-send-time is not 3 bytes")
    return (data[offset] << 16) | (data[offset + 1] << 8) | data[offset + 2]


def set_abs_send_time(buf: WritableBuffer, ext_id: int, value: int) -> bool:
    """Rewrite abs-send-time in place (a relay stamps its own send time); ``False`` if absent."""
    offset, length = find_extension(buf, ext_id)
    if offset < 0:
        return False
    if length != 3:
        raise RtpParseError("abs-send-time is not 3 bytes")
    buf[offset] = (value >> 16) & 0xFF
    buf[offset + 1] = (value >> 8) & 0xFF
    buf[offset + 2] = value & 0xFF
    return True


def abs_send_time_from_seconds(seconds: float) -> int:
    """abs-send-time value for a time in seconds: 6.18 fixed point, wrapping every 64 s."""
    return int(seconds * (1 << 18)) & 0xFFFFFF


def audio_level(data: Buffer, ext_id: int) -> tuple[bool, int] | None:
    """``(voice_activity, level)`` from ssrc-audio-level (RFC 6464 section 3).

    ``level`` is in -dBov, 0 (loudest) to 127 (silence).
    """
    offset, length = find_extension(data, ext_id)
    if offset < 0:
        return None
    if length < 1:
        raise RtpParseError("audio level extension is empty")
    b = data[offset]
    return bool(b & 0x80), b & 0x7F


def set_audio_level(buf: WritableBuffer, ext_id: int, voice: bool, level: int) -> bool:
    """Rewrite ssrc-audio-level in place (RFC 6464 section 3); ``False`` if absent."""
    offset, length = find_extension(buf, ext_id)
    if offset < 0:
        return False
    if length < 1:
        raise RtpParseError("audio level extension is empty")
    buf[offset] = (0x80 if voice else 0) | (level & 0x7F)
    return True


def _walk_elements(
    data: Buffer, pos: int, end: int, profile: int
) -> tuple[bool, list[tuple[int, int, int]]] | None:
    """The elements of an extension block body in ``data[pos:end]`` as
    ``(two_byte, [(element_offset, id, value_length)])``; ``None`` for an
    unknown profile, whose body is opaque (RFC 8285 sections 4.2, 4.3)."""
    elements: list[tuple[int, int, int]] = []
    if profile == ONE_BYTE_PROFILE:
        while pos < end:
            b = data[pos]
            if b == 0:
                pos += 1
                continue
            xid = b >> 4
            if xid == 15:
                break
            length = (b & 0x0F) + 1
            if pos + 1 + length > end:
                raise RtpParseError("RTP one-byte extension element overruns its block")
            elements.append((pos, xid, length))
            pos += 1 + length
        return False, elements
    if profile & 0xFFF0 == TWO_BYTE_PROFILE:
        while pos < end:
            xid = data[pos]
            if xid == 0:
                pos += 1
                continue
            if pos + 2 > end:
                raise RtpParseError("RTP two-byte extension element header is truncated")
            length = data[pos + 1]
            if pos + 2 + length > end:
                raise RtpParseError("RTP two-byte extension element overruns its block")
            elements.append((pos, xid, length))
            pos += 2 + length
        return True, elements
    return None


def extension_elements(data: Buffer) -> tuple[bool, int, int, list[tuple[int, int, int]]]:
    """A packet's extension elements, for rewriting them in place:
    ``(two_byte, block_start, block_end, [(element_offset, id, value_length)])``,
    the value starting 1 (one-byte form) or 2 (two-byte form) bytes after
    its element offset. ``block_start == block_end == 0`` without an RFC 8285
    block. Raises :class:`RtpParseError` for an element that overruns it."""
    b0 = data[0]
    if not b0 & 0x10:
        return False, 0, 0, []
    pos = 12 + (b0 & 0x0F) * 4
    profile, words = EXTENSION_HEADER.unpack_from(data, pos)
    pos += 4
    end = pos + words * 4
    walked = _walk_elements(data, pos, end, profile)
    if walked is None:
        return False, 0, 0, []
    return walked[0], pos, end, walked[1]


def parse_extensions(profile: int, body: Buffer) -> list[tuple[int, bytes]]:
    """Every ``(id, value)`` element of an extension block body (RFC 8285 sections 4.2, 4.3).

    An unknown profile yields no elements: its body is opaque.
    """
    walked = _walk_elements(body, 0, len(body), profile)
    if walked is None:
        return []
    header = 2 if walked[0] else 1
    return [(xid, bytes(body[off + header : off + header + n])) for off, xid, n in walked[1]]


def build_extensions(
    elements: list[tuple[int, bytes]], *, two_byte: bool | None = None
) -> tuple[int, bytes]:
    """``(profile, body)`` for elements, zero-padded to 32 bits (RFC 8285 sections 4.2, 4.3).

    The one-byte form is used when every ID is 1-14 and every value 1-16 bytes,
    unless ``two_byte`` forces a choice. Raises ``ValueError`` for elements the
    chosen form cannot carry.
    """
    fits_one = all(1 <= xid <= 14 and 1 <= len(v) <= 16 for xid, v in elements)
    use_two = (not fits_one) if two_byte is None else two_byte
    out = bytearray()
    if use_two:
        for xid, v in elements:
            if not 1 <= xid <= 255 or len(v) > 255:
                raise ValueError(f"two-byte extension element {xid} cannot be encoded")
            out += bytes((xid, len(v)))
            out += v
        profile = TWO_BYTE_PROFILE
    else:
        if not fits_one:
            raise ValueError("elements do not fit the one-byte extension form")
        for xid, v in elements:
            out.append((xid << 4) | (len(v) - 1))
            out += v
        profile = ONE_BYTE_PROFILE
    out += b"\x00" * (-len(out) % 4)
    return profile, bytes(out)
