"""The phone side's codecs: G.711 (PCMU, PCMA) and G.722, one 20 ms frame at a time.

What the bridge speaks is one table, :data:`sip.formats.PHONE_CODECS`.

Per leg, :func:`transcoder` gives the object that decodes the phone's
payloads to PCM and encodes the room's mix for the phone:

* G.711 (ITU-T G.711, RFC 3551 sections 4.5.14 and 4.5.15) is stateless
  companding, so it is a table lookup in numpy: 256 entries to decode, one
  per 16-bit input to encode. Measured (``benchmarks/sip/run.py``) it takes
  about 1.3 us a 20 ms frame each way, a PyAV codec context 4 to 5 us (its
  cost is the frame and packet objects, not the arithmetic), and it needs
  no PyAV. Its encoder chooses, as FFmpeg's does, the output level
  nearest the input judged on the input's top 14 bits (G.711's decision
  values lie halfway between output values), so the bytes equal FFmpeg's
  ``pcm_mulaw``/``pcm_alaw`` for every input; tests hold it to that.
* G.722 (ITU-T G.722) is sub-band ADPCM: encoder and decoder each carry
  predictor state from one frame to the next, so a leg keeps one PyAV
  (FFmpeg ``g722``) context open each way for the whole call. PyAV is
  imported when the first G.722 leg opens, so the server's modules import
  without it.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from sip.audio.pcm import Pcm, check_pcm
from sip.formats import G722, PCMA, PCMU, PhoneCodec

__all__ = [
    "G711Transcoder",
    "G722Transcoder",
    "Transcoder",
    "transcoder",
]


class Transcoder(Protocol):
    """One leg's codec state: the phone's payloads in, the room's mix out."""

    @property
    def codec(self) -> PhoneCodec: ...

    def decode(self, payload: bytes) -> Pcm:
        """The PCM (int16 mono at ``codec.sample_rate``) of one RTP payload."""
        ...

    def encode(self, pcm: Pcm) -> bytes:
        """The RTP payload of ``pcm`` (int16 mono at ``codec.sample_rate``)."""
        ...


# --- G.711 ---------------------------------------------------------------------
#
# Decoding follows G.711's tables 1a and 2a: a code is a sign, a 3-bit
# segment (exponent) and a 4-bit step inside it. mu-law sends every bit
# inverted, A-law its even bits (XOR 0x55, which leaves the sign bit alone);
# either way the bytes 0x80-0xFF on the wire are the positive half.


def _mulaw_levels() -> npt.NDArray[np.int16]:
    code = ~np.arange(256) & 0xFF
    segment = (code >> 4) & 0x7
    step = code & 0xF
    # Bias 0x84 (132) makes each segment's levels a shifted copy of the first.
    magnitude = (((step << 3) + 0x84) << segment) - 0x84
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_levels() -> npt.NDArray[np.int16]:
    code = np.arange(256) ^ 0x55
    segment = (code >> 4) & 0x7
    step = code & 0xF
    # Segment 0 and 1 share a step size; later segments double it each time.
    magnitude = np.where(
        segment == 0,
        (step << 4) + 8,
        ((step << 4) + 0x108) << np.maximum(segment - 1, 0),
    )
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


def _nearest_level_encoder(levels: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """For every int16 input (indexed by its bits as uint16), the code whose
    level is nearest. Inputs are judged on their top 14 bits (``x >> 2``) and
    each half's thresholds sit halfway between neighbouring levels, rounded
    to that grid: G.711's decision values, and FFmpeg's choice bit for bit."""
    inputs = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16)
    coarse = inputs.astype(np.int32) >> 2
    table = np.empty(65536, dtype=np.uint8)
    codes = np.arange(256)
    for positive in (True, False):
        half = codes[codes >= 0x80] if positive else codes[codes < 0x80]
        magnitudes = np.abs(levels[half].astype(np.int32))
        order = np.argsort(magnitudes, kind="stable")
        half, magnitudes = half[order], magnitudes[order]
        thresholds = (magnitudes[:-1] + magnitudes[1:] + 4) >> 3
        chosen = coarse >= 0 if positive else coarse < 0
        index = np.searchsorted(thresholds, np.abs(coarse[chosen]), side="right")
        table[chosen] = half[index]
    return table


_MULAW_DECODE = _mulaw_levels()
_ALAW_DECODE = _alaw_levels()
_MULAW_ENCODE = _nearest_level_encoder(_MULAW_DECODE)
_ALAW_ENCODE = _nearest_level_encoder(_ALAW_DECODE)


class G711Transcoder:
    """G.711 mu-law (PCMU) or A-law (PCMA): one byte per sample, no state."""

    __slots__ = ("_decode", "_encode", "codec")

    def __init__(self, codec: PhoneCodec) -> None:
        if codec not in (PCMU, PCMA):
            raise ValueError(f"{codec.name} is not G.711")
        self.codec = codec
        self._decode = _MULAW_DECODE if codec is PCMU else _ALAW_DECODE
        self._encode = _MULAW_ENCODE if codec is PCMU else _ALAW_ENCODE

    def decode(self, payload: bytes) -> Pcm:
        return self._decode[np.frombuffer(payload, dtype=np.uint8)]

    def encode(self, pcm: Pcm) -> bytes:
        return self._encode[check_pcm(pcm).view(np.uint16)].tobytes()


# --- G.722 ---------------------------------------------------------------------


class G722Transcoder:
    """G.722 at 64 kbit/s (mode 1) through FFmpeg's codec, one encoder and
    one decoder kept open per leg: ADPCM predicts each sample from the ones
    before, so a context per frame would restart the predictor (a click and
    a burst of noise every 20 ms).

    ``encode`` takes an even number of samples (G.722 codes two 16 kHz
    samples, one per sub-band, into each byte)."""

    __slots__ = ("_decoder", "_encoder", "_pts", "codec")

    def __init__(self) -> None:
        import av  # only a G.722 leg needs PyAV; the server's modules import without it

        self.codec = G722
        self._encoder: Any = av.CodecContext.create("g722", "w")
        self._encoder.sample_rate = G722.sample_rate
        self._encoder.layout = "mono"
        self._encoder.format = "s16"
        self._decoder: Any = av.CodecContext.create("g722", "r")
        self._decoder.sample_rate = G722.sample_rate
        self._decoder.layout = "mono"
        self._pts = 0

    def decode(self, payload: bytes) -> Pcm:
        import av

        if not payload:
            return np.zeros(0, dtype=np.int16)
        frames = self._decoder.decode(av.Packet(payload))
        parts: list[Pcm] = [frame.to_ndarray().reshape(-1) for frame in frames]
        return parts[0] if len(parts) == 1 else np.concatenate(parts).astype(np.int16)

    def encode(self, pcm: Pcm) -> bytes:
        import av

        pcm = check_pcm(pcm, multiple=2)
        if not pcm.shape[0]:
            return b""
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = G722.sample_rate
        frame.pts = self._pts
        self._pts += pcm.shape[0]
        return b"".join(bytes(packet) for packet in self._encoder.encode(frame))


def transcoder(codec: PhoneCodec) -> Transcoder:
    """A new leg's codec state for ``codec`` (one of :data:`PHONE_CODECS`)."""
    if codec == G722:
        return G722Transcoder()
    return G711Transcoder(codec)
