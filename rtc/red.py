"""Redundant audio data (RFC 2198), as browsers send Opus RED (``red/48000/2``).

A RED payload is a list of block headers, then the blocks' data in the same
order. Every header but the last is four octets (RFC 2198 section 3)::

     0                   1                    2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |F|   block PT  |  timestamp offset         |   block length    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

and the last (``F`` = 0) is one octet, ``F`` and the block PT of the primary
encoding, whose data is whatever follows the redundant blocks. The
redundant blocks are older frames (``timestamp offset`` before the packet's
RTP timestamp); the primary is the frame the RTP header's timestamp and
sequence number describe, so a receiver that does not speak RED gets a valid
Opus packet by keeping the RTP header, the primary's payload type and its
data (what an SFU does for subscribers without RED).

Two faces, as in :mod:`rtc.rtp`: :func:`primary` finds the primary block of
a payload in place for the forwarding path (no object per packet), and
:class:`RedPayload` is the payload as a value (``parse``/``__bytes__``) for
tests and tools. A malformed payload raises :class:`~rtc.errors.RtpParseError`
from ``parse`` and gives -1 from :func:`primary`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Self

from rtc.errors import RtpParseError

__all__ = ["MAX_LENGTH", "MAX_OFFSET", "RedBlock", "RedPayload", "primary", "red_fmtp_pt"]

Buffer = bytes | bytearray | memoryview

MAX_OFFSET = 0x3FFF
"""Largest timestamp offset a block header carries (14 bits)."""
MAX_LENGTH = 0x3FF
"""Largest redundant block a header describes (10 bits)."""

_HEADER = struct.Struct("!I")


def primary(data: Buffer, start: int, end: int) -> int:
    """The primary block of the RED payload ``data[start:end]``, found in place.

    Returns ``pt << 16 | offset``: the primary's payload type and the offset
    in ``data`` where its data starts (it runs to ``end``); -1 if the payload
    is malformed: a header past the end, redundant blocks longer than what
    follows the headers, or no primary data at all (RFC 2198 section 3; an
    Opus packet is never empty, RFC 7587 section 4.2). ``end`` is at most
    65535 octets past nothing, as any datagram is.
    """
    pos = start
    total = 0
    while pos < end:
        b = data[pos]
        if not b & 0x80:
            offset = pos + 1 + total
            return -1 if offset >= end else (b << 16) | offset
        if pos + 4 > end:
            return -1
        total += ((data[pos + 2] & 0x03) << 8) | data[pos + 3]
        pos += 4
    return -1


def red_fmtp_pt(fmtp: str | None) -> int | None:
    """The one payload type a RED ``fmtp`` names (``111/111``: Opus PT 111, RFC 2198
    section 5), or None if it is absent, malformed or names several."""
    if not fmtp:
        return None
    items = fmtp.strip().split("/")
    if not all(i.isdigit() and len(i) <= 3 for i in items) or len(set(items)) != 1:
        return None
    pt = int(items[0])
    return pt if pt < 128 else None


@dataclass(slots=True)
class RedBlock:
    """One redundant block: an older frame, ``timestamp_offset`` before the packet's."""

    payload_type: int
    timestamp_offset: int
    data: bytes


@dataclass(slots=True)
class RedPayload:
    """A RED payload as a value (RFC 2198 section 3); not for the forwarding path.

    ``redundant`` oldest first, as senders order them; ``payload_type`` and
    ``data`` are the primary's. A parsed payload serializes back to the very
    same bytes.
    """

    payload_type: int
    data: bytes
    redundant: list[RedBlock] = field(default_factory=list)

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse one payload; raises :class:`RtpParseError` where :func:`primary` gives -1."""
        found = primary(data, 0, len(data))
        if found < 0:
            raise RtpParseError("malformed RED payload (RFC 2198)")
        blocks: list[RedBlock] = []
        pos = 0
        headers: list[tuple[int, int, int]] = []
        while data[pos] & 0x80:
            (word,) = _HEADER.unpack_from(data, pos)
            headers.append(((word >> 24) & 0x7F, (word >> 10) & MAX_OFFSET, word & MAX_LENGTH))
            pos += 4
        at = pos + 1
        for pt, offset, length in headers:
            blocks.append(RedBlock(pt, offset, bytes(data[at : at + length])))
            at += length
        return cls(found >> 16, bytes(data[found & 0xFFFF :]), blocks)

    def __bytes__(self) -> bytes:
        if not self.data:
            raise ValueError("a RED payload needs primary data")
        if not 0 <= self.payload_type < 128:
            raise ValueError("a payload type has 7 bits")
        out = bytearray()
        for block in self.redundant:
            if not 0 <= block.payload_type < 128:
                raise ValueError("a payload type has 7 bits")
            if not 0 <= block.timestamp_offset <= MAX_OFFSET:
                raise ValueError("a RED timestamp offset has 14 bits")
            if len(block.data) > MAX_LENGTH:
                raise ValueError("a RED block is at most 1023 octets")
            out += _HEADER.pack(
                0x80000000
                | block.payload_type << 24
                | block.timestamp_offset << 10
                | len(block.data)
            )
        out.append(self.payload_type)
        for block in self.redundant:
            out += block.data
        out += self.data
        return bytes(out)
