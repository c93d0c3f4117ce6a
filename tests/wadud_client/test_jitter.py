"""wadud_client.jitter: aiortc's video jitter buffer starts over at a keyframe past a gap."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiortc import RTCRtpCodecParameters
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RtpPacket
from hypothesis import given
from hypothesis import strategies as st

from sfu.forward.keyframes import vp8_keyframe_start as sfu_vp8_keyframe_start
from wadud_client.jitter import KeyframeResync, vp8_keyframe_start

KEY = b"\x10\x50\x01"  # S=1 PID 0, frame tag with P=0
START = b"\x10\x51\x01"  # S=1 PID 0, P=1: an interframe
MORE = b"\x00\xaa\xbb"  # a continuation packet


def _receiver() -> Any:
    """What KeyframeResync reads of an aiortc RTCRtpReceiver (its 1.x internals)."""
    receiver = SimpleNamespace()
    receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(512, is_video=True)
    receiver._RTCRtpReceiver__nack_generator = NackGenerator()
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    receiver._RTCRtpReceiver__codecs = {96: codec}
    return receiver


def _packet(seq: int, ts: int, payload: bytes) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF, timestamp=ts)
    packet.payload = payload
    packet._data = payload[1:]  # type: ignore[attr-defined]  # as aiortc depayloads
    return packet


def _feed(receiver: Any, packets: list[RtpPacket]) -> list[int]:
    """Add packets as aiortc's receiver does; the timestamps of the frames that come out."""
    buffer = receiver._RTCRtpReceiver__jitter_buffer
    nack = receiver._RTCRtpReceiver__nack_generator
    out = []
    for packet in packets:
        nack.add(packet)
        _, frame = buffer.add(packet)
        if frame is not None:
            out.append(frame.timestamp)
    return out


def _call(base: int) -> list[RtpPacket]:
    """Frames of two packets; the second packet of the second frame is lost,
    the third frame is a keyframe."""
    return [
        _packet(base, 1000, START),
        _packet(base + 1, 1000, MORE),
        _packet(base + 2, 2000, START),
        # base + 3 lost for good
        _packet(base + 4, 3000, KEY),
        _packet(base + 5, 3000, MORE),
        _packet(base + 6, 4000, START),
        _packet(base + 7, 4000, MORE),
        _packet(base + 8, 5000, START),
    ]


def test_aiortc_alone_waits_behind_the_gap() -> None:
    receiver = _receiver()
    assert _feed(receiver, _call(100)) == [1000]


def test_a_keyframe_past_a_gap_is_decoded_next() -> None:
    for base in (100, 0xFFFE):  # and across the sequence number wrap
        receiver = _receiver()
        resync = KeyframeResync(receiver)
        assert _feed(receiver, _call(base)) == [1000, 3000, 4000]
        assert (resync.resyncs, resync.skipped) == (1, 2)
        # The lost packet is no longer NACKed, and if it comes late after all
        # it is ignored rather than resetting the buffer.
        assert receiver._RTCRtpReceiver__nack_generator.missing == set()
        assert _feed(receiver, [_packet(base + 3, 2000, MORE)]) == []
        assert _feed(
            receiver, [_packet(base + 9, 5000, MORE), _packet(base + 10, 6000, START)]
        ) == [5000]


def test_a_keyframe_with_nothing_missing_changes_nothing() -> None:
    receiver = _receiver()
    resync = KeyframeResync(receiver)
    packets = [
        _packet(10, 1000, START),
        _packet(11, 1000, MORE),
        _packet(12, 2000, KEY),
        _packet(13, 3000, START),
    ]
    assert _feed(receiver, packets) == [1000, 2000]
    assert resync.resyncs == 0


def test_a_receiver_without_the_internals_is_left_alone() -> None:
    resync = KeyframeResync(SimpleNamespace())
    assert resync.resyncs == 0


@given(st.binary(max_size=12))
def test_keyframe_start_agrees_with_the_worker(payload: bytes) -> None:
    assert vp8_keyframe_start(payload) == sfu_vp8_keyframe_start(payload, 0, len(payload))
