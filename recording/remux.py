"""A participant's recorded RTP made into one playable WebM, without transcoding.

The media worker keeps each track's packets as they arrived (after SRTP,
never decoded; :mod:`rtc.rtpdump`). Here, per track:

1. Order: packets of the track's payload type, in runs of one SSRC (the
   worker records one simulcast layer at a time and moves down when that
   one goes quiet), each run's sequence numbers extended past their 16-bit
   wrap (:class:`rtc.rtp.sequence.SequenceUnwrapper`, RFC 3550 A.1), duplicates
   dropped, sorted by extended sequence number; timestamps extended past
   their 32-bit wrap the same way, and each later run's placed on the
   first's clock so that the packets of each that came quickest (see 3)
   took as long. Each run starts at its first keyframe.
2. Frames: Opus, one packet is one frame (RFC 7587 section 4.2). VP8, a
   frame is the run of packets with one RTP timestamp, whole only when its
   first packet starts partition 0 (RFC 7741 section 4.2: S bit, PID 0),
   its last has the marker bit (section 4.1) and no sequence number between
   them is missing; its payload is the concatenation of the packets'
   payloads without their VP8 payload descriptors. A frame missing any
   packet is dropped; the picture resumes with the next whole frame (a
   decoder conceals what the lost one referenced until the next keyframe).
   The video starts at its first keyframe (RFC 6386 section 9.1), which
   also gives the picture's size.
3. Time: each track's RTP clock is tied to the wall clock by the frame that
   took least time to come (its arrival less its RTP time), so one
   participant's audio and video line up as they arrived. Not by the first
   to arrive: a frame held up (the first keyframe a busy browser took seconds
   to encode, a server reading its socket late) would put every later frame
   after it arrived, the picture seconds behind the sound. The file's zero
   is the earliest first frame of either.
4. Mux with PyAV into WebM (Matroska's ``V_VP8`` and ``A_OPUS``), each
   frame one packet, time base 1 ms.

Other codecs (H.264: WebM does not carry it) raise :class:`RemuxError`
for that track; :func:`remux` leaves such a track out and says so in its
result.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from recording.errors import RemuxError
from rtc.errors import RtpParseError
from rtc.rtp.header import header_fields, payload_range
from rtc.rtp.sequence import SequenceUnwrapper, ts_diff

__all__ = [
    "CodedFrame",
    "FileProbe",
    "Remuxed",
    "TrackMedia",
    "frames_of",
    "opus_frames",
    "probe",
    "remux",
    "vp8_frames",
]

_MS = Fraction(1, 1000)
_VP8_START_CODE = b"\x9d\x01\x2a"
_DIMENSION = struct.Struct("<HH")


@dataclass(frozen=True, slots=True)
class TrackMedia:
    """One recorded track: its codec (as in its segments' headers) and its
    packets ``(arrival in Unix seconds, RTP packet)`` of every segment, in
    segment order."""

    kind: str
    codec: str
    clock_rate: int
    payload_type: int
    packets: Sequence[tuple[float, bytes]]


@dataclass(frozen=True, slots=True)
class CodedFrame:
    """One coded frame: extended RTP timestamp, wall-clock time its first
    packet arrived, the codec's bytes, and whether a decoder can start at it."""

    timestamp: int
    arrival: float
    data: bytes
    keyframe: bool = True
    #: The run of one SSRC it came from (a simulcast layer; see _ordered).
    run: int = 0


@dataclass(frozen=True, slots=True)
class _Rtp:
    seq: int  # extended
    ts: int  # extended
    marker: bool
    arrival: float
    payload: bytes
    run: int = 0  # which run of one SSRC (see _ordered)


def _ordered(media: TrackMedia) -> list[_Rtp]:
    """The track's packets in one timeline, once each.

    The worker records one SSRC at a time, but moves to another simulcast
    layer when the one it records goes quiet. Each run of one SSRC (in
    arrival order) is put in extended sequence order on its own; its RTP
    timestamps are placed on the first run's clock by their quickest
    packets (layers start from unrelated random timestamps). The
    runs follow one another; :func:`vp8_frames` starts each at a keyframe."""
    runs: list[tuple[int, list[tuple[float, int, int, int, bytes]]]] = []
    for arrival, data in media.packets:
        try:
            marker, pt, seq, ts, ssrc = header_fields(data)
            start, end = payload_range(data)
        except RtpParseError:
            continue
        if pt != media.payload_type or start >= end:
            continue  # RTX, FEC, padding-only probes
        if not runs or runs[-1][0] != ssrc:
            runs.append((ssrc, []))
        runs[-1][1].append((arrival, marker, seq, ts, bytes(data[start:end])))
    out: list[_Rtp] = []
    clock = media.clock_rate
    origin: float | None = None  # the first run's least arrival less RTP time (seconds)
    for number, (_ssrc, packets) in enumerate(runs):
        seqs = SequenceUnwrapper()
        seen: dict[int, tuple[float, int, int, bytes]] = {}
        for arrival, marker, seq, ts, payload in packets:
            ext = seqs.unwrap(seq)
            if ext not in seen:
                seen[ext] = (arrival, ts, marker, payload)
        ordered = sorted(seen.items())
        # Timestamps extended in sequence order, each placed nearest the previous.
        last: int | None = None
        extended: list[tuple[int, float, int, int, bytes]] = []
        for ext, (arrival, ts, marker, payload) in ordered:
            ts = ts if last is None else last + ts_diff(ts, last)
            last = ts
            extended.append((ext, arrival, ts, marker, payload))
        transit = min(arrival - ts / clock for _, arrival, ts, _, _ in extended)
        if origin is None:
            origin = transit
        shift = round((transit - origin) * clock)
        # Runs never share sequence numbers: a frame never spans two of them.
        base = number << 40
        out += [
            _Rtp(base + ext, ts + shift, bool(marker), arrival, payload, number)
            for ext, arrival, ts, marker, payload in extended
        ]
    return out


def opus_frames(media: TrackMedia) -> list[CodedFrame]:
    """RFC 7587 section 4.2: each RTP payload is one Opus packet."""
    return [CodedFrame(p.ts, p.arrival, p.payload) for p in _ordered(media)]


def _vp8_descriptor(payload: bytes) -> tuple[bool, int]:
    """(starts partition 0, length of the payload descriptor), RFC 7741 section 4.2."""
    b = payload[0]
    pos = 1
    if b & 0x80:  # X
        if pos >= len(payload):
            raise RemuxError("truncated VP8 payload descriptor")
        x = payload[pos]
        pos += 1
        if x & 0x80:  # I: PictureID, 7 or 15 bits (M)
            if pos >= len(payload):
                raise RemuxError("truncated VP8 payload descriptor")
            pos += 2 if payload[pos] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            pos += 1
        if x & 0x30:  # T or K: TID/Y/KEYIDX
            pos += 1
    if pos > len(payload):
        raise RemuxError("truncated VP8 payload descriptor")
    return b & 0x17 == 0x10, pos


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) of a VP8 keyframe (RFC 6386 section 9.1), else None."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != _VP8_START_CODE:
        return None
    w, h = _DIMENSION.unpack_from(frame, 6)
    return w & 0x3FFF, h & 0x3FFF


def vp8_frames(media: TrackMedia) -> list[CodedFrame]:
    """Whole VP8 frames (RFC 7741 sections 4.1-4.3); incomplete ones dropped."""
    frames: list[CodedFrame] = []
    run: list[_Rtp] = []

    def close(run: list[_Rtp]) -> None:
        if not run or not run[-1].marker:
            return
        if any(b.seq != a.seq + 1 for a, b in itertools.pairwise(run)):
            return
        parts: list[bytes] = []
        for i, p in enumerate(run):
            try:
                first, skip = _vp8_descriptor(p.payload)
            except RemuxError:
                return
            if i == 0 and not first:
                return
            parts.append(p.payload[skip:])
        data = b"".join(parts)
        if data:
            frames.append(
                CodedFrame(run[0].ts, run[0].arrival, data, not data[0] & 0x01, run[0].run)
            )

    for p in _ordered(media):
        if run and (p.ts != run[0].ts or p.run != run[0].run):
            close(run)
            run = []
        run.append(p)
    close(run)
    return _from_keyframes(frames)


def _from_keyframes(frames: list[CodedFrame]) -> list[CodedFrame]:
    """Each run of one SSRC (another simulcast layer) from its first keyframe:
    a frame predicted from the other layer's pictures would decode as garbage."""
    out: list[CodedFrame] = []
    started: set[int] = set()
    for f in frames:
        if f.run not in started:
            if not f.keyframe:
                continue
            started.add(f.run)
        out.append(f)
    return out


def frames_of(media: TrackMedia) -> list[CodedFrame]:
    """The track's whole frames; :class:`RemuxError` for a codec this does not remux."""
    codec = media.codec.lower()
    if media.kind == "audio" and codec == "opus":
        return opus_frames(media)
    if media.kind == "video" and codec == "vp8":
        return vp8_frames(media)
    raise RemuxError(f"{media.kind} codec {media.codec} is not remuxed into WebM")


@dataclass
class Remuxed:
    """What :func:`remux` wrote: the file's span (seconds), its streams, the
    tracks it left out with why, and the wall-clock time (Unix seconds) its
    zero stands for."""

    duration: float
    audio: bool
    video: bool
    width: int = 0
    height: int = 0
    skipped: list[str] = field(default_factory=list)
    start: float = 0.0


@dataclass(frozen=True)
class _Timed:
    clock_rate: int
    frames: list[CodedFrame]
    # RTP timestamp and arrival of the frame that took least time to come.
    anchor_ts: int
    anchor_at: float

    def wall(self, ts: int) -> float:
        return self.anchor_at + (ts - self.anchor_ts) / self.clock_rate


def _timed(media: TrackMedia, frames: list[CodedFrame]) -> _Timed:
    clock = media.clock_rate
    quickest = min(frames, key=lambda f: f.arrival - f.timestamp / clock)
    return _Timed(clock, frames, quickest.timestamp, quickest.arrival)


def _packets(track: _Timed, zero: float, last_duration_ms: int) -> Iterable[tuple[int, int, bytes]]:
    """(pts ms, duration ms, data) for each frame, pts strictly increasing."""
    times = [round((track.wall(f.timestamp) - zero) * 1000) for f in track.frames]
    previous = -1
    for i, f in enumerate(track.frames):
        pts = times[i]
        if pts <= previous:
            continue
        nxt = times[i + 1] if i + 1 < len(times) else pts + last_duration_ms
        previous = pts
        yield pts, max(1, nxt - pts), f.data


#: The frame rates a video stream may declare: the lowest of them at least
#: VIDEO_HEADROOM times the track's mean rate, so its frames, each on a tick
#: of its own (see _video_packets), fall behind their capture time by at most
#: a tick or two around a burst and never drift.
VIDEO_RATES = (30, 60, 120, 240)
VIDEO_HEADROOM = 1.5


def video_rate(frames: Sequence[CodedFrame], clock_rate: int) -> int:
    """The frame rate the file declares for a track of ``frames``."""
    span = (frames[-1].timestamp - frames[0].timestamp) / clock_rate if frames else 0.0
    mean = (len(frames) - 1) / span if span > 0 else 0.0
    return next((r for r in VIDEO_RATES if r >= VIDEO_HEADROOM * mean), VIDEO_RATES[-1])


def _video_packets(track: _Timed, zero: float, rate: int) -> Iterable[tuple[int, int, bytes]]:
    """(pts ms, duration ms, data) for each frame, each on its own tick of ``1/rate`` s.

    A WebM stream declares a frame rate (Matroska DefaultDuration) and a
    reader takes it as the stream's: ffmpeg decodes into a time base of
    ``1/rate`` and rounds each frame's time to it. Two frames closer than a
    tick (a camera's jitter, a frame sent at once after a late one, a
    keyframe a PLI asked for right after the last frame) would land on one
    tick, a repeated dts (``non monotonically increasing dts to muxer``).
    So each frame is written at the middle of its own tick, its capture
    time's or, when the one before took that, the next; every frame is kept,
    as a VP8 decoder needs each one a later frame refers to."""
    ticks: list[int] = []
    for f in track.frames:
        tick = round((track.wall(f.timestamp) - zero) * rate)
        ticks.append(tick if not ticks or tick > ticks[-1] else ticks[-1] + 1)
    # 1000 / rate ms is over 4 ms a tick: the middles are whole, distinct ms.
    times = [round(t * 1000 / rate) for t in ticks]
    for i, f in enumerate(track.frames):
        pts = times[i]
        nxt = times[i + 1] if i + 1 < len(times) else round((ticks[i] + 1) * 1000 / rate)
        yield pts, nxt - pts, f.data


def remux(tracks: Sequence[TrackMedia], path: Path) -> Remuxed:
    """Write one WebM at ``path`` from one participant's tracks (at most one
    audio and one video is used: the ones with the most frames).
    :class:`RemuxError` when no track yields a frame."""
    import av  # the recorder's library; imported here so the module's pure parts need none

    audio: tuple[TrackMedia, list[CodedFrame]] | None = None
    video: tuple[TrackMedia, list[CodedFrame]] | None = None
    skipped: list[str] = []
    for media in tracks:
        try:
            frames = frames_of(media)
        except RemuxError as exc:
            skipped.append(str(exc))
            continue
        if media.kind == "video":
            start = next((i for i, f in enumerate(frames) if f.keyframe), None)
            if start is None:
                skipped.append("a video track without a whole keyframe")
                continue
            frames = frames[start:]
            if video is None or len(frames) > len(video[1]):
                video = (media, frames)
        elif frames and (audio is None or len(frames) > len(audio[1])):
            audio = (media, frames)
    if audio is None and video is None:
        raise RemuxError("no whole frame in any track")
    timed_audio = _timed(*audio) if audio else None
    timed_video = _timed(*video) if video else None
    zero = min(t.wall(t.frames[0].timestamp) for t in (timed_audio, timed_video) if t is not None)
    result = Remuxed(0.0, audio is not None, video is not None, skipped=skipped, start=zero)
    path.parent.mkdir(parents=True, exist_ok=True)
    end_ms = 0
    with av.open(str(path), "w", format="webm") as out:
        planned: list[tuple[Any, Iterable[tuple[int, int, bytes]], bool]] = []
        if timed_video is not None:
            size = vp8_size(timed_video.frames[0].data)
            assert size is not None, "a keyframe carries its size"
            result.width, result.height = size
            rate = video_rate(timed_video.frames, timed_video.clock_rate)
            vs = out.add_stream("libvpx", rate=rate)
            vs.width, vs.height = size
            vs.pix_fmt = "yuv420p"
            vs.time_base = _MS
            planned.append((vs, _video_packets(timed_video, zero, rate), True))
        if timed_audio is not None:
            aus = out.add_stream("libopus", rate=48_000)
            aus.layout = "stereo"
            aus.time_base = _MS
            planned.append((aus, _packets(timed_audio, zero, 20), False))
        # Interleaved by time, as Matroska players read clusters in order.
        queue: list[tuple[int, int, Any, int, bytes, bool]] = []
        for order, (stream, packets, is_video) in enumerate(planned):
            for pts, dur, data in packets:
                key = _is_key(data) if is_video else True
                queue.append((pts, order, stream, dur, data, key))
        queue.sort(key=lambda q: (q[0], q[1]))
        for pts, _, stream, dur, data, key in queue:
            packet = av.Packet(data)
            packet.stream = stream
            packet.time_base = _MS
            packet.pts = packet.dts = pts
            packet.duration = dur
            packet.is_keyframe = key
            out.mux(packet)
            end_ms = max(end_ms, pts + dur)
    result.duration = end_ms / 1000
    return result


def _is_key(vp8: bytes) -> bool:
    return bool(vp8) and not vp8[0] & 0x01


@dataclass(frozen=True)
class FileProbe:
    """What PyAV reads back from a file: its duration (seconds) and streams."""

    duration: float
    audio: int
    video: int
    width: int = 0
    height: int = 0


def probe(path: Path) -> FileProbe:
    """Open ``path`` with PyAV and read its streams and duration (the last
    packet's end, which is what a player shows)."""
    import av

    with av.open(str(path)) as f:
        audio = list(f.streams.audio)
        video = list(f.streams.video)
        end = 0.0
        for packet in f.demux():
            if packet.pts is None or packet.time_base is None:
                continue
            t = float((packet.pts + (packet.duration or 0)) * packet.time_base)
            end = max(end, t)
        width = video[0].codec_context.width if video else 0
        height = video[0].codec_context.height if video else 0
    return FileProbe(end, len(audio), len(video), width, height)
