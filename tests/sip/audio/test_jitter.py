"""The phone's jitter buffer on a simulated path (no sockets, a fake clock),
and concealment of what it could not play."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc.rtp.sequence import seq_diff
from sip.audio.conceal import Concealer
from sip.audio.jitter import JitterBuffer
from tests.sip.audio.signals import peak_frequency, rms_db, tone

FRAME = 0.02
TICKS = 160


@dataclass
class Packet:
    index: int  # the sender's frame number, from 0
    seq: int
    ts: int
    payload: bytes = b""


def stream(count: int, seq0: int = 1000, ts0: int = 50_000) -> list[Packet]:
    return [
        Packet(i, (seq0 + i) & 0xFFFF, (ts0 + i * TICKS) & 0xFFFFFFFF, i.to_bytes(4, "big"))
        for i in range(count)
    ]


@dataclass
class Run:
    """What the listener got: per tick, the sender's frame number played or None."""

    buffer: JitterBuffer
    ticks: list[int | None] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)
    concealed: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    #: The frame numbers each pop's backlog cut threw away, in turn.
    cut: list[int] = field(default_factory=list)

    @property
    def played(self) -> list[int]:
        return [t for t in self.ticks if t is not None]


def simulate(
    deliveries: Iterable[tuple[float, Packet]],
    seconds: float,
    *,
    phase: float = 0.011,
    buffer: JitterBuffer | None = None,
) -> Run:
    """Packets put at their delivery times, a pop every 20 ms from ``phase``."""
    run = Run(buffer or JitterBuffer())
    events: list[tuple[float, int, Packet | None]] = []
    for order, (when, packet) in enumerate(deliveries):
        heapq.heappush(events, (when, order, packet))
    for k in range(round(seconds / FRAME)):
        heapq.heappush(events, (phase + k * FRAME, 1 << 40, None))
    while events:
        when, _, packet = heapq.heappop(events)
        if packet is not None:
            run.buffer.put(packet.seq, packet.ts, packet.payload, when)
            continue
        payload = run.buffer.pop(when)
        run.cut += [int.from_bytes(old, "big") for old in run.buffer.cut]
        run.ticks.append(None if payload is None else int.from_bytes(payload, "big"))
        run.targets.append(run.buffer.stats.target_ms)
        run.concealed.append(run.buffer.stats.concealed)
        run.delays.append(run.buffer.stats.delay_ms)
    return run


def on_time(packets: list[Packet], delay: float = 0.03) -> list[tuple[float, Packet]]:
    return [(p.index * FRAME + delay, p) for p in packets]


def held(
    packets: list[Packet], hold: float, start: float, stop: float, delay: float = 0.03
) -> list[tuple[float, Packet]]:
    """Between ``start`` and ``stop`` the path holds packets and lets them
    go together every ``hold`` seconds (a Wi-Fi scan, a busy radio)."""
    out = []
    for when, p in on_time(packets, delay):
        if start <= when < stop:
            when = start + (int((when - start) / hold) + 1) * hold
        out.append((when, p))
    return out


# --- the buffer ----------------------------------------------------------------


def test_in_order_packets_play_in_order_with_a_short_target() -> None:
    run = simulate(on_time(stream(300)), 6.2)
    assert run.played == list(range(300))
    stats = run.buffer.stats
    assert (stats.concealed, stats.late, stats.duplicate, stats.dropped) == (0, 0, 0, 0)
    assert 20 <= max(run.targets) <= 40
    assert stats.target_ms == 20
    # Once settled the buffer adds at most a frame: the tick's own wait.
    assert stats.delay_ms <= 20


def test_reordered_packets_play_in_order() -> None:
    packets = stream(200)
    deliveries = [(p.index * FRAME + 0.03 + (0.006 if p.index % 2 == 0 else 0), p) for p in packets]
    run = simulate(deliveries, 4.2)
    assert run.played == list(range(200))
    assert run.buffer.stats.concealed == 0


def test_a_burst_raises_the_target_and_then_nothing_is_concealed() -> None:
    # 2 s calm, 10 s of packets held for 120 ms and released together, 18 s calm.
    run = simulate(held(stream(1500), hold=0.12, start=2.0, stop=12.0), 30.2)
    second = 50  # ticks
    assert max(run.targets[: 2 * second]) <= 40
    # The first held group runs the buffer dry; from then on the delay covers it.
    # (It eases by a frame now and then as the window's percentile settles,
    # and the next group lifts it again.)
    assert min(run.targets[int(2.2 * second) : 12 * second]) >= 100
    assert run.concealed[int(2.2 * second)] == run.concealed[-1]
    assert run.buffer.stats.late == 0
    # Everything held was played; once calm, the delay comes down by
    # dropping single frames, at most one per frame of delay it had.
    assert run.played[:600] == list(range(600))
    assert run.played == sorted(run.played)
    assert 1 <= run.buffer.stats.dropped <= 6
    assert run.delays[-1] <= 20
    # When the path calms down the target comes back down, slowly.
    assert run.targets[12 * second + 25] >= 100
    assert run.targets[-1] <= 40


def test_a_lost_packet_is_concealed_exactly_once() -> None:
    packets = stream(200)
    lost = packets.pop(77)
    run = simulate(on_time(packets), 4.2)
    stats = run.buffer.stats
    assert stats.concealed == 1
    assert stats.played == 199
    at = run.ticks.index(lost.index - 1)
    assert run.ticks[at : at + 3] == [76, None, 78]


def test_duplicates_and_late_packets_are_counted_and_dropped() -> None:
    packets = stream(200)
    deliveries = on_time(packets)
    deliveries.append((packets[30].index * FRAME + 0.035, packets[30]))  # again
    deliveries.append((packets[31].index * FRAME + 0.5, packets[31]))  # again, much later
    late = packets[90]
    deliveries = [(w + (0.3 if p is late else 0), p) for w, p in deliveries]
    run = simulate(deliveries, 4.2)
    stats = run.buffer.stats
    assert stats.duplicate == 2
    assert stats.late == 1
    assert stats.concealed == 1
    assert run.played == [i for i in range(200) if i != 90]


def test_sequence_numbers_and_timestamps_wrap() -> None:
    packets = stream(300, seq0=65_436, ts0=0xFFFFFFFF - 100 * TICKS)
    assert packets[-1].seq < 1000
    run = simulate(on_time(packets), 6.2)
    assert run.played == list(range(300))
    assert run.buffer.stats.concealed == 0


def test_a_sequence_jump_resynchronises() -> None:
    first = stream(100)
    # The far end renumbers (a re-INVITE, a restarted trunk): new numbers,
    # new timestamps, carrying on in time.
    second = [
        Packet(100 + i, (40_000 + i) & 0xFFFF, 9_000_000 + i * TICKS, (100 + i).to_bytes(4, "big"))
        for i in range(150)
    ]
    run = simulate(on_time(first + second), 5.2)
    stats = run.buffer.stats
    assert stats.resyncs == 1
    assert stats.concealed <= 3
    assert run.played[:100] == list(range(100))
    # The new numbering plays on in order; the packet held on probation put
    # one frame more in the buffer, which it later drops to shrink back.
    assert run.played[100:] == sorted(run.played[100:])
    assert len(set(range(100, 250)) - set(run.played)) <= stats.dropped <= 1


def test_one_stray_packet_does_not_resynchronise() -> None:
    packets = stream(150)
    stray = Packet(-1, 30_000, 123, b"stray")
    deliveries = [*on_time(packets), (1.005, stray)]
    run = simulate(deliveries, 3.2)
    assert run.buffer.stats.resyncs == 0
    assert run.played == list(range(150))
    assert run.buffer.stats.dropped == 1


def test_silence_suppression_is_silent_not_concealed() -> None:
    # A talkspurt, 2 s of the far end sending nothing (timestamps move on,
    # sequence numbers do not: RFC 3551 4.1), another talkspurt.
    packets = stream(100)
    talk = [
        Packet(100 + i, 1100 + i, 50_000 + (200 + i) * TICKS, (100 + i).to_bytes(4, "big"))
        for i in range(100)
    ]
    deliveries = on_time(packets) + [(p.index * FRAME + 2.0 + 0.03, p) for p in talk]
    run = simulate(deliveries, 6.2)
    stats = run.buffer.stats
    assert stats.concealed == 0
    assert 95 <= stats.silent <= 105
    assert run.played == list(range(200))


def test_an_outage_resumes_at_once_instead_of_catching_up() -> None:
    packets = stream(500)
    gone = [p for p in packets if not 100 <= p.index < 400]  # 6 s lost
    run = simulate(on_time(gone), 10.2)
    back = run.ticks.index(None, run.ticks.index(99))
    resumed = run.ticks.index(400)
    # 300 slots were lost, and each is concealed once, in its own time; the
    # first packet after plays within the target, not 300 ticks later.
    assert resumed - back <= 300 + 3
    assert run.buffer.stats.concealed <= 303
    assert run.played[-100:] == list(range(400, 500))


def test_a_long_hold_is_cut_to_the_target() -> None:
    packets = stream(300)
    run = simulate(held(packets, hold=1.0, start=2.0, stop=3.0), 6.2)
    # A second's backlog released at once is not played a second late: the
    # buffer keeps its most (200 ms) and drops the rest.
    assert run.buffer.stats.dropped > 30
    assert max(run.delays) <= 220
    assert run.played == sorted(run.played)
    # What was cut is set aside in order, for a tone detector: with what
    # was played, every frame once, none twice.
    assert len(run.cut) == run.buffer.stats.dropped
    assert run.cut == sorted(run.cut)
    assert sorted(run.played + run.cut) == list(range(len(run.played) + len(run.cut)))


def test_the_far_ends_clock_jumping_resynchronises() -> None:
    packets = stream(200)
    for p in packets[100:]:
        p.ts = (p.ts + 8000 * 3600) & 0xFFFFFFFF  # an hour ahead
    run = simulate(on_time(packets), 4.2)
    assert run.buffer.stats.resyncs == 1
    assert run.played[-90:] == list(range(110, 200))


# --- any input at all ----------------------------------------------------------

operation = st.one_of(
    st.tuples(
        st.just("put"),
        st.one_of(st.integers(0, 0xFFFF), st.integers(-3, 40)),
        st.integers(0, 0xFFFFFFFF) | st.integers(0, 60).map(lambda k: k * TICKS),
        st.floats(0, 0.5),
    ),
    st.tuples(st.just("pop"), st.just(0), st.just(0), st.floats(0, 0.5)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=300))
def test_any_puts_and_pops_never_raise_and_play_each_packet_once(
    operations: list[tuple[str, int, int, float]],
) -> None:
    buffer = JitterBuffer()
    now = 0.0
    played: set[int] = set()
    last: tuple[int, int] | None = None  # (resyncs, seq) of the last played
    for number, (kind, seq, ts, step) in enumerate(operations):
        now += step
        if kind == "put":
            buffer.put(
                seq % 0x10000,
                ts,
                number.to_bytes(4, "big") + seq.to_bytes(3, "big", signed=True),
                now,
            )
            continue
        payload = buffer.pop(now)
        if payload is None:
            continue
        put_number = int.from_bytes(payload[:4], "big")
        assert put_number not in played
        played.add(put_number)
        seq = int.from_bytes(payload[4:], "big", signed=True) % 0x10000
        resyncs = buffer.stats.resyncs
        if last is not None and last[0] == resyncs:
            assert seq_diff(seq, last[1]) > 0
        last = (resyncs, seq)
    stats = buffer.stats
    assert stats.played == len(played)
    assert 0 <= stats.buffered_ms <= 64 * 20
    assert 20 <= stats.target_ms <= 200


# --- concealment ---------------------------------------------------------------


def voiced(seconds: float = 0.2, rate: int = 8000) -> np.ndarray:
    """A steady 200 Hz 'vowel': a tone and its third harmonic."""
    samples = int(seconds * rate)
    return (
        tone(200, rate, samples, 8000).astype(np.int32) + tone(600, rate, samples, 3000)
    ).astype(np.int16)


def fed(concealer: Concealer, pcm: np.ndarray, size: int = 160) -> None:
    for i in range(0, pcm.shape[0], size):
        concealer.accept(pcm[i : i + size])


def test_nothing_to_continue_is_silence() -> None:
    assert not np.any(Concealer(8000).conceal())


def test_good_frames_pass_unchanged() -> None:
    concealer = Concealer(8000)
    frame = tone(440, 8000, 160)
    assert np.array_equal(concealer.accept(frame), frame)
    assert not concealer.concealing


def test_a_loss_continues_the_pitch_without_a_click_and_fades() -> None:
    signal = voiced(0.3)
    concealer = Concealer(8000)
    fed(concealer, signal[:1600])
    made = np.concatenate([concealer.conceal() for _ in range(3)])
    assert concealer.concealing
    assert peak_frequency(made[:160], 8000) == pytest.approx(200, abs=25)
    # The join: no larger step than the voice itself makes.
    joined = np.concatenate((signal[1440:1600], made)).astype(np.int32)
    assert np.abs(np.diff(joined)).max() <= np.abs(np.diff(signal.astype(np.int32))).max() * 1.2
    levels = [rms_db(made[i : i + 160]) for i in range(0, 480, 160)]
    assert levels[0] > levels[1] > levels[2]
    assert levels[0] - levels[2] > 3


def test_a_long_loss_becomes_comfort_noise() -> None:
    rng = np.random.default_rng(1)
    concealer = Concealer(8000)
    background = (rng.standard_normal(160) * 30).astype(np.int16)
    for _ in range(5):
        concealer.accept(background)
    fed(concealer, voiced(0.1))
    frames = [concealer.conceal() for _ in range(10)]
    noise = np.concatenate(frames[5:])
    # The background's hush, not dead air, not the vowel.
    assert 15 < np.sqrt(np.mean(noise.astype(np.float64) ** 2)) < 60
    assert np.abs(noise).max() < 1000


def test_real_audio_resumes_smoothly() -> None:
    signal = voiced(0.4)
    concealer = Concealer(8000)
    fed(concealer, signal[:1600])
    gap = np.concatenate([concealer.conceal() for _ in range(2)])
    resumed = concealer.accept(signal[1920:2080])
    assert not concealer.concealing
    assert np.array_equal(resumed[20:], signal[1940:2080])
    joined = np.concatenate((gap, resumed)).astype(np.int32)
    assert np.abs(np.diff(joined)).max() <= np.abs(np.diff(signal.astype(np.int32))).max() * 1.5


def test_concealment_is_the_same_every_time() -> None:
    def losses(c: Concealer) -> np.ndarray:
        fed(c, voiced(0.1))
        return np.concatenate([c.conceal() for _ in range(8)])

    assert np.array_equal(losses(Concealer(8000)), losses(Concealer(8000)))
