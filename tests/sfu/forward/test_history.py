"""The per-track packet history: lookups by sequence number, wraparound, ageing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.forward.history import PacketHistory


def test_put_and_get() -> None:
    h = PacketHistory(8, max_age=1.0)
    assert h.get(5, 0.0) is None
    assert not h.contains(5)
    for seq in range(10, 14):
        assert h.put(seq, b"p%d" % seq, 0.0)
    assert h.get(12, 0.5) == b"p12"
    assert h.contains(12)
    assert h.get(14, 0.5) is None
    assert len(h) == 4


def test_wraparound() -> None:
    h = PacketHistory(16)
    for i in range(20):
        h.put((65530 + i) & 0xFFFF, bytes([i]), 0.0)
    assert h.get(65535, 0.0) == bytes([5])
    assert h.get(0, 0.0) == bytes([6])
    assert h.get(13, 0.0) == bytes([19])
    # Four packets fell out of the ring by count.
    assert h.get(65530, 0.0) is None
    assert h.get(65533, 0.0) is None
    assert h.get(65534, 0.0) == bytes([4])


def test_out_of_order_and_too_old() -> None:
    h = PacketHistory(8)
    h.put(100, b"a", 0.0)
    h.put(98, b"b", 0.0)  # older, still inside the ring
    assert h.get(98, 0.0) == b"b"
    h.put(110, b"c", 0.0)
    assert not h.put(101, b"d", 0.0)  # 9 behind the newest: outside the ring
    assert h.get(101, 0.0) is None
    assert h.get(100, 0.0) is None  # overwritten by count


def test_ageing_by_time() -> None:
    h = PacketHistory(64, max_age=1.0)
    h.put(1, b"old", 0.0)
    h.put(2, b"new", 0.8)
    assert h.get(1, 1.0) == b"old"
    assert h.get(1, 1.01) is None
    assert h.contains(1)  # still a duplicate, whatever its age
    assert h.expire(1.5) == 1
    assert not h.contains(1)
    assert h.get(2, 1.5) == b"new"
    h.clear()
    assert len(h) == 0
    assert h.get(2, 1.5) is None


def test_slot_from_an_earlier_cycle_is_not_returned() -> None:
    h = PacketHistory(8)
    h.put(3, b"first", 0.0)
    # Jump ahead in big steps past a whole cycle of the 16-bit space; the slot
    # of 3 (3 % 8) is never overwritten, but 3 now names a packet never seen.
    seq = 3
    for _ in range(7):
        seq = (seq + 10001) & 0xFFFF  # slots 4, 5, ... 2: never 3
        h.put(seq, b"x", 0.0)
    assert h.get(3, 0.0) is None
    assert not h.contains(3)


def test_capacity_must_be_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        PacketHistory(100)


@settings(max_examples=150, deadline=None)
@given(
    start=st.integers(0, 0xFFFF),
    steps=st.lists(st.integers(-20, 40), min_size=1, max_size=300),
)
def test_lookups_match_a_model(start: int, steps: list[int]) -> None:
    """Against a dict of extended sequence numbers: whatever is returned is right,
    and everything within the ring's reach of the newest is returned."""
    cap = 32
    h = PacketHistory(cap, max_age=10.0)
    model: dict[int, bytes] = {}
    ext = start
    newest = ext
    for i, step in enumerate(steps):
        ext = max(ext + step, newest - 30)
        payload = i.to_bytes(2, "big")
        if h.put(ext & 0xFFFF, payload, 0.0):
            model[ext] = payload
        newest = max(newest, ext)
        for e in range(newest - cap + 1, newest + 1):
            got = h.get(e & 0xFFFF, 0.0)
            # A slot can only hold something seen in the reach of the newest.
            assert got == model.get(e), (e, newest)
        # Out of the ring's reach: never answered, whatever the slot holds.
        for e in range(newest - 3 * cap, newest - cap + 1):
            assert h.get(e & 0xFFFF, 0.0) is None


def test_bytes_are_held_only_while_they_may_be_answered() -> None:
    # 180 packets a second for three seconds into a ring of 512: what it
    # holds is the last second's, not the last 512.
    h = PacketHistory(512, max_age=1.0)
    for i in range(540):
        h.put(i, b"x" * 1200, i / 180)
    now = 539 / 180
    assert 170 <= len(h) <= 182
    assert h.get(539 - 170, now) == b"x" * 1200
    # A packet let go of by age is still known for a duplicate.
    assert h.get(100, now) is None
    assert h.contains(100)


def test_a_gap_filled_late_is_let_go_of_once_it_ages() -> None:
    h = PacketHistory(64, max_age=1.0)
    h.put(1, b"a", 0.0)
    h.put(3, b"c", 0.0)
    h.put(4, b"d", 2.0)  # 1 and 3 age out
    assert len(h) == 1
    h.put(2, b"b", 2.1)  # the gap, retransmitted late
    assert h.get(2, 2.1) == b"b"
    h.put(5, b"e", 3.5)
    assert len(h) == 1 and h.get(5, 3.5) == b"e"
