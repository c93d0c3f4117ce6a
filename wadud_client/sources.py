"""Synthetic media for a headless participant: a moving test pattern and a
tone, each handing out frames in real time as a camera or microphone would."""

from __future__ import annotations

import asyncio
import fractions
import math
import os
import struct
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

__all__ = ["Intake", "TestPatternVideo", "ToneAudio"]


class _PacedTrack(MediaStreamTrack):
    """A synthetic source that hands out frames in real time, one every
    ``interval`` seconds from its first ``recv()``, as a camera or microphone
    would; :meth:`_next_frame` waits for the next one's turn."""

    interval: float

    def __init__(self) -> None:
        super().__init__()
        self._count = 0
        self._start: float | None = None

    @property
    def frames_out(self) -> int:
        """Frames handed out so far (fewer than real time allows when the
        encoder that reads them falls behind)."""
        return self._count

    async def _next_frame(self) -> int:
        """Wait until the next frame is due; its index."""
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        delay = self._start + self._count * self.interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        n = self._count
        self._count += 1
        return n


class TestPatternVideo(_PacedTrack):
    """Moving bars and a ``noise`` x ``noise`` patch of noise, so the encoder
    has work to do: a still or simply moving picture encodes to a few hundred
    bytes a frame, one packet, and never exercises loss recovery the way a
    camera's multi-packet frames do."""

    kind = "video"
    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self, width: int = 320, height: int = 240, fps: float = 15.0, noise: int = 64
    ) -> None:
        super().__init__()
        self.noise = noise
        self.width = width - width % 2
        self.height = height - height % 2
        self.fps = fps
        self.interval = 1 / fps
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        # One luma row twice as long as the picture: each frame shows a
        # different window of it, so the bars slide sideways.
        luma_line = frame.planes[0].line_size
        self._luma_row = bytes(
            40 if (x // 32) % 2 else 60 + (x * 160) // (2 * luma_line) for x in range(2 * luma_line)
        )
        self._chroma = [
            bytes([(90 + 60 * i) & 0xFF]) * p.buffer_size for i, p in enumerate(frame.planes[1:])
        ]
        self._luma_line = luma_line

    async def recv(self) -> Any:
        n = await self._next_frame()
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        shift = (n * 4) % self._luma_line
        row = self._luma_row[shift : shift + self._luma_line]
        # A band that moves down, so motion is two-dimensional.
        band = (n * 2) % self.height
        rows = [row] * self.height
        for y in range(band, min(self.height, band + 8)):
            rows[y] = b"\xeb" * self._luma_line
        if self.noise:
            # A patch of fresh noise each frame: it cannot be predicted, so
            # every frame spans several RTP packets, as a camera's does.
            width = min(self._luma_line, self.noise)
            for y in range(min(self.height, self.noise)):
                rows[y] = os.urandom(width) + rows[y][width:]
        frame.planes[0].update(b"".join(rows))
        for plane, data in zip(frame.planes[1:], self._chroma, strict=True):
            plane.update(data)
        frame.pts = int(n * 90_000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90_000)
        return frame


class ToneAudio(_PacedTrack):
    """A 400 Hz tone in 20 ms frames of 48 kHz mono (400 Hz fits a 20 ms frame
    a whole number of times, so one frame's samples serve for all)."""

    kind = "audio"

    def __init__(self, frequency: int = 400, level: float = 0.3) -> None:
        super().__init__()
        self.rate = 48_000
        self.samples = 960
        self.interval = self.samples / self.rate
        amplitude = int(32767 * level)
        self._pcm = struct.pack(
            f"<{self.samples}h",
            *(
                int(amplitude * math.sin(2 * math.pi * frequency * i / self.rate))
                for i in range(self.samples)
            ),
        )

    async def recv(self) -> Any:
        n = await self._next_frame()
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.samples)
        frame.planes[0].update(self._pcm)
        frame.sample_rate = self.rate
        frame.pts = n * self.samples
        frame.time_base = fractions.Fraction(1, self.rate)
        return frame


class Intake(MediaStreamTrack):
    """A client's own reading end of a track it was given to publish.

    aiortc's MediaRelay reads its source until the source itself ends,
    whoever still listens; the source is the caller's, and may outlive the
    client or serve the next one. The relay reads an Intake instead, and
    stopping the Intake (the client closed, or no longer publishes that
    source) ends the relay's reading at the next frame while the source
    stays live."""

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self.source = source

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self.source.recv()
        if self.readyState != "live":
            raise MediaStreamError  # stopped while the frame was due
        return frame
