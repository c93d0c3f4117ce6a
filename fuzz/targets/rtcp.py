"""RTCP compound packets (RFC 3550 section 6, RFC 4585 feedback, transport-cc) from SRTCP.

:func:`parse_compound` is what the worker and the cascade links call on
every decrypted RTCP datagram; it must refuse junk with
:class:`RtcpParseError` only. What it accepts must serialise, parse back to
the same packets, and answer the accessors the worker reads (NACK's lost
sequence numbers, FIR entries, transport-cc arrivals, SDES CNAME).
"""

from __future__ import annotations

from fuzz import Finding
from rtc import rtcp
from rtc.errors import RtcpParseError


def check(data: bytes) -> None:
    try:
        packets = rtcp.parse_compound(data)
    except RtcpParseError:
        return
    for packet in packets:
        if isinstance(packet, rtcp.Nack | rtcp.TransportCc):
            packet.lost()
        if isinstance(packet, rtcp.TransportCc):
            packet.arrivals()
        elif isinstance(packet, rtcp.SourceDescription):
            for chunk in packet.chunks:
                chunk.cname  # noqa: B018 - the property decodes the item
    rebuilt = rtcp.build_compound(packets)
    if rtcp.parse_compound(rebuilt) != packets:
        raise Finding("a compound RTCP packet does not parse back from its own bytes")
