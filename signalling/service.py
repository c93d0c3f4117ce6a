"""The asyncio side of call signalling: rooms per process, one session per
WebSocket, and the media worker driven through :class:`sfu.control.MediaControl`.

The room logic is in :mod:`signalling.room` (sans-I/O); this module feeds it
frames, dropped connections and the loop's clock, and carries out what it
returns:

* frames go into each connection's outbound queue, drained by one writer
  task per connection, so one slow socket never delays a room;
* media calls for a room go through one :class:`MediaLane`, one at a time in
  the order asked, so a ``leave`` queued by a replacement is done before the
  newcomer's ``publish``;
* each participant's subscribe connection is renegotiated by its
  :class:`Subscriber`, which never sends a second offer before the answer to
  the first and folds every change made meanwhile into the next one;
* media events (a transport's state, the active speaker) become frames.

Errors from one frame become an ``error`` frame on that connection only;
nothing a client sends can take another connection down.

With Redis (``wadud api`` replicas), a room lives on one replica at a time,
its owner (:mod:`signalling.cluster`): a connection on another replica has its
frames forwarded there and receives what the owner sends, through
:class:`RemoteConnection` handles on the owner's side. The room's media
worker is chosen by :mod:`signalling.placement` and driven over Redis
(:mod:`sfu.rpc`); when it dies or drains, the owner places the room again and
tells everyone to reconnect media.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import partial
from typing import Any, Literal, TypeVar

from aiohttp import WSMsgType, web
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rtc.errors import SdpError
from rtc.sdp import SessionDescription
from sfu.control import (
    ActiveSpeaker,
    ConnectionQuality,
    LayersWanted,
    MediaControl,
    MediaEvent,
    RelayState,
    Restart,
    TrackInfo,
    TrackPaused,
    TransportState,
)
from sfu.errors import SfuStateError
from sfu.rpc import MediaClient
from sfu.rpc import MediaUnavailable as WorkerUnavailable
from signalling import errors, replicas, sites
from signalling import protocol as p
from signalling.cluster import Cluster
from signalling.placement import Placed, Placement
from signalling.replicas import RemoteConnection, _Moved
from signalling.room import (
    Close,
    MediaCloseRoom,
    MediaLeave,
    Output,
    Resubscribe,
    Room,
    Send,
    State,
    track_info,
)
from signalling.sites import Site
from wadud.auth import InvalidToken, RoomGrant, decode_room_token
from wadud.config import Settings

log = logging.getLogger("wadud.signalling")
T = TypeVar("T")

#: Seconds a new connection has to send ``join`` (docs/protocol.md).
JOIN_TIMEOUT = 10.0
#: Server pings a client may leave unanswered before it is disconnected.
MISSED_PINGS = 3
#: Frames waiting for one client before it counts as stuck and is closed (1013).
QUEUE_MAX = 512
#: How long an ended room's name keeps refusing joins (``room-ended``).
ENDED_MEMORY = 24 * 3600.0
ENDED_MAX = 100_000
FRAMES = Counter(
    "wadud_call_frames",
    "Signalling frames received, by type (malformed: not a frame at all).",
    ["type"],
)
ERRORS = Counter("wadud_call_errors", "Signalling error frames sent, by code.", ["code"])
MEDIA_EVENTS = Counter(
    "wadud_call_media_events", "Media worker events received, by type and state.", ["type", "state"]
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
        counts = {State.JOINED: 0, State.DETACHED: 0, State.WAITING: 0}
        nrooms = nconns = 0
        for svc in list(self.services):
            nrooms += len(svc.rooms)
            nconns += len(svc.connections)
            for room in svc.rooms.values():
                for state in counts:
                    counts[state] += room.core.count(state)
        rooms.add_metric([], nrooms)
        people.add_metric(["joined"], counts[State.JOINED])
        people.add_metric(["detached"], counts[State.DETACHED])
        waiting.add_metric([], counts[State.WAITING])
        conns.add_metric([], nconns)
        yield from (rooms, people, waiting, conns)


COLLECTOR = _Collector()
REGISTRY.register(COLLECTOR)


# -- connections ---------------------------------------------------------------


class Connection:
    """One WebSocket's outbound side: frames in order, then maybe a close."""

    def __init__(
        self, ws: web.WebSocketResponse, room_hint: str | None, now: float, ref: str = ""
    ) -> None:
        self.ws = ws
        self.room_hint = room_hint
        #: The room, when this replica owns it; else None and see ``room_name``.
        self.room: CallRoom | None = None
        #: The room this connection joined, wherever its owner runs.
        self.room_name: str | None = None
        self.participant_id: str | None = None
        self.last_seen = now
        self.closing = False
        #: The connection's name across replicas (``"{replica}/{n}"``).
        self.ref = ref
        #: The region of the replica the client reached ("": this one's).
        self.region = ""
        self.queue: asyncio.Queue[str | tuple[int, str] | None] = asyncio.Queue()

    def send(self, frame: dict[str, Any]) -> None:
        if self.closing:
            return
        if frame.get("type") == "error":
            ERRORS.labels(frame["code"]).inc()
        if self.queue.qsize() >= QUEUE_MAX:
            log.warning("signalling client not reading; closing it")
            self.close(1013, "not reading")
            return
        self.queue.put_nowait(p.encode(frame))

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


AnyConnection = Connection | RemoteConnection


# -- media ---------------------------------------------------------------------


class MediaLane:
    """A room's media calls, one at a time, in the order asked (FIFO).

    The caller that needs the result awaits the future; background work
    (``leave`` after a replacement) does not, and its failure is logged. A
    caller that goes away does not cancel a call already queued: the worker
    still has to hear it."""

    def __init__(self, on_idle: Callable[[MediaLane], None]) -> None:
        self._queue: deque[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._on_idle = on_idle

    @property
    def busy(self) -> bool:
        return self._task is not None

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def submit(self, call: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((call, fut))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="media-lane")
        return fut

    def background(self, what: str, call: Callable[[], Awaitable[Any]]) -> None:
        def done(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            if isinstance(exc, SfuStateError):
                # Already gone on the media side (the worker timed it out).
                log.debug("media %s: %s", what, exc)
            elif exc is not None:
                log.error("media %s failed", what, exc_info=exc)

        self.submit(call).add_done_callback(done)

    async def _run(self) -> None:
        try:
            while self._queue:
                call, fut = self._queue.popleft()
                try:
                    result = await call()
                except asyncio.CancelledError:
                    fut.cancel()
                    raise
                except Exception as exc:
                    if not fut.done():
                        fut.set_exception(exc)
                else:
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._task = None
            for _, fut in self._queue:
                fut.cancel()
            self._queue.clear()
            self._on_idle(self)


class Subscriber:
    """One participant's subscribe negotiation (docs/protocol.md "Media"):
    at most one offer outstanding; changes while it is out are folded into
    the next offer, made once the answer is in."""

    def __init__(self, room: CallRoom, participant_id: str) -> None:
        self.room = room
        self.pid = participant_id
        #: The offer frame awaiting an answer (sent again on a resume).
        self.offer: dict[str, Any] | None = None
        self.dirty = False
        self.closed = False
        #: The track ids the worker was last asked to send.
        self.asked: tuple[str, ...] = ()
        #: Ask the worker even if the set did not change (after a failure).
        self.force = False
        #: How the next offer renews the transport: new ICE credentials, or a
        #: new transport (sfu.control.MediaControl.subscribe).
        self.renew: Restart | None = None
        self._task: asyncio.Task[None] | None = None

    def kick(self) -> None:
        self.dirty = True
        if self._task is None and self.offer is None and not self.closed:
            self._task = asyncio.create_task(self._run(), name=f"subscribe-{self.pid}")

    def close(self) -> None:
        self.closed = True

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def restart(self, how: Restart | None = None) -> None:
        """Offer again even if the set of tracks did not change.

        ``None``: the worker's subscribe transport failed (ICE, DTLS or
        consent) and the worker starts a new one on the next subscribe.
        ``"transport"``: the client asks for a new one. Both forget the offer
        that was waiting: the client gets an offer for a fresh connection.
        ``"ice"``: the client restarts ICE; the next offer (after the one
        outstanding, if any, is answered) has new ICE credentials.
        """
        if how != "ice":
            self.offer = None
        if how == "transport" or self.renew is None:
            self.renew = how
        self.force = True
        self.kick()

    async def _run(self) -> None:
        retries = 0
        try:
            while self.dirty and self.offer is None and not self.closed:
                self.dirty = False
                wanted = self.room.core.wanted(self.pid)
                ids = tuple(t.track_id for t in wanted)
                if ids == self.asked and not self.force:
                    continue
                renew = self.renew
                try:
                    service = self.room.service
                    media = await service.media_for(self.room, self.pid)
                    sdp = await self.room.media_call(
                        partial(service.subscribe_relayed, self.room, media, self.pid, ids, renew)
                    )
                except SfuStateError as exc:
                    # A track went between reading the room and the worker's
                    # turn: read the room again (bounded; the next change kicks).
                    log.debug("subscribe %s: %s", self.pid, exc)
                    retries += 1
                    self.dirty = retries < 3
                    continue
                except SdpError as exc:
                    log.warning("subscribe offer for %s failed: %s", self.pid, exc)
                    continue
                self.asked, self.force = ids, False
                if self.renew == renew:
                    self.renew = None
                if sdp is None or self.closed:
                    continue
                self.offer = p.reply("offer", sdp=sdp, tracks=offer_tracks(sdp, wanted))
                self.room.send_to(self.pid, self.offer)
        except errors.MediaUnavailable:
            log.warning("no media worker: cannot offer tracks to %s", self.pid)
        except Exception:
            log.exception("subscribe negotiation for %s failed", self.pid)
        finally:
            self._task = None

    async def answer(self, sdp: str) -> None:
        if self.offer is None:
            raise errors.BadState("no offer is waiting for an answer")
        media = await self.room.service.media_for(self.room, self.pid)
        await self.room.media_call(partial(media.answer, self.room.name, self.pid, sdp))
        self.offer = None
        if self.dirty:
            self.kick()


def offer_tracks(sdp: str, wanted: Iterable[TrackInfo]) -> list[dict[str, Any]]:
    """What each live m= section of a subscribe offer carries: the section's
    ``a=msid`` track id (RFC 8830 section 2) is one of ours."""
    by_id = {t.track_id: t for t in wanted}
    out: list[dict[str, Any]] = []
    try:
        desc = SessionDescription.parse(sdp)
    except SdpError:
        log.error("the worker's own offer does not parse")
        return out
    for media in desc.media:
        if media.port == 0 or media.mid is None:
            continue
        for msid in media.msids:
            t = by_id.get(msid.track_id or "") or by_id.get(msid.stream_id)
            if t is not None:
                out.append(
                    {
                        "mid": media.mid,
                        "track_id": t.track_id,
                        "participant": t.participant,
                        "kind": t.kind,
                        "source": t.source,
                    }
                )
                break
    return out


# -- rooms ---------------------------------------------------------------------


class CallRoom:
    """A live room: its sans-I/O core, timer, subscribers and media lane."""

    def __init__(self, service: CallService, core: Room, lane: MediaLane, region: str) -> None:
        self.service = service
        self.core = core
        self.name = core.name
        self.lane = lane
        self.subscribers: dict[str, Subscriber] = {}
        self.timer: asyncio.TimerHandle | None = None
        #: The room's home region (its first participant's).
        self.region = region
        #: Each participant's region, fixed at their first join (cluster mode).
        self.regions: dict[str, str] = {}
        #: The room's worker per region, and their relays (signalling.sites).
        self.sites: dict[str, Site] = {}
        #: Each participant's last connection quality (sent to newcomers).
        self.quality: dict[str, ConnectionQuality] = {}
        #: Participants whose media is reconnecting (docs/protocol.md, ``participant_media``).
        self.reconnecting: set[str] = set()

    def media_call(self, call: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        return self.lane.submit(call)

    def send_to(self, participant_id: str, frame: dict[str, Any]) -> None:
        who = self.core.get(participant_id)
        if (
            who is not None
            and isinstance(who.conn, Connection | RemoteConnection)
            and who.state is State.JOINED
        ):
            who.conn.send(frame)

    def media_state(self, participant_id: str, state: Literal["reconnecting", "connected"]) -> None:
        """Tell everyone else that a participant's media is reconnecting, or
        back; "connected" is sent only after a "reconnecting"."""
        if state == "reconnecting":
            self.reconnecting.add(participant_id)
        elif participant_id in self.reconnecting:
            self.reconnecting.discard(participant_id)
        else:
            return
        frame = p.ParticipantMedia(participant_id=participant_id, state=state).frame()
        for other in self.core.present():
            if other.id != participant_id:
                self.send_to(other.id, frame)

    def subscriber(self, participant_id: str) -> Subscriber:
        sub = self.subscribers.get(participant_id)
        if sub is None:
            sub = self.subscribers[participant_id] = Subscriber(self, participant_id)
        return sub


class CallService:
    """Every room this process owns, the connections it holds, and (with
    Redis) its part in the cluster of replicas."""

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
        observe: Callable[[Room, list[Output]], None] | None = None,
    ) -> None:
        self.settings = settings
        self._get_media = media
        self._listening: set[int] = set()
        self._ice_servers = ice_servers
        self.cluster = cluster
        self.placement = placement
        self.media_client = media_client
        #: Raises the refusal of a grant that no longer opens its room (the
        #: link's booking or sign-in session is over), at join and resume.
        self.guard = guard
        #: Told when someone enters a waiting room (the notifier tells the doctor).
        self.on_waiting = on_waiting
        #: Shown each room's outputs before they are carried out, its state
        #: already changed (signalling.roomevents: the clinics' webhooks).
        self.observe = observe
        self.rooms: dict[str, CallRoom] = {}
        self.lanes: dict[str, MediaLane] = {}
        self.ended: dict[str, float] = {}
        self.connections: set[Connection] = set()
        #: This replica's connections by reference (cluster messages name them).
        self.local: dict[str, Connection] = {}
        #: Other replicas' connections in rooms this replica owns.
        self.remote: dict[str, RemoteConnection] = {}
        #: The last known owner of rooms this replica forwards to.
        self.owners: dict[str, str] = {}
        #: Placed workers seen alive but missing from the registry, since when.
        self.unregistered: dict[Placed, float] = {}
        #: Negotiations still running for subscribers whose room is gone.
        self._orphans: weakref.WeakSet[asyncio.Task[None]] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Rooms whose snapshot must be written (None: forget it).
        self._dirty: dict[str, CallRoom | None] = {}
        self._dirty_event = asyncio.Event()
        self._watch_now = asyncio.Event()
        self._closed = False
        self.join_timeout = JOIN_TIMEOUT
        self.ping_interval = settings.call_ping_interval
        COLLECTOR.services.add(self)

    # -- cluster life ----------------------------------------------------------

    async def start(self) -> None:
        """Join the cluster (with Redis): listen for other replicas' messages,
        watch leases, replicas and workers, and write room snapshots."""
        if self.media_client is not None:
            self.media_client.add_listener(self._on_worker_message)
        if self.cluster is None:
            return
        await self.cluster.start(self._on_cluster)
        self._spawn(self._watcher(), "call-cluster-watch")
        self._spawn(self._writer(), "call-cluster-write")

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the media worker ------------------------------------------------------

    def media(self) -> MediaControl:
        """The in-process worker (``wadud serve``)."""
        media = self._get_media()
        if media is None:
            raise errors.MediaUnavailable("no media worker is running")
        if id(media) not in self._listening:
            # Listen on first use: the worker may be installed after us.
            self._listening.add(id(media))
            media.add_listener(self.on_media_event)
        return media

    def _media_of(self, room: CallRoom, pid: str | None = None) -> MediaControl | None:
        """The media control a participant's transports are on now (for
        background calls), if the room has one in their region."""
        if self.placement is None:
            media = self._get_media()
            return self.media() if media is not None else None
        site = room.sites.get(self._region_of(room, pid)) if pid is not None else None
        return site.media if site is not None else None

    async def subscribe_relayed(
        self,
        room: CallRoom,
        media: MediaControl,
        pid: str,
        ids: tuple[str, ...],
        restart: Restart | None = None,
    ) -> str | None:
        """``subscribe`` after the relays it needs are set (in the room's lane)."""
        if room.sites:
            await self.sync_relays(room)
        if restart is None:
            return await media.subscribe(room.name, pid, ids)
        return await media.subscribe(room.name, pid, ids, restart)

    def on_media_event(self, event: MediaEvent, worker: str | None = None) -> None:
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
                    self._watch_now.set()
                return
            room = self.rooms.get(event.room)
            if isinstance(event, TrackPaused | LayersWanted | ConnectionQuality):
                MEDIA_EVENTS.labels(event.type, "").inc()
                if room is not None:
                    self._weak_network_event(room, event, worker)
                return
            if isinstance(event, ActiveSpeaker):
                MEDIA_EVENTS.labels("active_speaker", "").inc()
                if room is not None and self._speaker_counts(room, worker):
                    self.apply(room, room.core.speaker(event.participant))
            elif isinstance(event, TransportState):
                MEDIA_EVENTS.labels("transport_state", event.state).inc()
                if (
                    room is not None
                    and event.direction == "subscribe"
                    and event.state == "failed"
                    and (who := room.core.get(event.participant)) is not None
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
            frame = p.TrackPaused(
                track_id=event.track_id, paused=event.paused, reason=event.reason
            ).frame()
            room.send_to(event.participant, frame)
        elif isinstance(event, LayersWanted):
            # The publisher's own site decides (relay links count there).
            site = room.sites.get(self._region_of(room, event.participant))
            if worker is not None and site is not None and site.placed.worker != worker:
                return
            encodings = [p.Encoding(rid=r, active=r in event.active_rids) for r in event.rids]
            if encodings:
                frame = p.SetEncodings(track_id=event.track_id, encodings=encodings).frame()
                room.send_to(event.participant, frame)
        else:
            known = room.quality.get(event.participant)
            if known is not None and known.quality == event.quality:
                return
            room.quality[event.participant] = event
            frame = p.ConnectionQuality(
                participant_id=event.participant, quality=event.quality
            ).frame()
            for other in room.core.present():
                room.send_to(other.id, frame)

    # -- rooms -----------------------------------------------------------------

    def _lane(self, name: str) -> MediaLane:
        lane = self.lanes.get(name)
        if lane is None:

            def idle(done: MediaLane) -> None:
                if name not in self.rooms and self.lanes.get(name) is done:
                    del self.lanes[name]

            lane = self.lanes[name] = MediaLane(idle)
        return lane

    def room(self, name: str, region: str = "") -> CallRoom:
        room = self.rooms.get(name)
        if room is None:
            s = self.settings
            core = Room(
                name,
                max_participants=s.call_max_participants,
                resume_grace=s.call_resume_grace,
                ping_interval=s.call_ping_interval,
                ice_servers=self._ice_servers,
            )
            room = CallRoom(self, core, self._lane(name), region or s.region)
            self.rooms[name] = room
        return room

    def _drop_room(self, room: CallRoom, *, forget: bool = True) -> None:
        """Stop running ``room`` here. ``forget``: the room is over (its
        snapshot, lease and placement go); else another replica has it now."""
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            if self.cluster is not None and forget:
                self._dirty[room.name] = None
                self._dirty_event.set()
        if room.timer is not None:
            room.timer.cancel()
            room.timer = None
        for sub in room.subscribers.values():
            self._retire(sub)
        room.subscribers.clear()
        if not room.lane.busy and self.lanes.get(room.name) is room.lane:
            del self.lanes[room.name]
        for conn in self._conns_of(room):
            conn.room = None
            if isinstance(conn, RemoteConnection) and forget:
                self.remote.pop(conn.ref, None)

    def _conns_of(self, room: CallRoom) -> list[AnyConnection]:
        out: list[AnyConnection] = [c for c in self.connections if c.room is room]
        out += [c for c in self.remote.values() if c.room is room]
        return out

    def _retire(self, sub: Subscriber) -> None:
        sub.close()
        if sub.task is not None:
            self._orphans.add(sub.task)

    def _remember_ended(self, name: str, now: float) -> None:
        self.ended[name] = now
        while len(self.ended) > ENDED_MAX:
            del self.ended[next(iter(self.ended))]
        if self.cluster is not None:
            self._spawn(self.cluster.mark_ended(name), "call-mark-ended")

    async def _is_ended(self, name: str, now: float) -> bool:
        when = self.ended.get(name)
        if when is not None:
            if now - when <= ENDED_MEMORY:
                return True
            del self.ended[name]
        return self.cluster is not None and await self.cluster.is_ended(name)

    def apply(self, room: CallRoom, outputs: Iterable[Output]) -> None:
        """Carry out what the room core asked for, then rearm its timer."""
        loop = asyncio.get_running_loop()
        if self.observe is not None:
            outputs = list(outputs)
            self.observe(room.core, outputs)
        closed = False
        for out in outputs:
            match out:
                case Send(conn, frame):
                    if isinstance(conn, Connection | RemoteConnection):
                        conn.send(frame)
                        if frame.get("type") == "joined":
                            # Joined now (at once, admitted from the waiting
                            # room, resumed): the bars of those already here,
                            # whose quality was sent while this one waited.
                            for pid, known in room.quality.items():
                                conn.send(
                                    p.ConnectionQuality(
                                        participant_id=pid, quality=known.quality
                                    ).frame()
                                )
                case Close(conn, code, reason):
                    if isinstance(conn, Connection | RemoteConnection):
                        conn.close(code, reason)
                case MediaLeave(pid):
                    room.quality.pop(pid, None)
                    sub = room.subscribers.pop(pid, None)
                    if sub is not None:
                        self._retire(sub)
                    media = self._media_of(room, pid)
                    if media is not None:
                        room.lane.background("leave", partial(media.leave, room.name, pid))
                        self._relays_changed(room)
                case MediaCloseRoom():
                    if room.core.ended:
                        self._remember_ended(room.name, loop.time())
                    controls = (
                        [s.media for s in room.sites.values()]
                        if self.placement is not None
                        else [m for m in [self._media_of(room)] if m is not None]
                    )
                    for media in controls:
                        room.lane.background("close_room", partial(media.close_room, room.name))
                    if room.sites:
                        self._spawn(self._release_all(room), "call-release")
                    closed = True
                case Resubscribe(pids):
                    for pid in pids:
                        if not closed:
                            room.subscriber(pid).kick()
        if closed:
            self._drop_room(room)
        else:
            self._arm(room)
            self._mark(room)

    def _arm(self, room: CallRoom) -> None:
        if room.timer is not None:
            room.timer.cancel()
            room.timer = None
        when = room.core.get_timer()
        if when is not None:
            room.timer = asyncio.get_running_loop().call_at(when, self._on_timer, room)

    def _on_timer(self, room: CallRoom) -> None:
        room.timer = None
        try:
            self.apply(room, room.core.handle_timer(asyncio.get_running_loop().time()))
        except Exception:
            log.exception("room timer failed")

    # -- connections -----------------------------------------------------------

    def disconnected(self, conn: AnyConnection) -> None:
        """The connection is over, however it ended."""
        if isinstance(conn, Connection):
            self.connections.discard(conn)
            self.local.pop(conn.ref, None)
        else:
            self.remote.pop(conn.ref, None)
            if conn.reader is not None:
                conn.reader.cancel()
        room = conn.room
        if room is not None and self.rooms.get(room.name) is room:
            self.apply(room, room.core.disconnect(conn, asyncio.get_running_loop().time()))
        elif self.cluster is not None and conn.room_name is not None:
            # Its room runs elsewhere: the owner hears of it.
            self._spawn(self._forward_gone(conn.room_name, conn.ref), "call-gone")

    async def on_text(self, conn: AnyConnection, text: str) -> None:
        """One text frame: parse, handle, and answer errors on this connection only."""
        conn.last_seen = asyncio.get_running_loop().time()
        ref: str | None = None
        try:
            try:
                frame = p.parse(text)
            except p.ProtocolError:
                FRAMES.labels("malformed").inc()
                raise
            FRAMES.labels(frame.type).inc()
            ref = frame.id
            await self.handle(conn, frame)
        except (asyncio.CancelledError, _Moved):
            raise
        except errors.SignallingError as exc:
            conn.send(p.error_from(exc, ref))
            if exc.close_code is not None:
                conn.close(exc.close_code, exc.code)
        except SdpError as exc:
            conn.send(p.error_frame("bad-sdp", str(exc) or "bad SDP", ref=ref))
        except SfuStateError as exc:
            conn.send(p.error_frame("bad-state", str(exc) or "not in a state for this", ref=ref))
        except WorkerUnavailable as exc:
            log.warning("media worker unavailable: %s", exc)
            conn.send(p.error_from(errors.MediaUnavailable(str(exc)), ref))
            self._watch_now.set()
        except Exception:
            log.exception("call frame failed")
            conn.send(p.error_frame("internal-error", "the server failed; try again", ref=ref))

    async def handle(self, conn: AnyConnection, frame: p.ClientFrame) -> None:
        if isinstance(frame, p.Ping):
            conn.send(p.reply("pong", frame.id))
            return
        if isinstance(frame, p.Pong):
            return
        if isinstance(frame, p.Join):
            if conn.room is not None:
                raise p.BadFrame("already joined", ref=frame.id)
            await self._join(conn, frame)
            return
        room = conn.room
        if room is None or self.rooms.get(room.name) is not room:
            raise errors.NotJoined("join the room first")
        core = room.core
        ok = p.reply("ok", frame.id)
        match frame:
            case p.Publish():
                who = core.check_publish(conn)
                media = await self.media_for(room, who.id)
                result = await room.media_call(
                    partial(media.publish, room.name, who.id, frame.sdp, frame.sources)
                )
                if core.get(who.id) is not who or not who.present:
                    # It left while the worker answered: what the worker just
                    # set up must go too.
                    room.lane.background("leave", partial(media.leave, room.name, who.id))
                    return
                outputs = core.published(who.id, result.added, result.removed)
                conn.send(
                    p.reply(
                        "published",
                        frame.id,
                        sdp=result.answer,
                        tracks=[track_info(t) for t in core.tracks_of(who.id)],
                    )
                )
                self.apply(room, outputs)
            case p.Answer():
                who = core.check_subscribe(conn)
                await room.subscriber(who.id).answer(frame.sdp)
                conn.send(ok)
            case p.Candidate():
                # ICE-lite (RFC 8445 section 2.5): the worker learns the
                # client's addresses from its checks; trickled candidates are
                # accepted and not needed.
                core.check_joined(conn)
                conn.send(ok)
            case p.Mute():
                who, track = core.check_mute(conn, frame.track_id)
                try:
                    media = await self.media_for(room, track.participant)
                    await room.media_call(
                        partial(media.set_muted, room.name, track.track_id, frame.muted)
                    )
                except SfuStateError as exc:
                    raise errors.UnknownTarget(str(exc) or "no such track") from exc
                outputs = core.muted(who.id, track.track_id, frame.muted)
                conn.send(ok)
                self.apply(room, outputs)
            case p.Unpublish():
                who = core.check_unpublish(conn, frame.track_id)
                try:
                    media = await self.media_for(room, who.id)
                    await room.media_call(
                        partial(media.unpublish, room.name, who.id, frame.track_id)
                    )
                except SfuStateError as exc:
                    raise errors.UnknownTarget(str(exc) or "no such track") from exc
                outputs = core.unpublished(who.id, frame.track_id)
                conn.send(ok)
                self.apply(room, outputs)
            case p.Admit():
                outputs = core.admit(conn, frame.participant_id)
                conn.send(ok)
                self.apply(room, outputs)
            case p.Deny():
                outputs = core.deny(conn, frame.participant_id)
                conn.send(ok)
                self.apply(room, outputs)
            case p.Remove():
                outputs = core.remove(conn, frame.participant_id)
                conn.send(ok)
                self.apply(room, outputs)
            case p.RoomSettings():
                outputs = core.set_require_admission(conn, frame.require_admission)
                conn.send(ok)
                self.apply(room, outputs)
            case p.End():
                outputs = core.end(conn)
                conn.send(ok)
                self.apply(room, outputs)
            case p.Leave():
                outputs = core.leave(conn)
                conn.send(ok)
                self.apply(room, outputs)
            case p.TrackView():
                # No answer: pages send these often (docs/protocol.md).
                who = core.check_subscribe(conn)
                if any(t.track_id == frame.track_id for t in core.wanted(who.id)):
                    media = await self.media_for(room, who.id)
                    room.lane.background(
                        "view",
                        partial(
                            media.set_view,
                            room.name,
                            who.id,
                            frame.track_id,
                            frame.width,
                            frame.height,
                            frame.visible,
                        ),
                    )
            case p.AudioOnly():
                who = core.check_joined(conn)
                media = await self.media_for(room, who.id)
                await room.media_call(
                    partial(media.set_audio_only, room.name, who.id, frame.enabled)
                )
                conn.send(ok)
            case p.IceRestart() | p.ReconnectMedia():
                who = core.check_joined(conn)
                room.subscriber(who.id).restart(
                    "ice" if isinstance(frame, p.IceRestart) else "transport"
                )
                conn.send(ok)
                room.media_state(who.id, "reconnecting")

    async def _join(self, conn: AnyConnection, frame: p.Join) -> None:
        loop = asyncio.get_running_loop()
        try:
            grant: RoomGrant = decode_room_token(self.settings, frame.token)
        except InvalidToken as exc:
            raise errors.Unauthorized(exc.detail) from exc
        if isinstance(conn, Connection) and conn.room_hint not in (None, grant.room):
            raise errors.WrongRoom("the token is for another room than this link's")
        if self.guard is not None:
            await self.guard(grant)
        if await self._is_ended(grant.room, loop.time()):
            raise errors.RoomEnded("this room was ended")
        # Ownership may have moved while this frame travelled.
        if self.cluster is not None and not await self._own(grant.room):
            raise _Moved(await self.cluster.owner(grant.room) or "")
        now = loop.time()
        region = grant.region or conn.region or self.settings.region
        room = self.room(grant.room, region)
        if not grant.name:
            # An anonymous link: the name the person typed (or typed before,
            # when resuming) is shown; a token's own name always wins.
            typed = frame.name or (room.core.typed_name(frame.resume) if frame.resume else "")
            if typed:
                grant = dataclasses.replace(grant, name=typed)
        try:
            result = room.core.join(conn, grant, now, ref=frame.id, resume=frame.resume)
        except errors.SignallingError:
            if room.core.empty:
                self._drop_room(room)
            raise
        conn.room, conn.participant_id = room, result.participant.id
        conn.room_name = room.name
        room.regions.setdefault(result.participant.id, region)
        self.apply(room, result.outputs)
        if (
            self.on_waiting is not None
            and result.participant.state is State.WAITING
            and not result.resumed
        ):
            try:
                await self.on_waiting(grant)
            except Exception:  # the join stands; only the heads-up is lost
                log.exception("waiting-room event not recorded", extra={"room": grant.room})
        if result.resumed:
            sub = room.subscribers.get(result.participant.id)
            if sub is not None and sub.offer is not None:
                conn.send(sub.offer)
        region = self._region_of(room, result.participant.id)
        if self.placement is not None and region not in room.sites:
            # The room gets a worker in the participant's region now, so
            # their first publish does not wait for placement.
            try:
                await self.media_for(room, result.participant.id)
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

    # -- the WebSocket ---------------------------------------------------------

    async def serve(self, request: web.Request) -> web.WebSocketResponse:
        """One call WebSocket from upgrade to close (docs/protocol.md "Calls")."""
        ws = web.WebSocketResponse(max_msg_size=self.settings.call_max_frame_bytes)
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        ref = self.cluster.new_ref() if self.cluster is not None else ""
        conn = Connection(ws, request.query.get("room"), loop.time(), ref)
        self.connections.add(conn)
        if ref:
            self.local[ref] = conn
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
                try:
                    msg = await ws.receive(timeout=timeout)
                except TimeoutError:
                    if conn.room is None and conn.room_name is None:
                        self._join_timed_out(conn)
                        break
                    continue
                if msg.type == WSMsgType.TEXT:
                    conn.last_seen = loop.time()
                    try:
                        await self.route(conn, msg.data)
                    except Exception:
                        # Nothing one frame does may end the connection.
                        log.exception("call frame failed")
                        conn.send(p.error_frame("internal-error", "the server failed; try again"))
                elif msg.type == WSMsgType.BINARY:
                    FRAMES.labels("malformed").inc()
                    conn.send(p.error_frame("bad-frame", "frames are JSON text, not binary"))
                else:
                    # CLOSE, CLOSING, CLOSED, or ERROR (a frame over
                    # call_max_frame_bytes: aiohttp has sent 1009 already).
                    if msg.type == WSMsgType.ERROR:
                        ERRORS.labels("too-large").inc()
                    break
        finally:
            pinger.cancel()
            self.disconnected(conn)
            conn.queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, TimeoutError):
                await asyncio.wait_for(writer, 15.0)
            if not writer.done():
                writer.cancel()
        return ws

    def revoked(self, identity: str, sid: str | None) -> None:
        """An account signed out or lost its rights: its participants leave
        every room this replica owns (each replica hears the bus event)."""
        for room in list(self.rooms.values()):
            if any(p.grant.identity == identity for p in room.core.participants.values()):
                self.apply(room, room.core.revoke(identity, sid))

    def end_room(self, name: str, reason: str) -> None:
        """End room ``name`` if it runs here (its owner): everyone is sent away."""
        room = self.rooms.get(name)
        if room is not None:
            log.info("call room ended by the server", extra={"room": name, "reason": reason})
            self.apply(room, room.core.close(reason))

    def _join_timed_out(self, conn: Connection) -> None:
        exc = errors.JoinTimeout(f"no join within {self.join_timeout:g} seconds")
        conn.send(p.error_from(exc))
        conn.close(errors.CLOSE_TIMEOUT, "join timeout")

    async def _pinger(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        interval = self.ping_interval
        while not conn.closing:
            await asyncio.sleep(interval)
            if conn.room is None and conn.room_name is None:
                continue
            if loop.time() - conn.last_seen > MISSED_PINGS * interval:
                log.info("call client silent; disconnecting", extra={"room": conn.room_name})
                conn.close(errors.CLOSE_TIMEOUT, "ping timeout")
                # Do not wait for a dead peer's close handshake to detach.
                self.disconnected(conn)
                return
            conn.send(p.reply("ping"))

    # The cluster side (signalling.replicas), bound here as methods.
    _on_worker_message = replicas._on_worker_message
    _forward_gone = replicas._forward_gone
    route = replicas.route
    _join_room_of = replicas._join_room_of
    _own = replicas._own
    _on_cluster = replicas._on_cluster
    _read_remote = replicas._read_remote
    _mark = replicas._mark
    _snapshot = replicas._snapshot
    _writer = replicas._writer
    _take_over = replicas._take_over
    _watcher = replicas._watcher
    _watch_once = replicas._watch_once
    # Sites and relays (signalling.sites), bound here as methods.
    media_for = sites.media_for
    sync_relays = sites.sync_relays
    _region_of = sites.region_of
    _point = sites._point
    _relays_changed = sites.relays_changed
    _speaker_counts = sites.speaker_counts
    _check_media = sites.check_media
    _move_site = sites.move_site
    _release_all = sites.release_all

    # -- shutdown ----------------------------------------------------------------

    def shutdown(self) -> None:
        """The server is stopping: every client is told to come back (1001)."""
        for conn in list(self.connections):
            conn.close(errors.CLOSE_GOING_AWAY, "server shutting down")

    async def close(self) -> None:
        """Stop timers, negotiations and queued media calls (the app's cleanup,
        before the media worker closes)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.cluster is not None:
            # Another replica takes our rooms over from their snapshots.
            if self.rooms:
                with contextlib.suppress(Exception):
                    await self.cluster.save({n: self._snapshot(r) for n, r in self.rooms.items()})
                for name in list(self.rooms):
                    with contextlib.suppress(Exception):
                        await self.cluster.disown(name)
            await self.cluster.close()
        for room in list(self.rooms.values()):
            self._drop_room(room, forget=False)
        tasks = [t for t in (lane.task for lane in self.lanes.values()) if t is not None]
        tasks += list(self._orphans)
        tasks += [c.reader for c in self.remote.values() if c.reader is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.lanes.clear()
        COLLECTOR.services.discard(self)
