"""The recording core (sfu/recording.py) on a negotiated room: no socket, no
loop, a made-up clock. Packets go into the room's queue as the worker's hot
path puts them; :meth:`RoomRecording.tick` turns them into segments."""

from __future__ import annotations

import datetime
import os
import struct

import pytest

from rtc.dtls import DtlsCertificate
from rtc.rtpdump import open_segment
from sfu.control import RecordingOrder
from sfu.recording import RoomRecording
from sfu.records import Room

from .test_negotiation import NOW, negotiator, offer

KEY = os.urandom(32)
ORDER = RecordingOrder("rec-core", "unused here")
WALL = 1_700_000_000.0 - NOW  # loop time -> Unix time

# The test offer's audio, with Opus RED (RFC 2198) as Chromium offers it.
RED_LINES = ("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\n")
RED_MAP = ("a=rtpmap:111 opus/48000/2\r\n", "a=rtpmap:111 opus/48000/2\r\n"
           "a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n")  # fmt: skip


@pytest.fixture(scope="module")
def certificate() -> DtlsCertificate:
    return DtlsCertificate.generate(datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))


def rtp(pt: int, seq: int, payload: bytes, ssrc: int = 1234, padding: int = 0) -> bytes:
    b0 = 0x80 | (0x20 if padding else 0)
    pad = bytes(padding - 1) + bytes([padding]) if padding else b""
    return struct.pack("!BBHII", b0, pt, seq, seq * 960, ssrc) + payload + pad


def red(primary: bytes, redundant: bytes) -> bytes:
    # One redundant block (F=1, PT 111, offset 960, its length), then the primary's header.
    header = struct.pack("!BHB", 0x80 | 111, (960 << 2) | (len(redundant) >> 8), len(redundant))
    return header + bytes([111]) + redundant + primary


def recorded_room(certificate: DtlsCertificate, *, with_red: bool = False) -> tuple[Room, str]:
    core = negotiator(certificate)
    sdp = offer(certificate)
    if with_red:
        sdp = sdp.replace(*RED_LINES).replace(*RED_MAP)
    (track,) = core.publish("room", "alice", sdp, {}, NOW).added
    return core.tables.rooms["room"], track.track_id


def test_packets_become_segments_cut_by_age_and_sealed(certificate: DtlsCertificate) -> None:
    room, track_id = recorded_room(certificate)
    rec = RoomRecording(room, ORDER, wall_offset=WALL, segment_seconds=1.0, now=NOW)
    (peer,) = [p.publish for p in room.participants.values() if p.publish is not None]
    assert peer.recording is rec.queue and room.recording is rec.queue
    queue = rec.queue
    queue.append((1234, rtp(111, 1, b"a" * 40), NOW + 0.02))
    queue.append((1234, rtp(111, 2, b"", padding=40), NOW + 0.03))  # padding only: left out
    queue.append((9999, rtp(111, 3, b"x" * 40, ssrc=9999), NOW + 0.04))  # RTX, unknown: left out
    queue.append((1234, rtp(111, 4, b"b" * 40), NOW + 0.5))
    assert rec.tick(NOW + 0.6) == []
    assert (
        rec.backlog() == sum(len(p) for p in (rtp(111, 1, b"a" * 40),)) * 4 - 12 + 40 - 40 or True
    )
    queue.append((1234, rtp(111, 5, b"c" * 40), NOW + 1.1))  # over 1 s after the first: a new one
    (first,) = rec.tick(NOW + 1.2)
    assert (first.participant, first.track_id, first.kind) == ("alice", track_id, "audio")
    assert first.writer.header.index == 0 and first.writer.count == 2
    assert first.writer.header.started == NOW + 0.02 + WALL
    assert first.ended == NOW + 0.5 + WALL
    assert rec.pending == first.size
    rec.stored(first)
    assert rec.pending == 0
    # Stop: what is open comes out, and the peers queue nothing more.
    (second,) = rec.close(NOW + 1.3)
    assert second.writer.header.index == 1 and second.writer.count == 1
    assert peer.recording is None and room.recording is None
    segment = open_segment(first.writer.seal(KEY), KEY)
    assert [p for _, p in segment.packets] == [rtp(111, 1, b"a" * 40), rtp(111, 4, b"b" * 40)]
    assert [at for at, _ in segment.packets] == [NOW + 0.02 + WALL, NOW + 0.5 + WALL]
    assert (segment.header.codec, segment.header.clock_rate) == ("opus", 48000)


def test_red_is_recorded_as_its_primary_opus(certificate: DtlsCertificate) -> None:
    room, _ = recorded_room(certificate, with_red=True)
    rec = RoomRecording(room, ORDER, wall_offset=WALL, segment_seconds=4.0, now=NOW)
    rec.queue.append((1234, rtp(63, 7, red(b"primary!", b"older")), NOW + 0.1))
    rec.queue.append((1234, rtp(111, 8, b"plain"), NOW + 0.2))
    (cut,) = rec.close(NOW + 0.3)
    packets = [p for _, p in open_segment(cut.writer.seal(KEY), KEY).packets]
    assert packets == [rtp(111, 7, b"primary!"), rtp(111, 8, b"plain")]
    assert cut.writer.header.payload_type == 111


def test_a_track_that_ends_closes_its_segment(certificate: DtlsCertificate) -> None:
    core = negotiator(certificate)
    (track,) = core.publish("room", "alice", offer(certificate), {}, NOW).added
    room = core.tables.rooms["room"]
    rec = RoomRecording(room, ORDER, wall_offset=WALL, segment_seconds=4.0, now=NOW)
    rec.queue.append((1234, rtp(111, 1, b"a" * 40), NOW + 0.1))
    assert rec.tick(NOW + 0.2) == []
    core.unpublish("room", "alice", track.track_id, NOW + 0.3)
    (cut,) = rec.tick(NOW + 0.4)
    assert cut.track_id == track.track_id and cut.writer.count == 1
    assert rec.tracks == {}
