"""What the media workers say about the rooms this process owns.

Every replica hears every worker's events (over Redis, or the in-process
worker's listener); each is acted on where its room is owned: the active
speaker and a subscribe transport that failed change the room, paused
tracks, wanted simulcast layers and connection quality become frames for
those concerned, and recording segments become rows
(:class:`signalling.live.recording.CallRecordings`). A relay link that
failed, or a worker whose life changed, wakes the cluster's watcher, which
moves the sites of a worker that died.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import Counter

from sfu.control.messages import (
    ActiveSpeaker,
    ConnectionQuality,
    LayersWanted,
    MediaEvent,
    RecordingSegment,
    RecordingStopped,
    RelayState,
    TrackPaused,
    TransportState,
)
from signalling import protocol
from signalling.live.recording import CallRecordings
from signalling.live.room import CallRoom
from signalling.media.sites import Sites
from signalling.room.outputs import Output

log = logging.getLogger("wadud.signalling")

__all__ = ["MEDIA_EVENTS", "MediaEvents"]

MEDIA_EVENTS = Counter(
    "wadud_call_media_events", "Media worker events received, by type and state.", ["type", "state"]
)


class MediaEvents:
    """Hears the media workers for the rooms this process owns (``rooms``):
    changes go through ``apply`` (the room's outputs carried out), and
    ``wake`` asks the cluster's watcher to look at the workers now."""

    def __init__(
        self,
        rooms: Mapping[str, CallRoom],
        *,
        sites: Sites[CallRoom],
        recordings: CallRecordings,
        apply: Callable[[CallRoom, Iterable[Output]], None],
        wake: Callable[[], None],
    ) -> None:
        self._rooms = rooms
        self._sites = sites
        self._recordings = recordings
        self._apply = apply
        self._wake = wake

    def on_worker_message(self, worker: str, incarnation: str, payload: Any) -> None:
        """A message of the media client (``wadud api``): a worker's event, or
        news of its life."""
        if isinstance(payload, str):
            # A worker's life changed (stopped, draining): check placements now.
            self._wake()
        else:
            self.on_media_event(payload, worker)

    def on_media_event(self, event: MediaEvent, worker: str | None = None) -> None:
        """A media worker's event (``worker``: which, when it came over Redis)."""
        try:
            if isinstance(event, RelayState):
                MEDIA_EVENTS.labels("relay_state", event.state).inc()
                log.info(
                    "media relay link %s",
                    event.state,
                    extra={"worker": worker, "peer": event.peer_worker, "reason": event.reason},
                )
                if event.state == "failed":
                    # Most often a worker died: the watcher moves its sites.
                    self._wake()
                return
            room = self._rooms.get(event.room)
            if isinstance(event, RecordingSegment | RecordingStopped):
                # The room's owner keeps the rows (every replica hears every
                # event), or whoever started it if the room closed since.
                MEDIA_EVENTS.labels(event.type, "").inc()
                if room is not None or self._recordings.concerns(event.recording):
                    self._recordings.on_event(event)
                return
            if isinstance(event, TrackPaused | LayersWanted | ConnectionQuality):
                MEDIA_EVENTS.labels(event.type, "").inc()
                if room is not None:
                    self._weak_network_event(room, event, worker)
                return
            if isinstance(event, ActiveSpeaker):
                MEDIA_EVENTS.labels("active_speaker", "").inc()
                if room is not None and self._sites.speaker_counts(room, worker):
                    self._apply(room, room.core.media.speaker(event.participant))
            elif isinstance(event, TransportState):
                MEDIA_EVENTS.labels("transport_state", event.state).inc()
                if (
                    room is not None
                    and event.direction == "subscribe"
                    and event.state == "failed"
                    and (who := room.core.members.get(event.participant)) is not None
                    and who.present
                ):
                    room.subscriber(event.participant).restart()
                if room is not None and event.state == "connected":
                    room.media_state(event.participant, "connected")
                # The worker logs transports itself; this is for following a call.
                log.debug(
                    "media transport %s",
                    event.state,
                    extra={
                        "room": event.room,
                        "participant": event.participant,
                        "direction": event.direction,
                        "reason": event.reason,
                    },
                )
        except Exception:
            log.exception("media event failed")

    def _weak_network_event(
        self,
        room: CallRoom,
        event: TrackPaused | LayersWanted | ConnectionQuality,
        worker: str | None,
    ) -> None:
        """A subscriber's paused track, a publisher's wanted layers, a
        participant's connection quality: frames for those concerned."""
        if isinstance(event, TrackPaused):
            frame = protocol.TrackPaused(
                track_id=event.track_id, paused=event.paused, reason=event.reason
            ).frame()
            room.send_to(event.participant, frame)
        elif isinstance(event, LayersWanted):
            # The publisher's own site decides (relay links count there).
            if not self._sites.publisher_site(room, event.participant, worker):
                return
            encodings = [
                protocol.Encoding(rid=r, active=r in event.active_rids) for r in event.rids
            ]
            if encodings:
                frame = protocol.SetEncodings(track_id=event.track_id, encodings=encodings).frame()
                room.send_to(event.participant, frame)
        else:
            known = room.quality.get(event.participant)
            if known is not None and known.quality == event.quality:
                return
            room.quality[event.participant] = event
            frame = protocol.ConnectionQuality(
                participant_id=event.participant, quality=event.quality
            ).frame()
            for other in room.core.members.present():
                room.send_to(other.id, frame)
