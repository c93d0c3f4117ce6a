"""RTP headers (RFC 3550 section 5.1) and header extensions (RFC 8285).

Two faces:

- The forwarding path reads and rewrites header fields in place, with
  precompiled :class:`struct.Struct` objects, on the one ``bytearray`` a
  datagram arrived in: no object per packet (mediasoup's habit: rewrite, send,
  rewrite for the next subscriber). Functions here never copy the packet.
- :class:`RtpPacket` is a dataclass with ``parse``/``__bytes__`` for tests,
  tools and the rare packet we build ourselves; never for forwarding.

Also: sequence-number arithmetic (RFC 1982 style, :func:`seq_newer`),
:class:`SequenceUnwrapper`, and :class:`RtpRewriter`, the per-subscriber state
that keeps a switched or resumed source's sequence numbers and timestamps
continuous.

Readers take ``bytes``, ``bytearray`` or ``memoryview``; writers need a
writable ``bytearray`` or ``memoryview``. A malformed packet raises
:class:`~rtc.errors.RtpParseError` and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Self

from rtc.errors import RtpParseError

__all__ = [
    "HEADER_SIZE",
    "ONE_BYTE_PROFILE",
    "TWO_BYTE_PROFILE",
    "RtpPacket",
    "RtpRewriter",
    "SequenceUnwrapper",
    "abs_send_time",
    "abs_send_time_from_seconds",
    "audio_level",
    "build_extensions",
    "extension_block",
    "find_extension",
    "get_extension",
    "header_fields",
    "header_length",
    "marker",
    "padding_length",
    "parse_extensions",
    "payload_range",
    "payload_type",
    "rewrite_header",
    "rtx_original",
    "seq_add",
    "seq_diff",
    "seq_newer",
    "sequence_number",
    "set_abs_send_time",
    "set_audio_level",
    "set_extension",
    "set_marker",
    "set_payload_type",
    "set_sequence_number",
    "set_ssrc",
    "set_timestamp",
    "set_transport_sequence_number",
    "ssrc",
    "timestamp",
    "transport_sequence_number",
    "ts_diff",
    "ts_newer",
]

Buffer = bytes | bytearray | memoryview
WritableBuffer = bytearray | memoryview

HEADER_SIZE = 12
"""Size of the fixed RTP header (RFC 3550 section 5.1)."""
ONE_BYTE_PROFILE = 0xBEDE
"""``defined by profile`` value of the one-byte extension form (RFC 8285 section 4.2)."""
TWO_BYTE_PROFILE = 0x1000
"""Two-byte extension form (RFC 8285 section 4.3); the low 4 bits ("appbits") may be set."""

_FIXED = struct.Struct("!BBHII")
# From offset 1: marker+payload type, sequence number, timestamp, SSRC in one call.
_REWRITE = struct.Struct("!BHII")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_EXT_HEADER = struct.Struct("!HH")
_CSRC = struct.Struct("!I")

_ABSENT = (-1, 0)


# -- fixed header fields ---------------------------------------------------------


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
    _REWRITE.pack_into(
        buf, 1, (packet[1] & 0x80) | payload_type, osn, _U32.unpack_from(packet, 4)[0], ssrc
    )
    return bytes(buf)


def header_fields(data: Buffer) -> tuple[int, int, int, int, int]:
    """``(marker, payload_type, sequence_number, timestamp, ssrc)`` in one read (RFC 3550 5.1).

    Checks only that the fixed header is there; see :func:`payload_range`.
    """
    if len(data) < HEADER_SIZE:
        raise RtpParseError("RTP packet shorter than the fixed header")
    _, b1, seq, ts, ssrc_ = _FIXED.unpack_from(data)
    return b1 >> 7, b1 & 0x7F, seq, ts, ssrc_


def rewrite_header(
    buf: WritableBuffer, payload_type: int, sequence_number: int, timestamp: int, ssrc: int
) -> None:
    """Rewrite payload type, sequence number, timestamp and SSRC in place, keeping the marker.

    One ``pack_into`` over bytes 1-11 of the fixed header (RFC 3550 5.1); the
    forwarding path's only write per subscriber.
    """
    _REWRITE.pack_into(buf, 1, (buf[1] & 0x80) | payload_type, sequence_number, timestamp, ssrc)


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


# -- header extensions (RFC 8285) ----------------------------------------------------


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
    profile, words = _EXT_HEADER.unpack_from(data, pos)
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
    profile, words = _EXT_HEADER.unpack_from(data, pos)
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


# -- the packet as a value (tests and tools) ---------------------------------


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet as a value (RFC 3550 section 5.1); not for the forwarding path.

    The extension block is kept raw (``extension_profile`` is ``None`` without
    one) and the padding too (its last byte is its own length), so that a parsed
    packet serializes back to the very same bytes.
    """

    payload_type: int = 0
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    marker: bool = False
    csrc: list[int] = field(default_factory=list)
    extension_profile: int | None = None
    extension_body: bytes = b""
    payload: bytes = b""
    padding: bytes = b""

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse one packet; raises :class:`RtpParseError` on any malformation.

        That includes RFC 8285 elements that overrun their block, which the
        forwarding path only notices when it looks for an extension.
        """
        start, end = payload_range(data)
        b0, b1, seq, ts, ssrc_ = _FIXED.unpack_from(data)
        cc = b0 & 0x0F
        csrc = [int(_CSRC.unpack_from(data, HEADER_SIZE + 4 * i)[0]) for i in range(cc)]
        profile: int | None = None
        body = b""
        if b0 & 0x10:
            pos = HEADER_SIZE + 4 * cc
            profile = int(_U16.unpack_from(data, pos)[0])
            body = bytes(data[pos + 4 : start])
            parse_extensions(profile, body)  # malformed RFC 8285 elements are a parse error
        return cls(
            payload_type=b1 & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc_,
            marker=bool(b1 & 0x80),
            csrc=csrc,
            extension_profile=profile,
            extension_body=body,
            payload=bytes(data[start:end]),
            padding=bytes(data[end:]),
        )

    def __bytes__(self) -> bytes:
        if len(self.csrc) > 15:
            raise ValueError("an RTP packet carries at most 15 CSRCs")
        if len(self.extension_body) % 4:
            raise ValueError("the extension body must be a multiple of 4 bytes")
        if self.padding and self.padding[-1] != len(self.padding):
            raise ValueError("the padding's last byte must be its length")
        has_ext = self.extension_profile is not None
        out = bytearray(
            _FIXED.pack(
                0x80 | (0x20 if self.padding else 0) | (0x10 if has_ext else 0) | len(self.csrc),
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            )
        )
        for c in self.csrc:
            out += _CSRC.pack(c)
        if self.extension_profile is not None:
            out += _EXT_HEADER.pack(self.extension_profile, len(self.extension_body) // 4)
            out += self.extension_body
        out += self.payload
        out += self.padding
        return bytes(out)

    @property
    def extensions(self) -> list[tuple[int, bytes]]:
        """The RFC 8285 elements of the extension block, in order."""
        if self.extension_profile is None:
            return []
        return parse_extensions(self.extension_profile, self.extension_body)

    def set_extensions(
        self, elements: list[tuple[int, bytes]], *, two_byte: bool | None = None
    ) -> None:
        """Replace the extension block by these RFC 8285 elements (none removes it)."""
        if not elements:
            self.extension_profile, self.extension_body = None, b""
            return
        self.extension_profile, self.extension_body = build_extensions(elements, two_byte=two_byte)


# -- sequence-number arithmetic --------------------------------------------------


def seq_add(seq: int, n: int) -> int:
    """``seq + n`` modulo 2**16."""
    return (seq + n) & 0xFFFF


def seq_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between 16-bit sequence numbers, in [-32768, 32767]."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def seq_newer(a: int, b: int) -> bool:
    """Whether sequence number ``a`` comes after ``b`` (RFC 1982 serial arithmetic, 16 bits).

    RFC 1982 leaves two numbers exactly 2**15 apart undefined; like libwebrtc we
    call the numerically larger one newer, so that exactly one of
    ``seq_newer(a, b)``, ``seq_newer(b, a)``, ``a == b`` holds.
    """
    d = (a - b) & 0xFFFF
    if d == 0x8000:
        return a > b
    return 0 < d < 0x8000


def ts_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between 32-bit RTP timestamps."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def ts_newer(a: int, b: int) -> bool:
    """Whether RTP timestamp ``a`` comes after ``b`` (RFC 1982, 32 bits, ties as in seq_newer)."""
    d = (a - b) & 0xFFFFFFFF
    if d == 0x80000000:
        return a > b
    return 0 < d < 0x80000000


class SequenceUnwrapper:
    """Extends 16-bit sequence numbers to unbounded ints (RFC 3550 A.1's extended seq).

    Each number is placed nearest to the previous one, so reordering of up to
    2**15 packets either way is understood.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    def unwrap(self, seq: int) -> int:
        """The extended value of ``seq``."""
        last = self._last
        if last is None:
            self._last = seq
            return seq
        u = last + (((seq - last + 0x8000) & 0xFFFF) - 0x8000)
        self._last = u
        return u


class RtpRewriter:
    """Continuous sequence numbers and timestamps for one outgoing stream (RFC 3550 5.1).

    A subscriber's stream must look like one RTP source even when the SFU
    switches what feeds it (another simulcast layer, another speaker) or pauses
    and resumes it (mute, a subscription paused for bandwidth). Each run of
    packets from one source gets fixed offsets, chosen at its first packet so
    that it continues one sequence number after the highest sent so far and
    with a timestamp advanced by the wall-clock time elapsed. Fixed offsets map
    a retransmitted packet exactly as the first time, and map a subscriber's
    NACK back (:meth:`original_sequence`).

    Pure state: the caller passes ``now`` (seconds) and calls :meth:`switch`
    before the first packet of a new run; it should start a video run on a
    keyframe.
    """

    __slots__ = (
        "_clock_rate",
        "_in_max",
        "_in_start",
        "_last_now",
        "_out_max_seq",
        "_out_max_ts",
        "_resync",
        "_seq_offset",
        "_started",
        "_ts_offset",
    )

    def __init__(self, clock_rate: int) -> None:
        self._clock_rate = clock_rate
        self._started = False
        self._resync = True
        self._seq_offset = 0
        self._ts_offset = 0
        # Unwrapped input sequence numbers of this run's first and highest packet.
        self._in_start = 0
        self._in_max = 0
        self._out_max_seq = 0
        self._out_max_ts = 0
        self._last_now = 0.0

    def switch(self) -> None:
        """Start a new run at the next packet: another source, or this one resumed."""
        self._resync = True

    def rewrite(self, seq: int, ts: int, now: float) -> tuple[int, int] | None:
        """Outgoing ``(sequence_number, timestamp)`` for an incoming packet.

        ``None`` for a packet older than the first one of the current run: its
        outgoing number would collide with the previous run's, so drop it.
        """
        if self._resync:
            if self._started:
                # Never step back in time, and never repeat a timestamp a decoder
                # would merge into the previous frame.
                gap = max(1, round((now - self._last_now) * self._clock_rate))
                out_seq = (self._out_max_seq + 1) & 0xFFFF
                out_ts = (self._out_max_ts + gap) & 0xFFFFFFFF
            else:
                out_seq, out_ts = seq, ts
            self._seq_offset = (out_seq - seq) & 0xFFFF
            self._ts_offset = (out_ts - ts) & 0xFFFFFFFF
            self._in_start = self._in_max = seq
            self._out_max_seq, self._out_max_ts = out_seq, out_ts
            self._last_now = now
            self._resync = False
            self._started = True
            return out_seq, out_ts
        d = ((seq - self._in_max + 0x8000) & 0xFFFF) - 0x8000
        u = self._in_max + d
        if u < self._in_start:
            return None
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (ts + self._ts_offset) & 0xFFFFFFFF
        if d > 0:
            self._in_max = u
            self._out_max_seq, self._out_max_ts = out_seq, out_ts
            self._last_now = now
        return out_seq, out_ts

    def original_sequence(self, out_seq: int) -> int | None:
        """Incoming sequence number behind an outgoing one, for answering NACKs.

        ``None`` if ``out_seq`` was not sent in the latest run (an earlier
        run's, or not sent yet). After :meth:`switch` the previous run still
        answers until the next run's first packet.
        """
        if not self._started:
            return None
        seq = (out_seq - self._seq_offset) & 0xFFFF
        u = self._in_max + (((seq - self._in_max + 0x8000) & 0xFFFF) - 0x8000)
        if u < self._in_start or u > self._in_max:
            return None
        return seq

    @property
    def highest(self) -> tuple[int, int]:
        """Highest outgoing ``(sequence_number, timestamp)`` so far (for sender reports)."""
        return self._out_max_seq, self._out_max_ts

    @property
    def timestamp_offset(self) -> int | None:
        """What this run adds to incoming timestamps (mod 2**32), or None before the
        first packet: a sender report maps the publisher's NTP/RTP pair through it
        so the subscriber's lip-sync stays right (RFC 3550 section 6.4.1)."""
        return self._ts_offset if self._started else None
