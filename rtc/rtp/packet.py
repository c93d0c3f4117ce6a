"""One RTP packet as a value (RFC 3550 section 5.1, RFC 8285): a dataclass
with ``parse``/``__bytes__`` for tests, tools and the rare packet we build
ourselves; never for forwarding, which works in place
(:mod:`rtc.rtp.header`, :mod:`rtc.rtp.extensions`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Self

from rtc.rtp.extensions import EXTENSION_HEADER, build_extensions, parse_extensions
from rtc.rtp.header import FIXED_HEADER, HEADER_SIZE, Buffer, payload_range

__all__ = ["RtpPacket"]

_U16 = struct.Struct("!H")
_CSRC = struct.Struct("!I")


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet as a value (RFC 3550 section 5.1); not for the forwarding path.

    The extension block is kept raw (``extension_profile`` is ``None`` without
    one) and the padding too (its last byte is its own length), so that a parsed
    packet serializes back to the very same bytes.
    """

    payload_type: int = 0
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    marker: bool = False
    csrc: list[int] = field(default_factory=list)
    extension_profile: int | None = None
    extension_body: bytes = b""
    payload: bytes = b""
    padding: bytes = b""

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse one packet; raises :class:`RtpParseError` on any malformation.

        That includes RFC 8285 elements that overrun their block, which the
        forwarding path only notices when it looks for an extension.
        """
        start, end = payload_range(data)
        b0, b1, seq, ts, ssrc_ = FIXED_HEADER.unpack_from(data)
        cc = b0 & 0x0F
        csrc = [int(_CSRC.unpack_from(data, HEADER_SIZE + 4 * i)[0]) for i in range(cc)]
        profile: int | None = None
        body = b""
        if b0 & 0x10:
            pos = HEADER_SIZE + 4 * cc
            profile = int(_U16.unpack_from(data, pos)[0])
            body = bytes(data[pos + 4 : start])
            parse_extensions(profile, body)  # malformed RFC 8285 elements are a parse error
        return cls(
            payload_type=b1 & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc_,
            marker=bool(b1 & 0x80),
            csrc=csrc,
            extension_profile=profile,
            extension_body=body,
            payload=bytes(data[start:end]),
            padding=bytes(data[end:]),
        )

    def __bytes__(self) -> bytes:
        if len(self.csrc) > 15:
            raise ValueError("an RTP packet carries at most 15 CSRCs")
        if len(self.extension_body) % 4:
            raise ValueError("the extension body must be a multiple of 4 bytes")
        if self.padding and self.padding[-1] != len(self.padding):
            raise ValueError("the padding's last byte must be its length")
        has_ext = self.extension_profile is not None
        out = bytearray(
            FIXED_HEADER.pack(
                0x80 | (0x20 if self.padding else 0) | (0x10 if has_ext else 0) | len(self.csrc),
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            )
        )
        for c in self.csrc:
            out += _CSRC.pack(c)
        if self.extension_profile is not None:
            out += EXTENSION_HEADER.pack(self.extension_profile, len(self.extension_body) // 4)
            out += self.extension_body
        out += self.payload
        out += self.padding
        return bytes(out)

    @property
    def extensions(self) -> list[tuple[int, bytes]]:
        """The RFC 8285 elements of the extension block, in order."""
        if self.extension_profile is None:
            return []
        return parse_extensions(self.extension_profile, self.extension_body)

    def set_extensions(
        self, elements: list[tuple[int, bytes]], *, two_byte: bool | None = None
    ) -> None:
        """Replace the extension block by these RFC 8285 elements (none removes it)."""
        if not elements:
            self.extension_profile, self.extension_body = None, b""
            return
        self.extension_profile, self.extension_body = build_extensions(elements, two_byte=two_byte)
