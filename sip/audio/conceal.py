"""Packet-loss concealment for the phone's decoded audio.

When the jitter buffer has nothing for a tick (:meth:`JitterBuffer.pop`
gave ``None``), the listener must still hear 20 ms of something, and that
something must not click. Kept simple, in the spirit of ITU-T G.711
Appendix I without its detail:

* The first 60 ms continue the last good audio one pitch period at a
  time: the period (2.5 to 15 ms) is where the last good audio best
  matches itself a period earlier (normalised autocorrelation), and its
  last period is repeated with the phase carried across frames. Voiced
  speech, most of what a loss interrupts, is periodic, so this sounds like
  the vowel going on; repeating a whole 20 ms frame instead buzzes at 50 Hz.
  The level fades by 20 % per frame, linearly within each frame so no step
  is heard.
* After 60 ms a continued vowel sounds wrong, so the repetition fades out
  over the fourth frame into comfort noise: white noise at the level of the
  quietest recent good frame, at most -50 dBov (RFC 3389's level range),
  so a long gap (or the far end's silence suppression) is the room's hush,
  not dead air.
* When real audio resumes, its first 2.5 ms are cross-faded with what
  concealment would have played next, so the join is smooth.

Before any good frame the concealment is silence. Noise comes from a seeded
generator: the same losses give the same samples (tests rely on it).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from sip.audio.pcm import Pcm, check_pcm
from sip.formats import frame_samples

__all__ = ["Concealer"]

_FADE_PER_FRAME = 0.2
_REPEAT_FRAMES = 3  # 60 ms
_MIN_PITCH = 0.0025  # s: 400 Hz
_MAX_PITCH = 0.015  # s: 67 Hz
_JOIN = 0.0025  # s
_NOISE_CAP = 32767 * 10 ** (-50 / 20)  # -50 dBov RMS
#: The quietest-frame tracker forgets by this factor per good frame, so the
#: noise follows a background that gets louder (about 1 dB per 0.2 s).
_FLOOR_RISE = 1.025


class Concealer:
    """One leg's concealment at ``sample_rate`` (the codec's, before
    resampling: fewer samples to make up). Feed every tick through it:
    :meth:`accept` for a decoded frame, :meth:`conceal` for a missing one."""

    __slots__ = (
        "_floor",
        "_frame",
        "_history",
        "_join",
        "_lost",
        "_max_lag",
        "_min_lag",
        "_period",
        "_phase",
        "_rng",
    )

    def __init__(self, sample_rate: int, seed: int = 0) -> None:
        self._frame = frame_samples(sample_rate)
        self._min_lag = round(_MIN_PITCH * sample_rate)
        self._max_lag = round(_MAX_PITCH * sample_rate)
        self._join = round(_JOIN * sample_rate)
        # Two frames of good audio: enough to find a 15 ms period.
        self._history: npt.NDArray[np.float32] | None = None
        self._lost = 0  # frames concealed in a row
        self._period = 0
        self._phase = 0
        self._floor = _NOISE_CAP
        self._rng = np.random.default_rng(seed)

    @property
    def concealing(self) -> bool:
        """Whether the last frame given out was made up."""
        return self._lost > 0

    def accept(self, pcm: Pcm) -> Pcm:
        """A good frame to play: given back as is, or, when it ends a gap,
        with its start cross-faded from the concealment."""
        check_pcm(pcm, samples=self._frame)
        out = pcm
        if self._lost:
            tail = self._continue(self._join, start=self._lost)
            ramp = np.linspace(0.0, 1.0, self._join, endpoint=False, dtype=np.float32)
            mixed = pcm.astype(np.float32)
            mixed[: self._join] = tail * (1 - ramp) + mixed[: self._join] * ramp
            out = np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
            self._lost = 0
        history = self._history
        if history is None:
            self._history = history = np.zeros(2 * self._frame, dtype=np.float32)
        # The last two good frames, in place: the older one moves down.
        history[: self._frame] = history[self._frame :]
        good = history[self._frame :]
        good[:] = pcm
        rms = float(np.sqrt(np.dot(good, good) / self._frame))
        self._floor = min(rms, self._floor * _FLOOR_RISE + 1.0, _NOISE_CAP)
        return out

    def conceal(self) -> Pcm:
        """The frame to play in place of a missing one."""
        if self._history is None:
            return np.zeros(self._frame, dtype=np.int16)
        if not self._lost:
            self._period = self._pitch_period()
            self._phase = 0
        self._lost += 1
        samples = self._continue(self._frame, start=self._lost - 1)
        return np.clip(np.rint(samples), -32768, 32767).astype(np.int16)

    def _pitch_period(self) -> int:
        """The lag, in samples, at which the last good audio best repeats."""
        assert self._history is not None
        history = self._history
        span = self._frame // 2
        reference = history[-span:]
        # Every candidate segment ends `lag` samples before the reference ends.
        candidates = sliding_window_view(history[: history.shape[0] - self._min_lag], span)
        candidates = candidates[-(self._max_lag - self._min_lag + 1) :][::-1]
        dots = candidates @ reference
        energy = np.einsum("ij,ij->i", candidates, candidates) + 1e-3
        score = dots / np.sqrt(energy)
        return self._min_lag + int(np.argmax(score))

    def _continue(self, count: int, start: int) -> npt.NDArray[np.float32]:
        """The next ``count`` samples of concealment from the start of the
        gap's frame ``start`` (0 for the first), advancing the repetition's
        phase."""
        assert self._history is not None
        # Where in the gap each sample is, in frames since the gap began.
        position = start + np.arange(count, dtype=np.float32) / self._frame
        period = self._history[-self._period :]
        indices = (self._phase + np.arange(count)) % self._period
        self._phase = int((self._phase + count) % self._period)
        repeated = period[indices] * np.clip(1 - _FADE_PER_FRAME * position, 0.0, 1.0)
        # The fourth frame fades the repetition out and the noise in.
        weight = np.clip(position - _REPEAT_FRAMES, 0.0, 1.0)
        if not np.any(weight):
            return repeated.astype(np.float32)
        noise = self._rng.standard_normal(count).astype(np.float32) * self._floor
        return (repeated * (1 - weight) + noise * weight).astype(np.float32)
