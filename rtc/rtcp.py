"""RTCP packets and compound RTCP (RFC 3550 section 6), with the feedback an SFU speaks.

Each packet is a dataclass with ``parse(data) -> Self`` (exactly one packet)
and ``__bytes__``; :func:`parse_compound` splits a compound packet (what one
SRTCP datagram carries) and :func:`build_compound` joins one.

- :class:`SenderReport`, :class:`ReceiverReport` with :class:`ReportBlock`
  (RFC 3550 6.4), :class:`SourceDescription` (6.5), :class:`Bye` (6.6);
- :class:`Nack`, generic NACK (RFC 4585 6.2.1), with :func:`nack_pairs` and
  :func:`expand_nack` between lost sequence numbers and PID+BLP pairs;
- :class:`Pli` (RFC 4585 6.3.1), :class:`Fir` (RFC 5104 4.3.1);
- :class:`Remb` (draft-alvestrand-rmcat-remb-03 2.2);
- :class:`TransportCc` (draft-holmer-rmcat-transport-wide-cc-extensions-01 3.1)
  with :meth:`TransportCc.from_arrivals` and :meth:`TransportCc.arrivals`;
- :class:`UnknownRtcp` for anything else (APP, XR, other feedback formats),
  kept opaque and serialized back byte for byte.

Parsing is strict about framing (version, length words, padding) and about
the layouts above, and raises :class:`~rtc.errors.RtcpParseError` (a
``ValueError``) and nothing else; the caller counts and drops the datagram.
Our encoder is canonical: a packet we built parses back to an equal value and
serializes to the same bytes. Non-canonical input (RTCP padding on a packet
other than transport-cc, extra SDES nulls, a REMB mantissa that is not
normalized) parses to the same values but is re-encoded canonically.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

from rtc.errors import RtcpParseError

__all__ = [
    "APP",
    "BYE",
    "PSFB",
    "RR",
    "RTPFB",
    "SDES",
    "SR",
    "XR",
    "Bye",
    "Fir",
    "Nack",
    "Pli",
    "ReceiverReport",
    "Remb",
    "ReportBlock",
    "RtcpPacket",
    "SdesChunk",
    "SenderReport",
    "SourceDescription",
    "TransportCc",
    "UnknownRtcp",
    "build_compound",
    "compact_ntp",
    "expand_nack",
    "nack_pairs",
    "parse_compound",
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
_FMT_NACK = 1  # RFC 4585 6.2.1
_FMT_TCC = 15  # draft-holmer-rmcat-transport-wide-cc-extensions-01 3.1
_FMT_PLI = 1  # RFC 4585 6.3.1
_FMT_FIR = 4  # RFC 5104 4.3.1
_FMT_AFB = 15  # application layer feedback (RFC 4585 6.4), REMB's home

_HEADER = struct.Struct("!BBH")
_U16 = struct.Struct("!H")
_I16 = struct.Struct("!h")
_U32 = struct.Struct("!I")
_TWO_SSRC = struct.Struct("!II")
_SENDER_INFO = struct.Struct("!IQIII")  # SSRC, NTP, RTP ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")
_NACK_ITEM = struct.Struct("!HH")
_FIR_ITEM = struct.Struct("!II")
_REMB_HEAD = struct.Struct("!4sBBH")
_TCC_HEAD = struct.Struct("!IIHHI")


def compact_ntp(ntp: int) -> int:
    """Middle 32 bits of a 64-bit NTP timestamp: the LSR of a report block (RFC 3550 6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


class _Rtcp:
    """Common framing: ``parse`` of exactly one packet and ``__bytes__`` with the header."""

    __slots__ = ()

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse exactly one packet of this class (RFC 3550 section 6.1 framing)."""
        packets = parse_compound(data)
        if len(packets) != 1:
            raise RtcpParseError(f"expected one RTCP packet, found {len(packets)}")
        packet = packets[0]
        if not isinstance(packet, cls):
            raise RtcpParseError(f"expected {cls.__name__}, found {type(packet).__name__}")
        return packet

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
        return _HEADER.pack(0x80 | (0x20 if pad else 0) | count, packet_type, words) + payload


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
class SenderReport(_Rtcp):
    """SR: sender info and report blocks (RFC 3550 section 6.4.1)."""

    ssrc: int
    ntp_timestamp: int = 0
    rtp_timestamp: int = 0
    packet_count: int = 0
    octet_count: int = 0
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""
    """Profile-specific extension after the blocks, kept raw (a multiple of 4 bytes)."""

    @classmethod
    def _decode(cls, count: int, body: bytes) -> Self:
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
class ReceiverReport(_Rtcp):
    """RR: report blocks from a receiver that sends nothing (RFC 3550 section 6.4.2)."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""
    """Profile-specific extension after the blocks, kept raw (a multiple of 4 bytes)."""

    @classmethod
    def _decode(cls, count: int, body: bytes) -> Self:
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
class SourceDescription(_Rtcp):
    """SDES: chunks of items per source (RFC 3550 section 6.5)."""

    chunks: list[SdesChunk] = field(default_factory=list)

    @classmethod
    def for_cname(cls, ssrc: int, cname: str) -> Self:
        """The usual SDES: one chunk with one CNAME item (RFC 3550 6.5.1)."""
        return cls([SdesChunk(ssrc, [(SDES_CNAME, cname.encode())])])

    @classmethod
    def _decode(cls, count: int, body: bytes) -> Self:
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
class Bye(_Rtcp):
    """BYE: sources leaving, with an optional reason (RFC 3550 section 6.6)."""

    sources: list[int] = field(default_factory=list)
    reason: bytes | None = None

    @classmethod
    def _decode(cls, count: int, body: bytes) -> Self:
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


# -- generic NACK (RFC 4585 6.2.1) ----------------------------------------------------


def nack_pairs(lost: Iterable[int]) -> list[tuple[int, int]]:
    """``(PID, BLP)`` pairs covering every lost sequence number (RFC 4585 section 6.2.1).

    Each pair covers PID and the 16 numbers after it. Any order is correct;
    ascending order (wrap-aware) gives the fewest pairs. Duplicates are folded.
    """
    pairs: list[tuple[int, int]] = []
    pid = -1
    blp = 0
    for seq in lost:
        seq &= 0xFFFF
        if pid >= 0:
            d = (seq - pid - 1) & 0xFFFF
            if d < 16:
                blp |= 1 << d
                continue
            if seq == pid:
                continue
            pairs.append((pid, blp))
        pid, blp = seq, 0
    if pid >= 0:
        pairs.append((pid, blp))
    return pairs


def expand_nack(pairs: Iterable[tuple[int, int]]) -> list[int]:
    """Lost sequence numbers named by ``(PID, BLP)`` pairs, in order (RFC 4585 6.2.1)."""
    lost = []
    for pid, blp in pairs:
        lost.append(pid)
        for bit in range(16):
            if blp >> bit & 1:
                lost.append((pid + bit + 1) & 0xFFFF)
    return lost


@dataclass(slots=True)
class Nack(_Rtcp):
    """Generic NACK, a transport-layer feedback message (RFC 4585 section 6.2.1)."""

    sender_ssrc: int
    media_ssrc: int
    pairs: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def from_lost(cls, sender_ssrc: int, media_ssrc: int, lost: Iterable[int]) -> Self:
        """A NACK asking for these sequence numbers."""
        return cls(sender_ssrc, media_ssrc, nack_pairs(lost))

    def lost(self) -> list[int]:
        """Every sequence number this NACK asks for."""
        return expand_nack(self.pairs)

    @classmethod
    def _decode(cls, count: int, body: bytes) -> Self:
        if len(body) < 8 or len(body) % 4:
            raise RtcpParseError("RTCP NACK length is invalid")
        sender, media = _TWO_SSRC.unpack_from(body)
        pairs = [_NACK_ITEM.unpack_from(body, pos) for pos in range(8, len(body), 4)]
        return cls(sender, media, pairs)

    def _encode(self) -> tuple[int, int, bytes]:
        out = _TWO_SSRC.pack(self.sender_ssrc, self.media_ssrc)
        out += b"".join(_NACK_ITEM.pack(pid, blp) for pid, blp in self.pairs)
        return _FMT_NACK, RTPFB, out


# -- payload-specific feedback (RFC 4585 6.3, RFC 5104 4.3, REMB) ---------------------


@dataclass(slots=True)
class Pli(_Rtcp):
    """Picture Loss Indication: the receiver needs a keyframe (RFC 4585 section 6.3.1)."""

    sender_ssrc: int
    media_ssrc: int

    @classmethod
    def _decode(cls, count: int, body: bytes) -> Self:
        if len(body) != 8:
            raise RtcpParseError("RTCP PLI carries no FCI")
        return cls(*_TWO_SSRC.unpack_from(body))

    def _encode(self) -> tuple[int, int, bytes]:
        return _FMT_PLI, PSFB, _TWO_SSRC.pack(self.sender_ssrc, self.media_ssrc)


@dataclass(slots=True)
class Fir(_Rtcp):
    """Full Intra Request (RFC 5104 section 4.3.1): ``(ssrc, command sequence number)`` entries.

    The media source field is unused by FIR (0); it is kept for the round trip.
    """

    sender_ssrc: int
    entries: list[tuple[int, int]] = field(default_factory=list)
    media_ssrc: int = 0

    @classmethod
    def _decode(cls, count: int, body: bytes) -> Self:
        if len(body) < 8 or (len(body) - 8) % 8:
            raise RtcpParseError("RTCP FIR length is invalid")
        sender, media = _TWO_SSRC.unpack_from(body)
        entries = []
        for pos in range(8, len(body), 8):
            ssrc, word = _FIR_ITEM.unpack_from(body, pos)
            entries.append((ssrc, word >> 24))
        return cls(sender, entries, media)

    def _encode(self) -> tuple[int, int, bytes]:
        out = _TWO_SSRC.pack(self.sender_ssrc, self.media_ssrc)
        out += b"".join(_FIR_ITEM.pack(ssrc, (seq & 0xFF) << 24) for ssrc, seq in self.entries)
        return _FMT_FIR, PSFB, out


@dataclass(slots=True)
class Remb(_Rtcp):
    """Receiver Estimated Maximum Bitrate (draft-alvestrand-rmcat-remb-03 section 2.2).

    ``bitrate`` in bits per second is sent as an 18-bit mantissa and a 6-bit
    exponent, so a bitrate with more significant bits is rounded down.
    """

    sender_ssrc: int
    bitrate: int
    ssrcs: list[int] = field(default_factory=list)
    media_ssrc: int = 0

    @classmethod
    def _decode(cls, count: int, body: bytes) -> Self:
        # Caller checked the "REMB" identifier.
        sender, media = _TWO_SSRC.unpack_from(body)
        _, num, exp_hi, mant_lo = _REMB_HEAD.unpack_from(body, 8)
        if len(body) != 16 + 4 * num:
            raise RtcpParseError("RTCP REMB length does not match its SSRC count")
        mantissa = ((exp_hi & 0x03) << 16) | mant_lo
        bitrate = mantissa << (exp_hi >> 2)
        ssrcs = list(struct.unpack_from(f"!{num}I", body, 16))
        return cls(sender, bitrate, ssrcs, media)

    def _encode(self) -> tuple[int, int, bytes]:
        if self.bitrate < 0 or len(self.ssrcs) > 255:
            raise ValueError("REMB needs a bitrate >= 0 and at most 255 SSRCs")
        mantissa, exponent = self.bitrate, 0
        while mantissa > 0x3FFFF:
            mantissa >>= 1
            exponent += 1
        if exponent > 63:
            raise ValueError("REMB bitrate does not fit")
        out = _TWO_SSRC.pack(self.sender_ssrc, self.media_ssrc)
        out += _REMB_HEAD.pack(
            b"REMB", len(self.ssrcs), (exponent << 2) | (mantissa >> 16), mantissa & 0xFFFF
        )
        out += b"".join(_U32.pack(s) for s in self.ssrcs)
        return _FMT_AFB, PSFB, out


# -- transport-wide congestion control feedback --------------------------------------

_TICKS_PER_SECOND = 4000  # receive deltas count 250 us
_TICKS_PER_REFERENCE = 256  # the reference time counts 64 ms
_MAX_RUN = 0x1FFF


@dataclass(slots=True)
class TransportCc(_Rtcp):
    """Transport-wide CC feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01 3.1).

    ``deltas`` has one entry per transport sequence number from
    ``base_sequence`` on: ``None`` for a packet not received, else its receive
    delta in 250 us ticks after the previous received packet (the first one's
    after ``reference_time``). ``reference_time`` is the raw 24-bit field in
    64 ms units; only differences between feedbacks mean anything to a sender.

    The status chunks are chosen deterministically from the statuses (a run
    chunk for a run of one status covering 14 or more packets or all that
    remain, else a 1-bit vector when no large delta is among the next 14, else a
    run chunk for 7 or more, else a 2-bit vector), so our own packets round-trip
    byte for byte; others' may choose differently and still parse to equal values.
    """

    sender_ssrc: int
    media_ssrc: int
    base_sequence: int
    reference_time: int
    fb_count: int
    deltas: list[int | None] = field(default_factory=list)

    @classmethod
    def from_arrivals(
        cls,
        sender_ssrc: int,
        media_ssrc: int,
        arrivals: Iterable[tuple[int, float]],
        fb_count: int,
    ) -> Self:
        """Feedback for ``(transport sequence number, arrival time in seconds)`` pairs.

        The pairs may come in any order and span a wrap of the sequence number
        (they are placed around the first one); numbers between the lowest and
        highest that are missing are reported lost; a duplicate keeps its
        earliest arrival. Times are quantized to 250 us ticks without drift.
        Raises ``ValueError`` for no arrivals, or for two consecutive received
        packets more than 8.19 s apart, which one feedback cannot express: the
        caller sends what it has and starts another.
        """
        items = list(arrivals)
        if not items:
            raise ValueError("transport-cc feedback needs at least one arrival")
        first = items[0][0]
        times: dict[int, float] = {}
        for seq, t in items:
            u = ((seq - first + 0x8000) & 0xFFFF) - 0x8000
            if u not in times or t < times[u]:
                times[u] = t
        lo, hi = min(times), max(times)
        base_ticks = round(times[lo] * _TICKS_PER_SECOND)
        reference = base_ticks // _TICKS_PER_REFERENCE
        prev = reference * _TICKS_PER_REFERENCE
        deltas: list[int | None] = []
        for u in range(lo, hi + 1):
            arrival = times.get(u)
            if arrival is None:
                deltas.append(None)
                continue
            ticks = round(arrival * _TICKS_PER_SECOND)
            d = ticks - prev
            if not -0x8000 <= d <= 0x7FFF:
                raise ValueError("receive delta out of range: split the feedback")
            deltas.append(d)
            prev = ticks
        return cls(
            sender_ssrc,
            media_ssrc,
            (first + lo) & 0xFFFF,
            reference & 0xFFFFFF,
            fb_count & 0xFF,
            deltas,
        )

    def arrivals(self) -> list[tuple[int, float]]:
        """``(transport sequence number, arrival time in seconds)`` of each received packet.

        Times are on the reference time's clock (reference_time * 64 ms), so
        they are comparable within one feedback and across feedbacks until the
        24-bit field wraps (about 12 days).
        """
        ticks = self.reference_time * _TICKS_PER_REFERENCE
        out = []
        for i, d in enumerate(self.deltas):
            if d is None:
                continue
            ticks += d
            out.append(((self.base_sequence + i) & 0xFFFF, ticks / _TICKS_PER_SECOND))
        return out

    def lost(self) -> list[int]:
        """Transport sequence numbers reported not received."""
        return [(self.base_sequence + i) & 0xFFFF for i, d in enumerate(self.deltas) if d is None]

    @classmethod
    def _decode(cls, count: int, body: bytes) -> Self:
        n = len(body)
        if n < 16:
            raise RtcpParseError("RTCP transport-cc feedback is truncated")
        sender, media, base, status_count, ref_fb = _TCC_HEAD.unpack_from(body)
        statuses: list[int] = []
        pos = 16
        while len(statuses) < status_count:
            if pos + 2 > n:
                raise RtcpParseError("RTCP transport-cc status chunks are truncated")
            (chunk,) = _U16.unpack_from(body, pos)
            pos += 2
            left = status_count - len(statuses)
            if not chunk & 0x8000:
                # Run length chunk: T=0, 2-bit symbol, 13-bit run.
                statuses.extend([(chunk >> 13) & 0x3] * min(chunk & _MAX_RUN, left))
            elif not chunk & 0x4000:
                # Status vector of fourteen 1-bit symbols (received with small delta or not).
                statuses.extend([(chunk >> s) & 1 for s in range(13, 13 - min(14, left), -1)])
            else:
                # Status vector of seven 2-bit symbols.
                statuses.extend([(chunk >> s) & 0x3 for s in range(12, 12 - 2 * min(7, left), -2)])
        deltas: list[int | None] = []
        for status in statuses:
            if status == 0:
                deltas.append(None)
            elif status == 1:
                if pos >= n:
                    raise RtcpParseError("RTCP transport-cc receive deltas are truncated")
                deltas.append(body[pos])
                pos += 1
            elif status == 2:
                if pos + 2 > n:
                    raise RtcpParseError("RTCP transport-cc receive deltas are truncated")
                deltas.append(_I16.unpack_from(body, pos)[0])
                pos += 2
            else:
                raise RtcpParseError("RTCP transport-cc uses the reserved status symbol")
        # Senders that do not set the P bit pad with up to three zero bytes.
        if n - pos > 3:
            raise RtcpParseError("RTCP transport-cc has data after its receive deltas")
        return cls(sender, media, base, ref_fb >> 8, ref_fb & 0xFF, deltas)

    def _encode(self) -> tuple[int, int, bytes]:
        statuses = []
        delta_bytes = bytearray()
        for d in self.deltas:
            if d is None:
                statuses.append(0)
            elif 0 <= d <= 0xFF:
                statuses.append(1)
                delta_bytes.append(d)
            elif -0x8000 <= d <= 0x7FFF:
                statuses.append(2)
                delta_bytes += _I16.pack(d)
            else:
                raise ValueError("receive delta out of range")
        if len(statuses) > 0xFFFF:
            raise ValueError("too many packets for one transport-cc feedback")
        out = bytearray(
            _TCC_HEAD.pack(
                self.sender_ssrc,
                self.media_ssrc,
                self.base_sequence,
                len(statuses),
                ((self.reference_time & 0xFFFFFF) << 8) | self.fb_count,
            )
        )
        for chunk in _status_chunks(statuses):
            out += _U16.pack(chunk)
        out += delta_bytes
        return _FMT_TCC, RTPFB, bytes(out)


def _status_chunks(statuses: Sequence[int]) -> Iterable[int]:
    i, n = 0, len(statuses)
    while i < n:
        status = statuses[i]
        run = 1
        while i + run < n and run < _MAX_RUN and statuses[i + run] == status:
            run += 1
        left = n - i
        if run >= 14 or run == left:
            yield (status << 13) | run
            i += run
        elif 2 not in statuses[i : i + 14]:
            vector = statuses[i : i + 14]
            bits = 0
            for s in vector:
                bits = (bits << 1) | s
            yield 0x8000 | (bits << (14 - len(vector)))
            i += 14
        elif run >= 7:
            yield (status << 13) | run
            i += run
        else:
            vector = statuses[i : i + 7]
            bits = 0
            for s in vector:
                bits = (bits << 2) | s
            yield 0xC000 | (bits << (2 * (7 - len(vector))))
            i += 7


# -- opaque packets and the compound ------------------------------------------------


@dataclass(slots=True)
class UnknownRtcp(_Rtcp):
    """Any other RTCP packet (APP, XR, other feedback formats), kept opaque.

    ``payload`` is everything after the 4-byte header, padding included when
    ``padded`` is set, so the packet serializes back byte for byte.
    """

    packet_type: int
    count: int
    payload: bytes = b""
    padded: bool = False

    def __bytes__(self) -> bytes:
        if not 0 <= self.count <= 31 or len(self.payload) % 4:
            raise ValueError("count must fit 5 bits and the payload be whole words")
        b0 = 0x80 | (0x20 if self.padded else 0) | self.count
        return _HEADER.pack(b0, self.packet_type, len(self.payload) // 4) + self.payload


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
    data = bytes(data)
    n = len(data)
    if n == 0:
        raise RtcpParseError("empty RTCP packet")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < n:
        if pos + 4 > n:
            raise RtcpParseError("RTCP header is truncated")
        b0, packet_type, words = _HEADER.unpack_from(data, pos)
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
        packets.append(_decode(b0 & 0x1F, packet_type, body, payload, bool(b0 & 0x20)))
        pos = end
    return packets


def _decode(count: int, packet_type: int, body: bytes, payload: bytes, padded: bool) -> RtcpPacket:
    if packet_type == RTPFB:
        if count == _FMT_NACK:
            return Nack._decode(count, body)
        if count == _FMT_TCC:
            return TransportCc._decode(count, body)
    elif packet_type == PSFB:
        if count == _FMT_PLI:
            return Pli._decode(count, body)
        if count == _FMT_FIR:
            return Fir._decode(count, body)
        if count == _FMT_AFB and len(body) >= 16 and body[8:12] == b"REMB":
            return Remb._decode(count, body)
    elif packet_type == SR:
        return SenderReport._decode(count, body)
    elif packet_type == RR:
        return ReceiverReport._decode(count, body)
    elif packet_type == SDES:
        return SourceDescription._decode(count, body)
    elif packet_type == BYE:
        return Bye._decode(count, body)
    return UnknownRtcp(packet_type, count, payload, padded)


def build_compound(packets: Iterable[RtcpPacket]) -> bytes:
    """One compound RTCP packet from packets, in order (RFC 3550 section 6.1)."""
    return b"".join(bytes(p) for p in packets)
