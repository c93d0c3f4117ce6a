"""A side-by-side composite of a visit's participants: the one recording
file that is transcoded, and only ever by the recorder (never on a media
node), when ``recording_composite`` is on.

Input: the participants' WebM files that :func:`recording.remux.remux`
wrote, which share one time line (each participant's zero is the earliest
first packet of that participant; the recorder passes each file's offset
from the visit's earliest). Output: one WebM, VP8 and Opus, every
participant's picture scaled to one tile height and placed left to right
(``hstack``), their sound mixed (``amix``). Frames are streamed: one
decoded frame per participant is held at a time, however long the visit.

A participant without video (or before their first frame) is a black tile;
without sound, silence.
"""

from __future__ import annotations

import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from recording.errors import RemuxError

__all__ = ["Source", "composite"]

_RATE = 48_000
_CHUNK = 960  # 20 ms


@dataclass(frozen=True)
class Source:
    """One participant's file and where its zero lies on the visit's time
    line (seconds after the visit's earliest first packet)."""

    path: Path
    offset: float


def _video_frames(av: Any, src: Source) -> Iterator[tuple[float, Any]]:
    with av.open(str(src.path)) as f:
        if not f.streams.video:
            return
        for frame in f.decode(video=0):
            if frame.pts is None or frame.time_base is None:
                continue
            yield src.offset + float(frame.pts * frame.time_base), frame


def _audio_chunks(av: Any, src: Source) -> Iterator[bytes]:
    """The participant's sound as s16 mono 48 kHz from the visit's zero, in
    20 ms chunks, gaps (and the time before they spoke) filled with silence."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=_RATE)
    cursor = 0  # samples written so far
    pending = b""
    with av.open(str(src.path)) as f:
        frames = f.decode(audio=0) if f.streams.audio else iter(())
        for frame in frames:
            if frame.pts is None or frame.time_base is None:
                continue
            start = round((src.offset + float(frame.pts * frame.time_base)) * _RATE)
            for out in resampler.resample(frame):
                data = bytes(out.planes[0])[: out.samples * 2]
                if start > cursor + len(pending) // 2:
                    pending += bytes(2 * (start - cursor - len(pending) // 2))
                elif start < cursor + len(pending) // 2:
                    data = data[2 * (cursor + len(pending) // 2 - start) :]
                pending += data
                start += out.samples
                while len(pending) >= 2 * _CHUNK:
                    yield pending[: 2 * _CHUNK]
                    pending = pending[2 * _CHUNK :]
                    cursor += _CHUNK


def composite(
    sources: Sequence[Source], path: Path, *, tile_height: int = 360, fps: int = 15
) -> float:
    """Write the composite of ``sources`` at ``path``; return its duration
    in seconds. :class:`RemuxError` when there is nothing to compose."""
    import av

    if not sources:
        raise RemuxError("no participant to compose")
    tile_w = tile_height * 4 // 3
    tile_w -= tile_w % 2
    n = len(sources)
    tb = Fraction(1, fps)
    with av.open(str(path), "w", format="webm") as out:
        # Realtime speed: a composite is a viewing copy, not an archive master.
        vs = out.add_stream("libvpx", rate=fps, options={"deadline": "realtime", "cpu-used": "8"})
        vs.width, vs.height = tile_w * n, tile_height
        vs.pix_fmt = "yuv420p"
        vs.codec_context.time_base = tb
        vs.codec_context.bit_rate = 400_000 * n
        aus = out.add_stream("libopus", rate=_RATE)
        aus.layout = "mono"

        # Video: at each tick, each participant's latest frame (black before
        # their first), stacked left to right.
        black = av.VideoFrame(tile_w, tile_height, "yuv420p")
        for plane, value in zip(black.planes, (16, 128, 128), strict=True):
            plane.update(bytes([value]) * plane.buffer_size)
        graph = av.filter.Graph()
        inputs = [
            graph.add_buffer(width=tile_w, height=tile_height, format=black.format, time_base=tb)
            for _ in range(n)
        ]
        sink = graph.add("buffersink")
        if n == 1:
            inputs[0].link_to(sink)
        else:
            stack = graph.add("hstack", f"inputs={n}")
            for i, node in enumerate(inputs):
                node.link_to(stack, 0, i)
            stack.link_to(sink)
        graph.configure()
        feeds = [_video_frames(av, s) for s in sources]
        ahead: list[tuple[float, Any] | None] = [next(f, None) for f in feeds]
        shown: list[Any] = [black] * n
        chunks = [_audio_chunks(av, s) for s in sources]
        sound = True
        written = 0  # audio samples

        def audio_until(t: float) -> None:
            # Each participant's 20 ms chunks summed, in step with the picture.
            nonlocal sound, written
            while sound and written < t * _RATE:
                parts = [p for p in (next(c, None) for c in chunks) if p is not None]
                if not parts:
                    sound = False
                    return
                frame = av.AudioFrame(format="s16", layout="mono", samples=_CHUNK)
                frame.planes[0].update(_mix(parts))
                frame.sample_rate = _RATE
                frame.pts, frame.time_base = written, Fraction(1, _RATE)
                written += _CHUNK
                for packet in aus.encode(frame):
                    out.mux(packet)

        tick = 0
        while any(a is not None for a in ahead):
            t = tick / fps
            for i in range(n):
                latest = None
                while ahead[i] is not None and ahead[i][0] <= t:  # type: ignore[index]
                    latest = ahead[i][1]  # type: ignore[index]
                    ahead[i] = next(feeds[i], None)
                if latest is not None:
                    shown[i] = latest.reformat(width=tile_w, height=tile_height, format="yuv420p")
            for i, node in enumerate(inputs):
                frame = shown[i]
                frame.pts, frame.time_base = tick, tb
                node.push(frame)
            stacked = sink.pull()
            assert isinstance(stacked, av.VideoFrame)
            stacked.pts, stacked.time_base = tick, tb
            for packet in vs.encode(stacked):
                out.mux(packet)
            audio_until(t)
            tick += 1
        for packet in vs.encode(None):
            out.mux(packet)
        audio_until(float("inf"))
        for packet in aus.encode(None):
            out.mux(packet)
    return max(tick / fps, written / _RATE)


def _mix(parts: Sequence[bytes]) -> bytes:
    """Sum of s16 buffers, clipped (pure Python: a composite is optional and
    off the media path; about a second of CPU per minute of a visit)."""
    if len(parts) == 1:
        return parts[0]
    columns = zip(*(array.array("h", p) for p in parts), strict=True)
    return array.array("h", [max(-32768, min(32767, sum(c))) for c in columns]).tobytes()
