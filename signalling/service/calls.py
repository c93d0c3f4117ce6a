"""The asyncio side of call signalling: the rooms this process owns, one
session per WebSocket, and the media worker driven through
:class:`sfu.control.messages.MediaControl`.

The room logic is in :mod:`signalling.room.core` (sans-I/O); :class:`CallService`
feeds it frames, dropped connections and the loop's clock, and carries out
what it returns:

* frames go into each connection's outbound queue
  (:mod:`signalling.cluster.connections`), so one slow socket never delays a room;
* media calls for a room go through its :class:`signalling.media.lane.MediaLane`,
  one at a time in the order asked, so a ``leave`` queued by a replacement is
  done before the newcomer's ``publish``;
* each participant's subscribe connection is renegotiated by its
  :class:`signalling.live.room.Subscriber`;
* media events (a transport's state, the active speaker) become frames.

A frame is parsed once, where its socket is. Control frames go to the room
(:meth:`signalling.room.core.Room.receive`); this module handles the frames that
call media. Errors from one frame become an ``error`` frame on that
connection only; nothing a client sends can take another connection down.

With Redis (``wadud api`` replicas), a room lives on one replica at a time,
its owner: :class:`signalling.cluster.replicas.Replicas` routes frames there and
takes rooms over. Where a room's media runs, on the in-process worker or on
``wadud media`` nodes placed per region, is :class:`signalling.media.sites.Sites`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import partial
from typing import Any

from aiohttp import WSMsgType, web
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from booking.calls import booking_of
from recording.store import Recordings
from rtc.errors import SdpError
from sfu.control.messages import (
    ActiveSpeaker,
    ConnectionQuality,
    LayersWanted,
    MediaControl,
    MediaEvent,
    RecordingSegment,
    RecordingStopped,
    RelayState,
    TrackPaused,
    TransportState,
    View,
)
from sfu.control.rpc import MediaClient, MediaUnavailable
from sfu.errors import SfuStateError
from signalling import errors, protocol
from signalling.cluster.connections import ERRORS, AnyConnection, Connection, RemoteConnection
from signalling.cluster.link import Cluster
from signalling.cluster.opening import Claims, Opening, claims_of
from signalling.cluster.replicas import Replicas
from signalling.live.recording import CallRecordings
from signalling.live.room import CallRoom, Subscriber
from signalling.media.lane import MediaLane
from signalling.media.placement import Placement
from signalling.media.sites import Sites
from signalling.room.consent import (
    ConsentAnswered,
    RecordingAsked,
    RecordingStart,
    RecordingStop,
)
from signalling.room.core import ControlFrame, Room
from signalling.room.media import track_info
from signalling.room.members import State
from signalling.room.outputs import Close, MediaCloseRoom, MediaLeave, Output, Resubscribe, Send
from wadud.auth import RoomGrant
from wadud.config import Settings

log = logging.getLogger("wadud.signalling")

#: Seconds a new connection has to send ``join`` (docs/protocol.md).
JOIN_TIMEOUT = 10.0
#: Server pings a client may leave unanswered before it is disconnected.
MISSED_PINGS = 3
#: How long an ended room's name keeps refusing joins (``room-ended``).
ENDED_MEMORY = 24 * 3600.0
ENDED_MAX = 100_000
FRAMES = Counter(
    "wadud_call_frames",
    "Signalling frames received, by type (malformed: not a frame at all).",
    ["type"],
)
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
                    counts[state] += room.core.members.count(state)
        rooms.add_metric([], nrooms)
        people.add_metric(["joined"], counts[State.JOINED])
        people.add_metric(["detached"], counts[State.DETACHED])
        waiting.add_metric([], counts[State.WAITING])
        conns.add_metric([], nconns)
        yield from (rooms, people, waiting, conns)


COLLECTOR = _Collector()
REGISTRY.register(COLLECTOR)


class CallService:
    """Every room this process owns and the connections it holds; its part
    in the cluster of replicas (with Redis) is :attr:`replicas`, where its
    rooms' media runs is :attr:`sites`."""

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
        recording_store: Callable[[], Recordings | None] | None = None,
        home: str = "",
    ) -> None:
        self.settings = settings
        #: The region whose own control plane this service is (signalling.edge.planes);
        #: empty: the global one. It takes the links homed there, and no others.
        self.home = home
        self._get_media = media
        self._listening: set[int] = set()
        self._ice_servers = ice_servers
        self.media_client = media_client
        #: Raises the refusal of a grant that no longer opens its room (the
        #: link's booking or sign-in session is over), at join and resume.
        self.guard = guard
        #: Told when someone enters a waiting room (the notifier tells the doctor).
        self.on_waiting = on_waiting
        #: Shown each room's outputs before they are carried out, its state
        #: already changed (signalling.live.events: the clinics' webhooks).
        self.observe = observe
        self.rooms: dict[str, CallRoom] = {}
        self.lanes: dict[str, MediaLane] = {}
        self.ended: dict[str, float] = {}
        self.connections: set[Connection] = set()
        self.sites: Sites[CallRoom] = Sites(
            self._local_media,
            placement=placement,
            media_client=media_client,
            worker_ttl=settings.media_worker_ttl,
            rooms=self.rooms,
            changed=self._mark,
            moved=self._media_moved,
        )
        #: Rooms' recordings: their rows and the worker writing them.
        self.recordings = CallRecordings(
            recording_store or (lambda: None),
            booking_of=booking_of,
            media_of=self.sites.controls,
            failed=self._recording_failed,
        )
        self.replicas: Replicas | None = None
        if cluster is not None:
            self.replicas = Replicas(
                cluster,
                self,
                region=settings.region,
                rooms=self.rooms,
                sites=self.sites,
                cutoff_grace=settings.call_cutoff_grace,
            )
        #: Negotiations still running for subscribers whose room is gone.
        self._orphans: weakref.WeakSet[asyncio.Task[None]] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.join_timeout = JOIN_TIMEOUT
        self.ping_interval = settings.call_ping_interval
        COLLECTOR.services.add(self)

    # -- life --------------------------------------------------------------------

    async def start(self) -> None:
        """Hear the media workers and, with Redis, join the cluster."""
        if self.media_client is not None:
            self.media_client.add_listener(self._on_worker_message)
        if self.replicas is not None:
            await self.replicas.start()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wake_watcher(self) -> None:
        if self.replicas is not None:
            self.replicas.wake()

    # -- the media worker ------------------------------------------------------

    def _local_media(self) -> MediaControl | None:
        """The in-process worker (``wadud serve``), if one is running."""
        media = self._get_media()
        if media is not None and id(media) not in self._listening:
            # Listen on first use: the worker may be installed after us.
            self._listening.add(id(media))
            media.add_listener(self.on_media_event)
        return media

    def _on_worker_message(self, worker: str, incarnation: str, payload: Any) -> None:
        if isinstance(payload, str):
            # A worker's life changed (stopped, draining): check placements now.
            self._wake_watcher()
        else:
            self.on_media_event(payload, worker)

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
                    self._wake_watcher()
                return
            room = self.rooms.get(event.room)
            if isinstance(event, RecordingSegment | RecordingStopped):
                # The room's owner keeps the rows (every replica hears every
                # event), or whoever started it if the room closed since.
                MEDIA_EVENTS.labels(event.type, "").inc()
                if room is not None or self.recordings.concerns(event.recording):
                    self.recordings.on_event(event)
                return
            if isinstance(event, TrackPaused | LayersWanted | ConnectionQuality):
                MEDIA_EVENTS.labels(event.type, "").inc()
                if room is not None:
                    self._weak_network_event(room, event, worker)
                return
            if isinstance(event, ActiveSpeaker):
                MEDIA_EVENTS.labels("active_speaker", "").inc()
                if room is not None and self.sites.speaker_counts(room, worker):
                    self.apply(room, room.core.media.speaker(event.participant))
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
            if not self.sites.publisher_site(room, event.participant, worker):
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
            room = CallRoom(
                core,
                self._lane(name),
                region or s.region,
                changed=self._mark,
                media_for=self.sites.media_for,
                subscribe=self.sites.subscribe,
            )
            self.rooms[name] = room
        return room

    def drop_room(self, room: CallRoom, *, forget: bool = True) -> None:
        """Stop running ``room`` here. ``forget``: the room is over (its
        snapshot, lease and placement go); else another replica has it now."""
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            if self.replicas is not None and forget:
                self.replicas.forget_room(room.name)
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
            if isinstance(conn, RemoteConnection) and forget and self.replicas is not None:
                self.replicas.remote.pop(conn.ref, None)

    def _conns_of(self, room: CallRoom) -> list[AnyConnection]:
        out: list[AnyConnection] = [c for c in self.connections if c.room is room]
        if self.replicas is not None:
            out += self.replicas.remote_in(room)
        return out

    def _retire(self, sub: Subscriber) -> None:
        sub.close()
        if sub.task is not None:
            self._orphans.add(sub.task)

    def _remember_ended(self, name: str, now: float) -> None:
        self.ended[name] = now
        while len(self.ended) > ENDED_MAX:
            del self.ended[next(iter(self.ended))]
        if self.replicas is not None:
            self._spawn(self.replicas.cluster.mark_ended(name), "call-mark-ended")

    def _ended_here(self, name: str, now: float) -> bool:
        """Whether this replica ended room ``name`` lately."""
        when = self.ended.get(name)
        if when is not None:
            if now - when <= ENDED_MEMORY:
                return True
            del self.ended[name]
        return False

    async def _is_ended(self, name: str, now: float) -> bool:
        if self._ended_here(name, now):
            return True
        return self.replicas is not None and await self.replicas.cluster.is_ended(name)

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
                                    protocol.ConnectionQuality(
                                        participant_id=pid, quality=known.quality
                                    ).frame()
                                )
                case Close(conn, code, reason):
                    if isinstance(conn, Connection | RemoteConnection):
                        conn.close(code, reason)
                case MediaLeave(pid):
                    room.quality.pop(pid, None)
                    room.republished(pid)
                    sub = room.subscribers.pop(pid, None)
                    if sub is not None:
                        self._retire(sub)
                    media = self.sites.media_now(room, pid)
                    if media is not None:
                        room.lane.background("leave", partial(media.leave, room.name, pid))
                        self.sites.relays_changed(room)
                case MediaCloseRoom():
                    if room.core.ended:
                        self._remember_ended(room.name, loop.time())
                    for media in self.sites.controls(room):
                        room.lane.background("close_room", partial(media.close_room, room.name))
                    if room.sites:
                        self._spawn(self.sites.release_all(room), "call-release")
                    closed = True
                case Resubscribe(pids):
                    for pid in pids:
                        if not closed:
                            room.subscriber(pid).kick()
                case RecordingAsked() | ConsentAnswered() | RecordingStart() | RecordingStop():
                    self.recordings.carry(room, out)
        if closed:
            self.drop_room(room)
        else:
            self._arm(room)
            self._mark(room)

    def _recording_failed(self, name: str, recording_id: str, detail: str) -> None:
        room = self.rooms.get(name)
        if room is not None:
            self.apply(room, room.core.recording_failed(recording_id, detail))

    def _mark(self, room: CallRoom) -> None:
        if self.replicas is not None:
            self.replicas.mark(room)

    def _media_moved(self, room: CallRoom, moved: list[str], reason: str) -> None:
        """A site of ``room`` moved to another worker (signalling.media.sites):
        ``moved`` are the participants that were on it."""
        for pid in moved:
            sub = room.subscribers.get(pid)
            if sub is not None:
                sub.offer, sub.asked, sub.force = None, (), True
        publishers = [pid for pid in moved if room.core.media.tracks_of(pid)]
        room.regather(publishers)
        outputs = room.core.media_reset(reason, moved if len(room.sites) > 1 else None)
        self.apply(room, outputs)
        # The moved get an offer on the new worker (after their media_reconnect,
        # so their client takes it for a new connection) even if they only
        # receive; the others lost the moved site's tracks and get a new offer.
        for sub in room.subscribers.values():
            sub.kick()

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

    # -- connections -----------------------------------------------------------

    def disconnected(self, conn: AnyConnection, grace: float | None = None) -> None:
        """The connection is over, however it ended; ``grace``: how long its
        participant may resume (``call_resume_grace`` by default)."""
        if isinstance(conn, Connection):
            self.connections.discard(conn)
        if self.replicas is not None:
            self.replicas.forget(conn)
        room = conn.room
        if room is not None and self.rooms.get(room.name) is room:
            now = asyncio.get_running_loop().time()
            self.apply(room, room.core.disconnect(conn, now, grace))
        elif self.replicas is not None and conn.room_name is not None:
            # Its room runs elsewhere: the owner hears of it.
            self.replicas.gone(conn.room_name, conn.ref)

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
            if self.replicas is None:
                await self.handle(conn, frame, grant, claims)
            else:
                await self.replicas.route(conn, frame, text, grant, claims)
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
            case MediaUnavailable():
                log.warning("media worker unavailable: %s", exc)
                self._wake_watcher()
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
        elif isinstance(claims, errors.Unauthorized):
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
        if await self._is_ended(grant.room, asyncio.get_running_loop().time()):
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
            conn.send(protocol.reply("pong", frame.id))
            return
        if isinstance(frame, protocol.Pong):
            return
        if isinstance(frame, protocol.Join):
            if conn.room is not None:
                raise protocol.BadFrame("already joined", ref=frame.id)
            if grant is None:
                grant = await self.admit(conn, frame, claims)
            await self._join(conn, frame, grant)
            return
        room = conn.room
        if room is None or self.rooms.get(room.name) is not room:
            raise errors.NotJoined("join the room first")
        if isinstance(frame, ControlFrame):
            self.apply(room, room.core.receive(conn, frame))
        else:
            await self._media_frame(room, conn, frame)

    async def _media_frame(
        self, room: CallRoom, conn: AnyConnection, frame: protocol.ClientFrame
    ) -> None:
        """A frame that calls the room's media worker."""
        core = room.core
        ok = protocol.reply("ok", frame.id)
        match frame:
            case protocol.Publish():
                who = core.check_publish(conn)
                media = await room.media_for(who.id)
                result = await room.media_call(
                    partial(media.publish, room.name, who.id, frame.sdp, frame.sources)
                )
                if core.members.get(who.id) is not who or not who.present:
                    # It left while the worker answered: what the worker just
                    # set up must go too.
                    room.lane.background("leave", partial(media.leave, room.name, who.id))
                    return
                outputs = core.media.published(who.id, result.added, result.removed)
                room.republished(who.id)
                conn.send(
                    protocol.reply(
                        "published",
                        frame.id,
                        sdp=result.answer,
                        tracks=[track_info(t) for t in core.media.tracks_of(who.id)],
                    )
                )
                self.apply(room, outputs)
            case protocol.Answer():
                who = core.members.check_subscribe(conn)
                await room.subscriber(who.id).answer(frame.sdp)
                conn.send(ok)
            case protocol.Candidate():
                # ICE-lite (RFC 8445 section 2.5): the worker learns the
                # client's addresses from its checks; trickled candidates are
                # accepted and not needed.
                core.members.check_joined(conn)
                conn.send(ok)
            case protocol.Mute():
                who, track = core.media.check_mute(conn, frame.track_id)
                await room.track_call(
                    track.participant,
                    lambda media: media.set_muted(room.name, track.track_id, frame.muted),
                )
                outputs = core.media.muted(who.id, track.track_id, frame.muted)
                conn.send(ok)
                self.apply(room, outputs)
            case protocol.Unpublish():
                who = core.media.check_unpublish(conn, frame.track_id)
                await room.track_call(
                    who.id, lambda media: media.unpublish(room.name, who.id, frame.track_id)
                )
                outputs = core.media.unpublished(who.id, frame.track_id)
                conn.send(ok)
                self.apply(room, outputs)
            case protocol.TrackView():
                # No answer: pages send these often (docs/protocol.md).
                who = core.members.check_subscribe(conn)
                if any(t.track_id == frame.track_id for t in core.media.wanted(who.id)):
                    media = await room.media_for(who.id)
                    room.lane.background(
                        "view",
                        partial(
                            media.set_view,
                            room.name,
                            who.id,
                            frame.track_id,
                            View(frame.width, frame.height, frame.visible),
                        ),
                    )
            case protocol.AudioOnly():
                who = core.members.check_joined(conn)
                media = await room.media_for(who.id)
                await room.media_call(
                    partial(media.set_audio_only, room.name, who.id, frame.enabled)
                )
                conn.send(ok)
            case protocol.IceRestart() | protocol.ReconnectMedia():
                who = core.members.check_joined(conn)
                room.subscriber(who.id).restart(
                    "ice" if isinstance(frame, protocol.IceRestart) else "transport"
                )
                conn.send(ok)
                room.media_state(who.id, "reconnecting")

    async def _join(self, conn: AnyConnection, frame: protocol.Join, grant: RoomGrant) -> None:
        """A join this replica owns the room of, its grant checked (:meth:`admit`)."""
        region = grant.region or conn.region or self.settings.region
        # Another's join is placing the room in this region: this join is
        # answered once the room has its worker there.
        await self.sites.placing(grant.room, region)
        now = asyncio.get_running_loop().time()
        if self._ended_here(grant.room, now):
            # Ended here while the join travelled from another replica.
            raise errors.RoomEnded("this room was ended")
        room = self.room(grant.room, region)
        if not grant.name:
            # An anonymous link: the name the person typed (or typed before,
            # when resuming) is shown; a token's own name always wins.
            typed = frame.name or (
                room.core.members.typed_name(frame.resume) if frame.resume else ""
            )
            if typed:
                grant = dataclasses.replace(grant, name=typed)
        try:
            result = room.core.join(conn, grant, now, ref=frame.id, resume=frame.resume)
        except errors.SignallingError:
            if room.core.members.empty:
                self.drop_room(room)
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
        region = self.sites.region_of(room, result.participant.id)
        if self.sites.placement is not None and region not in room.sites:
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
        ref = self.replicas.cluster.new_ref() if self.replicas is not None else ""
        conn = Connection(ws, request.query.get("room"), loop.time(), ref)
        self.connections.add(conn)
        if self.replicas is not None:
            self.replicas.connected(conn)
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
            if any(p.grant.identity == identity for p in room.core.members.participants.values()):
                self.apply(room, room.core.revoke(identity, sid))

    def end_room(self, name: str, reason: str) -> None:
        """End room ``name`` if it runs here (its owner): everyone is sent away."""
        room = self.rooms.get(name)
        if room is not None:
            log.info("call room ended by the server", extra={"room": name, "reason": reason})
            self.apply(room, room.core.close(reason))

    def _join_timed_out(self, conn: Connection) -> None:
        exc = errors.JoinTimeout(f"no join within {self.join_timeout:g} seconds")
        conn.send(protocol.error_from(exc))
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
            conn.send(protocol.reply("ping"))

    # -- shutdown ----------------------------------------------------------------

    def shutdown(self) -> None:
        """The server is stopping: every client is told to come back (1001)."""
        for conn in list(self.connections):
            conn.close(errors.CLOSE_GOING_AWAY, "server shutting down")

    async def close(self) -> None:
        """Stop timers, negotiations and queued media calls (the app's cleanup,
        before the media worker closes)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.replicas is not None:
            # Another replica takes our rooms over from their snapshots.
            await self.replicas.close()
        for room in list(self.rooms.values()):
            self.drop_room(room, forget=False)
        tasks = [t for t in (lane.task for lane in self.lanes.values()) if t is not None]
        tasks += list(self._orphans)
        if self.replicas is not None:
            tasks += self.replicas.readers()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.lanes.clear()
        COLLECTOR.services.discard(self)
