"""Doctor search, and the sweep that keeps each doctor's next free slot fresh.

Search reads only the ``doctors`` row: filters on region, specialty,
language, fee, rating and ``next_free_at``, sorted by next free slot, price or
rating, with keyset pagination on ``(sort key, id)`` (an opaque cursor), so
page 100 costs what page 1 costs. The indexes are in migrations 0002 and 0004.

``next_free_at`` is computed when availability or bookings change
(:func:`booking.schedule.slots.refresh_next_free`), but time passing also makes slots
vanish; :func:`lifespan` runs a sweep that recomputes it for published
doctors whose value has gone by, in batches claimed with ``SKIP LOCKED`` so
several API replicas share the work.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
from aiohttp import web
from pydantic import AwareDatetime, Field, StringConstraints

from booking.schedule import slots
from wadud import cursor, keys, loops
from wadud.api import ApiModel, Call, Routes, in_sane_range
from wadud.errors import Unprocessable
from wadud.rows import from_row

log = logging.getLogger("booking.search")

routes = Routes("search", "Finding doctors.")

#: Seconds between sweeps of stale ``next_free_at`` values.
SWEEP_INTERVAL = 60.0
#: Doctors refreshed per transaction of the sweep.
SWEEP_BATCH = 100
#: Batches per sweep round at most, so one round cannot run for ever.
SWEEP_MAX_BATCHES = 50
#: A doctor with no free slot is looked at again after this long.
NULL_RECHECK = timedelta(minutes=15)

Sort = Literal["next_free", "price", "rating"]


class SearchQuery(ApiModel):
    specialty: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")] | None = None
    language: Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}$")] | None = None
    region: Literal["PK", "AE", "QA", "SA"] | None = None
    min_fee: Annotated[int, Field(ge=0, le=10**15)] | None = None
    max_fee: Annotated[int, Field(ge=0, le=10**15)] | None = None
    min_rating: Annotated[float, Field(ge=1, le=5)] | None = None
    available_before: AwareDatetime | None = Field(
        default=None, description="Only doctors with a free slot starting before this."
    )
    sort: Sort = "next_free"
    limit: Annotated[int, Field(ge=1, le=10_000)] = 20
    cursor: Annotated[str, StringConstraints(max_length=400)] | None = None


class DoctorSummary(ApiModel):
    id: UUID
    clinic_id: UUID
    display_name: str
    specialty: str
    languages: list[str]
    fee_minor: int
    currency: str
    region: str
    rating_average: float | None
    rating_count: int
    next_free_at: dt.datetime | None


class SearchPage(ApiModel):
    items: list[DoctorSummary]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


# -- cursors -------------------------------------------------------------------


def encode_cursor(secret: str, *parts: Any) -> str:
    """An opaque, signed cursor for keyset pagination (:mod:`wadud.cursor`)."""
    return cursor.encode(secret, "doctors", *parts)


def decode_cursor(secret: str, text: str, arity: int) -> list[Any]:
    """The parts of a cursor from :func:`encode_cursor` (422 if not ours)."""
    return cursor.decode(secret, "doctors", text, arity)


# The sort key expressions match the 0004 indexes exactly, so they are used.
_KEYS: dict[str, tuple[str, str, str]] = {
    # sort: (key expression, direction, cursor comparison)
    "next_free": ("coalesce(next_free_at, 'infinity'::timestamptz)", "ASC", ">"),
    "price": ("fee_minor", "ASC", ">"),
    "rating": ("(rating_sum::float8 / greatest(rating_count, 1))", "DESC", "<"),
}


def _cursor_key(sort: str, value: Any) -> Any:
    # The cursor is signed, so these are values this API produced; checked
    # anyway, so that a key leak cannot turn into 500s.
    try:
        if sort == "next_free":
            if value is None:
                return None
            when = datetime.fromisoformat(value)
            if not in_sane_range(when):
                raise ValueError(value)
            return when
        if sort == "price":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
                raise ValueError(value)
            return value
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(value)
        if not math.isfinite(value):
            raise ValueError(value)
        return float(value)
    except (TypeError, ValueError):
        raise cursor.InvalidCursor("the cursor is malformed") from None


@routes.get("/api/v1/doctors", query=SearchQuery, returns=SearchPage, auth="public")
async def search_doctors(call: Call[None, SearchQuery]) -> SearchPage:
    """Search published doctors.

    Filter by specialty, language, region, fee range (minor units), minimum
    average rating and a free slot before ``available_before``; sort by
    ``next_free`` (soonest first; no free slot last), ``price`` (lowest first)
    or ``rating`` (highest average first). Page with ``cursor``."""
    q = call.query
    page_max = call.settings.booking_search_page_max
    if q.limit > page_max:
        raise Unprocessable(f"limit is at most {page_max}")
    if q.min_fee is not None and q.max_fee is not None and q.min_fee > q.max_fee:
        raise Unprocessable("min_fee is above max_fee")

    conds = ["status = 'published'"]
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if q.region is not None:
        conds.append(f"region = {arg(q.region)}")
    if q.specialty is not None:
        conds.append(f"specialty = {arg(q.specialty)}")
    if q.language is not None:
        conds.append(f"languages @> ARRAY[{arg(q.language)}]::text[]")
    if q.min_fee is not None:
        conds.append(f"fee_minor >= {arg(q.min_fee)}")
    if q.max_fee is not None:
        conds.append(f"fee_minor <= {arg(q.max_fee)}")
    if q.min_rating is not None:
        # Compared without division so no float rounding decides a boundary.
        conds.append(
            f"rating_count > 0 AND rating_sum >= {arg(q.min_rating)}::float8 * rating_count"
        )
    if q.available_before is not None:
        # Normalised here: asyncpg converts to UTC itself and would overflow
        # on year-9999 local times; no slot is that far off anyway.
        before = min(
            max(q.available_before, datetime(1000, 1, 1, tzinfo=UTC)),
            datetime(9000, 1, 1, tzinfo=UTC),
        ).astimezone(UTC)
        conds.append(f"next_free_at < {arg(before)}")

    expr, direction, cmp = _KEYS[q.sort]
    if q.cursor is not None:
        sort, raw_key, last_id = decode_cursor(call.settings.secret_key, q.cursor, 3)
        if sort != q.sort:
            raise Unprocessable("the cursor belongs to another sort order")
        try:
            last = UUID(str(last_id))
        except ValueError:
            raise Unprocessable("the cursor is malformed") from None
        key = _cursor_key(q.sort, raw_key)
        if q.sort == "next_free":
            key_sql = f"coalesce({arg(key)}::timestamptz, 'infinity'::timestamptz)"
        else:
            key_sql = arg(key)
        conds.append(f"({expr}, id) {cmp} ({key_sql}, {arg(last)}::uuid)")

    sql = f"""SELECT id, clinic_id, display_name, specialty, languages, fee_minor, currency,
                     region, rating_sum, rating_count, next_free_at
              FROM doctors WHERE {" AND ".join(conds)}
              ORDER BY {expr} {direction}, id {direction}
              LIMIT {arg(q.limit + 1)}"""
    rows = await call.pool.fetch(sql, *args)
    items = [summary(r) for r in rows[: q.limit]]
    next_cursor = None
    if len(rows) > q.limit:
        last_row = rows[q.limit - 1]
        value: Any
        if q.sort == "next_free":
            nf = last_row["next_free_at"]
            value = None if nf is None else nf.isoformat()
        elif q.sort == "price":
            value = last_row["fee_minor"]
        else:
            value = last_row["rating_sum"] / max(last_row["rating_count"], 1)
        next_cursor = encode_cursor(call.settings.secret_key, q.sort, value, str(last_row["id"]))
    return SearchPage(items=items, next_cursor=next_cursor)


def summary(row: asyncpg.Record) -> DoctorSummary:
    count = int(row["rating_count"])
    return from_row(
        DoctorSummary,
        row,
        languages=list(row["languages"]),
        rating_average=round(row["rating_sum"] / count, 2) if count else None,
        rating_count=count,
    )


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


async def _sweep_forever(app: web.Application) -> None:
    while True:
        try:
            for _ in range(SWEEP_MAX_BATCHES):
                if await sweep_next_free(app[keys.DB], datetime.now(UTC)) < SWEEP_BATCH:
                    break
        except Exception:
            log.exception("next_free sweep failed")
        await asyncio.sleep(SWEEP_INTERVAL)


async def lifespan(app: web.Application) -> AsyncIterator[None]:
    """Run the next-free sweep for the life of the app."""
    async with loops.background(_sweep_forever(app), "booking-next-free-sweep"):
        yield
