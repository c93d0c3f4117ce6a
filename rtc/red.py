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

Two faces, as RTP has (:mod:`rtc.rtp.header` in place, :mod:`rtc.rtp.packet`
as a value): :func:`primary` finds the primary block of a payload in place
for the forwarding path (no object per packet), and :class:`RedPayload` is
the payload as a value (``parse``/``__bytes__``) for tests and tools. A
malformed payload raises :class:`~rtc.errors.RtpParseError` from ``parse``
and gives -1 from :func:`primary`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Self

from rtc.errors import RtpParseError

__all__ = ["MAX_LENGTH", "MAX_OFFSET", "RedBlock", "RedPayload", "deepen", "primary", "red_fmtp_pt"]

Buffer = bytes | bytearray | memoryview

MAX_OFFSET = 0x3FFF
"""Largest timestamp offset a block header carries (14 bits)."""
MAX_LENGTH = 0x3FF
"""Largest redundant block a header describes (10 bits)."""

_HEADER = struct.Struct("!I")
# Two redundant block headers and the final one.
_TWO_HEADERS = struct.Struct("!IIB")


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


def deepen(
    previous: Buffer,
    prev_start: int,
    prev_end: int,
    delta: int,
    packet: Buffer,
    start: int,
    end: int,
    depth: int,
) -> bytes | None:
    """``packet`` with up to ``depth`` redundant blocks, taken from the packet before it.

    ``previous`` is the RED packet sent just before ``packet`` (payload at
    ``[prev_start, prev_end)``, ``delta`` timestamp units earlier); both
    payloads must be well-formed RED (:func:`primary` found them). The result
    is ``packet``'s RTP header (its P bit cleared), then as redundant blocks
    the newest of ``previous``'s own redundant blocks and ``previous``'s
    primary, then ``packet``'s primary: the frames a receiver that lost
    ``previous`` and the packet before it still gets (RFC 2198 section 3). The
    redundant blocks ``packet`` carried itself are left out: they are copies
    of the same frames. None when that would not add a block, or a block does
    not fit a header (an offset past 14 bits, a block past 1023 octets).
    """
    if depth < 1 or not 0 < delta <= MAX_OFFSET:
        return None
    if (
        depth == 2
        and previous[prev_start] & packet[start] & 0x80
        and not (previous[prev_start + 4] | packet[start + 4]) & 0x80
    ):
        # What Chromium sends (one redundant frame in each), in one join:
        # the forwarding path runs this for every RED packet.
        (word,) = _HEADER.unpack_from(previous, prev_start)
        offset = ((word >> 10) & MAX_OFFSET) + delta
        at = prev_start + 5 + (word & MAX_LENGTH)
        length = prev_end - at
        if offset > MAX_OFFSET or length > MAX_LENGTH:
            return None
        own = ((packet[start + 2] & 0x03) << 8) | packet[start + 3]
        return b"".join(
            (
                bytes((packet[0] & 0xDF,)),  # the padding stays behind
                packet[1:start],
                _TWO_HEADERS.pack(
                    (word & 0xFF0003FF) | offset << 10,
                    0x80000000 | (previous[prev_start + 4] & 0x7F) << 24 | delta << 10 | length,
                    packet[start + 4],
                ),
                previous[prev_start + 5 : prev_end],
                packet[start + 5 + own : end],
            )
        )
    # previous: k redundant headers, its final header, the blocks' data.
    pos = prev_start
    k = 0
    while previous[pos] & 0x80:
        pos += 4
        k += 1
    prev_final = pos
    keep = min(k, depth - 1)
    # packet: its own redundant headers.
    pos = start
    m = 0
    own = 0
    while packet[pos] & 0x80:
        own += ((packet[pos + 2] & 0x03) << 8) | packet[pos + 3]
        pos += 4
        m += 1
    cur_final = pos
    if keep + 1 <= m:
        return None
    skip_len = 0
    for i in range(k - keep):
        at = prev_start + 4 * i
        skip_len += ((previous[at + 2] & 0x03) << 8) | previous[at + 3]
    lengths = 0
    out = bytearray(packet[:start])
    out[0] &= 0xDF  # the padding stays behind
    for i in range(k - keep, k):
        (word,) = _HEADER.unpack_from(previous, prev_start + 4 * i)
        offset = ((word >> 10) & MAX_OFFSET) + delta
        if offset > MAX_OFFSET:
            return None
        lengths += word & MAX_LENGTH
        out += _HEADER.pack((word & 0xFF0003FF) | offset << 10)
    prev_data = prev_final + 1 + skip_len
    prev_primary = prev_final + 1 + skip_len + lengths
    length = prev_end - prev_primary
    if length > MAX_LENGTH:
        return None
    out += _HEADER.pack(0x80000000 | (previous[prev_final] & 0x7F) << 24 | delta << 10 | length)
    out.append(packet[cur_final])
    out += previous[prev_data:prev_end]
    out += packet[cur_final + 1 + own : end]
    return bytes(out)
