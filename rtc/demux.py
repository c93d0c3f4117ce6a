"""Demultiplexing of one UDP socket's datagrams (RFC 7983 section 7, RFC 5761 section 4).

One socket carries STUN (ICE checks), DTLS (the handshake), SRTP and SRTCP
(rtcp-mux), and possibly ZRTP and TURN ChannelData. The first byte tells them
apart; within the RTP range the second byte tells RTP from RTCP.

This runs once per datagram on the forwarding path, so it is plain functions
returning plain ints from a precomputed table: no object per packet, no enum
lookup. :class:`Kind` names the same values for logs and metric labels.
"""

from __future__ import annotations

import enum

__all__ = [
    "DTLS",
    "RTCP",
    "RTP",
    "STUN",
    "TURN_CHANNEL",
    "UNKNOWN",
    "ZRTP",
    "Kind",
    "classify",
    "is_dtls",
    "is_rtcp",
    "is_rtp",
    "is_rtp_or_rtcp",
    "is_stun",
]


class Kind(enum.IntEnum):
    """What a datagram is; the module-level ints below are the same values."""

    UNKNOWN = 0
    STUN = 1
    ZRTP = 2
    DTLS = 3
    TURN_CHANNEL = 4
    RTP = 5
    RTCP = 6


# Plain ints so the hot path compares small ints, not enum members.
UNKNOWN, STUN, ZRTP, DTLS, TURN_CHANNEL, RTP, RTCP = (int(kind) for kind in Kind)


def _first_byte_table() -> tuple[int, ...]:
    # RFC 7983 section 7: the ranges below; everything else is to be dropped.
    table = [UNKNOWN] * 256
    for b in range(256):
        if b <= 3:
            table[b] = STUN
        elif 16 <= b <= 19:
            table[b] = ZRTP
        elif 20 <= b <= 63:
            table[b] = DTLS
        elif 64 <= b <= 79:
            table[b] = TURN_CHANNEL
        elif 128 <= b <= 191:
            table[b] = RTP  # RTP or RTCP: the second byte decides
    return tuple(table)


_FIRST = _first_byte_table()


def classify(data: bytes | bytearray | memoryview) -> int:
    """Kind of one datagram per RFC 7983 section 7, RTP vs RTCP per RFC 5761 section 4.

    Returns one of the module's ints (:data:`STUN`, :data:`DTLS`, :data:`RTP`,
    :data:`RTCP`, ...); :data:`UNKNOWN` for an empty datagram, a first byte
    outside every range, or an RTP-range datagram too short to carry a second
    byte. It looks at no more than two bytes: the protocol's own parser
    validates the rest.
    """
    if not data:
        return UNKNOWN
    kind = _FIRST[data[0]]
    if kind == RTP:
        if len(data) < 2:
            return UNKNOWN
        # RFC 5761 section 4: RTCP packet types 192-223 appear in the RTP
        # marker+payload-type byte as M=1 and PT 64-95, which rtcp-mux forbids
        # as RTP payload types, so the byte alone decides.
        if 192 <= data[1] <= 223:
            return RTCP
    return kind


def is_stun(data: bytes | bytearray | memoryview) -> bool:
    """First byte 0-3: STUN (RFC 7983 section 7)."""
    return bool(data) and data[0] <= 3


def is_dtls(data: bytes | bytearray | memoryview) -> bool:
    """First byte 20-63: DTLS (RFC 7983 section 7)."""
    return bool(data) and 20 <= data[0] <= 63


def is_rtp_or_rtcp(data: bytes | bytearray | memoryview) -> bool:
    """First byte 128-191 and a second byte present: RTP or RTCP (RFC 7983 section 7)."""
    return len(data) >= 2 and 128 <= data[0] <= 191


def is_rtcp(data: bytes | bytearray | memoryview) -> bool:
    """RTCP multiplexed with RTP: packet type 192-223 (RFC 5761 section 4)."""
    return len(data) >= 2 and 128 <= data[0] <= 191 and 192 <= data[1] <= 223


def is_rtp(data: bytes | bytearray | memoryview) -> bool:
    """RTP multiplexed with RTCP: not an RTCP packet type (RFC 5761 section 4)."""
    return len(data) >= 2 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223
