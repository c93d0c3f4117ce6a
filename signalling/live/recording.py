"""What a room's recording steps mean outside the room: the recording's rows
and key (:class:`recording.store.Recordings`) and the
media worker writing it (:meth:`sfu.control.messages.MediaControl.record`).

The room core (:mod:`signalling.room.consent`) decides; this carries
out its steps one at a time per room, in order (asked, each answer, start,
stop), on a lane of their own so a slow database never holds up a room's
media calls. A step that fails (no booking behind the room, the database
away) stops the recording in the room with reason ``failed``, so no screen
says "Recording" while nothing is kept.

The worker reports each stored segment and its end
(:class:`sfu.control.messages.RecordingSegment`, :class:`sfu.control.messages.RecordingStopped`);
those become rows, and a failure on the worker's side (storage too slow or
full) stops the recording in the room too.

Which worker writes: one per room, the first of the room's sites, which
records what is published there and what is relayed in for its
subscribers. A room whose participants are all on other sites has nothing
relayed to that worker to record; see docs/recording.md. A room with no
site yet (everyone agreed before any media worker was placed for it: its
placement at the join failed, or is still under way) gets its home site
placed at the start, as a publish would place it; the worker holds the
order until the room's first media arrives there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from uuid import UUID

from recording.store import Recordings
from sfu.control.messages import MediaControl, RecordingOrder, RecordingSegment, RecordingStopped
from signalling.live.room import CallRoom
from signalling.media.lane import MediaLane
from signalling.room.consent import (
    ConsentAnswered,
    RecordingAsked,
    RecordingOutput,
    RecordingStart,
    RecordingStop,
)

__all__ = ["CallRecordings"]

log = logging.getLogger("signalling.recordings")


def _account(identity: str) -> UUID | None:
    # A signed-in person's room identity is their account id; an anonymous
    # link's is not a UUID.
    try:
        return UUID(identity)
    except ValueError:
        return None


class CallRecordings:
    """Carries out rooms' recording steps; hears the workers' recording events."""

    def __init__(
        self,
        store: Callable[[], Recordings | None],
        *,
        booking_of: Callable[[str], UUID | None],
        media_of: Callable[[CallRoom], Sequence[MediaControl]],
        place: Callable[[CallRoom], Awaitable[MediaControl]],
        failed: Callable[[str, str, str], None],
    ) -> None:
        #: The rows (None: no database, as in a bare test app: recording fails).
        self._store = store
        self._booking_of = booking_of
        self._media_of = media_of
        #: The room's home site, placed now if it has none.
        self._place = place
        #: Tell the room ``name`` that recording ``id`` failed (``detail``).
        self._failed = failed
        self._lanes: dict[str, MediaLane] = {}
        #: Recordings started from this process: their worker's events are
        #: ours to keep even once the room is gone from here (closed).
        self._started: set[str] = set()

    def concerns(self, recording_id: str) -> bool:
        return recording_id in self._started

    def carry(self, room: CallRoom, step: RecordingOutput) -> None:
        self._lane(room.name).background("recording step", partial(self._step, room, step))

    def _lane(self, name: str) -> MediaLane:
        # One lane per room for its steps, and one per recording for its
        # worker's events (a recording's last segment row lands before its end).
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = MediaLane(partial(self._idle, name))
        return lane

    def _idle(self, name: str, lane: MediaLane) -> None:
        if self._lanes.get(name) is lane:
            del self._lanes[name]

    async def _step(self, room: CallRoom, step: RecordingOutput) -> None:
        rid = step.recording_id
        try:
            await self._carry(room, step)
        except Exception as exc:
            log.warning(
                "recording step %s failed",
                type(step).__name__,
                extra={"room": room.name, "recording": rid},
                exc_info=not isinstance(exc, _CannotRecord),
            )
            if not isinstance(step, RecordingStop):
                self._failed(room.name, rid, str(exc) or type(exc).__name__)

    async def _carry(self, room: CallRoom, step: RecordingOutput) -> None:
        store = self._store()
        if store is None:
            raise _CannotRecord("recording needs the database")
        rid = UUID(step.recording_id)
        match step:
            case RecordingAsked(_, by):
                booking = self._booking_of(room.name)
                if booking is None:
                    raise _CannotRecord("this room has no booking to keep a recording under")
                await store.request(booking, room.name, _account(by.identity), recording_id=rid)
            case ConsentAnswered(_, voter, agreed):
                await store.answer(rid, voter.id, _account(voter.identity), voter.role, agreed)
            case RecordingStart():
                key = await store.start(rid)
                self._started.add(step.recording_id)
                media = self._media_of(room)
                # No site yet: the one a publish would get, now; the
                # worker holds the order until media arrives.
                writer = media[0] if media else await self._place(room)
                await writer.record(room.name, RecordingOrder(step.recording_id, key))
            case RecordingStop(_, reason, started, detail):
                media = self._media_of(room)
                if started and reason != "failed" and media:
                    # The worker seals what is open, then says RecordingStopped,
                    # which ends the row (on_event).
                    await media[0].record(room.name, None)
                    return
                # Never started, failed, or its worker is gone: end the row here
                # (no RecordingStopped will come for it).
                self._started.discard(step.recording_id)
                await store.stop(rid, (detail or "failed") if reason == "failed" else None)

    def on_event(self, event: RecordingSegment | RecordingStopped) -> None:
        """A worker stored a segment, or finished a recording."""
        self._lane("recording:" + event.recording).background(
            "recording event", partial(self._event, event)
        )

    async def _event(self, event: RecordingSegment | RecordingStopped) -> None:
        store = self._store()
        if store is None:
            return
        rid = UUID(event.recording)
        if isinstance(event, RecordingSegment):
            await store.segment(
                rid,
                event.participant,
                event.track_id,
                event.kind,
                event.index,
                event.key,
                event.packets,
                event.size,
                event.started,
                event.ended,
            )
            return
        self._started.discard(event.recording)
        failure = None
        if event.reason == "failed":
            failure = event.detail or "the media worker could not record"
        await store.stop(rid, failure)
        if failure is not None:
            self._failed(event.room, event.recording, failure)


class _CannotRecord(Exception):
    """A recording that cannot be kept: said to the room, not logged as a fault."""
