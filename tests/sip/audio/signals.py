"""Test signals and measurements shared by the audio tests: tones, where a
spectrum peaks, how loud a signal is."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from sip.audio.pcm import Pcm


def tone(frequency: float, rate: int, samples: int, amplitude: float = 10_000.0) -> Pcm:
    t = np.arange(samples) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def frames(pcm: Pcm, size: int) -> list[Pcm]:
    return [pcm[i : i + size] for i in range(0, pcm.shape[0] - size + 1, size)]


def spectrum(pcm: npt.NDArray[np.generic], rate: int) -> tuple[npt.NDArray[np.float64], ...]:
    """(frequencies, magnitudes) of ``pcm`` under a Hann window."""
    x = pcm.astype(np.float64)
    magnitudes = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return np.fft.rfftfreq(x.shape[0], 1 / rate), magnitudes


def peak_frequency(pcm: npt.NDArray[np.generic], rate: int) -> float:
    frequencies, magnitudes = spectrum(pcm, rate)
    return float(frequencies[int(np.argmax(magnitudes))])


def level_at(pcm: npt.NDArray[np.generic], rate: int, frequency: float) -> float:
    """The spectrum's magnitude near ``frequency`` relative to its peak, in dB."""
    frequencies, magnitudes = spectrum(pcm, rate)
    near = np.abs(frequencies - frequency) <= 15
    return float(20 * np.log10(magnitudes[near].max() / magnitudes.max() + 1e-12))


def rms_db(pcm: npt.NDArray[np.generic]) -> float:
    x = pcm.astype(np.float64)
    return float(20 * np.log10(np.sqrt(np.mean(x * x)) + 1e-9))
