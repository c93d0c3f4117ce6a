"""RTCP reports: RFC 3550 A.1/A.3/A.8 arithmetic, lip-sync of sender reports, scheduling, RTT.

Reception statistics are checked against a model of the RFC's definitions and
against aiortc's own receiver statistics (an implementation no one here
wrote); what we emit is read back with aiortc's RTCP parser.
"""

from __future__ import annotations

import random
import types
from collections.abc import Hashable
from dataclasses import dataclass

import aiortc.rtcrtpreceiver as aiortc_receiver
import pytest
from aiortc import rtp as artp
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc.rtcp.compound import parse_compound
from rtc.rtcp.feedback import Nack, Pli
from rtc.rtcp.reports import (
    Bye,
    ReceiverReport,
    ReportBlock,
    SenderReport,
    SourceDescription,
    compact_ntp,
)
from rtc.rtp import header
from rtc.rtp.packet import RtpPacket
from rtc.rtp.sequence import RtpRewriter, ts_diff
from sfu.errors import SfuStateError
from sfu.feedback.receiving import ReceiveStatistics
from sfu.feedback.reports import (
    FEEDBACK_MAX,
    Deadlines,
    ReportScheduler,
    feedback_compounds,
    nack_interval_for,
    ntp_timestamp,
    rtt_from_block,
)
from sfu.feedback.sending import SendStatistics
from sfu.forward.forwarder import Forwarder

WALL = 1_700_000_000.0  # Unix time at monotonic zero, for the tests


@dataclass
class Sent:
    """An outgoing stream's counters, as a Forwarder subscription keeps them."""

    ssrc: int
    packets_sent: int = 0
    octets_sent: int = 0


def ntp_seconds(ntp: int) -> float:
    return (ntp >> 32) + (ntp & 0xFFFFFFFF) / 2**32


# -- NTP and RTT ----------------------------------------------------------------------


def test_ntp_timestamp_epoch_and_fraction() -> None:
    # RFC 3550 4: seconds since 1900 in the high word, fraction in the low word.
    assert ntp_timestamp(0.0) == 2208988800 << 32
    assert ntp_timestamp(0.5) == (2208988800 << 32) | 0x80000000
    assert ntp_timestamp(1.25) == (2208988801 << 32) | 0x40000000
    t = 1_712_345_678.123456
    assert abs(ntp_seconds(ntp_timestamp(t)) - 2208988800 - t) < 1e-6


def test_rtt_from_lsr_and_dlsr() -> None:
    sent = ntp_timestamp(WALL + 10.0)
    # The peer held our SR 30 ms; it comes back 80 ms after we sent it.
    block = ReportBlock(ssrc=1, lsr=compact_ntp(sent), dlsr=round(0.030 * 65536))
    rtt = rtt_from_block(block, ntp_timestamp(WALL + 10.080))
    assert rtt is not None
    assert abs(rtt - 0.050) < 1e-4
    assert rtt_from_block(ReportBlock(ssrc=1), ntp_timestamp(WALL)) is None  # no LSR yet
    # A DLSR longer than the time since our SR: not ours, or corrupt.
    bogus = ReportBlock(ssrc=1, lsr=compact_ntp(sent), dlsr=65536 * 5)
    assert rtt_from_block(bogus, ntp_timestamp(WALL + 10.080)) is None


def test_nack_interval_follows_rtt_within_bounds() -> None:
    assert nack_interval_for(None) == 0.1
    assert nack_interval_for(0.001) == 0.02
    assert nack_interval_for(0.1) == pytest.approx(0.125)
    assert nack_interval_for(3.0) == 0.4


# -- RFC 3550 A.1 / A.3 arithmetic ---------------------------------------------------


def test_wraparound_loss_and_fraction_by_hand() -> None:
    s = ReceiveStatistics(0xAA, 90000)
    # 65533, 65534, 65535, 0, 1, [2 lost], 3: seven expected, six received.
    for i, seq in enumerate([65533, 65534, 65535, 0, 1, 3]):
        s.on_packet(seq, 3000 * i, i * 0.033)
    block = s.report_block(1.0)
    assert block is not None
    assert block.highest_sequence == 0x10003  # one cycle, max 3
    assert block.packets_lost == 1
    assert block.fraction_lost == (1 << 8) // 7  # 36: 1/7 of 256
    # Next interval: 4..9 with 5 and 6 lost, then 5 arrives late.
    for seq in (4, 7, 8, 9, 5):
        s.on_packet(seq, 0, 1.5)
    block = s.report_block(2.0)
    assert block is not None
    assert block.highest_sequence == 0x10009
    assert block.packets_lost == 2  # 6 and the first interval's 2
    assert block.fraction_lost == (1 << 8) // 6  # 6 lost of 4..9
    # Duplicates make the interval's loss negative: reported as zero, and the
    # cumulative count goes down (RFC 3550 6.4.1).
    for seq in (9, 9, 9):
        s.on_packet(seq, 0, 2.5)
    block = s.report_block(3.0)
    assert block is not None
    assert block.fraction_lost == 0
    assert block.packets_lost == -1
    # Nothing heard since: no block (RFC 3550 6.4).
    assert s.report_block(4.0) is None


def test_restart_needs_two_sequential_packets() -> None:
    s = ReceiveStatistics(1, 48000)
    for seq in range(100, 110):
        s.on_packet(seq, seq * 960, seq * 0.02)
    s.on_packet(40000, 0, 3.0)  # a stray jump: not counted
    assert s.ignored == 1
    assert s.received == 10
    s.on_packet(110, 110 * 960, 3.1)
    assert s.expected == 11
    s.on_packet(50000, 0, 4.0)
    s.on_packet(50001, 960, 4.02)  # confirmed: a restarted source (A.1 init_seq)
    assert s.received == 1
    assert s.expected == 1
    assert s.extended_highest == 50001


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[int, list[int], list[int]]:
    """``(first seq, offsets from it in arrival order, report points)``.

    Offsets step forward by 1-6 (losses), are shuffled locally (reordering
    of up to 8 places, the first packet first), and some repeat
    (duplicates). The start is often just below the wrap. Swaps in a row
    carried a packet arbitrarily far, past MAX_MISORDER, where A.1 rightly
    counts it as a jump and not as received.
    """
    start = draw(st.one_of(st.integers(65000, 65535), st.integers(0, 65535)))
    steps = draw(st.lists(st.integers(1, 6), min_size=1, max_size=300))
    offsets = [0]
    for step in steps:
        offsets.append(offsets[-1] + step)
    rnd = random.Random(draw(st.integers(0, 2**32)))
    spread = draw(st.integers(0, 8))
    keys = [0.0] + [i + rnd.random() * spread for i in range(1, len(offsets))]
    offsets = [o for _, o in sorted(zip(keys, offsets, strict=True))]
    for _ in range(draw(st.integers(0, 20))):
        i = rnd.randrange(0, len(offsets))
        offsets.insert(min(len(offsets), i + rnd.randrange(1, 5)), offsets[i])
    points = sorted(draw(st.lists(st.integers(1, len(offsets)), max_size=6)))
    return start, offsets, points


@settings(max_examples=150, deadline=None)
@given(arrivals())
def test_loss_counters_match_rfc3550_definitions(case: tuple[int, list[int], list[int]]) -> None:
    start, offsets, points = case
    s = ReceiveStatistics(7, 90000)
    highest = received = 0
    prior_expected = prior_received = 0
    fed = 0
    for point in [*points, len(offsets)]:
        for off in offsets[fed:point]:
            s.on_packet((start + off) & 0xFFFF, 0, fed * 0.01)
            highest = max(highest, off)
            received += 1
        fed = point
        # A.3: expected from the first packet to the highest; lost = expected - received.
        expected = highest + 1
        assert s.extended_highest == start + highest
        assert s.expected == expected
        assert s.cumulative_lost == expected - received
        block = s.report_block(fed * 0.01)
        if received == prior_received:
            assert block is None
            continue
        assert block is not None
        e, r = expected - prior_expected, received - prior_received
        assert block.fraction_lost == (((e - r) << 8) // e if e > 0 and e > r else 0)
        assert block.packets_lost == expected - received
        assert block.highest_sequence == start + highest
        prior_expected, prior_received = expected, received


@settings(max_examples=60, deadline=None)
@given(arrivals(), st.integers(1, 4), st.randoms(use_true_random=False))
def test_counters_and_jitter_match_aiortc(
    case: tuple[int, list[int], list[int]], per_frame: int, rnd: random.Random
) -> None:
    """Same packets, same clock: our statistics equal aiortc's RTCRtpReceiver's."""
    start, offsets, points = case
    ours = ReceiveStatistics(7, 90000)
    theirs = aiortc_receiver.StreamStatistics(90000)
    clock = types.SimpleNamespace(now=1000.0)
    fake_time = types.SimpleNamespace(time=lambda: clock.now)
    fed = 0
    with pytest.MonkeyPatch.context() as mp:
        # aiortc reads time.time() itself; give it the arrival time we give ours.
        mp.setattr(aiortc_receiver, "time", fake_time)
        for point in [*points, len(offsets)]:
            for off in offsets[fed:point]:
                clock.now += rnd.choice((0.0, 0.001, 0.004, 0.011, 0.03))
                seq = (start + off) & 0xFFFF
                ts = 5000 + (off // per_frame) * 3000  # video frames of per_frame packets
                ours.on_packet(seq, ts, clock.now)
                theirs.add(artp.RtpPacket(sequence_number=seq, timestamp=ts))
            fed = point
            block = ours.report_block(clock.now)
            fraction = theirs.fraction_lost
            assert ours.expected == theirs.packets_expected
            assert ours.cumulative_lost == theirs.packets_lost
            assert ours.jitter == theirs.jitter
            if block is not None:
                assert block.fraction_lost == fraction
                assert block.jitter == theirs.jitter


def test_jitter_by_hand() -> None:
    """RFC 3550 A.8 in its integer form, one packet at a time (8 kHz, 20 ms packets)."""
    s = ReceiveStatistics(1, 8000)
    # (timestamp, arrival): the third packet is 5 ms late, the fourth on time.
    packets = [(0, 0.000), (160, 0.020), (320, 0.045), (480, 0.060), (640, 0.080)]
    seen = []
    for seq, (ts, t) in enumerate(packets):
        s.on_packet(seq, ts, t)
        seen.append(s.jitter)
    # Arrivals in timestamp units: 0, 160, 360, 480, 640.
    # D: -, 0, |200-160| = 40, |120-160| = 40, |160-160| = 0.
    # J*16: 0; 0 + 0 - 0 = 0; 0 + 40 - (8 >> 4) = 40; 40 + 40 - (48 >> 4) = 77;
    # 77 + 0 - (85 >> 4) = 72. J = J*16 >> 4: 0, 0, 2, 4, 4.
    # (The float form J += (|D| - J)/16 gives 0, 0, 2.5, 4.84, 4.54.)
    assert seen == [0, 0, 2, 4, 4]
    block = s.report_block(0.1)
    assert block is not None
    assert block.jitter == 4


def test_jitter_ignores_packets_of_the_same_frame_and_timestamp_wrap() -> None:
    s = ReceiveStatistics(1, 90000)
    ts = 0xFFFFFFFF - 1500  # wraps during the stream
    t = 0.0
    for frame in range(20):
        for k in range(5):  # a frame's packets leave the pacer 1 ms apart
            s.on_packet(frame * 5 + k, ts, t + 0.001 * k)
        ts = (ts + 3000) & 0xFFFFFFFF
        t += 3000 / 90000
    # Only a frame's first packet updates the jitter, against the previous
    # frame's last packet, 4 ms later than its own first: |D| = 360 units
    # every time (the wrap included). 19 updates of A.8's integer recursion:
    jq4 = 0
    for _ in range(19):
        jq4 += 360 - ((jq4 + 8) >> 4)
    assert s.jitter == jq4 >> 4
    assert 200 < s.jitter < 360


def test_lsr_and_dlsr_from_the_publishers_sender_report() -> None:
    s = ReceiveStatistics(9, 90000)
    s.on_packet(1, 0, 10.0)
    ntp = ntp_timestamp(WALL + 9.9)
    s.on_sender_report(ntp, 123456, 10.0)
    s.on_packet(2, 3000, 10.2)
    block = s.report_block(10.5)
    assert block is not None
    assert block.lsr == compact_ntp(ntp)
    assert block.dlsr == 32768  # 0.5 s in 1/65536 s


# -- sender reports keep lip-sync ------------------------------------------------------


def rewriter_offset(rw: RtpRewriter, seq: int, ts: int, now: float) -> int:
    """Run a packet through a real rewriter; the timestamp offset it applied."""
    mapped = rw.rewrite(seq, ts, now)
    assert mapped is not None
    return (mapped[1] - ts) & 0xFFFFFFFF


@pytest.mark.parametrize("video_delay", [0.040, 0.047])
def test_sender_reports_keep_the_publishers_audio_video_alignment(video_delay: float) -> None:
    # The publisher's wall clock runs 1000 s ahead of our monotonic clock.
    skew = 1000.0
    a0, v0 = 12345, 0xFFFFF000  # video's RTP clock wraps during the test

    def rtp_a(t: float) -> int:
        return (a0 + round(48000 * t)) & 0xFFFFFFFF

    def rtp_v(t: float) -> int:
        return (v0 + round(90000 * t)) & 0xFFFFFFFF

    audio = ReceiveStatistics(0xA, 48000)
    video = ReceiveStatistics(0xB, 90000)
    audio.on_packet(1, rtp_a(4.98), 4.98 - skew + 0.040)
    video.on_packet(1, rtp_v(4.97), 4.97 - skew + video_delay)
    # Each stream's SR leaves the publisher at its own time and crosses the same network.
    audio.on_sender_report(ntp_timestamp(5.00), rtp_a(5.00), 5.00 - skew + 0.040)
    video.on_sender_report(ntp_timestamp(5.30), rtp_v(5.30), 5.30 - skew + video_delay)

    # Each subscription's rewriter has its own offset: real rewriters, one of
    # them switched (a resume), so the offsets differ from each other and from 0.
    rw_a, rw_v = RtpRewriter(48000), RtpRewriter(90000)
    rewriter_offset(rw_a, 500, rtp_a(5.5), 5.5 - skew)
    rw_a.switch()
    off_a = rewriter_offset(rw_a, 700, rtp_a(5.9), 6.4 - skew)
    off_v = rewriter_offset(rw_v, 900, rtp_v(5.9), 5.9 - skew)
    assert off_a != 0

    send_a = SendStatistics(Sent(0x1A, 10, 1000), audio, lambda: off_a)
    send_v = SendStatistics(Sent(0x1B, 10, 9000), video, lambda: off_v)
    now = 6.5 - skew
    ntp = ntp_timestamp(now + WALL)
    sr_a = send_a.sender_report(now, ntp)
    sr_v = send_v.sender_report(now, ntp)
    assert sr_a is not None and sr_v is not None
    assert sr_a.ntp_timestamp == sr_v.ntp_timestamp == ntp

    # What a browser does: map each stream's RTP timestamps to NTP time with
    # its SR, and line up audio and video captured at the same instant.
    for capture in (5.0, 6.2, 6.5, 7.9):
        out_a = (rtp_a(capture) + off_a) & 0xFFFFFFFF
        out_v = (rtp_v(capture) + off_v) & 0xFFFFFFFF
        at_a = ntp_seconds(sr_a.ntp_timestamp) + ts_diff(out_a, sr_a.rtp_timestamp) / 48000
        at_v = ntp_seconds(sr_v.ntp_timestamp) + ts_diff(out_v, sr_v.rtp_timestamp) / 90000
        # Exact up to the timestamps' rounding when both SRs took as long;
        # off by the difference of their delays otherwise.
        assert abs((at_v - at_a) - (video_delay - 0.040)) < 1e-4


def test_a_publishers_pair_holds_at_its_own_ntp_time_however_late_its_sr_leaves() -> None:
    # aiortc pairs its last packet's send time with that packet's timestamp:
    # after its encoder stalled 1.5 s, the SR it sends carries a pair 1.5 s
    # old. Its clock runs 1000 s ahead of ours; each SR takes 10 ms to come.
    skew, delay = 1000.0, 0.010

    def rtp(t: float) -> int:
        return (7777 + round(90000 * t)) & 0xFFFFFFFF

    video = ReceiveStatistics(0xB, 90000)
    video.on_packet(1, rtp(0.0), 0.0 - skew + delay)
    for t in (1.0, 2.0):
        video.on_sender_report(ntp_timestamp(t), rtp(t), t - skew + delay)
    video.on_sender_report(ntp_timestamp(1.5), rtp(1.5), 3.0 - skew + delay)
    assert video.sr_arrival == pytest.approx(3.0 - skew + delay)
    assert video.sr_at == pytest.approx(1.5 - skew + delay)
    # Its clock now: off by the network's delay, not by the pair's age.
    now = 3.2 - skew
    assert ts_diff(video.rtp_timestamp_at(now) or 0, rtp(3.2)) == round(-delay * 90000)
    send = SendStatistics(Sent(0x1B, 2, 2400), video, lambda: 0)
    sr = send.sender_report(now, ntp_timestamp(WALL + now))
    assert sr is not None and abs(ts_diff(sr.rtp_timestamp, rtp(3.2))) <= 900


def test_a_publisher_whose_clock_stepped_back_is_read_on_its_new_clock() -> None:
    def rtp(t: float) -> int:
        return round(48000 * t) & 0xFFFFFFFF

    audio = ReceiveStatistics(0xA, 48000)
    audio.on_packet(1, rtp(0.0), 0.0)
    audio.on_sender_report(ntp_timestamp(WALL + 1.0), rtp(1.0), 1.0)
    # An NTP step: its wall clock now reads 60 s less; the pair is fresh.
    audio.on_sender_report(ntp_timestamp(WALL - 58.0), rtp(2.0), 2.0)
    assert audio.sr_at == pytest.approx(2.0)
    assert audio.rtp_timestamp_at(2.5) == rtp(2.5)


def test_a_pair_older_than_the_packets_is_lifted_to_them() -> None:
    # aiortc pairs a packet's send time with its timestamp: a sender that
    # sent one packet 0.2 s late pairs a timestamp 0.2 s behind its stream.
    # The worker's SRs follow the packets it forwarded, never behind them.
    def rtp(t: float) -> int:
        return round(48000 * t) & 0xFFFFFFFF

    # Packets come 25 ms after capture, an SR 5 ms after it leaves.
    audio = ReceiveStatistics(0xA, 48000)
    for i in range(50):
        audio.on_packet(i, rtp(i * 0.02), i * 0.02 + 0.025)
    audio.on_sender_report(ntp_timestamp(WALL + 1.0), rtp(0.8), 1.005)
    assert ts_diff(audio.rtp_timestamp_at(1.5) or 0, rtp(1.5)) == -1200  # the packets' 25 ms
    # A pair ahead of that bound (the packets' capture came before their
    # arrival) is the one followed.
    audio.on_sender_report(ntp_timestamp(WALL + 1.0), rtp(1.0), 1.005)
    assert ts_diff(audio.rtp_timestamp_at(1.5) or 0, rtp(1.5)) == -240  # the SR's 5 ms


def test_sender_report_extrapolates_before_the_first_publisher_sr() -> None:
    video = ReceiveStatistics(0xB, 90000)
    video.on_packet(1, 3000, 20.0)
    video.on_packet(2, 6000, 20.033)
    send = SendStatistics(Sent(0x1B, 2, 2400), video, lambda: 1000)
    sr = send.sender_report(20.5, ntp_timestamp(WALL + 20.5))
    assert sr is not None
    # Newest timestamp, advanced at 90 kHz since it arrived, then offset.
    assert sr.rtp_timestamp == 6000 + round((20.5 - 20.033) * 90000) + 1000
    assert (sr.packet_count, sr.octet_count) == (2, 2400)


def test_no_sender_report_before_anything_was_sent() -> None:
    video = ReceiveStatistics(0xB, 90000)
    video.on_packet(1, 3000, 20.0)
    sent = Sent(0x1B)
    send = SendStatistics(sent, video, lambda: 0)
    assert send.sender_report(21.0, 1) is None
    sent.packets_sent = 1
    assert send.sender_report(21.0, 1) is not None
    assert SendStatistics(sent, ReceiveStatistics(1, 90000), lambda: 0).sender_report(21, 1) is None


def test_sender_reports_follow_a_forwarder_subscription_through_mute() -> None:
    """A real Forwarder subscription feeds the counters, and its rewrite the offset."""
    fwd = Forwarder()
    fwd.add_track("pub", 0xA, kind="audio", codec="opus", clock_rate=48000)
    sub = fwd.subscribe("viewer", 0xA, 0.0, ssrc=0x51)
    audio = ReceiveStatistics(0xA, 48000)
    offset: list[int] = []
    send = SendStatistics(sub, audio, lambda: offset[-1] if offset else None, cname="c")

    def publish(seq: int, ts: int, now: float) -> None:
        packet = bytes(
            RtpPacket(
                payload_type=111, sequence_number=seq, timestamp=ts, ssrc=0xA, payload=b"\xf8" * 30
            )
        )
        audio.on_packet(seq, ts, now, len(packet))
        for _, out in fwd.route(packet, now):
            offset.append((header.timestamp(out) - ts) & 0xFFFFFFFF)

    ts0 = 777
    for i in range(50):
        publish(i, ts0 + 960 * i, i * 0.02)
    audio.on_sender_report(ntp_timestamp(100.0), ts0 + 960 * 49, 49 * 0.02)
    sr = send.sender_report(1.0, ntp_timestamp(WALL + 1.0))
    assert sr is not None
    assert (sr.packet_count, sr.octet_count) == (50, 50 * 30)
    assert sr.rtp_timestamp == (ts0 + 960 * 49 + round(0.02 * 48000) + offset[-1]) & 0xFFFFFFFF
    first_offset = offset[-1]

    # Mute for 3 s of wall time while the publisher's clock runs on: the
    # rewriter picks a new offset at the resume, and the SR follows it.
    fwd.set_muted(0xA, True, 1.0)
    for i in range(50, 200):
        publish(i, ts0 + 960 * i, i * 0.02)
    # The first packets after the resume come 250 ms late (a burst after a
    # stall): the rewriter bases the new run's offset on the wall clock, so
    # the offset changes, and the SR follows it.
    fwd.set_muted(0xA, False, 4.25)
    for i in range(200, 210):
        publish(i, ts0 + 960 * i, i * 0.02 + 0.25)
    assert offset[-1] == (first_offset + round(0.25 * 48000)) & 0xFFFFFFFF
    sr = send.sender_report(4.5, ntp_timestamp(WALL + 4.5))
    assert sr is not None
    expected = ts0 + 960 * 49 + round((4.5 - 49 * 0.02) * 48000) + offset[-1]
    assert sr.rtp_timestamp == expected & 0xFFFFFFFF
    assert sr.packet_count == sub.packets_sent == 60


# -- scheduling and compounds -----------------------------------------------------------


def make_scheduler(max_size: int = 1200) -> ReportScheduler:
    return ReportScheduler(
        ssrc=0xFEED, cname="wadud", wall_offset=WALL, max_size=max_size, rng=random.Random(5)
    )


def test_deadlines_keep_the_latest_setting_and_pop_in_order() -> None:
    d = Deadlines()
    d.set("a", 3.0)
    d.set("b", 1.0)
    d.set("a", 0.5)  # replaces 3.0
    d.set("c", 2.0)
    d.discard("c")
    assert d.earliest() == 0.5
    assert list(d.pop_due(1.0)) == ["a", "b"]
    assert d.earliest() is None
    assert len(d) == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 100) | st.none())))
def test_deadlines_match_a_dict_model(ops: list[tuple[int, float | None]]) -> None:
    d, model = Deadlines(), dict[Hashable, float]()
    for key, when in ops:
        if when is None:
            d.discard(key)
            model.pop(key, None)
        else:
            d.set(key, when)
            model[key] = when
        assert d.earliest() == (min(model.values()) if model else None)
    due = list(d.pop_due(50.0))
    assert set(due) == {k for k, w in model.items() if w <= 50.0}
    assert len(due) == len(set(due))
    assert [model[k] for k in due] == sorted(model[k] for k in due)


def test_timer_randomised_around_the_interval() -> None:
    sched = make_scheduler()
    sched.add_leg("pub", 0.0)
    first = sched.get_timer()
    assert first is not None and 0.25 <= first <= 0.75
    with pytest.raises(SfuStateError):
        sched.add_leg("pub", 0.0)
    with pytest.raises(SfuStateError):
        sched.add_receive("nobody", ReceiveStatistics(1, 8000))
    stats = ReceiveStatistics(0xA, 48000)
    sched.add_receive("pub", stats)
    now, gaps = first, []
    for i in range(200):
        stats.on_packet(i, 960 * i, now)
        out = sched.handle_timer(now)
        assert [k for k, _ in out] == ["pub"]
        nxt = sched.get_timer()
        assert nxt is not None
        gaps.append(nxt - now)
        now = nxt
    assert all(0.5 <= g <= 1.5 for g in gaps)
    assert 0.9 < sum(gaps) / len(gaps) < 1.1
    assert min(gaps) < 0.6 and max(gaps) > 1.4  # really spread, not a fixed beat
    sched.remove_leg("pub")
    assert sched.get_timer() is None


def test_publisher_leg_gets_receiver_reports_aiortc_can_read() -> None:
    sched = make_scheduler()
    sched.add_leg("pub", 0.0)
    audio, video = ReceiveStatistics(0xA, 48000), ReceiveStatistics(0xB, 90000)
    sched.add_receive("pub", audio)
    sched.add_receive("pub", video)
    for i in range(10):
        audio.on_packet(i, 960 * i, 0.02 * i)
        if i != 4:
            video.on_packet(100 + i, 3000 * i, 0.033 * i)
    # The publisher's SR for its video arrives in a compound we take in.
    sr_ntp = ntp_timestamp(50.0)
    sched.on_rtcp("pub", parse_compound(bytes(SenderReport(0xB, sr_ntp, 27000))), 0.2)
    timer = sched.get_timer()
    assert timer is not None
    out = sched.handle_timer(timer)
    assert len(out) == 1
    key, data = out[0]
    assert key == "pub"
    rr, sdes = parse_compound(data)
    assert isinstance(rr, ReceiverReport) and isinstance(sdes, SourceDescription)
    assert rr.ssrc == 0xFEED
    blocks = {b.ssrc: b for b in rr.reports}
    assert blocks[0xA].packets_lost == 0
    assert blocks[0xB].packets_lost == 1
    assert blocks[0xB].lsr == compact_ntp(sr_ntp)
    assert blocks[0xB].dlsr == round((timer - 0.2) * 65536)
    assert sdes.chunks[0].ssrc == 0xFEED and sdes.chunks[0].cname == "wadud"

    theirs = artp.RtcpPacket.parse(data)
    assert isinstance(theirs[0], artp.RtcpRrPacket)
    assert isinstance(theirs[1], artp.RtcpSdesPacket)
    assert theirs[0].ssrc == 0xFEED
    assert {
        (r.ssrc, r.packets_lost, r.highest_sequence, r.lsr, r.dlsr) for r in theirs[0].reports
    } == {(b.ssrc, b.packets_lost, b.highest_sequence, b.lsr, b.dlsr) for b in rr.reports}
    assert theirs[1].chunks[0].items == [(1, b"wadud")]


def test_subscriber_leg_gets_sender_reports_and_gives_rtt() -> None:
    sched = make_scheduler()
    sched.add_leg("sub", 0.0)
    audio, video = ReceiveStatistics(0xA, 48000), ReceiveStatistics(0xB, 90000)
    audio.on_packet(1, 960, 0.1)
    video.on_packet(1, 3000, 0.1)
    sched.add_send("sub", SendStatistics(Sent(0x1A, 5, 500), audio, lambda: 0, cname="alice"))
    sched.add_send("sub", SendStatistics(Sent(0x1B, 0), video, lambda: 0, cname="alice"))
    out = sched.report("sub", 1.0)
    assert len(out) == 1
    packets = parse_compound(out[0])
    # The video subscription has sent nothing yet: only audio is a sender.
    assert [type(p) for p in packets] == [SenderReport, SourceDescription]
    sr = packets[0]
    assert isinstance(sr, SenderReport) and sr.ssrc == 0x1A and sr.reports == []
    assert sr.ntp_timestamp == ntp_timestamp(WALL + 1.0)
    theirs = artp.RtcpPacket.parse(out[0])
    assert isinstance(theirs[0], artp.RtcpSrPacket)
    assert theirs[0].sender_info.ntp_timestamp == sr.ntp_timestamp
    assert theirs[0].sender_info.rtp_timestamp == sr.rtp_timestamp
    assert theirs[0].sender_info.packet_count == 5
    assert theirs[0].sender_info.octet_count == 500
    assert isinstance(theirs[1], artp.RtcpSdesPacket)
    assert theirs[1].chunks[0].items == [(1, b"alice")]

    # The browser answers with an RR, built here with aiortc's RTCP codec: it
    # held our SR for 20 ms and the reply lands 70 ms after we sent it.
    rr = artp.RtcpRrPacket(
        ssrc=1,
        reports=[
            artp.RtcpReceiverInfo(
                ssrc=0x1A,
                fraction_lost=0,
                packets_lost=0,
                highest_sequence=5,
                jitter=3,
                lsr=compact_ntp(sr.ntp_timestamp),
                dlsr=round(0.020 * 65536),
            ),
            # About an SSRC we do not send on this leg: ignored.
            artp.RtcpReceiverInfo(
                ssrc=0x99,
                fraction_lost=0,
                packets_lost=0,
                highest_sequence=0,
                jitter=0,
                lsr=1,
                dlsr=0,
            ),
        ],
    )
    sample = sched.on_rtcp("sub", parse_compound(bytes(rr)), 1.070)
    assert sample is not None and abs(sample - 0.050) < 1e-4
    assert sched.rtt("sub") == sample
    # Smoothed (RFC 6298, 1/8): a 130 ms sample moves it by 10 ms.
    rr.reports[0].dlsr = 0
    rr.reports[0].lsr = compact_ntp(ntp_timestamp(WALL + 2.0))
    sched.on_rtcp("sub", parse_compound(bytes(rr)), 2.130)
    rtt = sched.rtt("sub")
    assert rtt is not None and abs(rtt - 0.060) < 1e-4
    assert 0.02 < nack_interval_for(rtt) < 0.1


def test_many_streams_split_into_compounds_under_the_mtu() -> None:
    sched = make_scheduler(max_size=1200)
    sched.add_leg("sub", 0.0)
    src = ReceiveStatistics(0xA, 90000)
    src.on_packet(1, 0, 0.0)
    for i in range(100):
        sched.add_send(
            "sub",
            SendStatistics(
                Sent(0x1000 + i, 1, 100), src, lambda: 0, cname=f"participant-{i // 2:04d}"
            ),
        )
    sched.add_leg("pub", 0.0)
    for i in range(40):
        s = ReceiveStatistics(0x2000 + i, 90000)
        s.on_packet(1, 0, 0.0)
        sched.add_receive("pub", s)

    seen_sr: list[int] = []
    compounds = sched.report("sub", 1.0)
    assert len(compounds) > 1
    for data in compounds:
        assert len(data) <= 1200
        packets = parse_compound(data)
        assert isinstance(packets[0], SenderReport)
        sdes = packets[-1]
        assert isinstance(sdes, SourceDescription)
        srs = [p for p in packets if isinstance(p, SenderReport)]
        assert {c.ssrc for c in sdes.chunks} == {p.ssrc for p in srs}
        assert all(c.cname is not None and c.cname.startswith("participant-") for c in sdes.chunks)
        seen_sr += [p.ssrc for p in srs]
        assert len(artp.RtcpPacket.parse(data)) == len(packets)
    assert sorted(seen_sr) == [0x1000 + i for i in range(100)]

    (data,) = sched.report("pub", 1.0)
    rr1, rr2, sdes = parse_compound(data)
    assert isinstance(rr1, ReceiverReport) and isinstance(rr2, ReceiverReport)
    assert (len(rr1.reports), len(rr2.reports)) == (31, 9)
    assert rr1.ssrc == rr2.ssrc == 0xFEED


def test_leg_with_nothing_to_report_sends_nothing_and_goodbye_says_bye() -> None:
    sched = make_scheduler()
    sched.add_leg("sub", 0.0)
    assert sched.report("sub", 1.0) == []
    timer = sched.get_timer()
    assert timer is not None
    assert sched.handle_timer(timer) == []
    assert sched.get_timer() is not None  # still scheduled
    (data,) = sched.goodbye("sub", [0x1A, 0x1B], 2.0)
    packets = parse_compound(data)
    assert isinstance(packets[0], ReceiverReport)
    assert isinstance(packets[-1], Bye) and packets[-1].sources == [0x1A, 0x1B]
    theirs = artp.RtcpPacket.parse(data)
    assert isinstance(theirs[-1], artp.RtcpByePacket) and theirs[-1].sources == [0x1A, 0x1B]
    assert sched.report("nobody", 1.0) == []
    assert sched.on_rtcp("nobody", [], 1.0) is None


def test_feedback_goes_one_compound_per_peer_behind_an_empty_rr() -> None:
    pending = [
        ("a", Pli(9, 100)),
        ("b", Pli(9, 200)),
        ("a", Nack(9, 100, [(5, 0)])),
    ]
    out = feedback_compounds(pending, 9)
    assert [(key, n) for key, _, n in out] == [("a", 2), ("b", 1)]
    (compound,) = out[0][1]
    assert parse_compound(compound) == [ReceiverReport(9), Pli(9, 100), Nack(9, 100, [(5, 0)])]


def test_feedback_past_the_size_limit_is_split_each_part_behind_its_rr() -> None:
    nacks = [Nack(9, 100, [(i * 17, 0xFFFF)]) for i in range(FEEDBACK_MAX // 16 + 5)]
    ((key, compounds, n),) = feedback_compounds([("a", p) for p in nacks], 9)
    assert (key, n) == ("a", len(nacks))
    assert len(compounds) == 2
    assert all(len(c) <= FEEDBACK_MAX for c in compounds)
    got = [parse_compound(c) for c in compounds]
    assert all(packets[0] == ReceiverReport(9) for packets in got)
    assert [p for packets in got for p in packets[1:]] == nacks
