"""How much a subscriber's downlink carries: send-side bandwidth estimation.

The worker sends each subscriber what that subscriber's own path can carry
(simulcast layer choice, audio-only fallback): it needs an estimate per
subscriber transport. Browsers give one through transport-wide CC
(draft-holmer-rmcat-transport-wide-cc-extensions-01): the worker numbers
every packet it sends a subscriber, the subscriber reports when each one
arrived, and the worker, as sender, estimates. This module is that
estimator, in the spirit of Google Congestion Control
(draft-ietf-rmcat-gcc-02) as libwebrtc runs it on the send side:

- **Delay-based.** The one-way delay variation of groups of packets, fitted
  by a trendline and judged against an adaptive threshold (gcc-02 sections
  5.1-5.4: :class:`sfu.feedback.overuse.OveruseDetector`), says when a queue
  is building: *overuse*. Overuse cuts the rate to
  ``BETA`` times what was acknowledged; otherwise the rate grows by 8 % a
  second while far from the last known capacity, additively near it
  (section 5.5), and never beyond 1.5 times what was acknowledged plus a
  margin, since a rate never sent is a rate never tested.
- **Loss-based.** The share of packets not received, judged over windows of
  at least ``LOSS_WINDOW`` seconds and ``LOSS_PACKETS`` packets: above 10 %
  the path is congested, and what it carried meanwhile (the acknowledged
  rate) is taken as its capacity; the loss-based rate drops to
  ``LOSS_BACKOFF`` times that, not by a share of a rate that may be far
  above what was sent (gcc-02 section 6 decreases from the send rate). Below
  2 % it grows by 8 % a second, but additively within 1.5 times a capacity
  learnt in the last ``LOSS_HOLD`` seconds, and there past ``LOSS_NEAR``
  times it only as far as ``LOSS_TESTED`` times what the media carried;
  between the two it holds, unless it is at that capacity again, which
  counts as congestion too. A carrier's policer gives no delay signal, only
  loss, and sitting just above its rate would mean a steady few per cent of
  loss: this is what makes the estimate settle below it and stay. Loss with
  no overuse before it marks the path ``policed``: from then on the
  loss-based rate climbs only with what the path carries (the media, or a
  ramp's padding), never with a probe (a policer's bucket lets a probe's
  short burst through at any rate). Nor does the window right after a
  backoff back off again: it still reports packets sent before the backoff,
  and what it carried is the slowed sender's, not the path's. The estimate
  is the lower of the two rates. Whether the loss follows the rate is judged
  by the windows after a backoff: loss that stops once less is sent came
  from the rate (a policer or a full queue: ``loss_follows_rate``, and
  redundancy such as RED only takes the room it would protect); loss that
  goes on at the same share while less is sent is the path's own (a radio
  link), where redundancy is what repairs it.
- **Ramping.** On a policed path the media alone never shows that more
  would pass: a paused video waits for an estimate that waits for the video.
  :meth:`SendSideEstimator.padding` says how much padding to send on top
  of the media, for at most ``RAMP_TIME`` seconds, so that the path
  carries a *target*: the caller's next step (the least rate at which it
  would send more) when it is within ``RAMP_REACH`` times the estimate;
  else a part of the way, ``RAMP_PART`` times the estimate, a share that
  doubles with each part that held (up to twice the estimate) and starts
  small again after a failure (on a path at its limit such a retest is
  what fails; on one whose policer went away a few parts reach the step).
  No ramp goes beyond a capacity learnt in the last ``RAMP_RETEST``
  seconds, and no part up to a target that failed in the last
  ``RAMP_WAIT_MAX`` (what passes in a lossy window overstates a policer
  that counts bytes per second, up to twice its rate when the window
  straddles two of its seconds, so the capacity learnt is no bound). The
  loss controller then sees the target carried without loss and takes it
  as its rate; or it sees loss, learns the policer's rate from what
  passed, and goes back to the rate it had before the ramp (the path
  carried that). Overuse (a queue after all, not a policer) ends a ramp
  too. A step reached must hold ``RAMP_TIME`` seconds with the media at
  it (a part, one loss window). After a failure the next ramp waits
  ``RAMP_WAIT`` seconds, twice as long after each further one (up to
  ``RAMP_WAIT_MAX``), so a step the path cannot carry costs a loss now
  and then, not every few seconds. All this is for a step that brings
  back a paused video; one that only betters what flows waits until the
  path showed no loss and no ramp failed for ``UPGRADE_WAIT`` seconds,
  twice as long after each such ramp that failed (a failed retest is a
  second of loss, a freeze on every video the path carries: a luxury
  bought that dearly only now and then).
- **Probing.** Going up past what the media itself sends needs traffic that
  tests the path: :meth:`SendSideEstimator.probe` asks for a *cluster* of
  padding at a higher rate when the caller wants more than the estimate
  allows; the rate at which the cluster's packets arrived (bounded by the
  rate they were sent at: :class:`sfu.feedback.probes.ProbeClusters`)
  becomes the estimate when it is higher. Probes are
  spaced ``PROBE_INTERVAL`` apart and stop while the delay signal says
  overuse. A cluster that arrived well under its own rate found the path's
  ceiling: the delay-based rate grows past it only once a cluster finds
  more, and while clusters find nothing above the estimate the wait before
  the next doubles (up to ``PROBE_WAIT_MAX``).
  A cluster leaves a queue of its own behind it: overuse right after one
  cuts the rate only to what the cluster found the path to carry, not to a
  share of what the media carried (on a path the media does not fill, that
  would pause a video at every probe).

Sans-I/O: ``now`` is seconds on the caller's monotonic clock; sizes are
bytes, rates bits per second. :meth:`SendSideEstimator.on_sent` is on the
hot path: two stores into preallocated rings and a comparison, nothing else.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import MutableSequence

from rtc.rtcp.transport_cc import TransportCc
from sfu.feedback.overuse import OveruseDetector, Usage
from sfu.feedback.probes import Probe, ProbeClusters
from sfu.feedback.send_rings import SendRings

__all__ = ["SendSideEstimator"]

#: Rate after overuse: this times the acknowledged rate.
BETA = 0.85
#: Multiplicative increase per second far from capacity, and the loss-based one.
GROWTH = 1.08
#: Seconds of arrivals the acknowledged rate is measured over.
ACKED_WINDOW = 0.5
#: Loss thresholds of the loss-based controller.
LOSS_HIGH, LOSS_LOW = 0.10, 0.02
#: The loss-based controller decides over at least this long and this many packets.
LOSS_WINDOW, LOSS_PACKETS = 1.0, 20
#: After congestion loss, the rate drops to this share of what was acknowledged.
LOSS_BACKOFF = 0.9
#: Seconds a capacity learnt from congestion loss is remembered.
LOSS_HOLD = 30.0
#: Additive increase near that capacity, as a share of it per second: up to
#: ``LOSS_NEAR`` times it, beyond only to ``LOSS_TESTED`` times the rate the
#: media carried.
LOSS_ADDITIVE, LOSS_NEAR, LOSS_TESTED = 0.02, 0.95, 1.1
#: The loss follows the rate when, over the last ``JUDGED`` backoffs, the
#: windows after them lost less than ``FOLLOWS`` times what the windows that
#: backed off lost; of the ``AFTER`` windows after a backoff the one that
#: lost least counts (the first may still carry what was sent before the
#: sender slowed down).
JUDGED, FOLLOWS, AFTER = 4, 0.3, 2
#: Ramping (policed paths): a step at most ``RAMP_REACH`` times the estimate,
#: padded to ``RAMP_OVER`` times it (a little beyond, so that what passes
#: reaches it) for at most ``RAMP_TIME`` seconds; after a ramp that failed
#: the next waits ``RAMP_WAIT`` seconds, doubled per failure up to
#: ``RAMP_WAIT_MAX`` (so a link that got better is found that much later).
RAMP_REACH, RAMP_OVER, RAMP_TIME, RAMP_WAIT, RAMP_WAIT_MAX = 1.2, 1.05, 6.0, 4.0, 16.0
#: A step further than ``RAMP_REACH`` is ramped to by parts: this times the
#: estimate, a share doubled by each part that held.
RAMP_PART = 1.1
#: A step beyond the capacity loss showed is ramped to only once that
#: capacity is this many seconds old (the path may have changed since).
RAMP_RETEST = 10.0
#: A ramp that only betters what flows waits for this many seconds without
#: loss or a failed ramp; doubled by each such ramp that fails, up to the max.
UPGRADE_WAIT, UPGRADE_WAIT_MAX = 60.0, 480.0
#: Probing: seconds between clusters.
PROBE_INTERVAL = 2.0
#: A cluster that arrived at less than ``PROBE_SHORT`` times its rate found
#: the path's ceiling (libwebrtc probes further only past 0.7 of a
#: cluster's rate too); when it found nothing above the estimate either,
#: the wait before the next doubles, up to ``PROBE_WAIT_MAX`` (kept short:
#: a cap that lifts is found no later than that).
PROBE_SHORT, PROBE_WAIT_MAX = 0.7, 4.0
#: Seconds a probe's finding holds against the acknowledged-rate cap.
PROBE_HOLD = 3.0
#: Overuse this soon after a cluster was sent is taken for the cluster's own
#: queue (see SendSideEstimator._update_delay).
PROBE_AFTERMATH = 1.0


class SendSideEstimator:
    """The estimate for one subscriber transport (see the module docstring)."""

    def __init__(
        self,
        *,
        start: int = 600_000,
        min_bitrate: int = 30_000,
        max_bitrate: int = 5_000_000,
    ) -> None:
        self.min_bitrate = min_bitrate
        self.max_bitrate = max_bitrate
        self._delay_rate = float(start)
        self._loss_rate = float(start)
        # What was sent, by transport sequence number (sized by need).
        self._rings = SendRings(start)
        # Arrival reconstruction: the feedback's reference time unwrapped.
        self._last_reference: int | None = None
        self._reference_base = 0.0
        self.overuse = OveruseDetector()
        """The delay signal: whether a queue is building."""
        # Rate control.
        self._last_update: float | None = None
        self._capacity: float | None = None
        self._acked: deque[tuple[float, int]] = deque()
        self._acked_bytes = 0
        self.acked_bitrate = 0.0
        #: Share of packets the last feedbacks reported lost (smoothed).
        self.loss = 0.0
        # The loss controller's window, and the capacity congestion loss showed.
        self._window_lost = 0
        self._window_total = 0
        self._window_bytes = 0
        self._window_start: float | None = None
        self._loss_decided: float | None = None
        self._loss_capacity = 0.0
        self._loss_capacity_at = -math.inf
        #: Whether loss without a rising delay ever showed a policer on the path.
        self.policed = False
        #: Whether the path's loss stopped once less was sent (see the module
        #: docstring), until loss shows that goes on whatever is sent.
        self.loss_follows_rate = False
        # The share lost by the last window that backed off, the least lost
        # since by a window after it, and how many windows are still to come;
        # the last JUDGED (backoff, after) pairs.
        self._backoff: tuple[float, float, int] | None = None
        self._judged: deque[tuple[float, float]] = deque(maxlen=JUDGED)
        self._backed_off_at = -math.inf
        self._forget_ramps()
        #: Ramps that met loss, before or soon after reaching their step.
        self.ramps_failed = 0
        # Probing.
        self.clusters = ProbeClusters()
        self._last_probe = -math.inf
        self._probe_wait = PROBE_INTERVAL
        # The most that clusters falling short of their rate found the path
        # to carry (0.95 of what arrived) since one last did not, and when
        # the last of them was sent.
        self._probe_short = (0.0, -math.inf)
        # What the last successful probe found, and until when it holds
        # against the acknowledged-rate cap (the media has to catch up).
        self._probe_floor = 0.0
        self._probe_until = -math.inf
        self.probes_sent = 0
        self.probes_succeeded = 0

    def _forget_ramps(self) -> None:
        """No ramp under way or held, no failure remembered (a new path)."""
        # The ramp under way: target, since when, whether it is the whole
        # step, and whether that step brings back something paused.
        self._ramp: tuple[float, float, bool, bool] | None = None
        self._ramp_from = 0.0  # the loss-based rate when it began
        # A target reached: when, which, how long it must hold, and whether
        # it brought something back.
        self._ramp_held: tuple[float, float, float, bool] | None = None
        # The target of the last ramp that failed, and when.
        self._ramp_ceiling = (math.inf, -math.inf)
        # When the next ramp may start, and the wait after the next failure.
        self._ramp_next = -math.inf
        self._ramp_wait = RAMP_WAIT
        self._ramp_streak = 0  # parts in a row that held
        # Seconds without loss or a failed ramp before a ramp that only
        # betters what flows (doubled by each such ramp that fails).
        self._upgrade_wait = UPGRADE_WAIT

    def rings(self) -> tuple[MutableSequence[float], MutableSequence[int]]:
        """The send-time and size rings, indexed by transport sequence number
        modulo their length (a power of two: ``seq & (len(ring) - 1)``): the
        forwarder's hot path stores into them directly instead of calling
        :meth:`on_sent` (two stores per packet, no call). They grow in place,
        so the arrays handed out stay the ones in use."""
        return self._rings.sent_at, self._rings.sizes

    @property
    def estimate(self) -> int:
        """The bitrate the path should carry now, in bits per second."""
        rate = min(self._delay_rate, self._loss_rate)
        return int(max(self.min_bitrate, min(self.max_bitrate, rate)))

    def path_changed(self, now: float) -> None:
        """The transport's path moved (an ICE restart, a NAT rebinding).

        What was sent on the old path and never acknowledged is forgotten,
        not counted lost (an outage before a restart would otherwise read as
        heavy congestion on the new path), and so is what loss and delay
        said of the old path. The rates stay: the new path is tested from
        there, down fast on loss or overuse, up as usual.
        """
        self._rings.forget()
        self.clusters.clear()
        self._acked.clear()
        self._acked_bytes = 0
        self.overuse.path_changed()
        self.loss = 0.0
        self._window_lost = self._window_total = self._window_bytes = 0
        self._window_start = None
        self._loss_capacity = 0.0
        self._loss_capacity_at = -math.inf
        self.policed = False
        self.loss_follows_rate = False
        self._backoff = None
        self._judged.clear()
        self._backed_off_at = -math.inf
        self._forget_ramps()
        self._last_probe = now
        self._probe_wait = PROBE_INTERVAL
        self._probe_short = (0.0, -math.inf)

    # -- the hot path -------------------------------------------------------------

    def on_sent(self, seq: int, size: int, now: float, cluster: int = 0) -> None:
        """A packet with transport sequence number ``seq`` (and ``size``
        bytes on the wire) was sent at ``now``; ``cluster`` names the probe
        cluster it belongs to (0: none)."""
        rings = self._rings
        i = seq & rings.mask
        rings.sent_at[i] = now
        rings.sizes[i] = size
        rings.cluster[i] = cluster
        if cluster:
            self.clusters.sent(cluster, size, now)

    # -- feedback ---------------------------------------------------------------

    def on_feedback(self, fb: TransportCc, now: float) -> None:
        """A subscriber's transport-wide CC feedback (draft-holmer-...-01 3.1)."""
        arrival = self._reference(fb.reference_time)
        seq = fb.base_sequence
        received = lost = 0
        rings = self._rings
        mask, sent_at, sizes, clusters = rings.mask, rings.sent_at, rings.sizes, rings.cluster
        first = last = -1.0
        for delta in fb.deltas:
            i = seq & mask
            seq += 1
            sent = sent_at[i]
            if delta is None:
                if sent >= 0:
                    lost += 1
                continue
            arrival += delta / 4000.0
            if sent < 0:
                continue
            if first < 0:
                first = sent
            last = sent
            received += 1
            size = sizes[i]
            self._window_bytes += size
            sent_at[i] = -1.0
            self._on_arrival(sent, arrival, size, now)
            cid = clusters[i]
            if cid:
                # Media written through rings() leaves the ring's cluster
                # as it was: clear it so a later packet is not taken for a probe.
                clusters[i] = 0
                self.clusters.received(cid, arrival, size)
        if received + lost:
            share = lost / (received + lost)
            self.loss = 0.7 * self.loss + 0.3 * share
            self._update_loss(lost, received + lost, now)
        if received > 1:
            rings.fit(len(fb.deltas), first, last, now)
        self._finish_probes(now)
        self._update_delay(now)

    def _reference(self, reference: int) -> float:
        # The 24-bit reference time counts 64 ms and wraps every ~12 days;
        # unwrap it against the previous one so arrivals stay monotonic.
        if self._last_reference is not None:
            diff = (reference - self._last_reference) & 0xFFFFFF
            if diff > 0x800000:
                diff -= 0x1000000
            self._reference_base += diff * 0.064
        self._last_reference = reference
        return self._reference_base

    def _on_arrival(self, sent: float, arrival: float, size: int, now: float) -> None:
        self._acked.append((arrival, size))
        self._acked_bytes += size
        while self._acked and self._acked[0][0] < arrival - ACKED_WINDOW:
            self._acked_bytes -= self._acked.popleft()[1]
        # n packets span n - 1 gaps: the first one's bytes arrived before the span.
        span = max(arrival - self._acked[0][0], 0.05)
        self.acked_bitrate = (self._acked_bytes - self._acked[0][1]) * 8 / span
        self.overuse.on_arrival(sent, arrival, now)

    def _update_delay(self, now: float) -> None:
        last, self._last_update = self._last_update, now
        dt = 0.0 if last is None else min(now - last, 1.0)
        rate = self._delay_rate
        acked = self.acked_bitrate
        if self.overuse.usage is Usage.OVERUSING:
            if acked > 0 and now - self._last_probe < PROBE_AFTERMATH:
                # A cluster sent at once builds a queue of its own, which
                # drains once it ends: the cluster's arrival rate says what
                # the path carries (the link capacity), and the media is cut
                # only to that, not under what it carried. On an app-limited
                # path the acknowledged rate is the media's, and 0.85 times
                # it paused a video at every probe (a 500 kbit/s queue
                # carrying 400 kbit/s of media was cut to 330 kbit/s every
                # two seconds).
                found, sent = self._probe_short
                floor = found if sent == self._last_probe else acked
                self._capacity = floor
                rate = min(rate, max(BETA * acked, floor))
            elif acked > 0:
                # Remember the capacity we hit (section 5.5's "link capacity").
                self._capacity = acked
                rate = min(rate, BETA * acked)
                # Only a probe lifts a rate the media no longer fills: the
                # next may come soon.
                self._probe_wait = PROBE_INTERVAL
        elif self.overuse.usage is Usage.NORMAL and dt > 0:
            near = self._capacity is not None and abs(rate - self._capacity) < 0.15 * rate
            if near:
                # Additive: about one 1,200-byte packet per 100 ms round trip.
                rate += 1200 * 8 / 0.1 * dt
            else:
                rate *= GROWTH**dt
            if acked > 0:
                cap = 1.5 * acked + 10_000
                if now < self._probe_until and self.loss < LOSS_LOW:
                    # A probe just showed the path carries more than is sent:
                    # give the sender time to use it before the cap applies.
                    cap = max(cap, self._probe_floor)
                # The cap stops an increase the sender never tested; it never
                # lowers the estimate (libwebrtc's AimdRateControl does the
                # same): a subscriber that gets little for a while (audio, a
                # paused video) keeps what its path was shown to carry.
                if rate > cap:
                    rate = max(self._delay_rate, cap)
            ceiling, found_at = self._probe_short
            if found_at > -math.inf:
                # Past what the last probe found the path to carry, only a
                # probe that finds more lifts the rate: growing past it on
                # the media's say-so sent a queued path's allocation a
                # layer up every few seconds, and the queue that built then
                # cut the rate under the layers that were flowing.
                rate = min(rate, max(ceiling, self._delay_rate))
        # UNDERUSING: hold, the queue is draining.
        self._delay_rate = max(float(self.min_bitrate), min(float(self.max_bitrate), rate))

    @property
    def loss_capacity(self) -> float | None:
        """The rate the path carried when it last lost packets to congestion,
        while that is recent (``LOSS_HOLD``); else None."""
        return self._loss_capacity or None

    def _capacity_at(self, now: float) -> float | None:
        if self._loss_capacity and now - self._loss_capacity_at < LOSS_HOLD:
            return self._loss_capacity
        self._loss_capacity = 0.0
        return None

    def _update_loss(self, lost: int, total: int, now: float) -> None:
        if self._window_start is None:
            self._window_start = now
        self._window_lost += lost
        self._window_total += total
        if now - self._window_start < LOSS_WINDOW or self._window_total < LOSS_PACKETS:
            return
        share = self._window_lost / self._window_total
        # What got through over the window: a policer that counts bytes per
        # second (coturn's --max-bps) passes nothing for the rest of a second
        # once its budget is spent, so a shorter measure would read near zero.
        carried = self._window_bytes * 8 / max(now - self._window_start, LOSS_WINDOW)
        self._window_lost = self._window_total = self._window_bytes = 0
        self._window_start = now
        last, self._loss_decided = self._loss_decided, now
        dt = LOSS_WINDOW if last is None else min(max(now - last, 0.0), 1.0)
        capacity = self._capacity_at(now)
        rate = self._loss_rate
        # The window right after a backoff still reports packets sent before
        # it: that loss was answered already, and what the window carried is
        # the slowed sender's, not the path's (taking it for the capacity
        # learnt a policer's rate as half of it).
        settling = self._backoff is not None and self._backoff[2] == AFTER
        backoff = not settling and (
            share > LOSS_HIGH
            or (share > LOSS_LOW and capacity is not None and rate >= 0.9 * capacity)
        )
        if self._backoff is not None:
            before, least, left = self._backoff
            least = min(least, share)
            self._backoff = (before, least, left - 1)
            if left <= 1 or backoff:
                self._backoff = None
                judged = self._judged
                judged.append((before, least))
                lost_before = sum(b for b, _ in judged)
                self.loss_follows_rate = sum(a for _, a in judged) < FOLLOWS * lost_before
        if backoff:
            self._backed_off_at = now
            self._probe_wait = PROBE_INTERVAL
            if carried > 0:
                self._backoff = (share, math.inf, AFTER)
                # What got through while packets were lost is what the path
                # carries: a policer's rate, or a bottleneck's.
                self._loss_capacity, self._loss_capacity_at = carried, now
                rate = min(rate, LOSS_BACKOFF * carried)
                if self._ramp is not None or self._ramp_held is not None:
                    # A ramp's own padding (or the step it reached) made the
                    # loss: back to the rate the path carried cleanly before
                    # it, not below it (a lossy window under a policer that
                    # counts bytes per second can read far under its rate).
                    rate = max(rate, min(self._ramp_from, self._loss_rate))
                if now - self.overuse.overused_at > 2 * LOSS_WINDOW:
                    # Lost with no queue building first: a policer, whose
                    # bucket lets probes through (see _finish_probes).
                    self.policed = True
            else:
                rate *= 1 - 0.5 * share
        elif share < LOSS_LOW:
            if capacity is not None and rate < 1.5 * capacity:
                # Near a capacity that lost packets, up only as far as the
                # media tests: a rate never carried is not known to pass, and
                # an allocation that trusted it would send a policer a layer
                # it drops (libwebrtc caps its increase by the acknowledged
                # rate the same way).
                tested = max(rate, LOSS_NEAR * capacity, LOSS_TESTED * carried)
                rate = min(rate + LOSS_ADDITIVE * capacity * dt, tested)
            else:
                grown = min(rate * GROWTH**dt, self._delay_rate * 1.5)
                if self.policed:
                    # Only the media (or, once the capacity is old, a probe)
                    # tests a policed path.
                    grown = min(grown, max(rate, LOSS_TESTED * carried))
                rate = grown
            if self._ramp is not None and carried * RAMP_OVER >= self._ramp[0]:
                # A ramp's padding showed the target pass without loss.
                rate = max(rate, self._ramp[0])
        self._loss_rate = max(float(self.min_bitrate), min(float(self.max_bitrate), rate))

    # -- ramping -------------------------------------------------------------------

    def padding(self, sending: float, step: float, now: float, *, resume: bool = True) -> float:
        """Bits per second of padding to send now on top of ``sending`` (what
        the media sends), so that the path carries ``step``: the least rate
        above the estimate at which the caller would send more (0: none);
        ``resume``: the step brings back something paused (else it only
        betters what is sent). Only on a ``policed`` path (see the module
        docstring); 0 otherwise."""
        held = self._ramp_held
        if held is not None:
            # A target reached must hold: RAMP_TIME once the media runs at a
            # step (a policer's bucket may have let the padding through), a
            # loss window for a part of the way.
            when, target, hold, resumed = held
            if self._backed_off_at >= when or self.overuse.overused_at >= when:
                self._ramp_failed(target, resumed, now)
            elif now - when > hold:
                self._ramp_held = None
                self._ramp_wait = RAMP_WAIT
                # A part that held lets the next be bigger; a step reached
                # starts the next climb small.
                self._ramp_streak = self._ramp_streak + 1 if hold < RAMP_TIME else 0
        ramp = self._ramp
        if ramp is not None:
            target, started, whole, resumed = ramp
            if self._backed_off_at >= started or self.overuse.overused_at >= started:
                # Loss or a queue building: the path does not carry the
                # target (the loss controller learnt what it does carry).
                self._ramp = None
                self._ramp_failed(target, resumed, now)
                return 0.0
            if now - started > RAMP_TIME:
                # Never got there (what was sent fell short): no verdict.
                self._ramp = None
                self._ramp_next = now + RAMP_WAIT
                return 0.0
            if self.estimate < target and step:
                return max(0.0, RAMP_OVER * target - sending)
            # There: the media takes over (or no longer wants more).
            self._ramp = None
            self._ramp_held = (now, target, RAMP_TIME if whole else LOSS_WINDOW, resumed)
            return 0.0
        capacity = self._capacity_at(now)
        # Parts double while they pass (a lifted policer is found in a few
        # ramps, not dozens), and start small again after a failure.
        part = 1 + min((RAMP_PART - 1) * 2**self._ramp_streak, 1.0)
        target = step if step <= RAMP_REACH * self.estimate else part * self.estimate
        ceiling, failed_at = self._ramp_ceiling
        if (
            self._ramp_held is not None
            or (not resume and now - max(failed_at, self._loss_capacity_at) < self._upgrade_wait)
            or not self.policed
            or not step
            or target <= self.estimate
            or (target < step and target >= ceiling and now - failed_at < RAMP_WAIT_MAX)
            or (
                capacity is not None
                and target > capacity
                and now - self._loss_capacity_at < RAMP_RETEST
            )
            or now < self._ramp_next
            or self.loss > LOSS_LOW
            or self.overuse.usage is Usage.OVERUSING
        ):
            return 0.0
        self._ramp = (target, now, target == step, resume)
        self._ramp_from = self._loss_rate
        return max(0.0, RAMP_OVER * target - sending)

    def _ramp_failed(self, target: float, resumed: bool, now: float) -> None:
        self._ramp_held = None
        if not resumed:
            self._upgrade_wait = min(2 * self._upgrade_wait, UPGRADE_WAIT_MAX)
        self._ramp_streak = 0
        self._ramp_ceiling = (target, now)
        self._ramp_next = now + self._ramp_wait
        self._ramp_wait = min(2 * self._ramp_wait, RAMP_WAIT_MAX)
        self.ramps_failed += 1

    # -- probing -------------------------------------------------------------------

    def probe(self, wanted: int, now: float) -> Probe | None:
        """A cluster of padding to send now, when the caller ``wanted`` more
        than the estimate and a probe is due; else None."""
        estimate = self.estimate
        if (
            wanted <= estimate
            or self._ramp is not None
            or self.overuse.usage is Usage.OVERUSING
            or self.loss > LOSS_HIGH / 2
            or now - self._last_probe < self._probe_wait
            or self.clusters
        ):
            return None
        self._last_probe = now
        bitrate = int(min(max(wanted, 2 * estimate), 3 * estimate, self.max_bitrate))
        probe = self.clusters.start(bitrate, now)
        self.probes_sent += 1
        return probe

    def _finish_probes(self, now: float) -> None:
        for finding in self.clusters.finished(now):
            result = finding.rate
            if result < PROBE_SHORT * finding.bitrate:
                # The path's ceiling, not the cluster's rate; the highest
                # such finding counts (a cluster that met a burst of cross
                # traffic reads low, and must not hold the rate down).
                self._probe_short = (max(0.95 * result, self._probe_short[0]), finding.started)
                if 0.95 * result <= self.estimate:
                    # Nothing above the estimate either: probing again soon
                    # finds the same and only builds a queue each time.
                    self._probe_wait = min(2 * self._probe_wait, PROBE_WAIT_MAX)
                else:
                    self._probe_wait = PROBE_INTERVAL
            else:
                self._probe_wait = PROBE_INTERVAL
                self._probe_short = (0.0, -math.inf)
            if (
                result > self.estimate
                and self.overuse.usage is not Usage.OVERUSING
                and self.loss < LOSS_HIGH
            ):
                # Probes reach a little beyond what the path takes for long.
                found = 0.95 * result
                self.probes_succeeded += 1
                self._delay_rate = max(self._delay_rate, found)
                fresh = self._capacity_at(now) is not None
                if (
                    self.loss < LOSS_LOW
                    and not self.policed
                    and (not fresh or self.loss_follows_rate)
                ):
                    # Random loss (a radio link) is the loss controller's to
                    # judge: a probe lifts it only on a clean path, or on a
                    # queue whose loss stopped once less was sent (there the
                    # capacity a lossy window learnt may be the slowed
                    # sender's: a queued visit sat 30 s under a capacity of
                    # 359k while every probe found 460k). Never on a policed
                    # path: its bucket lets a probe's short burst through at
                    # any rate (a probe that lifted it once the policer's
                    # rate was old sent the allocation 50 % past the
                    # policer, and the visit lost half its packets for a
                    # second); a ramp's sustained padding tests it instead.
                    self._loss_rate = max(self._loss_rate, found)
                    if fresh:
                        self._loss_capacity = max(self._loss_capacity, found)
                self._probe_floor = found
                self._probe_until = now + PROBE_HOLD
