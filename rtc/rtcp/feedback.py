"""RTCP feedback the SFU speaks (RFC 4585): generic NACK (6.2.1) with
:func:`nack_pairs` and :func:`expand_nack` between lost sequence numbers and
PID+BLP pairs, PLI (6.3.1), FIR (RFC 5104 4.3.1) and REMB
(draft-alvestrand-rmcat-remb-03 2.2). Transport-wide congestion control
feedback is :mod:`rtc.rtcp.transport_cc`.

Each is a :class:`~rtc.rtcp.framing.Framed` dataclass; a REMB mantissa that
is not normalized parses to the same bitrate and is re-encoded canonically.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Self

from rtc.errors import RtcpParseError
from rtc.rtcp.framing import FMT_AFB, FMT_FIR, FMT_NACK, FMT_PLI, PSFB, RTPFB, Framed

__all__ = ["Fir", "Nack", "Pli", "Remb", "expand_nack", "nack_pairs"]

_U32 = struct.Struct("!I")
_TWO_SSRC = struct.Struct("!II")
_NACK_ITEM = struct.Struct("!HH")
_FIR_ITEM = struct.Struct("!II")
_REMB_HEAD = struct.Struct("!4sBBH")


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
class Nack(Framed):
    """Generic NACK, a transport-layer feedback message (RFC 4585 section 6.2.1)."""

    PACKET_TYPE = RTPFB
    FMT = FMT_NACK

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
    def decode(cls, count: int, body: bytes) -> Self:
        if len(body) < 8 or len(body) % 4:
            raise RtcpParseError("RTCP NACK length is invalid")
        sender, media = _TWO_SSRC.unpack_from(body)
        pairs = [_NACK_ITEM.unpack_from(body, pos) for pos in range(8, len(body), 4)]
        return cls(sender, media, pairs)

    def _encode(self) -> tuple[int, int, bytes]:
        out = _TWO_SSRC.pack(self.sender_ssrc, self.media_ssrc)
        out += b"".join(_NACK_ITEM.pack(pid, blp) for pid, blp in self.pairs)
        return FMT_NACK, RTPFB, out


# -- payload-specific feedback (RFC 4585 6.3, RFC 5104 4.3, REMB) ---------------------


@dataclass(slots=True)
class Pli(Framed):
    """Picture Loss Indication: the receiver needs a keyframe (RFC 4585 section 6.3.1)."""

    PACKET_TYPE = PSFB
    FMT = FMT_PLI

    sender_ssrc: int
    media_ssrc: int

    @classmethod
    def decode(cls, count: int, body: bytes) -> Self:
        if len(body) != 8:
            raise RtcpParseError("RTCP PLI carries no FCI")
        return cls(*_TWO_SSRC.unpack_from(body))

    def _encode(self) -> tuple[int, int, bytes]:
        return FMT_PLI, PSFB, _TWO_SSRC.pack(self.sender_ssrc, self.media_ssrc)


@dataclass(slots=True)
class Fir(Framed):
    """Full Intra Request (RFC 5104 section 4.3.1): ``(ssrc, command sequence number)`` entries.

    The media source field is unused by FIR (0); it is kept for the round trip.
    """

    PACKET_TYPE = PSFB
    FMT = FMT_FIR

    sender_ssrc: int
    entries: list[tuple[int, int]] = field(default_factory=list)
    media_ssrc: int = 0

    @classmethod
    def decode(cls, count: int, body: bytes) -> Self:
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
        return FMT_FIR, PSFB, out


@dataclass(slots=True)
class Remb(Framed):
    """Receiver Estimated Maximum Bitrate (draft-alvestrand-rmcat-remb-03 section 2.2).

    ``bitrate`` in bits per second is sent as an 18-bit mantissa and a 6-bit
    exponent, so a bitrate with more significant bits is rounded down.
    """

    PACKET_TYPE = PSFB
    FMT = FMT_AFB

    sender_ssrc: int
    bitrate: int
    ssrcs: list[int] = field(default_factory=list)
    media_ssrc: int = 0

    @classmethod
    def carries(cls, count: int, packet_type: int, body: bytes) -> bool:
        """Application layer feedback (RFC 4585 section 6.4) that says "REMB"."""
        return (
            packet_type == PSFB and count == FMT_AFB and len(body) >= 16 and body[8:12] == b"REMB"
        )

    @classmethod
    def decode(cls, count: int, body: bytes) -> Self:
        # Caller checked the "REMB" identifier (carries, or parse_compound's dispatch).
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
        return FMT_AFB, PSFB, out
