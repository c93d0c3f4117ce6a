"""Simulcast: which layer each subscriber gets, and one continuous VP8 stream from several.

A publisher that simulcasts sends its camera as up to three encodings of one
picture (RFC 8853; browsers name them by RID: ``q`` a quarter, ``h`` half,
``f`` full resolution), each its own SSRC. A subscriber gets at most one of
them, on one SSRC of its own, and may be switched between them as its
bandwidth or the size of its tile changes. Three things make that work,
each a pure core here:

- :func:`choose` picks a layer for one track from what the subscriber's tile
  shows (no point sending 720p to a 160x90 thumbnail; nothing to a hidden
  tile) and the bandwidth it is allowed;
- :func:`allocate` shares one subscriber's estimated bandwidth among its
  tracks by priority: audio first (always), then screen shares, then the
  active speaker's camera, then other cameras, each at the lowest layer
  before any gets a higher one; a video that does not fit even at its lowest
  layer is paused (the audio-only fallback);
- :class:`Vp8Rewriter` keeps the VP8 payload descriptor's PictureID and
  TL0PICIDX (RFC 7741 section 4.2) continuous across switches, as sequence
  numbers and timestamps are by :class:`rtc.rtp.sequence.RtpRewriter`: a decoder that
  sees PictureID jump thinks frames were lost and asks for a keyframe.

The switch itself (wait for a keyframe on the new layer, then cut over) is
the forwarder's; these cores say *what* and rewrite *how*.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "AUDIO_BITRATE",
    "Layer",
    "Picture",
    "Vp8Rewriter",
    "Wanted",
    "allocate",
    "choose",
    "vp8_picture",
    "vp8_temporal_id",
]

#: What one Opus stream needs, headers included (about 40 kbit/s speech).
AUDIO_BITRATE = 50_000
#: A layer covers a tile up to this much larger than itself: a slight
#: upscale is not worth the next layer's bitrate, a large one blurs a face.
_UPSCALE = 1.15

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Layer:
    """One simulcast encoding as the worker sees it: its index (0 lowest),
    RID, size and the bitrate it is measured at (bits per second; the
    default the browser targets until measured)."""

    index: int
    rid: str
    width: int
    height: int
    bitrate: int
    active: bool = True


@dataclass(frozen=True)
class Wanted:
    """One video track a subscriber receives: its layers (lowest first; one
    for a track that does not simulcast), whether it is a screen share or the
    active speaker, and the tile showing it (CSS pixels times the device
    pixel ratio; ``visible`` False for a hidden tile or page)."""

    track_id: str
    layers: Sequence[Layer]
    screen: bool = False
    speaker: bool = False
    width: int = 0
    height: int = 0
    visible: bool = True


def choose(layers: Sequence[Layer], budget: float, width: int, height: int) -> int | None:
    """The index of the layer to send within ``budget`` bits per second for
    a tile of ``width`` x ``height`` (0 x 0: size unknown, no cap): the
    smallest active layer that covers the tile, or the largest that fits
    under it; lower when the budget asks. None when not even the lowest
    active layer fits."""
    active = [layer for layer in layers if layer.active]
    if not active:
        return None
    if width > 0 and height > 0:
        cap = active[0]
        for layer in active:
            cap = layer
            if layer.width * _UPSCALE >= width and layer.height * _UPSCALE >= height:
                break
        active = [layer for layer in active if layer.index <= cap.index]
    fitting = [layer for layer in active if layer.bitrate <= budget]
    return fitting[-1].index if fitting else None


def allocate(
    budget: float,
    wanted: Sequence[Wanted],
    audio_tracks: int = 0,
    audio_bitrate: float | None = None,
) -> dict[str, int | None]:
    """Layers for every video track one subscriber receives, within
    ``budget`` bits per second (see the module docstring). Audio is served
    first: ``audio_bitrate`` bits per second when measured, else
    :data:`AUDIO_BITRATE` for each of ``audio_tracks``. A hidden tile gets
    None (nothing sent); a track that does not fit gets None too."""
    left = budget - (audio_tracks * AUDIO_BITRATE if audio_bitrate is None else audio_bitrate)
    order = sorted(wanted, key=lambda w: (not w.screen, not w.speaker, w.track_id))
    out: dict[str, int | None] = {w.track_id: None for w in wanted}
    # Two passes: everyone visible gets their lowest layer first, then what
    # is left lifts them in priority order.
    lowest: dict[str, Layer] = {}
    for w in order:
        active = [layer for layer in w.layers if layer.active]
        if not w.visible or not active:
            continue
        if active[0].bitrate <= left:
            lowest[w.track_id] = active[0]
            out[w.track_id] = active[0].index
            left -= active[0].bitrate
    for w in order:
        base = lowest.get(w.track_id)
        if base is None:
            continue
        index = choose(w.layers, left + base.bitrate, w.width, w.height)
        if index is not None and index > base.index:
            chosen = next(layer for layer in w.layers if layer.index == index)
            left -= chosen.bitrate - base.bitrate
            out[w.track_id] = index
    return out


def layers_by_rid(rids: Sequence[str], sizes: Mapping[str, tuple[int, int]]) -> list[Layer]:
    """Layers for a publisher's RIDs (in its ``a=simulcast`` order, which
    browsers send lowest first when scaled down 4, 2, 1), with the default
    bitrates libwebrtc targets for their sizes until they are measured."""
    out = []
    for i, rid in enumerate(rids):
        width, height = sizes.get(rid, (0, 0))
        out.append(Layer(i, rid, width, height, _default_bitrate(width * height, i)))
    return out


def _default_bitrate(pixels: int, index: int) -> int:
    # libwebrtc's simulcast table (video/config/simulcast.cc): 320x180 ~150k,
    # 640x360 ~500k, 1280x720 ~1.7M as the targets of the three layers.
    if pixels <= 0:
        return (150_000, 500_000, 1_700_000)[min(index, 2)]
    if pixels <= 320 * 180:
        return 150_000
    if pixels <= 640 * 360:
        return 500_000
    if pixels <= 960 * 540:
        return 1_000_000
    return 1_700_000


# -- VP8 ---------------------------------------------------------------------------


def vp8_temporal_id(data: Buffer, start: int, end: int) -> tuple[int, bool] | None:
    """``(TID, Y)`` of a VP8 payload descriptor (RFC 7741 section 4.2), or
    None when it carries no T bit (no temporal layering)."""
    if start + 1 >= end or not data[start] & 0x80:
        return None
    x = data[start + 1]
    if not x & 0x20:
        return None
    pos = start + 2
    if x & 0x80:
        if pos >= end:
            return None
        pos += 2 if data[pos] & 0x80 else 1
    if x & 0x40:
        pos += 1
    if pos >= end:
        return None
    b = data[pos]
    return b >> 6, bool(b & 0x20)


#: A VP8 payload descriptor's rewritable fields (:func:`vp8_picture`):
#: PictureID offset, value and mask (0x7F or 0x7FFF), TL0PICIDX offset and
#: value; an offset of -1 for a field the descriptor does not carry.
Picture = tuple[int, int, int, int, int]


def vp8_picture(data: Buffer, start: int, end: int) -> Picture | None:
    """The PictureID and TL0PICIDX of a VP8 payload descriptor (RFC 7741
    section 4.2) at ``data[start:end]``, or None when it has neither (no X
    bit). Read once per packet; :meth:`Vp8Rewriter.apply` writes each
    subscriber's values from it."""
    if start + 1 >= end or not data[start] & 0x80:
        return None
    x = data[start + 1]
    pos = start + 2
    pid_pos = tl0_pos = pid = tl0 = -1
    mask = 0x7F
    if x & 0x80:
        if pos >= end:
            return None
        pid_pos = pos
        pid = data[pos] & 0x7F
        if data[pos] & 0x80:
            if pos + 1 >= end:
                return None
            mask = 0x7FFF
            pid = pid << 8 | data[pos + 1]
            pos += 2
        else:
            pos += 1
    if x & 0x40:
        if pos >= end:
            return None
        tl0_pos = pos
        tl0 = data[pos]
    if pid_pos < 0 and tl0_pos < 0:
        return None
    return pid_pos, pid, mask, tl0_pos, tl0


class Vp8Rewriter:
    """PictureID and TL0PICIDX continuity for one subscriber's VP8 stream.

    Each layer numbers its pictures on its own. At a switch
    (:meth:`switch`, before the new layer's first packet, a keyframe) the
    offsets are chosen so the new layer's pictures continue one after the
    last picture sent; the rewrite is in place, keeping the descriptor's
    width (7- or 15-bit PictureID), so no byte moves.
    """

    __slots__ = ("_last_pid", "_last_tl0", "_pid_offset", "_resync", "_started", "_tl0_offset")

    def __init__(self) -> None:
        self._pid_offset = 0
        self._tl0_offset = 0
        self._last_pid = 0
        self._last_tl0 = 0
        self._resync = True
        self._started = False

    def switch(self) -> None:
        """The next packet starts a run from another layer (or after a pause)."""
        self._resync = True

    def rewrite(self, data: bytearray, start: int, end: int, src: Buffer | None = None) -> None:
        """Rewrite the descriptor at ``data[start:end]`` in place. ``src``
        (same layout) is read instead of ``data`` when given."""
        picture = vp8_picture(data if src is None else src, start, end)
        if picture is not None:
            self.apply(data, picture)

    def apply(self, data: bytearray, picture: Picture) -> None:
        """Write this subscriber's PictureID and TL0PICIDX for ``picture``
        (the publisher's values, :func:`vp8_picture`) into ``data``: the
        forwarder parses a packet once and calls this per subscriber."""
        pid_pos, pid, mask, tl0_pos, tl0 = picture
        if self._resync:
            self._resync = False
            if self._started:
                if pid_pos >= 0:
                    self._pid_offset = (self._last_pid + 1 - pid) & 0x7FFF
                if tl0_pos >= 0:
                    self._tl0_offset = (self._last_tl0 + 1 - tl0) & 0xFF
            self._started = True
            # The run's first picture is the newest so far, whatever its number.
            if pid_pos >= 0:
                self._last_pid = (pid + self._pid_offset) & mask
            if tl0_pos >= 0:
                self._last_tl0 = (tl0 + self._tl0_offset) & 0xFF
        if pid_pos >= 0:
            out = (pid + self._pid_offset) & mask
            last = self._last_pid
            # Remember the newest picture sent (RFC 1982 comparison), so the
            # next run continues after it, not after a late retransmission.
            if out != last and (out - last) & mask < (mask + 1) >> 1:
                self._last_pid = out
            if mask == 0x7FFF:
                data[pid_pos] = 0x80 | out >> 8
                data[pid_pos + 1] = out & 0xFF
            else:
                data[pid_pos] = out
        if tl0_pos >= 0:
            out = (tl0 + self._tl0_offset) & 0xFF
            last = self._last_tl0
            if out != last and (out - last) & 0xFF < 0x80:
                self._last_tl0 = out
            data[tl0_pos] = out

    def resend(self, data: bytearray, picture: Picture) -> None:
        """Write the PictureID and TL0PICIDX :meth:`apply` wrote for ``picture``
        in this run into ``data``, for a retransmission: the values the
        subscriber first saw (RFC 7741 section 4.2). Changes nothing: a
        retransmission never starts a run, even after :meth:`switch` (the
        previous run's offsets hold until the next run's first packet), and
        never moves the newest picture sent. The caller makes sure the packet
        was sent in this run (:meth:`rtc.rtp.sequence.RtpRewriter.sent_as`:
        a new VP8 run only ever starts with a new RTP run)."""
        pid_pos, pid, mask, tl0_pos, tl0 = picture
        if pid_pos >= 0:
            out = (pid + self._pid_offset) & mask
            if mask == 0x7FFF:
                data[pid_pos] = 0x80 | out >> 8
                data[pid_pos + 1] = out & 0xFF
            else:
                data[pid_pos] = out
        if tl0_pos >= 0:
            data[tl0_pos] = (tl0 + self._tl0_offset) & 0xFF
