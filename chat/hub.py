"""Per-node fan-out: which local WebSocket clients watch which conversation,
and getting every committed event to each of them exactly once, in order.

The shape:

* A node that commits an event delivers it to its own clients at once and
  publishes it on the bus (topic ``chat``; Redis pub/sub across nodes, the
  in-process bus in ``wadud serve``). Publishes are batched by one task, so a
  node sends one bus message per burst, in commit order.
* Every node keeps, per conversation with local clients, a :class:`ConversationFanout` with
  the highest sequence it delivered. Sequences are dense and a visible one
  implies all smaller ones committed (``chat_append`` holds the conversation's
  row lock until commit), so an event that skips ahead means the bus lost or
  reordered something: the room asks PostgreSQL for the gap and delivers in
  order. Repeats (seq already delivered) are dropped.
* Pub/sub can also lose the *last* events (Redis restarting) with nothing
  after them to show a gap, so a reconcile loop compares each room with
  ``chat_conversations.last_seq`` and fills a room still behind on the next
  round.
* A client subscribing from ``after`` is registered first and then catches up
  from PostgreSQL; live events that arrive meanwhile wait in its buffer. The
  union has no hole and no repeat (see :meth:`Hub.subscribe`).
* Revocation (:mod:`wadud.messaging.revocation`): the hub listens on ``auth.revoked``
  and ends the sockets a logout, a revoked session or a change of rights
  covers, on every node; a liveness loop re-checks every connected principal
  every ``liveness_interval`` seconds in case the bus lost that message.

In-memory state here is only a delivery cache; losing a node loses nothing,
its clients resume from their last sequence on another.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg

from chat import eventlog
from chat.access import Access
from chat.crypto import Keyring
from chat.errors import BadSequence
from chat.protocol import VERSION, encode
from wadud.messaging import loops, revocation
from wadud.messaging.bus import Bus, BusSubscription
from wadud.principal import Principal

log = logging.getLogger("wadud.chat")
TOPIC = "chat"
CATCH_UP_PAGE = 500
#: Seconds between re-checks of every connected principal (revoked session,
#: disabled account, changed role) in case an ``auth.revoked`` message was lost.
LIVENESS_INTERVAL = 10.0


class Client:
    """One WebSocket connection's outbound side: an ordered queue of text
    frames and a callback that cuts the connection if it falls too far
    behind (it then resumes from its last sequence)."""

    def __init__(
        self,
        user_id: UUID,
        *,
        queue_max: int,
        on_overflow: Callable[[], None],
        principal: Principal | None = None,
        on_revoked: Callable[[str], None] | None = None,
    ) -> None:
        self.user_id = user_id
        self.principal = principal
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.queue_max = queue_max
        self._on_overflow = on_overflow
        self._on_revoked = on_revoked
        self.overflowed = False
        self.revoked = False
        self.subs: dict[UUID, Sub] = {}

    def revoke(self, reason: str) -> None:
        """The session behind this connection ended: send nothing more, and
        let the connection close itself (once)."""
        if self.revoked:
            return
        self.revoked = True
        if self._on_revoked is not None:
            self._on_revoked(reason)

    def put(self, text: str) -> None:
        if self.overflowed or self.revoked:
            return
        if self.queue.qsize() >= self.queue_max:
            self.overflowed = True
            self._on_overflow()
            return
        self.queue.put_nowait(text)


@dataclass(eq=False)
class Sub:
    client: Client
    conversation_id: UUID
    sent: int
    catching_up: bool = True
    buffer: list[dict[str, Any]] = field(default_factory=list)

    def push(self, event: dict[str, Any], text: str | None = None) -> None:
        if self.catching_up:
            self.buffer.append(event)
            return
        seq = event["seq"]
        if seq <= self.sent:
            return
        self.sent = seq
        self.client.put(text or event_text(event))


def event_text(event: dict[str, Any]) -> str:
    return encode({"v": VERSION, "type": "event", **event})


@dataclass(eq=False)
class ConversationFanout:
    conversation_id: UUID
    delivered: int
    subs: set[Sub] = field(default_factory=set)
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)
    filling: asyncio.Task[None] | None = None
    #: last_seq seen by the previous reconcile round; still behind it now
    #: means the bus lost the tail.
    suspect: int = 0

    def deliver(self, event: dict[str, Any]) -> None:
        self.delivered = event["seq"]
        text = event_text(event)  # once, however many local subscribers
        for sub in list(self.subs):
            sub.push(event, text)

    def drain(self) -> None:
        while (nxt := self.pending.pop(self.delivered + 1, None)) is not None:
            self.deliver(nxt)
        for seq in [s for s in self.pending if s <= self.delivered]:
            del self.pending[seq]


class Hub:
    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: Bus,
        keyring: Keyring,
        *,
        reconcile_interval: float = 1.0,
        typing_interval: float = 2.0,
        liveness_interval: float = LIVENESS_INTERVAL,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.keyring = keyring
        self.node = uuid.uuid4().hex
        self.rooms: dict[UUID, ConversationFanout] = {}
        #: Connected clients by user, for revocation.
        self.clients: dict[UUID, set[Client]] = {}
        self.liveness_interval = liveness_interval
        self.reconcile_interval = reconcile_interval
        self.typing_interval = typing_interval
        self._outgoing: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._typing_seen: dict[tuple[UUID, UUID], float] = {}
        self.stats = {
            "published": 0,
            "publish_failed": 0,
            "gap_fills": 0,
            "bus_received": 0,
            "revoked": 0,
        }

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        sub = await self.bus.subscribe(TOPIC)
        self._sub = sub
        self._revocations = await self.bus.subscribe(revocation.TOPIC)
        self._tasks = [
            asyncio.create_task(self._listen(), name="chat-listen"),
            asyncio.create_task(self._publish_loop(), name="chat-publish"),
            asyncio.create_task(self._reconcile_loop(), name="chat-reconcile"),
            asyncio.create_task(self._listen_revocations(), name="chat-revocations"),
            asyncio.create_task(self._liveness_loop(), name="chat-liveness"),
        ]

    async def close(self) -> None:
        for room in self.rooms.values():
            if room.filling is not None:
                room.filling.cancel()
        await loops.stopped(*self._tasks)
        await self._sub.close()
        await self._revocations.close()

    # -- subscriptions ----------------------------------------------------------

    async def _room(self, conversation_id: UUID) -> ConversationFanout:
        room = self.rooms.get(conversation_id)
        if room is None:
            last = await self.pool.fetchval(
                "SELECT last_seq FROM chat_conversations WHERE id = $1", conversation_id
            )
            room = self.rooms.get(conversation_id)  # someone may have made it meanwhile
            if room is None:
                room = ConversationFanout(conversation_id, int(last or 0))
                self.rooms[conversation_id] = room
        return room

    async def subscribe(self, client: Client, acc: Access, after: int | None) -> int:
        """Start sending ``client`` the conversation's events after ``after``
        (None: from now on); return the conversation's last sequence."""
        cid = acc.conversation_id
        last = await self.pool.fetchval(
            "SELECT last_seq FROM chat_conversations WHERE id = $1", cid
        )
        last = int(last or 0)
        if after is not None and after > last:
            raise BadSequence(f"after = {after} is past the conversation's last sequence ({last})")
        self.unsubscribe(client, cid)
        room = await self._room(cid)
        sub = Sub(client, cid, last if after is None else after)
        room.subs.add(sub)
        client.subs[cid] = sub
        try:
            # Registered first, so whatever the room delivers from now on is
            # buffered; then PostgreSQL gives everything committed so far,
            # which includes all the room delivered before we registered.
            while True:
                events = await eventlog.events_after(
                    self.pool, self.keyring, cid, sub.sent, limit=CATCH_UP_PAGE
                )
                for event in events:
                    sub.sent = event["seq"]
                    client.put(event_text(event))
                if len(events) < CATCH_UP_PAGE or client.overflowed:
                    break
        except BaseException:
            self.unsubscribe(client, cid)
            raise
        sub.catching_up = False
        buffered, sub.buffer = sub.buffer, []
        for event in buffered:
            sub.push(event)
        return max(last, sub.sent)

    def unsubscribe(self, client: Client, conversation_id: UUID) -> None:
        sub = client.subs.pop(conversation_id, None)
        room = self.rooms.get(conversation_id)
        if sub is None or room is None:
            return
        room.subs.discard(sub)
        if not room.subs:
            if room.filling is not None:
                room.filling.cancel()
            del self.rooms[conversation_id]

    def attach(self, client: Client) -> None:
        """Count ``client`` among its user's connections (for revocation)."""
        self.clients.setdefault(client.user_id, set()).add(client)

    def drop(self, client: Client) -> None:
        for cid in list(client.subs):
            self.unsubscribe(client, cid)
        mine = self.clients.get(client.user_id)
        if mine is not None:
            mine.discard(client)
            if not mine:
                del self.clients[client.user_id]

    # -- revocation -------------------------------------------------------------

    def revoke(self, rev: revocation.Revocation) -> int:
        """End the local connections ``rev`` covers; return how many."""
        ended = 0
        for client in list(self.clients.get(rev.user_id, ())):
            if client.principal is not None and rev.covers(client.principal):
                client.revoke(rev.reason)
                self.drop(client)
                ended += 1
        self.stats["revoked"] += ended
        return ended

    async def _listen_revocations(self) -> None:
        await _keep_reading(self._revocations, self._revocation, "revocation listener")

    def _revocation(self, data: dict[str, Any]) -> None:
        rev = revocation.parse(data)
        if rev is None:
            log.warning("malformed revocation dropped")
            return
        self.revoke(rev)

    async def check_liveness(self) -> int:
        """Re-check every connected principal; end the stale ones."""
        principals = {
            c.principal for cs in self.clients.values() for c in cs if c.principal is not None
        }
        stale = await revocation.stale(self.pool, principals)
        ended = 0
        for cs in list(self.clients.values()):
            for client in list(cs):
                if client.principal in stale:
                    client.revoke("session ended")
                    self.drop(client)
                    ended += 1
        self.stats["revoked"] += ended
        return ended

    async def _liveness_loop(self) -> None:
        await loops.every(
            self.liveness_interval, self.check_liveness, "chat liveness check failed", log
        )

    # -- events -----------------------------------------------------------------

    def committed(self, event: dict[str, Any]) -> None:
        """An event this node just committed: deliver here, tell the others."""
        self._offer(event)
        self._outgoing.put_nowait({"t": "event", "e": event})

    def ephemeral(
        self, conversation_id: UUID, frame: dict[str, Any], *, skip_user: UUID | None = None
    ) -> None:
        """A frame that is not stored (typing, read receipts): local clients
        now, other nodes through the bus, lost if the bus is down."""
        self._local_ephemeral(conversation_id, frame, skip_user)
        self._outgoing.put_nowait(
            {
                "t": "eph",
                "c": str(conversation_id),
                "f": frame,
                "skip": str(skip_user) if skip_user else None,
            }
        )

    def typing_allowed(self, user_id: UUID, conversation_id: UUID, now: float) -> bool:
        """Throttle: one relayed typing indicator per user and conversation
        per ``typing_interval``."""
        key = (user_id, conversation_id)
        if now - self._typing_seen.get(key, -1e9) < self.typing_interval:
            return False
        self._typing_seen[key] = now
        if len(self._typing_seen) > 50_000:
            cutoff = now - self.typing_interval
            self._typing_seen = {k: v for k, v in self._typing_seen.items() if v >= cutoff}
        return True

    def _local_ephemeral(
        self, conversation_id: UUID, frame: dict[str, Any], skip_user: UUID | None
    ) -> None:
        room = self.rooms.get(conversation_id)
        if room is None:
            return
        text = encode(frame)
        for sub in room.subs:
            if sub.client.user_id != skip_user:
                sub.client.put(text)

    def _offer(self, event: dict[str, Any]) -> None:
        room = self.rooms.get(UUID(event["conversation_id"]))
        if room is None:
            return
        seq = event["seq"]
        if seq <= room.delivered:
            return
        if seq == room.delivered + 1 and room.filling is None:
            room.deliver(event)
            room.drain()
            return
        room.pending[seq] = event
        self._fill(room, max(room.pending))

    def _fill(self, room: ConversationFanout, target: int) -> None:
        if room.filling is None and target > room.delivered:
            room.filling = asyncio.create_task(self._fill_task(room, target))

    async def _fill_task(self, room: ConversationFanout, target: int) -> None:
        self.stats["gap_fills"] += 1
        try:
            while room.delivered < target:
                events = await eventlog.events_after(
                    self.pool,
                    self.keyring,
                    room.conversation_id,
                    room.delivered,
                    upto=target,
                    limit=CATCH_UP_PAGE,
                )
                if not events:
                    break  # the next reconcile round tries again
                for event in events:
                    if event["seq"] == room.delivered + 1:
                        room.deliver(event)
                room.drain()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("chat gap fill failed; reconcile retries")
        finally:
            room.filling = None
        room.drain()
        if room.pending and self.rooms.get(room.conversation_id) is room:
            self._fill(room, max(room.pending))

    # -- bus --------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        delay = 0.05
        while True:
            first = await self._outgoing.get()
            batch = [first]
            while not self._outgoing.empty() and len(batch) < 500:
                batch.append(self._outgoing.get_nowait())
            try:
                await self.bus.publish(TOPIC, {"node": self.node, "items": batch})
                self.stats["published"] += len(batch)
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The events are committed; other nodes find them through
                # reconcile. Drop what is queued rather than replay stale
                # typing indicators later.
                self.stats["publish_failed"] += len(batch) + self._outgoing.qsize()
                while not self._outgoing.empty():
                    self._outgoing.get_nowait()
                log.warning("chat bus publish failed", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _listen(self) -> None:
        await _keep_reading(self._sub, self._on_batch, "chat bus listener")

    def _on_batch(self, data: dict[str, Any]) -> None:
        if data.get("node") == self.node:
            return
        for item in data.get("items", ()):
            self.stats["bus_received"] += 1
            self._on_item(item)

    def _on_item(self, item: dict[str, Any]) -> None:
        try:
            if item.get("t") == "event":
                self._offer(item["e"])
            elif item.get("t") == "eph":
                skip = UUID(item["skip"]) if item.get("skip") else None
                self._local_ephemeral(UUID(item["c"]), item["f"], skip)
        except (KeyError, TypeError, ValueError):
            log.warning("malformed chat bus item dropped")

    async def _reconcile_loop(self) -> None:
        await loops.every(self.reconcile_interval, self.reconcile, "chat reconcile failed", log)

    async def reconcile(self) -> None:
        """Fill rooms that stayed behind PostgreSQL since the last round."""
        ids = list(self.rooms)
        if not ids:
            return
        lasts = await eventlog.last_seqs(self.pool, ids)
        for cid, last in lasts.items():
            room = self.rooms.get(cid)
            if room is None:
                continue
            if room.delivered < room.suspect:
                self._fill(room, last)
            room.suspect = last if last > room.delivered else 0


async def _keep_reading(
    sub: BusSubscription, take: Callable[[dict[str, Any]], None], what: str
) -> None:
    """Hand each message of ``sub`` to ``take``, for as long as the hub runs:
    a failure is logged and reading starts again half a second later."""
    while True:
        try:
            async for msg in sub:
                take(msg.data)
        except Exception:
            log.exception("%s failed; restarting", what)
            await asyncio.sleep(0.5)
