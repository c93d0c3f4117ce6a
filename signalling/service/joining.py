"""A join into a room this process owns, once its grant passed the service's
checks (:meth:`signalling.service.calls.CallService.admit`).

The room is made here if it is new, on the site of the participant's region
(the token's ``region``, else the region of the replica the client reached);
an anonymous link shows the name the person typed; the room's core decides
(resume, replace, wait or join) and its outputs are carried out. Someone new
in a waiting room is told to whoever waits on it (the notifier tells the
doctor); a resume gets its pending subscribe offer again; the room is placed
in the participant's region now, so their first publish does not wait.

A client that says it is a mobile app (``join.client.platform`` ``ios`` or
``android``) keeps its seat for ``call_resume_grace_app`` when its socket
drops. A booked visit's doctor who comes in while the patient is nowhere in
the room starts the visit: whoever waits on that (the notifier rings the
patient's phone, once per visit) is told.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from signalling import errors, protocol
from signalling.cluster.connections import AnyConnection
from signalling.room.members import MemberState
from signalling.service.rooms import Rooms
from wadud.config import Settings
from wadud.web.auth import RoomGrant

log = logging.getLogger("wadud.signalling")

__all__ = ["Joining"]


class Joining:
    """Joins into the rooms this process owns (``rooms``)."""

    def __init__(
        self,
        settings: Settings,
        rooms: Rooms,
        *,
        on_waiting: Callable[[RoomGrant], Awaitable[None]] | None,
        on_visit_started: Callable[[RoomGrant], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self._rooms = rooms
        #: Told when someone enters a waiting room (the notifier tells the doctor).
        self._on_waiting = on_waiting
        #: Told when a booked visit's doctor comes in and the patient is not
        #: there (the notifier rings the patient's phone).
        self._on_visit_started = on_visit_started

    async def join(self, conn: AnyConnection, frame: protocol.Join, grant: RoomGrant) -> None:
        """A join this replica owns the room of, its grant checked
        (:meth:`signalling.service.calls.CallService.admit`)."""
        region = grant.region or conn.region or self.settings.region
        # Another's join is placing the room in this region: this join is
        # answered once the room has its worker there.
        await self._rooms.sites.placing(grant.room, region)
        now = asyncio.get_running_loop().time()
        if self._rooms.ended_here(grant.room, now):
            # Ended here while the join travelled from another replica.
            raise errors.RoomEnded("this room was ended")
        room = self._rooms.room(grant.room, region)
        if not grant.name:
            # An anonymous link: the name the person typed (or typed before,
            # when resuming) is shown; a token's own name always wins.
            typed = frame.name or (
                room.core.members.typed_name(frame.resume) if frame.resume else ""
            )
            if typed:
                grant = dataclasses.replace(grant, name=typed)
        app = frame.client is not None and frame.client.app
        # An app's grace is never shorter than a browser's.
        settings = self.settings
        grace = max(settings.call_resume_grace_app, settings.call_resume_grace) if app else None
        try:
            result = room.core.join(
                conn,
                grant,
                now,
                ref=frame.id,
                resume=frame.resume,
                grace=grace,
                single=frame.connection == "single",
            )
        except errors.SignallingError:
            if room.core.members.empty:
                self._rooms.drop_room(room)
            raise
        conn.room, conn.participant_id = room, result.participant.id
        conn.room_name = room.name
        room.regions.setdefault(result.participant.id, region)
        self._rooms.apply(room, result.outputs)
        if (
            self._on_waiting is not None
            and result.participant.state is MemberState.WAITING
            and not result.resumed
        ):
            try:
                await self._on_waiting(grant)
            except Exception:  # the join stands; only the heads-up is lost
                log.exception("waiting-room event not recorded", extra={"room": grant.room})
        if (
            self._on_visit_started is not None
            and not result.resumed
            and grant.booking
            and grant.role == "doctor"
            and not any(p.grant.role == "patient" for p in room.core.members.participants.values())
        ):
            try:
                await self._on_visit_started(grant)
            except Exception:  # the join stands; only the patient's ring is lost
                log.exception("visit-started event not recorded", extra={"room": grant.room})
        if result.resumed:
            sub = room.subscribers.get(result.participant.id)
            if sub is not None and sub.offer is not None:
                conn.send(sub.offer)
        region = self._rooms.sites.region_of(room, result.participant.id)
        if self._rooms.sites.placement is not None and region not in room.sites:
            # The room gets a worker in the participant's region now, so
            # their first publish does not wait for placement.
            try:
                await room.media_for(result.participant.id)
            except errors.MediaUnavailable as exc:
                log.warning("call room not placed yet: %s", exc, extra={"room": room.name})
        log.info(
            "call %s",
            "resumed" if result.resumed else result.participant.state.value,
            extra={
                "room": grant.room,
                "participant": result.participant.id,
                "identity": grant.identity,
                "role": grant.role,
            },
        )
