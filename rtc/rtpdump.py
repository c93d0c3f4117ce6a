"""A recorded track's RTP, sealed: the segment format a media worker writes
and the recorder reads back.

A recording keeps each track's RTP packets as they arrived (after SRTP,
before any rewriting), never decoded. The worker cuts a track's packets into
segments of a few seconds and seals each with the recording's key
(AES-256-GCM, NIST SP 800-38D); the recorder opens the segments of a track in
order and remuxes their payloads into a container without transcoding.

One segment, all integers big-endian::

    magic    8 bytes   b"WDRTP\\x00\\x01\\n"
    hlen     u32       length of the header
    header   hlen      JSON (UTF-8): SegmentHeader's fields
    nonce    12 bytes
    sealed   rest      AES-GCM(key, nonce, records, aad = magic + hlen + header)

    records  := record*
    record   := offset_us u64 (arrival, from the header's ``started``)
                length    u16
                packet    length bytes (one RTP packet)

The header is authenticated, not secret: it names the recording, the track
and the codec, which the recorder needs before it has the key. A segment
moved onto another recording or track, reordered (``index``) or cut short
does not open.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rtc.errors import RtcError

__all__ = [
    "MAGIC",
    "MAX_PACKET",
    "RtpDumpError",
    "Segment",
    "SegmentHeader",
    "SegmentWriter",
    "open_segment",
    "read_header",
]

MAGIC = b"WDRTP\x00\x01\n"
#: An RTP packet longer than this is not recorded (a UDP datagram over a
#: typical path MTU never is).
MAX_PACKET = 0xFFFF
_HLEN = struct.Struct(">I")
_RECORD = struct.Struct(">QH")
_NONCE = 12
_MAX_HEADER = 4096


class RtpDumpError(RtcError, ValueError):
    """Bytes that are not a whole segment of this format, or that do not open
    with the key given (wrong key, tampered, truncated)."""


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    recording: str
    track: str
    kind: Literal["audio", "video"]
    #: The codec's name as in SDP's rtpmap (``"opus"``, ``"VP8"``, ``"H264"``).
    codec: str
    clock_rate: int
    payload_type: int
    #: 0, 1, 2, ... for one track of one recording, without gaps.
    index: int
    #: Wall-clock time (Unix seconds) that record offsets count from.
    started: float

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> SegmentHeader:
        try:
            raw = json.loads(data)
            header = cls(**raw)
        except (ValueError, TypeError) as e:
            raise RtpDumpError(f"bad segment header: {e}") from None
        if header.kind not in ("audio", "video") or header.index < 0 or header.clock_rate <= 0:
            raise RtpDumpError("bad segment header: out-of-range field")
        return header


@dataclass(frozen=True, slots=True)
class Segment:
    header: SegmentHeader
    #: (arrival in Unix seconds, RTP packet), in arrival order.
    packets: list[tuple[float, bytes]]


class SegmentWriter:
    """Collects one segment's packets, then seals it. Not thread-safe: one
    writer per track, fed by one thread."""

    __slots__ = ("_buffer", "count", "header")

    def __init__(self, header: SegmentHeader) -> None:
        self.header = header
        self._buffer = bytearray()
        self.count = 0

    @property
    def size(self) -> int:
        """Bytes of records so far (the sealed segment is about this plus the header)."""
        return len(self._buffer)

    def add(self, packet: bytes | memoryview, at: float) -> None:
        """Keep ``packet`` as arrived at ``at`` (Unix seconds, not before the
        header's ``started``; earlier counts as ``started``)."""
        if len(packet) > MAX_PACKET:
            raise RtpDumpError("packet too long to record")
        offset = max(0, round((at - self.header.started) * 1_000_000))
        self._buffer += _RECORD.pack(offset, len(packet))
        self._buffer += packet
        self.count += 1

    def seal(self, key: bytes) -> bytes:
        """The whole segment, sealed with ``key`` (32 bytes)."""
        header = self.header.encode()
        prefix = MAGIC + _HLEN.pack(len(header)) + header
        nonce = os.urandom(_NONCE)
        return prefix + nonce + AESGCM(key).encrypt(nonce, bytes(self._buffer), prefix)


def read_header(blob: bytes) -> SegmentHeader:
    """The segment's header, read without the key (not yet authenticated:
    :func:`open_segment` checks it)."""
    return SegmentHeader.decode(_split(blob)[1])


def _split(blob: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _HLEN.size:
        raise RtpDumpError("not a recorded-RTP segment")
    (hlen,) = _HLEN.unpack_from(blob, len(MAGIC))
    end = len(MAGIC) + _HLEN.size + hlen
    if hlen > _MAX_HEADER or len(blob) < end + _NONCE + 16:
        raise RtpDumpError("truncated segment")
    return (
        blob[:end],
        blob[len(MAGIC) + _HLEN.size : end],
        blob[end : end + _NONCE],
        blob[end + _NONCE :],
    )


def open_segment(blob: bytes, key: bytes) -> Segment:
    """Authenticate and decrypt a segment. :class:`RtpDumpError` if it does
    not open with ``key`` or its records do not parse."""
    prefix, header_bytes, nonce, sealed = _split(blob)
    try:
        records = AESGCM(key).decrypt(nonce, sealed, prefix)
    except InvalidTag:
        raise RtpDumpError("segment does not open with this key (wrong key or tampered)") from None
    header = SegmentHeader.decode(header_bytes)
    packets: list[tuple[float, bytes]] = []
    at = 0
    while at < len(records):
        if at + _RECORD.size > len(records):
            raise RtpDumpError("truncated record")
        offset, length = _RECORD.unpack_from(records, at)
        at += _RECORD.size
        if at + length > len(records):
            raise RtpDumpError("truncated record")
        packets.append((header.started + offset / 1_000_000, records[at : at + length]))
        at += length
    return Segment(header, packets)
