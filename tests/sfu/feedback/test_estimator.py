"""Send-side bandwidth estimation (sfu.feedback.estimator) against a simulated path:
a bottleneck of a given capacity with a drop-tail queue, a propagation
delay and optional random loss, and a receiver that sends transport-wide CC
feedback every 100 ms built by our own codec (rtc.rtcp.TransportCc)."""

from __future__ import annotations

import heapq
import math
import random

import pytest

from rtc.rtcp.transport_cc import TransportCc
from sfu.feedback.estimator import SendSideEstimator
from sfu.feedback.overuse import Usage
from sfu.feedback.send_rings import slots_for

PACKET = 1200


class Path:
    """A bottleneck (``capacity`` bits per second, queue of at most
    ``queue`` seconds) then ``delay`` seconds of propagation; ``loss`` drops
    at random before the queue."""

    def __init__(self, capacity: float, delay: float = 0.04, queue: float = 0.3, loss: float = 0.0):
        self.capacity = capacity
        self.delay = delay
        self.queue = queue
        self.loss = loss
        self.busy_until = 0.0
        self.rng = random.Random(7)
        self.dropped = 0

    def send(self, size: int, now: float) -> float | None:
        """When the packet arrives, or None when it is lost."""
        if self.loss and self.rng.random() < self.loss:
            self.dropped += 1
            return None
        start = max(now, self.busy_until)
        if start - now > self.queue:
            self.dropped += 1
            return None
        self.busy_until = start + size * 8 / self.capacity
        return self.busy_until + self.delay


class Call:
    """A sender that sends what the estimate allows (up to ``wanted``), with
    probes when it wants more, over a :class:`Path`."""

    def __init__(self, path: Path, wanted: int, est: SendSideEstimator | None = None):
        self.path = path
        self.wanted = wanted
        self.est = est or SendSideEstimator()
        self.seq = 0
        self.now = 0.0
        self.arrivals: list[tuple[float, int]] = []  # heap of (arrival, seq)
        self.pending: list[tuple[int, float]] = []  # arrived, not yet fed back
        self.next_feedback = 0.1
        self.fb_count = 0
        self.credit = 0.0
        self.last: tuple[int, float] | None = None
        self.history: list[tuple[float, int]] = []
        self.media_sent = self.media_lost = 0

    def _send(self, size: int, cluster: int = 0) -> None:
        seq = self.seq & 0xFFFF
        self.seq += 1
        self.est.on_sent(seq, size, self.now, cluster)
        at = self.path.send(size, self.now)
        if size == PACKET:
            self.media_sent += 1
            self.media_lost += at is None
        if at is not None:
            heapq.heappush(self.arrivals, (at, seq))
        else:
            # A lost packet still takes its number: the feedback reports it.
            heapq.heappush(self.arrivals, (self.now + 10.0, -seq - 1))

    def run(self, seconds: float, step: float = 0.005) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + step, 6)
            self.credit += self.rate() * step / 8
            while self.credit >= PACKET:
                self.credit -= PACKET
                self._send(PACKET)
            self.pad()
            while self.arrivals and self.arrivals[0][0] <= self.now:
                at, seq = heapq.heappop(self.arrivals)
                if seq >= 0:
                    self.pending.append((seq, at))
            if self.now >= self.next_feedback:
                self.next_feedback += 0.1
                if self.pending:
                    # Each feedback starts at the last one's final packet (which
                    # the estimator has already counted), so the packets lost in
                    # between sit between received ones and are reported missing.
                    batch = ([self.last] if self.last is not None else []) + self.pending
                    fb = TransportCc.from_arrivals(1, 2, batch, self.fb_count)
                    self.fb_count += 1
                    self.est.on_feedback(fb, self.now)
                    self.last = max(self.pending, key=lambda p: p[1])
                    self.pending = []
            self.history.append((self.now, self.est.estimate))

    def rate(self) -> float:
        """What the media sends now."""
        return min(self.est.estimate, self.wanted)

    def pad(self) -> None:
        """Probes, when the estimator asks for them."""
        probe = self.est.probe(self.wanted, self.now)
        if probe is not None:
            for _ in range(probe.packets):
                self._send(max(probe.size // probe.packets, 200), probe.cluster)

    def estimate_at_end(self, window: float = 2.0) -> float:
        tail = [e for t, e in self.history if t >= self.now - window]
        return sorted(tail)[len(tail) // 2]


def test_converges_to_a_capped_path() -> None:
    call = Call(Path(500_000), wanted=2_500_000)
    call.run(20.0)
    assert 300_000 <= call.estimate_at_end() <= 650_000
    # It found the cap by delay, not only by losing packets in a full queue.
    assert call.path.dropped < 0.05 * call.seq


def test_probes_climb_when_the_cap_is_lifted() -> None:
    call = Call(Path(500_000), wanted=2_500_000)
    call.run(20.0)
    low = call.estimate_at_end()
    call.path.capacity = 10_000_000
    call.run(10.0)
    assert call.estimate_at_end() >= 2_000_000 > 3 * low
    assert call.est.probes_succeeded >= 1


def test_starts_low_and_reaches_a_clean_path_quickly() -> None:
    call = Call(Path(20_000_000), wanted=2_500_000)
    call.run(8.0)
    reached = next((t for t, e in call.history if e >= 2_000_000), None)
    assert reached is not None and reached < 6.0


@pytest.mark.parametrize("loss", [0.15, 0.3])
def test_heavy_random_loss_pulls_the_estimate_down(loss: float) -> None:
    call = Call(Path(20_000_000, loss=loss), wanted=2_500_000)
    call.run(10.0)
    assert call.estimate_at_end() < 600_000
    # The estimator saw the loss it reacted to, and that sending less did
    # not end it: the loss is the path's own, what redundancy repairs.
    assert call.est.loss_capacity is not None and call.path.dropped > 0.1 * call.seq
    assert not call.est.loss_follows_rate


def test_a_narrow_path_gets_down_to_audio_rates() -> None:
    call = Call(Path(80_000), wanted=2_500_000)
    call.run(20.0)
    assert call.estimate_at_end() < 130_000
    assert call.est.overuse.usage in (Usage.NORMAL, Usage.OVERUSING, Usage.UNDERUSING)


def test_feedback_for_unknown_numbers_is_ignored() -> None:
    est = SendSideEstimator(start=300_000)
    fb = TransportCc.from_arrivals(1, 2, [(100, 0.0), (101, 0.001), (105, 0.01)], 0)
    est.on_feedback(fb, 1.0)
    assert est.estimate == 300_000


def test_sending_little_for_a_while_does_not_collapse_the_estimate() -> None:
    """A subscriber that gets only audio (its video paused or waiting for a
    keyframe) must keep the estimate its path earned: the acknowledged-rate
    cap limits increases, it never lowers the estimate."""
    call = Call(Path(20_000_000), wanted=60_000, est=SendSideEstimator(start=1_000_000))
    call.run(10.0)
    assert call.estimate_at_end() >= 900_000
    call.wanted = 2_500_000
    call.run(6.0)
    assert call.estimate_at_end() >= 2_000_000


def test_rings_are_flat_arrays_the_garbage_collector_never_walks() -> None:
    import gc

    est = SendSideEstimator()
    sent_at, sizes = est.rings()
    assert len(sent_at) == len(sizes) == slots_for(est.estimate)
    # An array hands the collector its type at most, never its elements.
    assert len(gc.get_referents(sent_at)) <= 1 and len(gc.get_referents(sizes)) <= 1
    last = len(sent_at) - 1
    sent_at[last], sizes[last] = 1.25, 1200
    assert (sent_at[last], sizes[last]) == (1.25, 1200)


def test_rings_grow_in_place_when_more_is_in_flight_than_they_hold() -> None:
    est = SendSideEstimator()
    sent_at, sizes = est.rings()
    slots = len(sent_at)
    # 4000 packets a second whose feedback comes back 0.5 s after the
    # oldest was sent: 2000 in flight, more than half the rings hold.
    base = 0xFFF0
    for k in range(40):
        seq = (base + k) & 0xFFFF
        sent_at[seq & (slots - 1)], sizes[seq & (slots - 1)] = k / 4000, 1000
    fb = TransportCc(0, 1, base, 0, 0, [4] * 40)
    est.on_feedback(fb, 0.5)
    grown_at, grown_sizes = est.rings()
    # The very arrays the hot path holds, longer, still a power of two.
    assert grown_at is sent_at and grown_sizes is sizes
    assert len(sent_at) == len(sizes) == 4096 > slots
    # What was stored before is found at the new index too.
    seq = (base + 39) & 0xFFFF
    assert sizes[seq & (len(sizes) - 1)] == 1000


class Policer(Path):
    """A carrier's policer: a token bucket of ``depth`` bytes filled at
    ``capacity``; a packet with no tokens left is dropped, nothing queues."""

    def __init__(self, capacity: float, depth: int = 12_000, delay: float = 0.04):
        super().__init__(capacity, delay=delay)
        self.depth = depth
        self.tokens = float(depth)
        self.filled_at = 0.0
        self.passed = 0

    def send(self, size: int, now: float) -> float | None:
        if self.loss and self.rng.random() < self.loss:
            self.dropped += 1
            return None
        self.tokens = min(self.depth, self.tokens + (now - self.filled_at) * self.capacity / 8)
        self.filled_at = now
        if self.tokens < size:
            self.dropped += 1
            return None
        self.tokens -= size
        self.passed += 1
        return now + self.delay


@pytest.mark.parametrize("depth", [12_000, 62_500])
def test_settles_below_a_policer_and_holds(depth: int) -> None:
    """A policer gives no delay signal, only loss, and its bucket lets a
    probe's short burst through (coturn's ``--max-bps`` counts bytes per
    second: a bucket of a second's worth): the estimate must still settle
    below the rate and stay there, not climb past it again and again."""
    path = Policer(500_000, depth=depth)
    call = Call(path, wanted=2_500_000)
    call.run(15.0)
    dropped, sent = path.dropped, call.seq
    call.run(15.0)
    tail = [e for t, e in call.history if t >= call.now - 15.0]
    loss = (path.dropped - dropped) / (call.seq - sent)
    median = sorted(tail)[len(tail) // 2]
    print(f"policed: estimate {min(tail)}..{max(tail)}, median {median}, loss {loss:.3f}")
    # It may pass the rate while the bucket drains, and comes back below it.
    assert min(tail) >= 0.6 * 500_000 and max(tail) <= 1.25 * 500_000, (min(tail), max(tail))
    assert median <= 1.02 * 500_000, median
    assert loss < 0.02, loss
    # Below the rate the loss stopped: it came from the rate.
    assert call.est.loss_follows_rate


def test_below_a_policer_the_estimate_stays_near_what_the_media_carries() -> None:
    """Once a policer showed itself, a sender that needs less than it (two
    small layers and audio) must not see the estimate climb past the
    policer on its own: a rate the media never carried is not known to
    pass, and an allocation that trusted it would send a layer the policer
    drops (the three-person policed visit did this every few seconds)."""
    path = Policer(500_000, depth=62_500)
    call = Call(path, wanted=2_500_000)
    call.run(10.0)
    assert call.est.loss_capacity is not None
    call.wanted = 380_000
    call.run(20.0)
    tail = [e for t, e in call.history if t >= call.now - 10.0]
    assert max(tail) < 500_000, max(tail)


def test_random_loss_on_a_policed_path_is_seen_as_random() -> None:
    """A policed path whose loss stopped below the rate, then a radio link
    losing 20 % whatever is sent: the loss no longer follows the rate."""
    path = Policer(500_000)
    call = Call(path, wanted=2_500_000)
    call.run(15.0)
    assert call.est.loss_follows_rate
    path.loss = 0.2
    call.run(10.0)
    assert not call.est.loss_follows_rate


def test_an_outage_before_a_path_change_is_not_congestion() -> None:
    """A phone's path dies for 2 s, then ICE moves it to a new one: what the
    old path swallowed must not read as congestion on the new path."""
    path = Path(5_000_000)
    call = Call(path, wanted=1_500_000)
    call.run(10.0)
    before = call.estimate_at_end()
    assert before >= 1_000_000
    path.loss = 0.999999  # the old path is dead: nothing arrives
    call.run(2.0)
    call.est.path_changed(call.now)
    # The receiver's next feedback spans every number since the last it
    # acknowledged, so the outage's packets are reported missing.
    path.loss = 0.0
    call.run(3.0)
    assert call.est.estimate >= 0.8 * before, (before, call.est.estimate)
    assert call.est.loss_capacity is None and not call.est.policed


class Steps(Call):
    """A sender whose media comes in steps, as a subscriber's allocation
    does (audio, then each video's lowest layer, then a higher one): it
    sends the highest step the estimate carries, and each 0.5 s tick asks
    for padding toward the next step, sent every 50 ms, as sfu.layers.choice does
    (the last step only betters a video; those below bring one back)."""

    TICK = 0.5

    def __init__(self, path: Path, steps: list[int]):
        super().__init__(path, wanted=steps[-1])
        self.steps = steps
        self.next_tick = self.TICK
        self.next_padding = 0.0
        self.padding = 0.0

    def rate(self) -> float:
        return float(max(s for s in self.steps if s <= max(self.est.estimate, self.steps[0])))

    def pad(self) -> None:
        if self.now >= self.next_tick:
            self.next_tick += self.TICK
            estimate, sending = self.est.estimate, self.rate()
            above = [s for s in self.steps if s > sending]
            # The allocation's next step on sfu.layers.choice' grid.
            grid = [1.05, 1.1, 1.15, 1.2, 1.25, 1.5, 2.0, 3.0, 5.0]
            step = next((estimate * f for f in grid if above and estimate * f >= above[0]), 0.0)
            # Steps up to the last video's lowest layer bring video back.
            resume = sending < self.steps[-2]
            self.padding = self.est.padding(sending, step, self.now, resume=resume)
        if not self.padding:
            return super().pad()
        # Paced every 50 ms, as sfu.layers.choice sends it.
        if self.now >= self.next_padding:
            self.next_padding = self.now + 0.05
            for _ in range(math.ceil(self.padding * 0.05 / 8 / 255)):
                self._send(255)


def test_a_paused_video_resumes_once_a_policer_carries_it() -> None:
    """A policed path that later lets more through (350, then 500 kbit/s):
    the media alone (audio and one video's lowest layer) never shows that
    the second video's layer would pass, and probes do not lift a policed
    path, so without padding that video would stay paused for good. A ramp
    toward the next step retests it once the capacity its last failure
    showed is RAMP_RETEST old, and the step then holds."""
    path = Policer(350_000)
    steps = [72_000, 237_000, 402_000, 652_000]
    call = Steps(path, steps)
    call.run(15.0)
    assert call.est.policed
    # The second video's step does not pass 350k: a retest may reach it for
    # a moment, the rest of the time it stays paused.
    early = [e for t, e in call.history if t >= 5.0]
    assert sum(e < 402_000 for e in early) / len(early) >= 0.8
    path.capacity = 500_000
    call.run(15.0)
    assert call.rate() == 402_000, call.est.estimate
    lost, sent = call.media_lost, call.media_sent
    call.run(20.0)
    loss = (call.media_lost - lost) / (call.media_sent - sent)
    tail = [e for t, e in call.history if t >= call.now - 20.0]
    print(f"ramped: estimate {min(tail)}..{max(tail)}, media loss {loss:.4f}")
    # The step above (652k) does not pass: a retest of it costs a little
    # loss and may dip the estimate for a moment; the 402k step holds.
    held = sum(e >= 402_000 for e in tail) / len(tail)
    assert held >= 0.8 and call.rate() == 402_000, held
    assert loss < 0.02, loss


def test_a_step_the_policer_cannot_carry_is_retried_ever_more_rarely() -> None:
    """A policer at 380 kbit/s with the next step at 402: each ramp toward
    it meets loss, and each failure doubles the wait before the next, so
    the media loses little over a minute."""
    path = Policer(380_000)
    steps = [72_000, 237_000, 402_000, 652_000]
    call = Steps(path, steps)
    call.run(10.0)
    lost, sent = call.media_lost, call.media_sent
    failed = call.est.ramps_failed
    call.run(60.0)
    loss = (call.media_lost - lost) / (call.media_sent - sent)
    print(f"unreachable step: {call.est.ramps_failed - failed} failed ramps, media loss {loss:.4f}")
    assert 1 <= call.est.ramps_failed - failed <= 5
    assert call.rate() == 237_000
    assert loss < 0.02, loss


def test_a_queue_the_media_does_not_fill_keeps_its_video() -> None:
    """The queueing twin of the policed visit: a 450 kbit/s bottleneck with a
    250 ms queue, media on steps (the allocation wants the 652k step the
    path cannot carry; 402k passes), the estimate starting where
    sfu.layers.subscribers starts it. Every probe leaves a short queue behind it:
    overuse right after one must not cut the rate under the 402k the media
    carries (0.85 times what was acknowledged paused a video at every
    probe), growth past what probes found must wait for a probe that finds
    more, and probes that keep finding the same ceiling come more rarely."""
    call = Steps(Path(450_000, queue=0.25), [72_000, 237_000, 402_000, 652_000])
    call.est = SendSideEstimator(start=1_000_000)
    call.run(15.0)
    probes = call.est.probes_sent
    call.run(30.0)
    tail = [e for t, e in call.history if t >= call.now - 30.0]
    held = sum(e >= 402_000 for e in tail) / len(tail)
    print(f"queued: 402k step held {held:.3f} of the time, {call.est.probes_sent - probes} probes")
    assert held >= 0.95, held
    assert call.est.probes_sent - probes <= 10
