"""Recorded RTP into one WebM per participant (recording/remux.py), on real
VP8 and Opus from aiortc's encoders, read back and decoded with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from recording import remux
from recording.errors import RemuxError
from rtc.rtp.packet import RtpPacket
from tests.recording import media


def tracks(*ts: media.Track) -> list[remux.TrackMedia]:
    return [remux.TrackMedia(t.kind, t.codec, t.clock_rate, t.payload_type, t.packets) for t in ts]


def decoded(path: Path) -> tuple[int, int]:
    """(video frames, audio frames) a decoder gets out of the file."""
    with av.open(str(path)) as f:
        v = sum(1 for _ in f.decode(video=0))
    with av.open(str(path)) as f:
        a = sum(1 for _ in f.decode(audio=0))
    return v, a


def test_a_participant_s_rtp_becomes_one_playable_webm(tmp_path: Path) -> None:
    # Sequence numbers start near 65535: the video's wrap past 0 mid-track.
    v = media.video(6, 1000.0, width=320, height=240, seq0=65_500)
    a = media.audio(6, 1000.0, seq0=65_400)
    out = tmp_path / "p.webm"
    made = remux.remux(tracks(v, a), out)
    assert (made.audio, made.video, made.width, made.height) == (True, True, 320, 240)
    got = remux.probe(out)
    span = max(at for at, _ in v.packets + a.packets) - 1000.0
    assert (got.audio, got.video, got.width, got.height) == (1, 1, 320, 240)
    assert abs(got.duration - span) < 1.0, (got.duration, span)
    assert decoded(out) == (90, 300)
    assert media.ffmpeg_errors(out) == ""


def test_lost_reordered_and_repeated_packets_still_play(tmp_path: Path) -> None:
    v = media.video(6, 1000.0, width=640, height=480)
    a = media.audio(6, 1000.0)
    whole = remux.vp8_frames(tracks(v)[0])
    lossy = media.damaged(v, loss=0.04, reorder=0.1)
    frames = remux.vp8_frames(tracks(lossy)[0])
    # Every frame kept is one the encoder made, whole; the lost ones are gone.
    assert 0 < len(frames) < len(whole)
    by_ts = {f.timestamp: f.data for f in whole}
    assert all(by_ts[f.timestamp] == f.data for f in frames)
    out = tmp_path / "lossy.webm"
    remux.remux(tracks(lossy, media.damaged(a, loss=0.04, reorder=0.1, seed=3)), out)
    got = remux.probe(out)
    assert (got.audio, got.video) == (1, 1)
    assert abs(got.duration - 6.0) < 1.0
    video_frames, audio_frames = decoded(out)
    assert video_frames >= len(frames) - 1 and audio_frames > 250


def test_frames_closer_than_the_declared_rate_each_decode_at_their_own_time(
    tmp_path: Path,
) -> None:
    # A browser stamps each frame with its capture time. A camera that hands
    # over a frame 25 ms late and the next on time puts two frames 8 ms
    # apart, well within one tick of 30 frames a second, as does a keyframe
    # a PLI asked for sent right after a frame; ffmpeg decodes into the
    # file's declared rate and gave both the same dts ("non monotonically
    # increasing dts to muxer in stream 0: 4 >= 4"). The path repeats and
    # reorders packets too, as a retransmission after a NACK does.
    def captured(i: int) -> float:
        return i / 30 + (0.025 if i % 7 == 3 else 0.0)

    v = media.video(12, 1000.0, fps=30, captured=captured)
    a = media.audio(12, 1000.0)
    whole = remux.vp8_frames(tracks(v)[0])
    assert len(whole) == 360
    out = tmp_path / "jitter.webm"
    remux.remux(tracks(media.damaged(v, loss=0.0, reorder=0.1), a), out)
    assert media.ffmpeg_errors(out) == ""
    # Every frame is in the file, in order, each within a tick or two of its capture.
    with av.open(str(out)) as f:
        times = [
            float(p.pts * p.time_base)
            for p in f.demux(video=0)
            if p.pts is not None and p.time_base is not None
        ]
    assert len(times) == 360 and times == sorted(set(times))
    for i, t in enumerate(times):
        assert abs(t - captured(i)) <= 2 / remux.video_rate(whole, 90_000), (i, t)
    assert decoded(out) == (360, 600)


def test_the_video_starts_at_a_keyframe_and_lines_up_with_the_audio(tmp_path: Path) -> None:
    # The camera starts 1.5 s after the microphone; its first keyframe's
    # first packet is lost, so the picture starts at the next keyframe (2 s on).
    v = media.video(5, 1001.5, width=320, height=240)
    first = RtpPacket.parse(v.packets[0][1])
    v.packets[:] = [
        p for p in v.packets if RtpPacket.parse(p[1]).sequence_number != first.sequence_number
    ]
    a = media.audio(6.5, 1000.0)
    out = tmp_path / "late.webm"
    remux.remux(tracks(v, a), out)
    with av.open(str(out)) as f:
        starts = {}
        for packet in f.demux():
            if packet.pts is not None and packet.stream.type not in starts:
                assert packet.time_base is not None
                starts[packet.stream.type] = float(packet.pts * packet.time_base)
                if packet.stream.type == "video":
                    assert packet.is_keyframe
    assert starts["audio"] == pytest.approx(0.0, abs=0.05)
    assert starts["video"] == pytest.approx(1.5 + 2.0, abs=0.05)


def test_a_codec_webm_cannot_carry_is_left_out_and_nothing_playable_is_an_error(
    tmp_path: Path,
) -> None:
    a = media.audio(2, 1000.0)
    h264 = remux.TrackMedia(
        "video",
        "H264",
        90_000,
        102,
        [(1000.0, bytes(RtpPacket(payload_type=102, payload=b"\x65\x88")))],
    )
    made = remux.remux([*tracks(a), h264], tmp_path / "a.webm")
    assert (made.audio, made.video) == (True, False)
    assert made.skipped == ["video codec H264 is not remuxed into WebM"]
    with pytest.raises(RemuxError, match="no whole frame"):
        remux.remux([h264], tmp_path / "none.webm")
    # Garbage and other payload types (RTX, padding probes) are not frames.
    junk = remux.TrackMedia(
        "audio",
        "opus",
        48_000,
        111,
        [(1000.0, b"\x00" * 30), (1000.1, bytes(RtpPacket(payload_type=97, payload=b"x")))],
    )
    with pytest.raises(RemuxError):
        remux.remux([junk], tmp_path / "junk.webm")


def test_a_layer_switch_continues_the_picture_on_the_arrival_clock(tmp_path: Path) -> None:
    # The worker recorded the top layer for 4 s, then it went quiet and the
    # worker moved to the middle one: another SSRC, another random
    # timestamp base, and a picture size of its own. Its first keyframe was
    # lost, so its part starts at its next keyframe, 2 s in.
    top = media.video(4, 1000.0, width=640, height=480, ssrc=1111, seq0=100)
    middle = media.video(4, 1004.0, width=320, height=240, ssrc=3333, seq0=40_000)
    shifted: list[tuple[float, bytes]] = []
    for at, data in middle.packets:
        packet = RtpPacket.parse(data)
        if packet.timestamp == 0:
            continue  # the lost keyframe
        packet.timestamp = (packet.timestamp + 3_000_000_000) & 0xFFFFFFFF
        shifted.append((at, bytes(packet)))
    packets = top.packets + shifted
    both = remux.TrackMedia("video", "VP8", 90_000, media.VP8_PT, packets)
    frames = remux.vp8_frames(both)
    runs = [f.run for f in frames]
    assert runs == sorted(runs) and set(runs) == {0, 1}
    second = next(f for f in frames if f.run == 1)
    assert second.keyframe
    # On the first run's clock: about 6 s after the first frame.
    assert abs((second.timestamp - frames[0].timestamp) / 90_000 - 6.0) < 0.1
    out = tmp_path / "switch.webm"
    remux.remux([both, *tracks(media.audio(8, 1000.0))], out)
    got = remux.probe(out)
    assert (got.audio, got.video) == (1, 1) and abs(got.duration - 8.0) < 1.0
    video_frames, _ = decoded(out)
    assert video_frames == len(frames)


def starts_and_ends(path: Path) -> dict[str, tuple[float, float]]:
    """Each stream's first and last packet time in the file (seconds)."""
    times: dict[str, list[float]] = {}
    with av.open(str(path)) as f:
        for packet in f.demux():
            if packet.pts is not None and packet.time_base is not None:
                times.setdefault(packet.stream.type, []).append(
                    float(packet.pts * packet.time_base)
                )
    return {kind: (min(t), max(t)) for kind, t in times.items()}


def test_a_first_keyframe_sent_late_does_not_put_the_picture_behind_the_sound(
    tmp_path: Path,
) -> None:
    # A browser busy starting its call sends the keyframe it captured first
    # 1.85 s late, and nothing it captured meanwhile; from then on every
    # frame comes as it is captured.
    v = media.video(6, 1000.0)
    first = RtpPacket.parse(v.packets[0][1]).timestamp
    sent: list[tuple[float, bytes]] = []
    for at, data in v.packets:
        captured = (RtpPacket.parse(data).timestamp - first) / 90_000
        if captured == 0:
            sent.append((at + 1.85, data))
        elif captured >= 1.85:
            sent.append((at, data))
    late = media.Track("video", "VP8", 90_000, media.VP8_PT, sorted(sent, key=lambda p: p[0]))
    out = tmp_path / "late.webm"
    remux.remux(tracks(late, media.audio(6, 1000.0)), out)
    times = starts_and_ends(out)
    # The picture is where it was captured, beside its sound; the file no longer.
    assert times["video"][0] == pytest.approx(0.0, abs=0.01)
    assert times["video"][1] == pytest.approx(6.0 - 1 / 15, abs=0.01)
    assert remux.probe(out).duration == pytest.approx(6.0, abs=0.05)


def test_a_layer_whose_first_packets_were_read_late_is_placed_when_captured(
    tmp_path: Path,
) -> None:
    # The worker moved to the middle layer while its server was behind: the
    # packets captured in the layer's first second were read at once at 1005.
    top = media.video(4, 1000.0, width=640, height=480, ssrc=1111, seq0=100)
    middle = media.video(4, 1004.0, width=320, height=240, ssrc=3333, seq0=40_000)
    late = [(max(at, 1005.0), data) for at, data in middle.packets]
    both = remux.TrackMedia("video", "VP8", 90_000, media.VP8_PT, top.packets + late)
    frames = remux.vp8_frames(both)
    second = next(f for f in frames if f.run == 1)
    # Its first keyframe, captured 4 s after the first frame, is placed there.
    assert second.keyframe
    assert (second.timestamp - frames[0].timestamp) / 90_000 == pytest.approx(4.0, abs=0.01)
    out = tmp_path / "switch.webm"
    remux.remux([both], out)
    assert starts_and_ends(out)["video"] == pytest.approx((0.0, 8.0 - 1 / 15), abs=0.01)
