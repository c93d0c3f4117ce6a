"""The N-1 mixer: what each listener of a visit hears, one 20 ms tick at a time.

Sources (the room's other participants, decoded from Opus at 48 kHz; the
phone itself only listens, as the room hears it through the SFU) push frames of 960
samples whenever their decoders produce them: bunched, since an SFU's
packets and a decoder's scheduling arrive in bursts. Every 20 ms the
adapter calls :meth:`Mixer.mix`, and each listener gets the sum of every
source's frame for this tick except its own (a caller who heard their own
voice 40 ms late could not speak). The sum of all is taken once, in int32,
and each listener's own frame subtracted from it: one subtraction per
listener instead of N-1 additions. A listener who hears just one source
this tick gets that frame untouched: the usual case, a phone in a
one-to-one visit.

Each source has a queue, since its frames do not arrive on the tick. The
queue's depth is what it adds in delay, 20 ms a frame, so it is kept as
shallow as that source's arrivals allow, and no shallower:

* A new source (or one back from a pause) starts once it has ``target``
  frames queued, 2 at first.
* A tick that finds the queue empty contributes silence (an underrun, not a
  drop) and keeps the source's place: its next frame comes a tick later,
  so the underrun itself adds the frame of cushion that was missing. When
  frames come again within half a second it was the source's burstiness,
  not a pause, and its target grows by one frame (up to 15 frames).
* A queue that held more than its target before every tick for a whole
  second drains by skipping one frame, never more at once; a target not
  needed for 10 s (no underrun) comes down by one frame, to one.
* Only past a hard cap of 20 frames (400 ms: a burst of 15 on top of a
  cushion) are frames dropped, the oldest first.

Lesson from other bridges: a fixed queue of 5 frames dropped 172 of 602
frames on bursty input, one of 15 dropped none, but every frame held adds
20 ms for everyone; hence a depth per source that adapts.

The sum is limited softly (see :func:`soft_limit`) rather than wrapped or
clipped hard when two loud sources add past full scale.

Ticks are counted, not timed, so the mixer needs no clock: the adapter's
20 ms timer is its clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sip.audio.pcm import ROOM_FRAME, Pcm, check_pcm

__all__ = ["Mixer", "SourceStats", "soft_limit"]

_INITIAL_TARGET = 2
_MIN_TARGET = 1
_MAX_TARGET = 15
_HARD_CAP = 20
_PAUSE = 25  # ticks without a frame after which a source has paused, not jittered
_DRAIN_WINDOW = 50  # ticks the queue must stay above target before one skip
_TARGET_DECAY = 500  # ticks without an underrun before the target comes down

_FULL_SCALE = 32767
#: Below this the limiter leaves samples alone; above, it bends them toward full scale.
_KNEE = 24576  # -2.5 dBFS


def soft_limit(mixed: npt.NDArray[np.int32]) -> Pcm:
    """``mixed`` as int16 without wrapping or a hard edge: samples within
    the knee (3/4 of full scale) pass unchanged, louder ones are bent by a
    tanh curve that approaches full scale but never reaches it. A
    memoryless curve distorts a little above the knee, which is only
    reached by two people talking loudly at once; a limiter with attack and
    release would avoid even that at the cost of state per listener."""
    peak = int(np.max(np.abs(mixed))) if mixed.shape[0] else 0
    if peak <= _KNEE:
        return mixed.astype(np.int16)
    magnitude = np.abs(mixed).astype(np.float32)
    room = _FULL_SCALE - _KNEE
    bent = _KNEE + room * np.tanh((magnitude - _KNEE) / room)
    limited = np.where(magnitude > _KNEE, bent, magnitude) * np.sign(mixed)
    out: Pcm = np.rint(limited).astype(np.int16)
    return out


@dataclass(frozen=True, slots=True)
class SourceStats:
    """One source's queue, counted since it was added."""

    mixed: int
    """Ticks its frame was in the mix."""
    underruns: int
    """Ticks it had no frame for while playing (silence in its place)."""
    skipped: int
    """Frames skipped, one at a time, to bring a deep queue back to target."""
    dropped: int
    """Frames dropped because the queue was at its hard cap."""
    depth: int
    """Frames queued now."""
    target: int
    """Frames it aims to hold before each tick."""


class _Source:
    __slots__ = (
        "dropped",
        "frames",
        "listens",
        "low_water",
        "mixed",
        "playing",
        "since_underrun",
        "skipped",
        "starved",
        "target",
        "underruns",
        "watched",
    )

    def __init__(self, listens: bool) -> None:
        self.listens = listens
        self.frames: deque[Pcm] = deque()
        self.target = _INITIAL_TARGET
        self.playing = False
        self.starved = 0  # ticks in a row with nothing queued
        self.low_water = _HARD_CAP  # least queued before a tick, this window
        self.watched = 0  # ticks of this window
        self.since_underrun = 0
        self.mixed = self.underruns = self.skipped = self.dropped = 0

    def take(self) -> Pcm | None:
        """This tick's frame, or ``None`` (silence)."""
        depth = len(self.frames)
        if not self.playing:
            if depth < self.target or not depth:
                return None
            self.playing = True
        if not depth:
            self.underruns += 1
            self.starved += 1
            self.since_underrun = 0
            if self.starved > _PAUSE:
                # A pause, not jitter: start again at the target when it ends.
                self.playing, self.starved = False, 0
            return None
        if self.starved:
            # Frames again soon after running dry: arrivals bunch more than
            # the target allowed for.
            self.target = min(self.target + 1, _MAX_TARGET)
            self.starved = 0
        self.since_underrun += 1
        if self.since_underrun >= _TARGET_DECAY and self.target > _MIN_TARGET:
            self.target -= 1
            self.since_underrun = 0
        self.low_water = min(self.low_water, depth)
        self.watched += 1
        if self.watched >= _DRAIN_WINDOW:
            if self.low_water > self.target and depth > 1:
                self.frames.popleft()
                self.skipped += 1
            self.low_water, self.watched = _HARD_CAP, 0
        self.mixed += 1
        return self.frames.popleft()


class Mixer:
    """The N-1 mix of one visit's audio at 48 kHz (frames of
    :data:`~sip.audio.pcm.ROOM_FRAME` samples). Sources are keyed by any
    hashable id; a source that ``listens`` gets a mix of all the others."""

    def __init__(self) -> None:
        self._sources: dict[Hashable, _Source] = {}

    def add_source(self, source: Hashable, *, listens: bool = True) -> None:
        """A new source (and listener, unless ``listens`` is false: a room
        participant hears the room through the SFU, only phones need the
        mix). Adding one already there keeps its queue and counts."""
        if source not in self._sources:
            self._sources[source] = _Source(listens)
        self._sources[source].listens = listens

    def remove_source(self, source: Hashable) -> None:
        """Forget a source: from the next tick no mix holds it."""
        self._sources.pop(source, None)

    def push(self, source: Hashable, pcm: Pcm) -> None:
        """One decoded frame of ``source``. A frame of a source not (or no
        longer) in the mix is ignored: one decoded as its participant left."""
        check_pcm(pcm, samples=ROOM_FRAME)
        queue = self._sources.get(source)
        if queue is None:
            return
        if len(queue.frames) >= _HARD_CAP:
            queue.frames.popleft()
            queue.dropped += 1
        queue.frames.append(pcm)

    def mix(self) -> dict[Hashable, Pcm]:
        """One tick: each listening source's mix of everyone else. A
        listener who hears one other source this tick (a phone in a
        one-to-one visit) gets that frame as it is: nothing was added, so
        nothing can overflow or need limiting."""
        frames: dict[Hashable, Pcm] = {}
        for source, queue in self._sources.items():
            frame = queue.take()
            if frame is not None:
                frames[source] = frame
        mixes: dict[Hashable, Pcm] = {}
        total: npt.NDArray[np.int32] | None = None
        for source, queue in self._sources.items():
            if not queue.listens:
                continue
            own = frames.get(source)
            others = len(frames) - (own is not None)
            if others == 0:
                mixes[source] = np.zeros(ROOM_FRAME, dtype=np.int16)
            elif others == 1:
                mixes[source] = next(f for s, f in frames.items() if s != source)
            else:
                if total is None:
                    total = np.zeros(ROOM_FRAME, dtype=np.int32)
                    for frame in frames.values():
                        total += frame
                mixes[source] = soft_limit(total - own if own is not None else total)
        return mixes

    def stats(self, source: Hashable) -> SourceStats:
        """``source``'s counts (``KeyError`` if it is not in the mix)."""
        queue = self._sources[source]
        return SourceStats(
            mixed=queue.mixed,
            underruns=queue.underruns,
            skipped=queue.skipped,
            dropped=queue.dropped,
            depth=len(queue.frames),
            target=queue.target,
        )

    @property
    def sources(self) -> list[Hashable]:
        return list(self._sources)
