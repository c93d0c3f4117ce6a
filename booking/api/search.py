"""Doctor search over HTTP, and the background sweep that keeps each
doctor's next free slot fresh (:mod:`booking.doctors.search`).

Pages are keyset pages on ``(sort key, id)`` behind an opaque, signed
cursor.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from aiohttp import web
from pydantic import AwareDatetime, Field, StringConstraints

from booking.doctors import reviews, search
from wadud.errors import Unprocessable
from wadud.messaging import loops
from wadud.state import keys
from wadud.state.rows import from_row
from wadud.web import cursor
from wadud.web.api import ApiModel, Call, Routes, in_sane_range

log = logging.getLogger("booking.search")

routes = Routes("search", "Finding doctors.")

#: Seconds between sweeps of stale ``next_free_at`` values.
SWEEP_INTERVAL = 60.0
#: Batches per sweep round at most, so one round cannot run for ever.
SWEEP_MAX_BATCHES = 50


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
    sort: search.Sort = "next_free"
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
    """An opaque, signed cursor for keyset pagination (:mod:`wadud.web.cursor`)."""
    return cursor.encode(secret, "doctors", *parts)


def decode_cursor(secret: str, text: str, arity: int) -> list[Any]:
    """The parts of a cursor from :func:`encode_cursor` (422 if not ours)."""
    return cursor.decode(secret, "doctors", text, arity)


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
    after = None
    if q.cursor is not None:
        sort, raw_key, last_id = decode_cursor(call.settings.secret_key, q.cursor, 3)
        if sort != q.sort:
            raise Unprocessable("the cursor belongs to another sort order")
        try:
            last = UUID(str(last_id))
        except ValueError:
            raise Unprocessable("the cursor is malformed") from None
        after = (_cursor_key(q.sort, raw_key), last)
    rows = await search.find(
        call.pool,
        region=q.region,
        specialty=q.specialty,
        language=q.language,
        min_fee=q.min_fee,
        max_fee=q.max_fee,
        min_rating=q.min_rating,
        available_before=q.available_before,
        sort=q.sort,
        after=after,
        limit=q.limit + 1,
    )
    items = [summary(r) for r in rows[: q.limit]]
    next_cursor = None
    if len(rows) > q.limit:
        last_row = rows[q.limit - 1]
        value = search.sort_value(q.sort, last_row)
        next_cursor = encode_cursor(call.settings.secret_key, q.sort, value, str(last_row["id"]))
    return SearchPage(items=items, next_cursor=next_cursor)


def summary(row: Mapping[str, Any]) -> DoctorSummary:
    return from_row(
        DoctorSummary,
        row,
        languages=list(row["languages"]),
        rating_average=reviews.rating_average(row),
    )


# -- the next-free sweep ---------------------------------------------------------------


async def _sweep(app: web.Application) -> None:
    for _ in range(SWEEP_MAX_BATCHES):
        swept = await search.sweep_next_free(app[keys.DB], datetime.now(UTC))
        if swept < search.SWEEP_BATCH:
            return


async def lifespan(app: web.Application) -> AsyncIterator[None]:
    """Run the next-free sweep for the life of the app."""
    sweep = loops.every(SWEEP_INTERVAL, lambda: _sweep(app), "next_free sweep failed", log, first=0)
    async with loops.background(sweep, "booking-next-free-sweep"):
        yield
