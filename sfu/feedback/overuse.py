"""The delay signal of send-side estimation: over-use detection (draft-ietf-rmcat-gcc-02 5.1-5.4).

Fed each acknowledged packet's send and arrival time
(:class:`sfu.feedback.estimator.SendSideEstimator` reconstructs the arrivals
from transport-wide CC feedback), it says whether a queue is building on the
path (:class:`Usage`), as libwebrtc's trendline estimator does:

- Packets sent within ``BURST`` of each other form a group (gcc-02 section
  5.2's pre-filtering). For consecutive groups the one-way delay variation
  is the difference of their arrival spacing and their send spacing
  (section 5.1).
- Its accumulation, smoothed, is fitted by a least-squares line over the
  last ``WINDOW`` groups (the *trendline* filter, in place of gcc-02 5.3's
  Kalman filter). A rising slope means a queue is building.
- The slope, scaled, is judged against an adaptive threshold (gcc-02
  section 5.4) so that a competing TCP flow does not starve us: above it for
  ``OVERUSE_TIME`` and still rising is *overuse*, below its negative is
  *underuse* (a queue draining).

What the estimator does with the signal (the rate it sets) is its own.
Sans-I/O: times are seconds on the caller's monotonic clock.
"""

from __future__ import annotations

import enum
import math
from collections import deque

__all__ = ["OveruseDetector", "Usage"]

#: Packets sent within this many seconds of a group's first form one group.
BURST = 0.005
#: Groups the trendline fits its slope over (libwebrtc: 20).
WINDOW = 20
#: Smoothing of the accumulated delay (libwebrtc: 0.9).
SMOOTHING = 0.9
#: Gain from the slope to the compared trend (libwebrtc: 4).
TREND_GAIN = 4.0
#: Adaptive threshold: start, bounds, and its up and down rates (gcc-02 5.4).
THRESHOLD_START = 12.5
THRESHOLD_MIN, THRESHOLD_MAX = 6.0, 600.0
K_UP, K_DOWN = 0.0087, 0.039
#: Overuse must last this long before it counts.
OVERUSE_TIME = 0.01


class Usage(enum.Enum):
    """What the delay signal says of the path (gcc-02 section 5.4)."""

    NORMAL = "normal"
    OVERUSING = "overusing"
    UNDERUSING = "underusing"


class OveruseDetector:
    """The delay signal of one subscriber transport's path (see the module docstring)."""

    def __init__(self) -> None:
        # Grouping and the trendline.
        self._group_send: float | None = None
        self._group_arrival = 0.0
        self._prev_send: float | None = None
        self._prev_arrival = 0.0
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._first_arrival: float | None = None
        self._points: deque[tuple[float, float]] = deque(maxlen=WINDOW)
        self._deltas = 0
        self._threshold = THRESHOLD_START
        self._last_compare: float | None = None
        self._overuse_since: float | None = None
        self._prev_trend = 0.0
        self.usage = Usage.NORMAL
        """What the signal says now."""
        self.overused_at = -math.inf
        """When it last said overuse."""

    def path_changed(self) -> None:
        """The path moved: what the old one's delays said is forgotten (the
        threshold, adapted to the competing traffic, stays)."""
        self._group_send = self._prev_send = None
        self._first_arrival = None
        self._points.clear()
        self._accumulated = self._smoothed = 0.0
        self._overuse_since = None
        self.usage = Usage.NORMAL
        self.overused_at = -math.inf

    def on_arrival(self, sent: float, arrival: float, now: float) -> None:
        """A packet sent at ``sent`` arrived at ``arrival`` (the receiver's
        clock); ``now`` is when the feedback saying so came."""
        if self._group_send is None:
            self._group_send, self._group_arrival = sent, arrival
            return
        if sent - self._group_send <= BURST:
            self._group_arrival = max(self._group_arrival, arrival)
            return
        # A group is complete: compare it with the previous one.
        if self._prev_send is not None:
            variation = (self._group_arrival - self._prev_arrival) - (
                self._group_send - self._prev_send
            )
            self._trend(variation * 1000.0, self._group_arrival, now)
        self._prev_send, self._prev_arrival = self._group_send, self._group_arrival
        self._group_send, self._group_arrival = sent, arrival

    def _trend(self, variation_ms: float, arrival: float, now: float) -> None:
        if self._first_arrival is None:
            self._first_arrival = arrival
        self._deltas = min(self._deltas + 1, 60)
        self._accumulated += variation_ms
        self._smoothed = SMOOTHING * self._smoothed + (1 - SMOOTHING) * self._accumulated
        self._points.append(((arrival - self._first_arrival) * 1000.0, self._smoothed))
        if len(self._points) < WINDOW:
            return
        slope = _slope(self._points)
        trend = slope * self._deltas * TREND_GAIN
        self._detect(trend, now)

    def _detect(self, trend: float, now: float) -> None:
        if trend > self._threshold:
            if self._overuse_since is None:
                self._overuse_since = now
            if now - self._overuse_since >= OVERUSE_TIME and trend >= self._prev_trend:
                self.usage = Usage.OVERUSING
                self.overused_at = now
        elif trend < -self._threshold:
            self._overuse_since = None
            self.usage = Usage.UNDERUSING
        else:
            self._overuse_since = None
            self.usage = Usage.NORMAL
        self._prev_trend = trend
        # The threshold follows the trend (gcc-02 5.4), but not its outliers.
        if self._last_compare is not None and abs(trend) < self._threshold + 15.0:
            k = K_DOWN if abs(trend) < self._threshold else K_UP
            dt = min(now - self._last_compare, 0.1)
            self._threshold += k * (abs(trend) - self._threshold) * dt * 1000.0
            self._threshold = max(THRESHOLD_MIN, min(THRESHOLD_MAX, self._threshold))
        self._last_compare = now


def _slope(points: deque[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points: one pass over the window
    (it runs for every group of every subscriber's feedback), with ``x``
    taken from the first point's so the sums stay small and exact enough."""
    n = len(points)
    x0 = points[0][0]
    sx = sy = sxx = sxy = 0.0
    for x, y in points:
        x -= x0
        sx += x
        sy += y
        sxx += x * x
        sxy += x * y
    den = sxx - sx * sx / n
    return (sxy - sx * sy / n) / den if den else 0.0
