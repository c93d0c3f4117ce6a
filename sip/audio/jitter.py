"""An adaptive jitter buffer for the phone's incoming RTP (RFC 3550, RFC 3551).

The phone sends one packet per 20 ms; the network delivers them late,
bunched, out of order, twice or not at all. The adapter calls :meth:`put`
for each audio packet as it arrives and :meth:`JitterBuffer.pop` on its own
steady 20 ms clock; ``pop`` gives the payload to decode for that tick, or
``None`` for "nothing to play: conceal" (:class:`sip.audio.conceal.Concealer`).

Playout follows the sender's timestamps, in sequence order: each tick plays
the next slot of 20 ms of the sender's clock (``_play_ts``), so a lost
packet costs exactly its slot, and a packet whose slot has passed is late
(counted and dropped: played now it would push everything after it back).
Sequence numbers (16 bits) and timestamps (32 bits) are unwrapped to
integers as RFC 3550 appendix A.1 does, so wrap needs no special case.

How long to hold packets (the target) comes from the delay each packet
took relative to the fastest recent one, ``arrival - timestamp / rate``
less its minimum, the relative transit of RFC 3550 section 6.4.1:

* The spread of that over the last 5 s (its 95th percentile) is what the
  buffer must absorb; the target is that, rounded up to whole frames,
  between 20 and 200 ms. It grows at once when a packet that arrives in
  time shows more spread (a burst: packets held, then released together),
  and shrinks by at most one frame per half second once the window forgets.
  A single packet that comes after its slot does not raise it at once
  (that would make one stray packet cost seconds of delay for everyone);
  if such packets keep coming they lift the percentile.
* The delay actually held follows the target one frame at a time: when the
  buffer has held a frame more than it needs for 2 s it drops one; when it
  has held less for 100 ms it plays one concealed frame more. A tick that
  finds the buffer empty waits (plays concealment and keeps its place), so
  a burst that holds packets back grows the delay by exactly as much as it
  needed. After a pause in the sender's stream (a new talkspurt after
  silence suppression, RFC 3551 section 4.1, or packets resuming after an
  outage) playout restarts at the target delay, which is where the delay
  shrinks for free: in silence.
* A sequence number far from the last (the far end restarted its
  numbering) is believed after two in a row, as RFC 3550 A.1's probation
  does, and then the buffer starts again; so does a timestamp more than
  2 s away from what the clock says (the far end restarted its clock). A
  backlog of more than 220 ms (packets released after a long hold) is cut
  to the target rather than played hundreds of milliseconds late; what was
  cut is kept aside (``cut``) for a caller that must not miss a frame (a
  tone detector).

On a simulated path with half-normal jitter of 8 ms standard deviation
this conceals 0.3 % of frames (lost to lateness) and drops 0.2 %, adding
at most 41 ms for 95 % of frames, 33 ms on average; on a clean path it
adds the tick's own wait and nothing more.

Sans-I/O: ``now`` is the adapter's monotonic clock in seconds, the same for
``put`` and ``pop``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from rtc.rtp.sequence import seq_add, seq_diff, ts_diff
from sip.formats import FRAME_MS

__all__ = ["JitterBuffer", "JitterStats"]

_FRAME = FRAME_MS / 1000
_MIN_TARGET = 1  # frames
_MAX_TARGET = 10
#: Kept above the measured spread so a pop's timer noise does not make the
#: slowest packet late.
_MARGIN = 0.0005
_WINDOW = 250  # packets: 5 s
_PERCENTILE = 0.95
_RECOMPUTE = 25  # ticks: 0.5 s
#: Ticks of surplus before one frame is dropped: 2 s. Sooner, and a path
#: with ordinary jitter (8 ms) swings between dropping and concealing twice
#: as often for 7 ms less delay on average.
_SHRINK_AFTER = 100
_GROW_AFTER = 5  # ticks of deficit before one frame is added
#: RFC 3550 A.1's bounds: a jump further than this starts probation.
_MAX_DROPOUT = 3000
_MAX_MISORDER = 100
#: A relative delay this far from the minimum is the far end's clock, not the network.
_CLOCK_JUMP = 2.0
#: Packets held at most; past it the oldest goes (a sender far ahead of the ticks).
_CAPACITY = 64
#: Sequence numbers remembered to tell a duplicate from a late packet.
_SEEN = 512


@dataclass(frozen=True, slots=True)
class JitterStats:
    """What one phone leg's jitter buffer did (every count since it opened)."""

    played: int
    """Ticks that played a packet."""
    concealed: int
    """Ticks with nothing to play while audio was expected: a packet lost,
    one late, or a wait for a held-back packet."""
    silent: int
    """Ticks with nothing to play because the sender paused (silence
    suppression): heard as comfort noise, but nothing was lost."""
    late: int
    """Packets that came after their slot had been played or concealed."""
    duplicate: int
    dropped: int
    """Packets thrown away to keep the delay down (one at a time when the
    buffer held more than its target, a backlog cut, the capacity) or at a
    resynchronisation."""
    resyncs: int
    target_ms: float
    """The delay the buffer aims to hold, whole frames of 20 ms."""
    buffered_ms: float
    """Packets in the buffer now, 20 ms each."""
    delay_ms: float
    """How long the last packet played had waited beyond the fastest path:
    the delay the buffer added (not the network's)."""


class JitterBuffer:
    """One phone leg's incoming audio: RTP payloads in by arrival, out on a
    20 ms clock. ``clock_rate`` is the codec's RTP clock (8000 for all of
    G.711 and G.722, RFC 3551 section 4.5.2)."""

    def __init__(self, clock_rate: int = 8000) -> None:
        self._rate = clock_rate
        self._ticks = clock_rate * FRAME_MS // 1000
        self._played = self._concealed = self._silent = 0
        self._late = self._duplicate = self._dropped = self._resyncs = 0
        # Until packets say otherwise the path is assumed clean: one frame,
        # the tick's own wait. The first burst raises it at once.
        self._spread = 0.0
        self._target = self._frames_for(self._spread)
        self._delay = 0.0
        self.cut: list[bytes] = []
        """Payloads the last :meth:`pop`'s backlog cut threw away, oldest
        first: a listener is spared a stale burst, but a tone detector must
        hear every frame of a key."""
        self._reset()

    def _reset(self) -> None:
        """Forget the stream (not the counts, nor how much jitter the path has)."""
        # Unwrapping: the highest sequence number and the latest timestamp.
        self._high_seq: int | None = None
        self._high_ext = 0
        self._last_ts = 0
        self._last_ts_ext = 0
        self._probation: tuple[int, int, bytes] | None = None
        self._seen: dict[int, None] = {}
        # ext seq -> (ext timestamp, payload)
        self._buffer: dict[int, tuple[int, bytes]] = {}
        # Playout: the timestamp of the next slot, the last sequence played.
        self._started = False
        self._play_ts = 0
        self._last_seq: int | None = None
        self._stall = 0
        self._surplus = self._deficit = 0
        self._ticks_since_recompute = 0
        # Relative delays (seconds) of the last _WINDOW packets.
        self._delays: deque[float] = deque(maxlen=_WINDOW)
        self._min_delay = math.inf
        self._peak_delay = -math.inf

    # --- input ------------------------------------------------------------------

    def put(self, seq: int, timestamp: int, payload: bytes, now: float) -> None:
        """One RTP packet of the phone's audio (its 16-bit sequence number,
        32-bit timestamp and payload) as it arrives at ``now``."""
        seq &= 0xFFFF
        timestamp &= 0xFFFFFFFF
        if self._high_seq is None:
            self._high_seq, self._high_ext = seq, seq
            self._last_ts = self._last_ts_ext = timestamp
        step = seq_diff(seq, self._high_seq)
        if step > _MAX_DROPOUT or step < -_MAX_MISORDER:
            held = self._probation
            if held is not None and seq == seq_add(held[0], 1):
                # Two in a row: the far end renumbered its stream.
                self._resync()
                self.put(*held, now)
                self.put(seq, timestamp, payload, now)
                return
            if held is not None:
                self._dropped += 1
            self._probation = (seq, timestamp, payload)
            return
        if self._probation is not None:
            self._probation = None
            self._dropped += 1
        ext = self._high_ext + step
        if step > 0:
            self._high_seq, self._high_ext = seq, ext
        ts_ext = self._last_ts_ext + ts_diff(timestamp, self._last_ts)
        self._last_ts, self._last_ts_ext = timestamp, ts_ext

        if ext in self._seen:
            self._duplicate += 1
            return
        self._seen[ext] = None
        if len(self._seen) > _SEEN:
            del self._seen[next(iter(self._seen))]

        delay = now - ts_ext / self._rate
        if self._delays and abs(delay - self._min_delay) > _CLOCK_JUMP:
            # The far end's timestamps jumped: start again on its new clock.
            self._resync()
            self.put(seq, timestamp, payload, now)
            return
        late = self._started and (
            (self._last_seq is not None and ext <= self._last_seq)
            or ts_ext < self._play_ts - self._ticks // 2
        )
        self._observe(delay, in_time=not late)
        if late:
            self._late += 1
            return
        if len(self._buffer) >= _CAPACITY:
            del self._buffer[min(self._buffer)]
            self._dropped += 1
        self._buffer[ext] = (ts_ext, payload)

    def _resync(self) -> None:
        self._dropped += len(self._buffer)
        if self._stall:
            self._concealed += self._stall
        self._resyncs += 1
        self._reset()

    # --- how much to hold -------------------------------------------------------

    def _frames_for(self, spread: float) -> int:
        frames = math.ceil((spread + _MARGIN) / _FRAME)
        return max(_MIN_TARGET, min(_MAX_TARGET, frames))

    def _observe(self, delay: float, *, in_time: bool) -> None:
        self._delays.append(delay)
        self._min_delay = min(self._min_delay, delay)
        if in_time:
            # Grow at once: this packet, in time, took this much longer than
            # the fastest, so a tick's wait must cover it.
            self._peak_delay = max(self._peak_delay, delay)
            if self._peak_delay - self._min_delay > self._spread:
                self._spread = self._peak_delay - self._min_delay
                self._target = max(self._target, self._frames_for(self._spread))

    def _recompute(self) -> None:
        """Every half second: the window's minimum and percentile, and the
        target down by at most one frame toward them."""
        ranked = sorted(self._delays)
        self._min_delay = ranked[0]
        measured = ranked[int(_PERCENTILE * (len(ranked) - 1))] - ranked[0]
        self._spread = max(measured, self._spread - _FRAME, 0.0)
        self._peak_delay = self._min_delay + self._spread
        self._target = self._frames_for(self._spread)

    # --- output -----------------------------------------------------------------

    def pop(self, now: float) -> bytes | None:
        """The payload for this 20 ms tick, or ``None``: conceal (or, before
        the first packet, play silence). ``cut`` then holds what this pop's
        backlog cut threw away."""
        self.cut.clear()
        if not self._buffer and not self._started:
            return None
        self._ticks_since_recompute += 1
        if self._ticks_since_recompute >= _RECOMPUTE and self._delays:
            self._ticks_since_recompute = 0
            self._recompute()
        if not self._started:
            self._started = True
            self._restart_at(min(self._buffer))
        half = self._ticks // 2
        while True:
            if not self._buffer:
                # Wait for the packet this slot needs, keeping the place:
                # told apart (loss, burst or pause) when something comes.
                self._stall += 1
                return None
            head = min(self._buffer)
            head_ts = self._buffer[head][0]
            if head_ts >= self._play_ts - half:
                break
            # Behind the playout point after a restart or a cut: too late now.
            del self._buffer[head]
            self._late += 1

        contiguous = self._last_seq is not None and head == self._last_seq + 1
        if self._stall:
            paused = head_ts > self._play_ts + half
            if paused and contiguous:
                self._silent += self._stall
            else:
                self._concealed += self._stall
            self._stall = 0
            if paused:
                self._restart_at(head)
        self._cut_backlog()
        head = min(self._buffer)
        head_ts = self._buffer[head][0]
        contiguous = self._last_seq is not None and head == self._last_seq + 1

        if head_ts > self._play_ts + half:
            # Nothing for this slot: lost (or late) if sequence numbers are
            # missing before the next packet, a pause in sending if not.
            if contiguous:
                self._silent += 1
            elif self._last_seq is not None:
                self._concealed += 1
            self._play_ts += self._ticks
            return None

        if self._adjust(head, head_ts, now):
            # One frame more of delay: conceal this tick, keep the place.
            self._concealed += 1
            return None
        head = min(self._buffer)
        head_ts, payload = self._buffer.pop(head)
        self._last_seq = head
        self._play_ts = head_ts + self._ticks
        self._played += 1
        return payload

    def _restart_at(self, head: int) -> None:
        """Start playout (again) so that ``head`` waits for the target: less
        the packets already queued behind it."""
        head_ts = self._buffer[head][0]
        newest_ts = max(ts for ts, _ in self._buffer.values())
        queued = (newest_ts - head_ts) // self._ticks + 1
        self._play_ts = head_ts - max(0, self._target - queued) * self._ticks

    def _cut_backlog(self) -> None:
        newest_ts = max(ts for ts, _ in self._buffer.values())
        if newest_ts - self._play_ts <= _MAX_TARGET * self._ticks:
            return
        self._play_ts = newest_ts - (self._target - 1) * self._ticks
        for ext in sorted(e for e, (ts, _) in self._buffer.items() if ts < self._play_ts):
            self.cut.append(self._buffer.pop(ext)[1])
            self._dropped += 1

    def _adjust(self, head: int, head_ts: int, now: float) -> bool:
        """Move the delay held one frame toward the target when it has been
        off for a while: drop the head (if its successor is here to play
        instead), or say to conceal this tick. The delay held is how long
        the fastest packets wait: this tick's time less the slot's
        timestamp, less the minimum relative delay."""
        self._delay = now - head_ts / self._rate - self._min_delay
        needed = self._spread + _MARGIN
        self._surplus = self._surplus + 1 if self._delay - _FRAME >= needed else 0
        self._deficit = self._deficit + 1 if self._delay < needed else 0
        if self._deficit >= _GROW_AFTER and self._delay + _FRAME <= _MAX_TARGET * _FRAME:
            self._deficit = 0
            return True
        nxt = self._buffer.get(head + 1)
        if self._surplus >= _SHRINK_AFTER and nxt is not None and nxt[0] == head_ts + self._ticks:
            self._surplus = 0
            del self._buffer[head]
            self._dropped += 1
            self._last_seq = head
            self._delay -= _FRAME
        return False

    @property
    def delay(self) -> float:
        """Seconds the frame last played waited here, from its arrival (as
        the stream's own clock places it) to its turn: the delay the buffer
        adds now."""
        return self._delay

    @property
    def stats(self) -> JitterStats:
        return JitterStats(
            played=self._played,
            concealed=self._concealed,
            silent=self._silent,
            late=self._late,
            duplicate=self._duplicate,
            dropped=self._dropped,
            resyncs=self._resyncs,
            target_ms=self._target * FRAME_MS,
            buffered_ms=len(self._buffer) * FRAME_MS,
            delay_ms=self._delay * 1000,
        )
