"""What each publisher's video offers the allocation: its simulcast layers, learnt, measured, live.

The publisher's side of :class:`sfu.layers.choice.Layers`, on the worker's
records (:mod:`sfu.rooms.records`):

* **Learning layers.** A browser sends RFC 8853 simulcast without
  ``a=ssrc``: each layer's first packets carry the MID and RID header
  extensions (RTX: the repaired RID, RFC 8852). A packet from an SSRC the
  worker does not know, on a publisher with such layers still unknown, is
  looked at in the slow branch of the hot path (:func:`learn_layer`) and its
  SSRC becomes that layer's.
* **Measuring.** Every ``TICK`` (:func:`measure`), each layer's bitrate
  from what arrived, and when its last packet came.
* **Offering.** The layers allocation may choose for a track
  (:func:`offered`): sizes from keyframes, bitrates as measured; not a layer
  its publisher stopped, silent for ``STALE`` or ``QUIET`` behind another
  layer of the track. A video none of whose layers arrived for ``STALE``
  seconds is not sending (:func:`publishing`): its camera is off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from rtc.errors import RtpParseError
from rtc.rtp.extensions import extension_elements
from rtc.sdp.attributes import MID, REPAIRED_RTP_STREAM_ID, RTP_STREAM_ID
from sfu.errors import SfuStateError
from sfu.feedback.receiving import ReceiveStatistics
from sfu.feedback.reports import ReportScheduler
from sfu.forward.simulcast import Layer
from sfu.forward.table import SimulcastGroup
from sfu.rooms.records import LayerInfo, MediaRoom, Peer, Track

__all__ = [
    "HEADROOM",
    "QUIET",
    "STALE",
    "TICK",
    "Learnt",
    "learn_layer",
    "measure",
    "measured",
    "newest_seen",
    "offered",
    "publishing",
    "sending",
    "smoothed",
]

#: Seconds between the layers' ticks: each measures every published layer
#: (:func:`measure`) and allocates every subscriber (:mod:`sfu.layers.choice`).
TICK = 0.5
#: A layer that sent nothing for this long is not offered (the publisher stopped it).
STALE = 2.0
#: A layer whose last packet came this long before another layer's of its
#: track is not offered either: its publisher stopped that layer alone (a
#: browser short of CPU or uplink drops its top layers first), and a
#: subscriber on it sees a frozen picture until it moves down. Compared by
#: each layer's last packet's arrival (:func:`measure`), not by the ticks that
#: read them: every layer of a sending track carries a packet each frame, so
#: half a second behind is fifteen frames at 30 fps, and a subscriber moves
#: within QUIET to QUIET + TICK of the stop.
QUIET = 0.5
#: What a single-layer video counts for when sharing a subscriber's bandwidth.
SINGLE_LAYER_COST = 200_000
#: A measured layer bitrate counts this much over the average (bursts, keyframes).
HEADROOM = 1.1

Learnt = Literal["layer", "repair"] | None
"""What an SSRC learnt from its first packets became (:func:`learn_layer`)."""


def learn_layer(peer: Peer, plain: bytes, ssrc: int, reports: ReportScheduler) -> Learnt:
    """A publisher's packet from an unknown SSRC: a simulcast layer's (or its
    RTX's) first packets, by their MID and RID extensions (RFC 8852). What
    the SSRC became (a layer's media, whose statistics now report on the
    publisher's leg, or its repair), or None when it stays unknown."""
    if not plain or not plain[0] & 0x10:
        return None
    try:
        two_byte, _, _, elements = extension_elements(plain)
    except RtpParseError:
        return None
    values: dict[int, bytes] = {}
    for hdr, xid, length in elements:
        start = hdr + (2 if two_byte else 1)
        values[xid] = plain[start : start + length]
    track: Track | None = None
    for candidate in peer.rid_tracks.values():
        mid_id = candidate.extensions.get(MID, 0)
        if mid_id and values.get(mid_id) == candidate.info.mid.encode():
            track = candidate
            break
    if track is None and len(peer.rid_tracks) == 1:
        track = next(iter(peer.rid_tracks.values()))
    if track is None:
        return None
    forwarder = peer.forwarder
    rid_id = track.extensions.get(RTP_STREAM_ID, 0)
    rrid_id = track.extensions.get(REPAIRED_RTP_STREAM_ID, 0)
    rid = values.get(rid_id) if rid_id else None
    repaired = values.get(rrid_id) if rrid_id else None
    if rid is not None:
        index = _index(track, rid)
        if index is None or track.layers[index].ssrc:
            return None
        try:
            forwarder.simulcast.add_layer(track.ssrc, index, ssrc)
        except SfuStateError:
            return None
        layer = track.layers[index]
        layer.ssrc = ssrc
        stats = ReceiveStatistics(ssrc, track.codec.clock_rate)
        peer.recv_stats[ssrc] = stats
        if peer.reporting:
            reports.add_receive(peer, stats)
        learnt: Learnt = "layer"
    elif repaired is not None:
        index = _index(track, repaired)
        if index is None or not track.layers[index].ssrc or track.layers[index].rtx_ssrc:
            return None
        try:
            forwarder.simulcast.add_layer_rtx(track.ssrc, index, ssrc)
        except SfuStateError:
            return None
        track.layers[index].rtx_ssrc = ssrc
        learnt = "repair"
    else:
        return None
    if all(layer.ssrc and layer.rtx_ssrc for layer in track.layers):
        peer.rid_tracks.pop(track.info.mid, None)
    return learnt


def _index(track: Track, rid: bytes) -> int | None:
    text = rid.decode("ascii", "replace")
    for i, layer in enumerate(track.layers):
        if layer.rid == text:
            return i
    return None


def measure(room: MediaRoom, now: float) -> None:
    """Each layer of ``room``'s tracks measured at ``now``: its bitrate from
    what arrived since the last tick, and when its last packet came."""
    for track in room.tracks.values():
        layers = track.layers or [measured(track)]
        for layer in layers:
            stats = track.publisher.recv_stats.get(layer.ssrc) if layer.ssrc else None
            if stats is None:
                continue
            if stats.octets != layer.octets:
                # When its last packet came, which this tick reads up
                # to TICK later (LayerInfo.seen).
                arrival = stats.last_arrival or now
                if layer.seen > -math.inf:
                    dt = max(arrival - layer.seen, TICK)
                    rate = (stats.octets - layer.octets) * 8 / dt
                    layer.bitrate = smoothed(layer.bitrate, rate)
                layer.octets = stats.octets
                layer.seen = arrival


def smoothed(bitrate: float, rate: float) -> float:
    """A measured bitrate after one more tick's ``rate`` (the first as it is)."""
    return rate if not bitrate else 0.6 * bitrate + 0.4 * rate


def measured(track: Track) -> LayerInfo:
    """A single-layer track's measurement record (audio, or video without
    simulcast), made on first use."""
    layer = track.measured
    if layer is None:
        layer = track.measured = LayerInfo("", 0.0)
        layer.ssrc = track.ssrc
    return layer


def publishing(track: Track, now: float) -> bool:
    """Whether a video's publisher sends it: some layer arrived in the last
    ``STALE`` seconds, or was learnt and not measured yet (a relayed track's
    layers are never measured here: they count as sending)."""
    if not track.layers:
        single = track.measured
        return single is None or single.seen == -math.inf or now - single.seen < STALE
    known = [x for x in track.layers if x.ssrc]
    return any(x.seen == -math.inf or now - x.seen < STALE for x in known)


def newest_seen(track: Track) -> float:
    """When the newest packet of any of ``track``'s learnt layers came."""
    return max((x.seen for x in track.layers if x.ssrc), default=-math.inf)


def sending(info: LayerInfo, newest: float, now: float) -> bool:
    """Whether a learnt layer is sending at ``now``: a packet within STALE,
    and not QUIET behind its track's ``newest`` (:func:`newest_seen`)."""
    return now - info.seen < STALE and newest - info.seen < QUIET


def offered(group: SimulcastGroup | None, track: Track, now: float) -> Sequence[Layer]:
    """The layers allocation may choose for a track: known, and sending now
    (or stopped by dynacast, which resumes them when chosen)."""
    if group is None:
        # A track that does not simulcast has nothing lower to offer: it is
        # paused only when the subscriber cannot carry even a small video
        # (the audio-only fallback), not whenever the estimate is below what
        # the publisher sends now (the estimate starts low and climbs).
        single = measured(track)
        bitrate = single.bitrate * HEADROOM if single.bitrate else SINGLE_LAYER_COST
        return [Layer(0, "", 0, 0, int(min(bitrate, SINGLE_LAYER_COST)))]
    group_layers = track.layers
    n = len(group_layers)
    newest = newest_seen(track)
    out: list[Layer] = []
    for i, info in enumerate(group_layers):
        if not info.ssrc:
            continue
        fresh = now - info.seen < STALE
        if not sending(info, newest, now) and info.active and info.seen > -math.inf:
            continue  # the publisher stopped it on its own
        scale = 1 << (n - 1 - i)
        width, height = 1280 // scale, 720 // scale
        known = group.layers[i]
        if known is not None and known.width:
            width, height = known.width, known.height
        default = (150_000, 500_000, 1_700_000)[min(i + 3 - n, 2)] if n <= 3 else 500_000
        bitrate = info.bitrate * HEADROOM if fresh and info.bitrate else default
        out.append(Layer(i, info.rid, width, height, int(bitrate)))
    return out
