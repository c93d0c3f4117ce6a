"""What a load publisher sends: real VP8 and Opus, encoded once, looped.

:func:`clip` encodes a few seconds of a moving picture (VP8, libvpx, at the
chosen size and bitrate, a keyframe every :data:`KEYFRAME_EVERY` frames) and
of a sweeping tone (Opus, 20 ms frames) with PyAV, once per run. Every
publisher sends the same clip; what a subscriber's server sees is real
codec data, packetised as browsers do (VP8 per RFC 7741 with a 15-bit
picture id).

Each audio packet, and each video frame's last packet, carries a trailer the
tool reads back (:data:`STAMP`: a magic, the publisher's stamp index, its
send time on this machine's monotonic clock), legally ignored by decoders:
in Opus as the padding of a code-3 packet (RFC 6716 §3.2.5), in VP8 past the
frame's last partition. The index gives a subscriber exact loss over the
stamped packets; the time, the one-way latency, since the generator's
publishers and subscribers share one clock.
"""

from __future__ import annotations

import array
import contextlib
import fractions
import functools
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import av

__all__ = ["RESOLUTIONS", "STAMP", "Clip", "Stamp", "clip", "opus_stamped", "read_stamp"]

#: --video-resolution: (width, height, bits per second).
RESOLUTIONS = {
    "low": (320, 180, 150_000),
    "medium": (640, 360, 500_000),
    "high": (1280, 720, 1_500_000),
}
FPS = 30
KEYFRAME_EVERY = 60
CLIP_SECONDS = 4
#: magic, stamp index, send time (ns, time.monotonic_ns)
STAMP = struct.Struct(">4sIQ")
MAGIC = b"wdL1"


@dataclass(frozen=True)
class Stamp:
    index: int
    sent_ns: int


@dataclass(frozen=True)
class Clip:
    #: VP8 frames in order, each (data, keyframe).
    video: list[tuple[bytes, bool]]
    #: Opus packets of 20 ms.
    audio: list[bytes]
    width: int
    height: int

    def next_keyframe(self, after: int) -> int:
        """The index of the first keyframe at or after frame ``after`` (looping)."""
        n = len(self.video)
        for step in range(n):
            if self.video[(after + step) % n][1]:
                return (after + step) % n
        return after % n


def _picture(width: int, height: int, n: int) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    # A diagonal ramp that moves, and a bar: enough change per frame that
    # the encoder spends its bitrate as on a face that talks.
    row = bytes((x + 4 * n) & 0xFF for x in range(width))
    luma = bytearray()
    for y in range(height):
        shift = (y + 2 * n) % width
        line = bytearray(row[shift:] + row[:shift])
        if (y + n) % 64 < 8:
            line[:] = b"\xeb" * width
        luma += line
    frame.planes[0].update(bytes(luma))
    chroma = bytes([int(128 + 40 * math.sin(n / 15))]) * ((width // 2) * (height // 2))
    frame.planes[1].update(chroma)
    frame.planes[2].update(chroma[::-1])
    return frame


def _video(width: int, height: int, bitrate: int) -> list[tuple[bytes, bool]]:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, FPS)
    codec.framerate = fractions.Fraction(FPS, 1)
    codec.bit_rate = bitrate
    codec.gop_size = KEYFRAME_EVERY
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out: list[tuple[bytes, bool]] = []
    for n in range(FPS * CLIP_SECONDS):
        frame = _picture(width, height, n)
        frame.pts = n
        frame.time_base = codec.time_base
        for packet in codec.encode(frame):
            out.append((bytes(packet), bool(packet.is_keyframe)))
    for packet in codec.encode(None):
        out.append((bytes(packet), bool(packet.is_keyframe)))
    return out


def _audio() -> list[bytes]:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48_000
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = 32_000
    out: list[bytes] = []
    samples = 960
    phase = 0.0
    for n in range(50 * CLIP_SECONDS):
        frame = av.AudioFrame(format="s16", layout="stereo", samples=samples)
        pcm = array.array("h")
        hz = 300 + 200 * math.sin(n / 25)  # a sweep: no two packets alike
        for _ in range(samples):
            phase += 2 * math.pi * hz / 48_000
            v = int(8000 * math.sin(phase))
            pcm.extend((v, v))
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = 48_000
        frame.pts = n * samples
        frame.time_base = fractions.Fraction(1, 48_000)
        out.extend(bytes(p) for p in codec.encode(frame))
    out.extend(bytes(p) for p in codec.encode(None))
    return out


#: Bumped whenever what :func:`clip` encodes changes, so no old cache is read.
_CLIP_VERSION = 2
_ENTRY = struct.Struct(">BI")


def _cache_path(resolution: str) -> Path:
    """The cached clip's file, named by everything its encoding depends on:
    a clip of other settings (an older release's, 694 kbit/s for a 500
    kbit/s medium) is never read back as this one."""
    width, height, bitrate = RESOLUTIONS[resolution]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = (
        f"load-clip-v{_CLIP_VERSION}-{width}x{height}-{bitrate // 1000}k"
        f"-{FPS}fps-g{KEYFRAME_EVERY}-{CLIP_SECONDS}s.bin"
    )
    return base / "wadud" / name


def _pack(items: list[tuple[bytes, bool]]) -> bytes:
    return struct.pack(">I", len(items)) + b"".join(
        _ENTRY.pack(int(key), len(data)) + data for data, key in items
    )


def _unpack(data: bytes, at: int) -> tuple[list[tuple[bytes, bool]], int]:
    (count,) = struct.unpack_from(">I", data, at)
    at += 4
    items = []
    for _ in range(count):
        key, length = _ENTRY.unpack_from(data, at)
        at += _ENTRY.size
        items.append((data[at : at + length], bool(key)))
        at += length
    return items, at


@functools.lru_cache(maxsize=4)
def clip(resolution: str = "medium", *, video: bool = True) -> Clip:
    """The run's clip at ``resolution`` (a key of :data:`RESOLUTIONS`).
    Encoding takes seconds, so a clip is kept: in this process, and in the
    user's cache folder for the next run (a file that does not read back
    whole is encoded again)."""
    width, height, bitrate = RESOLUTIONS[resolution]
    path = _cache_path(resolution)
    with contextlib.suppress(OSError, struct.error, ValueError):
        data = path.read_bytes()
        frames, at = _unpack(data, 0)
        audio, end = _unpack(data, at)
        if end == len(data) and frames and audio:
            return Clip(frames if video else [], [a for a, _ in audio], width, height)
    frames = _video(width, height, bitrate)
    audio_packets = _audio()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(_pack(frames) + _pack([(a, False) for a in audio_packets]))
        partial.replace(path)
    return Clip(frames if video else [], audio_packets, width, height)


def opus_stamped(packet: bytes, stamp: bytes) -> bytes:
    """``packet`` (one Opus frame, code 0) as a code-3 packet of one frame
    whose padding is ``stamp``; other codes are sent as they are."""
    if not packet or packet[0] & 0x03 != 0 or len(stamp) > 254:
        return packet
    return bytes([packet[0] | 0x03, 0x41, len(stamp)]) + packet[1:] + stamp


def read_stamp(payload: bytes, audio: bool) -> Stamp | None:
    """The stamp a payload carries, if any."""
    if len(payload) < STAMP.size + 3:
        return None
    if audio and (payload[0] & 0x03 != 0x03 or payload[1] != 0x41):
        return None
    magic, index, sent = STAMP.unpack_from(payload, len(payload) - STAMP.size)
    if magic != MAGIC:
        return None
    return Stamp(index, sent)
