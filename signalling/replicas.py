"""The call service's side in a cluster of API replicas (with Redis).

:mod:`signalling.cluster` is the link (leases, snapshots, ordered messages);
this module is what the call service does with it: route a client's frames
to its room's owner, serve other replicas' clients in the rooms this one
owns (:class:`RemoteConnection`), write room snapshots, and take a room over
when its owner died (moving a room's media is :mod:`signalling.sites`).
The functions here are
:class:`signalling.service.CallService` methods (bound there by name), kept
apart because they run only when the service has a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import Counter
from redis.exceptions import RedisError

from signalling import errors
from signalling import protocol as p
from signalling.cluster import conn_replica
from signalling.placement import Placed
from wadud.auth import InvalidToken, RoomGrant, decode_room_token

if TYPE_CHECKING:
    from signalling.service import AnyConnection, CallRoom, CallService, Connection

log = logging.getLogger("wadud.signalling")

#: Seconds between the cluster watcher's rounds (leases, dead replicas and workers).
WATCH_INTERVAL = 1.0

TAKEOVERS = Counter(
    "wadud_call_room_takeovers", "Rooms this replica took over from a replica that died."
)


class RemoteConnection:
    """A client connected to another replica, as the room's owner sees it:
    what is sent goes to that replica, which writes it to the socket."""

    def __init__(self, service: CallService, ref: str, room_name: str) -> None:
        self.service = service
        self.ref = ref
        self.replica = conn_replica(ref)
        self.room: CallRoom | None = None
        self.room_name: str | None = room_name
        self.participant_id: str | None = None
        #: The region of the replica the client reached (from its messages).
        self.region = ""
        self.closing = False
        self.last_seen = 0.0
        self.inbox: asyncio.Queue[str] = asyncio.Queue()
        self.reader: asyncio.Task[None] | None = None

    def send(self, frame: dict[str, Any]) -> None:
        if self.closing:
            return
        # Error frames are counted where they reach the socket.
        cluster = self.service.cluster
        if cluster is not None:
            cluster.send(self.replica, {"k": "out", "conn": self.ref, "frame": frame})

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            cluster = self.service.cluster
            if cluster is not None:
                msg = {"k": "close", "conn": self.ref, "code": code, "reason": reason}
                cluster.send(self.replica, msg)


class _Moved(Exception):
    """The room is owned by another replica (raised before anything changed)."""

    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


def _on_worker_message(svc: CallService, worker: str, incarnation: str, payload: Any) -> None:
    if isinstance(payload, str):
        # A worker's life changed (stopped, draining): check placements now.
        svc._watch_now.set()
    else:
        svc.on_media_event(payload, worker)


async def _forward_gone(svc: CallService, room: str, ref: str) -> None:
    assert svc.cluster is not None
    try:
        owner = await svc.cluster.owner(room)
        if owner is not None and owner != svc.cluster.replica:
            svc.cluster.send(owner, {"k": "gone", "room": room, "conn": ref})
    except Exception as exc:
        log.warning("could not tell the room's owner of a closed connection: %s", exc)


async def route(svc: CallService, conn: AnyConnection, text: str) -> None:
    """One text frame from a client, handled here when this replica owns
    (or can take) its room, else forwarded to the owner. Pings and pongs are
    answered where the socket is; the owner of each room is remembered until
    a delivery finds nobody listening."""
    if svc.cluster is None:
        await svc.on_text(conn, text)
        return
    name = conn.room_name
    if name is None and not isinstance(conn, RemoteConnection):
        name = svc._join_room_of(conn, text)
        if name is None:
            # Not a join, or a join this replica refuses by itself.
            await svc.on_text(conn, text)
            return
    if name is None or (name not in svc.rooms and _keepalive(text)):
        await svc.on_text(conn, text)
        return
    try:
        await _route(svc, conn, name, text)
    except RedisError as exc:
        log.warning("call frame not routed: redis: %s", exc, extra={"room": name})
        conn.send(p.error_frame("internal-error", "the server is busy; try again in a moment"))


def _keepalive(text: str) -> bool:
    try:
        frame = p.parse(text)
    except p.ProtocolError:
        return False
    return isinstance(frame, p.Ping | p.Pong)


async def _route(svc: CallService, conn: AnyConnection, name: str, text: str) -> None:
    assert svc.cluster is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2 * svc.cluster.lease + 2
    while True:
        owner = svc.owners.get(name)
        if name in svc.rooms or (owner is None and await svc._own(name)):
            try:
                await svc.on_text(conn, text)
                return
            except _Moved as moved:
                owner = moved.owner or None
        if owner is None:
            owner = await svc.cluster.owner(name)
        if owner is not None and owner != svc.cluster.replica:
            msg = {
                "k": "in",
                "room": name,
                "conn": conn.ref,
                "text": text,
                "region": svc.settings.region,
            }
            if await svc.cluster.deliver(owner, msg):
                svc.owners[name] = owner
                return
        # The owner is gone (its lease not yet over) or changing hands.
        svc.owners.pop(name, None)
        if loop.time() > deadline:
            conn.send(p.error_frame("internal-error", "the room is not reachable; try again"))
            return
        await asyncio.sleep(0.2)


def _join_room_of(svc: CallService, conn: Connection, text: str) -> str | None:
    """The room a ``join`` frame asks for, if its token is good (this
    replica answers bad frames and tokens itself)."""
    try:
        frame = p.parse(text)
    except p.ProtocolError:
        return None
    if not isinstance(frame, p.Join):
        return None
    try:
        grant = decode_room_token(svc.settings, frame.token)
    except InvalidToken:
        return None
    if conn.room_hint is not None and conn.room_hint != grant.room:
        return None
    conn.room_name = grant.room
    return grant.room


async def _own(svc: CallService, name: str) -> bool:
    """This replica owns room ``name`` now, taking it over if it was free."""
    if name in svc.rooms or svc.cluster is None:
        return True
    if not await svc.cluster.claim(name) and await svc.cluster.owner(name) != svc.cluster.replica:
        return False
    if name not in svc.rooms:
        await svc._take_over(name)
    return True


def _on_cluster(svc: CallService, msg: dict[str, Any]) -> None:
    """A message from another replica (see :mod:`signalling.cluster`)."""
    kind, ref = msg.get("k"), msg.get("conn")
    if not isinstance(ref, str):
        return
    if kind == "out":
        local = svc.local.get(ref)
        if local is not None and isinstance(msg.get("frame"), dict):
            local.send(msg["frame"])
    elif kind == "close":
        local = svc.local.get(ref)
        if local is not None:
            local.close(int(msg.get("code", errors.CLOSE_GOING_AWAY)), str(msg.get("reason")))
    elif kind == "in":
        name, text = msg.get("room"), msg.get("text")
        if not isinstance(name, str) or not isinstance(text, str):
            return
        remote = svc.remote.get(ref)
        if remote is None:
            remote = svc.remote[ref] = RemoteConnection(svc, ref, name)
        remote.region = str(msg.get("region") or "")
        remote.inbox.put_nowait(text)
        if remote.reader is None or remote.reader.done():
            remote.reader = asyncio.create_task(svc._read_remote(remote), name="call-remote")
    elif kind == "gone":
        remote = svc.remote.get(ref)
        if remote is not None:
            svc.disconnected(remote)
    elif kind == "check":
        # A new owner asks whether a connection it restored still stands.
        sender = msg.get("from")
        if ref not in svc.local and isinstance(sender, str) and svc.cluster is not None:
            svc.cluster.send(sender, {"k": "gone", "room": msg.get("room"), "conn": ref})


async def _read_remote(svc: CallService, conn: RemoteConnection) -> None:
    """A remote client's frames, one at a time, in order (as ``serve``
    reads a local one's)."""
    while not conn.inbox.empty():
        text = conn.inbox.get_nowait()
        conn.last_seen = asyncio.get_running_loop().time()
        try:
            await svc.route(conn, text)
        except Exception:
            log.exception("remote call frame failed")


def _mark(svc: CallService, room: CallRoom) -> None:
    if svc.cluster is not None and svc.rooms.get(room.name) is room:
        svc._dirty[room.name] = room
        svc._dirty_event.set()


def _snapshot(svc: CallService, room: CallRoom) -> dict[str, Any]:
    now = asyncio.get_running_loop().time()

    def ref(conn: Any) -> str | None:
        return getattr(conn, "ref", None) or None

    data = room.core.snapshot(now, ref)
    data["at"] = time.time()
    data["region"] = room.region
    data["sites"] = {region: str(site.placed) for region, site in room.sites.items()}
    data["regions"] = dict(room.regions)
    data["subscribers"] = {
        pid: {"asked": list(sub.asked), "offer": sub.offer} for pid, sub in room.subscribers.items()
    }
    return data


async def _writer(svc: CallService) -> None:
    """Writes changed rooms' snapshots, coalescing bursts of changes."""
    assert svc.cluster is not None
    while not svc._closed:
        await svc._dirty_event.wait()
        await asyncio.sleep(0.01)
        svc._dirty_event.clear()
        batch, svc._dirty = svc._dirty, {}
        states = {
            name: svc._snapshot(room) if room is not None else None for name, room in batch.items()
        }
        try:
            await svc.cluster.save(states)
            for name, state in states.items():
                if state is None and name not in svc.rooms:
                    await svc.cluster.disown(name)
        except Exception as exc:
            log.warning("room snapshots not written: %s", exc)
            for name, room in batch.items():
                svc._dirty.setdefault(name, room)
            await asyncio.sleep(0.5)
            svc._dirty_event.set()


async def _take_over(svc: CallService, name: str) -> None:
    """This replica just became the owner of ``name``: restore it from its
    snapshot, if there is one (its previous owner died or let it go)."""
    assert svc.cluster is not None
    data = await svc.cluster.load(name)
    if data is None or name in svc.rooms:
        return
    refs = {p_["conn"] for p_ in data.get("participants", ()) if p_.get("conn")}
    others = {conn_replica(r) for r in refs} - {svc.cluster.replica}
    alive = await svc.cluster.alive(others)
    if name in svc.rooms:
        return
    room = svc.room(name, str(data.get("region") or ""))
    loop = asyncio.get_running_loop()

    me = svc.cluster.replica

    def conn_of(ref: str) -> AnyConnection | None:
        owner = conn_replica(ref)
        if owner == me:
            return svc.local.get(ref)
        if owner in alive:
            remote = svc.remote.get(ref)
            if remote is None:
                remote = svc.remote[ref] = RemoteConnection(svc, ref, name)
            return remote
        return None

    outputs = room.core.restore(
        data,
        loop.time(),
        conn_of=conn_of,
        grant_of=lambda d: RoomGrant(**d),
        elapsed=max(0.0, time.time() - float(data.get("at") or time.time())),
    )
    for participant in room.core.participants.values():
        # The handles conn_of gave: this replica's connections or RemoteConnections.
        conn = cast("AnyConnection | None", participant.conn)
        if conn is not None:
            conn.room, conn.participant_id, conn.room_name = room, participant.id, name
        if isinstance(conn, RemoteConnection):
            # Its close may have gone to the dead owner: ask its replica.
            check = {"k": "check", "room": name, "conn": conn.ref, "from": me}
            svc.cluster.send(conn.replica, check)
    room.regions.update({str(k): str(v) for k, v in (data.get("regions") or {}).items()})
    if svc.placement is not None:
        for region, placed in (data.get("sites") or {}).items():
            await svc._point(room, str(region), Placed.parse(str(placed)))
    for pid, sub_data in (data.get("subscribers") or {}).items():
        if room.core.get(pid) is None:
            continue
        sub = room.subscriber(pid)
        sub.asked = tuple(sub_data.get("asked") or ())
        sub.offer = sub_data.get("offer")
    TAKEOVERS.inc()
    log.info("call room taken over", extra={"room": name})
    svc.apply(room, outputs)
    svc._watch_now.set()


async def _watcher(svc: CallService) -> None:
    """Each second (or at once when a worker's life changes): renew
    leases, notice dead replicas and workers, adopt orphaned rooms."""
    # Well inside the lease, so it is renewed before it runs out.
    interval = min(WATCH_INTERVAL, svc.cluster.lease / 3) if svc.cluster else WATCH_INTERVAL
    # The flag, not only the cancel, ends the loop: Python 3.11's wait_for
    # can lose a cancel that meets its timeout, and asyncio.timeout cannot.
    while not svc._closed:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await svc._watch_now.wait()
        svc._watch_now.clear()
        try:
            await svc._watch_once()
        except Exception as exc:
            log.warning("cluster watch failed: %s", exc)


async def _watch_once(svc: CallService) -> None:
    assert svc.cluster is not None
    lost = await svc.cluster.renew(list(svc.rooms))
    for name in lost:
        room = svc.rooms.get(name)
        if room is None:
            continue
        if await svc.cluster.claim(name):
            # Nobody holds it (Redis restarted, or the lease ran out while
            # Redis was away): keep the room and write its snapshot again.
            log.warning("call room lease renewed after a gap", extra={"room": name})
            svc._mark(room)
        else:
            log.warning("lost the lease of a call room; another replica has it")
            svc._drop_room(room, forget=False)
    if svc.placement is not None:
        await svc.placement.refresh(
            [(name, region) for name, r in svc.rooms.items() for region in r.sites]
        )
    # Replicas whose clients are in our rooms: a dead one's are detached.
    replicas = {c.replica for c in svc.remote.values()}
    if replicas:
        alive = await svc.cluster.alive(replicas)
        for conn in [c for c in svc.remote.values() if c.replica not in alive]:
            svc.disconnected(conn)
    # Our clients in rooms nobody owns (their owner died): take them over.
    orphaned = {c.room_name for c in svc.connections if c.room is None and c.room_name}
    for name in set(svc.owners) - orphaned:
        del svc.owners[name]
    for name in orphaned:
        if name is not None and name not in svc.rooms and await svc.cluster.owner(name) is None:
            await svc._own(name)
    await svc._check_media()
