"""The forwarding core: fan-out, keyframe gating, NACK/RTX repair, mute, bad input.

Packets are built and read back with aiortc's RTP codec, VP8 payload
descriptor and H.264 packetizer: an encoder no one here wrote.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Hashable
from typing import Any

import pytest
from aiortc import rtp as artp
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import VpxPayloadDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtc.rtcp.feedback import Fir, Nack, Pli
from rtc.rtp import extensions, header, sequence
from rtc.sdp.attributes import ABS_SEND_TIME, AUDIO_LEVEL, MID, TRANSPORT_CC
from sfu.errors import SfuError, SfuStateError
from sfu.forward import native
from sfu.forward.forwarder import Forwarder
from sfu.forward.keyframes import h264_keyframe_start, vp8_keyframe_start
from tests.rtc.test_rtp import aiortc_map
from tests.sfu.forward.test_native import keyed, native_leaf, route_native
from tests.sfu.forward.test_repair import GROUP, HIGH, LOW, picture, vp8_layer

# Chromium's and Firefox's numbering of the same extensions.
CHROME_EXT = {AUDIO_LEVEL: 1, ABS_SEND_TIME: 2, TRANSPORT_CC: 3, MID: 4}
FIREFOX_EXT = {MID: 3, AUDIO_LEVEL: 1, ABS_SEND_TIME: 2, TRANSPORT_CC: 7}

VIDEO_SSRC = 0x1111
RTX_SSRC = 0x2222
AUDIO_SSRC = 0x3333
VP8_PT = 96
RTX_PT = 97
OPUS_PT = 111
PUB = "publisher"


PUB_MAP = aiortc_map(CHROME_EXT)


def vp8_payload(keyframe: bool, start: bool = True, picture_id: int = 1) -> bytes:
    desc = VpxPayloadDescriptor(partition_start=int(start), partition_id=0, picture_id=picture_id)
    # VP8 payload header: bit 0 of the first byte is P, 0 on a key frame (RFC 6386 9.1).
    header = bytes([0x10 if keyframe else 0x11, 0, 0]) if start else b"\xaa\xbb"
    return bytes(desc) + header + b"\x00" * 40


def video_packet(
    seq: int,
    ts: int,
    payload: bytes,
    *,
    marker: bool = False,
    twcc: int = 0,
    ssrc: int = VIDEO_SSRC,
    pt: int = VP8_PT,
) -> bytes:
    p = artp.RtpPacket(
        payload_type=pt,
        marker=int(marker),
        sequence_number=seq & 0xFFFF,
        timestamp=ts & 0xFFFFFFFF,
        ssrc=ssrc,
        payload=payload,
    )
    p.extensions.mid = "1"
    p.extensions.abs_send_time = 0x123456
    p.extensions.transport_sequence_number = twcc & 0xFFFF
    return p.serialize(PUB_MAP)


def vp8_frames(first_seq: int, frames: int, keyframes: set[int]) -> list[bytes]:
    """Three packets per frame; frames in ``keyframes`` are key frames."""
    out = []
    seq = first_seq
    for f in range(frames):
        for i in range(3):
            payload = vp8_payload(f in keyframes, start=i == 0, picture_id=f)
            out.append(video_packet(seq, 3000 * f, payload, marker=i == 2, twcc=seq))
            seq += 1
    return out


def make_forwarder(**kwargs: float) -> Forwarder:
    fwd = Forwarder(feedback_ssrc=9, **kwargs)  # type: ignore[arg-type]
    fwd.add_track(
        PUB,
        VIDEO_SSRC,
        kind="video",
        codec="VP8",
        clock_rate=90000,
        rtx_ssrc=RTX_SSRC,
        rtx_payload_types={RTX_PT: VP8_PT},
        extensions=CHROME_EXT,
    )
    fwd.add_track(
        PUB, AUDIO_SSRC, kind="audio", codec="opus", clock_rate=48000, extensions=CHROME_EXT
    )
    return fwd


def by_subscriber(routed: list[tuple[Hashable, bytes]]) -> dict[Hashable, list[bytes]]:
    out: dict[Hashable, list[bytes]] = {}
    for key, packet in routed:
        out.setdefault(key, []).append(packet)
    return out


# -- keyframe detection ---------------------------------------------------------


@pytest.mark.parametrize(
    ("desc", "keyframe"),
    [
        (VpxPayloadDescriptor(1, 0), True),
        (VpxPayloadDescriptor(1, 0, picture_id=300), True),
        (VpxPayloadDescriptor(1, 0, picture_id=5, tl0picidx=3, tid=(1, 1), keyidx=2), True),
        (VpxPayloadDescriptor(0, 0, picture_id=5), False),
        (VpxPayloadDescriptor(1, 1, picture_id=5), False),
    ],
)
def test_vp8_keyframe(desc: VpxPayloadDescriptor, keyframe: bool) -> None:
    key = bytes(desc) + b"\x10\x02\x00"
    delta = bytes(desc) + b"\x11\x02\x00"
    assert vp8_keyframe_start(key, 0, len(key)) is keyframe
    assert not vp8_keyframe_start(delta, 0, len(delta))
    # Parsed back by aiortc: the descriptor we skipped is the one it reads.
    parsed, rest = VpxPayloadDescriptor.parse(key)
    assert rest == b"\x10\x02\x00"
    assert (parsed.partition_start, parsed.picture_id) == (desc.partition_start, desc.picture_id)
    assert vp8_keyframe_start(b"", 0, 0) is False


SPS = bytes([0x67, 0x42, 0xC0, 0x1F]) + b"\x01" * 10
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
IDR = bytes([0x65, 0x88]) + b"\x02" * 3000
SLICE = bytes([0x41, 0x9A]) + b"\x03" * 3000


def test_h264_keyframe_stap_a_and_fu_a() -> None:
    # aiortc's packetizer: SPS+PPS aggregated in a STAP-A, the IDR in FU-A fragments.
    payloads = H264Encoder._packetize([SPS, PPS, IDR])
    assert payloads[0][0] & 0x1F == 24
    assert all(p[0] & 0x1F == 28 for p in payloads[1:])
    flags = [h264_keyframe_start(p, 0, len(p)) for p in payloads]
    assert flags == [True, True] + [False] * (len(payloads) - 2)
    # The IDR's start fragment alone, and without the SPS in front.
    only_idr = H264Encoder._packetize([IDR])
    assert h264_keyframe_start(only_idr[0], 0, len(only_idr[0]))
    # A non-IDR frame never is.
    for p in H264Encoder._packetize([SLICE]):
        assert not h264_keyframe_start(p, 0, len(p))
    small_idr = bytes([0x65, 0x88, 1, 2])
    assert h264_keyframe_start(small_idr, 0, 4)
    stap = H264Encoder._packetize([PPS, small_idr])[0]
    assert stap[0] & 0x1F == 24
    assert h264_keyframe_start(stap, 0, len(stap))
    assert not h264_keyframe_start(b"\x18\x00\x09\x41", 0, 4)  # truncated STAP-A


def test_h264_track_waits_for_idr() -> None:
    fwd = Forwarder()
    fwd.add_track(PUB, 7, kind="video", codec="H264", clock_rate=90000)
    fwd.subscribe("s", 7, 0.0, ssrc=70)
    seq = 0
    got = []
    for f, nals in enumerate([[SLICE], [SPS, PPS, IDR], [SLICE]]):
        for payload in H264Encoder._packetize(nals):
            p = artp.RtpPacket(
                payload_type=102, sequence_number=seq, timestamp=f * 3000, ssrc=7, payload=payload
            )
            got += fwd.route(p.serialize(), 0.1 * f)
            seq += 1
    first_frame = len(H264Encoder._packetize([SLICE]))
    assert len(got) == seq - first_frame
    assert artp.RtpPacket.parse(got[0][1]).payload[0] & 0x1F == 24


# -- fan-out -------------------------------------------------------------------


def test_fan_out_rewrites_per_subscriber() -> None:
    fwd = make_forwarder()
    firefox = aiortc_map(FIREFOX_EXT)
    fwd.subscribe("chrome", VIDEO_SSRC, 0.0, ssrc=1001, extensions=CHROME_EXT)
    fwd.subscribe(
        "firefox", VIDEO_SSRC, 0.0, ssrc=2001, payload_types={VP8_PT: 120}, extensions=FIREFOX_EXT
    )
    fwd.subscribe("plain", VIDEO_SSRC, 0.0, ssrc=3001)
    fwd.subscribe("firefox", AUDIO_SSRC, 0.0, ssrc=2002, extensions=FIREFOX_EXT)
    # The first request is sent at once, later ones coalesce.
    assert [type(p) for _, p in fwd.rtcp_to_send()] == [Pli]

    stream = vp8_frames(65530, 5, keyframes={0})
    routed: list[tuple[Hashable, bytes]] = []
    for i, packet in enumerate(stream):
        fwd.route_into(packet, 0.01 * i, routed)
        if i % 3 == 0:
            audio = artp.RtpPacket(
                payload_type=OPUS_PT, sequence_number=i, timestamp=960 * i, ssrc=AUDIO_SSRC
            )
            audio.extensions.audio_level = (True, 40)
            audio.extensions.transport_sequence_number = 7
            audio.payload = b"\xfc" * 20
            routed += fwd.route(audio.serialize(PUB_MAP), 0.01 * i)
    subs = by_subscriber(routed)
    assert fwd.stats.forwarded == len(routed)

    for key, ssrc, pt, m in (
        ("chrome", 1001, VP8_PT, PUB_MAP),
        ("firefox", 2001, 120, firefox),
        ("plain", 3001, VP8_PT, PUB_MAP),
    ):
        video = [artp.RtpPacket.parse(p, m) for p in subs[key] if header.ssrc(p) == ssrc]
        assert len(video) == len(stream)
        assert [p.sequence_number for p in video] == [(65530 + i) & 0xFFFF for i in range(15)]
        assert {p.payload_type for p in video} == {pt}
        for got, sent in zip(video, stream, strict=True):
            original = artp.RtpPacket.parse(sent, PUB_MAP)
            assert got.payload == original.payload
            assert got.timestamp == original.timestamp
            assert got.marker == original.marker
            assert got.extensions.mid == "1"
    # Firefox's copies use Firefox's ids, and its transport-wide counter runs
    # across both of its tracks, in the order the packets left.
    ff = [artp.RtpPacket.parse(p, firefox) for p in subs["firefox"]]
    assert [p.extensions.transport_sequence_number for p in ff] == list(range(len(ff)))
    ff_audio = [p for p in ff if p.ssrc == 2002]
    assert len(ff_audio) == 5
    assert all(p.extensions.audio_level == (True, 40) for p in ff_audio)
    # Raw check: no element of the Firefox copies carries Chromium's id for
    # transport-cc (3), which Firefox reads as mid.
    for p in subs["firefox"]:
        if header.ssrc(p) == 2001:
            assert extensions.get_extension(p, 3) == b"1"
        assert extensions.get_extension(p, 4) is None


def test_unnegotiated_extension_is_blanked() -> None:
    fwd = make_forwarder()
    fwd.subscribe("s", VIDEO_SSRC, 0.0, ssrc=5, extensions={MID: 4})
    out = fwd.route(vp8_frames(0, 1, {0})[0], 0.0)
    [(_, packet)] = out
    profile, start, end = extensions.extension_block(packet)
    assert extensions.parse_extensions(profile, packet[start:end]) == [(4, b"1")]


def test_equal_extension_tables_are_shared_and_interleaved_copies_stay_right() -> None:
    # Subscribers with equal mappings share one table, which route_into applies
    # once per packet; a different table (or none) in between must restore the
    # publisher's bytes first.
    fwd = make_forwarder()
    order = [("ff1", FIREFOX_EXT), ("plain", None), ("ff2", FIREFOX_EXT), ("blank", {MID: 4})]
    order.append(("ff3", FIREFOX_EXT))
    for n, (key, exts) in enumerate(order):
        fwd.subscribe(key, VIDEO_SSRC, 0.0, ssrc=100 + n, extensions=exts)
    tables = {key: fwd.subscription(key, 100 + n).ext_table for n, (key, _) in enumerate(order)}
    assert tables["ff1"] is tables["ff2"] is tables["ff3"] is not None
    routed: list[tuple[Hashable, bytes]] = []
    stream = vp8_frames(10, 3, keyframes={0})
    for i, packet in enumerate(stream):
        fwd.route_into(packet, 0.01 * i, routed)
    subs = by_subscriber(routed)
    firefox = aiortc_map(FIREFOX_EXT)
    for key in ("ff1", "ff2", "ff3"):
        for got, sent in zip(subs[key], stream, strict=True):
            assert artp.RtpPacket.parse(got, firefox).extensions.mid == "1"
            assert extensions.get_extension(got, 4) is None
            assert artp.RtpPacket.parse(got, firefox).payload == (
                artp.RtpPacket.parse(sent, PUB_MAP).payload
            )
    for got in subs["plain"]:
        assert artp.RtpPacket.parse(got, PUB_MAP).extensions.mid == "1"
    for got in subs["blank"]:
        profile, start, end = extensions.extension_block(got)
        assert extensions.parse_extensions(profile, got[start:end]) == [(4, b"1")]


def test_payload_type_not_mapped_is_not_forwarded() -> None:
    fwd = make_forwarder()
    fwd.subscribe("s", VIDEO_SSRC, 0.0, ssrc=5, payload_types={100: 100})
    assert fwd.route(vp8_frames(0, 1, {0})[0], 0.0) == []


# -- keyframes for late subscribers ---------------------------------------------------


def test_late_subscriber_waits_for_keyframe_and_requests_are_throttled() -> None:
    fwd = make_forwarder()
    fwd.subscribe("early", VIDEO_SSRC, 0.0, ssrc=1)
    fwd.rtcp_to_send()
    stream = vp8_frames(100, 30, keyframes={0, 20})
    t = 0.0
    for packet in stream[:15]:
        fwd.route(packet, t)
        t += 0.05
    fwd.subscribe("late", VIDEO_SSRC, t, ssrc=2)
    [(pub, pli)] = fwd.rtcp_to_send()
    assert pub == PUB
    assert pli == Pli(9, VIDEO_SSRC)
    # A second joiner 100 ms later: no new PLI now, one coalesced at +500 ms.
    fwd.subscribe("later", VIDEO_SSRC, t + 0.1, ssrc=3)
    assert fwd.rtcp_to_send() == []
    # Timers may fire early (the early subscriber's retry, now moot): nothing
    # goes out before the coalesced request is due at +500 ms.
    fired = []
    while (timer := fwd.get_timer()) is not None and timer <= t + 0.5:
        fwd.handle_timer(timer)
        fired += [(timer, type(p)) for _, p in fwd.rtcp_to_send()]
    assert [kind for _, kind in fired] == [Pli]
    assert fired[0][0] == pytest.approx(t + 0.5)

    received = by_subscriber([o for p in stream[15:] for o in fwd.route(p, t + 0.6)])
    assert len(received["early"]) == 75
    assert len(received["late"]) == len(received["later"]) == 30
    first = artp.RtpPacket.parse(received["late"][0])
    assert vp8_keyframe_start(first.payload, 0, len(first.payload))
    # The late subscribers' numbering starts where their keyframe did, with no gap.
    seqs = [header.sequence_number(p) for p in received["late"]]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(30)]
    # Nobody waits any more: no retry.
    fwd.handle_timer(t + 5)
    assert fwd.rtcp_to_send() == []


def test_keyframe_request_retried_while_waiting_and_fir() -> None:
    fwd = Forwarder(feedback_ssrc=9)
    fwd.add_track(PUB, VIDEO_SSRC, kind="video", codec="vp8", clock_rate=90000, fir=True)
    fwd.subscribe("s", VIDEO_SSRC, 10.0, ssrc=1)
    assert fwd.rtcp_to_send() == [(PUB, Fir(9, [(VIDEO_SSRC, 1)]))]
    timer = fwd.get_timer()
    assert timer == pytest.approx(11.0)
    fwd.handle_timer(11.0)
    assert fwd.rtcp_to_send() == [(PUB, Fir(9, [(VIDEO_SSRC, 2)]))]
    # A subscriber's own PLI goes upstream, throttled.
    fwd.handle_keyframe_request("s", 1, 11.2)
    assert fwd.rtcp_to_send() == []
    fwd.handle_keyframe_request("nobody", 1, 11.2)
    assert fwd.stats.unknown_ssrc == 1


# -- downstream repair ---------------------------------------------------------------


def test_nack_answered_from_history() -> None:
    fwd = make_forwarder()
    fwd.subscribe("s", VIDEO_SSRC, 0.0, ssrc=77)
    sent = [o[1] for p in vp8_frames(40000, 4, {0}) for o in fwd.route(p, 0.0)]
    seqs = [header.sequence_number(p) for p in sent]
    nack = Nack.from_lost(1, 77, [seqs[2], seqs[5], 12345])
    resent = fwd.handle_nack("s", nack.media_ssrc, Nack.parse(bytes(nack)).lost(), 0.1)
    assert len(resent) == 2
    for (key, packet), index in zip(resent, (2, 5), strict=True):
        assert key == "s"
        got = artp.RtpPacket.parse(packet, PUB_MAP)
        first = artp.RtpPacket.parse(sent[index], PUB_MAP)
        assert (got.ssrc, got.sequence_number, got.timestamp, got.payload) == (
            first.ssrc,
            first.sequence_number,
            first.timestamp,
            first.payload,
        )
        # A retransmission travels on the transport again: a new transport-wide number.
        assert got.extensions.transport_sequence_number not in range(len(sent))
    assert fwd.stats.nack_unanswered == 1
    # Aged out by time.
    assert fwd.handle_nack("s", 77, [seqs[0]], 5.0) == []
    assert fwd.stats.nack_unanswered == 2


def test_nack_answered_with_rtx_when_negotiated() -> None:
    fwd = make_forwarder()
    fwd.subscribe(
        "s",
        VIDEO_SSRC,
        0.0,
        ssrc=77,
        payload_types={VP8_PT: 98},
        rtx_ssrc=78,
        rtx_payload_types={98: 99},
    )
    sent = [o[1] for p in vp8_frames(7, 3, {0}) for o in fwd.route(p, 0.0)]
    lost = [header.sequence_number(sent[i]) for i in (1, 4, 8)]
    resent = fwd.handle_nack("s", 77, lost, 0.05)
    assert len(resent) == 3
    for i, (_, packet) in zip((1, 4, 8), resent, strict=True):
        rtx = artp.RtpPacket.parse(packet, PUB_MAP)
        assert (rtx.ssrc, rtx.payload_type) == (78, 99)
        original = artp.unwrap_rtx(rtx, payload_type=98, ssrc=77)
        first = artp.RtpPacket.parse(sent[i], PUB_MAP)
        assert (original.sequence_number, original.timestamp, original.payload) == (
            first.sequence_number,
            first.timestamp,
            first.payload,
        )
    # RTX has its own sequence numbers.
    assert [header.sequence_number(p) for _, p in resent] == [0, 1, 2]


# -- upstream repair ---------------------------------------------------------------


def test_upstream_gaps_are_nacked_with_retries_and_repaired_by_rtx() -> None:
    fwd = make_forwarder(nack_delay=0.01, nack_interval=0.1)
    fwd.subscribe("s", VIDEO_SSRC, 0.0, ssrc=5)
    fwd.rtcp_to_send()
    stream = vp8_frames(65530, 4, {0})
    dropped = {3, 4, 9}  # sequence numbers 65533, 65534 and 3: across the wrap
    out = []
    for i, p in enumerate(stream):
        if i not in dropped:
            out += fwd.route(p, 0.0)
    assert fwd.get_timer() == pytest.approx(0.01)
    fwd.handle_timer(0.01)
    [(pub, nack)] = fwd.rtcp_to_send()
    assert pub == PUB
    assert isinstance(nack, Nack)
    assert (nack.sender_ssrc, nack.media_ssrc) == (9, VIDEO_SSRC)
    assert nack.lost() == [65533, 65534, 3]
    # Retries a round trip apart.
    fwd.handle_timer(0.05)
    assert fwd.rtcp_to_send() == []
    fwd.handle_timer(0.11)
    [(_, again)] = fwd.rtcp_to_send()
    assert isinstance(again, Nack)
    assert again.lost() == [65533, 65534, 3]
    # The publisher repairs 65533 by RTX (aiortc wraps it) and 3 by the original.
    original = artp.RtpPacket.parse(stream[3], PUB_MAP)
    repaired = artp.wrap_rtx(original, payload_type=RTX_PT, sequence_number=500, ssrc=RTX_SSRC)
    late = fwd.route(repaired.serialize(PUB_MAP), 0.15)
    late += fwd.route(stream[9], 0.15)
    assert len(late) == 2
    assert artp.RtpPacket.parse(late[0][1], PUB_MAP).payload == original.payload
    assert header.sequence_number(late[0][1]) == 65533
    assert fwd.stats.recovered == 2
    # Only 65534 is still asked for, until the retry limit.
    for k in range(2, 10):
        fwd.handle_timer(0.11 + 0.1 * k)
    asked = [p for _, p in fwd.rtcp_to_send()]
    assert all(isinstance(p, Nack) and p.lost() == [65534] for p in asked)
    assert len(asked) == fwd.repair.nack_retries - 2
    assert fwd.stats.nack_gave_up == 1
    # Duplicates (a second RTX, the original itself) are not forwarded again.
    assert fwd.route(stream[9], 0.5) == []
    assert fwd.stats.duplicate == 1


def test_large_gap_asks_for_a_keyframe_not_a_flood() -> None:
    fwd = make_forwarder()
    fwd.route(vp8_frames(0, 1, {0})[0], 0.0)
    fwd.route(vp8_frames(5000, 1, {0})[0], 1.0)
    assert [type(p) for _, p in fwd.rtcp_to_send()] == [Pli]
    fwd.handle_timer(2.0)
    assert fwd.rtcp_to_send() == []


def test_rtx_probe_padding_is_dropped() -> None:
    fwd = make_forwarder()
    probe = artp.RtpPacket(payload_type=RTX_PT, sequence_number=1, ssrc=RTX_SSRC)
    probe.padding_size = 200
    assert fwd.route(probe.serialize(), 0.0) == []
    assert fwd.stats.rtx_padding == 1


# -- mute, pause and the table --------------------------------------------------------


def test_mute_and_pause() -> None:
    fwd = make_forwarder()
    fwd.subscribe("a", VIDEO_SSRC, 0.0, ssrc=1)
    fwd.subscribe("b", VIDEO_SSRC, 0.0, ssrc=2)
    stream = vp8_frames(0, 30, keyframes={0, 10, 20})
    out = [o for p in stream[:6] for o in fwd.route(p, 0.0)]
    fwd.set_paused("b", VIDEO_SSRC, True, 0.1)
    out += [o for p in stream[6:12] for o in fwd.route(p, 0.1)]
    fwd.set_muted(VIDEO_SSRC, True, 0.2)
    assert [o for p in stream[12:21] for o in fwd.route(p, 0.2)] == []
    fwd.rtcp_to_send()
    fwd.set_muted(VIDEO_SSRC, False, 1.0)
    fwd.set_paused("b", VIDEO_SSRC, False, 1.0)
    assert [type(p) for _, p in fwd.rtcp_to_send()] == [Pli]
    # Frame 7 is a delta frame: held; frame 10 is not sent (muted), 20 is key.
    out += [o for p in stream[21:] for o in fwd.route(p, 1.3)]
    subs = by_subscriber(out)
    a_seqs = [header.sequence_number(p) for p in subs["a"]]
    b_seqs = [header.sequence_number(p) for p in subs["b"]]
    # a: frames 0-3, then from keyframe 10 (delta frames 7-9 held back);
    # b: frames 0-1, then from keyframe 10.
    assert (len(a_seqs), len(b_seqs)) == (12 + 60, 6 + 60)
    # No sequence gap for either, across pause and mute.
    assert a_seqs == list(range(len(a_seqs)))
    assert b_seqs == list(range(len(b_seqs)))
    # The timestamp jumped by the paused wall-clock time, at 90 kHz.
    b_ts = [header.timestamp(p) for p in subs["b"]]
    assert b_ts[6] - b_ts[5] == round(1.3 * 90000)


def test_table_errors_are_typed() -> None:
    fwd = make_forwarder()
    with pytest.raises(SfuStateError):
        fwd.subscribe("s", 404, 0.0, ssrc=1)
    fwd.subscribe("s", VIDEO_SSRC, 0.0, ssrc=1)
    with pytest.raises(SfuStateError):
        fwd.subscribe("s", VIDEO_SSRC, 0.0, ssrc=2)
    with pytest.raises(SfuStateError):
        fwd.subscribe("s", AUDIO_SSRC, 0.0, ssrc=1)
    with pytest.raises(SfuStateError):
        fwd.add_track(PUB, RTX_SSRC, kind="video", codec="vp8", clock_rate=90000)
    with pytest.raises(SfuStateError):
        fwd.unsubscribe("t", VIDEO_SSRC)
    fwd.unsubscribe("s", VIDEO_SSRC)
    assert fwd.route(vp8_frames(0, 1, {0})[0], 0.0) == []
    fwd.subscribe("s", VIDEO_SSRC, 0.0, ssrc=1)
    fwd.subscribe("s", AUDIO_SSRC, 0.0, ssrc=2)
    fwd.remove_subscriber("s")
    assert fwd.subscription("s", 1) is None
    assert fwd.track(VIDEO_SSRC).subscriptions == []
    fwd.remove_publisher(PUB)
    assert fwd.tracks == []
    with pytest.raises(SfuStateError):
        fwd.remove_track(VIDEO_SSRC)
    assert fwd.handle_nack("s", 1, [1], 0.0) == []


# -- properties ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=80))
def test_random_bytes_are_counted_and_dropped(data: bytes) -> None:
    fwd = make_forwarder()
    fwd.subscribe("s", VIDEO_SSRC, 0.0, ssrc=1)
    fwd.subscribe("s", AUDIO_SSRC, 0.0, ssrc=2, extensions=FIREFOX_EXT)
    fwd.route(vp8_frames(0, 1, {0})[0], 0.0)
    # Aim some at known SSRCs so they get past the table lookup.
    for candidate in (data, data[:8] + struct.pack("!I", AUDIO_SSRC) + data[12:]):
        try:
            for _, packet in fwd.route(candidate, 0.1):
                header.payload_range(packet)
        except SfuError:
            pass
    fwd.handle_timer(1.0)


@st.composite
def lossy_streams(draw: st.DrawFn) -> tuple[int, list[int], set[int]]:
    start = draw(st.integers(0, 0xFFFF))
    n = draw(st.integers(1, 150))
    order = list(range(n))
    # Local reordering: swap neighbours within a small distance.
    for _ in range(draw(st.integers(0, n))):
        i = draw(st.integers(0, n - 1))
        j = min(n - 1, i + draw(st.integers(0, 5)))
        order[i], order[j] = order[j], order[i]
    extra = draw(st.lists(st.integers(0, n - 1), max_size=20))  # duplicates
    for e in extra:
        order.insert(draw(st.integers(0, len(order))), e)
    lost = set(draw(st.lists(st.integers(0, n - 1), max_size=n // 3)))
    pauses = set(draw(st.lists(st.integers(0, len(order)), max_size=4)))
    return start, order, lost | {-1 - p for p in pauses}


@settings(max_examples=200, deadline=None)
@given(lossy_streams())
def test_subscriber_sequence_numbers_never_repeat(case: tuple[int, list[int], set[int]]) -> None:
    start, order, marks = case
    lost = {m for m in marks if m >= 0}
    pauses = {-1 - m for m in marks if m < 0}
    fwd = Forwarder()
    fwd.add_track(PUB, AUDIO_SSRC, kind="audio", codec="opus", clock_rate=48000)
    fwd.subscribe("s", AUDIO_SSRC, 0.0, ssrc=5)
    out: list[int] = []
    paused = False
    for step, index in enumerate(order):
        t = step * 0.02
        if step in pauses:
            paused = not paused
            fwd.set_paused("s", AUDIO_SSRC, paused, t)
        if index in lost:
            continue
        p = artp.RtpPacket(
            payload_type=OPUS_PT,
            sequence_number=(start + index) & 0xFFFF,
            timestamp=960 * index,
            ssrc=AUDIO_SSRC,
            payload=b"x",
        )
        out += [header.sequence_number(b) for _, b in fwd.route(p.serialize(), t)]
    unwrapper = sequence.SequenceUnwrapper()
    extended = [unwrapper.unwrap(s) for s in out]
    assert len(set(extended)) == len(extended)
    if extended:
        # Near the first packet's number: a run maps inputs at a fixed offset, and
        # each resume continues one after the highest sent.
        assert min(extended) >= extended[0] - len(order)
        assert max(extended) - min(extended) < len(set(order)) * (len(pauses) + 1)


# -- simulcast -----------------------------------------------------------------------


def test_a_layer_then_none_then_another_keeps_the_pictures_continuous() -> None:
    # RFC 7741 section 4.2: a subscriber's PictureID and TL0PICIDX go on one
    # after another across layers; a jump reads as lost pictures. A move
    # through no layer waits for the new layer's keyframe, which starts the
    # next run of both rewriters. Through the native leaf when it is built
    # and on (WADUD_NATIVE): it makes the copies past a run's first packet.
    with contextlib.ExitStack() as stack:
        fan: Any = None
        bob: Hashable = "bob"
        if native.AVAILABLE:
            fan, (receiver,) = stack.enter_context(native_leaf(count=1, timeout=2.0))
            bob, session = keyed(receiver)
        fwd = Forwarder()
        fwd.simulcast.add_group(PUB, GROUP, 2, codec="vp8", clock_rate=90000)
        fwd.simulcast.add_layer(GROUP, 0, LOW)
        fwd.simulcast.add_layer(GROUP, 1, HIGH)
        fwd.subscribe(bob, GROUP, 0.0, ssrc=0x5555)

        def forward(packet: bytes, now: float) -> list[bytes]:
            """What bob gets of ``packet``, as the worker sends it."""
            if fan is None:
                return [copy for _, copy in fwd.route(packet, now)]
            before = fwd.stats.forwarded
            out: list[tuple[Hashable, bytes]] = []
            route_native(fwd, fan, packet, now, out)
            fan.send(out)
            copies = fwd.stats.forwarded - before
            native_copies.append(copies - len(out))
            return [session.inbound.unprotect(receiver.recv(2048)) for _ in range(copies)]

        got: list[bytes] = []
        native_copies: list[int] = []
        fwd.simulcast.set_layer(bob, GROUP, 0, 0.0)
        for i in range(3):
            got += forward(vp8_layer(LOW, 100 + i, 3000 * i, 10 + i, 3, key=i == 0), 0.033 * i)
        fwd.simulcast.set_layer(bob, GROUP, None, 0.1)
        fwd.simulcast.set_layer(bob, GROUP, 1, 0.15)
        for i in range(4):
            packet = vp8_layer(HIGH, 30000 + i, 9000 + 3000 * i, 500 + i, 70 + i, key=i == 1)
            got += forward(packet, 0.2 + 0.033 * i)
    assert [header.sequence_number(p) for p in got] == [100, 101, 102, 103, 104, 105]
    assert [picture(p) for p in got] == [(10, 3), (11, 3), (12, 3), (13, 4), (14, 5), (15, 6)]
    if fan is not None:
        # Each run's first packet by Python, the rest by the leaf.
        assert native_copies == [0, 1, 1, 0, 0, 1, 1]


def test_a_subscriber_moved_while_waiting_takes_whichever_keyframe_comes_first() -> None:
    # A new subscriber waits for its layer's first keyframe; the allocation
    # then moves it (a starved publisher's layers come in bursts). It keeps
    # waiting for the first layer too: its keyframe, coming first, starts
    # the video, and the new layer's keyframe takes over later. Moving at
    # once had dropped it and waited again from nothing.
    fwd = Forwarder()
    fwd.simulcast.add_group(PUB, GROUP, 2, codec="vp8", clock_rate=90000)
    fwd.simulcast.add_layer(GROUP, 0, LOW)
    fwd.simulcast.add_layer(GROUP, 1, HIGH)
    fwd.subscribe("bob", GROUP, 0.0, ssrc=0x5555)
    fwd.simulcast.set_layer("bob", GROUP, 1, 0.0)
    got = [fwd.route(vp8_layer(HIGH, 500, 0, 70, 3, key=False), 0.01)]
    fwd.simulcast.set_layer("bob", GROUP, 0, 0.02)
    got.append(fwd.route(vp8_layer(LOW, 100, 3000, 10, 3, key=False), 0.03))
    got.append(fwd.route(vp8_layer(HIGH, 501, 3000, 71, 3, key=True), 0.04))  # first
    got.append(fwd.route(vp8_layer(HIGH, 502, 6000, 72, 3, key=False), 0.07))
    got.append(fwd.route(vp8_layer(LOW, 101, 6000, 11, 3, key=False), 0.07))
    got.append(fwd.route(vp8_layer(LOW, 102, 9000, 12, 4, key=True), 0.1))  # the switch
    got.append(fwd.route(vp8_layer(HIGH, 503, 9000, 73, 4, key=False), 0.1))
    got.append(fwd.route(vp8_layer(LOW, 103, 12000, 13, 4, key=False), 0.13))
    assert [len(g) for g in got] == [0, 0, 1, 1, 0, 1, 0, 1]
    sent = [copy for g in got for _, copy in g]
    assert [header.sequence_number(p) for p in sent] == [501, 502, 503, 504]
    assert [picture(p)[0] for p in sent] == [71, 72, 73, 74]
    layers = fwd.simulcast._groups[GROUP].layers
    assert [t.waiting for t in layers] == [0, 0]


# -- micro-benchmark -----------------------------------------------------------------


def test_route_throughput_fan_out_10(capsys: pytest.CaptureFixture[str]) -> None:
    fwd = make_forwarder()
    for i in range(10):
        fwd.subscribe(
            f"s{i}", VIDEO_SSRC, 0.0, ssrc=100 + i, extensions=FIREFOX_EXT if i % 2 else None
        )
    stream = vp8_frames(0, 400, keyframes={0})
    for p in stream[:3]:
        fwd.route(p, 0.0)
    packets = stream[3:]
    out: list[tuple[Hashable, bytes]] = []
    begin = time.perf_counter()
    for i, p in enumerate(packets):
        fwd.route_into(p, 0.001 * i, out)
        out.clear()
    elapsed = time.perf_counter() - begin
    with capsys.disabled():
        print(
            f"\nroute at fan-out 10: {len(packets) / elapsed:,.0f} packets in/s, "
            f"{10 * len(packets) / elapsed:,.0f} packets out/s "
            f"({elapsed / len(packets) / 10 * 1e6:.2f} us per subscriber copy)"
        )
    assert fwd.stats.forwarded == 10 * len(stream)
