"""From the room's 48 kHz down to a phone codec's rate (8 or 16 kHz), frame by frame.

The room's mix is 48 kHz (Opus decodes to it); the phone hears 8 kHz
(G.711) or 16 kHz (G.722). The other way needs no resampling: the phone's
voice goes to the room at its own rate, which Opus encodes directly
(RFC 6716 section 2: 8 and 16 kHz are input rates of its own).

Both ratios are whole numbers (6 and 3), so a decimating FIR filter does it
exactly: no fractional phase to track, and always exactly one 20 ms frame
out for each 20 ms frame in, from the very first (the filter's history
starts as silence). ``av.AudioResampler`` was measured too: it is no quicker
per frame and hands out frames of varying length while it primes, which the
leg's fixed frames would have to absorb.

The filter is a Kaiser-windowed sinc (beta 5.65, about 60 dB of stopband)
of 32 taps per low-rate sample, cut off at 92 % of the low rate's Nyquist
frequency: flat to 3.4 kHz at 8 kHz (the telephone band, ITU-T G.711's
300-3400 Hz) and to 6.5 kHz at 16 kHz (G.722's 50-7000 Hz), 60 dB down by
4.2 and 8.4 kHz so little folds back. Its history carries across frames, so
frame edges make no click. The price is delay: a linear phase filter of N
taps delays by (N - 1) / 2 samples at 48 kHz, 16 samples at the low rate,
which is :attr:`Downsampler.delay` (2 ms for 8 kHz, 1 ms for 16 kHz) and
counts toward the bridge's added delay.

Only the kept outputs are computed: 160 windows of 193 samples a frame at
8 kHz. The windows are one strided view of a buffer made once, into which
each frame is copied behind the history it needs, so a frame costs a copy
and one matrix-vector product (about 8 µs; building the view per frame cost
as much again as the arithmetic).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from sip.audio.pcm import ROOM_FRAME, ROOM_RATE, Pcm, check_pcm

__all__ = ["Downsampler"]

_TAPS_PER_PHASE = 32
_CUTOFF = 0.92
_KAISER_BETA = 5.65


def _lowpass(ratio: int) -> npt.NDArray[np.float64]:
    """The anti-aliasing filter at 48 kHz, unit DC gain. An odd number of
    taps, ``ratio * 32 + 1``, so that its delay is a whole number of samples
    at the low rate too (16)."""
    taps = ratio * _TAPS_PER_PHASE + 1
    n = np.arange(taps) - (taps - 1) / 2
    cutoff = _CUTOFF * 0.5 / ratio  # cycles per 48 kHz sample
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, _KAISER_BETA)
    unit: npt.NDArray[np.float64] = h / h.sum()
    return unit


class Downsampler:
    """One leg's way from the room to the phone: 48 kHz to ``to_rate``, a
    rate that divides it (8000, 16000). Each call of :meth:`resample` takes
    one 20 ms frame and gives one 20 ms frame."""

    __slots__ = ("_buffer", "_history", "_kernel", "_ratio", "_windows", "to_rate")

    def __init__(self, to_rate: int) -> None:
        if to_rate <= 0 or to_rate >= ROOM_RATE or ROOM_RATE % to_rate:
            raise ValueError(f"cannot resample {ROOM_RATE} Hz to {to_rate} Hz")
        self.to_rate = to_rate
        self._ratio = ROOM_RATE // to_rate
        # Reversed taps against windows of the input, every ratio-th kept.
        self._kernel = _lowpass(self._ratio)[::-1].astype(np.float32)
        self._history = self._kernel.shape[0] - 1
        self._buffer = np.zeros(self._history + ROOM_FRAME, dtype=np.float32)
        self._windows = sliding_window_view(self._buffer, self._kernel.shape[0])[:: self._ratio]

    @property
    def delay(self) -> float:
        """The filter's group delay in seconds: what this direction adds."""
        return self._ratio * _TAPS_PER_PHASE / 2 / ROOM_RATE

    def resample(self, pcm: Pcm) -> Pcm:
        """The next 20 ms frame at ``to_rate`` from the next 20 ms frame at
        48 kHz; frames must come in order, with none left out."""
        check_pcm(pcm, samples=ROOM_FRAME)
        buffer, keep = self._buffer, self._history
        buffer[:keep] = buffer[-keep:]
        buffer[keep:] = pcm
        out: npt.NDArray[np.float32] = np.dot(self._windows, self._kernel)
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)
