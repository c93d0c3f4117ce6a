"""The prompts as audio: a clinic's own recordings, else synthesised speech.

The IVR names what to say by a key of :data:`sip.calls.prompts.PROMPTS`
and a language; :class:`Voice` gives the samples a phone leg plays
(:meth:`sip.node.leg.PhoneLeg.play`) at the codec's rate:

* a clinic's recording ``<recordings_dir>/<language>/<prompt>.wav`` where
  there is one (a human voice is better than any synthesis): mono 16-bit
  WAV at any rate;
* else the prompt's text spoken by ``espeak-ng`` in that language's voice
  (``en``, ``ur``, ``ar``; the language menu speaks each of its lines in
  its own voice). Slower than espeak's default, as phone callers hear a
  prompt once on a narrow line.

Synthesis runs as a subprocess (``asyncio.create_subprocess_exec``) and
resampling in a thread, never on the loop. What was made is kept in memory
per (prompt, language, rate) and on disk, under a name that includes a hash
of the words and the voice, so a restart does not synthesise again and a
changed prompt text is not served stale. :meth:`Voice.prepare` makes every
prompt at start; a bridge with neither ``espeak-ng`` nor recordings fails
there (:class:`~sip.errors.VoiceUnavailableError`), not at its first call.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import wave
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from sip.audio.pcm import Pcm
from sip.calls.prompts import PROMPTS
from sip.errors import VoiceError, VoiceUnavailableError

__all__ = ["ESPEAK", "Voice", "default_cache_dir"]

ESPEAK = "espeak-ng"
#: Words per minute: espeak's default is 175, brisk for a phone line.
_SPEED = 150
#: The pause between the language menu's lines, seconds.
_MENU_PAUSE = 0.4
#: Subprocesses of espeak at once: it is single-threaded and quick (tens
#: of milliseconds a sentence), so a few keep the cores busy at start.
_CONCURRENCY = 4
#: Part of every cache file's hash: bump it when the audio made changes.
_FORMAT = "1"


def default_cache_dir() -> Path:
    """Where synthesised prompts are kept between runs: the XDG cache."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wadud" / "prompts"


def _lines(prompt: str, language: str) -> list[tuple[str, str]]:
    """(voice, words) to speak in turn: the menu's lines each in its own language."""
    texts = PROMPTS[prompt]
    if prompt == "language":
        return list(texts.items())
    return [(language, texts[language])]


def read_wav(data: bytes, source: str) -> tuple[Pcm, int]:
    """The samples and rate of a mono 16-bit WAV. espeak's ``--stdout``
    writes sizes for a stream of unknown length (about 2**31): what the
    file holds is read, whatever its header says."""
    try:
        with wave.open(io.BytesIO(data)) as reader:
            if reader.getnchannels() != 1 or reader.getsampwidth() != 2:
                raise VoiceError(
                    f"{source}: {reader.getnchannels()} channels of"
                    f" {8 * reader.getsampwidth()} bits, not mono 16-bit"
                )
            rate = reader.getframerate()
            frames = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as exc:
        raise VoiceError(f"{source}: not a WAV file ({exc})") from exc
    frames = frames[: len(frames) // 2 * 2]
    return np.frombuffer(frames, dtype="<i2").astype(np.int16), rate


def write_wav(path: Path, pcm: Pcm, rate: int) -> None:
    """``pcm`` as a mono 16-bit WAV, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    with wave.open(str(partial), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm.astype("<i2").tobytes())
    partial.replace(path)


def resample(pcm: Pcm, from_rate: int, to_rate: int) -> Pcm:
    """``pcm`` at ``to_rate``, by FFmpeg's resampler (offline, once per
    prompt: its quality matters, its cost per call does not)."""
    if from_rate == to_rate or not pcm.shape[0]:
        return pcm
    import av  # the server's modules import without PyAV

    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = from_rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=to_rate)
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.int16)


class Voice:
    """The bridge's prompts as PCM (see the module docstring).

    ``recordings_dir``: the clinic's recordings, or None; ``cache_dir``:
    where synthesised prompts are kept (:func:`default_cache_dir` unless
    given); ``espeak``: the synthesiser's command.
    """

    def __init__(
        self,
        recordings_dir: Path | None,
        *,
        cache_dir: Path | None = None,
        espeak: str = ESPEAK,
    ) -> None:
        self.recordings_dir = recordings_dir
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self.espeak = espeak
        self._made: dict[tuple[str, str, int], Pcm] = {}
        self.synthesised = 0
        """Prompts spoken by espeak-ng in this process (the rest came from
        recordings or the disk cache)."""

    def recording(self, prompt: str, language: str) -> Path | None:
        """The clinic's recording of ``prompt`` in ``language``, if there is one."""
        if self.recordings_dir is None:
            return None
        path = self.recordings_dir / language / f"{prompt}.wav"
        return path if path.is_file() else None

    def _cached(self, prompt: str, language: str, rate: int) -> Path:
        digest = hashlib.sha256(
            repr((_FORMAT, _SPEED, _MENU_PAUSE, _lines(prompt, language))).encode()
        ).hexdigest()[:16]
        return self.cache_dir / language / f"{prompt}.{rate}.{digest}.wav"

    def pcm(self, prompt: str, language: str, rate: int) -> Pcm:
        """``prompt`` (a key of :data:`~sip.calls.prompts.PROMPTS`) in
        ``language`` at ``rate`` Hz, read-only. Made by :meth:`prepare`; a
        recording or a cached file not yet in memory is read here (a few
        milliseconds); speech never synthesised raises
        :class:`~sip.errors.VoiceError` rather than block the loop."""
        key = (prompt, language, rate)
        made = self._made.get(key)
        if made is not None:
            return made
        _lines(prompt, language)  # KeyError for a prompt or language there is no text for
        recording = self.recording(prompt, language)
        if recording is not None:
            pcm, source_rate = read_wav(recording.read_bytes(), str(recording))
            return self._keep(key, resample(pcm, source_rate, rate))
        cached = self._cached(prompt, language, rate)
        if cached.is_file():
            pcm, _ = read_wav(cached.read_bytes(), str(cached))
            return self._keep(key, pcm)
        raise VoiceError(f"prompt {prompt!r} in {language!r} at {rate} Hz was not prepared")

    def _keep(self, key: tuple[str, str, int], pcm: Pcm) -> Pcm:
        pcm.setflags(write=False)
        self._made[key] = pcm
        return pcm

    async def prepare(
        self, languages: Iterable[str] = ("en", "ur", "ar"), rates: Iterable[int] = (8000, 16000)
    ) -> None:
        """Make every prompt in ``languages`` at each of ``rates`` (the
        codecs' rates: 8000 for G.711, 16000 for G.722), synthesising what
        neither a recording nor the disk cache has. Raises
        :class:`~sip.errors.VoiceUnavailableError` before any work when
        something must be synthesised and ``espeak-ng`` is not installed,
        :class:`~sip.errors.VoiceError` when a recording is unreadable or
        synthesis fails."""
        rates = tuple(rates)
        wanted = [(p, lang) for p in PROMPTS for lang in languages]
        missing = [
            (p, lang)
            for p, lang in wanted
            if self.recording(p, lang) is None
            and not all(self._cached(p, lang, r).is_file() for r in rates)
        ]
        if missing and shutil.which(self.espeak) is None:
            names = ", ".join(f"{p}/{lang}" for p, lang in missing[:5])
            raise VoiceUnavailableError(
                f"{self.espeak} is not installed and {len(missing)} prompts have no"
                f" recording ({names}...): the bridge cannot speak"
            )
        limit = asyncio.Semaphore(_CONCURRENCY)
        async with asyncio.TaskGroup() as group:
            for prompt, language in wanted:
                group.create_task(self._prepare_one(prompt, language, rates, limit))

    async def _prepare_one(
        self, prompt: str, language: str, rates: tuple[int, ...], limit: asyncio.Semaphore
    ) -> None:
        todo = [r for r in rates if (prompt, language, r) not in self._made]
        recording = self.recording(prompt, language)
        if recording is not None or all(self._cached(prompt, language, r).is_file() for r in todo):
            # Reading and resampling a recording is file work: off the loop.
            for rate in todo:
                await asyncio.to_thread(self.pcm, prompt, language, rate)
            return
        async with limit:
            speech, source_rate = await self._speak(prompt, language)
        self.synthesised += 1
        for rate in todo:
            pcm = await asyncio.to_thread(resample, speech, source_rate, rate)
            await asyncio.to_thread(write_wav, self._cached(prompt, language, rate), pcm, rate)
            self._keep((prompt, language, rate), pcm)

    async def _speak(self, prompt: str, language: str) -> tuple[Pcm, int]:
        """The prompt spoken by espeak-ng, at the rate it speaks (22050 Hz)."""
        parts: list[Pcm] = []
        rate = 0
        for voice, words in _lines(prompt, language):
            process = await asyncio.create_subprocess_exec(
                self.espeak, "-v", voice, "-s", str(_SPEED), "--stdout", words,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await process.communicate()
            if process.returncode != 0:
                message = err.decode(errors="replace").strip()[:200]
                raise VoiceError(f"{self.espeak} -v {voice} failed: {message}")
            pcm, rate = read_wav(out, f"{self.espeak} -v {voice}")
            if parts:
                parts.append(np.zeros(round(_MENU_PAUSE * rate), dtype=np.int16))
            parts.append(pcm)
        return np.concatenate(parts), rate
