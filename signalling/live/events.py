"""Room events for clinics' webhooks (hooks/, docs/webhooks.md), read off
each room's state after every change.

The rooms of the call service (:class:`signalling.service.rooms.Rooms`)
hand every batch of room outputs to an observer before carrying them out
(``observe``); :func:`changes` compares the room's
participants and tracks with what it saw last time and names what happened
(``participant_waiting``, ``participant_admitted``, ``track_published``,
...), sans-I/O. :class:`RoomEvents` keeps the last view per room and writes
the events as outbox rows, in order, through one writer task
(:func:`hooks.events.emit`); the trigger of migration 0020 turns each into
deliveries. Only rooms of a booking (a grant naming one) produce events:
the booking decides the clinic. Participants are named by the room's ids and
roles, never by names or identities.

A room taken over by another replica (its owner died) is seen afresh there:
a first view with more than one participant, or any track, is taken as it
stands without events, so a takeover does not announce everyone again.
An event observed but not yet written when its process dies is lost: room
events are written after the fact, not in a transaction of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from hooks import events
from signalling.room.core import Room
from signalling.room.members import MemberState
from signalling.room.outputs import MediaCloseRoom, Output, SendFrame

log = logging.getLogger("wadud.signalling")

__all__ = ["Change", "ObservedRoom", "ParticipantView", "RoomEvents", "changes", "view_of"]


@dataclass(frozen=True)
class ParticipantView:
    id: str
    role: str
    state: str
    conn: object
    #: track id to (kind, source)
    tracks: dict[str, tuple[str, str]]


@dataclass(frozen=True)
class ObservedRoom:
    booking: str
    participants: dict[str, ParticipantView] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    name: str
    data: dict[str, Any]


def view_of(core: Room, booking: str) -> ObservedRoom:
    return ObservedRoom(
        booking,
        {
            p.id: ParticipantView(
                p.id,
                p.grant.role,
                p.state.value,
                p.conn,
                {t.track_id: (t.kind, t.source) for t in core.media.tracks_of(p.id)},
            )
            for p in core.members.participants.values()
            if p.state is not MemberState.GONE
        },
    )


def _booking(core: Room) -> str:
    for p in core.members.participants.values():
        if p.grant.booking:
            return p.grant.booking
    return ""


def _who(p: ParticipantView) -> dict[str, Any]:
    return {"participant": {"id": p.id, "role": p.role}}


def _track(p: ParticipantView, track_id: str) -> dict[str, Any]:
    kind, source = p.tracks[track_id]
    return {"track": {"id": track_id, "kind": kind, "source": source, "participant": p.id}}


def _sent(outputs: Sequence[Output], kind: str) -> list[SendFrame]:
    return [o for o in outputs if isinstance(o, SendFrame) and o.frame.get("type") == kind]


def _why(was: ParticipantView, core: Room, outputs: Sequence[Output]) -> str:
    """Why a participant left when no one else was there to be told."""
    if core.ended:
        return "room-ended"
    told = {
        s.frame.get("type"): s.frame
        for s in outputs
        if isinstance(s, SendFrame) and s.conn == was.conn
    }
    if was.conn is not None and "replaced" in told:
        return "replaced"
    if was.conn is not None and "removed" in told:
        return str(told["removed"].get("reason") or "removed")
    return "timeout" if was.state == MemberState.DETACHED.value else "left"


def changes(
    before: ObservedRoom | None, core: Room, outputs: Sequence[Output]
) -> tuple[list[Change], ObservedRoom | None]:
    """What happened in ``core`` since ``before`` (the last view, None when
    unseen), and the view to keep (None: the room is over)."""
    booking = before.booking if before is not None else _booking(core)
    if not booking:
        return [], None
    now = view_of(core, booking)
    finished = any(isinstance(o, MediaCloseRoom) for o in outputs)
    if before is None:
        if len(now.participants) > 1 or any(p.tracks for p in now.participants.values()):
            return [], None if finished else now  # a takeover: seen as it stands
        before = ObservedRoom(booking)
        out = [Change("room_started", {})] if now.participants or finished else []
    else:
        out = []
    left_reasons = {
        s.frame.get("participant_id"): str(s.frame.get("reason") or "left")
        for s in _sent(outputs, "participant_left")
    }
    denied = {s.conn for s in _sent(outputs, "denied")}
    # Departures first: a replacement's old participant leaves before the new one joins.
    for pid, was in before.participants.items():
        if pid in now.participants:
            continue
        if was.state == MemberState.WAITING.value:
            if was.conn is not None and was.conn in denied:
                out.append(Change("participant_denied", _who(was)))
            else:
                out.append(Change("participant_left", {**_who(was), "reason": "left-waiting"}))
            continue
        out += [Change("track_unpublished", _track(was, t)) for t in was.tracks]
        reason = left_reasons.get(pid) or _why(was, core, outputs)
        out.append(Change("participant_left", {**_who(was), "reason": reason}))
    for pid, p in now.participants.items():
        was_p = before.participants.get(pid)
        waiting = p.state == MemberState.WAITING.value
        if was_p is None:
            out.append(Change("participant_waiting" if waiting else "participant_joined", _who(p)))
        elif was_p.state == MemberState.WAITING.value and not waiting:
            out.append(Change("participant_admitted", _who(p)))
            out.append(Change("participant_joined", _who(p)))
        gone = [t for t in (was_p.tracks if was_p is not None else {}) if t not in p.tracks]
        out += [Change("track_unpublished", _track(was_p, t)) for t in gone if was_p]
        added = [t for t in p.tracks if was_p is None or t not in was_p.tracks]
        out += [Change("track_published", _track(p, t)) for t in added]
    if finished:
        out.append(Change("room_finished", {"reason": "ended" if core.ended else "empty"}))
        return out, None
    return out, now


def _wall() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class RoomEvents:
    """The observer :class:`~signalling.service.rooms.Rooms` calls with each
    room's outputs; writes what changed as webhook events, in order."""

    def __init__(
        self, pool: Callable[[], asyncpg.Pool | None], clock: Callable[[], str] = _wall
    ) -> None:
        self._pool = pool
        self.clock = clock
        self.views: dict[str, ObservedRoom] = {}
        self._queue: asyncio.Queue[tuple[str, str, str, str, dict[str, Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def __call__(self, core: Room, outputs: Sequence[Output]) -> None:
        try:
            before = self.views.get(core.name)
            found, view = changes(before, core, outputs)
            if view is None:
                self.views.pop(core.name, None)
            else:
                self.views[core.name] = view
            if not found:
                return
            at = self.clock()
            booking = before.booking if before is not None else _booking(core)
            for change in found:
                self._queue.put_nowait((change.name, booking, core.name, at, change.data))
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._write(), name="room-events-write")
        except Exception:
            log.exception("room events failed")

    async def _write(self) -> None:
        while not self._queue.empty():
            batch = []
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            pool = self._pool()
            if pool is None:
                return
            for attempt in range(5):
                try:
                    async with pool.acquire() as conn, conn.transaction():
                        for name, booking, room, at, data in batch:
                            await events.emit(
                                conn, name, booking_id=booking, room=room, at=at, data=data
                            )
                    break
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    log.warning("room events not written; retrying", exc_info=True)
                    await asyncio.sleep(0.2 * 2**attempt)
            else:
                log.error("room events lost", extra={"count": len(batch)})

    async def close(self) -> None:
        """Write what is queued (a few seconds at most), then stop."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), 5)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
