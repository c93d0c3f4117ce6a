"""Doctor search at 10,000 doctors: filters, orders and keyset pages agree
with the same search done in Python over every row. Latency is printed, not
asserted (the machine is shared)."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from booking.api.search import decode_cursor, encode_cursor
from tests.booking.factories import make_clinic
from tests.conftest import Api
from wadud.errors import Unprocessable
from wadud.state import keys

_KEY = "cursor-test-key-" + "c" * 32

N = 10_000

SEED = """
INSERT INTO doctors (clinic_id, display_name, specialty, languages, fee_minor, currency, region,
                     status, published_at, rating_count, rating_sum, next_free_at,
                     next_free_checked_at)
SELECT c.id, 'Dr ' || g,
       (ARRAY['cardiology', 'dermatology', 'general', 'pediatrics', 'psychiatry'])[1 + g % 5],
       CASE g % 3 WHEN 0 THEN ARRAY['en', 'ur'] WHEN 1 THEN ARRAY['ar', 'en'] ELSE ARRAY['ar'] END,
       1000 + (g * 7919) % 100000, c.currency, c.region,
       CASE WHEN g % 10 = 0 THEN 'draft' ELSE 'published' END, now(),
       g % 6, (g % 6) * (1 + (g / 7) % 5),
       CASE WHEN g % 17 = 0 THEN NULL
            ELSE now() + make_interval(mins => 120 + (g * 31) % 20000) END,
       now()
FROM generate_series(1, $1) AS g
JOIN (SELECT id, region, currency, (row_number() OVER (ORDER BY region)) - 1 AS n
      FROM clinics) AS c ON c.n = g % 4
"""

Row = dict[str, Any]


def _avg(r: Row) -> float:
    return float(r["rating_sum"] / max(r["rating_count"], 1))


def _expected(rows: list[Row], keep: Callable[[Row], bool], sort: str) -> list[str]:
    kept = [r for r in rows if r["status"] == "published" and keep(r)]
    inf = dt.datetime.max.replace(tzinfo=dt.UTC)
    if sort == "price":
        kept.sort(key=lambda r: (r["fee_minor"], r["id"]))
    elif sort == "next_free":
        kept.sort(key=lambda r: (r["next_free_at"] or inf, r["id"]))
    else:
        kept.sort(key=lambda r: (_avg(r), r["id"]), reverse=True)
    return [str(r["id"]) for r in kept]


async def _all_pages(
    api: Api, params: dict[str, Any], timings: list[float], max_pages: int = 1000
) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(max_pages):
        p = dict(params)
        if cursor:
            p["cursor"] = cursor
        t0 = time.perf_counter()
        page = await api.get("/api/v1/doctors", params=p, expect=200)
        timings.append(time.perf_counter() - t0)
        ids += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return ids


async def test_search_ten_thousand(api: Api) -> None:
    for region in ("PK", "AE", "QA", "SA"):
        await make_clinic(api, region=region, name=f"Clinic {region}")
    pool: asyncpg.Pool = api.app[keys.DB]
    t0 = time.perf_counter()
    await pool.execute(SEED, N)
    await pool.execute("ANALYZE doctors")
    print(f"\nseeded {N} doctors in {time.perf_counter() - t0:.2f}s")
    rows = [dict(r) for r in await pool.fetch("SELECT * FROM doctors")]
    assert len(rows) == N
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)

    cases: list[tuple[dict[str, Any], Callable[[Row], bool], int]] = [
        (
            {"region": "PK", "specialty": "cardiology", "language": "en", "sort": "price"},
            lambda r: (
                r["region"] == "PK" and r["specialty"] == "cardiology" and "en" in r["languages"]
            ),
            50,
        ),
        (
            {"region": "AE", "specialty": "general"},  # next_free, NULLs last
            lambda r: r["region"] == "AE" and r["specialty"] == "general",
            37,
        ),
        (
            {"sort": "rating", "min_rating": 3.5, "max_fee": 50_000},
            lambda r: (
                r["rating_count"] > 0
                and r["rating_sum"] >= 3.5 * r["rating_count"]
                and r["fee_minor"] <= 50_000
            ),
            100,
        ),
        (
            {"available_before": soon.isoformat(), "language": "ur", "min_fee": 20_000},
            lambda r: (
                r["next_free_at"] is not None
                and r["next_free_at"] < soon
                and "ur" in r["languages"]
                and r["fee_minor"] >= 20_000
            ),
            100,
        ),
        ({"sort": "price", "specialty": "nothing"}, lambda r: False, 10),
    ]
    timings: list[float] = []
    for params, keep, limit in cases:
        want = _expected(rows, keep, params.get("sort", "next_free"))
        got = await _all_pages(api, {**params, "limit": limit}, timings)
        assert got == want, params
    # Unfiltered: the first pages of each order over all 9,000 published doctors.
    for sort in ("next_free", "price", "rating"):
        want = _expected(rows, lambda r: True, sort)[:500]
        got = await _all_pages(api, {"sort": sort, "limit": 100}, timings, max_pages=5)
        assert got == want, sort

    timings.sort()
    print(
        f"search: {len(timings)} pages, median {timings[len(timings) // 2] * 1000:.1f} ms, "
        f"p95 {timings[int(len(timings) * 0.95)] * 1000:.1f} ms, "
        f"max {timings[-1] * 1000:.1f} ms (HTTP round trip, shared machine)"
    )
    for sql in (
        """SELECT id FROM doctors WHERE status = 'published' AND region = 'PK'
           AND specialty = 'cardiology' ORDER BY fee_minor, id LIMIT 21""",
        """SELECT id FROM doctors WHERE status = 'published'
           ORDER BY coalesce(next_free_at, 'infinity'::timestamptz), id LIMIT 21""",
        """SELECT id FROM doctors WHERE status = 'published'
           ORDER BY (rating_sum::float8 / greatest(rating_count, 1)) DESC, id DESC LIMIT 21""",
        """SELECT id FROM doctors WHERE status = 'published' AND specialty = 'general'
           ORDER BY coalesce(next_free_at, 'infinity'::timestamptz), id LIMIT 21""",
        """SELECT id FROM doctors WHERE status = 'published' AND languages @> ARRAY['ur']
           AND region = 'QA' ORDER BY fee_minor, id LIMIT 21""",
    ):
        plan = await pool.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + sql)
        print("\n".join(r[0] for r in plan))

    # Page size and cursor checks.
    await api.get("/api/v1/doctors", params={"limit": 101}, expect=422)
    await api.get("/api/v1/doctors", params={"limit": 0}, expect=422)
    await api.get("/api/v1/doctors", params={"cursor": "garbage!"}, expect=422)
    page = await api.get("/api/v1/doctors", params={"sort": "price", "limit": 2}, expect=200)
    await api.get(
        "/api/v1/doctors", params={"sort": "rating", "cursor": page["next_cursor"]}, expect=422
    )
    await api.get("/api/v1/doctors", params={"min_fee": 5, "max_fee": 4}, expect=422)
    await api.get("/api/v1/doctors", params={"region": "US"}, expect=422)
    await api.get("/api/v1/doctors", params={"unknown": "x"}, expect=422)
    first = page["items"][0]
    assert set(first) >= {"rating_average", "rating_count", "next_free_at", "fee_minor"}


@given(
    st.sampled_from(["price", "rating", "next_free"]),
    st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)),
    st.uuids(),
)
def test_cursor_round_trip(sort: str, value: Any, ident: uuid.UUID) -> None:
    cursor = encode_cursor(_KEY, sort, value, str(ident))
    assert decode_cursor(_KEY, cursor, 3) == [sort, value, str(ident)]


@given(st.text(max_size=40))
def test_cursor_garbage_is_422(text: str) -> None:
    # Any text either decodes to three parts or is refused as a 422, never
    # another exception (which the API would turn into a 500).
    with contextlib.suppress(Unprocessable):
        decode_cursor(_KEY, text, 3)


def test_cursor_wrong_arity() -> None:
    with pytest.raises(Unprocessable):
        decode_cursor(_KEY, encode_cursor(_KEY, 1, 2), 3)
