"""Keys heard in the audio: DTMF tones (ITU-T Q.23) found as Q.24 asks.

A leg that negotiated no ``telephone-event`` (RFC 4733) still carries the
patient's PIN as tone pairs in its G.711 audio: one of four row (low group)
and one of four column (high group) frequencies per key (Q.23).
:class:`ToneDetector` runs on every 20 ms frame of every such leg, so it is
built to be cheap: one matrix product per frame and a few scalar steps per
block. :func:`tone` makes the pairs, for tests and for a bridge that must key
a digit in-band.

The detector takes 8 kHz samples in blocks of :data:`BLOCK` = 106 (13.25 ms)
and measures each block at the eight frequencies and their second
harmonics. A block *shows* a key when (the receiver limits of Q.24):

* one row and one column tone are the strongest of their groups, above
  the -40 dBFS floor, and lead the rest by 6 dB in a whole block of tone;
* the twist is in bounds: the column tone at most 8 dB below the row tone
  (normal twist, lines lose the highs) and at most 4 dB above it (reverse);
* the pair carries a fifth (:data:`SHOWS`) of the block's energy, so a
  block the tone only partly covers still shows it, weaker.

Two consecutive whole blocks of tone (:data:`STRONG`: 70 % of their energy
in the pair) are checked together, over 212 samples: the phase each tone
advanced between them gives its frequency, which must be within 2.5 % of
nominal (Q.24 asks for operation within 1.5 % and none beyond 3.5 %), and
the second harmonics must be 10 dB below the pair (speech is rich in them,
a keypad's sines are not). A key is reported once its run of blocks holds
about 34 ms of tone (Q.24 leaves 23 to 40 ms to the implementer; 40 ms is
always heard) and it is not the key whose press is still going on; a press
ends after two blocks without it, so a 40 ms pause always separates two
presses of the same key.

Why 106 samples: the classic 205-sample block (25.6 ms) fits only once in a
40 ms tone, so its duration check cannot tell 30 ms from 40 ms. At 106
samples the main lobe of each measure is 75.5 Hz wide, just over the 73 Hz
between the two closest row tones (697 and 770 Hz), so each row tone sits
near the nulls of its neighbours' measures; any 40 ms tone covers two whole
blocks, the minimum for the pair check, and two blocks (26.5 ms) are short
enough to end a press in a 40 ms pause.

Why a matrix product: Goertzel's recurrence computes one term of a DFT at an
arbitrary frequency, ``sum(x[n] * exp(-2j*pi*f*n/rate))``; evaluated for
sixteen frequencies and a frame's blocks at once it is one product with a
precomputed basis, which numpy does in C instead of 106 Python steps per
block (the tests check it against the recurrence).
"""

from __future__ import annotations

import cmath
import math

import numpy as np
import numpy.typing as npt

from sip.audio.dtmf import DIGITS, digit_event

__all__ = ["BLOCK", "COLUMNS", "RATE", "ROWS", "SHOWS", "STRONG", "ToneDetector", "tone"]

RATE = 8000
"""The sample rate the detector takes, that of G.711 (Hz)."""
BLOCK = 106
"""Samples per analysis block (13.25 ms at 8 kHz); see the module docstring."""
SHOWS = 0.2
"""Share of a block's energy in the pair for the block to show a key."""
STRONG = 0.7
"""Share of a block's energy in the pair for a whole block of tone."""

ROWS = (697.0, 770.0, 852.0, 941.0)
"""The low group, one per keypad row (Hz, ITU-T Q.23)."""
COLUMNS = (1209.0, 1336.0, 1477.0, 1633.0)
"""The high group, one per keypad column (Hz)."""
# Keys by row then column, as on the keypad: row * 4 + column.
_KEYS = "123A456B789C*0#D"

_FREQS = np.array(ROWS + COLUMNS + tuple(2 * f for f in ROWS + COLUMNS))
_n = np.arange(BLOCK)[:, None]
# Cosines then sines: a block times this is the real and (negated)
# imaginary parts of its sixteen measures.
_BASIS = np.concatenate(
    (
        np.cos(2 * np.pi * _FREQS[None, :] * _n / RATE),
        np.sin(2 * np.pi * _FREQS[None, :] * _n / RATE),
    ),
    axis=1,
)
# The phase a tone at exactly f advances over one block: removed from the
# measured advance, what is left is the tone's offset from nominal.
_TURN = [cmath.exp(-2j * math.pi * f * BLOCK / RATE) for f in _FREQS.tolist()]
# A sine of amplitude a over a whole block measures a*a*BLOCK/2: the block's
# energy at that frequency, so measures and energies compare directly.
_SCALE = 2.0 / BLOCK

# Each tone at least -40 dBFS over a whole block (about -37 dBm0 in G.711):
# below what a keypad sends through the lossiest line Q.24 allows for, so
# weak keys are heard, and above the idle noise of a call, so it is not.
_FLOOR = (32767 * 10 ** (-40 / 20)) ** 2 * BLOCK / 2
# A whole block's tone over the next strongest of its group. The measure of
# a tone 1.5 % off reads 12 dB or more down at its neighbours: room to spare.
_LEAD = 10 ** (6 / 10)
_NORMAL_TWIST = 10 ** (8 / 10)
_REVERSE_TWIST = 10 ** (4 / 10)
_HARMONICS = 10 ** (-10 / 10)
# Halfway between Q.24's must-operate 1.5 % and must-not 3.5 %: the most
# room either way for a tone measured over only 212 samples.
_TOLERANCE = 0.025
# 33.5 ms of tone, counted in samples: halfway between what a 30 ms tone
# estimates at most (32 ms) and a 40 ms one at least (35.5 ms) over every
# alignment to the blocks.
_MIN_TONE = 268
# Blocks without the key that end its press (26.5 ms of whole blocks, which
# any pause of 40 ms holds).
_PAUSE = 2

Samples = npt.NDArray[np.int16]


def tone(digit: str, ms: int, rate: int = RATE, level_dbfs: float = -10.0) -> Samples:
    """The tone pair of a key (ITU-T Q.23), ``ms`` long, as 16-bit PCM.

    Each of the two sines is at ``level_dbfs`` relative to a full-scale sine
    (Q.23 gives levels per frequency); at the default -10 dBFS the pair peaks
    at 63 % of full scale, and above -6 dBFS it would clip, so it is clipped.
    ValueError for a key not in :data:`~sip.audio.dtmf.DIGITS`.
    """
    key = _KEYS.index(DIGITS[digit_event(digit)])
    t = np.arange(rate * ms // 1000) / rate
    amplitude = 32767 * 10 ** (level_dbfs / 20)
    pair = np.sin(2 * np.pi * ROWS[key // 4] * t) + np.sin(2 * np.pi * COLUMNS[key % 4] * t)
    return np.clip(np.rint(amplitude * pair), -32768, 32767).astype(np.int16)


class ToneDetector:
    """The keys in one leg's 8 kHz mono audio (ITU-T Q.24), frame by frame.

    :meth:`receive` takes frames of any length (20 ms is 160 samples), keeps
    its own block alignment across them, and returns the keys whose tones
    it found, as a string in the order heard (usually ""). Each press is
    reported once, about 34 ms into its tone.
    """

    def __init__(self) -> None:
        self._rest: npt.NDArray[np.float64] = np.zeros(0)
        # The last block's measures (real and imaginary parts, 16 each) and
        # the key it showed as a whole block of tone, -1 for none.
        self._last_re: list[float] = [0.0] * len(_FREQS)
        self._last_im: list[float] = [0.0] * len(_FREQS)
        self._last_strong = -1
        # The run of consecutive blocks showing one key: the key, the sum and
        # the largest of their pairs' amplitudes, whether a pair of its blocks
        # passed the frequency and harmonic check, whether it was reported.
        self._run = -1
        self._run_sum = 0.0
        self._run_peak = 0.0
        self._run_checked = False
        self._run_reported = False
        # The key whose press is going on, and the blocks since it was shown.
        self._held = -1
        self._quiet = 0

    def receive(self, samples: npt.NDArray[np.integer]) -> str:
        """Take the next samples of the leg; return the keys they completed.

        ValueError if ``samples`` is not one-dimensional.
        """
        if samples.ndim != 1:
            raise ValueError(f"mono samples wanted, got shape {samples.shape}")
        data = np.concatenate((self._rest, samples.astype(np.float64)))
        count = len(data) // BLOCK
        self._rest = data[count * BLOCK :]
        if count == 0:
            return ""
        blocks = data[: count * BLOCK].reshape(count, BLOCK)
        measures = blocks @ _BASIS
        re, im = measures[:, : len(_FREQS)], measures[:, len(_FREQS) :]
        power = (re * re + im * im) * _SCALE
        energy = np.einsum("ij,ij->i", blocks, blocks)
        keys = ""
        # Speech and silence are most frames: when no block's strongest row
        # and column could show a key, skip the rest of the classification.
        low, high = power[:, :4].max(axis=1), power[:, 4:8].max(axis=1)
        if not ((low >= _FLOOR) & (high >= _FLOOR) & (low + high >= SHOWS * energy)).any():
            for _ in range(count):
                keys += self._block(-1, False, 0.0, [], [])
            return keys
        shown, strong, pair = _classify(power, energy)
        re_rows, im_rows = re.tolist(), im.tolist()
        for i, (key, whole, amplitude) in enumerate(zip(shown, strong, pair, strict=True)):
            keys += self._block(key, whole, amplitude, re_rows[i], im_rows[i])
        return keys

    def _block(
        self, key: int, whole: bool, amplitude: float, re: list[float], im: list[float]
    ) -> str:
        """Move the press along by one block showing ``key`` (-1 for none)."""
        checked = False
        if whole:
            if key == self._last_strong:
                checked = _in_tune(key, self._last_re, self._last_im, re, im)
                if not checked:
                    key = -1
            self._last_strong = key
        else:
            self._last_strong = -1
        self._last_re, self._last_im = re, im

        if key >= 0 and key == self._held:
            self._quiet = 0
        else:
            self._quiet += 1
            if self._quiet >= _PAUSE:
                self._held = -1
        if key != self._run:
            self._run = key
            self._run_sum = self._run_peak = 0.0
            self._run_checked = self._run_reported = False
        if key < 0:
            return ""
        self._run_sum += amplitude
        self._run_peak = max(self._run_peak, amplitude)
        self._run_checked |= checked
        # A block the tone covers a share of measures that share of a whole
        # block's amplitude: the sum over the run, in the largest, is the
        # tone's length in blocks, partial blocks at its edges included.
        if (
            self._run_reported
            or not self._run_checked
            or self._run_sum * BLOCK < _MIN_TONE * self._run_peak
        ):
            return ""
        self._run_reported = True
        known = key == self._held
        self._held, self._quiet = key, 0
        return "" if known else _KEYS[key]


def _classify(
    power: npt.NDArray[np.float64], energy: npt.NDArray[np.float64]
) -> tuple[list[int], list[bool], list[float]]:
    """Per block: the key shown (-1 for none), whether as a whole block of
    tone, and the pair's amplitude (the tests of the module docstring)."""
    low, high = power[:, :4], power[:, 4:8]
    row, column = low.argmax(axis=1), high.argmax(axis=1)
    blocks = np.arange(len(power))
    p_row, p_column = low[blocks, row], high[blocks, column]
    # The runner-up of each group: the group's second largest measure.
    second_row = np.partition(low, 2, axis=1)[:, 2]
    second_column = np.partition(high, 2, axis=1)[:, 2]
    pair = p_row + p_column
    shows = (
        (p_row >= _FLOOR)
        & (p_column >= _FLOOR)
        & (p_row <= _NORMAL_TWIST * p_column)
        & (p_column <= _REVERSE_TWIST * p_row)
        & (pair >= SHOWS * energy)
    )
    # A tone covering part of a block is a shorter sine, whose measure is as
    # much wider: half a block of 697 Hz reads 3.5 dB down at 770 Hz. So only
    # whole blocks must lead their groups by 6 dB; a partial one at a tone's
    # edge must only lead, and lends the run its share of the tone's length.
    strong = (
        shows
        & (pair >= STRONG * energy)
        & (p_row >= _LEAD * second_row)
        & (p_column >= _LEAD * second_column)
    )
    key = np.where(shows, row * 4 + column, -1)
    return key.tolist(), strong.tolist(), np.sqrt(pair).tolist()


def _in_tune(
    key: int, re0: list[float], im0: list[float], re1: list[float], im1: list[float]
) -> bool:
    """Whether two consecutive whole blocks showing ``key`` hold its tones,
    measured over both (212 samples): each tone's frequency from the phase
    it advanced between them within 2.5 % of nominal (Q.24: operate within
    1.5 %, not beyond 3.5 %), and the second harmonics 10 dB under the pair.

    At 212 samples a column tone's measure leaks into the row tone's second
    harmonic 14 dB down at worst (1336 Hz beside 1394 Hz), where one block
    would leak it 4 dB down: hence two blocks, not one.
    """
    found = 0.0
    harmonics = 0.0
    for index in (key // 4, 4 + key % 4):
        first = complex(re0[index], -im0[index])
        second = complex(re1[index], -im1[index])
        # The advance beyond a nominal tone's, in (-pi, pi]: the offset, in
        # Hz, within +-37.7 Hz (one block's main lobe each side).
        offset = cmath.phase(second * first.conjugate() * _TURN[index]) * RATE
        offset /= 2 * math.pi * BLOCK
        if abs(offset) > _TOLERANCE * float(_FREQS[index]):
            return False
        found += abs(first + second * _TURN[index]) ** 2
        h = index + 8
        harmonics += abs(complex(re0[h], -im0[h]) + complex(re1[h], -im1[h]) * _TURN[h]) ** 2
    return harmonics <= _HARMONICS * found
