"""Retention: how long each class of data is kept, and the task that deletes
what is older (docs/privacy.md, "Retention").

A :class:`Rule` names a data class, the setting that says how many days it
is kept (0: kept until erased, the rule does nothing) and a coroutine that
deletes what is older, in batches so no statement holds locks for long.
Features bring their own rules (``booking.privacy.retention_rules``,
``chat.privacy.retention_rules``); the assembly passes them here with this
module's own (:func:`core_rules`).

The rules run

* on a schedule inside ``wadud serve`` and ``wadud api`` (:func:`install`,
  every ``retention_interval`` seconds), on one replica at a time: a round
  first takes a PostgreSQL advisory lock with ``pg_try_advisory_lock``, and a
  replica that does not get it skips the round;
* on demand: ``wadud retention run [--dry-run]`` (:func:`run`, which waits
  for the lock), printing what each rule deleted or, dry, would delete.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp import web

from wadud.config import Settings
from wadud.messaging import loops
from wadud.state import keys
from wadud.state.storage import Storage, storage_of

__all__ = [
    "LOCK_KEY",
    "RULES",
    "Deleter",
    "Outcome",
    "RoundContext",
    "Rule",
    "core_rules",
    "install",
    "run",
]

log = logging.getLogger("wadud.retention")

#: The advisory lock a round holds; spells "retain".
LOCK_KEY = 0x72657461696E


#: Deletes the rows of one batch of ids (in the caller's transaction) and
#: returns the storage keys of the files they named.
Deleter = Callable[[asyncpg.Connection, list[UUID]], Awaitable[list[str]]]


@dataclass
class RoundContext:
    """What a rule gets: the time the round started, whether it is a dry run,
    the batch size and the file store (for rows that name stored files)."""

    now: dt.datetime
    dry_run: bool
    batch: int
    storage: Storage | None
    settings: Settings
    #: Stored files to delete once the round's deletes have committed.
    files: list[str] = field(default_factory=list)

    def days_ago(self, days: float) -> dt.datetime:
        return self.now - dt.timedelta(days=days)

    async def delete_batched(
        self, conn: asyncpg.Connection, table: str, where: str, *args: Any
    ) -> int:
        """Delete rows of ``table`` matching ``where`` (parameters from $1),
        ``batch`` at a time, each batch its own transaction; in a dry run,
        count them. ``table`` and ``where`` are the rule's own SQL, never
        input."""
        if self.dry_run:
            return await self._count(conn, table, where, *args)
        limit = f"${len(args) + 1}"
        total = 0
        while True:
            status = await conn.execute(
                f"""DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                        SELECT ctid FROM {table} WHERE {where} LIMIT {limit}))""",
                *args,
                self.batch,
            )
            n = int(status.split()[-1])
            total += n
            if n < self.batch:
                return total

    async def delete_batched_by(
        self, conn: asyncpg.Connection, table: str, where: str, *args: Any, delete: Deleter
    ) -> int:
        """:meth:`delete_batched` for rows a feature deletes itself (with the
        rows that hang off them, and the stored files they name): ``batch``
        ids of ``table`` matching ``where`` at a time are locked, skipping
        rows in use, and handed to ``delete``, each batch in its own
        transaction; the storage keys it returns are deleted once the round
        has committed. In a dry run, count them."""
        if self.dry_run:
            return await self._count(conn, table, where, *args)
        limit = f"${len(args) + 1}"
        total = 0
        while True:
            async with conn.transaction():
                ids = [
                    r["id"]
                    for r in await conn.fetch(
                        f"""SELECT id FROM {table} WHERE {where}
                            LIMIT {limit} FOR UPDATE SKIP LOCKED""",
                        *args,
                        self.batch,
                    )
                ]
                released = await delete(conn, ids)
            self.files += released
            total += len(ids)
            if len(ids) < self.batch:
                return total

    async def _count(self, conn: asyncpg.Connection, table: str, where: str, *args: Any) -> int:
        n: int = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args)
        return n


RuleFn = Callable[[asyncpg.Connection, RoundContext, float], Awaitable[int]]


@dataclass(frozen=True)
class Rule:
    """One data class: ``setting`` (a Settings field) gives how long it is
    kept, in days (or in seconds with ``per_day=86400``)."""

    name: str
    data_class: str
    setting: str
    apply: RuleFn
    per_day: float = 1.0

    def days(self, settings: Settings) -> float:
        return float(getattr(settings, self.setting)) / self.per_day


@dataclass(frozen=True)
class Outcome:
    rule: str
    data_class: str
    days: float  # 0: kept, nothing done
    rows: int
    seconds: float


#: Rules the assembly registers for ``wadud serve`` and ``wadud api``.
RULES: web.AppKey[list[Rule]] = web.AppKey("retention_rules", list)


# -- the ground's own data classes -----------------------------------------------


async def _sessions(conn: asyncpg.Connection, ctx: RoundContext, days: float) -> int:
    # Sessions that ended (revoked, or every refresh token long expired).
    cutoff = ctx.days_ago(days)
    n = await ctx.delete_batched(conn, "refresh_tokens", "expires_at < $1 OR used_at < $1", cutoff)
    return n + await ctx.delete_batched(
        conn,
        "token_families",
        """(revoked_at < $1 OR created_at < $1)
           AND NOT EXISTS (SELECT 1 FROM refresh_tokens r
                           WHERE r.family_id = token_families.id AND r.expires_at >= $1)""",
        cutoff,
    )


async def _outbox(conn: asyncpg.Connection, ctx: RoundContext, days: float) -> int:
    # The relay prunes published events every minute (outbox_retention); this
    # rule is the backstop for a deployment whose relay is stopped, and the
    # figure a dry run shows.
    return await ctx.delete_batched(
        conn, "outbox", "published_at IS NOT NULL AND published_at < $1", ctx.days_ago(days)
    )


def core_rules() -> list[Rule]:
    return [
        Rule(
            "sessions",
            "Ended sign-in sessions and refresh tokens",
            "retention_sessions_days",
            _sessions,
        ),
        Rule(
            "outbox",
            "Published domain events (outbox)",
            "outbox_retention",
            _outbox,
            per_day=86400.0,
        ),
    ]


# -- a round ---------------------------------------------------------------------


async def run_rules(
    conn: asyncpg.Connection, rules: Sequence[Rule], ctx: RoundContext
) -> list[Outcome]:
    """Run ``rules`` on ``conn`` (the caller holds the lock); then delete the
    stored files they named."""
    out = []
    loop = asyncio.get_running_loop()
    for rule in rules:
        days = rule.days(ctx.settings)
        if days <= 0:
            out.append(Outcome(rule.name, rule.data_class, 0, 0, 0.0))
            continue
        t0 = loop.time()
        rows = await rule.apply(conn, ctx, days)
        out.append(Outcome(rule.name, rule.data_class, days, rows, loop.time() - t0))
    if not ctx.dry_run and ctx.storage is not None:
        for key in dict.fromkeys(ctx.files):
            try:
                await ctx.storage.delete(key)
            except Exception:
                log.warning(
                    "a stored file retention released could not be deleted",
                    extra={"storage_key": key},
                )
    return out


async def run(
    conn: asyncpg.Connection,
    rules: Sequence[Rule],
    settings: Settings,
    *,
    storage: Storage | None,
    dry_run: bool = False,
    wait: bool = True,
    now: dt.datetime | None = None,
) -> list[Outcome] | None:
    """One round under the advisory lock: None when ``wait`` is false and
    another process holds it."""
    if wait:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    elif not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
        return None
    try:
        ctx = RoundContext(
            now=now or dt.datetime.now(dt.UTC),
            dry_run=dry_run,
            batch=settings.retention_batch,
            storage=storage,
            settings=settings,
        )
        return await run_rules(conn, rules, ctx)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


async def _schedule(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    interval = settings.retention_interval

    async def loop() -> None:
        rules = [*core_rules(), *app.get(RULES, [])]

        async def step() -> None:
            async with app[keys.DB].acquire() as conn:
                done = await run(conn, rules, settings, storage=storage_of(app), wait=False)
            if done is not None:
                log.info(
                    "retention round",
                    extra={"deleted": {o.rule: o.rows for o in done if o.rows}},
                )

        # Not at once: a replica restarting or a test app starting should not
        # start with a round.
        await loops.every(interval, step, "retention round failed", log, first=min(interval, 300.0))

    task = asyncio.create_task(loop(), name="retention") if interval > 0 else None
    try:
        yield
    finally:
        await loops.stopped(task)


def register(app: web.Application, rules: Sequence[Rule]) -> None:
    app.setdefault(RULES, []).extend(rules)


def install(app: web.Application) -> None:
    """The scheduled task (``retention_interval`` > 0), after the pool exists."""
    app.cleanup_ctx.append(_schedule)
