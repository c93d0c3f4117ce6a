"""The sealed recorded-RTP segment (rtc/rtpdump.py): what a worker writes, the
recorder reads back, and nothing else opens."""

from __future__ import annotations

import dataclasses
import os

import pytest

from rtc.rtpdump import MAGIC, RtpDumpError, SegmentHeader, SegmentWriter, open_segment, read_header

HEADER = SegmentHeader(
    recording="rec-1",
    track="t-video",
    kind="video",
    codec="VP8",
    clock_rate=90_000,
    payload_type=96,
    index=3,
    started=1_700_000_000.25,
)


def written(key: bytes, n: int = 50) -> tuple[bytes, list[tuple[float, bytes]]]:
    writer = SegmentWriter(HEADER)
    sent = [(HEADER.started + i * 0.033, os.urandom(20 + i * 7)) for i in range(n)]
    for at, packet in sent:
        writer.add(packet, at)
    assert writer.count == n
    return writer.seal(key), sent


def test_a_segment_opens_with_its_key_to_the_same_packets_and_times() -> None:
    key = os.urandom(32)
    blob, sent = written(key)
    segment = open_segment(blob, key)
    assert segment.header == HEADER
    assert [p for _, p in segment.packets] == [p for _, p in sent]
    for (got, _), (want, _) in zip(segment.packets, sent, strict=True):
        assert got == pytest.approx(want, abs=1e-6)
    assert read_header(blob) == HEADER
    # The packets are not readable in the stored bytes.
    assert sent[10][1] not in blob


def test_an_empty_segment_opens_empty() -> None:
    key = os.urandom(32)
    assert open_segment(SegmentWriter(HEADER).seal(key), key).packets == []


def test_another_key_a_flipped_bit_or_a_moved_header_does_not_open() -> None:
    key = os.urandom(32)
    blob, _ = written(key)
    with pytest.raises(RtpDumpError, match="does not open"):
        open_segment(blob, os.urandom(32))
    flipped = bytearray(blob)
    flipped[-5] ^= 1
    with pytest.raises(RtpDumpError):
        open_segment(bytes(flipped), key)
    # The same sealed records under another index (a reordered segment).
    moved = dataclasses.replace(HEADER, index=4).encode()
    old = HEADER.encode()
    assert len(moved) == len(old)
    with pytest.raises(RtpDumpError, match="does not open"):
        open_segment(blob.replace(old, moved), key)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not a segment",
        MAGIC,
        MAGIC + b"\x00\x00\xff\xff",
        MAGIC + b"\x00\x00\x00\x02{}" + b"\x00" * 40,
    ],
)
def test_garbage_is_a_typed_error(blob: bytes) -> None:
    with pytest.raises(RtpDumpError):
        open_segment(blob, os.urandom(32))


def test_a_packet_over_the_record_limit_is_refused() -> None:
    with pytest.raises(RtpDumpError):
        SegmentWriter(HEADER).add(b"\x00" * 70_000, HEADER.started)
