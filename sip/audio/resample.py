"""Between a phone codec's rate (8 or 16 kHz) and the room's 48 kHz, frame by frame.

Both ratios are whole numbers (6 and 3), so a polyphase FIR filter does it
exactly: no fractional phase to track, and always exactly one 20 ms frame
out for each 20 ms frame in, from the very first (the filter's history
starts as silence). ``av.AudioResampler`` was measured too: it is no quicker
per frame and hands out frames of varying length (864 samples, then 960)
while it primes, which the mixer's fixed frames would have to absorb.

The filter is a Kaiser-windowed sinc (beta 5.65, about 60 dB of stopband)
of 32 taps per low-rate sample, cut off at 92 % of the low rate's Nyquist
frequency: flat to 3.4 kHz at 8 kHz (the telephone band, ITU-T G.711's
300-3400 Hz) and to 6.5 kHz at 16 kHz (G.722's 50-7000 Hz), 60 dB down by
4.2 and 8.4 kHz so little folds back when going down. Its history carries
across frames, so frame edges make no click. The price is delay: a linear
phase filter of N taps delays by (N - 1) / 2 samples at 48 kHz, 16
samples at the low rate, which is :attr:`Resampler.delay` (2 ms for 8 kHz,
1 ms for 16 kHz, per direction) and counts toward the bridge's added delay.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from sip.audio.pcm import ROOM_RATE, Pcm, check_pcm
from sip.formats import frame_samples

__all__ = ["Resampler"]

_TAPS_PER_PHASE = 32
_CUTOFF = 0.92
_KAISER_BETA = 5.65


def _lowpass(ratio: int) -> npt.NDArray[np.float64]:
    """The anti-imaging / anti-aliasing filter at the high rate, unit DC gain.
    An odd number of taps, ``ratio * 32 + 1``, so that its delay is a whole
    number of samples at the low rate too (16): a signal sent up and back
    down comes back shifted, not smeared between samples."""
    taps = ratio * _TAPS_PER_PHASE + 1
    n = np.arange(taps) - (taps - 1) / 2
    cutoff = _CUTOFF * 0.5 / ratio  # cycles per high-rate sample
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, _KAISER_BETA)
    unit: npt.NDArray[np.float64] = h / h.sum()
    return unit


def _to_int16(samples: npt.NDArray[np.float32]) -> Pcm:
    return np.clip(np.rint(samples), -32768, 32767).astype(np.int16)


class Resampler:
    """One direction of one leg: ``from_rate`` to ``to_rate``, where one of
    them is 48 kHz and the other divides it (8000, 16000). Each call of
    :meth:`resample` takes one 20 ms frame and gives one 20 ms frame."""

    __slots__ = ("_history", "_in_samples", "_kernel", "_ratio", "_up", "from_rate", "to_rate")

    def __init__(self, from_rate: int, to_rate: int) -> None:
        low = min(from_rate, to_rate)
        if max(from_rate, to_rate) != ROOM_RATE or low <= 0 or ROOM_RATE % low:
            raise ValueError(f"cannot resample {from_rate} Hz to {to_rate} Hz")
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._ratio = ROOM_RATE // low
        self._up = to_rate > from_rate
        self._in_samples = frame_samples(from_rate)
        h = _lowpass(self._ratio)
        if self._up:
            # Polyphase: output sample m * L + p is the dot product of the last
            # P input samples with phase p's taps h[p], h[p + L], ...; one
            # (P, L) matrix computes all L phases of every input sample at once.
            # The input is zero-stuffed in effect, so the gain is L.
            # The taps are padded with zeros to whole phases.
            p = _TAPS_PER_PHASE + 1
            padded = np.concatenate((h, np.zeros(p * self._ratio - h.shape[0])))
            kernel = padded.reshape(p, self._ratio)[::-1] * self._ratio
            self._history = np.zeros(p - 1, dtype=np.float32)
        else:
            # Decimation: only every M-th output of the full-rate filter is
            # kept, so only those are computed: windows of N input samples,
            # M apart, against the reversed taps.
            kernel = h[::-1].copy()
            self._history = np.zeros(h.shape[0] - 1, dtype=np.float32)
        self._kernel = kernel.astype(np.float32)

    @property
    def delay(self) -> float:
        """The filter's group delay in seconds: what this direction adds."""
        return self._ratio * _TAPS_PER_PHASE / 2 / ROOM_RATE

    def resample(self, pcm: Pcm) -> Pcm:
        """The next 20 ms frame at ``to_rate`` from the next 20 ms frame at
        ``from_rate``; frames must come in order, with none left out (give
        a concealed frame for a lost one)."""
        check_pcm(pcm, samples=self._in_samples)
        joined = np.concatenate((self._history, pcm.astype(np.float32)))
        keep = self._history.shape[0]
        self._history = joined[-keep:]
        if self._up:
            windows = sliding_window_view(joined, self._kernel.shape[0])
            out = (windows @ self._kernel).reshape(-1)
        else:
            windows = sliding_window_view(joined, self._kernel.shape[0])[:: self._ratio]
            out = windows @ self._kernel
        return _to_int16(out)
