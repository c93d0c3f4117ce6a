"""Keys heard in the audio (sip/audio/tones.py): a PIN keyed as tone pairs
is heard once per press, clean, through G.711 and in noise; speech, music
and call progress tones are not keys (ITU-T Q.24)."""

from __future__ import annotations

import cmath
import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sip.audio.dtmf import DIGITS
from sip.audio.tones import BLOCK, COLUMNS, RATE, ROWS, ToneDetector, tone

Samples = npt.NDArray[np.int16]
PIN = "4821#"
# The RMS of one -10 dBFS tone pair, for signal-to-noise ratios.
PAIR_RMS = 32767 * 10 ** (-10 / 20)


def silence(ms: float) -> Samples:
    return np.zeros(round(RATE * ms / 1000), np.int16)


def pair(
    low: float, high: float, ms: int, low_dbfs: float = -10, high_dbfs: float = -10
) -> Samples:
    """Two sines at any frequencies and levels (dBFS each)."""
    t = np.arange(RATE * ms // 1000) / RATE
    wave = 10 ** (low_dbfs / 20) * np.sin(2 * np.pi * low * t)
    wave += 10 ** (high_dbfs / 20) * np.sin(2 * np.pi * high * t)
    return np.rint(32767 * wave).astype(np.int16)


def keyed(pin: str, on: int = 70, off: int = 50, lead: float = 30) -> Samples:
    """A PIN as a keypad or an auto-dialler sends it: ``on`` ms of each key,
    ``off`` ms between."""
    return np.concatenate(
        [silence(lead), *[np.concatenate([tone(key, on), silence(off)]) for key in pin]]
    )


def heard(samples: npt.NDArray[np.int16], frame: int = 160) -> str:
    """What a detector reports from ``samples`` in frames of ``frame``."""
    detector = ToneDetector()
    return "".join(detector.receive(samples[i : i + frame]) for i in range(0, len(samples), frame))


def add_noise(samples: Samples, snr_db: float, seed: int) -> Samples:
    noise = np.random.default_rng(seed).normal(0, PAIR_RMS * 10 ** (-snr_db / 20), len(samples))
    return np.clip(samples + noise, -32768, 32767).astype(np.int16)


def mulaw_round_trip(samples: Samples) -> Samples:
    """Through G.711 µ-law and back, as a phone leg carries audio (PyAV's codec)."""
    av = pytest.importorskip("av")
    encoder = av.CodecContext.create("pcm_mulaw", "w")
    encoder.sample_rate, encoder.layout, encoder.format = RATE, "mono", "s16"
    decoder = av.CodecContext.create("pcm_mulaw", "r")
    decoder.sample_rate, decoder.layout = RATE, "mono"
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    out = []
    for packet in [*encoder.encode(frame), *encoder.encode(None)]:
        assert len(bytes(packet)) == packet.duration  # one octet per sample
        out += [decoded.to_ndarray().reshape(-1) for decoded in decoder.decode(packet)]
    decoded: Samples = np.concatenate(out)
    assert len(decoded) == len(samples) and decoded.dtype == np.int16
    return decoded


@pytest.mark.parametrize("key", list(DIGITS))
def test_every_key_is_heard_from_a_clean_tone(key: str) -> None:
    assert heard(np.concatenate([tone(key, 100), silence(60)])) == key


@pytest.mark.parametrize("frame", [160, 80, 1, 106, 333, 4000])
def test_a_pin_keyed_fast_is_heard_once_per_key_in_any_framing(frame: int) -> None:
    assert heard(keyed(PIN), frame) == PIN


def test_the_same_key_twice_is_two_presses() -> None:
    assert heard(keyed("1122003", off=45)) == "1122003"


def test_a_long_press_is_one_key() -> None:
    assert heard(keyed("9", on=3_000)) == "9"
    # An interruption of 10 ms is no pause (Q.24).
    held = np.concatenate([tone("9", 100), silence(10), tone("9", 100), silence(60)])
    for start in range(0, BLOCK, 13):
        assert heard(np.concatenate([silence(20)[:start], held])) == "9"


def test_a_pin_through_g711_mulaw() -> None:
    assert heard(mulaw_round_trip(keyed(PIN))) == PIN


@pytest.mark.parametrize("seed", range(8))
def test_a_pin_in_noise_at_20_db_snr_through_g711(seed: int) -> None:
    assert heard(mulaw_round_trip(add_noise(keyed(PIN), 20, seed))) == PIN


@pytest.mark.parametrize("start", range(0, BLOCK, 5))
def test_a_40_ms_tone_is_heard_and_a_30_ms_one_is_not(start: int) -> None:
    # Every alignment of the tone to the detector's blocks.
    for ms, wanted in ((40, "7"), (30, "")):
        samples = np.concatenate([silence(20)[:start], tone("7", ms), silence(100)])
        assert heard(samples) == wanted, (ms, start)
        assert heard(add_noise(samples, 20, start)) == wanted, (ms, start, "noise")


@pytest.mark.parametrize(
    ("high_db", "wanted"),
    [(-10, ""), (-8.5, ""), (-7.5, "9"), (0, "9"), (3.5, "9"), (4.5, ""), (8, "")],
)
def test_twist_within_limits(high_db: float, wanted: str) -> None:
    """The column tone at most 8 dB under the row tone, at most 4 dB over."""
    samples = pair(852, 1477, 100, -12, -12 + high_db)
    assert heard(np.concatenate([samples, silence(60)])) == wanted


@pytest.mark.parametrize("nominal", ROWS + COLUMNS)
def test_frequencies_within_1_5_percent_are_heard_beyond_3_5_are_not(nominal: float) -> None:
    """Q.24's frequency tolerance: one tone of the pair off by +-1.5 % and +-3.5 %."""
    for error, heard_as in ((-0.015, True), (0.015, True), (-0.035, False), (0.035, False)):
        if nominal in ROWS:
            samples = pair(nominal * (1 + error), 1336, 100)
            key = "2580"[ROWS.index(nominal)]
        else:
            samples = pair(770, nominal * (1 + error), 100)
            key = "456B"[COLUMNS.index(nominal)]
        assert heard(np.concatenate([samples, silence(60)])) == (key if heard_as else ""), error


@pytest.mark.parametrize(("overtones_db", "wanted"), [(-6, ""), (-8, ""), (-14, "1"), (-20, "1")])
def test_a_pair_with_overtones_is_a_voice_not_a_keypad(overtones_db: float, wanted: str) -> None:
    """The key's frequencies with their second harmonics, as a voice or an
    instrument sounds them; a keypad's sines have none to speak of."""
    fundamentals = pair(697, 1209, 100, -12, -12)
    overtones = pair(2 * 697, 2 * 1209, 100, -12 + overtones_db, -12 + overtones_db)
    assert heard(np.concatenate([fundamentals + overtones, silence(60)])) == wanted


def test_silence_and_white_noise_are_no_keys() -> None:
    assert heard(silence(2_000)) == ""
    rng = np.random.default_rng(3)
    for level in (300, 3_000, 12_000):
        assert heard(np.clip(rng.normal(0, level, 5 * RATE), -32768, 32767).astype(np.int16)) == ""


def test_call_progress_tones_are_no_keys() -> None:
    assert heard(pair(1000, 1000, 2_000, -10, -200)) == ""
    assert heard(pair(440, 480, 3_000, -13, -13)) == ""  # dial tone
    assert heard(pair(480, 620, 3_000, -13, -13)) == ""  # busy


def speech_like(seconds: float, seed: int) -> Samples:
    """A voiced sound: the harmonics of a wavering 95-140 Hz fundamental,
    shaped by three moving formants, whose harmonics sweep through every
    DTMF frequency."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * seconds)) / RATE
    f0 = 118 + 22 * np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    formants = [
        (500 + 250 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t), 80),
        (1500 + 600 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + 1), 100),
        (2500 + 200 * np.sin(2 * np.pi * rng.uniform(0.2, 1) * t), 150),
    ]
    wave = np.zeros_like(t)
    for k in range(1, 40):
        frequency = k * f0
        gain = sum(1 / (1 + ((frequency - centre) / width) ** 2) for centre, width in formants)
        wave += np.where(frequency < 3_900, gain, 0) * np.sin(k * phase)
    samples: Samples = np.rint(wave * 0.3 * 32767 / np.abs(wave).max()).astype(np.int16)
    return samples


@pytest.mark.parametrize("seed", range(4))
def test_speech_like_sound_is_no_key(seed: int) -> None:
    assert heard(speech_like(6, seed)) == ""
    assert heard(mulaw_round_trip(speech_like(6, seed))) == ""


def test_a_key_is_heard_over_speech_like_sound_after_it() -> None:
    samples = np.concatenate([keyed("5", on=100), speech_like(2, 9)])
    assert heard(samples) == "5"


def test_the_measures_are_goertzels() -> None:
    """The block measure is what Goertzel's recurrence gives, at each frequency."""
    block = np.random.default_rng(5).integers(-20_000, 20_000, BLOCK)
    for frequency in (697.0, 1633.0, 2 * 941.0):
        coefficient = 2 * math.cos(2 * math.pi * frequency / RATE)
        s1 = s2 = 0.0
        for x in block.tolist():
            s1, s2 = x + coefficient * s1 - s2, s1
        goertzel = s1 * s1 + s2 * s2 - coefficient * s1 * s2
        direct = sum(
            x * cmath.exp(-2j * math.pi * frequency * n / RATE)
            for n, x in enumerate(block.tolist())
        )
        assert abs(direct) ** 2 == pytest.approx(goertzel, rel=1e-9)


def test_the_generator_makes_q23_pairs() -> None:
    samples = tone("#", 70)
    assert samples.dtype == np.int16 and len(samples) == 560
    spectrum = np.abs(np.fft.rfft(samples.astype(float), n=RATE))
    assert sorted(np.argsort(spectrum)[-2:].tolist()) == [941, 1477]
    # Two -10 dBFS sines: each has RMS 32767 * 10**(-0.5) / sqrt(2).
    assert float(np.sqrt(np.mean(samples.astype(float) ** 2))) == pytest.approx(PAIR_RMS, rel=0.01)
    assert len(tone("1", 20, rate=16_000)) == 320
    with pytest.raises(ValueError, match="not a DTMF key"):
        tone("E", 70)


def test_stereo_is_refused() -> None:
    with pytest.raises(ValueError, match="mono"):
        ToneDetector().receive(np.zeros((2, 160), np.int16))


@settings(max_examples=200, deadline=None)
@given(st.lists(hnp.arrays(np.int16, st.integers(min_value=0, max_value=700)), max_size=8))
def test_arbitrary_frames_raise_nothing(frames: list[Samples]) -> None:
    detector = ToneDetector()
    for frame in frames:
        assert set(detector.receive(frame)) <= set(DIGITS)
