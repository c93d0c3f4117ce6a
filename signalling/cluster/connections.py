"""A call WebSocket's outbound side, wherever its socket is.

:class:`Connection` is a socket this replica holds: frames go into its
queue, drained by one writer task, so one slow socket never delays a room.
:class:`RemoteConnection` is a client connected to another replica, as the
owner of its room sees it (:mod:`signalling.cluster.link`): what is sent goes to
that replica, which writes it to the socket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from signalling import protocol
from signalling.cluster.link import Cluster, conn_replica
from signalling.keepalive import Keepalive
from signalling.live.room import CallRoom
from wadud.web.auth import RoomGrant

log = logging.getLogger("wadud.signalling")

__all__ = ["ERRORS", "QUEUE_MAX", "AnyConnection", "Connection", "RemoteConnection"]

#: Frames waiting for one client before it counts as stuck and is closed (1013).
QUEUE_MAX = 512
ERRORS = Counter("wadud_call_errors", "Signalling error frames sent, by code.", ["code"])


class Connection:
    """One WebSocket's outbound side: frames in order, then maybe a close."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        room_hint: str | None,
        now: float,
        ref: str = "",
        *,
        ping_interval: float = 15.0,
    ) -> None:
        self.ws = ws
        self.room_hint = room_hint
        #: The room, when this replica owns it; else None and see ``room_name``.
        self.room: CallRoom | None = None
        #: The room this connection joined, wherever its owner runs.
        self.room_name: str | None = None
        self.participant_id: str | None = None
        #: Its pings, silence and TURN credentials' renewal (the service's loop).
        self.keepalive = Keepalive(ping_interval, now)
        #: Set when its deadlines moved earlier (credentials just issued).
        self.rearm = asyncio.Event()
        self.closing = False
        #: The connection's name across replicas (``"{replica}/{n}"``).
        self.ref = ref
        #: The region of the replica the client reached ("": this one's).
        self.region = ""
        self.queue: asyncio.Queue[str | tuple[int, str] | None] = asyncio.Queue()

    @property
    def last_seen(self) -> float:
        """When anything was last heard from the client (loop time)."""
        return self.keepalive.last_seen

    @last_seen.setter
    def last_seen(self, now: float) -> None:
        self.keepalive.heard(now)

    def send(self, frame: dict[str, Any]) -> None:
        if self.closing:
            return
        if frame.get("type") == "joined":
            # Its TURN credentials are this socket's to renew, wherever the
            # room's owner runs (a remote owner's joined arrives here too).
            who = frame.get("participant") or {}
            self.keepalive.issued(
                asyncio.get_running_loop().time(),
                str(who.get("identity", "")),
                frame.get("ice_servers") or [],
            )
            self.rearm.set()
        if frame.get("type") == "error":
            ERRORS.labels(frame["code"]).inc()
        if self.queue.qsize() >= QUEUE_MAX:
            log.warning("signalling client not reading; closing it")
            self.close(1013, "not reading")
            return
        self.queue.put_nowait(protocol.encode(frame))

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.queue.put_nowait((code, reason))

    async def write(self) -> None:
        """Drain the queue onto the socket until a close or the end."""
        try:
            while True:
                item = await self.queue.get()
                if item is None:
                    return
                if isinstance(item, tuple):
                    await self.ws.close(code=item[0], message=item[1].encode()[:120])
                    return
                if self.ws.closed:
                    return
                await self.ws.send_str(item)
        except (ConnectionError, RuntimeError):
            return  # the peer went away; the reader ends too


class RemoteConnection:
    """A client connected to another replica, as the room's owner sees it:
    what is sent goes to that replica, which writes it to the socket."""

    def __init__(self, cluster: Cluster, ref: str, room_name: str) -> None:
        self.cluster = cluster
        self.ref = ref
        self.replica = conn_replica(ref)
        self.room: CallRoom | None = None
        self.room_name: str | None = room_name
        self.participant_id: str | None = None
        #: The region of the replica the client reached (from its messages).
        self.region = ""
        self.closing = False
        self.last_seen = 0.0
        #: Its frames as they arrive, each with the grant a ``join`` carries.
        self.inbox: asyncio.Queue[tuple[str, RoomGrant | None]] = asyncio.Queue()
        self.reader: asyncio.Task[None] | None = None

    def send(self, frame: dict[str, Any]) -> None:
        if self.closing:
            return
        # Error frames are counted where they reach the socket.
        self.cluster.send(self.replica, {"k": "out", "conn": self.ref, "frame": frame})

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            msg = {"k": "close", "conn": self.ref, "code": code, "reason": reason}
            self.cluster.send(self.replica, msg)


AnyConnection = Connection | RemoteConnection
