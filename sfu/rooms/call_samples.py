"""Samples of each participant's legs for the visit's call report.

The worker already weighs each participant's legs every other layer tick to
show connection quality (:mod:`sfu.feedback.quality`). Every ``SAMPLE_EVERY`` seconds
that same look also becomes a :class:`sfu.control.messages.CallSample` event, off the
forwarding path (the tick runs from the RTCP timer, not per packet), which
signalling stores with the booking (``signalling.call_reports``). This
module holds what the sample is made of, so the tick only gathers it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sfu.control.messages import CallSample
from sfu.feedback.quality import Quality, Sample
from sfu.rooms.records import Peer, Track

__all__ = ["SAMPLE_EVERY", "received_layers", "sample", "sent_bitrate"]

#: Seconds between one participant's samples (a five-minute visit: 60 rows each).
SAMPLE_EVERY = 5.0


def sent_bitrate(tracks: Iterable[Track], publisher: Peer | None) -> float:
    """Bits per second a participant sends, as measured per layer (every
    layer of their simulcast tracks)."""
    if publisher is None:
        return 0.0
    total = 0.0
    for track in tracks:
        if track.publisher is not publisher:
            continue
        if track.layers:
            total += sum(layer.bitrate for layer in track.layers)
        elif track.measured is not None:
            total += track.measured.bitrate
    return total


def received_layers(
    current: Iterable[tuple[Track, int | None]], paused: Mapping[str, str]
) -> tuple[dict[str, str | None], float]:
    """From each video a subscriber is sent and the layer index it gets
    (None: paused), the layer's rid per track id (``"single"`` for a track
    without simulcast; None: paused for bandwidth) and the bits per second
    those layers carry. A video paused for another reason (its camera off,
    hidden, audio only: ``paused``) is left out: no layer was lacking."""
    layers: dict[str, str | None] = {}
    bitrate = 0.0
    for track, index in current:
        if track.info.kind != "video":
            continue
        if index is None:
            if paused.get(track.info.track_id, "bandwidth") == "bandwidth":
                layers[track.info.track_id] = None
            continue
        if track.layers and 0 <= index < len(track.layers):
            layer = track.layers[index]
            layers[track.info.track_id] = layer.rid
            bitrate += layer.bitrate
        else:
            layers[track.info.track_id] = "single"
            if track.measured is not None:
                bitrate += track.measured.bitrate
    return layers, bitrate


def sample(
    room: str,
    participant: str,
    look: Sample,
    level: Quality,
    sent: float,
    received: tuple[dict[str, str | None], float],
    loss: float,
) -> CallSample:
    """The event: ``look`` is the last quality evaluation, ``loss`` the
    highest loss any evaluation since the last sample saw (a burst between
    two samples is not averaged away)."""
    layers, bitrate = received
    return CallSample(
        room=room,
        participant=participant,
        loss=round(loss, 4),
        rtt=None if look.rtt is None else round(look.rtt, 4),
        jitter=None if look.jitter is None else round(look.jitter, 4),
        sent=round(sent),
        received=round(bitrate),
        available=round(look.available),
        layers=layers,
        quality=level.value,
    )
