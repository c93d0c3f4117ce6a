"""A conversation's event log: appending events in order, and reading them
back (resume and history).

PostgreSQL is the truth and the orderer: ``chat_append`` (migration 0007)
takes the conversation's row lock, so sequence numbers are dense and a
sequence visible to anyone means every smaller one is committed too. The hub
relies on that to fill any gap from here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from chat.access import Access, Conn
from chat.crypto import Keyring, Shredded, message_aad
from chat.errors import BadSequence, NotAllowed
from wadud.messaging import loops, outbox
from wadud.principal import Principal

Event = dict[str, Any]


@dataclass(frozen=True)
class Appended:
    seq: int
    at: dt.datetime
    duplicate: bool


async def check_target(conn: Conn, acc: Access, who: Principal, kind: str, target_seq: int) -> None:
    """An edit or delete must name an earlier message: its sender may edit
    or delete it; writing clinic staff may delete it (moderation)."""
    row = await conn.fetchrow(
        "SELECT kind, sender_id FROM chat_events WHERE conversation_id = $1 AND seq = $2",
        acc.conversation_id,
        target_seq,
    )
    if row is None or row["kind"] != "message":
        raise BadSequence(f"seq {target_seq} is not a message of this conversation")
    if row["sender_id"] != who.user_id and not (kind == "delete" and acc.role == "clinic_staff"):
        raise NotAllowed(f"only its sender may {kind} message {target_seq}")


class _Item(NamedTuple):
    """One append: its fields are ``chat_append``'s arguments, in their order."""

    conversation_id: UUID
    sender: UUID
    client_id: str
    kind: str
    target_seq: int | None
    key_id: str | None
    nonce: bytes | None
    body: bytes | None
    attachment_id: UUID | None


_APPEND_ONE = (
    "SELECT seq, created_at, duplicate FROM chat_append($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
# Many appends in one statement (one transaction, one WAL flush). Rows are
# processed in array order; the caller sorts by conversation so two batches
# on different nodes take the conversations' row locks in the same order and
# cannot deadlock.
_APPEND_MANY = """
    SELECT x.i, r.seq, r.created_at, r.duplicate
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                $7::bytea[], $8::bytea[], $9::uuid[])
         WITH ORDINALITY AS x(c, s, cl, k, t, kid, n, b, a, i)
    CROSS JOIN LATERAL chat_append(x.c, x.s, x.cl, x.k, x.t, x.kid, x.n, x.b, x.a) r
    ORDER BY x.i
"""


class Appender:
    """Group commit for chat: appends that arrive while others are being
    committed wait and go together in one statement, so a busy node pays one
    round trip and one WAL flush per batch instead of per message; an idle
    node commits a lone message at once. Conversations are split over
    ``lanes`` by id, one batch in flight per lane, so concurrent batches of a
    node never wait for each other's row locks. A batch that fails is retried
    item by item, so one bad append fails alone."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 200, lanes: int = 8) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self._lanes: list[list[tuple[_Item, asyncio.Future[Appended]]]] = [[] for _ in range(lanes)]
        self._busy = [False] * lanes
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0

    async def append(self, item: _Item) -> Appended:
        fut: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        lane = item.conversation_id.int % len(self._lanes)
        self._lanes[lane].append((item, fut))
        if not self._busy[lane]:
            self._busy[lane] = True
            task = asyncio.create_task(self._drain(lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def _drain(self, lane: int) -> None:
        queue = self._lanes[lane]
        try:
            # One connection for as long as the lane is busy: the pool resets
            # a connection on every release, a round trip per batch otherwise.
            async with self.pool.acquire() as conn:
                await self._drain_on(conn, queue)
        except BaseException as exc:
            for _, fut in queue:
                if not fut.done():
                    fut.set_exception(exc)
            queue.clear()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._busy[lane] = False
            if queue:  # arrived after the last look, before busy was cleared
                self._busy[lane] = True
                task = asyncio.create_task(self._drain(lane))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _drain_on(
        self, conn: asyncpg.Connection, queue: list[tuple[_Item, asyncio.Future[Appended]]]
    ) -> None:
        while queue:
            batch = queue[: self.max_batch]
            del queue[: self.max_batch]
            try:
                results = await self._many(conn, [it for it, _ in batch])
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                if conn.is_closed():
                    raise
                for it, fut in batch:
                    await loops.settle(fut, functools.partial(self._one, conn, it))
                continue
            for (_, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)

    async def _one(self, conn: asyncpg.Connection, it: _Item) -> Appended:
        row = await conn.fetchrow(_APPEND_ONE, *it)
        assert row is not None
        outbox.written(conn)  # chat_append wrote the outbox row
        return Appended(row["seq"], row["created_at"], row["duplicate"])

    async def _many(self, conn: asyncpg.Connection, items: list[_Item]) -> list[Appended]:
        if len(items) == 1:
            return [await self._one(conn, items[0])]
        self.batches += 1
        order = sorted(range(len(items)), key=lambda i: items[i].conversation_id.bytes)
        ordered = [items[i] for i in order]
        # One array per argument of chat_append, each in the batch's order.
        columns = [list(column) for column in zip(*ordered, strict=True)]
        rows = await conn.fetch(_APPEND_MANY, *columns)
        outbox.written(conn)
        out: list[Appended | None] = [None] * len(items)
        for row in rows:
            out[order[row["i"] - 1]] = Appended(row["seq"], row["created_at"], row["duplicate"])
        assert all(r is not None for r in out)
        return out  # type: ignore[return-value]


async def append(
    appender: Appender,
    keyring: Keyring,
    acc: Access,
    sender: UUID,
    *,
    client_id: str,
    kind: str,
    body: bytes | None,
    target_seq: int | None = None,
    attachment_id: UUID | None = None,
) -> Appended:
    """Commit one event (and its outbox row) and return its sequence; a
    repeated ``client_id`` from the same sender returns the first result."""
    sealed = None
    if body is not None:
        sealed = await keyring.seal_for(
            appender.pool, acc.patient_id, body, message_aad(acc.conversation_id)
        )
    return await appender.append(
        _Item(
            acc.conversation_id,
            sender,
            client_id,
            kind,
            target_seq,
            sealed.key_id if sealed else None,
            sealed.nonce if sealed else None,
            sealed.data if sealed else None,
            attachment_id,
        )
    )


def event_of(
    conversation_id: UUID,
    *,
    seq: int,
    kind: str,
    sender_id: UUID,
    client_id: str,
    body: str | None,
    target_seq: int | None,
    attachment: dict[str, Any] | None,
    at: dt.datetime,
) -> Event:
    """An event as clients receive it (and as the bus carries it)."""
    return {
        "conversation_id": str(conversation_id),
        "seq": seq,
        "kind": kind,
        "sender_id": str(sender_id),
        "client_id": client_id,
        "body": body,
        "target_seq": target_seq,
        "attachment": attachment,
        "at": at.isoformat(),
    }


_EVENTS = """
    SELECT e.seq, e.kind, e.sender_id, e.client_id, e.target_seq, e.key_id, e.nonce, e.body,
           e.created_at, a.id AS att_id, a.content_type AS att_type, a.size_bytes AS att_size
    FROM chat_events e LEFT JOIN chat_attachments a ON a.id = e.attachment_id
"""


def _events(rows: list[asyncpg.Record], conversation_id: UUID, keyring: Keyring) -> list[Event]:
    aad = message_aad(conversation_id)
    out = []
    for r in rows:
        body = None
        if r["body"] is not None:
            try:
                body = keyring.open(r["key_id"], r["nonce"], r["body"], aad).decode("utf-8")
            except Shredded:
                body = None  # the patient was erased while this was being read
        att = None
        if r["att_id"] is not None:
            att = {"id": str(r["att_id"]), "content_type": r["att_type"], "size": r["att_size"]}
        out.append(
            event_of(
                conversation_id,
                seq=r["seq"],
                kind=r["kind"],
                sender_id=r["sender_id"],
                client_id=r["client_id"],
                body=body,
                target_seq=r["target_seq"],
                attachment=att,
                at=r["created_at"],
            )
        )
    return out


async def events_after(
    conn: Conn,
    keyring: Keyring,
    conversation_id: UUID,
    after: int,
    *,
    upto: int | None = None,
    limit: int = 500,
) -> list[Event]:
    """Events with ``after < seq <= upto``, oldest first, at most ``limit``."""
    rows = await conn.fetch(
        _EVENTS
        + """ WHERE e.conversation_id = $1 AND e.seq > $2 AND ($3::bigint IS NULL OR e.seq <= $3)
              ORDER BY e.seq LIMIT $4""",
        conversation_id,
        after,
        upto,
        limit,
    )
    await keyring.load(conn, {r["key_id"] for r in rows if r["key_id"]})
    return _events(rows, conversation_id, keyring)


async def events_before(
    conn: Conn, keyring: Keyring, conversation_id: UUID, before: int | None, *, limit: int
) -> list[Event]:
    """Events with ``seq < before`` (all when None), newest first: history
    paging backwards."""
    rows = await conn.fetch(
        _EVENTS
        + """ WHERE e.conversation_id = $1 AND ($2::bigint IS NULL OR e.seq < $2)
              ORDER BY e.seq DESC LIMIT $3""",
        conversation_id,
        before,
        limit,
    )
    await keyring.load(conn, {r["key_id"] for r in rows if r["key_id"]})
    return _events(rows, conversation_id, keyring)


async def last_seq(conn: Conn, conversation_id: UUID) -> int:
    """The conversation's last sequence."""
    last: int = await conn.fetchval(
        "SELECT last_seq FROM chat_conversations WHERE id = $1", conversation_id
    )
    return last


async def last_seqs(conn: Conn, ids: list[UUID]) -> dict[UUID, int]:
    rows = await conn.fetch(
        "SELECT id, last_seq FROM chat_conversations WHERE id = ANY($1::uuid[])", ids
    )
    return {r["id"]: r["last_seq"] for r in rows}
