"""Doctor search, and the sweep that keeps each doctor's next free slot fresh.

Search reads only the ``doctors`` row: filters on region, specialty,
language, fee, rating and ``next_free_at``, sorted by next free slot, price or
rating, with keyset pagination on ``(sort key, id)``, so page 100 costs what
page 1 costs. The indexes are in migrations 0002 and 0004.

``next_free_at`` is computed when availability or bookings change
(:func:`booking.schedule.slots.refresh_next_free`), but time passing also
makes slots vanish; :func:`sweep_next_free` recomputes it for published
doctors whose value has gone by, in batches claimed with ``SKIP LOCKED`` so
several API replicas share the work.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg

from booking.schedule import slots
from wadud.state.db import Args

__all__ = [
    "NULL_RECHECK",
    "SWEEP_BATCH",
    "Sort",
    "find",
    "sort_value",
    "sweep_next_free",
]

log = logging.getLogger("booking.search")

#: Doctors refreshed per transaction of the sweep.
SWEEP_BATCH = 100
#: A doctor with no free slot is looked at again after this long.
NULL_RECHECK = timedelta(minutes=15)

Sort = Literal["next_free", "price", "rating"]

# The sort key expressions match the 0004 indexes exactly, so they are used.
_KEYS: dict[str, tuple[str, str, str]] = {
    # sort: (key expression, direction, cursor comparison)
    "next_free": ("coalesce(next_free_at, 'infinity'::timestamptz)", "ASC", ">"),
    "price": ("fee_minor", "ASC", ">"),
    "rating": ("(rating_sum::float8 / greatest(rating_count, 1))", "DESC", "<"),
}


async def find(
    pool: asyncpg.Pool,
    *,
    region: str | None,
    specialty: str | None,
    language: str | None,
    min_fee: int | None,
    max_fee: int | None,
    min_rating: float | None,
    available_before: datetime | None,
    sort: Sort,
    after: tuple[Any, UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Published doctors matching every filter given, in ``sort`` order,
    after the (sort key, id) the previous page ended on (``after``: the key
    as :func:`sort_value` gave it), at most ``limit``."""
    args = Args()
    # Each of these filters, when given, is one condition on its one parameter.
    filters = (
        ("region = {}", region),
        ("specialty = {}", specialty),
        ("languages @> ARRAY[{}]::text[]", language),
        ("fee_minor >= {}", min_fee),
        ("fee_minor <= {}", max_fee),
        # Compared without division so no float rounding decides a boundary.
        ("rating_count > 0 AND rating_sum >= {}::float8 * rating_count", min_rating),
    )
    conds = ["status = 'published'"]
    conds += [cond.format(args(value)) for cond, value in filters if value is not None]
    if available_before is not None:
        # Normalised here: asyncpg converts to UTC itself and would overflow
        # on year-9999 local times; no slot is that far off anyway.
        before = min(
            max(available_before, datetime(1000, 1, 1, tzinfo=UTC)),
            datetime(9000, 1, 1, tzinfo=UTC),
        ).astimezone(UTC)
        conds.append(f"next_free_at < {args(before)}")

    expr, direction, cmp = _KEYS[sort]
    if after is not None:
        key, last = after
        if sort == "next_free":
            key_sql = f"coalesce({args(key)}::timestamptz, 'infinity'::timestamptz)"
        else:
            key_sql = args(key)
        conds.append(f"({expr}, id) {cmp} ({key_sql}, {args(last)}::uuid)")

    sql = f"""SELECT id, clinic_id, display_name, specialty, languages, fee_minor, currency,
                     region, rating_sum, rating_count, next_free_at
              FROM doctors WHERE {" AND ".join(conds)}
              ORDER BY {expr} {direction}, id {direction}
              LIMIT {args(limit)}"""
    rows: list[asyncpg.Record] = await pool.fetch(sql, *args.values)
    return rows


def sort_value(sort: Sort, row: Mapping[str, Any]) -> Any:
    """The sort key of a doctor :func:`find` gave, as JSON (a page's cursor
    carries it)."""
    if sort == "next_free":
        nf = row["next_free_at"]
        return None if nf is None else nf.isoformat()
    if sort == "price":
        return row["fee_minor"]
    return row["rating_sum"] / max(row["rating_count"], 1)


# -- the next-free sweep ---------------------------------------------------------------


async def sweep_next_free(pool: asyncpg.Pool, now: datetime, *, batch: int = SWEEP_BATCH) -> int:
    """Refresh ``next_free_at`` of one batch of published doctors whose value
    is no longer bookable (its start is within the minimum notice of ``now``)
    or who had no free slot when last looked at. Returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """SELECT id FROM doctors
               WHERE status = 'published'
                 AND (next_free_at < $1::timestamptz + make_interval(mins => min_notice_min)
                      OR (next_free_at IS NULL
                          AND coalesce(next_free_checked_at, '-infinity') < $2::timestamptz))
               ORDER BY next_free_at NULLS FIRST
               LIMIT $3
               FOR UPDATE SKIP LOCKED""",
            now,
            now - NULL_RECHECK,
            batch,
        )
        for row in rows:
            try:
                async with conn.transaction():
                    await slots.refresh_next_free(conn, row["id"], now)
            except Exception:
                # One doctor's unreadable schedule must not stall the sweep;
                # mark it looked at so it waits for NULL_RECHECK.
                log.exception("next_free refresh failed", extra={"doctor_id": str(row["id"])})
                await conn.execute(
                    """UPDATE doctors SET next_free_at = NULL, next_free_checked_at = $2
                       WHERE id = $1""",
                    row["id"],
                    now,
                )
    return len(rows)
