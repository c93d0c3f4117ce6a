"""RTP header views, extensions and rewriting, cross-checked against aiortc's codec."""

from __future__ import annotations

import contextlib
import struct

import pytest
from aiortc import rtp as artp
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc.errors import RtcError, RtpParseError
from rtc.rtp import extensions, header, packet, sequence

U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_ABS = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
URI_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
URI_TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


def aiortc_map(ids: dict[str, int]) -> artp.HeaderExtensionsMap:
    """aiortc's map of extension URIs to ids (``{uri: id}``), for its RTP codec."""
    m = artp.HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for u, i in ids.items()]
        )
    )
    return m


one_byte_elements = st.lists(
    st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=5
)
two_byte_elements = st.lists(
    st.tuples(st.integers(1, 255), st.binary(min_size=0, max_size=40)), max_size=5
)


@st.composite
def packets(draw: st.DrawFn) -> packet.RtpPacket:
    p = packet.RtpPacket(
        payload_type=draw(st.integers(0, 127)),
        sequence_number=draw(U16),
        timestamp=draw(U32),
        ssrc=draw(U32),
        marker=draw(st.booleans()),
        csrc=draw(st.lists(U32, max_size=15)),
        payload=draw(st.binary(max_size=64)),
    )
    form = draw(st.sampled_from(["none", "one", "two", "opaque"]))
    if form == "one":
        p.set_extensions(draw(one_byte_elements), two_byte=False)
    elif form == "two":
        p.set_extensions(draw(two_byte_elements), two_byte=True)
    elif form == "opaque":
        p.extension_profile = draw(U16.filter(lambda x: x != 0xBEDE and x & 0xFFF0 != 0x1000))
        p.extension_body = draw(st.binary(max_size=16).map(lambda b: b + bytes(-len(b) % 4)))
    pad = draw(st.integers(0, 8))
    if pad:
        p.padding = draw(st.binary(min_size=pad - 1, max_size=pad - 1)) + bytes([pad])
    return p


# -- the packet value -----------------------------------------------------------------


@given(packets())
def test_packet_round_trips_bytes(p: packet.RtpPacket) -> None:
    data = bytes(p)
    q = packet.RtpPacket.parse(data)
    assert q == p
    assert bytes(q) == data
    assert packet.RtpPacket.parse(bytearray(data)) == p
    assert packet.RtpPacket.parse(memoryview(data)) == p


@given(packets())
def test_views_agree_with_aiortc_parse(p: packet.RtpPacket) -> None:
    data = bytes(p)
    theirs = artp.RtpPacket.parse(data)
    assert header.header_fields(data) == (
        theirs.marker,
        theirs.payload_type,
        theirs.sequence_number,
        theirs.timestamp,
        theirs.ssrc,
    )
    assert header.marker(data) == bool(theirs.marker)
    assert header.payload_type(data) == theirs.payload_type
    assert header.sequence_number(data) == theirs.sequence_number
    assert header.timestamp(data) == theirs.timestamp
    assert header.ssrc(data) == theirs.ssrc
    start, end = header.payload_range(data)
    assert data[start:end] == theirs.payload
    assert header.padding_length(data) == theirs.padding_size
    assert header.header_length(data) == start
    assert theirs.csrc == p.csrc
    if p.extension_profile in (0xBEDE, 0x1000):
        assert p.extensions == artp.unpack_header_extensions(p.extension_profile, p.extension_body)


@given(
    payload_type=st.integers(0, 127),
    seq=U16,
    ts=U32,
    ssrc=U32,
    marker=st.integers(0, 1),
    payload=st.binary(max_size=50),
    mid=st.text(alphabet="abc0123", min_size=1, max_size=3),
    abs_time=st.integers(0, 0xFFFFFF),
    voice=st.booleans(),
    level=st.integers(0, 127),
    twcc=U16,
)
def test_aiortc_serialized_packets_read_by_ours(
    payload_type: int,
    seq: int,
    ts: int,
    ssrc: int,
    marker: int,
    payload: bytes,
    mid: str,
    abs_time: int,
    voice: bool,
    level: int,
    twcc: int,
) -> None:
    ids = {URI_MID: 1, URI_ABS: 3, URI_LEVEL: 10, URI_TWCC: 5}
    theirs = artp.RtpPacket(payload_type, marker, seq, ts, ssrc, payload)
    theirs.extensions.mid = mid
    theirs.extensions.abs_send_time = abs_time
    theirs.extensions.audio_level = (voice, level)
    theirs.extensions.transport_sequence_number = twcc
    data = theirs.serialize(aiortc_map(ids))

    ours = packet.RtpPacket.parse(data)
    assert bytes(ours) == data
    assert (ours.payload_type, ours.sequence_number, ours.timestamp, ours.ssrc) == (
        payload_type,
        seq,
        ts,
        ssrc,
    )
    assert ours.marker == bool(marker)
    assert ours.payload == payload
    assert extensions.get_extension(data, 1) == mid.encode()
    assert extensions.abs_send_time(data, 3) == abs_time
    assert extensions.audio_level(data, 10) == (voice, level)
    assert extensions.transport_sequence_number(data, 5) == twcc
    assert extensions.get_extension(data, 7) is None
    assert extensions.transport_sequence_number(data, 7) is None


@given(p=packets(), twcc=U16, abs_time=st.integers(0, 0xFFFFFF), level=st.integers(0, 127))
def test_our_extensions_read_by_aiortc(
    p: packet.RtpPacket, twcc: int, abs_time: int, level: int
) -> None:
    elements = [(2, struct.pack("!H", twcc)), (3, abs_time.to_bytes(3, "big")), (4, bytes([level]))]
    p.set_extensions(elements)
    got = artp.RtpPacket.parse(
        bytes(p), aiortc_map({URI_TWCC: 2, URI_ABS: 3, URI_LEVEL: 4})
    ).extensions
    assert got.transport_sequence_number == twcc
    assert got.abs_send_time == abs_time
    assert got.audio_level == (False, level)


# -- in-place rewriting --------------------------------------------------------------


def changed(before: bytes, after: bytearray) -> set[int]:
    return {i for i in range(len(before)) if before[i] != after[i]}


@given(packets(), st.integers(0, 127), U16, U32, U32)
def test_rewrite_header_touches_only_its_fields(
    p: packet.RtpPacket, pt: int, seq: int, ts: int, ssrc: int
) -> None:
    before = bytes(p)
    buf = bytearray(before)
    header.rewrite_header(buf, pt, seq, ts, ssrc)
    assert changed(before, buf) <= set(range(1, 12))
    assert header.header_fields(buf) == (int(p.marker), pt, seq, ts, ssrc)
    q = packet.RtpPacket.parse(buf)
    assert (q.csrc, q.extension_body, q.payload, q.padding) == (
        p.csrc,
        p.extension_body,
        p.payload,
        p.padding,
    )


@given(packets(), st.integers(0, 127), U16, U32, U32, st.booleans())
def test_single_field_setters(
    p: packet.RtpPacket, pt: int, seq: int, ts: int, ssrc: int, m: bool
) -> None:
    before = bytes(p)
    view = memoryview(bytearray(before))
    header.set_payload_type(view, pt)
    assert header.payload_type(view) == pt and header.marker(view) == p.marker
    header.set_marker(view, m)
    assert header.marker(view) == m and header.payload_type(view) == pt
    header.set_sequence_number(view, seq)
    header.set_timestamp(view, ts)
    header.set_ssrc(view, ssrc)
    assert header.header_fields(view) == (int(m), pt, seq, ts, ssrc)
    assert changed(before, bytearray(view)) <= set(range(1, 12))


@given(
    elements=st.lists(
        st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)),
        min_size=1,
        max_size=5,
        unique_by=lambda e: e[0],
    ),
    two_byte=st.booleans(),
    index=st.integers(0, 4),
    data=st.data(),
)
def test_extension_rewrite_in_place_in_both_forms(
    elements: list[tuple[int, bytes]], two_byte: bool, index: int, data: st.DataObject
) -> None:
    p = packet.RtpPacket(payload_type=96, payload=b"payload")
    p.set_extensions(elements, two_byte=two_byte)
    assert p.extension_profile == (0x1000 if two_byte else 0xBEDE)
    before = bytes(p)
    xid, value = elements[index % len(elements)]
    offset, length = extensions.find_extension(before, xid)
    assert before[offset : offset + length] == value
    new = data.draw(st.binary(min_size=len(value), max_size=len(value)))
    buf = bytearray(before)
    assert extensions.set_extension(buf, xid, new)
    assert changed(before, buf) <= set(range(offset, offset + length))
    assert extensions.get_extension(buf, xid) == new
    with pytest.raises(ValueError, match="holds"):
        extensions.set_extension(buf, xid, new + b"x")
    absent = next(i for i in range(1, 15) if i not in dict(elements))
    assert not extensions.set_extension(buf, absent, b"x")


def test_typed_extension_rewrites_leave_other_bytes() -> None:
    p = packet.RtpPacket(payload_type=111, sequence_number=7, payload=b"opus")
    p.set_extensions([(1, b"0"), (5, b"\x12\x34"), (3, b"\x01\x02\x03"), (10, b"\x85")])
    before = bytes(p)
    buf = bytearray(before)
    assert extensions.set_transport_sequence_number(buf, 5, 0xBEEF)
    assert extensions.set_abs_send_time(buf, 3, 0xABCDEF)
    assert extensions.set_audio_level(buf, 10, False, 127)
    assert extensions.transport_sequence_number(buf, 5) == 0xBEEF
    assert extensions.abs_send_time(buf, 3) == 0xABCDEF
    assert extensions.audio_level(buf, 10) == (False, 127)
    assert extensions.audio_level(before, 10) == (True, 5)
    assert extensions.get_extension(buf, 1) == b"0"
    assert bytes(buf)[-4:] == b"opus"
    assert len(changed(before, buf)) <= 2 + 3 + 1
    assert not extensions.set_transport_sequence_number(buf, 6, 1)
    assert extensions.abs_send_time_from_seconds(1.5) == (3 << 17)
    assert extensions.abs_send_time_from_seconds(64.0) == 0


def test_one_byte_form_padding_and_id_15() -> None:
    # Padding bytes between elements are skipped; ID 15 stops the walk (RFC 8285 4.2).
    body = bytes([0x10, 0xAA, 0x00, 0x00, 0x21, 0xBB, 0xCC, 0xF0, 0x31, 0x01, 0x02, 0x00])
    p = packet.RtpPacket(extension_profile=0xBEDE, extension_body=body)
    data = bytes(p)
    assert extensions.get_extension(data, 1) == b"\xaa"
    assert extensions.get_extension(data, 2) == b"\xbb\xcc"
    assert extensions.get_extension(data, 3) is None
    assert p.extensions == [(1, b"\xaa"), (2, b"\xbb\xcc")]


def test_two_byte_form_allows_empty_values_and_appbits() -> None:
    body = bytes([0x00, 0x20, 0x00, 0x11, 0x02, 0x05, 0x06, 0x00])
    p = packet.RtpPacket(extension_profile=0x1003, extension_body=body)
    data = bytes(p)
    assert extensions.get_extension(data, 0x20) == b""
    assert extensions.get_extension(data, 0x11) == b"\x05\x06"
    assert p.extensions == [(0x20, b""), (0x11, b"\x05\x06")]


def test_build_extensions_chooses_the_form() -> None:
    assert extensions.build_extensions([(1, b"a")]) == (0xBEDE, b"\x10a\x00\x00")
    assert extensions.build_extensions([(15, b"a")])[0] == 0x1000
    assert extensions.build_extensions([(1, b"")])[0] == 0x1000
    assert extensions.build_extensions([(1, b"x" * 17)])[0] == 0x1000
    with pytest.raises(ValueError, match="one-byte"):
        extensions.build_extensions([(15, b"a")], two_byte=False)
    # aiortc's packer makes the same choice and the same bytes.
    for elements in ([(1, b"a"), (14, b"b" * 16)], [(200, b"x"), (1, b"")]):
        assert extensions.build_extensions(elements) == artp.pack_header_extensions(elements)


# -- malformed input ---------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_random_bytes_raise_only_our_parse_error(data: bytes) -> None:
    for f in (
        packet.RtpPacket.parse,
        header.header_length,
        header.payload_range,
        header.padding_length,
        header.header_fields,
        extensions.extension_block,
        lambda d: extensions.find_extension(d, 1),
        lambda d: extensions.transport_sequence_number(d, 2),
        lambda d: extensions.audio_level(d, 1),
        lambda d: extensions.abs_send_time(d, 3),
    ):
        with contextlib.suppress(RtpParseError):
            f(data)


def test_parse_error_is_a_value_error_under_the_root() -> None:
    assert issubclass(RtpParseError, RtcError)
    assert issubclass(RtpParseError, ValueError)


@given(packets(), st.integers(1, 40))
def test_truncated_packets_raise(p: packet.RtpPacket, cut: int) -> None:
    data = bytes(p)
    head = header.header_length(data)
    short = data[: max(0, head - cut)]
    with pytest.raises(RtpParseError):
        header.header_length(short)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x80" * 11, "shorter"),
        (b"\x40" + bytes(11), "version"),
        (b"\x81" + bytes(11), "truncated"),  # one CSRC announced, none there
        (b"\x90" + bytes(11) + b"\xbe\xde\x00\x01", "truncated"),
        (b"\xa0" + bytes(11) + b"\x00", "padding"),
        (b"\xa0" + bytes(11) + b"\x05", "padding"),
        (b"\x90" + bytes(11) + b"\xbe\xde\x00\x01\x13\x00\x00\x00", "overruns"),
        (b"\x90" + bytes(11) + b"\x10\x00\x00\x01\x01\x05\x00\x00", "overruns"),
    ],
)
def test_malformed_packets(data: bytes, why: str) -> None:
    with pytest.raises(RtpParseError, match=why):
        packet.RtpPacket.parse(data)
    if data[0] & 0x10:
        with pytest.raises(RtpParseError, match=why):
            extensions.find_extension(data, 1)


def test_short_typed_extension_is_a_parse_error() -> None:
    p = packet.RtpPacket()
    p.set_extensions([(5, b"\x01"), (3, b"\x01\x02")])
    with pytest.raises(RtpParseError):
        extensions.transport_sequence_number(bytes(p), 5)
    with pytest.raises(RtpParseError):
        extensions.abs_send_time(bytes(p), 3)


# -- sequence arithmetic --------------------------------------------------------------


@given(U16, U16)
def test_seq_newer_is_a_strict_order_locally(a: int, b: int) -> None:
    assert [sequence.seq_newer(a, b), sequence.seq_newer(b, a), a == b].count(True) == 1
    d = sequence.seq_diff(a, b)
    assert -0x8000 <= d <= 0x7FFF
    assert sequence.seq_add(b, d) == a
    if d not in (0, -0x8000):
        assert sequence.seq_newer(a, b) == (d > 0)


@given(U32, U32)
def test_ts_newer_is_a_strict_order_locally(a: int, b: int) -> None:
    assert [sequence.ts_newer(a, b), sequence.ts_newer(b, a), a == b].count(True) == 1
    d = sequence.ts_diff(a, b)
    assert (b + d) & 0xFFFFFFFF == a
    if d not in (0, -0x80000000):
        assert sequence.ts_newer(a, b) == (d > 0)


def test_seq_wraps() -> None:
    assert sequence.seq_newer(0, 65535)
    assert sequence.seq_diff(2, 65534) == 4
    assert sequence.seq_add(65535, 1) == 0
    assert sequence.ts_newer(0, 0xFFFFFFFF)


@given(U16, st.lists(st.integers(-1000, 1000), max_size=200))
def test_unwrapper_follows_a_walk(start: int, steps: list[int]) -> None:
    u = sequence.SequenceUnwrapper()
    assert u.unwrap(start) == start
    pos = start
    for step in steps:
        pos += step
        assert u.unwrap(pos & 0xFFFF) == pos


# -- the rewriter ---------------------------------------------------------------------


def test_rewriter_passes_the_first_run_through() -> None:
    r = sequence.RtpRewriter(90000)
    assert r.rewrite(100, 5000, 0.0) == (100, 5000)
    assert r.rewrite(101, 8000, 0.033) == (101, 8000)
    assert r.rewrite(100, 5000, 0.04) == (100, 5000)  # a retransmission maps the same
    assert r.highest == (101, 8000)


@given(
    runs=st.lists(
        st.tuples(U16, U32, st.integers(1, 300), st.floats(0.0, 5.0)), min_size=1, max_size=6
    )
)
def test_rewriter_keeps_switched_sources_continuous(
    runs: list[tuple[int, int, int, float]],
) -> None:
    clock = 90000
    r = sequence.RtpRewriter(clock)
    now = 100.0
    prev_out: tuple[int, int] | None = None
    sent_at = now
    for first_seq, first_ts, length, pause in runs:
        r.switch()
        now += pause
        for i in range(length):
            out = r.rewrite(
                (first_seq + i) & 0xFFFF, (first_ts + 3000 * (i // 3)) & 0xFFFFFFFF, now
            )
            assert out is not None
            if prev_out is not None:
                assert out[0] == sequence.seq_add(prev_out[0], 1)
                assert sequence.ts_diff(out[1], prev_out[1]) >= (1 if i == 0 else 0)
                if i == 0:
                    # The timestamp advances by the pause, give or take rounding.
                    elapsed = (now - sent_at) * clock
                    assert abs(sequence.ts_diff(out[1], prev_out[1]) - max(1, elapsed)) <= 1
            prev_out, sent_at = out, now
            now += 0.01 if i % 3 == 2 else 0.0
        # Every packet of the run maps back for NACKs.
        assert prev_out is not None
        assert r.original_sequence(prev_out[0]) == (first_seq + length - 1) & 0xFFFF
        assert r.original_sequence(sequence.seq_add(prev_out[0], 1)) is None


def test_rewriter_drops_packets_older_than_the_run() -> None:
    r = sequence.RtpRewriter(48000)
    for i in range(10):
        r.rewrite(i, i * 960, i * 0.02)
    r.switch()
    first = r.rewrite(5000, 1000, 0.5)
    assert first == (10, 9 * 960 + round((0.5 - 0.18) * 48000))
    assert r.rewrite(4999, 40, 0.5) is None  # before the run: would reuse seq 9
    assert r.rewrite(5002, 1000 + 1920, 0.54) == (12, first[1] + 1920)
    assert r.rewrite(5001, 1000 + 960, 0.54) == (11, first[1] + 960)  # reordered, kept
    assert r.original_sequence(11) == 5001
    assert r.original_sequence(9) is None


def test_rewriter_survives_long_runs_across_wraps() -> None:
    r = sequence.RtpRewriter(90000)
    r.rewrite(60000, 0, 0.0)
    for i in range(1, 70000, 7):
        assert r.rewrite((60000 + i) & 0xFFFF, i, 0.0) == ((60000 + i) & 0xFFFF, i)


def test_rewriter_timestamp_offset_follows_runs() -> None:
    r = sequence.RtpRewriter(90000)
    assert r.timestamp_offset is None
    assert r.rewrite(100, 5000, 0.0) == (100, 5000)
    assert r.timestamp_offset == 0
    r.switch()
    # A new source with unrelated numbers, one second later.
    seq, ts = r.rewrite(7, 1_000_000, 1.0) or (0, 0)
    assert (seq, ts) == (101, 5000 + 90000)
    assert r.timestamp_offset == (ts - 1_000_000) & 0xFFFFFFFF


def test_rewriter_maps_a_resent_packet_without_moving() -> None:
    r = sequence.RtpRewriter(48000)
    assert r.sent_as(5, 0) is None  # nothing sent yet
    for i in range(10):
        r.rewrite(i, i * 960, i * 0.02)
    r.switch()
    # Until the next run's first packet the previous run still answers, as sent.
    assert r.sent_as(7, 7 * 960) == (7, 7 * 960)
    assert r.sent_as(10, 0) is None  # never sent
    assert r.highest == (9, 9 * 960)
    first = r.rewrite(5000, 1000, 0.5)
    assert first == (10, 9 * 960 + round((0.5 - 0.18) * 48000))
    assert r.rewrite(5001, 1960, 0.52) == (11, first[1] + 960)
    # The new run's packets map as sent; the old run's numbers are gone.
    assert r.sent_as(5000, 1000) == first
    assert r.sent_as(7, 7 * 960) is None
    assert r.sent_as(5002, 2920) is None
    assert r.highest == (11, first[1] + 960)
