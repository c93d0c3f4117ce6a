"""The send rings' size: by the transport's bitrate, doubled on need."""

from __future__ import annotations

from sfu.feedback.send_rings import FEWEST, MOST, SendRings, slots_for


def test_rings_are_sized_by_bitrate_not_the_16_bit_space() -> None:
    # A second of the starting bitrate, in 1000-octet packets.
    assert slots_for(10_000_000) == 2048
    assert slots_for(1_000_000) == FEWEST
    assert slots_for(10**9) == MOST
    rings = SendRings(1_000_000)
    # 14 octets a slot (send time, size, probe cluster): 3.5 KB, not 0.9 MB.
    assert len(rings.sent_at) * 14 <= 4 * 1024
    assert len(rings.sizes) == len(rings.cluster) == rings.mask + 1


def test_rings_stay_as_they_are_while_what_is_in_flight_fits() -> None:
    rings = SendRings(10_000_000)
    # 200 packets a second, feedback 0.2 s after the oldest was sent.
    rings.fit(20, 1.0, 1.095, 1.2)
    assert rings.mask + 1 == 2048


def test_an_overwritten_slot_doubles_the_rings_once() -> None:
    rings = SendRings(10_000_000)
    rings.sent_at[5] = 9.0
    rings.fit(3, 2.0, 1.5, 2.1)
    assert rings.mask + 1 == 4096
    # Each slot's twin holds what it held.
    assert rings.sent_at[5] == rings.sent_at[5 + 2048] == 9.0


def test_rings_grow_no_further_than_the_16_bit_space() -> None:
    rings = SendRings(10_000_000)
    rings.fit(1000, 0.0, 0.001, 10.0)
    assert rings.mask + 1 == MOST
