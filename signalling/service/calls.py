"""The call service: the asyncio side of call signalling in one process.

:class:`CallService` serves each call WebSocket (docs/protocol.md "Calls")
from upgrade to close: it reads frames, pings, and gives up on a socket that
never joins or falls silent. A frame is parsed once, where its socket is,
then handled here or routed to its room's owner
(:class:`signalling.cluster.replicas.Replicas`). A ``join``'s token is
checked here (:meth:`CallService.admit`) and the join goes into its room
(:mod:`signalling.service.joining`); control frames go to the room's core
(:meth:`signalling.room.core.Room.receive`), frames that call media to
:mod:`signalling.service.media_frames`. What a room's core returns is
carried out by the rooms this process owns (:mod:`signalling.service.rooms`).
Errors from one frame become an ``error`` frame on that connection only;
nothing a client sends can take another connection down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import WSMsgType, web
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from recording.store import Recordings
from rtc.errors import SdpError
from sfu.control.messages import MediaControl
from sfu.control.rpc import MediaClient, WorkerUnreachable
from sfu.errors import SfuStateError
from signalling import contract, errors, protocol
from signalling.cluster.connections import ERRORS, AnyConnection, Connection
from signalling.cluster.link import Cluster
from signalling.cluster.opening import Claims, Opening, claims_of
from signalling.keepalive import Wake
from signalling.live.room import CallRoom
from signalling.media.placement import Placement
from signalling.room.core import ControlFrame, Room
from signalling.room.members import MemberState
from signalling.room.outputs import InviteDecided, Output
from signalling.service.joining import Joining
from signalling.service.media_frames import MediaFrames
from signalling.service.rooms import Rooms
from wadud.config import Settings
from wadud.errors import WadudError
from wadud.web.auth import RoomGrant
from wadud.web.roles import Action

log = logging.getLogger("wadud.signalling")

#: Seconds a new connection has to send ``join`` (docs/protocol.md).
JOIN_TIMEOUT = 10.0
#: Asks the phone bridge to call (booking id, the asking admin's identity,
#: a number or None for the patient's): the call as the API tells it.
CallPhone = Callable[[str, str, str | None], Awaitable[dict[str, Any]]]

FRAMES = Counter(
    "wadud_call_frames",
    "Signalling frames received, by type (malformed: not a frame at all).",
    ["type"],
)


class _Collector(Collector):
    """Rooms, participants and waiting participants read at scrape time from
    every live service (tests build several apps in one process)."""

    def __init__(self) -> None:
        self.services: weakref.WeakSet[CallService] = weakref.WeakSet()

    def collect(self) -> Iterator[Metric]:
        rooms = GaugeMetricFamily("wadud_call_rooms", "Call rooms with anyone in them.")
        people = GaugeMetricFamily(
            "wadud_call_participants",
            "Participants in rooms (joined: connected; detached: waiting to resume).",
            labels=["state"],
        )
        waiting = GaugeMetricFamily("wadud_call_waiting", "Participants in waiting rooms.")
        conns = GaugeMetricFamily("wadud_call_connections", "Open signalling WebSockets.")
        counts = {MemberState.JOINED: 0, MemberState.DETACHED: 0, MemberState.WAITING: 0}
        nrooms = nconns = 0
        for svc in list(self.services):
            nrooms += len(svc.rooms)
            nconns += len(svc.rooms.connections)
            for room in svc.rooms.values():
                for state in counts:
                    counts[state] += room.core.members.count(state)
        rooms.add_metric([], nrooms)
        people.add_metric(["joined"], counts[MemberState.JOINED])
        people.add_metric(["detached"], counts[MemberState.DETACHED])
        waiting.add_metric([], counts[MemberState.WAITING])
        conns.add_metric([], nconns)
        yield from (rooms, people, waiting, conns)


COLLECTOR = _Collector()
REGISTRY.register(COLLECTOR)


class CallService:
    """The call WebSockets of this process and the frames they bring; the
    rooms it owns, and the connections it holds, are :attr:`rooms`."""

    def __init__(
        self,
        settings: Settings,
        media: Callable[[], MediaControl | None],
        ice_servers: Callable[[str], list[dict[str, Any]]],
        *,
        cluster: Cluster | None = None,
        placement: Placement | None = None,
        media_client: MediaClient | None = None,
        guard: Callable[[RoomGrant], Awaitable[None]] | None = None,
        on_waiting: Callable[[RoomGrant], Awaitable[None]] | None = None,
        on_visit_started: Callable[[RoomGrant], Awaitable[None]] | None = None,
        observe: Callable[[Room, list[Output]], None] | None = None,
        recording_store: Callable[[], Recordings | None] | None = None,
        call_phone: CallPhone | None = None,
        decided: Callable[[str, InviteDecided], Awaitable[None]] | None = None,
        home: str = "",
    ) -> None:
        self.settings = settings
        #: Fresh ``ice_servers`` for an identity (TURN credentials renewed on the socket).
        self.ice_servers = ice_servers
        #: Asks the phone bridge for a call (:mod:`booking.phone_calls`).
        self.call_phone = call_phone
        #: The region whose own control plane this service is (signalling.edge.planes);
        #: empty: the global one. It takes the links homed there, and no others.
        self.home = home
        #: Raises the refusal of a grant that no longer opens its room (the
        #: link's booking or sign-in session is over), at join and resume.
        self.guard = guard
        self.rooms = Rooms(
            settings,
            media,
            ice_servers,
            host=self,
            cluster=cluster,
            placement=placement,
            media_client=media_client,
            observe=observe,
            recording_store=recording_store,
            decided=decided,
        )
        self.joining = Joining(
            settings, self.rooms, on_waiting=on_waiting, on_visit_started=on_visit_started
        )
        self.media_frames = MediaFrames(self.rooms)
        self.join_timeout = JOIN_TIMEOUT
        self.ping_interval = settings.call_ping_interval
        COLLECTOR.services.add(self)

    # -- life --------------------------------------------------------------------

    async def start(self) -> None:
        """Hear the media workers and, with Redis, join the cluster."""
        await self.rooms.start()

    def shutdown(self) -> None:
        """The server is stopping: every client is told to come back (1001)."""
        for conn in list(self.rooms.connections):
            conn.close(errors.CLOSE_GOING_AWAY, "server shutting down")

    async def close(self) -> None:
        """Stop timers, negotiations and queued media calls (the app's cleanup,
        before the media worker closes)."""
        await self.rooms.close()
        COLLECTOR.services.discard(self)

    # -- the WebSocket ---------------------------------------------------------

    async def serve(
        self,
        request: web.Request,
        ws: web.WebSocketResponse | None = None,
        opening: Opening | None = None,
    ) -> web.WebSocketResponse:
        """One call WebSocket from upgrade to close (docs/protocol.md "Calls").
        ``ws`` and ``opening``: a connection signalling.edge.planes upgraded, and
        its first message as read there to choose this plane."""
        if ws is None:
            ws = web.WebSocketResponse(max_msg_size=self.settings.call_max_frame_bytes)
            await ws.prepare(request)
        loop = asyncio.get_running_loop()
        replicas = self.rooms.replicas
        ref = replicas.cluster.new_ref() if replicas is not None else ""
        conn = Connection(
            ws, request.query.get("room"), loop.time(), ref, ping_interval=self.ping_interval
        )
        self.rooms.connections.add(conn)
        if replicas is not None:
            replicas.connected(conn)
        writer = asyncio.create_task(conn.write(), name="call-ws-writer")
        pinger = asyncio.create_task(self._pinger(conn), name="call-ws-ping")
        deadline = loop.time() + self.join_timeout
        try:
            while not ws.closed:
                joined = conn.room is not None or conn.room_name is not None
                timeout = None if joined else deadline - loop.time()
                if timeout is not None and timeout <= 0:
                    self._join_timed_out(conn)
                    break
                read, opening = opening, None
                try:
                    msg = read.message if read is not None else await ws.receive(timeout=timeout)
                except TimeoutError:
                    if conn.room is None and conn.room_name is None:
                        self._join_timed_out(conn)
                        break
                    continue
                if msg.type == WSMsgType.TEXT:
                    conn.last_seen = loop.time()
                    try:
                        await self.receive(conn, msg.data, opening=read)
                    except Exception:
                        # Nothing one frame does may end the connection.
                        log.exception("call frame failed")
                        failed = errors.SignallingError("the server failed; try again")
                        conn.send(protocol.error_from(failed))
                elif msg.type == WSMsgType.BINARY:
                    FRAMES.labels("malformed").inc()
                    conn.send(
                        protocol.error_from(protocol.BadFrame("frames are JSON text, not binary"))
                    )
                else:
                    # CLOSE, CLOSING, CLOSED, or ERROR (a frame over
                    # call_max_frame_bytes: aiohttp has sent 1009 already).
                    if msg.type == WSMsgType.ERROR:
                        ERRORS.labels("too-large").inc()
                    break
        finally:
            pinger.cancel()
            self.rooms.disconnected(conn)
            conn.queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, TimeoutError):
                await asyncio.wait_for(writer, 15.0)
            if not writer.done():
                writer.cancel()
        return ws

    def _join_timed_out(self, conn: Connection) -> None:
        exc = errors.JoinTimeout(f"no join within {self.join_timeout:g} seconds")
        conn.send(protocol.error_from(exc))
        conn.close(errors.CLOSE_TIMEOUT, "join timeout")

    async def _pinger(self, conn: Connection) -> None:
        """The connection's own deadlines (:class:`signalling.keepalive.Keepalive`):
        pings, the silence that ends it, its TURN credentials' renewal."""
        loop = asyncio.get_running_loop()
        keep = conn.keepalive
        while not conn.closing:
            conn.rearm.clear()
            due = keep.get_timer()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(due):
                    await conn.rearm.wait()
            joined = conn.room is not None or conn.room_name is not None
            for wake in keep.handle_timer(loop.time(), joined, due):
                if wake is Wake.TIMEOUT:
                    log.info("call client silent; disconnecting", extra={"room": conn.room_name})
                    conn.close(errors.CLOSE_TIMEOUT, "ping timeout")
                    # Do not wait for a dead peer's close handshake to detach:
                    # the resume grace runs from when the silence ran out,
                    # not from however late a busy loop woke to see it.
                    self.rooms.disconnected(conn, since=keep.silent_at)
                    return
                if wake is Wake.PING:
                    conn.send(protocol.reply("ping"))
                elif wake is Wake.RENEW and keep.identity is not None:
                    fresh = self.ice_servers(keep.identity)
                    keep.issued(loop.time(), keep.identity, fresh)
                    if fresh:
                        conn.send(protocol.reply("ice_servers", ice_servers=fresh))

    # -- frames ------------------------------------------------------------------

    async def receive(
        self,
        conn: AnyConnection,
        text: str,
        grant: RoomGrant | None = None,
        opening: Opening | None = None,
    ) -> None:
        """One text frame: parsed here, once, then handled or routed to its
        room's owner; errors are answered on this connection only. ``grant``:
        a ``join`` forwarded by another replica, its token decoded there.
        ``opening``: ``text`` is the connection's first frame, which
        signalling.edge.planes parsed already (and decoded a join's token)."""
        conn.last_seen = asyncio.get_running_loop().time()
        ref: str | None = None
        read = opening.frame if opening is not None else None
        claims = opening.claims if opening is not None else None
        try:
            try:
                if isinstance(read, protocol.ProtocolError):
                    raise read
                frame = protocol.parse(text) if read is None else read
            except protocol.ProtocolError:
                FRAMES.labels("malformed").inc()
                raise
            ref = frame.id
            replicas = self.rooms.replicas
            if replicas is None:
                await self.handle(conn, frame, grant, claims)
            else:
                await replicas.route(conn, frame, text, grant, claims)
        except Exception as exc:
            conn.send(protocol.error_from(self._refusal(exc), ref))
            if isinstance(exc, errors.SignallingError) and exc.close_code is not None:
                conn.close(exc.close_code, exc.code)

    def _refusal(self, exc: Exception) -> errors.SignallingError:
        """What a frame's failure tells its sender."""
        match exc:
            case errors.SignallingError():
                return exc
            case SdpError():
                return errors.BadSdp(str(exc) or "bad SDP")
            case SfuStateError():
                return errors.BadState(str(exc) or "not in a state for this")
            case WorkerUnreachable():
                log.warning("media worker unavailable: %s", exc)
                self.rooms.wake_watcher()
                return errors.MediaUnavailable(str(exc))
        log.error("call frame failed", exc_info=exc)
        return errors.SignallingError("the server failed; try again")

    async def admit(
        self, conn: AnyConnection, frame: protocol.Join, claims: Claims | None = None
    ) -> RoomGrant:
        """The grant of a ``join``'s token, once the token is good, for this
        link's room, still open (``guard``) and the room not ended.
        ``claims``: the token as signalling.edge.planes decoded it already."""
        if claims is None:
            claims = claims_of(self.settings, frame.token)
        elif isinstance(claims, errors.BadRoomToken):
            raise claims
        grant = claims
        if isinstance(conn, Connection) and conn.room_hint not in (None, grant.room):
            raise errors.WrongRoom("the token is for another room than this link's")
        if grant.home != self.home:
            where = f"region {grant.home}'s own" if grant.home else "the global"
            raise errors.OtherRegion(
                f"this visit is held in {where} control plane; join it through that"
                " region's servers",
                home=grant.home,
            )
        if self.guard is not None:
            await self.guard(grant)
        if await self.rooms.is_ended(grant.room, asyncio.get_running_loop().time()):
            raise errors.RoomEnded("this room was ended")
        return grant

    async def handle(
        self,
        conn: AnyConnection,
        frame: protocol.ClientFrame,
        grant: RoomGrant | None = None,
        claims: Claims | None = None,
    ) -> None:
        """A frame for a room this replica owns, or for none yet (``grant``:
        a ``join``'s, when :meth:`admit` passed it on its way here; else
        ``claims``: its token decoded, if it was already)."""
        # Counted where handled, so a frame routed to another replica counts once.
        FRAMES.labels(frame.type).inc()
        if isinstance(frame, protocol.Ping):
            # Unix milliseconds (an integer): a phone whose clock is off
            # corrects it (half the round trip later than this).
            conn.send(protocol.reply("pong", frame.id, server_time=int(time.time() * 1000)))
            return
        if isinstance(frame, protocol.Pong):
            return
        if isinstance(frame, protocol.Join):
            if conn.room is not None:
                raise protocol.BadFrame("already joined", ref=frame.id)
            if frame.protocol is not None and frame.protocol not in contract.PROTOCOLS:
                raise errors.UnsupportedProtocol(
                    f"this server speaks protocol {', '.join(map(str, contract.PROTOCOLS))}",
                    supported=list(contract.PROTOCOLS),
                )
            if grant is None:
                grant = await self.admit(conn, frame, claims)
            await self.joining.join(conn, frame, grant)
            return
        room = conn.room
        if room is None or self.rooms.get(room.name) is not room:
            raise errors.NotJoined("join the room first")
        if isinstance(frame, protocol.CallPhone):
            await self._call_phone(room, conn, frame)
        elif isinstance(frame, ControlFrame):
            self.rooms.apply(room, room.core.receive(conn, frame))
        else:
            await self.media_frames.handle(room, conn, frame)

    async def _call_phone(
        self, room: CallRoom, conn: AnyConnection, frame: protocol.CallPhone
    ) -> None:
        """``call_phone``: an admin of a booked visit, where a bridge places calls."""
        grant = room.core.members.check(conn, Action.INVITE).grant
        if not grant.booking or not room.core.phone_calls or self.call_phone is None:
            raise errors.PhoneCallRefused("no phone bridge places calls for this room")
        try:
            made = await self.call_phone(grant.booking, grant.identity, frame.number)
        except WadudError as exc:
            if exc.http_status >= 500:
                raise
            raise errors.PhoneCallRefused(str(exc) or exc.title) from None
        conn.send(protocol.reply("ok", frame.id, call=made))
