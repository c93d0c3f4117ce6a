"""rtc.rtp.view.RtpView: one parse that says what the per-field readers say."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

from hypothesis import given
from hypothesis import strategies as st

from rtc.errors import RtpParseError
from rtc.rtp import extensions, header, packet
from rtc.rtp.view import RtpView
from tests.rtc.test_rtp import packets

T = TypeVar("T")


def _or_error(read: Callable[[], T]) -> T | None:
    try:
        return read()
    except RtpParseError:
        return None


def _agrees(data: bytes) -> None:
    """The view of ``data`` is what header.py and extensions.py read of it,
    and it refuses exactly what they refuse."""
    view = RtpView()
    try:
        view.parse(data)
    except RtpParseError:
        payload = _or_error(lambda: header.payload_range(data))
        elements = (
            None if payload is None else _or_error(lambda: extensions.extension_elements(data))
        )
        assert payload is None or elements is None
        return
    assert (view.start, view.end) == header.payload_range(data)
    two_byte, ext_start, ext_end, elements = extensions.extension_elements(data)
    assert (view.two_byte, view.ext_start, view.ext_end, view.elements) == (
        two_byte,
        ext_start,
        ext_end,
        elements,
    )
    marker, pt, seq, ts, ssrc = header.header_fields(data)
    assert (view.b1 >> 7, view.payload_type, view.seq, view.timestamp, view.ssrc) == (
        marker,
        pt,
        seq,
        ts,
        ssrc,
    )
    assert (view.packet, view.size, view.b0) == (data, len(data), data[0])
    for xid in {x for _, x, _ in elements} | {1, 5}:
        offset, length = view.extension(xid)
        found = extensions.find_extension(data, xid)
        assert (offset, length) == found


@given(packets())
def test_view_of_a_packet_is_what_the_readers_say(p: packet.RtpPacket) -> None:
    _agrees(bytes(p))


@given(st.binary(max_size=80))
def test_view_refuses_what_the_readers_refuse(data: bytes) -> None:
    _agrees(data)


@given(packets(), st.integers(0, 127), st.integers(0, 0xFFFFFFFF))
def test_unwrap_rtx_is_rtx_original_without_a_second_parse(
    p: packet.RtpPacket, apt: int, ssrc: int
) -> None:
    data = bytes(p)
    view = RtpView()
    with contextlib.suppress(RtpParseError):
        view.parse(data)
        original = header.rtx_original(data, apt, ssrc)
        assert view.unwrap_rtx(apt, ssrc) == (original is not None)
        if original is None:
            assert view.packet == data
            return
        # The offsets the view kept are those a fresh parse finds.
        fresh = RtpView()
        fresh.parse(original)
        for name in RtpView.__slots__:
            assert getattr(view, name) == getattr(fresh, name), name
