"""Real RTP for the recording tests: frames made with PyAV, encoded and
packetized by aiortc's own VP8 and Opus encoders (what a browser peer of
the test suite sends), stamped with arrival times as a worker would see
them, and written into sealed segments with :class:`rtc.rtpdump.SegmentWriter`."""

from __future__ import annotations

import array
import fractions
import math
import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from rtc.rtp.packet import RtpPacket
from rtc.rtpdump import SegmentHeader, SegmentWriter

VP8_PT = 96
OPUS_PT = 111


@dataclass
class Track:
    kind: str
    codec: str
    clock_rate: int
    payload_type: int
    #: (arrival, packet) in the order the worker received them.
    packets: list[tuple[float, bytes]]


def _fill(frame: av.VideoFrame, plane: int, data: bytes) -> None:
    """One plane from tightly packed rows (a plane's rows may be padded)."""
    p = frame.planes[plane]
    width = p.width
    if p.line_size == width:
        p.update(data)
        return
    padded = b"".join(
        data[r * width : (r + 1) * width] + bytes(p.line_size - width) for r in range(p.height)
    )
    p.update(padded)


def video(
    seconds: float,
    start: float,
    *,
    fps: int = 15,
    ssrc: int = 1111,
    seq0: int = 65_000,
    width: int = 160,
    height: int = 120,
    captured: Callable[[int], float] | None = None,
) -> Track:
    """VP8 at ``fps``; the first sequence number near the 16-bit wrap.
    ``captured(i)``: frame i's capture time in seconds from the first, which
    a browser puts in its RTP timestamp (default ``i / fps``)."""
    enc = get_encoder(
        RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000, payloadType=VP8_PT)
    )
    packets: list[tuple[float, bytes]] = []
    seq = seq0
    for i in range(round(seconds * fps)):
        frame = av.VideoFrame(width, height, "yuv420p")
        luma = bytearray([(i * 7) % 255]) * (width * height)
        for row in range(height // 2):  # a moving block, so frames differ
            at = row * width + (i * 4) % (width // 2)
            luma[at : at + width // 4] = b"\xf0" * (width // 4)
        _fill(frame, 0, bytes(luma))
        _fill(frame, 1, bytes([90]) * (width * height // 4))
        _fill(frame, 2, bytes([(i * 13) % 255]) * (width * height // 4))
        at = i / fps if captured is None else captured(i)
        frame.pts = round(at * 90_000)
        frame.time_base = fractions.Fraction(1, 90_000)
        payloads, ts = enc.encode(frame, force_keyframe=i % (fps * 2) == 0)
        for j, payload in enumerate(payloads):
            rtp = RtpPacket(
                payload_type=VP8_PT,
                sequence_number=seq & 0xFFFF,
                timestamp=ts,
                ssrc=ssrc,
                marker=j == len(payloads) - 1,
                payload=payload,
            )
            packets.append((start + at + 0.001 * j, bytes(rtp)))
            seq += 1
    return Track("video", "VP8", 90_000, VP8_PT, packets)


def audio(seconds: float, start: float, *, ssrc: int = 2222, seq0: int = 100) -> Track:
    """Opus, 20 ms a packet, a tone."""
    enc = get_encoder(
        RTCRtpCodecParameters(
            mimeType="audio/opus", clockRate=48_000, channels=2, payloadType=OPUS_PT
        )
    )
    packets: list[tuple[float, bytes]] = []
    seq = seq0
    samples = 960
    for i in range(round(seconds * 50)):
        pcm = array.array("h")
        for n in range(samples):
            v = int(math.sin(2 * math.pi * 440 * (n + i * samples) / 48_000) * 8000)
            pcm.extend((v, v))
        frame = av.AudioFrame(format="s16", layout="stereo", samples=samples)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = 48_000
        frame.pts = i * samples
        frame.time_base = fractions.Fraction(1, 48_000)
        payloads, ts = enc.encode(frame)
        for payload in payloads:
            rtp = RtpPacket(
                payload_type=OPUS_PT,
                sequence_number=seq & 0xFFFF,
                timestamp=ts,
                ssrc=ssrc,
                marker=False,
                payload=payload,
            )
            packets.append((start + i * 0.02, bytes(rtp)))
            seq += 1
    return Track("audio", "opus", 48_000, OPUS_PT, packets)


def damaged(track: Track, *, loss: float, reorder: float, seed: int = 7) -> Track:
    """The track as a lossy, reordering network delivers it: packets dropped
    with probability ``loss``, neighbours swapped with ``reorder``, one repeated."""
    rng = random.Random(seed)
    kept = [p for p in track.packets if rng.random() >= loss]
    for i in range(len(kept) - 1):
        if rng.random() < reorder:
            kept[i], kept[i + 1] = kept[i + 1], kept[i]
    kept.insert(len(kept) // 2, kept[len(kept) // 3])
    return Track(track.kind, track.codec, track.clock_rate, track.payload_type, kept)


def segments(
    track: Track, recording: str, track_id: str, key: bytes, *, per: float = 2.0
) -> list[tuple[SegmentHeader, int, bytes]]:
    """The track cut into sealed segments of ``per`` seconds: (header, packets, blob)."""
    out: list[tuple[SegmentHeader, int, bytes]] = []
    writer: SegmentWriter | None = None

    def seal() -> None:
        if writer is not None and writer.count:
            out.append((writer.header, writer.count, writer.seal(key)))

    for at, packet in track.packets:
        if writer is None or at - writer.header.started >= per:
            seal()
            writer = SegmentWriter(
                SegmentHeader(
                    recording=recording,
                    track=track_id,
                    kind=track.kind,  # type: ignore[arg-type]
                    codec=track.codec,
                    clock_rate=track.clock_rate,
                    payload_type=track.payload_type,
                    index=len(out),
                    started=at,
                )
            )
        writer.add(packet, at)
    seal()
    return out


def ffmpeg_errors(path: Path) -> str:
    """What ``ffmpeg -v error`` says decoding ``path`` in full: "" for a file
    that plays without complaint (ffmpeg's CLI, as a user checks a file)."""
    done = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.stderr + ("" if done.returncode == 0 else f"exit {done.returncode}")
