"""What a client receives: one :class:`ReceivedTrack` per m= section of its
subscribe connection, with the frames aiortc decoded on it counted and timed."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import av

__all__ = ["ReceivedTrack"]


@dataclass
class ReceivedTrack:
    """A track this client receives on its subscribe connection: which m=
    section (``mid``) carries it, whose it is (from the ``tracks`` of the
    server's ``offer``), and what arrived. Times are ``time.monotonic()``."""

    mid: str
    track_id: str
    participant: str
    kind: str
    source: str
    track: Any = None  # aiortc's RemoteStreamTrack
    active: bool = True
    frames: int = 0
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    max_gap: float = 0.0
    #: Recent frame arrival times, newest last.
    frame_times: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    width: int | None = None
    height: int | None = None

    def reset_gap(self) -> None:
        """Start a new window for :attr:`max_gap` (e.g. after warm-up)."""
        self.max_gap = 0.0

    def frame_received(self, frame: Any, now: float) -> None:
        """Count one decoded frame that arrived at ``now``."""
        if self.last_frame_at is not None:
            self.max_gap = max(self.max_gap, now - self.last_frame_at)
        else:
            self.first_frame_at = now
        self.last_frame_at = now
        self.frames += 1
        self.frame_times.append(now)
        if isinstance(frame, av.VideoFrame):
            self.width, self.height = frame.width, frame.height
