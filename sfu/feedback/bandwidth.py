"""Bandwidth feedback to publishers, so their encoders adapt to their uplink.

A browser's congestion controller decides how fast it sends from what the
receiver tells it; the SFU is that receiver on each publisher's transport.
Two kinds of feedback, chosen by what the publisher negotiated:

- transport-wide CC (draft-holmer-rmcat-transport-wide-cc-extensions-01):
  the receiver reports when each packet of the transport arrived and the
  sender's delay-based estimator (Google Congestion Control) does the rest.
  Chromium and Firefox negotiate it, and our SDP answer accepts it.
  :class:`TransportCcRecorder` records ``(transport sequence number, arrival)``
  on the hot path and emits :class:`rtc.rtcp.transport_cc.TransportCc` feedback.
- REMB (draft-alvestrand-rmcat-remb-03): the receiver estimates the bitrate
  itself and sends a cap. For publishers that offer ``goog-remb`` but not
  transport-cc (aiortc, for one). :class:`RembEstimator` is a simple
  estimator over what the SFU already counts.

:class:`BandwidthFeedback` drives either kind for every publisher transport
of a worker from one periodic timer (aioquic's ``get_timer``/``handle_timer``).
Sans-I/O: ``now`` is seconds on the adapter's monotonic clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

from rtc.rtcp.compound import RtcpPacket
from rtc.rtcp.feedback import Remb
from rtc.rtcp.transport_cc import TransportCc
from sfu.errors import SfuStateError
from sfu.feedback.receiving import ReceiveStatistics

__all__ = ["BandwidthFeedback", "RembEstimator", "TransportCcRecorder"]

Key = Hashable

_TICKS_PER_SECOND = 4000  # receive deltas count 250 us (draft section 3.1.5)
_TICKS_PER_REFERENCE = 256  # the reference time counts 64 ms (section 3.1)
_HEADER_SIZE = 20  # RTCP header, two SSRCs, base, count, reference time, fb count


class TransportCcRecorder:
    """Transport-wide CC feedback for one publisher transport (draft-holmer-...-01 section 3.1).

    :meth:`on_packet` runs on the hot path for every RTP packet the transport
    delivers with a transport-wide sequence number (media, RTX and padding
    probes alike: the sender's estimator wants them all); it appends to two
    lists and nothing else. :meth:`feedback`, from a timer every 50-100 ms
    (libwebrtc's receivers send every 100 ms by default), turns what arrived
    since into feedback packets.

    Each feedback starts where the previous one ended, so a packet lost
    around the boundary is still reported not received, and runs to the
    highest number seen. A packet that arrives after a feedback reported it
    missing (reordering) makes the next feedback start again at it, with the
    arrival times of the packets after it that are still remembered, as
    libwebrtc does: the base sequence number may go back (section 3.1). A
    duplicate keeps its first arrival. Sequence numbers are unwrapped, so
    wraparound is invisible. Numbers more than ``reorder`` behind the highest
    are too late to help the sender and are dropped and counted.

    A feedback is split where it would pass ``max_size`` bytes, or where two
    consecutive arrivals are further apart than a signed 16-bit delta holds
    (8.19 s); a split starts a new feedback, with the next feedback count.
    Times are counted from the first arrival, so the 24-bit reference time
    starts near zero and wraps only after twelve days.
    """

    __slots__ = (
        "_arrivals",
        "_epoch",
        "_fb_count",
        "_next",
        "_seqs",
        "_times",
        "_top",
        "duplicate",
        "late",
        "max_size",
        "max_span",
        "media_ssrc",
        "reorder",
        "sender_ssrc",
        "sent",
    )

    def __init__(
        self,
        sender_ssrc: int,
        media_ssrc: int = 0,
        *,
        max_size: int = 1200,
        reorder: int = 1000,
        max_span: int = 4096,
    ) -> None:
        self.sender_ssrc = sender_ssrc
        self.media_ssrc = media_ssrc
        """The "SSRC of media source" field: one of the publisher's media SSRCs
        (libwebrtc puts the latest packet's there; senders do not use it)."""
        self.max_size = max_size
        self.reorder = reorder
        self.max_span = max_span
        self._seqs: list[int] = []
        self._times: list[float] = []
        # Unwrapped sequence number -> arrival, for the last ``reorder`` numbers.
        self._arrivals: dict[int, float] = {}
        self._top: int | None = None
        self._next: int | None = None
        self._epoch = 0.0
        self._fb_count = 0
        self.late = 0
        self.duplicate = 0
        self.sent = 0
        """Feedback packets emitted."""

    def on_packet(self, transport_seq: int, now: float) -> None:
        """Record one arrival: the packet's transport-wide sequence number and ``now``."""
        self._seqs.append(transport_seq)
        self._times.append(now)

    @property
    def pending(self) -> int:
        """Arrivals recorded since the last feedback."""
        return len(self._seqs)

    def feedback(self, now: float) -> list[TransportCc]:
        """Feedback covering every arrival since the last call; none if nothing arrived."""
        seqs, times = self._seqs, self._times
        if not seqs:
            return []
        self._seqs, self._times = [], []
        arrivals = self._arrivals
        top = self._top
        lo = self._next
        if top is None:
            top = seqs[0]
            self._epoch = times[0]
        reorder = self.reorder
        for seq, t in zip(seqs, times, strict=True):
            u = top + ((seq - top + 0x8000) & 0xFFFF) - 0x8000
            if top - u >= reorder:
                self.late += 1
                continue
            if u in arrivals:
                # Arrivals come in order: the first one stands.
                self.duplicate += 1
                continue
            arrivals[u] = t
            if u > top:
                top = u
            if lo is None or u < lo:
                lo = u
        self._top = top
        if lo is None or lo > top:
            return []  # only duplicates and late packets
        lo = max(lo, top - self.max_span + 1)
        self._next = top + 1
        out = self._build(lo, top)
        # Forget arrivals too old to be re-reported. The dict is in arrival
        # order, which is nearly sequence order: stop at the first recent one.
        cutoff = top - reorder
        stale = []
        for u in arrivals:
            if u >= cutoff:
                break
            stale.append(u)
        for u in stale:
            del arrivals[u]
        return out

    def _build(self, lo: int, top: int) -> list[TransportCc]:
        arrivals = self._arrivals
        epoch = self._epoch
        # Up to 3 bytes of padding end the packet on a word (RFC 3550 6.4.1).
        limit = self.max_size - _HEADER_SIZE - 3
        out: list[TransportCc] = []
        u = lo
        while u <= top:
            base = u
            deltas: list[int | None] = []
            reference: int | None = None
            prev = 0
            delta_bytes = 0
            while u <= top:
                t = arrivals.get(u)
                cost = 0
                d: int | None = None
                ticks = 0
                if t is not None:
                    ticks = round((t - epoch) * _TICKS_PER_SECOND)
                    if reference is None:
                        reference = ticks // _TICKS_PER_REFERENCE
                        prev = reference * _TICKS_PER_REFERENCE
                    d = ticks - prev
                    if not -0x8000 <= d <= 0x7FFF:
                        break  # a gap one delta cannot span: next feedback
                    cost = 1 if 0 <= d <= 0xFF else 2
                # Worst case for the status chunks: one 2-byte chunk per 7 statuses.
                n = len(deltas) + 1
                if deltas and delta_bytes + cost + 2 * ((n + 6) // 7) > limit:
                    break
                deltas.append(d)
                delta_bytes += cost
                if d is not None:
                    prev = ticks
                u += 1
            if reference is None:
                continue  # a stretch of numbers none of which arrived: nothing to say
            out.append(
                TransportCc(
                    self.sender_ssrc,
                    self.media_ssrc,
                    base & 0xFFFF,
                    reference & 0xFFFFFF,
                    self._fb_count,
                    deltas,
                )
            )
            self._fb_count = (self._fb_count + 1) & 0xFF
        self.sent += len(out)
        return out


class RembEstimator:
    """A receiver-side bitrate cap for one publisher, sent as REMB (draft-alvestrand-rmcat-remb-03).

    It reads what the reports already count: the bytes and the loss of the
    publisher's streams it is given (:class:`~sfu.feedback.receiving.ReceiveStatistics`,
    usually its video), over a sliding ``window``. The estimate:

    - starts at ``headroom`` times the received bitrate and, until the first
      loss, follows it up (never down): a REMB equal to what arrives would pin
      an encoder that sets its target from REMB (aiortc's does) at its current
      rate, and the rate would only ever fall;
    - on loss above ``loss_high`` (10%) over the window drops to the received
      bitrate times (1 - loss / 2), at most once a window (the loss it
      measures must be the new rate's before it cuts again); after that it
      grows by at most ``ramp`` (8%) a second, and never past ``headroom``
      times what arrives, while loss stays under ``loss_low`` (2%); in
      between it holds. These are the loss-based rules of Google Congestion
      Control (draft-ietf-rmcat-gcc-02 section 6, and 5.5's cap);
    - stays within [``min_bitrate``, ``max_bitrate``] (2.5 Mbit/s by default,
      a generous cap for a consultation's camera).

    :meth:`update` runs on the feedback timer and returns a REMB when one is
    due: at most every ``interval`` (1 s), or at once when the estimate fell
    by more than ``drop`` (3%) since the last one sent, so a congested
    sender backs off without waiting.
    """

    __slots__ = (
        "_congested",
        "_decreased_at",
        "_estimate",
        "_samples",
        "_sent_at",
        "_sent_value",
        "_updated",
        "drop",
        "headroom",
        "interval",
        "loss_high",
        "loss_low",
        "max_bitrate",
        "min_bitrate",
        "ramp",
        "sender_ssrc",
        "sources",
        "window",
    )

    def __init__(
        self,
        sender_ssrc: int,
        *,
        max_bitrate: int = 2_500_000,
        min_bitrate: int = 50_000,
        window: float = 1.0,
        interval: float = 1.0,
        drop: float = 0.03,
        headroom: float = 1.5,
        ramp: float = 1.08,
        loss_high: float = 0.10,
        loss_low: float = 0.02,
    ) -> None:
        if not 0 < min_bitrate <= max_bitrate:
            raise ValueError("need 0 < min_bitrate <= max_bitrate")
        self.sender_ssrc = sender_ssrc
        self.max_bitrate = max_bitrate
        self.min_bitrate = min_bitrate
        self.window = window
        self.interval = interval
        self.drop = drop
        self.headroom = headroom
        self.ramp = ramp
        self.loss_high = loss_high
        self.loss_low = loss_low
        self.sources: dict[int, ReceiveStatistics] = {}
        # (now, octets, expected, received) summed over the sources.
        self._samples: deque[tuple[float, int, int, int]] = deque()
        self._estimate: float | None = None
        self._updated = 0.0
        self._congested = False
        self._decreased_at = float("-inf")
        self._sent_at = float("-inf")
        self._sent_value = 0

    def add_source(self, stats: ReceiveStatistics) -> None:
        """Count this stream's bytes and loss, and name its SSRC in the REMB."""
        self.sources[stats.ssrc] = stats
        self._samples.clear()  # the sums change meaning

    def remove_source(self, ssrc: int) -> None:
        """Stop counting a stream (unpublished)."""
        if self.sources.pop(ssrc, None) is not None:
            self._samples.clear()

    @property
    def estimate(self) -> int | None:
        """The current estimate in bits per second, ``None`` before the first."""
        return None if self._estimate is None else int(self._estimate)

    def update(self, now: float) -> Remb | None:
        """Refresh the estimate at ``now``; the REMB to send, if one is due."""
        if not self.sources:
            return None
        octets = expected = received = 0
        for s in self.sources.values():
            octets += s.octets
            expected += s.expected
            received += s.received
        samples = self._samples
        samples.append((now, octets, expected, received))
        while len(samples) > 1 and samples[1][0] <= now - self.window:
            samples.popleft()
        t0, octets0, expected0, received0 = samples[0]
        span = now - t0
        if span < self.window / 2:
            return None
        rate = max(0, octets - octets0) * 8 / span
        exp = expected - expected0
        lost = exp - (received - received0)
        loss = lost / exp if exp > 0 and lost > 0 else 0.0
        prev = self._estimate
        if prev is None:
            estimate = self.headroom * rate
        elif loss > self.loss_high:
            if now - self._decreased_at >= self.window:
                estimate = min(prev, rate) * (1 - loss / 2)
                self._decreased_at = now
                self._congested = True
            else:
                # The window still holds loss from before the last cut.
                estimate = prev
        elif loss >= self.loss_low:
            estimate = prev
        elif not self._congested:
            estimate = max(prev, self.headroom * rate)
        else:
            grown = prev * self.ramp ** (now - self._updated)
            estimate = max(prev, min(grown, self.headroom * rate))
        estimate = min(float(self.max_bitrate), max(float(self.min_bitrate), estimate))
        self._estimate = estimate
        self._updated = now
        value = int(estimate)
        if now - self._sent_at >= self.interval or value < self._sent_value * (1 - self.drop):
            self._sent_at = now
            self._sent_value = value
            return Remb(self.sender_ssrc, value, sorted(self.sources))
        return None


class BandwidthFeedback:
    """Feedback for every publisher transport of a worker, from one periodic timer.

    Each publisher transport (keyed as the adapter likes) has a
    :class:`TransportCcRecorder` or a :class:`RembEstimator`. Every
    ``interval`` seconds (100 ms) :meth:`handle_timer` asks each for its
    feedback and returns ``[(key, packet)]`` to send on that transport (as
    reduced-size RTCP, RFC 5506, or in a compound). One timer for all keeps
    the wake-ups at ten a second however many publishers the worker has.
    """

    def __init__(self, *, interval: float = 0.1) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._members: dict[Key, TransportCcRecorder | RembEstimator] = {}
        self._next: float | None = None

    def add(self, key: Key, member: TransportCcRecorder | RembEstimator, now: float) -> None:
        """Start feedback on a publisher transport."""
        if key in self._members:
            raise SfuStateError(f"transport {key!r} already has bandwidth feedback")
        self._members[key] = member
        if self._next is None:
            self._next = now + self.interval

    def remove(self, key: Key) -> None:
        """Stop feedback on a transport (closed); unknown keys are ignored."""
        self._members.pop(key, None)
        if not self._members:
            self._next = None

    def get(self, key: Key) -> TransportCcRecorder | RembEstimator | None:
        """The recorder or estimator of a transport, if any."""
        return self._members.get(key)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next wants to run, or ``None`` without transports."""
        return self._next

    def handle_timer(self, now: float) -> list[tuple[Key, RtcpPacket]]:
        """``[(transport, feedback packet)]`` due at ``now``."""
        if self._next is None or now < self._next:
            return []
        out: list[tuple[Key, RtcpPacket]] = []
        for key, member in self._members.items():
            if isinstance(member, TransportCcRecorder):
                for packet in member.feedback(now):
                    out.append((key, packet))
            else:
                remb = member.update(now)
                if remb is not None:
                    out.append((key, remb))
        # Fixed steps, but never a burst of catch-up ticks after a stall.
        self._next = max(self._next + self.interval, now + self.interval / 2)
        return out
