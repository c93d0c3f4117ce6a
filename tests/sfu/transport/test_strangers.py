"""The search for the transport of SRTP from an unknown address (sfu/transport/strangers.py)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from sfu.transport.strangers import MAX_TRIES, PER_SECOND, StrangerSearch


@dataclass
class Leg:
    key: bytes
    recv_stats: dict[int, object] = field(default_factory=dict)
    rtcp_ssrcs: set[int] = field(default_factory=set)
    unprotect: Callable[[bytes], bytes] | None = None
    unprotect_rtcp: Callable[[bytes], bytes] | None = None

    def __post_init__(self) -> None:
        self.unprotect = self.unprotect_rtcp = self._open

    def _open(self, data: bytes) -> bytes:
        # A stand-in for SRTP: the last octet says whose keys protected it.
        if data[-1:] != self.key:
            raise ValueError("auth failed")
        return data[:-1]


def rtp(ssrc: int, key: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, 1, 0, ssrc) + key


def rtcp(ssrc: int, key: bytes) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc) + bytes(4) + key


def test_the_leg_whose_keys_fit_is_found_with_the_packet_unprotected() -> None:
    a, b = Leg(b"a", recv_stats={7: None}), Leg(b"b", recv_stats={7: None})
    found = StrangerSearch().find(rtp(7, b"b"), False, [a, b], 1.0)
    assert found == (b, rtp(7, b"b")[:-1])


def test_srtcp_is_matched_by_the_senders_earlier_rtcp_ssrc() -> None:
    a = Leg(b"a", rtcp_ssrcs={1})
    assert StrangerSearch().find(rtcp(1, b"a"), True, [a], 1.0) == (a, rtcp(1, b"a")[:-1])
    # The same SSRC as media is not known for RTCP's sake.
    assert StrangerSearch().find(rtp(1, b"a"), False, [a], 1.0) is None


def test_a_known_ssrc_without_its_keys_is_forged_an_unknown_one_is_not() -> None:
    a = Leg(b"a", recv_stats={7: None})
    search = StrangerSearch()
    assert search.find(rtp(7, b"x"), False, [a], 1.0) == "forged"
    assert search.find(rtp(8, b"a"), False, [a], 1.0) is None
    unkeyed = Leg(b"a", recv_stats={7: None})
    unkeyed.unprotect = None
    assert search.find(rtp(7, b"a"), False, [unkeyed], 1.0) is None


def test_tries_per_packet_are_bounded() -> None:
    legs = [Leg(bytes([i]), recv_stats={1: None}) for i in range(MAX_TRIES + 1)]
    # The only leg with the keys comes after MAX_TRIES that fail.
    assert StrangerSearch().find(rtp(1, bytes([MAX_TRIES])), False, legs, 1.0) == "forged"
    assert StrangerSearch().find(rtp(1, bytes([MAX_TRIES - 1])), False, legs, 1.0) == (
        legs[MAX_TRIES - 1],
        rtp(1, bytes([MAX_TRIES - 1]))[:-1],
    )


def test_searches_per_second_are_bounded() -> None:
    a = Leg(b"a", recv_stats={7: None})
    search = StrangerSearch()
    for _ in range(PER_SECOND):
        assert search.find(rtp(7, b"a"), False, [a], 5.2) is not None
    assert search.find(rtp(7, b"a"), False, [a], 5.9) is None
    assert search.find(rtp(7, b"a"), False, [a], 6.0) is not None
