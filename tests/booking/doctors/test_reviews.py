"""Reviews: once per completed booking, by its patient; hiding takes a review
out of the public list and out of the doctor's rating, in one transaction."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg

from tests.booking.factories import Doctor, make_clinic, make_doctor
from tests.conftest import Api
from wadud.state import keys
from wadud.web.api import Role


async def _patient(api: Api) -> tuple[str, uuid.UUID]:
    token = await api.user(Role.PATIENT)
    me = await api.get("/api/v1/me", token=token, expect=200)
    return token, uuid.UUID(me["id"])


async def _booking(
    pool: asyncpg.Pool, dr: Doctor, patient: uuid.UUID, status: str = "completed", days: int = 1
) -> str:
    start = dt.datetime(2030, 1, 1, 9, tzinfo=dt.UTC) + dt.timedelta(days=days)
    end = start + dt.timedelta(minutes=20)
    bid = await pool.fetchval(
        """INSERT INTO bookings (clinic_id, doctor_id, doctor_key, patient_id, type, starts_at,
                                 ends_at, blocked, status, price_minor, currency)
           SELECT clinic_id, id, key, $2, 'video', $3, $4, tstzrange($3, $4), $5, 100, currency
           FROM doctors WHERE id = $1 RETURNING id""",
        uuid.UUID(dr.id),
        patient,
        start,
        end,
        status,
    )
    return str(bid)


async def _aggregate(pool: asyncpg.Pool, dr: Doctor) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT rating_count, rating_sum FROM doctors WHERE id = $1", uuid.UUID(dr.id)
    )
    assert row is not None
    return row["rating_count"], row["rating_sum"]


async def test_review_rules_and_aggregates(api: Api) -> None:
    pool: asyncpg.Pool = api.app[keys.DB]
    clinic = await make_clinic(api)
    dr = await make_doctor(api, clinic)
    alice, alice_id = await _patient(api)
    bob, bob_id = await _patient(api)
    done = await _booking(pool, dr, alice_id)
    pending = await _booking(pool, dr, alice_id, status="accepted", days=2)
    bobs = await _booking(pool, dr, bob_id, days=3)

    url = f"/api/v1/bookings/{done}/review"
    await api.post(url, {"rating": 5, "body": "great"}, token=bob, expect=404)  # not his
    await api.post(url, {"rating": 5}, token=dr.token, expect=403)  # not a patient
    await api.post(url, {"rating": 6}, token=alice, expect=422)
    await api.post(url, {"rating": 0}, token=alice, expect=422)
    await api.post(url, {"rating": "5"}, token=alice, expect=422)
    await api.post(url, {"rating": 4, "body": "x" * 5001}, token=alice, expect=422)
    await api.post(f"/api/v1/bookings/{pending}/review", {"rating": 4}, token=alice, expect=409)
    await api.post(
        f"/api/v1/bookings/{uuid.uuid4()}/review", {"rating": 4}, token=alice, expect=404
    )

    review = await api.post(url, {"rating": 4, "body": "kind and clear"}, token=alice, expect=201)
    assert review["rating"] == 4 and not review["hidden"]
    second = await api.post(url, {"rating": 1}, token=alice, expect=409)
    assert second["code"] == "already-reviewed"
    await api.post(f"/api/v1/bookings/{bobs}/review", {"rating": 2}, token=bob, expect=201)
    assert await _aggregate(pool, dr) == (2, 6)
    profile = await api.get(f"/api/v1/doctors/{dr.id}", expect=200)
    assert profile["rating_average"] == 3.0 and profile["rating_count"] == 2

    listed = await api.get(f"/api/v1/doctors/{dr.id}/reviews", expect=200)
    assert [r["rating"] for r in listed["items"]] == [2, 4]
    assert "patient_id" not in listed["items"][0]

    admin = await api.user(Role.ADMIN)
    await api.post(f"/api/v1/reviews/{review['id']}/hide", {}, token=alice, expect=403)
    hidden = await api.post(
        f"/api/v1/reviews/{review['id']}/hide", {"reason": "abuse"}, token=admin, expect=200
    )
    assert hidden["hidden"]
    assert await _aggregate(pool, dr) == (1, 2)
    # Hiding again changes nothing.
    await api.post(f"/api/v1/reviews/{review['id']}/hide", {}, token=admin, expect=200)
    assert await _aggregate(pool, dr) == (1, 2)
    listed = await api.get(f"/api/v1/doctors/{dr.id}/reviews", expect=200)
    assert [r["rating"] for r in listed["items"]] == [2]
    await api.post(f"/api/v1/reviews/{uuid.uuid4()}/hide", {}, token=admin, expect=404)
    topics = [r["topic"] for r in await pool.fetch("SELECT topic FROM outbox ORDER BY id")]
    assert topics.count("review.created") == 2 and topics.count("review.hidden") == 1


async def test_concurrent_duplicate_reviews_count_once(api: Api) -> None:
    pool: asyncpg.Pool = api.app[keys.DB]
    clinic = await make_clinic(api)
    dr = await make_doctor(api, clinic)
    alice, alice_id = await _patient(api)
    done = await _booking(pool, dr, alice_id)
    results = await asyncio.gather(
        *(
            api.call("POST", f"/api/v1/bookings/{done}/review", {"rating": 5}, token=alice)
            for _ in range(5)
        )
    )
    assert sum(1 for r in results if r.get("rating") == 5) == 1
    assert await _aggregate(pool, dr) == (1, 5)


async def test_reviews_pagination_and_visibility(api: Api) -> None:
    pool: asyncpg.Pool = api.app[keys.DB]
    clinic = await make_clinic(api)
    dr = await make_doctor(api, clinic)
    draft = await make_doctor(api, clinic, published=False)
    _, pid = await _patient(api)
    booking_ids = [await _booking(pool, dr, pid, days=i) for i in range(7)]
    base = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    for i, bid in enumerate(booking_ids):
        # Two reviews share a timestamp, so the id tie-break is exercised.
        await pool.execute(
            """INSERT INTO reviews (booking_id, clinic_id, doctor_id, patient_id, rating,
                                    created_at, hidden)
               SELECT id, clinic_id, doctor_id, patient_id, $2, $3, $4
               FROM bookings WHERE id = $1""",
            uuid.UUID(bid),
            1 + i % 5,
            base + dt.timedelta(hours=min(i, 5)),
            i == 3,
        )
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await api.get(f"/api/v1/doctors/{dr.id}/reviews", params=params, expect=200)
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    want = await pool.fetch(
        """SELECT id FROM reviews WHERE doctor_id = $1 AND NOT hidden
           ORDER BY created_at DESC, id DESC""",
        uuid.UUID(dr.id),
    )
    assert seen == [str(r["id"]) for r in want] and len(seen) == 6
    await api.get(f"/api/v1/doctors/{draft.id}/reviews", expect=404)
    await api.get(f"/api/v1/doctors/{dr.id}/reviews", params={"cursor": "xx"}, expect=422)
