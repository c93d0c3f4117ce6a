"""RTP (RFC 3550 section 5.1, RFC 8285 extensions, RFC 4588 RTX, RFC 2198 RED).

The value codec and the in-place helpers the forwarding path runs on every
datagram read the same bytes; both must answer junk with
:class:`RtpParseError` only, and a packet the codec accepts must serialise
back to the very same bytes.
"""

from __future__ import annotations

import contextlib

from fuzz import Finding
from rtc import red
from rtc.errors import RtpParseError
from rtc.rtp import extensions, header
from rtc.rtp.packet import RtpPacket

# Extension ids a publisher's SDP can map (RFC 8285: 1-14 one-byte, up to 255 two-byte).
_IDS = (1, 2, 3, 4, 5, 14, 15, 200)


def _helpers(data: bytes) -> None:
    for reader in (
        header.header_length,
        header.padding_length,
        header.header_fields,
        extensions.extension_block,
    ):
        with contextlib.suppress(RtpParseError):
            reader(data)
    for ext_id in _IDS:
        for read in (
            extensions.get_extension,
            extensions.transport_sequence_number,
            extensions.abs_send_time,
            extensions.audio_level,
        ):
            with contextlib.suppress(RtpParseError):
                read(data, ext_id)
    buf = bytearray(data)
    try:
        extensions.set_transport_sequence_number(buf, 3, 0xBEEF)
        extensions.set_abs_send_time(buf, 2, 0x123456)
        extensions.set_audio_level(buf, 1, True, 127)
    except RtpParseError:
        pass
    if len(buf) != len(data):
        raise Finding("an in-place rewrite changed the packet's length")


def check(data: bytes) -> None:
    _helpers(data)
    try:
        start, end = header.payload_range(data)
    except RtpParseError:
        try:
            RtpPacket.parse(data)
        except RtpParseError:
            return
        raise Finding("RtpPacket.parse accepted what payload_range refused") from None
    if not 0 < start <= end <= len(data):
        raise Finding(f"payload range {start}..{end} outside {len(data)} bytes")
    # The forwarding path's reader of the elements, for a packet whose header
    # is whole (payload_range here, libsrtp's header checks in the worker).
    with contextlib.suppress(RtpParseError):
        two_byte, block_start, block_end, elements = extensions.extension_elements(data)
        for offset, _xid, length in elements:
            value = offset + (2 if two_byte else 1)
            if not block_start <= offset < value + length <= block_end <= start:
                raise Finding("an extension element reaches outside its block")
    try:
        packet = RtpPacket.parse(data)
    except RtpParseError:
        packet = None  # the codec also refuses elements that overrun their block
    if packet is not None:
        if bytes(packet) != data:
            raise Finding("RtpPacket does not serialise back to the bytes it parsed")
        if packet.payload != data[start:end]:
            raise Finding("RtpPacket's payload is not payload_range's")
    original = header.rtx_original(data, 96, 0x1234)
    if original is not None:
        header.payload_range(original)
    found = red.primary(data, start, end)
    try:
        block = red.RedPayload.parse(data[start:end])
    except RtpParseError:
        if found >= 0:
            raise Finding("RedPayload refused what primary() found") from None
        return
    if found < 0:
        raise Finding("RedPayload accepted what primary() refused")
    if bytes(block) != data[start:end]:
        raise Finding("RedPayload does not serialise back to the bytes it parsed")
