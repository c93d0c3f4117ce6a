"""RTCP compound packets (RFC 3550 section 6, RFC 4585 feedback, transport-cc) from SRTCP.

:func:`parse_compound` is what the worker and the cascade links call on
every decrypted RTCP datagram; it must refuse junk with
:class:`RtcpParseError` only. What it accepts must serialise, parse back to
the same packets, and answer the accessors the worker reads (NACK's lost
sequence numbers, FIR entries, transport-cc arrivals, SDES CNAME).
"""

from __future__ import annotations

from fuzz import Finding
from rtc.errors import RtcpParseError
from rtc.rtcp import compound, feedback, reports, transport_cc


def check(data: bytes) -> None:
    try:
        packets = compound.parse_compound(data)
    except RtcpParseError:
        return
    for packet in packets:
        if isinstance(packet, feedback.Nack | transport_cc.TransportCc):
            packet.lost()
        if isinstance(packet, transport_cc.TransportCc):
            packet.arrivals()
        elif isinstance(packet, reports.SourceDescription):
            for chunk in packet.chunks:
                chunk.cname  # noqa: B018 - the property decodes the item
    rebuilt = compound.build_compound(packets)
    if compound.parse_compound(rebuilt) != packets:
        raise Finding("a compound RTCP packet does not parse back from its own bytes")
