"""The call service's part in a cluster of API replicas (with Redis).

:mod:`signalling.cluster.link` is the link (leases, snapshots, ordered messages);
:class:`Replicas` is what the call service does with it: route each client
frame to its room's owner, serve other replicas' clients in the rooms this
one owns (:class:`signalling.cluster.connections.RemoteConnection`), write room
snapshots, and take a room over when its owner died (moving a room's media
is :mod:`signalling.media.sites`).

A frame is parsed once, where it arrives, and routed as the typed frame; a
``join`` reaches the router with its token decoded and its checks passed
(:meth:`signalling.service.calls.CallService.admit`), and the grant travels with
the frame to the owner, which only checks that it owns the room.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, ItemsView, Iterable, Iterator
from typing import Any, Protocol, cast

from prometheus_client import Counter

from signalling import errors, protocol
from signalling.cluster.connections import AnyConnection, Connection, RemoteConnection
from signalling.cluster.link import Cluster, conn_replica
from signalling.cluster.opening import Claims
from signalling.live.room import CallRoom
from signalling.media.placement import Placed
from signalling.media.sites import Sites
from signalling.room.outputs import Output
from wadud.web.auth import RoomGrant

log = logging.getLogger("wadud.signalling")

__all__ = ["WATCH_INTERVAL", "Host", "Owned", "Replicas"]

#: Owner lookups of a room after the cluster lapsed, before giving up.
HELD_TRIES = 5
#: Seconds between the cluster watcher's rounds (leases, dead replicas and workers).
WATCH_INTERVAL = 1.0
#: Seconds between looks at whether the owned rooms' media workers still
#: listen: a killed node is seen within this, not within a watcher round,
#: and its calls' pages are told to reconnect that much sooner.
MEDIA_PROBE_INTERVAL = 0.2
#: After a Redis outage, absences prove no death for this many owner leases.
SETTLE_FACTOR = 2

TAKEOVERS = Counter(
    "wadud_call_room_takeovers", "Rooms this replica took over from a replica that died."
)


class Host(Protocol):
    """What the router needs of the call service it routes for
    (:class:`signalling.service.calls.CallService`): its frames."""

    async def receive(self, conn: AnyConnection, text: str, grant: RoomGrant | None = None) -> None:
        """A client's text frame (with the grant a forwarded ``join`` carries)."""
        ...

    async def handle(
        self, conn: AnyConnection, frame: protocol.ClientFrame, grant: RoomGrant | None
    ) -> None:
        """A frame for a room this replica owns (or for no room)."""
        ...

    async def admit(
        self, conn: Connection, frame: protocol.Join, claims: Claims | None = None
    ) -> RoomGrant:
        """A ``join``'s grant, once its token (or its ``claims``, the token
        decoded already) and the checks on it passed."""
        ...


class Owned(Protocol):
    """What the router needs of the rooms this replica owns
    (:class:`signalling.service.rooms.Rooms`): which they are, by name, and
    making, changing and dropping one."""

    def get(self, name: str, /) -> CallRoom | None: ...

    def __contains__(self, name: object, /) -> bool: ...

    def __iter__(self) -> Iterator[str]: ...

    def __len__(self) -> int: ...

    def items(self) -> ItemsView[str, CallRoom]: ...

    def room(self, name: str, region: str = "") -> CallRoom: ...

    def apply(self, room: CallRoom, outputs: Iterable[Output]) -> None: ...

    def drop_room(self, room: CallRoom, *, forget: bool = True) -> None: ...

    def disconnected(self, conn: AnyConnection, grace: float | None = None) -> None: ...


class Replicas:
    """Routing between replicas, the rooms' snapshots and their takeover.

    ``host`` handles the frames routed here; ``rooms`` are the rooms this
    replica owns; ``sites`` places a restored room's media and watches its
    workers."""

    def __init__(
        self,
        cluster: Cluster,
        host: Host,
        rooms: Owned,
        *,
        region: str,
        sites: Sites[CallRoom],
        cutoff_grace: float,
    ) -> None:
        self.cluster = cluster
        self._host = host
        self._region = region
        #: How long participants whose replica fell silent keep their place.
        self._cutoff_grace = cutoff_grace
        self._rooms = rooms
        self._sites = sites
        #: This replica's connections by reference (cluster messages name them).
        self.local: dict[str, Connection] = {}
        #: Other replicas' connections in rooms this replica owns.
        self.remote: dict[str, RemoteConnection] = {}
        #: The last known owner of rooms this replica forwards to.
        self.owners: dict[str, str] = {}
        #: Rooms being taken over: done once restored from their snapshot.
        self._taking: dict[str, asyncio.Future[None]] = {}
        #: Rooms whose snapshot must be written (None: forget it).
        self._dirty: dict[str, CallRoom | None] = {}
        #: Rooms that ended here whose snapshot and lease are not let go yet:
        #: one joined again meanwhile starts afresh and keeps the lease (own).
        self._ended: set[str] = set()
        self._dirty_event = asyncio.Event()
        self._watch_now = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        #: Until when (monotonic) a missing key or subscriber proves nobody
        #: dead, after Redis came back from an outage (see :meth:`_settling`).
        self._settle_until = 0.0
        self._redis_failed = False

    # -- life ------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for other replicas' messages, watch leases, replicas and
        workers, and write room snapshots."""
        await self.cluster.start(self._on_message, self._lapsed)
        self._spawn(self._watcher(), "call-cluster-watch")
        self._spawn(self._media_probe(), "call-media-probe")
        self._spawn(self._writer(), "call-cluster-write")

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop watching and writing; another replica takes our rooms over
        from their snapshots."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._rooms:
            with contextlib.suppress(Exception):
                await self.cluster.save({n: self.snapshot(r) for n, r in self._rooms.items()})
            for name in list(self._rooms):
                with contextlib.suppress(Exception):
                    await self.cluster.disown(name)
        await self.cluster.close()

    def readers(self) -> list[asyncio.Task[None]]:
        """The tasks reading remote clients' frames."""
        return [c.reader for c in self.remote.values() if c.reader is not None]

    def wake(self) -> None:
        """Check leases, replicas and workers now (a worker's life changed)."""
        self._watch_now.set()

    # -- connections -----------------------------------------------------------

    def connected(self, conn: Connection) -> None:
        self.local[conn.ref] = conn

    def forget(self, conn: AnyConnection) -> None:
        """The connection is over; its room's owner hears of it if that is
        another replica."""
        if isinstance(conn, Connection):
            self.local.pop(conn.ref, None)
        else:
            self.remote.pop(conn.ref, None)
            if conn.reader is not None:
                conn.reader.cancel()

    def _lapsed(self, gap: float) -> None:
        """This replica was out of touch with Redis for ``gap`` seconds, past
        its lease: the owners of rooms whose clients it holds may have taken
        those clients for gone (a region cut off, docs/operations.md). Each
        owner is told which it still holds (``held``); those it let go are
        closed to reconnect (1012), and resume: back in the room, told of
        whatever changed meanwhile (a media move among it)."""
        # Only clients whose join the owner answered: one still joining is
        # in no owner's room yet, and its answer is on the way.
        held = [
            c
            for c in self.local.values()
            if c.room is None and c.room_name is not None and c.participant_id is not None
        ]
        if held:
            log.warning(
                "cluster lapsed: asking the owners of %d clients' rooms",
                len(held),
                extra={"gap": round(gap, 1)},
            )
            self._spawn(self._still_held(held), "call-still-held")

    async def _still_held(self, held: list[Connection]) -> None:
        from redis.exceptions import RedisError  # here: wadud serve loads no redis-py

        by_room: dict[str, list[Connection]] = {}
        for conn in held:
            if conn.room_name is not None:
                by_room.setdefault(conn.room_name, []).append(conn)
        for name, conns in by_room.items():
            # Redis has only just answered again: a command may still meet a
            # connection the outage broke, so each lookup is tried a few times.
            for attempt in range(HELD_TRIES):
                try:
                    owner = await self.cluster.owner(name)
                except RedisError as exc:
                    log.info("owner lookup after a lapse failed: %r", exc, extra={"room": name})
                    await asyncio.sleep(0.5 * (attempt + 1))
                    continue
                if owner is not None and owner != self.cluster.replica:
                    for conn in conns:
                        if not conn.closing:
                            msg = {"k": "held", "room": name, "conn": conn.ref}
                            self.cluster.send(owner, msg)
                break

    def gone(self, room: str, ref: str) -> None:
        """A connection of ours in a room owned elsewhere ended."""
        self._spawn(self._forward_gone(room, ref), "call-gone")

    def remote_in(self, room: CallRoom) -> list[RemoteConnection]:
        return [c for c in self.remote.values() if c.room is room]

    async def _forward_gone(self, room: str, ref: str) -> None:
        try:
            owner = await self.cluster.owner(room)
            if owner is not None and owner != self.cluster.replica:
                self.cluster.send(owner, {"k": "gone", "room": room, "conn": ref})
        except Exception as exc:
            log.warning("could not tell the room's owner of a closed connection: %s", exc)

    # -- routing ---------------------------------------------------------------

    async def route(
        self,
        conn: AnyConnection,
        frame: protocol.ClientFrame,
        text: str,
        grant: RoomGrant | None,
        claims: Claims | None = None,
    ) -> None:
        """One parsed frame from a client, handled here when this replica
        owns (or can take) its room, else forwarded to the owner. Pings and
        pongs are answered where the socket is; the owner of each room is
        remembered until a delivery finds nobody listening. ``claims``: a
        first join's token decoded already (signalling.cluster.opening)."""
        from redis.exceptions import RedisError  # loaded: replicas exist only with Redis

        name = conn.room_name
        first_join = name is None and isinstance(frame, protocol.Join)
        try:
            if first_join and isinstance(conn, Connection) and isinstance(frame, protocol.Join):
                # A first join: refused here, or routed to its room from now on.
                grant = await self._host.admit(conn, frame, claims)
                name = conn.room_name = grant.room
            if name is None or (
                name not in self._rooms and isinstance(frame, protocol.Ping | protocol.Pong)
            ):
                await self._host.handle(conn, frame, grant)
                return
            await self._route(conn, name, frame, text, grant)
        except RedisError as exc:
            # Redis failing over (or away): the client tries again (a join
            # answered so is sent again by the call page, and admitted anew).
            log.warning("call frame not routed: redis: %s", exc, extra={"room": name})
            if first_join:
                conn.room_name = None
            busy = errors.SignallingError("the server is busy; try again in a moment")
            conn.send(protocol.error_from(busy, frame.id))

    async def _route(
        self,
        conn: AnyConnection,
        name: str,
        frame: protocol.ClientFrame,
        text: str,
        grant: RoomGrant | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2 * self.cluster.lease + 2
        while True:
            owner = self.owners.get(name)
            here = name in self._rooms or name in self._taking
            # Redis just failed over or restarted: a lease can be missing
            # while its holder lives and has not renewed it yet (nor
            # subscribed again). Claiming it would take the room from a live
            # owner (a takeover the pages feel): until the settling ends, the
            # owner its snapshot names is asked, again and again.
            trouble = owner is None and not here and self._redis_trouble()
            if trouble and await self.cluster.owner(name) is None:
                owner = await self._last_owner(name)
            if (here or owner is None) and await self.own(name):
                await self._host.handle(conn, frame, grant)
                return
            if owner is None:
                owner = await self.cluster.owner(name)
            if owner is not None and owner != self.cluster.replica:
                msg: dict[str, Any] = {
                    "k": "in",
                    "room": name,
                    "conn": conn.ref,
                    "text": text,
                    "region": self._region,
                }
                if grant is not None:
                    msg["grant"] = dataclasses.asdict(grant)
                if await self.cluster.deliver(owner, msg):
                    self.owners[name] = owner
                    return
            # The owner is gone (its lease not yet over) or changing hands.
            self.owners.pop(name, None)
            if loop.time() > deadline:
                lost = errors.SignallingError("the room is not reachable; try again")
                conn.send(protocol.error_from(lost))
                return
            await asyncio.sleep(0.2)

    def _redis_trouble(self) -> bool:
        """Redis failed, or came back too recently for a missing key to mean
        a death (see :meth:`_settling`)."""
        return self._redis_failed or time.monotonic() < self._settle_until

    async def _last_owner(self, name: str) -> str | None:
        """Another replica the room's snapshot says owned it, if any."""
        data = await self.cluster.load(name)
        owner = data.get("owner") if data else None
        return owner if isinstance(owner, str) and owner != self.cluster.replica else None

    async def own(self, name: str) -> bool:
        """This replica owns room ``name`` now, taking it over if it was free.
        A room being taken over is not owned until it is restored."""
        if name not in self._rooms and name not in self._taking:
            # Ended here a moment ago, its snapshot and lease not let go yet:
            # a join now is a new call (the writer keeps the lease for it),
            # not the ended one restored with the participants who left and
            # the offers they never answered.
            again = name in self._ended
            self._ended.discard(name)
            if (
                not await self.cluster.claim(name)
                and await self.cluster.owner(name) != self.cluster.replica
            ):
                return False
            if not again and name not in self._rooms and name not in self._taking:
                restored = self._taking[name] = asyncio.get_running_loop().create_future()
                try:
                    await self._take_over(name)
                finally:
                    del self._taking[name]
                    restored.set_result(None)
        taking = self._taking.get(name)
        if taking is not None:
            await asyncio.shield(taking)
        return True

    def _on_message(self, msg: dict[str, Any]) -> None:
        """A message from another replica (see :mod:`signalling.cluster.link`)."""
        kind, ref = msg.get("k"), msg.get("conn")
        if not isinstance(ref, str):
            return
        if kind == "out":
            local, frame = self.local.get(ref), msg.get("frame")
            if local is not None and isinstance(frame, dict):
                # Its own answer to a join: the client is in (see _lapsed).
                who = frame.get("participant")
                if frame.get("type") in ("joined", "waiting") and isinstance(who, dict):
                    local.participant_id = str(who.get("id"))
                local.send(frame)
        elif kind == "close":
            local = self.local.get(ref)
            if local is not None:
                local.close(int(msg.get("code", errors.CLOSE_GOING_AWAY)), str(msg.get("reason")))
        elif kind == "in":
            name, text, grant = msg.get("room"), msg.get("text"), msg.get("grant")
            if not isinstance(name, str) or not isinstance(text, str):
                return
            remote = self.remote.get(ref)
            if remote is None:
                remote = self.remote[ref] = RemoteConnection(self.cluster, ref, name)
            remote.region = str(msg.get("region") or "")
            remote.inbox.put_nowait((text, RoomGrant(**grant) if isinstance(grant, dict) else None))
            if remote.reader is None or remote.reader.done():
                remote.reader = asyncio.create_task(self._read_remote(remote), name="call-remote")
        elif kind == "gone":
            remote = self.remote.get(ref)
            if remote is not None:
                self._rooms.disconnected(remote)
        elif kind == "held":
            # A replica back from a lapse holds this client: if we let it go
            # meanwhile (detached, or the room changed hands), it comes back.
            # (A frame it forwarded since may have made a new, unjoined
            # RemoteConnection: only one in the room counts.)
            name, remote = str(msg.get("room")), self.remote.get(ref)
            room = self._rooms.get(name)
            if remote is None or room is None or remote.room is not room:
                log.info("a client let go during a lapse is asked back", extra={"conn": ref})
                # Its replica, as the ref names it, closes the socket.
                RemoteConnection(self.cluster, ref, name).close(
                    errors.CLOSE_RECONNECT, "reconnect: this server lost touch with the call"
                )
        elif kind == "check":
            # A new owner asks whether a connection it restored still stands.
            sender = msg.get("from")
            if ref not in self.local and isinstance(sender, str):
                self.cluster.send(sender, {"k": "gone", "room": msg.get("room"), "conn": ref})

    async def _read_remote(self, conn: RemoteConnection) -> None:
        """A remote client's frames, one at a time, in order (as the service
        reads a local one's)."""
        while not conn.inbox.empty():
            text, grant = conn.inbox.get_nowait()
            conn.last_seen = asyncio.get_running_loop().time()
            try:
                await self._host.receive(conn, text, grant)
            except Exception:
                log.exception("remote call frame failed")

    # -- snapshots ---------------------------------------------------------------

    def mark(self, room: CallRoom) -> None:
        """The room changed: write its snapshot soon."""
        if self._rooms.get(room.name) is room:
            self._dirty[room.name] = room
            self._dirty_event.set()

    def forget_room(self, name: str) -> None:
        """The room is over: its snapshot and lease go."""
        self._dirty[name] = None
        self._ended.add(name)
        self._dirty_event.set()

    def snapshot(self, room: CallRoom) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()

        def ref(conn: Any) -> str | None:
            return getattr(conn, "ref", None) or None

        data = room.core.snapshot(now, ref)
        data["at"] = time.time()
        data["owner"] = self.cluster.replica
        data["region"] = room.region
        data["sites"] = {region: str(site.placed) for region, site in room.sites.items()}
        data["regions"] = dict(room.regions)
        data["subscribers"] = {
            pid: {
                "asked": list(sub.asked),
                "offer": sub.offer,
                # A single connection's sections, as its last answer left them.
                "receiving": dict(sub.receiving),
                "free": dict(sub.free),
                "offered": sub.offered,
            }
            for pid, sub in room.subscribers.items()
        }
        return data

    async def _writer(self) -> None:
        """Writes changed rooms' snapshots, coalescing bursts of changes."""
        while not self._closed:
            await self._dirty_event.wait()
            await asyncio.sleep(0.01)
            self._dirty_event.clear()
            batch, self._dirty = self._dirty, {}
            states = {
                name: self.snapshot(room) if room is not None else None
                for name, room in batch.items()
            }
            try:
                await self.cluster.save(states)
                for name, state in states.items():
                    if state is None:
                        if name not in self._ended:
                            continue  # joined again meanwhile: the lease stays
                        if name not in self._rooms:
                            await self.cluster.disown(name)
                        if name not in self._ended:
                            # Joined again while the lease was let go.
                            await self.cluster.claim(name)
                        elif name not in self._dirty:
                            self._ended.discard(name)
            except Exception as exc:
                log.warning("room snapshots not written: %s", exc)
                for name, room in batch.items():
                    self._dirty.setdefault(name, room)
                await asyncio.sleep(0.5)
                self._dirty_event.set()

    async def _take_over(self, name: str) -> None:
        """This replica just became the owner of ``name``: restore it from its
        snapshot, if there is one (its previous owner died or let it go)."""
        data = await self.cluster.load(name)
        if data is None or name in self._rooms:
            return
        refs = {p_["conn"] for p_ in data.get("participants", ()) if p_.get("conn")}
        others = {conn_replica(r) for r in refs} - {self.cluster.replica}
        alive = await self.cluster.alive(others)
        if name in self._rooms:
            return
        room = self._rooms.room(name, str(data.get("region") or ""))
        loop = asyncio.get_running_loop()

        me = self.cluster.replica

        def conn_of(ref: str) -> AnyConnection | None:
            owner = conn_replica(ref)
            if owner == me:
                return self.local.get(ref)
            if owner in alive:
                remote = self.remote.get(ref)
                if remote is None:
                    remote = self.remote[ref] = RemoteConnection(self.cluster, ref, name)
                return remote
            return None

        def grace_of(ref: str) -> float | None:
            # A connection on a replica that fell silent: dead, or cut off
            # with its clients (a region whose link broke), which come back
            # when it heals. The watcher gives them as long (_watch_once);
            # a resume after resume_grace would be a stranger's join.
            return None if conn_replica(ref) == me else self._cutoff_grace

        outputs = room.core.restore(
            data,
            loop.time(),
            conn_of=conn_of,
            grant_of=lambda d: RoomGrant(**d),
            elapsed=max(0.0, time.time() - float(data.get("at") or time.time())),
            grace_of=grace_of,
        )
        for participant in room.core.members.participants.values():
            # The handles conn_of gave: this replica's connections or RemoteConnections.
            conn = cast("AnyConnection | None", participant.conn)
            if conn is not None:
                conn.room, conn.participant_id, conn.room_name = room, participant.id, name
            if isinstance(conn, RemoteConnection):
                # Its close may have gone to the dead owner: ask its replica.
                check = {"k": "check", "room": name, "conn": conn.ref, "from": me}
                self.cluster.send(conn.replica, check)
        room.regions.update({str(k): str(v) for k, v in (data.get("regions") or {}).items()})
        if self._sites.placement is not None:
            for region, placed in (data.get("sites") or {}).items():
                await self._sites.point(room, str(region), Placed.parse(str(placed)))
        for pid, sub_data in (data.get("subscribers") or {}).items():
            if room.core.members.get(pid) is None:
                continue
            sub = room.subscriber(pid)
            sub.asked = tuple(sub_data.get("asked") or ())
            sub.offer = sub_data.get("offer")
            sub.receiving = {
                str(k): str(v) for k, v in dict(sub_data.get("receiving") or {}).items()
            }
            sub.free = {str(k): int(v) for k, v in dict(sub_data.get("free") or {}).items()}
            sub.offered = bool(sub_data.get("offered", False))
        TAKEOVERS.inc()
        log.info("call room taken over", extra={"room": name})
        self._rooms.apply(room, outputs)
        self._watch_now.set()

    # -- the watcher -------------------------------------------------------------

    async def _watcher(self) -> None:
        """Each second (or at once when a worker's life changes): renew
        leases, notice dead replicas and workers, adopt orphaned rooms."""
        # Well inside the lease, so it is renewed before it runs out.
        interval = min(WATCH_INTERVAL, self.cluster.lease / 3)
        # The flag, not only the cancel, ends the loop: Python 3.11's wait_for
        # can lose a cancel that meets its timeout, and asyncio.timeout cannot.
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._watch_now.wait()
            self._watch_now.clear()
            try:
                await self._watch_once()
            except Exception as exc:
                self._redis_failed = True
                log.warning("cluster watch failed: %s", exc)

    async def _media_probe(self) -> None:
        """Wake the watcher as soon as a media worker of our rooms stops
        listening (:meth:`Sites.went_silent`); the watcher's round decides,
        with what it knows of Redis outages, whether that is a death."""
        while not self._closed:
            await asyncio.sleep(MEDIA_PROBE_INTERVAL)
            try:
                if await self._sites.went_silent():
                    self._watch_now.set()
            except Exception as exc:
                # The watcher's own round notices and says what is wrong with Redis.
                log.debug("media probe failed: %s", exc)

    def _settling(self, now: float) -> bool:
        """Whether Redis came back from an outage too recently for a missing
        key or subscriber to mean a death. A Redis that restarted empty, or a
        replica the sentinels promoted, knows none of the subscriptions and
        may lack the heartbeat keys written while it was away: every replica
        and media worker writes its key again within a heartbeat and
        subscribes again within the bus's reconnect backoff (2 s at most).
        Until then a room's worker and its participants on other replicas are
        kept; a worker that drains still moves at once. After that, a worker
        whose heartbeat is back is kept while its subscription follows
        (:meth:`Sites.redis_back`): a starved one took longer than this."""
        if self._redis_failed:
            self._redis_failed = False
            self._settle_until = now + SETTLE_FACTOR * self.cluster.lease
            self._sites.redis_back(time.time())
        return now < self._settle_until

    async def _watch_once(self) -> None:
        if await self.cluster.server_changed():
            # A failover the client's retries hid from every command: the
            # media workers' and replicas' subscriptions are coming back.
            log.warning("another Redis server answers now: settling before judging deaths")
            self._redis_failed = True
        lost = await self.cluster.renew(list(self._rooms))
        for name in lost:
            room = self._rooms.get(name)
            if room is None:
                continue
            if await self.cluster.claim(name):
                # Nobody holds it (Redis restarted, or the lease ran out while
                # Redis was away): keep the room and write its snapshot again.
                log.warning("call room lease renewed after a gap", extra={"room": name})
                self.mark(room)
                # Redis forgot a lease it should hold: it forgot the others' too.
                self._redis_failed = True
            else:
                log.warning("lost the lease of a call room; another replica has it")
                self._rooms.drop_room(room, forget=False)
        # After the leases: one found missing above starts the settling too.
        settling = self._settling(time.monotonic())
        await self._sites.refresh()
        # Replicas whose clients are in our rooms: a dead one's are detached.
        replicas = {c.replica for c in self.remote.values()}
        if replicas and not settling:
            alive = await self.cluster.alive(replicas)
            for conn in [c for c in self.remote.values() if c.replica not in alive]:
                # Dead, or cut off with its clients (a region whose link
                # broke): they keep their place longer than a dropped socket.
                self._rooms.disconnected(conn, self._cutoff_grace)
        # Our clients in rooms nobody owns (their owner died): take them over.
        orphaned = {c.room_name for c in self.local.values() if c.room is None and c.room_name}
        for name in set(self.owners) - orphaned:
            del self.owners[name]
        # Not while settling: a lease missing then may be one its live
        # holder has not renewed yet (it claims it again within a round).
        for name in orphaned if not settling else ():
            if (
                name is not None
                and name not in self._rooms
                and await self.cluster.owner(name) is None
            ):
                await self.own(name)
        await self._sites.check_media(trust_absence=not settling)
