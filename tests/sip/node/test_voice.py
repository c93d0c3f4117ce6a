"""The prompts as audio (sip/node/voice.py): every prompt spoken by the real
espeak-ng in English, Urdu and Arabic; a clinic's recording preferred;
the disk cache spares a restart the synthesis; a bridge that cannot speak
is told so at start."""

from __future__ import annotations

import asyncio
import itertools
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from sip.calls.prompts import PROMPTS
from sip.errors import VoiceError, VoiceUnavailableError
from sip.node.voice import Voice
from tests.sip.audio.signals import peak_frequency, rms_db, tone

LANGUAGES = ("en", "ur", "ar")


def record(path: Path, pcm: np.ndarray, rate: int, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(np.repeat(pcm, channels).astype("<i2").tobytes())


async def test_every_prompt_is_spoken_in_every_language(tmp_path: Path) -> None:
    voice = Voice(None, cache_dir=tmp_path / "cache")
    await voice.prepare(LANGUAGES, (8000, 16000))
    # The language menu is one prompt whichever language asks for it.
    assert voice.synthesised == len(PROMPTS) * len(LANGUAGES)
    for prompt in PROMPTS:
        for language in LANGUAGES:
            narrow = voice.pcm(prompt, language, 8000)
            wide = voice.pcm(prompt, language, 16000)
            assert narrow.dtype == np.int16 and narrow.ndim == 1
            assert 0.5 <= narrow.shape[0] / 8000 <= 15, (prompt, language)
            assert abs(wide.shape[0] / 16000 - narrow.shape[0] / 8000) < 0.01
            assert rms_db(narrow) > 60, (prompt, language)  # about -30 dBFS or louder
            assert not narrow.flags.writeable
    menu = voice.pcm("language", "en", 8000).shape[0]
    assert menu > voice.pcm("joined", "en", 8000).shape[0]
    # The same prompt in another language is other audio.
    assert voice.pcm("joined", "en", 8000).shape != voice.pcm("joined", "ar", 8000).shape


async def test_a_clinics_recording_is_preferred(tmp_path: Path) -> None:
    recordings = tmp_path / "recordings"
    record(recordings / "en" / "joined.wav", tone(440, 22050, 22050), 22050)
    voice = Voice(recordings, cache_dir=tmp_path / "cache")
    await voice.prepare(["en"], [8000])
    joined = voice.pcm("joined", "en", 8000)
    assert abs(joined.shape[0] - 8000) <= 16
    assert abs(peak_frequency(joined, 8000) - 440) < 5
    assert voice.synthesised == len(PROMPTS) - 1
    # Urdu has no recording of it: espeak speaks it (prepared on demand).
    with pytest.raises(VoiceError):
        voice.pcm("joined", "ur", 8000)


async def test_a_recording_that_is_not_mono_16_bit_is_refused(tmp_path: Path) -> None:
    recordings = tmp_path / "recordings"
    record(recordings / "en" / "goodbye.wav", tone(440, 8000, 8000), 8000, channels=2)
    voice = Voice(recordings, cache_dir=tmp_path / "cache")
    with pytest.raises(VoiceError, match="mono"):
        voice.pcm("goodbye", "en", 8000)


async def test_the_disk_cache_spares_a_restart_the_synthesis(tmp_path: Path) -> None:
    first = Voice(None, cache_dir=tmp_path / "cache")
    await first.prepare(["en", "ar"], [8000])
    assert first.synthesised == 2 * len(PROMPTS)
    # A restart on a machine that has lost espeak-ng: the cache speaks.
    second = Voice(None, cache_dir=tmp_path / "cache", espeak="/nonexistent/espeak-ng")
    await second.prepare(["en", "ar"], [8000])
    assert second.synthesised == 0
    for prompt in PROMPTS:
        assert np.array_equal(second.pcm(prompt, "ar", 8000), first.pcm(prompt, "ar", 8000))


async def test_without_espeak_or_recordings_the_bridge_fails_at_start(tmp_path: Path) -> None:
    voice = Voice(None, cache_dir=tmp_path / "cache", espeak="/nonexistent/espeak-ng")
    with pytest.raises(VoiceUnavailableError, match="cannot speak"):
        await voice.prepare(["en"], [8000])
    # With a recording of every prompt, espeak-ng is not needed.
    recordings = tmp_path / "recordings"
    for prompt in PROMPTS:
        record(recordings / "en" / f"{prompt}.wav", tone(300, 16000, 8000), 16000)
    voice = Voice(recordings, cache_dir=tmp_path / "cache", espeak="/nonexistent/espeak-ng")
    await voice.prepare(["en"], [8000, 16000])
    assert voice.pcm("goodbye", "en", 16000).shape[0] == 8000


async def test_prepare_does_not_block_the_loop(tmp_path: Path) -> None:
    """Synthesis is subprocesses and threads: a 20 ms clock keeps its pace.

    A gap in the clock is the prepare's fault only when the loop's thread
    spent it working (its CPU time rose by most of the gap); a gap in which
    it did not run at all is the machine's (a busy CI worker descheduling
    the process), which no code of ours can prevent."""
    loop = asyncio.get_running_loop()
    ticks: list[tuple[float, float]] = []

    async def clock() -> None:
        while True:
            ticks.append((loop.time(), time.thread_time()))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(clock())
    try:
        await Voice(None, cache_dir=tmp_path / "cache").prepare(LANGUAGES, (8000,))
    finally:
        task.cancel()
    assert len(ticks) > 5
    held = [
        (round(t1 - t0, 3), round(c1 - c0, 3))
        for (t0, c0), (t1, c1) in itertools.pairwise(ticks)
        if t1 - t0 > 0.1 and c1 - c0 > (t1 - t0) / 2
    ]
    assert held == [], "the loop's thread was kept busy (gap s, its CPU s)"
