"""Bandwidth feedback: transport-wide CC feedback round trips, and the REMB estimator.

Every feedback we emit is serialized, parsed back with rtc.rtcp's parser and
checked against the arrivals that produced it: each received transport
sequence number reported received with its arrival time in 250 us ticks,
each missing one reported not received, across wraparound, reordering,
duplicates, losses and feedback boundaries. REMB is read back with aiortc's
REMB decoder as well.
"""

from __future__ import annotations

import itertools
import random

import pytest
from aiortc import rtp as artp
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc.rtcp.compound import parse_compound
from rtc.rtcp.feedback import Remb
from rtc.rtcp.transport_cc import TransportCc
from sfu.errors import SfuStateError
from sfu.feedback.bandwidth import BandwidthFeedback, RembEstimator, TransportCcRecorder
from sfu.feedback.receiving import ReceiveStatistics

TICKS = 4000  # 250 us per tick


def roundtrip(fb: TransportCc, max_size: int = 1200) -> TransportCc:
    data = bytes(fb)
    assert len(data) <= max_size
    (parsed,) = parse_compound(data)
    assert isinstance(parsed, TransportCc)
    assert bytes(parsed) == data
    return parsed


class Check:
    """Collects a recorder's feedback and checks it against the true arrivals."""

    def __init__(self, rec: TransportCcRecorder) -> None:
        self.rec = rec
        self.first: dict[int, float] = {}  # unwrapped seq -> earliest arrival
        self.epoch: float | None = None
        self.reported_received: dict[int, float] = {}
        self.reported_lost: set[int] = set()
        self.covered: set[int] = set()
        self.fb_counts: list[int] = []
        self.feedbacks: list[TransportCc] = []

    def arrive(self, useq: int, t: float) -> None:
        if self.epoch is None:
            self.epoch = t
        self.first[useq] = min(t, self.first.get(useq, t))
        self.rec.on_packet(useq & 0xFFFF, t)

    def ticks(self, useq: int) -> int:
        assert self.epoch is not None
        return round((self.first[useq] - self.epoch) * TICKS)

    def collect(self, now: float) -> list[TransportCc]:
        out = [roundtrip(fb, self.rec.max_size) for fb in self.rec.feedback(now)]
        for fb in out:
            self.fb_counts.append(fb.fb_count)
            self.feedbacks.append(fb)
            # Place the 16-bit base next to the numbers we sent.
            anchor = max(self.first)
            base = anchor + ((fb.base_sequence - anchor + 0x8000) & 0xFFFF) - 0x8000
            prev = fb.reference_time * 256
            for i, d in enumerate(fb.deltas):
                useq = base + i
                self.covered.add(useq)
                if d is None:
                    # Not received means not received by the time of this feedback.
                    assert useq not in self.first, f"{useq} arrived but reported lost"
                    self.reported_lost.add(useq)
                    continue
                # The receive delta, in 250 us ticks, from the previous
                # received packet (the first from the reference time).
                assert useq in self.first, f"{useq} reported received but never sent"
                assert d == self.ticks(useq) - prev
                prev = self.ticks(useq)
                self.reported_received[useq] = self.first[useq]
            # rtc.rtcp's own reading of arrival times agrees.
            for seq, at in fb.arrivals():
                useq = base + ((seq - base) & 0xFFFF)
                assert round(at * TICKS) == self.ticks(useq)
        return out

    def verify(self) -> None:
        lo, hi = min(self.first), max(self.first)
        # Every packet that arrived was reported received, at its first arrival.
        assert set(self.reported_received) == set(self.first)
        # Every number in between was covered; the missing ones reported lost
        # and never received.
        assert self.covered >= set(range(lo, hi + 1))
        missing = set(range(lo, hi + 1)) - set(self.first)
        assert missing <= self.reported_lost
        # One feedback count per packet, in order.
        assert self.fb_counts == [i & 0xFF for i in range(len(self.fb_counts))]


@st.composite
def traffic(draw: st.DrawFn) -> tuple[int, list[tuple[int, float]], list[int]]:
    """``(start, [(offset, arrival)], feedback points)`` for one transport.

    Offsets step by 1-3 (losses), are reordered locally, some repeat; arrival
    gaps are mostly milliseconds with the odd long pause (a delta that needs
    two bytes, or more than one delta can hold).
    """
    start = draw(st.one_of(st.integers(65400, 65535), st.integers(0, 65535)))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    n = draw(st.integers(1, 400))
    offsets = [0]
    for _ in range(n - 1):
        offsets.append(offsets[-1] + rnd.choice((1, 1, 1, 1, 2, 3)))
    for _ in range(draw(st.integers(0, n // 4))):
        i = rnd.randrange(0, n)
        j = min(n - 1, i + rnd.randrange(0, 6))
        offsets[i], offsets[j] = offsets[j], offsets[i]
    for _ in range(draw(st.integers(0, 10))):
        i = rnd.randrange(0, len(offsets))
        offsets.insert(min(len(offsets), i + rnd.randrange(1, 4)), offsets[i])
    t = draw(st.floats(0, 10_000, allow_nan=False))
    packets = []
    for off in offsets:
        t += rnd.choice((0.0, 0.0002, 0.001, 0.005, 0.02, 0.07)) if rnd.random() > 0.005 else 9.5
        packets.append((off, t))
    points = sorted(set(draw(st.lists(st.integers(1, len(packets)), max_size=12))))
    return start, packets, points


@settings(max_examples=200, deadline=None)
@given(traffic(), st.sampled_from([1200, 200, 60]))
def test_every_arrival_is_reported_with_its_delta(
    case: tuple[int, list[tuple[int, float]], list[int]], max_size: int
) -> None:
    start, packets, points = case
    check = Check(TransportCcRecorder(0xFEED, 0xA, max_size=max_size))
    fed = 0
    for point in [*points, len(packets)]:
        for off, t in packets[fed:point]:
            check.arrive(start + off, t)
        fed = point
        check.collect(packets[fed - 1][1])
    assert check.collect(packets[-1][1] + 1) == []  # nothing new, nothing sent
    check.verify()
    assert check.rec.sent == len(check.feedbacks)


def test_wraparound_in_one_feedback() -> None:
    rec = TransportCcRecorder(1, 2)
    for i, seq in enumerate([65534, 65535, 0, 1]):
        rec.on_packet(seq, 10.0 + i * 0.001)
    (fb,) = rec.feedback(10.1)
    fb = roundtrip(fb)
    assert (fb.sender_ssrc, fb.media_ssrc) == (1, 2)
    assert fb.base_sequence == 65534
    assert fb.deltas == [0, 4, 4, 4]  # 1 ms = 4 ticks; the first from the reference time
    assert fb.reference_time == 0  # times count from the first arrival


def test_loss_at_a_feedback_boundary_and_late_arrival() -> None:
    rec = TransportCcRecorder(1, 2)
    for seq in (10, 11, 12):
        rec.on_packet(seq, 1.000 + (seq - 10) * 0.002)
    (fb1,) = rec.feedback(1.1)
    assert [roundtrip(fb1).base_sequence, len(fb1.deltas)] == [10, 3]
    # 13 and 14 are lost for now; 15 arrives, then 13 turns up late.
    rec.on_packet(15, 1.110)
    (fb2,) = rec.feedback(1.2)
    fb2 = roundtrip(fb2)
    assert fb2.base_sequence == 13  # starts where the last ended: 13, 14 reported lost
    assert fb2.lost() == [13, 14]
    rec.on_packet(13, 1.250)
    (fb3,) = rec.feedback(1.3)
    fb3 = roundtrip(fb3)
    # The base goes back to the late packet and the feedback re-reports up to
    # the highest, with 15's remembered time (draft section 3.1: the base may decrease).
    assert fb3.base_sequence == 13
    assert [s for s, _ in fb3.arrivals()] == [13, 15]
    assert fb3.lost() == [14]
    assert fb3.deltas[2] is not None and fb3.deltas[2] < 0  # 15 arrived before 13
    assert [fb1.fb_count, fb2.fb_count, fb3.fb_count] == [0, 1, 2]


def test_duplicates_keep_the_first_arrival_and_too_late_is_dropped() -> None:
    rec = TransportCcRecorder(1, 2, reorder=100)
    rec.on_packet(500, 1.0)
    rec.on_packet(500, 1.5)
    rec.on_packet(501, 1.001)
    (fb,) = rec.feedback(2.0)
    assert roundtrip(fb).deltas == [0, 4]
    assert rec.duplicate == 1
    rec.on_packet(700, 2.0)
    rec.on_packet(550, 2.001)  # 150 behind the highest: too late to help
    (fb,) = rec.feedback(2.1)
    assert rec.late == 1
    assert fb.base_sequence == 502 and len(fb.deltas) == 199
    assert rec.feedback(2.2) == []


def test_forward_jump_reports_at_most_max_span() -> None:
    rec = TransportCcRecorder(1, 2, max_span=4096)
    for seq in range(10):
        rec.on_packet(seq, seq * 0.001)
    assert len(rec.feedback(0.1)) == 1
    rec.on_packet(20000, 0.2)  # 19990 numbers never seen: not worth a feedback each
    out = [roundtrip(f) for f in rec.feedback(0.3)]
    assert sum(len(f.deltas) for f in out) == 4096
    assert out[0].base_sequence == 20000 - 4095
    assert [s for f in out for s, _ in f.arrivals()] == [20000]


def test_long_pause_splits_the_feedback() -> None:
    rec = TransportCcRecorder(1, 2)
    rec.on_packet(1, 0.0)
    rec.on_packet(2, 9.0)  # 36000 ticks: more than a signed 16-bit delta
    fb = [roundtrip(f) for f in rec.feedback(9.1)]
    # 36000 ticks = 140 reference units of 256 ticks, and 160 ticks more.
    assert [(f.base_sequence, f.reference_time, f.deltas) for f in fb] == [
        (1, 0, [0]),
        (2, 140, [160]),
    ]


def test_large_batch_splits_under_the_size_limit() -> None:
    rec = TransportCcRecorder(1, 2, max_size=1200)
    t = 0.0
    for seq in range(3000):
        t += 0.07 if seq % 2 else 0.0001  # alternating 2-byte and 1-byte deltas
        rec.on_packet(seq, t)
    out = [roundtrip(f) for f in rec.feedback(t)]
    assert len(out) > 3
    assert sum(len(f.deltas) for f in out) == 3000
    bases = [f.base_sequence for f in out]
    assert bases == sorted(bases) and bases[0] == 0


@pytest.mark.parametrize("pattern", [(0.0001, 0.07), (0.07,), (0.0001,), (0.0001, 0.0001, 0.07)])
def test_feedback_never_exceeds_max_size(pattern: tuple[float, ...]) -> None:
    # Every size from tiny to a few chunks, so the padding to a word boundary
    # is hit in every position against every mix of 1- and 2-byte deltas.
    for max_size in range(32, 120):
        rec = TransportCcRecorder(1, 2, max_size=max_size)
        t = 0.0
        for seq in range(300):
            t += pattern[seq % len(pattern)]
            rec.on_packet(seq, t)
        out = [roundtrip(f, max_size) for f in rec.feedback(t)]
        assert sum(len(f.deltas) for f in out) == 300


# -- REMB -------------------------------------------------------------------------------


def feed(stats: ReceiveStatistics, seq: int, t: float, size: int, lost: bool = False) -> None:
    if not lost:
        stats.on_packet(seq & 0xFFFF, seq * 3000, t, size)


def run_remb(
    est: RembEstimator,
    stats: ReceiveStatistics,
    seconds: float,
    bitrate: float,
    start: float = 0.0,
    seq: int = 0,
    loss: float = 0.0,
) -> tuple[list[tuple[float, Remb]], int]:
    """Feed ``bitrate`` in 1000-byte packets and tick every 100 ms; the REMBs."""
    rnd = random.Random(7)
    out = []
    gap = 8000 / bitrate
    t = start
    tick = start + 0.1
    while t < start + seconds:
        feed(stats, seq, t, 1000, lost=rnd.random() < loss)
        seq += 1
        t += gap
        while tick <= t:
            remb = est.update(tick)
            if remb is not None:
                out.append((tick, remb))
            tick += 0.1
    return out, seq


def test_remb_starts_with_headroom_and_is_sent_once_a_second() -> None:
    stats = ReceiveStatistics(0xB, 90000)
    est = RembEstimator(0xFEED)
    est.add_source(stats)
    out, _ = run_remb(est, stats, 5.0, 500_000)
    assert out
    times = [t for t, _ in out]
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))
    for _, remb in out:
        assert remb.ssrcs == [0xB]
        assert 700_000 < remb.bitrate < 800_000  # 1.5 x 500 kbit/s
    # What aiortc's sender reads from it.
    data = bytes(out[-1][1])
    (psfb,) = artp.RtcpPacket.parse(data)
    assert isinstance(psfb, artp.RtcpPsfbPacket) and psfb.fmt == 15
    bitrate, ssrcs = artp.unpack_remb_fci(psfb.fci)
    assert (bitrate, ssrcs) == (out[-1][1].bitrate, [0xB])


def test_remb_follows_the_sender_up_to_the_cap() -> None:
    stats = ReceiveStatistics(0xB, 90000)
    est = RembEstimator(0xFEED, max_bitrate=2_500_000)
    est.add_source(stats)
    out, _ = run_remb(est, stats, 4.0, 3_000_000)
    assert out[-1][1].bitrate == 2_500_000


def test_remb_drops_at_once_on_heavy_loss_then_ramps_slowly() -> None:
    stats = ReceiveStatistics(0xB, 90000)
    est = RembEstimator(0xFEED)
    est.add_source(stats)
    out, seq = run_remb(est, stats, 3.0, 1_000_000)
    before = out[-1][1].bitrate
    assert 1_400_000 < before < 1_600_000
    lossy, seq = run_remb(est, stats, 1.5, 1_000_000, start=3.0, seq=seq, loss=0.5)
    # The first REMB after the loss shows comes early (well under a second
    # after the previous) and lower by far more than 3%.
    first_t, first = lossy[0]
    assert first.bitrate < before * 0.97
    assert first_t - out[-1][0] < 1.0
    low = min(r.bitrate for _, r in lossy)
    assert low < 1_000_000 * 0.9  # below what arrives: back off
    # One cut per window: 1.5 s of loss cut twice, not at every 100 ms tick.
    assert len(lossy) == 2
    assert low > 250_000
    # Clean again: growth of at most 8% a second.
    clean, _ = run_remb(est, stats, 3.0, 1_000_000, start=4.5, seq=seq)
    values = [low] + [r.bitrate for _, r in clean]
    assert values[-1] > low
    rates = [r.bitrate for _, r in clean]
    times = [t for t, _ in clean]
    for i in range(1, len(rates)):
        assert rates[i] <= rates[i - 1] * 1.08 ** (times[i] - times[i - 1]) + 16


def test_remb_needs_a_source_and_half_a_window() -> None:
    est = RembEstimator(0xFEED)
    assert est.update(1.0) is None
    stats = ReceiveStatistics(0xB, 90000)
    est.add_source(stats)
    stats.on_packet(1, 0, 1.0, 1000)
    assert est.update(1.0) is None
    assert est.update(1.2) is None
    assert est.update(1.6) is not None  # the floor: min_bitrate
    assert est.estimate == est.min_bitrate
    est.remove_source(0xB)
    assert est.update(2.0) is None
    with pytest.raises(ValueError, match="min_bitrate"):
        RembEstimator(1, min_bitrate=0)


# -- the timer that drives them -------------------------------------------------------------


def test_feedback_timer_drives_every_transport() -> None:
    fb = BandwidthFeedback(interval=0.1)
    assert fb.get_timer() is None
    rec = TransportCcRecorder(0xFEED, 0xA)
    stats = ReceiveStatistics(0xB, 90000)
    est = RembEstimator(0xFEED)
    est.add_source(stats)
    fb.add("chrome", rec, 0.0)
    fb.add("aiortc", est, 0.0)
    with pytest.raises(SfuStateError):
        fb.add("chrome", rec, 0.0)
    assert fb.get("chrome") is rec
    sent: dict[str, list[object]] = {"chrome": [], "aiortc": []}
    seq = 0
    t = 0.0
    while t < 3.0:
        rec.on_packet(seq & 0xFFFF, t)
        stats.on_packet(seq & 0xFFFF, seq * 3000, t, 1200)
        seq += 1
        t += 0.005
        timer = fb.get_timer()
        assert timer is not None
        if timer <= t:
            for key, packet in fb.handle_timer(t):
                sent[str(key)].append(packet)
            nxt = fb.get_timer()
            assert nxt is not None and nxt > t
    assert 25 <= len(sent["chrome"]) <= 31  # one per 100 ms tick
    assert all(isinstance(p, TransportCc) for p in sent["chrome"])
    assert 2 <= len(sent["aiortc"]) <= 4  # about one a second
    assert all(isinstance(p, Remb) for p in sent["aiortc"])
    assert fb.handle_timer(0.0) == []  # not due
    fb.remove("chrome")
    fb.remove("aiortc")
    assert fb.get_timer() is None
