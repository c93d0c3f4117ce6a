"""The recording core (sfu/recording/core.py) on a negotiated room: no socket, no
loop, a made-up clock. Packets go into the room's queue as the worker's hot
path puts them; :meth:`RoomRecording.tick` turns them into segments."""

from __future__ import annotations

import os
import struct

from rtc.dtls import DtlsCertificate
from rtc.rtpdump import open_segment
from sfu.control.messages import RecordingOrder
from sfu.recording.core import KEYFRAME_AGAIN, LAYER_WAIT, RoomRecording
from sfu.rooms.inputs import EndTrack, PublishOffer
from sfu.rooms.records import MediaRoom, Track
from tests.sfu.layers import test_layers
from tests.sfu.negotiation.test_negotiation import NOW, negotiator, offer

KEY = os.urandom(32)
ORDER = RecordingOrder("rec-core", "unused here")
WALL = 1_700_000_000.0 - NOW  # loop time -> Unix time

# The test offer's audio, with Opus RED (RFC 2198) as Chromium offers it.
RED_LINES = ("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\n")
RED_MAP = ("a=rtpmap:111 opus/48000/2\r\n", "a=rtpmap:111 opus/48000/2\r\n"
           "a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n")  # fmt: skip


def rtp(pt: int, seq: int, payload: bytes, ssrc: int = 1234, padding: int = 0) -> bytes:
    b0 = 0x80 | (0x20 if padding else 0)
    pad = bytes(padding - 1) + bytes([padding]) if padding else b""
    return struct.pack("!BBHII", b0, pt, seq, seq * 960, ssrc) + payload + pad


# A camera with RTX (RFC 4588): VP8 on 96, its repairs on 97 with their own SSRC.
VIDEO_LINES = (
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n",
)
VIDEO_MAP = (
    "a=rtpmap:111 opus/48000/2\r\na=ssrc:1234 cname:a\r\n",
    "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n"
    "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"
    "a=ssrc-group:FID 5678 5679\r\na=ssrc:5678 cname:a\r\na=ssrc:5679 cname:a\r\n",
)


def red(primary: bytes, redundant: bytes) -> bytes:
    # One redundant block (F=1, PT 111, offset 960, its length), then the primary's header.
    header = struct.pack("!BHB", 0x80 | 111, (960 << 2) | (len(redundant) >> 8), len(redundant))
    return header + bytes([111]) + redundant + primary


def recorded_room(
    certificate: DtlsCertificate, *, with_red: bool = False, video: bool = False
) -> tuple[MediaRoom, str]:
    core = negotiator(certificate)
    sdp = offer(certificate)
    if with_red:
        sdp = sdp.replace(*RED_LINES).replace(*RED_MAP)
    if video:
        sdp = sdp.replace(*VIDEO_LINES).replace(*VIDEO_MAP).replace("audio-level", "toffset")
    (track,) = core.receive(PublishOffer("room", "alice", sdp, {}), NOW).added
    return core.tables.rooms["room"], track.track_id


def test_packets_become_segments_cut_by_age_and_sealed(certificate: DtlsCertificate) -> None:
    room, track_id = recorded_room(certificate)
    rec = RoomRecording(room, ORDER, wall_offset=WALL, segment_seconds=1.0, now=NOW)
    (peer,) = [p.publish for p in room.participants.values() if p.publish is not None]
    assert peer.recording is rec.queue and room.recording is rec.queue
    queue = rec.queue
    sent = [
        (1234, rtp(111, 1, b"a" * 40), NOW + 0.02),
        (1234, rtp(111, 2, b"", padding=40), NOW + 0.03),  # padding only: left out
        (9999, rtp(111, 3, b"x" * 40, ssrc=9999), NOW + 0.04),  # an unknown SSRC: left out
        (1234, rtp(111, 4, b"b" * 40), NOW + 0.5),
    ]
    queue.extend(sent)
    assert rec.tick(NOW + 0.6) == []
    # What the tick drained counts as waiting until its segment is stored.
    assert rec.backlog() == sum(len(p) for _, p, _ in sent)
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
    (track,) = core.receive(PublishOffer("room", "alice", offer(certificate), {}), NOW).added
    room = core.tables.rooms["room"]
    rec = RoomRecording(room, ORDER, wall_offset=WALL, segment_seconds=4.0, now=NOW)
    rec.queue.append((1234, rtp(111, 1, b"a" * 40), NOW + 0.1))
    assert rec.tick(NOW + 0.2) == []
    core.receive(EndTrack("room", "alice", track.track_id), NOW + 0.3)
    (cut,) = rec.tick(NOW + 0.4)
    assert cut.track_id == track.track_id and cut.writer.count == 1
    assert rec.tracks == {}


def test_a_repair_on_the_rtx_ssrc_is_recorded_as_the_packet_it_repairs(
    certificate: DtlsCertificate,
) -> None:
    # Packet 3 was lost on the way in; the worker's NACK brought it back on
    # the RTX SSRC (RFC 4588: the original sequence number first in the
    # payload). Without it the picture would break until the next keyframe.
    room, _track_id = recorded_room(certificate, video=True)
    rec = RoomRecording(room, ORDER, wall_offset=WALL, segment_seconds=10.0, now=NOW)
    for seq in (1, 2, 4):
        rec.queue.append((5678, rtp(96, seq, b"v%d" % seq * 20, ssrc=5678), NOW + seq * 0.01))
    repair = rtp(97, 900, struct.pack("!H", 3) + b"v3" * 20, ssrc=5679)
    rec.queue.append((5679, repair, NOW + 0.05))
    rec.queue.append((5679, rtp(97, 901, b"", ssrc=5679, padding=200), NOW + 0.06))  # a probe
    rec.tick(NOW + 0.1)
    (cut,) = rec.close(NOW + 0.2)
    packets = open_segment(cut.writer.seal(KEY), KEY).packets
    fields = [struct.unpack_from("!BBHII", p) for _, p in packets]
    assert [(pt & 0x7F, seq, ssrc) for _, pt, seq, _, ssrc in fields] == [
        (96, 1, 5678),
        (96, 2, 5678),
        (96, 4, 5678),
        (96, 3, 5678),
    ]
    assert packets[3][1].endswith(b"v3" * 20) and packets[3][1][12:14] != struct.pack("!H", 3)


def test_a_recorded_camera_asks_again_for_a_keyframe_until_one_is_recorded(
    certificate: DtlsCertificate,
) -> None:
    # ci85: the one request at the start brought no keyframe for 5.27 s, so
    # the file's picture began then. No subscriber waited, so nothing asked
    # again; the recording now does, every KEYFRAME_AGAIN, until one comes.
    room, _track_id = recorded_room(certificate, video=True)
    rec = RoomRecording(room, ORDER, wall_offset=WALL, segment_seconds=10.0, now=NOW)
    assert rec.keyframes == [5678]
    rec.keyframes.clear()  # the adapter asked
    delta = b"\x10" + b"\x01" + b"d" * 20  # S bit, PID 0; the VP8 header's P bit set
    rec.queue.append((5678, rtp(96, 1, delta, ssrc=5678), NOW + 0.1))
    rec.tick(NOW + 0.2)
    rec.tick(NOW + 0.2 + KEYFRAME_AGAIN / 2)
    assert rec.keyframes == []
    rec.tick(NOW + 0.2 + KEYFRAME_AGAIN)
    assert rec.keyframes == [5678]
    rec.keyframes.clear()
    key = b"\x10" + b"\x00" + b"k" * 20  # the P bit clear: a keyframe (RFC 6386 9.1)
    rec.queue.append((5678, rtp(96, 2, key, ssrc=5678), NOW + 1.3))
    for t in (1.4, 2.5, 3.6, 4.7):
        rec.tick(NOW + 0.2 + t)
    assert rec.keyframes == []


def simulcast_room(certificate: DtlsCertificate, published: float) -> tuple[MediaRoom, Track]:
    """Alice's three-layer camera published at ``published``; her browser
    sends only the two lower layers (the top one never learnt)."""
    sdp = test_layers.CHROME_RID_OFFER.format(fp=certificate.fingerprint("sha-256"))
    core = negotiator(certificate)
    (info,) = core.receive(
        PublishOffer("room", "alice", sdp.replace("\n", "\r\n"), {}), published
    ).added
    room = core.tables.rooms["room"]
    track = room.tracks[info.track_id]
    for layer, ssrc in zip(track.layers[:2], test_layers.LAYERS, strict=False):
        layer.ssrc = ssrc
    return room, track


def flowing(track: Track, now: float) -> None:
    for layer in track.layers[:2]:
        layer.seen = now


def test_a_recording_started_mid_visit_takes_the_top_layer_sent_at_once(
    certificate: DtlsCertificate,
) -> None:
    # The track was published long before: a layer the browser has not
    # sent since will not come, and waiting for it would lose video.
    room, track = simulcast_room(certificate, NOW)
    start = NOW + 30.0
    flowing(track, start)
    rec = RoomRecording(room, ORDER, wall_offset=WALL, segment_seconds=10.0, now=start)
    assert rec.keyframes == [test_layers.LAYERS[1]]
    rec.queue.append(
        (test_layers.LAYERS[1], rtp(96, 7, b"v" * 20, ssrc=test_layers.LAYERS[1]), start)
    )
    rec.tick(start + 0.25)
    (cut,) = rec.close(start + 0.3)
    assert cut.writer.count == 1 and cut.writer.header.started == start + WALL


def test_a_track_just_published_waits_a_moment_for_its_top_layer(
    certificate: DtlsCertificate,
) -> None:
    # Layers of a new track come up one after the other.
    room, track = simulcast_room(certificate, NOW)
    flowing(track, NOW + 0.2)
    rec = RoomRecording(room, ORDER, wall_offset=WALL, segment_seconds=10.0, now=NOW + 0.2)
    assert rec.keyframes == []
    flowing(track, NOW + LAYER_WAIT - 0.1)
    rec.tick(NOW + LAYER_WAIT - 0.1)
    assert rec.keyframes == []
    flowing(track, NOW + LAYER_WAIT)
    rec.tick(NOW + LAYER_WAIT)
    assert rec.keyframes == [test_layers.LAYERS[1]]
