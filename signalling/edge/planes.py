"""Which control plane a call WebSocket belongs to.

A deployment has one plane, the global Redis (``redis_url``) that every
region reaches. A region may also have its own (``redis_region_url``): a
Redis in the region, which its ``wadud api`` replicas and ``wadud media``
nodes use for the rooms whose every participant is there. The room token
says which: its ``home`` claim names the region whose plane holds the room
(wadud.web.auth.RoomGrant.home); no claim, the global one. Each plane is a whole
:class:`~signalling.service.calls.CallService` with its own cluster, placement and
media client, so a room lives in one plane only, and a region cut off from
the global Redis keeps owning, placing and forwarding the rooms of its own
plane (docs/operations.md, "A region cut off").

:class:`CallPlanes` reads a connection's first frame (a ``join``, whose
token names the room) and hands the connection to that room's plane with
the frame parsed and the token decoded (:class:`signalling.cluster.opening.Opening`):
the plane checks the token's claims against the room and refuses a home
that is not its own. With one plane it hands every connection over at once.
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web

from signalling import errors, protocol
from signalling.cluster.opening import Opening
from signalling.live.room import CallRoom
from signalling.service.calls import JOIN_TIMEOUT, CallService
from wadud.config import Settings


class CallPlanes:
    """The call services of this replica by plane: ``global_`` for rooms with
    no home, ``regional`` (when ``redis_region_url`` is set) for the rooms
    homed in this replica's region."""

    def __init__(
        self, settings: Settings, global_: CallService, regional: CallService | None = None
    ) -> None:
        self.settings = settings
        self.global_ = global_
        self.regional = regional
        self.join_timeout = JOIN_TIMEOUT

    def __iter__(self) -> Iterator[CallService]:
        yield self.global_
        if self.regional is not None:
            yield self.regional

    def room(self, name: str) -> CallRoom | None:
        """The room of that name this replica owns, in whichever plane."""
        for service in self:
            found = service.rooms.get(name)
            if found is not None:
                return found
        return None

    async def serve(self, request: web.Request) -> web.WebSocketResponse:
        """``GET /ws``: the connection, given to the plane its first frame names."""
        if self.regional is None:
            return await self.global_.serve(request)
        ws = web.WebSocketResponse(max_msg_size=self.settings.call_max_frame_bytes)
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=self.join_timeout)
        except TimeoutError:
            # As a service would answer it, without waiting out a second timeout.
            late = errors.JoinTimeout(f"no join within {self.join_timeout:g} seconds")
            await ws.send_json(protocol.error_from(late))
            await ws.close(code=errors.CLOSE_TIMEOUT, message=b"join timeout")
            return ws
        opening = Opening.read(self.settings, first)
        return await self.plane_of(opening).serve(request, ws, opening)

    def plane_of(self, opening: Opening) -> CallService:
        """The service of the room a first frame joins. Anything that is not a
        good join, or homed in another region, goes to the global plane, which
        refuses it as it would (a home not its own: ``other-region``)."""
        if opening.home and opening.home == self.settings.region and self.regional is not None:
            return self.regional
        return self.global_
