"""The N-1 mixer: nobody hears themselves, bursty sources are ridden out,
loud sums bend instead of wrapping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sip.audio.mixer import Mixer, soft_limit
from sip.audio.pcm import ROOM_FRAME, ROOM_RATE
from sip.errors import AudioFrameError
from tests.sip.audio.signals import frames, level_at, tone

TONES = {"alice": 440, "bob": 660, "phone": 1000}


def constant(value: int) -> np.ndarray:
    return np.full(ROOM_FRAME, value, dtype=np.int16)


def test_each_listener_hears_the_others_and_never_itself() -> None:
    mixer = Mixer()
    signals = {}
    for name, frequency in TONES.items():
        mixer.add_source(name)
        signals[name] = frames(tone(frequency, ROOM_RATE, ROOM_RATE * 2, 8000), ROOM_FRAME)
    heard: dict[str, list[np.ndarray]] = {name: [] for name in TONES}
    for k in range(100):
        for name in TONES:
            mixer.push(name, signals[name][k])
        for name, mix in mixer.mix().items():
            heard[name].append(mix)
    for name, frequency in TONES.items():
        mix = np.concatenate(heard[name][10:])
        for other, other_frequency in TONES.items():
            if other == name:
                assert level_at(mix, ROOM_RATE, frequency) < -60
            else:
                assert level_at(mix, ROOM_RATE, other_frequency) > -1
        assert mixer.stats(name).mixed == 100 - 1  # the first tick primes
        assert mixer.stats(name).underruns == 0


def test_the_mix_is_the_exact_sum_of_the_others() -> None:
    mixer = Mixer()
    values = {"a": 100, "b": 200, "c": -400}
    for name in values:
        mixer.add_source(name)
    for _ in range(3):
        for name, value in values.items():
            mixer.push(name, constant(value))
    mixer.mix()  # primed at two frames: from here each tick takes one
    mixes = mixer.mix()
    assert {name: int(mix[0]) for name, mix in mixes.items()} == {"a": -200, "b": -300, "c": 300}
    assert all(mix.dtype == np.int16 and mix.shape == (ROOM_FRAME,) for mix in mixes.values())


def test_only_listeners_get_a_mix() -> None:
    mixer = Mixer()
    mixer.add_source("phone")
    mixer.add_source("doctor", listens=False)
    for _ in range(2):
        mixer.push("doctor", constant(7))
        mixer.push("phone", constant(1))
    mixes = mixer.mix()
    assert list(mixes) == ["phone"]
    assert int(mixes["phone"][0]) == 7


def test_a_bursty_source_is_ridden_out_once_its_queue_adapts() -> None:
    # Ten frames at once every 200 ms, the bunches arriving up to 15 ms
    # either side of their time; frame k carries the value k, so what the
    # phone hears says which frame was mixed.
    rng = np.random.default_rng(7)
    mixer = Mixer()
    mixer.add_source("phone")
    mixer.add_source("doctor", listens=False)
    events: list[tuple[float, int]] = []
    for burst in range(75):  # 15 s
        when = 0.2 * burst + 0.19 + rng.uniform(-0.015, 0.015)
        events += [(when, 10 * burst + i + 1) for i in range(10)]
    events.sort()
    heard: list[int] = []
    underruns: list[int] = []
    for tick in range(750):
        now = tick * 0.02
        while events and events[0][0] <= now:
            mixer.push("doctor", constant(events.pop(0)[1]))
        mixer.push("phone", constant(0))
        heard.append(int(mixer.mix()["phone"][0]))
        underruns.append(mixer.stats("doctor").underruns)
    stats = mixer.stats("doctor")
    assert stats.dropped == 0
    # Adapted within the first two seconds; after that, no gap and no skip.
    assert underruns[100] == underruns[-1]
    settled = heard[100:]
    assert np.all(np.diff(settled) == 1)
    assert stats.target <= 4
    assert stats.depth <= 12


def test_a_source_with_nothing_this_tick_is_an_underrun_not_a_drop() -> None:
    mixer = Mixer()
    mixer.add_source("a")
    mixer.add_source("b")
    for _ in range(2):
        mixer.push("a", constant(5))
        mixer.push("b", constant(9))
    mixer.mix()
    mixer.mix()  # b's queue is empty now, and a's
    mixer.push("a", constant(5))
    mixes = mixer.mix()
    assert int(mixes["b"][0]) == 5
    assert not np.any(mixes["a"])
    assert (mixer.stats("b").underruns, mixer.stats("b").dropped) == (1, 0)


def test_a_pause_is_not_jitter() -> None:
    mixer = Mixer()
    mixer.add_source("a")
    for _ in range(2):
        mixer.push("a", constant(1))
    for _ in range(100):  # 2 s of nothing after two frames
        mixer.mix()
    assert mixer.stats("a").target == 2
    mixer.push("a", constant(1))
    assert mixer.stats("a").depth == 1
    mixer.mix()  # back from a pause: waits for its target again
    assert mixer.stats("a").depth == 1


def test_a_deep_queue_drains_one_frame_at_a_time() -> None:
    mixer = Mixer()
    mixer.add_source("a")
    for k in range(8):
        mixer.push("a", constant(k))
    skipped = []
    for k in range(8, 400):
        mixer.push("a", constant(k % 30000))
        mixer.mix()
        skipped.append(mixer.stats("a").skipped)
    # One skip per second at most, until the queue is down to its target.
    assert np.all(np.diff(skipped) <= 1)
    assert skipped[49] <= 1
    assert mixer.stats("a").depth <= 2
    assert mixer.stats("a").dropped == 0


def test_past_the_hard_cap_the_oldest_frames_go() -> None:
    mixer = Mixer()
    mixer.add_source("a")
    for k in range(30):
        mixer.push("a", constant(k))
    stats = mixer.stats("a")
    assert (stats.depth, stats.dropped) == (20, 10)
    mixer.add_source("b")
    assert int(mixer.mix()["b"][0]) == 10


def test_removing_a_source_mid_stream() -> None:
    mixer = Mixer()
    signals = {}
    for name, frequency in TONES.items():
        mixer.add_source(name)
        signals[name] = frames(tone(frequency, ROOM_RATE, ROOM_RATE * 2, 8000), ROOM_FRAME)
    heard: list[np.ndarray] = []
    for k in range(100):
        if k == 50:
            mixer.remove_source("bob")
        for name in TONES:
            mixer.push(name, signals[name][k])  # bob's are ignored after
        mixes = mixer.mix()
        assert ("bob" in mixes) == (k < 50)
        heard.append(mixes["phone"])
    before, after = np.concatenate(heard[10:50]), np.concatenate(heard[52:])
    assert level_at(before, ROOM_RATE, 660) > -1
    assert level_at(after, ROOM_RATE, 660) < -60
    assert level_at(after, ROOM_RATE, 440) > -1
    assert mixer.sources == ["alice", "phone"]
    with pytest.raises(KeyError):
        mixer.stats("bob")


def test_two_loud_sources_do_not_wrap() -> None:
    mixer = Mixer()
    loud = tone(300, ROOM_RATE, ROOM_FRAME * 4, 30_000)
    for name in ("a", "b", "phone"):
        mixer.add_source(name)
    for f in frames(loud, ROOM_FRAME):
        mixer.push("a", f)
        mixer.push("b", f)
        mixer.push("phone", constant(0))
    mixer.mix()
    heard = np.concatenate([mixer.mix()["phone"] for _ in range(3)]).astype(np.int32)
    summed = 2 * loud[ROOM_FRAME : ROOM_FRAME * 4].astype(np.int32)
    assert np.all(np.sign(heard) == np.sign(summed))
    assert np.abs(heard).max() <= 32767
    assert np.abs(heard).max() > 30_000
    quiet = np.abs(summed) <= 24_000
    assert np.array_equal(heard[quiet], summed[quiet])


def test_a_frame_of_another_shape_is_refused() -> None:
    mixer = Mixer()
    mixer.add_source("a")
    with pytest.raises(AudioFrameError):
        mixer.push("a", np.zeros(160, dtype=np.int16))
    mixer.push("nobody", constant(1))  # a source that left: ignored


@given(hnp.arrays(np.int32, st.integers(0, 64), elements=st.integers(-4 * 32768, 4 * 32767)))
def test_the_limiter_keeps_sign_order_and_the_quiet_untouched(mixed: np.ndarray) -> None:
    limited = soft_limit(mixed)
    assert limited.dtype == np.int16
    assert np.all(np.sign(limited) == np.sign(mixed))
    order = np.argsort(mixed, kind="stable")
    assert np.all(np.diff(limited[order].astype(np.int32)) >= 0)
    quiet = np.abs(mixed) <= 24_576
    assert np.array_equal(limited[quiet], mixed[quiet])


operation = st.one_of(
    st.tuples(st.just("push"), st.integers(0, 3), st.integers(1, 25)),
    st.tuples(st.just("mix"), st.just(0), st.integers(1, 30)),
    st.tuples(st.just("add"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("remove"), st.integers(0, 3), st.just(0)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(operation, max_size=80))
def test_any_order_of_calls_keeps_the_books(operations: list[tuple[str, int, int]]) -> None:
    mixer = Mixer()
    frame = constant(3)
    for kind, source, n in operations:
        if kind == "push":
            for _ in range(n):
                mixer.push(source, frame)
        elif kind == "mix":
            for _ in range(n):
                mixes = mixer.mix()
                assert set(mixes) <= set(mixer.sources)
                assert all(m.shape == (ROOM_FRAME,) and m.dtype == np.int16 for m in mixes.values())
        elif kind == "add":
            mixer.add_source(source, listens=bool(n))
        else:
            mixer.remove_source(source)
        for name in mixer.sources:
            stats = mixer.stats(name)
            assert 0 <= stats.depth <= 20
            assert 1 <= stats.target <= 15


def test_one_other_source_is_heard_as_it_is() -> None:
    """A phone in a one-to-one visit hears the doctor's frames untouched,
    however loud: nothing was added, so nothing is limited; and with nobody
    else there, silence."""
    mixer = Mixer()
    mixer.add_source("phone")
    mixer.add_source("doctor", listens=False)
    assert not mixer.mix()["phone"].any()
    loud = tone(300, ROOM_RATE, ROOM_FRAME * 4, 32_000)
    for f in frames(loud, ROOM_FRAME):
        mixer.push("doctor", f)
    heard = np.concatenate([mixer.mix()["phone"] for _ in range(4)])
    assert heard.dtype == np.int16
    assert np.array_equal(heard, loud)
