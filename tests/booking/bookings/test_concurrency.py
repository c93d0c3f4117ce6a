"""The database arbitrates races: hundreds of concurrent HTTP requests, each
from its own patient session, for one slot, for overlapping slots, and for
the patients of an instant queue."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
import uuid
from typing import Any

import pytest

from tests.booking.bookings.test_bookings import anon, local, pool_of
from tests.booking.factories import make_clinic, make_doctor
from tests.conftest import Api
from wadud.config import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Hundreds of patients race from one test address: the per-address limit
    # on anonymous sessions is not what these tests are about.
    return dataclasses.replace(settings, limits_anonymous_burst=0)


ATTEMPTS = 200


async def _race(api: Api, attempts: list[tuple[str, dict[str, Any]]]) -> list[tuple[int, Any]]:
    async def one(token: str, body: dict[str, Any]) -> tuple[int, Any]:
        resp = await api.client.post(
            "/api/v1/bookings", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        return resp.status, await resp.json(content_type=None)

    started = time.perf_counter()
    results = await asyncio.gather(*(one(t, b) for t, b in attempts))
    elapsed = time.perf_counter() - started
    print(f"{len(attempts)} concurrent holds in {elapsed:.2f} s")
    return list(results)


async def _active(api: Api, doctor_id: str) -> int:
    n = await pool_of(api).fetchval(
        """SELECT count(*) FROM bookings WHERE doctor_id = $1
           AND status IN ('held', 'requested', 'accepted', 'in_progress')""",
        uuid.UUID(doctor_id),
    )
    return int(n)


async def test_one_slot_one_winner(api: Api) -> None:
    doctor = await make_doctor(api, await make_clinic(api))
    patients = await asyncio.gather(*(anon(api) for _ in range(ATTEMPTS)))
    body = {"doctor_id": doctor.id, "type": "video", "starts_at": local(2, "10:00").isoformat()}
    results = await _race(api, [(p, body) for p in patients])
    statuses = collections.Counter(s for s, _ in results)
    assert statuses == {201: 1, 409: ATTEMPTS - 1}, statuses
    assert {b["code"] for s, b in results if s == 409} == {"slot-taken"}
    assert await _active(api, doctor.id) == 1
    winner = next(b for s, b in results if s == 201)
    assert winner["status"] == "held"


async def test_overlapping_slots_one_winner(api: Api) -> None:
    # Buffers of 10 min after each consultation: video slots (20 min) sit on
    # a 30 min grid, in-person ones (30 min) on a 40 min grid. Video 10:00-10:20
    # and in person 10:20-10:50 do not overlap, but the video's buffer does.
    doctor = await make_doctor(api, await make_clinic(api), buffer_after=10)
    patients = await asyncio.gather(*(anon(api) for _ in range(ATTEMPTS)))
    video = {"doctor_id": doctor.id, "type": "video", "starts_at": local(2, "10:00").isoformat()}
    visit = {
        "doctor_id": doctor.id,
        "type": "in_person",
        "starts_at": local(2, "10:20").isoformat(),
    }
    attempts = [(p, video if i % 2 else visit) for i, p in enumerate(patients)]
    results = await _race(api, attempts)
    statuses = collections.Counter(s for s, _ in results)
    assert statuses == {201: 1, 409: ATTEMPTS - 1}, statuses
    assert {b["code"] for s, b in results if s == 409} == {"slot-taken"}
    assert await _active(api, doctor.id) == 1
    # Either slot alone was bookable: the loser's slot is now not offered.
    winner = next(b for s, b in results if s == 201)
    other = visit if winner["type"] == "video" else video
    resp = await api.post("/api/v1/bookings", other, token=await anon(api), expect=409)
    assert resp["code"] == "slot-taken"


async def test_queue_takes_each_patient_once(api: Api) -> None:
    doctors_n, patients_n = 10, 6
    clinic = await make_clinic(api)
    await pool_of(api).execute("INSERT INTO region_features VALUES ('PK', 'instant', true)")
    doctors = [await make_doctor(api, clinic) for _ in range(doctors_n)]
    patients = [await anon(api) for _ in range(patients_n)]
    queue = f"/api/v1/instant/{clinic.id}/general"
    for p in patients:
        await api.post(queue, {}, token=p, expect=201)

    async def take(token: str) -> tuple[int, Any]:
        resp = await api.client.post(f"{queue}/take", headers={"Authorization": f"Bearer {token}"})
        return resp.status, await resp.json(content_type=None)

    started = time.perf_counter()
    results = await asyncio.gather(*(take(doctors[i % doctors_n].token) for i in range(ATTEMPTS)))
    print(f"{ATTEMPTS} concurrent takes in {time.perf_counter() - started:.2f} s")
    taken = [b for s, b in results if s == 201]
    assert len(taken) == patients_n
    assert len({b["patient_id"] for b in taken}) == patients_n
    assert len({b["doctor_id"] for b in taken}) == patients_n  # one consultation each
    codes = collections.Counter(b["code"] for s, b in results if s != 201)
    assert set(codes) <= {"queue-empty", "doctor-busy"}, codes
    # Doctors who got nobody only ever heard that the queue was empty.
    assert codes["queue-empty"] >= (doctors_n - patients_n) * (ATTEMPTS // doctors_n)
    rows = await pool_of(api).fetch("SELECT status, booking_id FROM instant_queue")
    assert {r["status"] for r in rows} == {"taken"}
    assert {str(r["booking_id"]) for r in rows} == {b["id"] for b in taken}
