"""Each participant's connection quality, fed by both of its legs, and its call samples.

Every second (every other tick of :class:`sfu.layers.choice.Layers`), per
participant, a :class:`~sfu.feedback.quality.QualityTracker` is fed what both
legs say: the loss and jitter of what it publishes
(:class:`~sfu.feedback.receiving.ReceiveStatistics`), and of what it receives
the round-trip time, the estimator's loss and the estimate against what the
allocation wants (:class:`sfu.layers.subscribers.Subscribers`). A change of
level is a ``ConnectionQuality`` event; every ``SAMPLE_EVERY`` seconds a call
sample (:mod:`sfu.rooms.call_samples`) records it with the layers received.
"""

from __future__ import annotations

import math

from sfu.control.messages import ConnectionQuality
from sfu.feedback.quality import QualityTracker, Sample
from sfu.layers.subscribers import Reason, Subscribers, received_layer
from sfu.rooms import call_samples
from sfu.rooms.actions import Emit
from sfu.rooms.records import MediaRoom, Track, WorkerTables

__all__ = ["Qualities"]


class _Quality:
    __slots__ = ("expected", "lost", "peak", "rtcp", "sampled", "seen", "tracker")

    def __init__(self, now: float) -> None:
        self.tracker = QualityTracker()
        self.lost = 0
        self.expected = 0
        self.rtcp = -1
        self.seen = now
        self.sampled = -math.inf
        self.peak = 0.0


class Qualities:
    """The connection quality of a worker's participants (see the module
    docstring), on the worker's tables and the layers' subscribers."""

    def __init__(self, tables: WorkerTables, subscribers: Subscribers) -> None:
        self.tables = tables
        self.subscribers = subscribers
        self._qualities: dict[tuple[str, str], _Quality] = {}

    def forget(self, room: str, participant: str) -> None:
        """A participant left the room."""
        self._qualities.pop((room, participant), None)

    def update(self, room: MediaRoom, now: float) -> list[Emit]:
        """Each participant's quality in ``room`` at ``now``: a
        ``ConnectionQuality`` event when it changed (and its first), and a
        call sample every ``SAMPLE_EVERY`` seconds."""
        out: list[Emit] = []
        for participant, p in room.participants.items():
            legs = [x for x in p.legs if x.reporting]
            if not legs:
                continue
            key = (room.name, participant)
            q = self._qualities.get(key)
            first = q is None
            if q is None:
                q = self._qualities[key] = _Quality(now)
            loss = 0.0
            jitter: float | None = None
            rtt: float | None = None
            available = wanted = 0.0
            activity = 0
            pub = p.publish
            if pub is not None:
                lost = sum(s.cumulative_lost for s in pub.recv_stats.values())
                expected = sum(s.expected for s in pub.recv_stats.values())
                if expected > q.expected:
                    loss = max(0.0, (lost - q.lost) / (expected - q.expected))
                q.lost, q.expected = lost, expected
                for stats in pub.recv_stats.values():
                    if stats.started and stats.clock_rate:
                        value = stats.jitter / stats.clock_rate
                        jitter = value if jitter is None else max(jitter, value)
                activity += pub.packets_in + pub.rtcp_in
            sub = p.subscribe
            if sub is not None:
                rtt = self.tables.reports.rtt(sub)
                state = self.subscribers.by_peer.get(sub)
                if state is not None:
                    if state.estimator is not None:
                        loss = max(loss, state.estimator.loss)
                    estimate = state.estimate()
                    available = 0.0 if math.isinf(estimate) else estimate
                    wanted = float(state.wanted)
                activity += sub.rtcp_in
            if activity != q.rtcp:
                q.rtcp, q.seen = activity, now
            sample = Sample(
                loss=loss,
                rtt=rtt,
                jitter=jitter,
                available=available,
                wanted=wanted,
                silent=now - q.seen,
            )
            level = q.tracker.update(sample, now)
            if first and level is None:
                level = q.tracker.level
            if level is not None:
                out.append(Emit(ConnectionQuality(room.name, participant, level.value)))
            q.peak = max(q.peak, loss)
            if now - q.sampled >= call_samples.SAMPLE_EVERY:
                q.sampled, peak, q.peak = now, q.peak, 0.0
                got: list[tuple[Track, int | None]] = []
                paused: dict[str, Reason] = {}
                if sub is not None:
                    got = [(s.track, received_layer(sub, s.track)) for s in sub.sections]
                    known = self.subscribers.by_peer.get(sub)
                    paused = known.paused if known is not None else paused
                out.append(
                    Emit(
                        call_samples.sample(
                            room.name,
                            participant,
                            sample,
                            q.tracker.level,
                            call_samples.sent_bitrate(room.tracks.values(), pub),
                            call_samples.received_layers(got, paused),
                            peak,
                        )
                    )
                )
        return out
