"""One RTP packet's header, read once where the packet arrives (RFC 3550 5.1, RFC 8285).

A forwarding path asks the same questions of every packet in several places:
the receive statistics want its sequence number and timestamp, the
transport-wide feedback and the active-speaker check want one extension
element each, the forwarder wants all of it, its RTX repair wants the
packet inside, and the native fan-out wants the offsets it writes at.
:class:`RtpView` answers them from one parse: the worker fills one view per
arriving packet (the same object every time, so there is no object per
packet beyond the element list) and hands it on; nobody reads the header
again.

The fields are plain ints, a bool and a list, so a C leaf reads them as
they are (``sfu/forward/_fanout.c`` takes the view itself). The layout of
the fixed header is :data:`rtc.rtp.header.FIXED_HEADER`'s; the extension
elements are :func:`rtc.rtp.extensions.extension_elements`'.
"""

from __future__ import annotations

from rtc.errors import RtpParseError
from rtc.rtp.extensions import extension_elements
from rtc.rtp.header import FIXED_HEADER, HEADER_REWRITE, HEADER_SIZE

__all__ = ["RtpView"]

_NO_ELEMENTS: list[tuple[int, int, int]] = []


class RtpView:
    """The parsed header of the packet last given to :meth:`parse`.

    ``packet`` is the packet itself (its bytes are never copied), ``size``
    its length; ``b0`` and ``b1`` its first two octets (V/P/X/CC and M/PT),
    ``payload_type``, ``seq``, ``timestamp`` and ``ssrc`` the fixed header's
    fields; ``start`` and ``end`` where the payload is (after the CSRCs and
    the extension block, before the padding); ``ext_start`` and ``ext_end``
    the RFC 8285 extension block's body (both 0 without one, or for a
    profile RFC 8285 does not define); ``two_byte`` its form; ``elements``
    its elements as ``(element_offset, id, value_length)``, the value 1 (one-
    byte form) or 2 (two-byte form) octets after the element's offset.
    """

    __slots__ = (
        "b0",
        "b1",
        "elements",
        "end",
        "ext_end",
        "ext_start",
        "packet",
        "payload_type",
        "seq",
        "size",
        "ssrc",
        "start",
        "timestamp",
        "two_byte",
    )

    def __init__(self) -> None:
        self.packet = b""
        self.size = 0
        self.b0 = self.b1 = self.payload_type = 0
        self.seq = self.timestamp = self.ssrc = 0
        self.start = self.end = self.ext_start = self.ext_end = 0
        self.two_byte = False
        self.elements = _NO_ELEMENTS

    def parse(self, packet: bytes) -> None:
        """Read ``packet``'s header into the view (RFC 3550 5.1, 5.3.1; RFC 8285 4).

        Raises :class:`RtpParseError` unless it is a whole RTP version 2
        packet: the header, its extension block and its padding inside it.
        The fixed header's fields are read first, so after an error they
        still say what the packet claimed (when it has 12 octets).
        """
        n = len(packet)
        if n < HEADER_SIZE:
            raise RtpParseError("RTP packet shorter than the fixed header")
        b0, b1, seq, ts, ssrc = FIXED_HEADER.unpack_from(packet)
        self.packet = packet
        self.size = n
        self.b0 = b0
        self.b1 = b1
        self.payload_type = b1 & 0x7F
        self.seq = seq
        self.timestamp = ts
        self.ssrc = ssrc
        if b0 & 0xC0 != 0x80:
            raise RtpParseError("RTP version is not 2")
        pos = HEADER_SIZE + (b0 & 0x0F) * 4
        if b0 & 0x10:
            if n < pos + 4:
                raise RtpParseError("RTP header extension is truncated")
            pos += 4 + ((packet[pos + 2] << 8) | packet[pos + 3]) * 4
            if n < pos:
                raise RtpParseError("RTP header extension is truncated")
            self.two_byte, self.ext_start, self.ext_end, self.elements = extension_elements(packet)
        else:
            if n < pos:
                raise RtpParseError("RTP header is truncated")
            self.two_byte = False
            self.ext_start = self.ext_end = 0
            self.elements = _NO_ELEMENTS
        end = n
        if b0 & 0x20:
            pad = packet[-1]
            if pad == 0 or pos + pad > n:
                raise RtpParseError("RTP padding length is invalid")
            end -= pad
        self.start = pos
        self.end = end

    def extension(self, ext_id: int) -> tuple[int, int]:
        """``(offset, length)`` in the packet of element ``ext_id``'s value, the
        first with that id (RFC 8285); ``(-1, 0)`` when there is none."""
        for hdr, xid, length in self.elements:
            if xid == ext_id:
                return hdr + (2 if self.two_byte else 1), length
        return -1, 0

    def unwrap_rtx(self, payload_type: int, ssrc: int) -> bool:
        """Make the view the original packet inside this RTX packet (RFC 4588
        section 4): the RTX header with the original sequence number (the
        payload's first two octets), ``payload_type`` and ``ssrc`` of the
        stream it repairs, the rest of the payload, no padding. Nothing is
        parsed again: the header keeps its length, so the offsets stand.
        False, and the view unchanged, for an RTX packet without a payload
        (a bandwidth probe, no repair)."""
        packet, start, end = self.packet, self.start, self.end
        if end - start < 2:
            return False
        osn = (packet[start] << 8) | packet[start + 1]
        buf = bytearray(packet[:start])
        buf += packet[start + 2 : end]
        buf[0] &= 0xDF  # the RTX padding is not the original's
        b1 = (self.b1 & 0x80) | payload_type
        HEADER_REWRITE.pack_into(buf, 1, b1, osn, self.timestamp, ssrc)
        self.packet = bytes(buf)
        self.size = self.end = len(buf)
        self.b0 = buf[0]
        self.b1 = b1
        self.payload_type = payload_type
        self.seq = osn
        self.ssrc = ssrc
        return True

    def replace_payload(self, packet: bytes) -> None:
        """The view of ``packet``: this packet's header (its length and
        elements unchanged) followed by another payload, no padding (a RED
        packet given deeper redundancy, RFC 2198)."""
        self.packet = packet
        self.size = self.end = len(packet)
        self.b0 = packet[0]
