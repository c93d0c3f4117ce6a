"""Probe clusters of send-side estimation: padding sent at a rate, and the rate it arrived at.

Going up past what the media itself sends needs traffic that tests the path
(libwebrtc's probe controller, in the spirit of draft-ietf-rmcat-gcc-02
section 5.5's increase): :class:`sfu.feedback.estimator.SendSideEstimator`
asks for a *cluster* of padding when a probe is due and starts one here;
each packet of it is marked with the cluster as it is sent, and its arrival
is read back from transport-wide CC feedback. Once enough of a cluster's
packets arrived, the rate they arrived at, bounded by the rate they were
sent at, is what the cluster found the path to carry; what the estimator
makes of that finding is its own.

Sans-I/O: times are seconds on the caller's monotonic clock; sizes are
bytes, rates bits per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Probe", "ProbeClusters", "ProbeResult"]

#: A cluster's length in seconds at its rate, and its least packets.
PROBE_DURATION = 0.015
PROBE_MIN_PACKETS = 5
#: Feedback for a cluster must arrive within this, else the cluster is given up.
PROBE_TIMEOUT = 1.0


@dataclass(frozen=True)
class Probe:
    """A cluster of padding to send: ``size`` bytes in total, ``packets``
    packets at ``bitrate`` (so over ``size * 8 / bitrate`` seconds), marked
    with ``cluster`` in :meth:`sfu.feedback.estimator.SendSideEstimator.on_sent`."""

    cluster: int
    bitrate: int
    size: int
    packets: int


@dataclass(frozen=True)
class ProbeResult:
    """What a finished cluster found: the rate it was sent for, when it
    started, and the rate the path carried it at."""

    bitrate: int
    started: float
    rate: float


class _Cluster:
    __slots__ = ("bitrate", "first_sent", "id", "last_sent", "received", "sent", "started")

    def __init__(self, cid: int, bitrate: int, started: float) -> None:
        self.id = cid
        self.bitrate = bitrate
        self.started = started
        self.sent = 0
        self.first_sent = math.inf
        self.last_sent = -math.inf
        self.received: list[tuple[float, int]] = []


class ProbeClusters:
    """The clusters of one subscriber transport under way (see the module docstring)."""

    def __init__(self) -> None:
        self._clusters: dict[int, _Cluster] = {}
        self._next_cluster = 1

    def __len__(self) -> int:
        """Clusters under way."""
        return len(self._clusters)

    def clear(self) -> None:
        """Forget every cluster under way (the path moved)."""
        self._clusters.clear()

    def start(self, bitrate: int, now: float) -> Probe:
        """A new cluster at ``bitrate``, to send now."""
        # Padding-only packets carry at most 255 bytes of padding each.
        size = max(int(bitrate * PROBE_DURATION / 8), PROBE_MIN_PACKETS * 255)
        packets = max(PROBE_MIN_PACKETS, math.ceil(size / 255))
        cid = self._next_cluster
        self._next_cluster = cid % 0xFFFF + 1
        self._clusters[cid] = _Cluster(cid, bitrate, now)
        return Probe(cid, bitrate, size, packets)

    def sent(self, cluster: int, size: int, now: float) -> None:
        """A packet of ``size`` bytes of ``cluster`` was sent at ``now``."""
        c = self._clusters.get(cluster)
        if c is not None:
            c.sent += size
            c.first_sent = min(c.first_sent, now)
            c.last_sent = max(c.last_sent, now)

    def received(self, cluster: int, arrival: float, size: int) -> None:
        """A packet of ``size`` bytes of ``cluster`` arrived at ``arrival``."""
        c = self._clusters.get(cluster)
        if c is not None:
            c.received.append((arrival, size))

    def finished(self, now: float) -> list[ProbeResult]:
        """What the clusters that are done found, in the order they started;
        each is forgotten, and so is one whose feedback is overdue."""
        found: list[ProbeResult] = []
        for cid, c in list(self._clusters.items()):
            if now - c.started > PROBE_TIMEOUT:
                del self._clusters[cid]
                continue
            if len(c.received) < PROBE_MIN_PACKETS or c.sent == 0:
                continue
            del self._clusters[cid]
            arrivals = sorted(t for t, _ in c.received)
            span = arrivals[-1] - arrivals[0]
            got = sum(size for _, size in c.received) - c.received[0][1]
            if span <= 0:
                continue
            received_rate = got * 8 / span
            send_span = max(c.last_sent - c.first_sent, 1e-3)
            sent_rate = c.sent * 8 / send_span
            found.append(ProbeResult(c.bitrate, c.started, min(received_rate, sent_rate)))
        return found
