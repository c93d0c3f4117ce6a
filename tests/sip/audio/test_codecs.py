"""The phone side's codecs and the room-to-phone resampler: tones survive them, frames
have the sizes RFC 3551 gives, G.711 is FFmpeg's to the bit, frame edges
do not click."""

from __future__ import annotations

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.audio.codecs import G711Transcoder, G722Transcoder, transcoder
from sip.audio.pcm import ROOM_FRAME, ROOM_RATE
from sip.audio.resample import Downsampler
from sip.errors import AudioFrameError, SipError
from sip.formats import G722, PCMA, PCMU, PHONE_CODECS, PhoneCodec, codec_for_payload_type
from tests.sip.audio.signals import frames, peak_frequency, rms_db, tone

ALL_INPUTS = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16)


def ffmpeg_encode(name: str, pcm: np.ndarray) -> bytes:
    context = av.CodecContext.create(name, "w")
    context.sample_rate = 8000
    context.layout = "mono"
    context.format = "s16"
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in [*context.encode(frame), *context.encode(None)])


def ffmpeg_decode(name: str, payload: bytes) -> np.ndarray:
    context = av.CodecContext.create(name, "r")
    context.sample_rate = 8000
    context.layout = "mono"
    return np.concatenate([f.to_ndarray().reshape(-1) for f in context.decode(av.Packet(payload))])


# --- the table -----------------------------------------------------------------


def test_the_table_is_rfc_3551s() -> None:
    assert [
        (c.name, c.payload_type, c.clock_rate, c.sample_rate) for c in PHONE_CODECS.values()
    ] == [
        ("G722", 9, 8000, 16000),
        ("PCMU", 0, 8000, 8000),
        ("PCMA", 8, 8000, 8000),
    ]
    # RFC 3551 4.5.2: G.722's clock runs at 8000 although it samples at 16 kHz.
    assert (G722.frame_samples, G722.frame_ticks, G722.frame_bytes) == (320, 160, 160)
    assert (PCMU.frame_samples, PCMU.frame_ticks, PCMU.frame_bytes) == (160, 160, 160)
    assert codec_for_payload_type(8) is PCMA
    assert codec_for_payload_type(111) is None


@pytest.mark.parametrize("codec", list(PHONE_CODECS.values()), ids=lambda c: c.name)
def test_a_frame_has_its_sizes(codec: PhoneCodec) -> None:
    leg = transcoder(codec)
    payload = leg.encode(np.zeros(codec.frame_samples, dtype=np.int16))
    assert len(payload) == codec.frame_bytes
    pcm = leg.decode(payload)
    assert pcm.dtype == np.int16
    assert pcm.shape == (codec.frame_samples,)


@pytest.mark.parametrize("codec", list(PHONE_CODECS.values()), ids=lambda c: c.name)
def test_a_1khz_tone_keeps_its_frequency_and_level(codec: PhoneCodec) -> None:
    leg = transcoder(codec)
    rate = codec.sample_rate
    sent = tone(1000, rate, rate)  # one second, -10 dBFS peak
    got = np.concatenate([leg.decode(leg.encode(f)) for f in frames(sent, codec.frame_samples)])
    assert got.shape == sent.shape
    steady = got[rate // 10 :]  # past G.722's predictor settling
    assert peak_frequency(steady, rate) == pytest.approx(1000, abs=2)
    assert rms_db(steady) == pytest.approx(rms_db(sent[rate // 10 :]), abs=1.0)


# --- G.711 ---------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "ffmpeg"), [(PCMU, "pcm_mulaw"), (PCMA, "pcm_alaw")])
def test_g711_equals_ffmpeg_for_every_input_and_code(codec: PhoneCodec, ffmpeg: str) -> None:
    leg = G711Transcoder(codec)
    assert leg.encode(ALL_INPUTS) == ffmpeg_encode(ffmpeg, ALL_INPUTS)
    every_code = bytes(range(256))
    assert np.array_equal(leg.decode(every_code), ffmpeg_decode(ffmpeg, every_code))


@pytest.mark.parametrize("codec", [PCMU, PCMA], ids=lambda c: c.name)
def test_g711_codes_its_own_levels_back_to_themselves(codec: PhoneCodec) -> None:
    leg = G711Transcoder(codec)
    every_code = bytes(range(256))
    again = leg.encode(leg.decode(every_code))
    # mu-law has two zeros (0x7F, 0xFF); both decode to 0, which codes as 0xFF.
    differ = [(a, b) for a, b in zip(every_code, again, strict=True) if a != b]
    assert differ == ([(0x7F, 0xFF)] if codec is PCMU else [])


@pytest.mark.parametrize("codec", [PCMU, PCMA], ids=lambda c: c.name)
def test_g711_error_is_within_a_step(codec: PhoneCodec) -> None:
    leg = G711Transcoder(codec)
    inputs = ALL_INPUTS.astype(np.int32)
    error = np.abs(leg.decode(leg.encode(ALL_INPUTS)).astype(np.int32) - inputs)
    # 16 steps per segment, so a step is 1/16 of the segment's start (A-law's
    # first two segments: 16). Judged on 14 bits, rounded toward minus
    # infinity as FFmpeg does, a negative input can land one whole step off,
    # not just half. Past the last level (32124, 32256) the error is clipping.
    step = np.maximum(16, (np.abs(inputs) + 132) / 16)
    inside = np.abs(inputs) <= 32000
    assert np.all(error[inside] <= step[inside])
    assert error.max() <= 32768 - 32124


@given(st.binary(max_size=400))
def test_any_payload_decodes(payload: bytes) -> None:
    for codec in (PCMU, PCMA):
        assert transcoder(codec).decode(payload).shape == (len(payload),)


@given(st.binary(max_size=400))
def test_any_g722_payload_decodes_to_two_samples_a_byte(payload: bytes) -> None:
    assert transcoder(G722).decode(payload).shape == (2 * len(payload),)


# --- G.722 ---------------------------------------------------------------------


def test_g722_keeps_its_state_across_frames() -> None:
    sent = tone(440, 16000, 3200)
    leg = G722Transcoder()
    framewise = b"".join(leg.encode(f) for f in frames(sent, 320))
    assert framewise == G722Transcoder().encode(sent)
    whole = G722Transcoder().decode(framewise)
    decoder = G722Transcoder()
    pieces = np.concatenate([decoder.decode(framewise[i : i + 160]) for i in range(0, 1600, 160)])
    assert np.array_equal(pieces, whole)


def test_g722_takes_whole_sample_pairs() -> None:
    with pytest.raises(AudioFrameError):
        G722Transcoder().encode(np.zeros(319, dtype=np.int16))


def test_pcm_of_another_type_is_refused() -> None:
    leg = transcoder(PCMU)
    with pytest.raises(AudioFrameError) as caught:
        leg.encode(np.zeros(160, dtype=np.float32))  # type: ignore[arg-type]
    assert isinstance(caught.value, SipError)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(AudioFrameError):
        leg.encode(np.zeros((2, 80), dtype=np.int16))
    with pytest.raises(ValueError, match=r"not G\.711"):
        G711Transcoder(G722)


# --- resampling ----------------------------------------------------------------


def through(down: Downsampler, pcm: np.ndarray) -> np.ndarray:
    out = [down.resample(f) for f in frames(pcm, ROOM_FRAME)]
    assert all(o.shape == (down.to_rate // 50,) for o in out)
    return np.concatenate(out)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_down_keeps_a_1khz_tone(rate: int) -> None:
    down = Downsampler(rate)
    out = through(down, tone(1000, ROOM_RATE, ROOM_RATE))
    assert out.shape == (rate,)
    assert peak_frequency(out[rate // 10 :], rate) == pytest.approx(1000, abs=2)
    expected = tone(1000, rate, rate)
    assert rms_db(out[rate // 10 :]) == pytest.approx(rms_db(expected), abs=0.2)
    # Delayed by the filter's group delay, else the same signal.
    delay = round(down.delay * rate)
    residue = out[rate // 10 :].astype(np.int32) - expected[rate // 10 - delay : -delay]
    assert np.max(np.abs(residue)) < 10_000 * 0.02


@pytest.mark.parametrize("rate", [8000, 16000])
def test_what_would_fold_back_is_filtered_out(rate: int) -> None:
    # Above the low rate's Nyquist frequency, past the filter's transition:
    # without the filter it would fold back into the band at full level.
    above = 0.5 * rate * 1.15
    out = through(Downsampler(rate), tone(above, ROOM_RATE, ROOM_RATE))
    assert rms_db(out[rate // 10 :]) < rms_db(tone(1000, rate, rate)) - 50


@pytest.mark.parametrize("rate", [8000, 16000])
def test_frame_edges_do_not_click(rate: int) -> None:
    # The highest tone the phone band carries steps most between samples.
    out = through(Downsampler(rate), tone(3000, ROOM_RATE, ROOM_RATE // 2))
    steady = out[rate // 50 :].astype(np.int32)
    steps = np.abs(np.diff(steady))
    edges = np.arange(rate // 50, steady.shape[0], rate // 50) - 1
    # A tone's largest step is 2 pi f A / rate; no step at an edge exceeds it.
    bound = 2 * np.pi * 3000 * 10_000 / rate
    assert steps.max() <= bound * 1.02
    assert steps[edges].max() <= steps.max()


def test_a_frame_out_for_every_frame_in_from_the_first() -> None:
    down = Downsampler(16000)
    assert down.resample(np.zeros(ROOM_FRAME, dtype=np.int16)).shape == (320,)
    assert down.delay == pytest.approx(1e-3)
    assert Downsampler(8000).delay == pytest.approx(2e-3)


def test_full_scale_overshoot_saturates_and_does_not_wrap() -> None:
    # A full-scale square wave rings past full scale after the filter (Gibbs),
    # just after each edge: those samples must stay at full scale, sign kept.
    period = 240  # 200 Hz at 48 kHz
    square = np.where(np.arange(ROOM_RATE) % period < period // 2, 32767, -32768)
    down = Downsampler(8000)
    out = through(down, square.astype(np.int16)).astype(np.int32)
    delay = round(down.delay * 8000)
    expected = square[::6][: out.shape[0] - delay]
    settled = out[delay:]
    since_edge = np.arange(settled.shape[0]) % (period // 6 // 2)
    away = (since_edge > 4) & (since_edge < period // 12 - 4)
    away[:period] = False
    assert np.all(np.sign(settled[away]) == np.sign(expected[away]))
    assert np.all(np.abs(settled[away]) > 25_000)
    assert settled.max() == 32767
    assert settled.min() == -32768


@pytest.mark.parametrize("rate", [7000, 48000, 96000, 0])
def test_other_rates_are_refused(rate: int) -> None:
    with pytest.raises(ValueError, match="cannot resample"):
        Downsampler(rate)


def test_a_frame_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(AudioFrameError):
        Downsampler(8000).resample(np.zeros(959, dtype=np.int16))
