"""The transactional outbox: a domain event is published if and only if the
transaction that produced it committed.

A handler calls :func:`emit` on the connection of its transaction; the row and
a ``NOTIFY`` (one statement) become visible together at commit. :class:`Relay` wakes on the
notification (or polls, in case one was missed while it reconnected), claims
unpublished rows with ``FOR UPDATE SKIP LOCKED`` so several relays share the
work, publishes them on the bus, and marks them published in the same
transaction. Delivery is at least once: a relay that dies after publishing and
before committing publishes again. Every event carries its outbox ``id`` so a
consumer can tell a repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

from wadud import metrics, tracing
from wadud.bus import Bus

log = logging.getLogger("wadud.outbox")
CHANNEL = "wadud_outbox"
#: Every event also goes to this stream, so a consumer can replay what it missed.
STREAM = "events"


#: The row, and the NOTIFY that wakes the relays at commit, in one statement.
_EMIT = """INSERT INTO outbox (topic, payload, trace) VALUES ($1, $2::jsonb, $3::jsonb)"""
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"


async def emit(
    conn: asyncpg.Connection,
    topic: str,
    payload: dict[str, Any],
    *,
    also: str = "",
    args: Sequence[Any] = (),
) -> None:
    """Record ``payload`` for ``topic``; call inside the domain transaction.

    ``also``: one more data-modifying statement (an INSERT of the change's
    own history row, say) sent in the same round trip, its parameters
    numbered from ``$4`` and given in ``args``. With tracing on, the row keeps
    the current trace context, so publishing it later continues this trace."""
    ctes = f"a AS ({also}), " if also else ""
    query = f"WITH {ctes}e AS ({_EMIT}) {_NOTIFY}"
    if not tracing.enabled():
        await conn.execute(query, topic, payload, None, *args)
        return
    with tracing.span(f"outbox emit {topic}", attributes={"messaging.destination.name": topic}):
        await conn.execute(query, topic, payload, tracing.inject() or None, *args)


#: Put this in the SELECT of a statement that carries an :func:`event` CTE:
#: the NOTIFY that wakes the relays at commit.
NOTIFY = f"pg_notify('{CHANNEL}', '') AS outbox_notified"


def event(
    topic: str, payload: dict[str, Any], first: int, *, source: str | None = None
) -> tuple[str, list[Any]]:
    """:func:`emit` folded into a caller's own statement: a data-modifying
    CTE (``outbox_row AS (...)``, parameters numbered from ``$first``) and
    its arguments. The statement must also select :data:`NOTIFY`::

        cte, args = outbox.event("payment.created", payload, 16)
        await conn.fetchrow(f"WITH i AS (...), {cte} SELECT i.*, {outbox.NOTIFY} FROM i",
                            *mine, *args)

    ``source``: a CTE of the statement; the event is written only if it
    yields a row (an insert that may find nothing to insert, say).

    With tracing on, the row keeps the current trace context (the request's
    span: the statement's own SQL span is the emit)."""
    trace = tracing.inject() or None if tracing.enabled() else None
    values = f"${first}, ${first + 1}::jsonb, ${first + 2}::jsonb"
    rows = f"SELECT {values} FROM {source}" if source else f"VALUES ({values})"
    cte = f"outbox_row AS (INSERT INTO outbox (topic, payload, trace) {rows})"
    return cte, [topic, payload, trace]


class Relay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: Bus,
        *,
        batch: int = 200,
        poll_interval: float = 1.0,
        retention: float = 86400.0,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.batch = batch
        self.poll_interval = poll_interval
        self.retention = retention
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._unlisten()

    async def _listen(self) -> None:
        # Keep the connection where _unlisten finds it before anything else
        # can be cancelled, so a shutdown mid-setup still releases it.
        self._listener = await self.pool.acquire()
        await self._listener.add_listener(CHANNEL, self._notified)

    async def _unlisten(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.remove_listener(CHANNEL, self._notified)
            with contextlib.suppress(Exception):
                await self.pool.release(conn)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _run(self) -> None:
        last_prune = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self._listener is None or self._listener.is_closed():
                    await self._unlisten()
                    await self._listen()
                while await self.relay_once() >= self.batch:
                    pass
                if loop.time() - last_prune > 60:
                    await self.prune()
                    last_prune = loop.time()
                await self.observe()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay round failed; retrying")
                await self._unlisten()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def relay_once(self) -> int:
        """Publish one batch of pending events; return how many."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id, topic, payload, created_at, trace FROM outbox
                   WHERE published_at IS NULL ORDER BY id LIMIT $1
                   FOR UPDATE SKIP LOCKED""",
                self.batch,
            )
            for row in rows:
                event = {
                    "id": row["id"],
                    "topic": row["topic"],
                    "at": row["created_at"].isoformat(),
                    "data": row["payload"],
                }
                if tracing.enabled():
                    await self._publish_traced(event, row["trace"])
                else:
                    await self.bus.publish(row["topic"], event)
                    await self.bus.append(STREAM, event)
            if rows:
                await conn.execute(
                    "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
                    [r["id"] for r in rows],
                )
        metrics.OUTBOX_RELAYED.inc(len(rows))
        return len(rows)

    async def _publish_traced(self, event: dict[str, Any], trace: Any) -> None:
        """Publish inside spans that continue the emitting transaction's
        trace; the event carries the publish span's context to consumers
        (:func:`wadud.tracing.consume`)."""
        topic = event["topic"]
        attrs = {"messaging.destination.name": topic, "messaging.message.id": str(event["id"])}
        with (
            tracing.span(f"outbox relay {topic}", parent=tracing.extract(trace), attributes=attrs),
            tracing.span(f"bus publish {topic}", kind="producer", attributes=attrs),
        ):
            event[tracing.EVENT_KEY] = tracing.inject()
            await self.bus.publish(topic, event)
            await self.bus.append(STREAM, event)

    async def observe(self) -> None:
        row = await self.pool.fetchrow(
            """SELECT count(*) AS n,
                      COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) AS lag
               FROM outbox WHERE published_at IS NULL"""
        )
        assert row is not None
        metrics.OUTBOX_PENDING.set(row["n"])
        metrics.OUTBOX_LAG.set(float(row["lag"]))

    async def prune(self) -> None:
        await self.pool.execute(
            """DELETE FROM outbox WHERE published_at IS NOT NULL
               AND published_at < now() - make_interval(secs => $1)""",
            self.retention,
        )
