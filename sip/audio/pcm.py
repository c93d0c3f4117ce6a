"""PCM as the phone leg's audio handles it: int16 mono in 20 ms frames.

Every part of ``sip.audio`` works on one frame of 20 ms at a time
(:data:`sip.formats.FRAME_MS`). The room side
is 48 kHz (Opus's rate, RFC 7587 section 4), so a room frame is 960 samples.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from sip.errors import AudioFrameError
from sip.formats import frame_samples

__all__ = ["ROOM_FRAME", "ROOM_RATE", "Pcm", "check_pcm"]

Pcm = npt.NDArray[np.int16]
"""Mono PCM: one-dimensional, int16, full scale +-32767."""

ROOM_RATE = 48_000
ROOM_FRAME = frame_samples(ROOM_RATE)


def check_pcm(pcm: npt.NDArray[np.generic], samples: int | None = None, multiple: int = 1) -> Pcm:
    """``pcm`` as :data:`Pcm`, or :class:`AudioFrameError` when it is another
    dtype or shape, not ``samples`` long, or not a multiple of ``multiple``.
    A caller's mistake is raised here, at the edge, rather than turning into
    a wrong-length frame three steps later."""
    if pcm.dtype != np.int16 or pcm.ndim != 1:
        raise AudioFrameError(f"PCM must be 1-D int16, not {pcm.ndim}-D {pcm.dtype}")
    if samples is not None and pcm.shape[0] != samples:
        raise AudioFrameError(f"a frame of {samples} samples was expected, not {pcm.shape[0]}")
    if pcm.shape[0] % multiple:
        raise AudioFrameError(f"{pcm.shape[0]} samples is not a multiple of {multiple}")
    return pcm.view(np.int16)
