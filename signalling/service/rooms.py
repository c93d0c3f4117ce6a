"""The rooms this process owns, and the connections it holds: each room's
core driven by the loop (its outputs carried out, its timer armed), where
their media runs, their recordings, and their part in the cluster.

:meth:`Rooms.apply` carries out what a room's core returns
(:mod:`signalling.room.outputs`):

* frames go into each connection's outbound queue
  (:mod:`signalling.cluster.connections`), so one slow socket never delays a
  room;
* media calls for a room go through its
  :class:`signalling.media.lane.MediaLane`, one at a time in the order asked,
  so a ``leave`` queued by a replacement is done before the newcomer's
  ``publish``;
* each participant's subscribe connection is renegotiated by its
  :class:`signalling.live.room.SubscribeNegotiation`;
* the recording's steps go to :class:`signalling.live.recording.CallRecordings`.

Where a room's media runs, on the in-process worker or on ``wadud media``
nodes placed per region, is :class:`signalling.media.sites.Sites`; what the
workers say of the rooms is :class:`signalling.service.media_events.MediaEvents`.
With Redis (``wadud api`` replicas), a room lives on one replica at a time,
its owner: :class:`signalling.cluster.replicas.Replicas` routes frames there,
writes the rooms' snapshots and takes rooms over.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any

from booking import phone_calls
from booking.calls import booking_of
from recording.store import Recordings
from sfu.control.messages import MediaControl
from sfu.control.rpc import MediaClient
from signalling import protocol
from signalling.cluster.connections import AnyConnection, Connection, RemoteConnection
from signalling.cluster.link import Cluster
from signalling.cluster.replicas import Host, Replicas
from signalling.live.recording import CallRecordings
from signalling.live.room import CallRoom, SubscribeNegotiation
from signalling.media.lane import MediaLane
from signalling.media.placement import Placement
from signalling.media.sites import Sites
from signalling.room.consent import ConsentAnswered, RecordingAsked, RecordingStart, RecordingStop
from signalling.room.core import Room
from signalling.room.outputs import (
    Close,
    InviteDecided,
    MediaCloseRoom,
    MediaLeave,
    Output,
    Resubscribe,
    SendFrame,
)
from signalling.service.media_events import MediaEvents
from wadud.config import Settings

log = logging.getLogger("wadud.signalling")

__all__ = ["ENDED_MAX", "ENDED_MEMORY", "Rooms"]

#: How long an ended room's name keeps refusing joins (``room-ended``).
ENDED_MEMORY = 24 * 3600.0
ENDED_MAX = 100_000


class Rooms(Mapping[str, CallRoom]):
    """Every room this process owns, by name, and the connections it holds;
    where the rooms' media runs is :attr:`sites`, their part in the cluster
    of replicas (with Redis) :attr:`replicas`, whose frames ``host`` (the
    call service) handles."""

    def __init__(
        self,
        settings: Settings,
        media: Callable[[], MediaControl | None],
        ice_servers: Callable[[str], list[dict[str, Any]]],
        *,
        host: Host,
        cluster: Cluster | None = None,
        placement: Placement | None = None,
        media_client: MediaClient | None = None,
        observe: Callable[[Room, list[Output]], None] | None = None,
        recording_store: Callable[[], Recordings | None] | None = None,
        decided: Callable[[str, InviteDecided], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        #: Keeps the patient's answer about an invite (signalling.edge.invites).
        self._decided = decided
        self._get_media = media
        self._listening: set[int] = set()
        self._ice_servers = ice_servers
        self.media_client = media_client
        #: Shown each room's outputs before they are carried out, its state
        #: already changed (signalling.live.events: the clinics' webhooks).
        self.observe = observe
        self._rooms: dict[str, CallRoom] = {}
        self.lanes: dict[str, MediaLane] = {}
        self.ended: dict[str, float] = {}
        #: The call WebSockets this process holds.
        self.connections: set[Connection] = set()
        self.sites: Sites[CallRoom] = Sites(
            self._local_media,
            placement=placement,
            media_client=media_client,
            worker_ttl=settings.media_worker_ttl,
            rooms=self,
            changed=self._mark,
            moved=self._media_moved,
        )
        #: Rooms' recordings: their rows and the worker writing them.
        self.recordings = CallRecordings(
            recording_store or (lambda: None),
            booking_of=booking_of,
            media_of=self.sites.controls,
            place=self.sites.media_for,
            failed=self._recording_failed,
        )
        self.events = MediaEvents(
            self,
            sites=self.sites,
            recordings=self.recordings,
            apply=self.apply,
            wake=self.wake_watcher,
        )
        self.replicas: Replicas | None = None
        if cluster is not None:
            self.replicas = Replicas(
                cluster,
                host,
                self,
                region=settings.region,
                sites=self.sites,
                cutoff_grace=settings.call_cutoff_grace,
            )
        #: Negotiations still running for subscribers whose room is gone.
        self._orphans: weakref.WeakSet[asyncio.Task[None]] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[Any]] = set()

    def __getitem__(self, name: str) -> CallRoom:
        return self._rooms[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rooms)

    def __len__(self) -> int:
        return len(self._rooms)

    # -- life --------------------------------------------------------------------

    async def start(self) -> None:
        """Hear the media workers and, with Redis, join the cluster."""
        if self.media_client is not None:
            self.media_client.add_listener(self.events.on_worker_message)
        if self.replicas is not None:
            await self.replicas.start()

    async def close(self) -> None:
        """Stop timers, negotiations and queued media calls (the app's cleanup,
        before the media worker closes)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.replicas is not None:
            # Another replica takes our rooms over from their snapshots.
            await self.replicas.close()
        for room in list(self._rooms.values()):
            self.drop_room(room, forget=False)
        tasks = [t for t in (lane.task for lane in self.lanes.values()) if t is not None]
        tasks += list(self._orphans)
        if self.replicas is not None:
            tasks += self.replicas.readers()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.lanes.clear()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def wake_watcher(self) -> None:
        """Have the cluster's watcher look at the workers now (a worker's life changed)."""
        if self.replicas is not None:
            self.replicas.wake()

    # -- the media worker ------------------------------------------------------

    def _local_media(self) -> MediaControl | None:
        """The in-process worker (``wadud serve``), if one is running."""
        media = self._get_media()
        if media is not None and id(media) not in self._listening:
            # Listen on first use: the worker may be installed after us.
            self._listening.add(id(media))
            media.add_listener(self.events.on_media_event)
        return media

    # -- rooms -----------------------------------------------------------------

    def _lane(self, name: str) -> MediaLane:
        lane = self.lanes.get(name)
        if lane is None:

            def idle(done: MediaLane) -> None:
                if name not in self._rooms and self.lanes.get(name) is done:
                    del self.lanes[name]

            lane = self.lanes[name] = MediaLane(idle)
        return lane

    def room(self, name: str, region: str = "") -> CallRoom:
        room = self._rooms.get(name)
        if room is None:
            s = self.settings
            core = Room(
                name,
                max_participants=s.call_max_participants,
                resume_grace=s.call_resume_grace,
                ping_interval=s.call_ping_interval,
                ice_servers=self._ice_servers,
                phone_calls=phone_calls.offered(s),
            )
            room = CallRoom(
                core,
                self._lane(name),
                region or s.region,
                changed=self._mark,
                media_for=self.sites.media_for,
                subscribe=self.sites.subscribe,
            )
            self._rooms[name] = room
        return room

    def drop_room(self, room: CallRoom, *, forget: bool = True) -> None:
        """Stop running ``room`` here. ``forget``: the room is over (its
        snapshot, lease and placement go); else another replica has it now."""
        if self._rooms.get(room.name) is room:
            del self._rooms[room.name]
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

    def _retire(self, sub: SubscribeNegotiation) -> None:
        sub.close()
        if sub.task is not None:
            self._orphans.add(sub.task)

    def _remember_ended(self, name: str, now: float) -> None:
        self.ended[name] = now
        while len(self.ended) > ENDED_MAX:
            del self.ended[next(iter(self.ended))]
        if self.replicas is not None:
            self._spawn(self.replicas.cluster.mark_ended(name), "call-mark-ended")

    def ended_here(self, name: str, now: float) -> bool:
        """Whether this replica ended room ``name`` lately."""
        when = self.ended.get(name)
        if when is not None:
            if now - when <= ENDED_MEMORY:
                return True
            del self.ended[name]
        return False

    async def is_ended(self, name: str, now: float) -> bool:
        """Whether room ``name`` was ended, here lately or on any replica."""
        if self.ended_here(name, now):
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
                case SendFrame(conn, frame):
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
                case InviteDecided():
                    if self._decided is not None:
                        self._spawn(self._decided(room.name, out), "call-invite-decided")
                case RecordingAsked() | ConsentAnswered() | RecordingStart() | RecordingStop():
                    self.recordings.carry(room, out)
        if closed:
            self.drop_room(room)
        else:
            self._arm(room)
            self._mark(room)

    def _recording_failed(self, name: str, recording_id: str, detail: str) -> None:
        room = self._rooms.get(name)
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
                # A single connection starts over on the new worker, empty,
                # and its client offers room for every track by itself.
                sub.receiving, sub.free, sub.offered = {}, {}, False
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

    def disconnected(
        self, conn: AnyConnection, grace: float | None = None, since: float | None = None
    ) -> None:
        """The connection is over, however it ended; ``grace``: how long its
        participant may resume (``call_resume_grace`` by default), from
        ``since`` (loop time; now by default)."""
        if isinstance(conn, Connection):
            self.connections.discard(conn)
        if self.replicas is not None:
            self.replicas.forget(conn)
        room = conn.room
        if room is not None and self._rooms.get(room.name) is room:
            now = asyncio.get_running_loop().time() if since is None else since
            self.apply(room, room.core.disconnect(conn, now, grace))
        elif self.replicas is not None and conn.room_name is not None:
            # Its room runs elsewhere: the owner hears of it.
            self.replicas.gone(conn.room_name, conn.ref)

    def revoked(self, identity: str, sid: str | None) -> None:
        """An account signed out or lost its rights: its participants leave
        every room this replica owns (each replica hears the bus event)."""
        for room in list(self._rooms.values()):
            if any(p.grant.identity == identity for p in room.core.members.participants.values()):
                self.apply(room, room.core.revoke(identity, sid))

    def phone_call(self, name: str, step: dict[str, Any]) -> None:
        """Tell room ``name``'s admins a step of its phone call, if it runs here."""
        room = self._rooms.get(name)
        if room is not None:
            self.apply(room, room.core.phone_call(step))

    def invite_revoked(self, name: str, invite_id: str) -> None:
        """Invite ``invite_id`` of room ``name`` was taken back: its guests
        leave, if the room runs here (each replica hears the bus event)."""
        room = self._rooms.get(name)
        if room is not None:
            self.apply(room, room.core.revoke_invite(invite_id))

    def end_room(self, name: str, reason: str) -> None:
        """End room ``name`` if it runs here (its owner): everyone is sent away."""
        room = self._rooms.get(name)
        if room is not None:
            log.info("call room ended by the server", extra={"room": name, "reason": reason})
            self.apply(room, room.core.close(reason))
