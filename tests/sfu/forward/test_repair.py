"""Repair for subscribers: NACKed packets again from the history, RTX-wrapped
(RFC 4588 section 4) or rewritten as first sent, and padding-only RTX probes
(RFC 3550 section 5.1 padding, RFC 8285 transport-wide sequence number)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc.red import RedBlock, RedPayload
from rtc.rtp import extensions, header
from rtc.rtp.packet import RtpPacket
from rtc.sdp.attributes import ABS_SEND_TIME, TRANSPORT_CC
from sfu.forward.forwarder import Forwarder
from sfu.forward.history import PacketHistory
from sfu.forward.repair import padding_probe, retransmission
from sfu.forward.table import ForwarderStats, SourceStream, SubscriberTransport, Subscription

PUB_SSRC = 0x0A0A0A0A
SUB_SSRC = 0x1111
RTX_SSRC = 0x2222
VP8, SUB_VP8, SUB_RTX = 96, 100, 101
TCC_ID, ABS_ID = 3, 2


def track(kind: str = "video", exts: dict[str, int] | None = None) -> SourceStream:
    codec, rate = ("vp8", 90000) if kind == "video" else ("opus", 48000)
    return SourceStream(
        "alice", PUB_SSRC, kind, codec, rate, None, {}, exts or {}, True, False, PacketHistory()
    )


def subscription(
    source: SourceStream,
    *,
    rtx: bool = True,
    pt_map: dict[int, int] | None = None,
    ext_table: bytes | None = None,
    twcc: bool = False,
    abs_send_time: bool = False,
) -> Subscription:
    """A subscriber's view of ``source``: publisher PT 96 is its 100, RTX 101 on RTX_SSRC."""
    return Subscription(
        "bob",
        source,
        SubscriberTransport("bob"),
        SUB_SSRC,
        {VP8: SUB_VP8} if pt_map is None else pt_map,
        ext_table,
        twcc,
        abs_send_time,
        RTX_SSRC if rtx else None,
        {SUB_VP8: SUB_RTX} if rtx else {},
    )


def media(
    seq: int,
    ts: int,
    payload: bytes = b"\x10\x02frame",
    *,
    pt: int = VP8,
    marker: bool = True,
    exts: list[tuple[int, bytes]] | None = None,
) -> bytes:
    p = RtpPacket(
        payload_type=pt,
        sequence_number=seq,
        timestamp=ts,
        ssrc=PUB_SSRC,
        marker=marker,
        payload=payload,
    )
    if exts:
        p.set_extensions(exts)
    return bytes(p)


def sent(sub: Subscription, packet: bytes, now: float) -> tuple[int, int]:
    """Run ``packet`` through the subscription's rewriter as the hot path first sent it."""
    _, _, seq, ts, _ = header.header_fields(packet)
    mapped = sub.rewriter.rewrite(seq, ts, now)
    assert mapped is not None
    sub.packets_sent += 1
    return mapped


def shifted(sub: Subscription) -> None:
    """Give the rewriter a run with real offsets: publisher 40000.. is sent as 1001..."""
    sent(sub, media(1000, 5000), 0.0)
    sub.rewriter.switch()
    assert sent(sub, media(40000, 7_000_000), 0.5) == (1001, 5000 + 45000)


def test_rtx_retransmission_header_and_original_sequence_number() -> None:
    sub = subscription(track())
    shifted(sub)
    packet = media(40003, 7_000_000 + 2700)
    out_seq, out_ts = sent(sub, packet, 0.56)
    assert (out_seq, out_ts) == (1004, 5000 + 45000 + 2700)
    sub.rtx_seq = 7
    stats = ForwarderStats()
    rtx = retransmission(sub, packet, 0.6, stats)
    assert rtx is not None
    # RFC 4588 section 4: the RTX stream's SSRC, payload type and sequence
    # number; the original's timestamp and marker; the original sequence
    # number (the one the subscriber knows and NACKed) as the payload's first
    # two octets, then the original payload.
    assert rtx == bytes(
        RtpPacket(
            payload_type=SUB_RTX,
            sequence_number=7,
            timestamp=out_ts,
            ssrc=RTX_SSRC,
            marker=True,
            payload=(1004).to_bytes(2, "big") + b"\x10\x02frame",
        )
    )
    assert sub.rtx_seq == 8
    # The receiver's unwrap (RFC 4588 section 4) gives back the packet as sent.
    assert header.rtx_original(rtx, SUB_VP8, SUB_SSRC) == bytes(
        RtpPacket(
            payload_type=SUB_VP8,
            sequence_number=1004,
            timestamp=out_ts,
            ssrc=SUB_SSRC,
            marker=True,
            payload=b"\x10\x02frame",
        )
    )
    assert stats.red_stripped == 0


def test_rtx_sequence_is_its_own_and_wraps() -> None:
    sub = subscription(track())
    sub.rtx_seq = 0xFFFF
    first, second = media(500, 90000), media(501, 90000, marker=False)
    sent(sub, first, 0.0)
    sent(sub, second, 0.0)
    # Asked in reverse order: the RTX sequence counts what was sent on RTX_SSRC.
    a = retransmission(sub, second, 0.1, ForwarderStats())
    b = retransmission(sub, first, 0.1, ForwarderStats())
    assert a is not None and b is not None
    assert header.header_fields(a) == (0, SUB_RTX, 0xFFFF, 90000, RTX_SSRC)
    assert header.header_fields(b) == (1, SUB_RTX, 0x0000, 90000, RTX_SSRC)
    assert (a[12:14], b[12:14]) == ((501).to_bytes(2, "big"), (500).to_bytes(2, "big"))
    assert sub.rtx_seq == 1


@pytest.mark.parametrize(
    ("rtx_ssrc", "rtx_pt"),
    [(None, {}), (None, {SUB_VP8: SUB_RTX}), (RTX_SSRC, {111: 112})],
    ids=["no-rtx", "rtx-pt-without-ssrc", "rtx-for-another-pt"],
)
def test_plain_retransmission_without_rtx_for_this_payload_type(
    rtx_ssrc: int | None, rtx_pt: dict[int, int]
) -> None:
    sub = subscription(track())
    sub.rtx_ssrc, sub.rtx_pt = rtx_ssrc, rtx_pt
    shifted(sub)
    packet = media(40001, 7_000_000 + 3000, marker=False)
    out_seq, out_ts = sent(sub, packet, 0.52)
    again = retransmission(sub, packet, 0.7, ForwarderStats())
    # The original packet with the header the subscriber first got.
    assert again == bytes(
        RtpPacket(
            payload_type=SUB_VP8,
            sequence_number=out_seq,
            timestamp=out_ts,
            ssrc=SUB_SSRC,
            payload=b"\x10\x02frame",
        )
    )
    assert (out_seq, sub.rtx_seq) == (1002, 0)


def test_plain_retransmission_is_the_hot_paths_copy() -> None:
    fwd = Forwarder()
    fwd.add_track("alice", PUB_SSRC, kind="audio", codec="opus", clock_rate=48000)
    sub = fwd.subscribe("bob", PUB_SSRC, 0.0, ssrc=SUB_SSRC, payload_types={111: 109})
    copies = []
    for i, seq in enumerate(range(65534, 65534 + 4)):
        packet = media(seq & 0xFFFF, 960 * i, bytes([0xF8, i]), pt=111, marker=i == 0)
        routed = fwd.route(packet, 0.02 * i)
        assert [key for key, _ in routed] == ["bob"]
        copies.append((packet, routed[0][1]))
    for packet, copy in copies:
        assert retransmission(sub, packet, 0.1, ForwarderStats()) == copy


def test_extensions_stamped_for_this_send() -> None:
    source = track(exts={TRANSPORT_CC: TCC_ID, ABS_SEND_TIME: ABS_ID})
    # The subscriber numbers transport-cc 5 and abs-send-time 4 (RFC 8285).
    table = bytearray(range(256))
    table[TCC_ID], table[ABS_ID] = 5, 4
    sub = subscription(source, ext_table=bytes(table), twcc=True, abs_send_time=True)
    transport = sub.transport
    transport.sent_at, transport.sizes = [0.0] * 65536, [0] * 65536
    transport.twcc_seq = 0xFFFF
    packet = media(10, 0, exts=[(TCC_ID, b"\x00\x07"), (ABS_ID, b"\x00\x00\x01")])
    sent(sub, packet, 0.0)
    for rtx in (True, False):
        if not rtx:
            sub.rtx_ssrc = None
        out = retransmission(sub, packet, 2.5, ForwarderStats())
        assert out is not None
        tseq = 0xFFFF if rtx else 0
        assert extensions.transport_sequence_number(out, 5) == tseq
        assert extensions.abs_send_time(out, 4) == int(2.5 * (1 << 18))
        assert extensions.get_extension(out, TCC_ID) is None
        assert (transport.sent_at[tseq], transport.sizes[tseq]) == (2.5, len(out))
        assert header.payload_type(out) == (SUB_RTX if rtx else SUB_VP8)
    assert transport.twcc_seq == 1


def test_red_cut_to_its_primary_for_a_subscriber_without_red() -> None:
    source = track("audio")
    source.red_pt = 63
    sub = subscription(source, rtx=False, pt_map={111: 109})
    primary = b"\xf8\xaa\xbb"
    red = RedPayload(111, primary, [RedBlock(111, 960, b"\xf8\x01")])
    packet = media(200, 48000, bytes(red), pt=63, marker=False)
    sent(sub, packet, 0.0)
    stats = ForwarderStats()
    out = retransmission(sub, packet, 0.1, stats)
    assert (
        out
        == bytes(RtpPacket(payload_type=109, sequence_number=200, timestamp=48000, ssrc=SUB_SSRC))
        + primary
    )
    assert stats.red_stripped == 1


def test_nothing_to_send() -> None:
    source = track(exts={TRANSPORT_CC: TCC_ID})
    sub = subscription(source, twcc=True)
    shifted(sub)
    before = (sub.rtx_seq, sub.transport.twcc_seq)
    stats = ForwarderStats()
    # A payload type the subscriber did not negotiate.
    assert retransmission(sub, media(40000, 7_000_000, pt=97), 0.6, stats) is None
    # Older than the current run's first packet: its number belongs to the previous run.
    old = media(39999, 7_000_000, exts=[(TCC_ID, b"\x00\x01")])
    assert retransmission(sub, old, 0.6, stats) is None
    assert (sub.rtx_seq, sub.transport.twcc_seq) == before
    assert stats.as_dict() == ForwarderStats().as_dict()


def probing() -> Subscription:
    sub = subscription(track(exts={TRANSPORT_CC: TCC_ID}), twcc=True)
    sub.transport.by_ssrc[sub.ssrc] = sub
    sent(sub, media(3000, 123456), 0.0)
    return sub


@pytest.mark.parametrize(("size", "count"), [(200, 180), (21, 1), (5, 1), (1500, 255)])
def test_padding_probe_shape(size: int, count: int) -> None:
    sub = probing()
    transport = sub.transport
    transport.twcc_seq = 0x1234
    transport.sent_at, transport.sizes = [0.0] * 65536, [0] * 65536
    sub.rtx_seq = 41
    probe = padding_probe(transport, size, 3.0)
    assert probe is not None
    data, tseq = probe
    assert tseq == 0x1234
    assert len(data) == 20 + count
    # RFC 3550 5.1: V=2, P set, X set; the RTX stream's PT, sequence number and
    # SSRC, the last timestamp sent; the last octet counts the padding, itself included.
    assert data[0] == 0xB0
    assert header.header_fields(data) == (0, SUB_RTX, 41, 123456, RTX_SSRC)
    assert header.padding_length(data) == data[-1] == count
    assert data[20:-1] == bytes(count - 1)
    # RFC 8285 one-byte block carrying only the transport-wide sequence number.
    assert data[12:20] == bytes((0xBE, 0xDE, 0, 1, TCC_ID << 4 | 1, 0x12, 0x34, 0))
    assert extensions.transport_sequence_number(data, TCC_ID) == 0x1234
    # No payload: a receiver unwrapping it finds no repair (RFC 4588 section 4).
    assert header.payload_range(data) == (20, 20)
    assert header.rtx_original(data, SUB_VP8, SUB_SSRC) is None
    assert (sub.rtx_seq, transport.twcc_seq, sub.padded) == (42, 0x1235, 1)
    assert (transport.sent_at[tseq], transport.sizes[tseq]) == (3.0, len(data))


def test_padding_probe_uses_the_subscribers_extension_id() -> None:
    sub = probing()
    table = bytearray(range(256))
    table[TCC_ID] = 9
    sub.ext_table = bytes(table)
    probe = padding_probe(sub.transport, 100, 0.0)
    assert probe is not None
    assert extensions.transport_sequence_number(probe[0], 9) == 0
    # An id the one-byte form cannot carry: no probe.
    table[TCC_ID] = 15
    sub.ext_table = bytes(table)
    assert padding_probe(sub.transport, 100, 0.0) is None


@pytest.mark.parametrize("lacks", ["subscriptions", "rtx_ssrc", "rtx_pt", "twcc", "packets_sent"])
def test_no_padding_probe_without_a_carrier(lacks: str) -> None:
    sub = probing()
    if lacks == "subscriptions":
        sub.transport.by_ssrc.clear()
    elif lacks == "rtx_ssrc":
        sub.rtx_ssrc = None
    elif lacks == "rtx_pt":
        sub.rtx_pt = {}
    elif lacks == "twcc":
        sub.twcc = False
    else:
        sub.packets_sent = 0
    assert padding_probe(sub.transport, 200, 0.0) is None
    assert (sub.rtx_seq, sub.transport.twcc_seq) == (0, 0)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFF),
    st.booleans(),
    st.binary(min_size=1, max_size=64),
)
def test_unwrapped_rtx_is_the_plain_retransmission(
    seq: int, ts: int, rtx_seq: int, marker: bool, payload: bytes
) -> None:
    packet = media(seq, ts, payload, marker=marker)
    with_rtx, without = subscription(track()), subscription(track(), rtx=False)
    with_rtx.rtx_seq = rtx_seq
    for sub in (with_rtx, without):
        sent(sub, packet, 0.0)
    rtx = retransmission(with_rtx, packet, 0.1, ForwarderStats())
    plain = retransmission(without, packet, 0.1, ForwarderStats())
    assert rtx is not None and plain is not None
    assert header.header_fields(rtx)[2:] == (rtx_seq, ts, RTX_SSRC)
    assert header.rtx_original(rtx, SUB_VP8, SUB_SSRC) == plain


@pytest.mark.parametrize("resume", ["unpause", "unmute"])
def test_nack_after_a_resume_is_answered_as_first_sent(resume: str) -> None:
    # RFC 4588 section 4 / RFC 3550 section 5.1: a retransmission carries the
    # sequence number the subscriber knows, and never moves the live run.
    fwd = Forwarder()
    fwd.add_track("alice", PUB_SSRC, kind="audio", codec="opus", clock_rate=48000)
    sub = fwd.subscribe("bob", PUB_SSRC, 0.0, ssrc=SUB_SSRC)
    first = {}
    for i, seq in enumerate(range(100, 105)):
        [(_, copy)] = fwd.route(media(seq, 960 * i, bytes([0xF8, i]), pt=111), 0.02 * i)
        first[seq] = copy
    assert [header.sequence_number(c) for c in first.values()] == [100, 101, 102, 103, 104]
    if resume == "unpause":
        fwd.set_paused("bob", PUB_SSRC, True, 0.1)
        fwd.set_paused("bob", PUB_SSRC, False, 0.2)
    else:
        fwd.set_muted(PUB_SSRC, True, 0.1)
        fwd.set_muted(PUB_SSRC, False, 0.2)
    # The subscriber asks again for 102 before the resumed run's first packet.
    resent = fwd.handle_nack("bob", SUB_SSRC, [102], 0.21)
    assert [header.sequence_number(p) for _, p in resent] == [102]
    assert resent == [("bob", first[102])]
    assert sub.rewriter.highest[0] == 104
    # The live stream goes on one after the last number sent: no gap to NACK.
    [(_, live)] = fwd.route(media(105, 960 * 5, b"\xf8\x05", pt=111), 0.22)
    assert header.sequence_number(live) == 105
    # Once the new run has started, the old run's numbers are refused, counted.
    unanswered = fwd.stats.nack_unanswered
    assert fwd.handle_nack("bob", SUB_SSRC, [103], 0.23) == []
    assert (fwd.stats.nack_unanswered, sub.unanswered) == (unanswered + 1, 1)


GROUP, LOW, HIGH = 9000, 0x0101, 0x0202


def vp8_layer(ssrc: int, seq: int, ts: int, pid: int, tl0: int, *, key: bool = False) -> bytes:
    """A VP8 packet of a simulcast layer: a descriptor (RFC 7741 section 4.2)
    with a 15-bit PictureID and a TL0PICIDX, a keyframe's start if ``key``."""
    descriptor = bytes([0x90, 0xC0, 0x80 | pid >> 8, pid & 0xFF, tl0])
    frame = bytes([0x10 if key else 0x11, 0, 0, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xB4, 0])
    return (
        bytes(
            RtpPacket(payload_type=VP8, sequence_number=seq, timestamp=ts, ssrc=ssrc, marker=True)
        )
        + descriptor
        + frame
    )


def picture(packet: bytes) -> tuple[int, int]:
    """PictureID and TL0PICIDX of a plain VP8 packet as a subscriber reads them."""
    start, _ = header.payload_range(packet)
    return (packet[start + 2] & 0x7F) << 8 | packet[start + 3], packet[start + 4]


def _low_layer_sent(fwd: Forwarder) -> dict[int, bytes]:
    """Put bob on the low layer and route its first three pictures (a
    keyframe first): what bob was sent, by sequence number."""
    fwd.simulcast.set_layer("bob", GROUP, 0, 0.0)
    first: dict[int, bytes] = {}
    for i in range(3):
        packet = vp8_layer(LOW, 100 + i, 3000 * i, 10 + i, 3, key=i == 0)
        [(_, copy)] = fwd.route(packet, 0.033 * i)
        first[header.sequence_number(copy)] = copy
    return first


@pytest.mark.parametrize("rtx", [False, True], ids=["plain", "rtx"])
def test_simulcast_vp8_retransmission_keeps_the_picture_first_sent(rtx: bool) -> None:
    # RFC 7741 section 4.2: the subscriber's PictureID/TL0PICIDX continue
    # across layers; a retransmission repeats the ones it first carried.
    fwd = Forwarder()
    fwd.simulcast.add_group("alice", GROUP, 2, codec="vp8", clock_rate=90000)
    fwd.simulcast.add_layer(GROUP, 0, LOW)
    fwd.simulcast.add_layer(GROUP, 1, HIGH)
    fwd.subscribe(
        "bob", GROUP, 0.0, ssrc=SUB_SSRC, payload_types={VP8: SUB_VP8},
        rtx_ssrc=RTX_SSRC if rtx else None, rtx_payload_types={SUB_VP8: SUB_RTX} if rtx else None,
    )  # fmt: skip
    first = _low_layer_sent(fwd)
    fwd.simulcast.set_layer("bob", GROUP, 1, 0.1)
    for i in range(3, 6):
        packet = vp8_layer(HIGH, 30000 + i, 3000 * i, 500 + i, 70, key=i == 3)
        [(_, copy)] = fwd.route(packet, 0.033 * i)
        first[header.sequence_number(copy)] = copy
    pictures = [(10, 3), (11, 3), (12, 3), (13, 4), (14, 4), (15, 4)]
    assert [picture(c) for c in first.values()] == pictures
    assert list(first) == [100, 101, 102, 103, 104, 105]
    for nacked, paused in ((104, False), (103, True)):
        if paused:
            # A resume leaves the VP8 rewriter waiting for its next run too.
            fwd.set_paused("bob", GROUP, True, 0.3)
            fwd.set_paused("bob", GROUP, False, 0.31)
        [(_, again)] = fwd.handle_nack("bob", SUB_SSRC, [nacked], 0.32)
        if rtx:
            again = header.rtx_original(again, SUB_VP8, SUB_SSRC) or b""
        assert picture(again) == picture(first[nacked])
        assert again == first[nacked]
    # The resumed run continues one picture after the last sent.
    [(_, live)] = fwd.route(vp8_layer(HIGH, 30006, 18000, 506, 71, key=True), 0.4)
    assert (header.sequence_number(live), picture(live)) == (106, (16, 5))


def test_nack_after_a_layer_then_none_then_another_is_answered_from_the_first_layer() -> None:
    # Each layer numbers its own packets (RFC 3550 section 5.1), so the low
    # and the high layer both have a 101. A move through no layer puts the
    # subscription on the high layer at once, while its old run still
    # answers NACKs until the high layer's keyframe starts the next: what it
    # resends is the low layer's packet it first sent (RFC 4588 section 4).
    fwd = Forwarder()
    fwd.simulcast.add_group("alice", GROUP, 2, codec="vp8", clock_rate=90000)
    fwd.simulcast.add_layer(GROUP, 0, LOW)
    fwd.simulcast.add_layer(GROUP, 1, HIGH)
    sub = fwd.subscribe("bob", GROUP, 0.0, ssrc=SUB_SSRC, payload_types={VP8: SUB_VP8})
    first = _low_layer_sent(fwd)
    assert [picture(c) for c in first.values()] == [(10, 3), (11, 3), (12, 3)]
    fwd.simulcast.set_layer("bob", GROUP, None, 0.1)
    fwd.simulcast.set_layer("bob", GROUP, 1, 0.15)
    # The high layer's own 100..102 go by while bob waits for its keyframe.
    for i in range(3):
        packet = vp8_layer(HIGH, 100 + i, 3000 * (i + 3), 500 + i, 70)
        assert fwd.route(packet, 0.2 + 0.033 * i) == []
    [(_, again)] = fwd.handle_nack("bob", SUB_SSRC, [101], 0.3)
    assert (header.sequence_number(again), picture(again)) == (101, (11, 3))
    assert again == first[101]
    # The high layer's keyframe starts the next run; the old numbers are refused.
    [(_, live)] = fwd.route(vp8_layer(HIGH, 103, 18000, 503, 71, key=True), 0.4)
    assert header.sequence_number(live) == 103
    unanswered = fwd.stats.nack_unanswered
    assert fwd.handle_nack("bob", SUB_SSRC, [101], 0.41) == []
    assert (fwd.stats.nack_unanswered, sub.unanswered) == (unanswered + 1, 1)
