"""Connection quality per participant: excellent, good, poor or lost.

People on a call want one plain answer to "is it my connection?" (Twilio
shows 0-5 bars, LiveKit excellent/good/poor). The worker knows each
participant's two legs: on the publish leg the loss and jitter of what it
receives from them (:class:`sfu.feedback.receiving.ReceiveStatistics`), on the
subscribe leg the loss and round-trip time their receiver reports say
(RFC 3550 6.4.2) and the bandwidth the send-side estimator finds
(:mod:`sfu.feedback.estimator`). :func:`classify` turns the worse of the two into a
level; :class:`QualityTracker` adds the hysteresis that keeps the bars from
flickering: a level drops at once when it is bad for two evaluations, and
rises only after it has held for ``RISE`` seconds.

Thresholds (loss, RTT, jitter) follow what makes speech and video visibly
worse: below 2 % loss and 300 ms RTT a call feels local; past 10 % loss or
a second of RTT, words are lost and video freezes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Quality", "QualityTracker", "Sample", "classify"]

#: Seconds a better level must hold before it is shown.
RISE = 4.0
#: Seconds without any packet from a participant before they count as lost.
SILENCE = 5.0


class Quality(enum.Enum):
    EXCELLENT = "excellent"
    GOOD = "good"
    POOR = "poor"
    LOST = "lost"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Quality.EXCELLENT: 3, Quality.GOOD: 2, Quality.POOR: 1, Quality.LOST: 0}


@dataclass(frozen=True)
class Sample:
    """One look at a participant's legs: loss as a share (0-1), RTT and
    jitter in seconds (None: unknown), the bandwidth available to them and
    what their video wants (bits per second, 0: unknown), and seconds since
    anything arrived from them."""

    loss: float = 0.0
    rtt: float | None = None
    jitter: float | None = None
    available: float = 0.0
    wanted: float = 0.0
    silent: float = 0.0


def classify(sample: Sample) -> Quality:
    """The level one :class:`Sample` shows (see the module docstring)."""
    if sample.silent >= SILENCE:
        return Quality.LOST
    rtt = sample.rtt or 0.0
    jitter = sample.jitter or 0.0
    short = sample.wanted > 0 and 0 < sample.available < 0.5 * sample.wanted
    if sample.loss > 0.10 or rtt > 1.0 or jitter > 0.1:
        return Quality.POOR
    if sample.loss > 0.02 or rtt > 0.3 or jitter > 0.03 or short:
        return Quality.GOOD if sample.loss <= 0.05 and rtt <= 0.5 else Quality.POOR
    return Quality.EXCELLENT


class QualityTracker:
    """A participant's shown level, with hysteresis (see the module docstring)."""

    __slots__ = ("_bad", "_better_since", "level")

    def __init__(self) -> None:
        self.level = Quality.EXCELLENT
        self._better_since: float | None = None
        self._bad = 0

    def update(self, sample: Sample, now: float) -> Quality | None:
        """Feed one sample; the new level when the shown one changed, else None."""
        seen = classify(sample)
        if seen is Quality.LOST and self.level is not Quality.LOST:
            self._bad, self._better_since = 0, None
            self.level = seen
            return seen
        if seen.rank < self.level.rank:
            self._better_since = None
            self._bad += 1
            if self._bad >= 2:
                self._bad = 0
                self.level = seen
                return seen
            return None
        self._bad = 0
        if seen.rank > self.level.rank:
            if self._better_since is None:
                self._better_since = now
            if now - self._better_since >= RISE or self.level is Quality.LOST:
                self._better_since = None
                self.level = seen
                return seen
            return None
        self._better_since = None
        return None
