"""Call rooms across API replicas: one owner per room, messages through Redis.

Any ``wadud api`` replica may hold any participant's WebSocket. Each room has
one *owner*, the replica that runs its :class:`signalling.room.core.Room` core,
its timers and its media calls; the others forward their connections' frames
to it and deliver what it sends back. Ownership is a lease in Redis
(``SET NX PX``) that the owner renews; the room's state is written to Redis
after every change, so when an owner dies, the first replica that needs the
room (one of its clients' frames, or its watcher, within about a lease) takes
it over from that snapshot: participants whose connections stood on the dead
replica are DETACHED and resume on a live one with the same id; the others
never notice.

Keys and channels:

* ``wadud:call:room:{room}:owner``: the owner's replica id (lease, PX);
* ``wadud:call:room:{room}:state``: the room's snapshot (JSON);
* ``wadud:call:ended:{room}``: an ended room refuses joins for a day;
* ``wadud:call:replica:{id}``: a replica is alive while this key is (lease);
  it is also the channel the replica listens on.

Messages on a replica's channel (JSON): ``in`` (a client's text frame for a
room this replica owns), ``gone`` (that client's connection ended), ``out``
(a frame for a client connected here) and ``close`` (close that client's
connection). Everything one replica publishes goes out through one ordered
queue on one connection, so a client sees the owner's frames in the order
they were sent. A message sent to a replica nobody hears (its subscription
coming back after a Redis failover) is held, with everything sent to that
replica after it, and sent again for :data:`HOLD` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from wadud.messaging.bus import RENEW_WITHIN, BusSubscription, RedisBus, encode

log = logging.getLogger("wadud.signalling.cluster")

__all__ = ["Cluster", "conn_replica"]

OWNER_KEY = "wadud:call:room:{room}:owner"
STATE_KEY = "wadud:call:room:{room}:state"
ENDED_KEY = "wadud:call:ended:{room}"
REPLICA_KEY = "wadud:call:replica:{replica}"
#: How long a room's snapshot outlives its last change, and an ended room's mark.
STATE_TTL = 24 * 3600
#: Seconds a message sent to a replica nobody hears is held and sent again
#: (its subscription coming back after a Redis failover: the bus's 2 s
#: backoff and a margin), and how often it is tried.
HOLD = 3.0
HOLD_RETRY = 0.2

_RENEW = """
local n = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    n = n + 1
  end
end
return n
"""

_LOST = """
local lost = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[1] then
    table.insert(lost, i)
  end
end
return lost
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


def conn_replica(ref: str) -> str:
    """The replica a connection reference (``"{replica}/{n}"``) lives on."""
    return ref.partition("/")[0]


class Cluster:
    """This replica's side of the cluster: identity, lease, ordered publishing
    and its channel. Owns two Redis connections' worth of work: the shared
    client for commands and one pub/sub subscription."""

    def __init__(self, redis: Any, *, lease: float, replica_id: str | None = None) -> None:
        self.redis = redis
        self.lease = lease
        self.replica = replica_id or "api-" + secrets.token_hex(5)
        self._lease_ms = max(int(lease * 1000), 500)
        self._renew = redis.register_script(_RENEW)
        self._lost = redis.register_script(_LOST)
        self._release = redis.register_script(_RELEASE)
        self._out: asyncio.Queue[tuple[str, str, asyncio.Future[int] | None]] = asyncio.Queue()
        #: Sent messages nobody received yet, by channel: (payload, first tried).
        self._held: dict[str, list[tuple[str, float]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._handler: Callable[[dict[str, Any]], None] = lambda _m: None
        self._lapsed: Callable[[float], None] = lambda _gap: None
        self._renewing: asyncio.Task[None] | None = None
        #: Other subscriptions of this process in this Redis, renewed with ours.
        self._renewals: list[Callable[[float], Awaitable[bool]]] = []
        self._sub: BusSubscription | None = None
        self._closed = False
        self._seq = 0
        #: The run id of the Redis server that answered :meth:`server_changed` last.
        self._server: str | None = None

    # -- identity ---------------------------------------------------------------

    def new_ref(self) -> str:
        """A reference for a connection of this replica, unique in the cluster."""
        self._seq += 1
        return f"{self.replica}/{self._seq}"

    def channel(self, replica: str) -> str:
        return REPLICA_KEY.format(replica=replica)

    # -- life -------------------------------------------------------------------

    async def start(
        self,
        handler: Callable[[dict[str, Any]], None],
        lapsed: Callable[[float], None] | None = None,
    ) -> None:
        """Listen on this replica's channel (``handler``) and keep its key
        alive. ``lapsed(gap)``: the key went unrenewed for ``gap`` seconds,
        longer than the lease, and is back (Redis was out of reach): others
        may have taken this replica for dead meanwhile."""
        self._handler = handler
        if lapsed is not None:
            self._lapsed = lapsed
        await self.redis.set(self.channel(self.replica), "1", px=self._lease_ms)
        await self._subscribe()
        self._tasks = [
            asyncio.create_task(self._publisher(), name="cluster-publish"),
            asyncio.create_task(self._listen(), name="cluster-listen"),
            asyncio.create_task(self._heartbeat(), name="cluster-heartbeat"),
        ]

    async def close(self) -> None:
        self._closed = True
        # What is queued (last frames, closes) still goes out, briefly.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self._out.join()
        if self._sub is not None:
            # Ends the listening loop (a cancel alone may be taken for a
            # dropped connection inside the Redis client and retried).
            with contextlib.suppress(Exception):
                await self._sub.close()
        tasks = [*self._tasks, *([self._renewing] if self._renewing is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.redis.delete(self.channel(self.replica))

    def renew_with(self, renew: Callable[[float], Awaitable[bool]]) -> None:
        """After a lapse, ``renew(within)`` too, beside this replica's
        channel: another subscription of this process in the same Redis
        (the media client's replies and events) was cut off the same way."""
        self._renewals.append(renew)

    async def _subscribe(self) -> None:
        # wadud.messaging.bus's subscription resubscribes by itself after a Redis restart.
        self._sub = await RedisBus.from_client(self.redis).subscribe(self.channel(self.replica))

    async def _listen(self) -> None:
        assert self._sub is not None
        async for msg in self._sub:
            try:
                self._handler(msg.data)
            except Exception:
                log.exception("cluster message failed")

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while not self._closed:
            await asyncio.sleep(self.lease / 3)
            try:
                await self.redis.set(self.channel(self.replica), "1", px=self._lease_ms)
            except Exception as exc:
                log.warning("cluster heartbeat failed", extra={"error": str(exc)})
                continue
            gap, renewed = loop.time() - renewed, loop.time()
            if gap > self.lease:
                log.warning("cluster heartbeat back after %.1f s", gap)
                self._renewing = asyncio.create_task(self._after_lapse(gap), name="cluster-lapse")

    async def _after_lapse(self, gap: float) -> None:
        """Listen on a fresh connection, then tell the handler: what others
        answer it must reach us, and messages to us since the gap began may
        sit in the old connection's retransmission backoff."""
        renewals = [r(RENEW_WITHIN) for r in self._renewals]
        if self._sub is not None:
            renewals.append(self._sub.renew(RENEW_WITHIN))
        done = await asyncio.gather(*renewals, return_exceptions=True)
        if not all(ok is True for ok in done):
            log.warning("cluster subscriptions not renewed in %.0f s; going on", RENEW_WITHIN)
        try:
            self._lapsed(gap)
        except Exception:
            log.exception("cluster lapse handler failed")

    # -- publishing, in order -----------------------------------------------------

    def send(self, replica: str, data: Mapping[str, Any]) -> None:
        """Queue a message for ``replica`` (fire and forget, in order)."""
        self._out.put_nowait((self.channel(replica), encode(data), None))

    async def deliver(self, replica: str, data: Mapping[str, Any]) -> int:
        """Send in order and return how many listened (0: the replica is gone)."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._out.put_nowait((self.channel(replica), encode(data), fut))
        return await fut

    async def _publisher(self) -> None:
        while True:
            batch = await self._next_batch()
            await self._retry_held()
            if not batch:
                continue
            # A replica with messages held keeps its order: what follows waits too.
            now_out = []
            for channel, payload, fut in batch:
                if fut is None and channel in self._held:
                    self._held[channel].append((payload, asyncio.get_running_loop().time()))
                else:
                    now_out.append((channel, payload, fut))
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for channel, payload, _ in now_out:
                        pipe.publish(channel, payload)
                    counts = await pipe.execute()
            except Exception as exc:
                log.warning("cluster publish failed", extra={"error": str(exc)})
                counts = [0] * len(now_out)
            now = asyncio.get_running_loop().time()
            for (channel, payload, fut), n in zip(now_out, counts, strict=True):
                if fut is not None:
                    if not fut.done():
                        fut.set_result(int(n))
                elif not n:
                    self._held.setdefault(channel, []).append((payload, now))
            for _ in batch:
                self._out.task_done()

    async def _next_batch(self) -> list[tuple[str, str, asyncio.Future[int] | None]]:
        """What is queued, up to 256; while messages are held, at most
        :data:`HOLD_RETRY` later even if nothing is."""
        if self._out.empty() and self._held:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HOLD_RETRY):
                    return await self._take()
            return []
        return await self._take()

    async def _take(self) -> list[tuple[str, str, asyncio.Future[int] | None]]:
        batch = [await self._out.get()]
        while not self._out.empty() and len(batch) < 256:
            batch.append(self._out.get_nowait())
        return batch

    async def _retry_held(self) -> None:
        """Publish held messages again, each replica's in order. A replica's
        channel with nobody listening (its subscription coming back after a
        Redis failover or restart) holds what is sent to it, for
        :data:`HOLD` seconds; then, the replica being gone, it is dropped."""
        now = asyncio.get_running_loop().time()
        for channel in list(self._held):
            held = self._held[channel]
            try:
                while held:
                    if not await self.redis.publish(channel, held[0][0]):
                        break
                    held.pop(0)
            except Exception as exc:
                log.debug("cluster publish of held messages failed: %s", exc)
            if held and now - held[0][1] > HOLD:
                log.warning(
                    "cluster messages dropped: nobody listened for %g s",
                    HOLD,
                    extra={"channel": channel, "messages": len(held)},
                )
                held.clear()
            if not held:
                del self._held[channel]

    # -- ownership ------------------------------------------------------------------

    async def server_changed(self) -> bool:
        """Whether another Redis server answers than at the last call (its
        run id): the sentinels promoted a replica, or Redis restarted. The
        client retries a command on a new connection, so a failover between
        two calls raises nothing; the promoted replica then has every key
        (its copy) but none of the subscriptions, until each process
        subscribes again. False at the first call, and where INFO is
        refused."""
        from redis.exceptions import ResponseError  # here: wadud serve loads no redis-py

        try:
            info = await self.redis.info("server")
        except ResponseError:
            return False
        run_id = info.get("run_id")
        changed = self._server is not None and run_id != self._server
        self._server = run_id
        return changed

    async def owner(self, room: str) -> str | None:
        value = await self.redis.get(OWNER_KEY.format(room=room))
        return str(value) if value else None

    async def claim(self, room: str) -> bool:
        """Become the room's owner if nobody is."""
        return bool(
            await self.redis.set(
                OWNER_KEY.format(room=room), self.replica, nx=True, px=self._lease_ms
            )
        )

    async def renew(self, rooms: list[str]) -> list[str]:
        """Renew the leases of ``rooms``; returns those no longer ours."""
        if not rooms:
            return []
        keys = [OWNER_KEY.format(room=r) for r in rooms]
        await self._renew(keys=keys, args=[self.replica, self._lease_ms])
        lost = await self._lost(keys=keys, args=[self.replica])
        return [rooms[int(i) - 1] for i in lost]

    async def disown(self, room: str) -> None:
        await self._release(keys=[OWNER_KEY.format(room=room)], args=[self.replica])

    async def alive(self, replicas: set[str]) -> set[str]:
        """Which of ``replicas`` hold their lease."""
        if not replicas:
            return set()
        names = sorted(replicas)
        values = await self.redis.mget([self.channel(r) for r in names])
        return {r for r, v in zip(names, values, strict=True) if v}

    # -- state ------------------------------------------------------------------------

    async def save(self, states: Mapping[str, dict[str, Any] | None]) -> None:
        """Write rooms' snapshots (None: the room is over, forget it)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for room, state in states.items():
                if state is None:
                    pipe.delete(STATE_KEY.format(room=room))
                else:
                    pipe.set(STATE_KEY.format(room=room), encode(state), ex=STATE_TTL)
            await pipe.execute()

    async def load(self, room: str) -> dict[str, Any] | None:
        value = await self.redis.get(STATE_KEY.format(room=room))
        if not value:
            return None
        try:
            data = json.loads(value)
        except ValueError:
            log.error("unreadable room snapshot ignored", extra={"room": room})
            return None
        return data if isinstance(data, dict) else None

    async def mark_ended(self, room: str) -> None:
        await self.redis.set(ENDED_KEY.format(room=room), "1", ex=STATE_TTL)

    async def is_ended(self, room: str) -> bool:
        return bool(await self.redis.exists(ENDED_KEY.format(room=room)))
