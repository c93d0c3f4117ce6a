"""The transactional outbox: a domain event is published if and only if the
transaction that produced it committed.

A handler calls :func:`emit` on the connection of its transaction (or folds
:func:`event` into its own statement and calls :func:`written`); the row
becomes visible at commit. :class:`Relay` claims unpublished rows with
``FOR UPDATE SKIP LOCKED`` so several relays share the work, publishes them
on the bus, and marks them published in the same transaction. Delivery is at
least once: a relay that dies after publishing and before committing
publishes again. Every event carries its outbox ``id`` so a consumer can tell
a repeat.

What wakes a relay: :func:`written` tells the relays of the writing process
the moment the writer's transaction ended (at once for a statement outside a
transaction); a ``NOTIFY`` on :data:`CHANNEL`, which the triggers of
migration 0008 send, and so does a process that runs no relay (a worker
role, :class:`Announcer`) once its writer's transaction ended; and, for an
event no one announced (a notice lost while a LISTEN reconnected, a one-off
command's write), a poll every ``outbox_poll_interval``. A relay that published a batch sends one
``NOTIFY`` (payload :data:`RELAYED`) in that batch's transaction, which wakes
the notifiers of every process. Writers do not ``NOTIFY`` themselves:
PostgreSQL serialises the commits of all notifying transactions on one lock
held through the WAL flush, which capped bookings at one commit per fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from wadud.messaging import loops
from wadud.messaging.bus import Bus, unreachable
from wadud.observe import metrics, tracing

log = logging.getLogger("wadud.outbox")
CHANNEL = "wadud_outbox"
#: The payload of the NOTIFY a relay sends after publishing a batch.
RELAYED = "relayed"
#: Every event also goes to this stream, so a consumer can replay what it missed.
STREAM = "events"


_ANY_PENDING = "SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL)"
_EMIT = """INSERT INTO outbox (topic, payload, trace) VALUES ($1, $2::jsonb, $3::jsonb)"""
#: The relays of this process (:func:`written` wakes them).
_RELAYS: weakref.WeakSet[Relay] = weakref.WeakSet()
#: Where this process runs no relay, what wakes the others' (:func:`announcing`).
_ANNOUNCERS: weakref.WeakSet[Announcer] = weakref.WeakSet()
#: The payload of the NOTIFY a process with no relay sends after writing.
WRITTEN = "written"
#: Seconds a relay waits for a writer's transaction to end before it leaves
#: the event to its poll.
_PENDING_FOR = 5.0
#: Seconds between the backlog gauges' queries while work keeps coming
#: (the first idle round after work always refreshes them).
OBSERVE_EVERY = 1.0
#: Seconds between their queries while no work comes: an idle round runs
#: every poll interval, and a count each time was a statement a second for
#: a figure that cannot have moved (nothing came) and is scraped every 15 s.
OBSERVE_IDLE = 10.0


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
    query = f"WITH a AS ({also}) {_EMIT}" if also else _EMIT
    if not tracing.enabled():
        await conn.execute(query, topic, payload, None, *args)
    else:
        with tracing.span(f"outbox emit {topic}", attributes={"messaging.destination.name": topic}):
            await conn.execute(query, topic, payload, tracing.inject() or None, *args)
    written(conn)


def written(conn: asyncpg.Connection) -> None:
    """An event was written on ``conn``: this process's relays publish it as
    soon as the transaction it belongs to has ended (at once when ``conn`` is
    in none). Costs no round trip. A process that runs no relay but
    announces (:func:`announcing`) wakes the other processes' relays then."""
    if _RELAYS:
        for relay in _RELAYS:
            relay.expect(conn)
        return
    for announcer in _ANNOUNCERS:
        announcer.expect(conn)


def event(
    topic: str, payload: dict[str, Any], first: int, *, source: str | None = None
) -> tuple[str, list[Any]]:
    """:func:`emit` folded into a caller's own statement: a data-modifying
    CTE (``outbox_row AS (...)``, parameters numbered from ``$first``) and
    its arguments. Call :func:`written` after the statement::

        cte, args = outbox.event("payment.created", payload, 16)
        await conn.fetchrow(f"WITH i AS (...), {cte} SELECT i.* FROM i", *mine, *args)
        outbox.written(conn)

    ``source``: a CTE of the statement; the event is written only if it
    yields a row (an insert that may find nothing to insert, say).

    With tracing on, the row keeps the current trace context (the request's
    span: the statement's own SQL span is the emit)."""
    trace = tracing.inject() or None if tracing.enabled() else None
    values = f"${first}, ${first + 1}::jsonb, ${first + 2}::jsonb"
    rows = f"SELECT {values} FROM {source}" if source else f"VALUES ({values})"
    cte = f"outbox_row AS (INSERT INTO outbox (topic, payload, trace) {rows})"
    return cte, [topic, payload, trace]


def events(
    items: Sequence[tuple[str, dict[str, Any]]],
    first: int,
    *,
    source: str,
    name: str = "outbox_rows",
) -> tuple[str, list[Any]]:
    """Several events from one statement, as :func:`event` writes one: a
    data-modifying CTE named ``name`` (parameters from ``$first``) that
    writes ``items`` (topic, payload) in their order, so their ids ascend in
    it, once for each row ``source`` yields (a CTE that yields at most one).
    Call :func:`written` after the statement."""
    trace = tracing.inject() or None if tracing.enabled() else None
    cte = f"""{name} AS (
        INSERT INTO outbox (topic, payload, trace)
        SELECT x.topic, x.payload, ${first + 2}::jsonb
        FROM {source}, unnest(${first}::text[], ${first + 1}::jsonb[])
                           WITH ORDINALITY AS x(topic, payload, n)
        ORDER BY x.n)"""
    return cte, [[t for t, _ in items], [p for _, p in items], trace]


class Listener:
    """A LISTEN on ``channel`` (:data:`CHANNEL` unless told), held on one
    connection of ``pool``: each NOTIFY's payload goes to ``notified``. The
    relay holds one, and so does each consumer that a relayed batch may have
    given work (hooks, notify); the phone bridges hold one on the channel of
    the calls asked of them."""

    def __init__(
        self, pool: asyncpg.Pool, notified: Callable[[str], None], channel: str = CHANNEL
    ) -> None:
        self.pool = pool
        self._notified = notified
        self.channel = channel
        self._conn: asyncpg.Connection | None = None

    async def ensure(self) -> None:
        """Listen, unless already listening on a live connection."""
        if self._conn is not None and not self._conn.is_closed():
            return
        await self.close()
        # Keep the connection where close() finds it before anything else
        # can be cancelled, so a shutdown mid-setup still releases it.
        self._conn = await self.pool.acquire()
        await self._conn.add_listener(self.channel, self._heard)

    async def round(
        self, step: Callable[[], Awaitable[None]], failed: str, log: logging.Logger
    ) -> None:
        """One round of the work a NOTIFY wakes (``step``), listening first.
        A round that fails is logged (``failed``) and ends there, and the
        LISTEN starts afresh next round: its connection may be what failed.
        A loop of rounds whose task was cancelled during the step ends here
        (:func:`loops.go_on`), even when a library lost the cancellation."""
        try:
            await self.ensure()
            await step()
        except Exception:
            log.exception(failed)
            await self.close()
        loops.go_on()

    async def close(self) -> None:
        """Stop listening and give the connection back (a dead one too)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.remove_listener(self.channel, self._heard)
            with contextlib.suppress(Exception):
                await self.pool.release(conn)

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._notified(payload)


class _BusAway(Exception):
    """The relay's batch found the bus unreachable (its ``__cause__``)."""


class Gauges:
    """Backlog gauges refreshed by a query (``observe``) once every
    :data:`OBSERVE_EVERY` seconds while busy, after the first idle round
    that follows work, and every :data:`OBSERVE_IDLE` seconds while idle:
    under load a round runs per commit or so, and a count of the pending rows
    each time would be a statement per booking for a figure scraped every
    15 s; idle, a round runs every poll interval and finds nothing."""

    def __init__(self, observe: Callable[[], Awaitable[None]]) -> None:
        self.observe = observe
        self._last = -OBSERVE_IDLE
        self._was_busy = True

    async def after_round(self, busy: bool) -> None:
        since = asyncio.get_running_loop().time() - self._last
        settled = not busy and self._was_busy
        self._was_busy = busy
        if since >= (OBSERVE_EVERY if busy else OBSERVE_IDLE) or settled:
            await self.observe()
            self._last = asyncio.get_running_loop().time()


class _AfterCommit:
    """Calls ``ended`` once the transaction of each connection it watches
    has ended (at once for one in none), and leaves a transaction open
    longer than :data:`_PENDING_FOR` to the poll. No round trip: whether a
    transaction is open is the connection's own state, from the server's
    last ReadyForQuery."""

    def __init__(self, ended: Callable[[], None]) -> None:
        self.ended = ended
        #: Connections whose open transaction wrote an event, and since when.
        self._pending: dict[asyncpg.Connection, float] = {}
        self._watch: asyncio.Handle | None = None

    def watch(self, conn: asyncpg.Connection) -> None:
        if not _in_transaction(conn):
            self.ended()
            return
        loop = asyncio.get_running_loop()
        self._pending.setdefault(conn, loop.time())
        if self._watch is None:
            self._watch = loop.call_soon(self._check)

    def cancel(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._pending.clear()

    def _check(self) -> None:
        self._watch = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn, since in list(self._pending.items()):
            if not _in_transaction(conn):
                del self._pending[conn]
                self.ended()
            elif now - since > _PENDING_FOR:
                del self._pending[conn]  # a long transaction: the poll finds it
        if self._pending:
            self._watch = loop.call_later(0.002, self._check)


class Announcer:
    """What wakes the relays of other processes for the events a process
    with no relay of its own writes (``wadud recorder``, ``wadud sip``, the
    other worker roles: :func:`wadud.web.workers.start_worker`): one
    ``NOTIFY`` on :data:`CHANNEL` (payload :data:`WRITTEN`) once the
    writer's transaction has ended, sent on a connection of its own from the
    pool, so the writer's commit never waits on the notify lock. Ends of
    transactions that come while one is being sent are folded into one
    more. A NOTIFY that fails is logged; the relays' poll finds the event."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._commits = _AfterCommit(self._ended)
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.sent = 0

    def expect(self, conn: asyncpg.Connection) -> None:
        """See :func:`written`."""
        self._commits.watch(conn)

    def _ended(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._announce(), name="outbox-announce")

    async def _announce(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                await self.pool.execute("SELECT pg_notify($1, $2)", CHANNEL, WRITTEN)
                self.sent += 1
            except Exception:
                log.warning("could not wake the outbox relays; their poll will", exc_info=True)
                return

    async def close(self) -> None:
        self._commits.cancel()
        await loops.stopped(self._task)


@contextlib.asynccontextmanager
async def announcing(pool: asyncpg.Pool) -> AsyncIterator[Announcer]:
    """Within the block, events this process writes wake the relays of the
    others (:class:`Announcer`), unless it runs a relay of its own."""
    announcer = Announcer(pool)
    _ANNOUNCERS.add(announcer)
    try:
        yield announcer
    finally:
        _ANNOUNCERS.discard(announcer)
        await announcer.close()


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
        self._listener = Listener(pool, self._notified)
        self._gauges = Gauges(self.observe)
        self._last_prune = 0.0
        self._commits = _AfterCommit(self._wake.set)
        #: Since when the bus could not be reached (the loop's time), or None.
        self._bus_away: float | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")
        _RELAYS.add(self)

    async def close(self) -> None:
        _RELAYS.discard(self)
        self._commits.cancel()
        await loops.stopped(self._task)
        await self._listener.close()

    def expect(self, conn: asyncpg.Connection) -> None:
        """See :func:`written`."""
        self._commits.watch(conn)

    def _notified(self, payload: str) -> None:
        if payload != RELAYED:  # a relay's own note is for the other consumers
            self._wake.set()

    async def _run(self) -> None:
        woke = True
        while True:
            # Cleared before the round, not after: a wake during the round
            # (an event committed meanwhile) runs another one.
            self._wake.clear()
            await self._listener.round(
                functools.partial(self._round, woke), "outbox relay round failed; retrying", log
            )
            if self._bus_away is not None:
                # The events wait in the outbox: try again at the poll, not
                # at each commit that wakes us (one connect attempt each).
                await asyncio.sleep(self.poll_interval)
                woke = True
            else:
                woke = await loops.woken(self._wake, self.poll_interval)

    async def _round(self, woke: bool) -> None:
        relayed = n = 0
        # A poll no one woke asks first, in one statement outside a
        # transaction, whether any row waits (most find none).
        if woke or await self.pool.fetchval(_ANY_PENDING):
            try:
                while (n := await self.relay_once()) >= self.batch:
                    relayed += n
            except _BusAway as away:
                self._away(away.__cause__)
                return
            self._back()
        relayed += n
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_prune > 60:
            await self.prune()
            self._last_prune = loop.time()
        await self._gauges.after_round(busy=relayed > 0)

    def _away(self, cause: BaseException | None) -> None:
        """The bus could not be reached: said once an outage, with no
        traceback (what failed is Redis, not this code)."""
        if self._bus_away is None:
            self._bus_away = asyncio.get_running_loop().time()
            log.warning(
                "outbox relay: the bus cannot be reached; events wait in the outbox",
                extra={"error": repr(cause)},
            )

    def _back(self) -> None:
        if self._bus_away is not None:
            away = asyncio.get_running_loop().time() - self._bus_away
            self._bus_away = None
            log.info("outbox relay: the bus is back", extra={"away_seconds": round(away, 1)})

    async def relay_once(self) -> int:
        """Publish one batch of pending events; return how many. A bus that
        cannot be reached leaves the batch unpublished (:class:`_BusAway`)."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id, topic, payload, created_at, trace FROM outbox
                   WHERE published_at IS NULL ORDER BY id LIMIT $1
                   FOR UPDATE SKIP LOCKED""",
                self.batch,
            )
            events = [
                {
                    "id": row["id"],
                    "topic": row["topic"],
                    "at": row["created_at"].isoformat(),
                    "data": row["payload"],
                }
                for row in rows
            ]
            try:
                if tracing.enabled():
                    for row, event in zip(rows, events, strict=True):
                        await self._publish_traced(event, row["trace"])
                else:
                    # The whole batch at once (one round trip to Redis).
                    await self.bus.publish_all([(e["topic"], e) for e in events], stream=STREAM)
            except Exception as exc:
                if unreachable(exc):
                    raise _BusAway from exc
                raise
            if rows:
                # One NOTIFY per batch, not per writer, tells the other
                # processes that consume the outbox's tables (the notifier
                # reads its inbox) that committed events are waiting.
                await conn.execute(
                    f"""WITH u AS (UPDATE outbox SET published_at = now()
                                   WHERE id = ANY($1::bigint[]))
                        SELECT pg_notify('{CHANNEL}', '{RELAYED}')""",
                    [r["id"] for r in rows],
                )
        metrics.OUTBOX_RELAYED.inc(len(rows))
        return len(rows)

    async def _publish_traced(self, event: dict[str, Any], trace: Any) -> None:
        """Publish inside spans that continue the emitting transaction's
        trace; the event carries the publish span's context to consumers
        (:func:`wadud.observe.tracing.consume`)."""
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


def _in_transaction(conn: asyncpg.Connection) -> bool:
    """Whether ``conn`` is inside a transaction; False once a pooled
    connection went back to the pool (its transaction ended with it)."""
    try:
        return bool(conn.is_in_transaction())
    except asyncpg.InterfaceError:
        return False
