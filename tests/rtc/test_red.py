"""RED payloads (RFC 2198): the in-place primary finder and the value codec."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc.errors import RtpParseError
from rtc.red import RedBlock, RedPayload, deepen, primary, red_fmtp_pt

PT = st.integers(0, 127)

blocks = st.builds(RedBlock, PT, st.integers(0, 0x3FFF), st.binary(max_size=40))
payloads = st.builds(
    RedPayload, PT, st.binary(min_size=1, max_size=80), st.lists(blocks, max_size=3)
)

# What Chromium sends: one redundant Opus frame (960 samples back), then the primary.
CHROMIUM = bytes.fromhex("ef0f0003") + bytes([111]) + b"old" + b"primary"


def test_chromium_layout() -> None:
    red = RedPayload.parse(CHROMIUM)
    assert red.payload_type == 111
    assert red.data == b"primary"
    assert red.redundant == [RedBlock(111, 960, b"old")]
    assert bytes(red) == CHROMIUM
    found = primary(CHROMIUM, 0, len(CHROMIUM))
    assert found >> 16 == 111
    assert CHROMIUM[found & 0xFFFF :] == b"primary"


def test_primary_only() -> None:
    assert RedPayload.parse(b"\x6fabc") == RedPayload(111, b"abc")
    assert primary(b"xx\x6fabc", 2, 6) == (111 << 16) | 3


@given(payloads)
def test_round_trip(red: RedPayload) -> None:
    data = bytes(red)
    assert RedPayload.parse(data) == red
    assert bytes(RedPayload.parse(data)) == data


@given(payloads, st.binary(max_size=12), st.binary(max_size=12))
def test_primary_in_place(red: RedPayload, before: bytes, after: bytes) -> None:
    data = before + bytes(red) + after
    found = primary(data, len(before), len(data) - len(after))
    assert found >> 16 == red.payload_type
    assert data[found & 0xFFFF : len(data) - len(after)] == red.data


@settings(max_examples=500)
@given(st.binary(max_size=60))
def test_anything_parses_or_is_refused(data: bytes) -> None:
    found = primary(data, 0, len(data))
    try:
        red = RedPayload.parse(data)
    except RtpParseError:
        assert found == -1
        return
    assert found >= 0
    assert bytes(red) == data


@pytest.mark.parametrize(
    "data",
    [
        b"",  # no header at all
        b"\xef\x0f",  # a redundant header cut short
        b"\xef\x0f\x00\x03",  # no final header
        b"\xef\x0f\x00\x03\x6fab",  # the redundant block runs past the end
        b"\xef\x0f\x00\x03\x6fabc",  # nothing left for the primary
        b"\x6f",  # an empty primary
    ],
)
def test_malformed(data: bytes) -> None:
    assert primary(data, 0, len(data)) == -1
    with pytest.raises(RtpParseError):
        RedPayload.parse(data)


def test_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="primary"):
        bytes(RedPayload(111, b""))
    with pytest.raises(ValueError, match="14 bits"):
        bytes(RedPayload(111, b"x", [RedBlock(111, 0x4000, b"")]))
    with pytest.raises(ValueError, match="1023"):
        bytes(RedPayload(111, b"x", [RedBlock(111, 0, bytes(1024))]))
    with pytest.raises(ValueError, match="7 bits"):
        bytes(RedPayload(128, b"x"))


@pytest.mark.parametrize(
    ("fmtp", "pt"),
    [("111/111", 111), ("109/109/109", 109), (" 63 ", 63), ("111/109", None), ("", None),
     (None, None), ("a/b", None), ("200/200", None), ("1111/1111", None)],
)  # fmt: skip
def test_fmtp(fmtp: str | None, pt: int | None) -> None:
    assert red_fmtp_pt(fmtp) == pt


# -- deepen: the packet before's frames as extra redundancy ------------------------------

frames = st.binary(min_size=1, max_size=50)


@given(
    older=st.lists(frames, max_size=3),
    prev=frames,
    cur=frames,
    depth=st.integers(1, 4),
    delta=st.sampled_from([480, 960, 1920]),
    header=st.binary(min_size=12, max_size=20),
)
def test_deepen_carries_the_frames_before(
    older: list[bytes], prev: bytes, cur: bytes, depth: int, delta: int, header: bytes
) -> None:
    # The publisher's packets: each with one redundant block, the frame before.
    previous = RedPayload(
        111, prev, [RedBlock(111, delta * (len(older) - i), o) for i, o in enumerate(older)]
    )
    current = RedPayload(111, cur, [RedBlock(111, delta, prev)])
    prev_bytes = header + bytes(previous)
    packet = header + bytes(current)
    out = deepen(prev_bytes, len(header), len(prev_bytes), delta, packet, len(header),
                 len(packet), depth)  # fmt: skip
    keep = min(len(older), depth - 1)
    if keep + 1 <= 1:
        assert out is None
        return
    assert out is not None
    assert out[1 : len(header)] == header[1:]
    got = RedPayload.parse(out[len(header) :])
    assert got.payload_type == 111 and got.data == cur
    expected = [RedBlock(111, b.timestamp_offset + delta, b.data) for b in previous.redundant]
    assert got.redundant == [*expected[len(older) - keep :], RedBlock(111, delta, prev)]


def test_deepen_gives_up_where_headers_cannot_say_it() -> None:
    head = bytes([0xA0]) + bytes(11)  # an RTP header with the P bit

    def both(previous: bytes, delta: int, depth: int = 3) -> bytes | None:
        packet = head + bytes(RedPayload(111, b"c"))
        prev = head + previous
        return deepen(prev, 12, len(prev), delta, packet, 12, len(packet), depth)

    # The oldest frame would be more than 14 bits of timestamp back.
    assert both(bytes(RedPayload(111, b"p", [RedBlock(111, 0x3F00, b"o")])), 960) is None
    assert both(bytes(RedPayload(111, b"p")), 0x4000) is None
    assert both(bytes(RedPayload(111, bytes(1024))), 960) is None
    assert both(bytes(RedPayload(111, b"p")), 960, depth=0) is None
    out = both(bytes(RedPayload(111, b"p")), 960)
    assert out is not None and out[0] == 0x80
    assert RedPayload.parse(out[12:]) == RedPayload(111, b"c", [RedBlock(111, 960, b"p")])
