"""The phone side's media formats: what the bridge speaks, in one table.

The static payload types of RFC 3551 section 6 (table 4) the bridge offers
and answers with (:mod:`sip.wire.sdp`) and transcodes (:mod:`sip.audio`),
best first: G.722's wideband, then G.711 µ-law and A-law. Every one of
them carries 160 bytes per 20 ms frame on an 8000 Hz RTP clock; G.722
samples at 16 kHz all the same (RFC 3551 section 4.5.2 keeps its clock at
8000 "for historical reasons", so its RTP timestamp advances 160 per frame
while the frame holds 320 samples). One frame is 20 ms everywhere: the
packetisation phones and trunks use by default (RFC 3551 section 4.2) and
the ``ptime`` the bridge answers with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "FRAME_MS",
    "G722",
    "PCMA",
    "PCMU",
    "PHONE_CODECS",
    "PhoneCodec",
    "codec_for_payload_type",
    "frame_samples",
]

FRAME_MS = 20


def frame_samples(rate: int) -> int:
    """Samples in one 20 ms frame at ``rate`` Hz."""
    return rate * FRAME_MS // 1000


@dataclass(frozen=True, slots=True)
class PhoneCodec:
    """One codec the bridge speaks on the phone side (RFC 3551 table 4).

    ``name`` is the encoding name of SDP's ``a=rtpmap`` (RFC 4566 section
    6), ``clock_rate`` the RTP timestamp rate, ``sample_rate`` what its
    PCM is sampled at (they differ only for G.722)."""

    name: str
    payload_type: int
    clock_rate: int
    sample_rate: int

    @property
    def frame_samples(self) -> int:
        """PCM samples in one 20 ms frame at :attr:`sample_rate`."""
        return frame_samples(self.sample_rate)

    @property
    def frame_ticks(self) -> int:
        """RTP timestamp units one 20 ms frame spans (RFC 3550 section 5.1)."""
        return self.clock_rate * FRAME_MS // 1000

    @property
    def frame_bytes(self) -> int:
        """Payload bytes of one 20 ms frame: 64 kbit/s for all three."""
        return 64_000 // 8 * FRAME_MS // 1000


PCMU = PhoneCodec("PCMU", 0, 8000, 8000)
PCMA = PhoneCodec("PCMA", 8, 8000, 8000)
G722 = PhoneCodec("G722", 9, 8000, 16000)

#: Encoding name -> codec, in the order the bridge prefers them in an
#: answer: G.722's wideband first when the phone offers it.
PHONE_CODECS: Mapping[str, PhoneCodec] = MappingProxyType(
    {codec.name: codec for codec in (G722, PCMU, PCMA)}
)

_BY_PAYLOAD_TYPE = {codec.payload_type: codec for codec in PHONE_CODECS.values()}


def codec_for_payload_type(payload_type: int) -> PhoneCodec | None:
    """The codec of a static payload type (RFC 3551 table 4), ``None`` for
    one the bridge does not speak (a dynamic one needs the SDP's rtpmap)."""
    return _BY_PAYLOAD_TYPE.get(payload_type)
