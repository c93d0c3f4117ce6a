"""The instant-consultation queue over HTTP against a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid

from booking.bookings.queue import DEFAULT_CONSULT_SECONDS
from tests.booking.bookings.test_bookings import anon, events, pool_of
from tests.booking.factories import Clinic, Doctor, make_clinic, make_doctor
from tests.conftest import Api
from wadud.state import keys
from wadud.web import auth


async def _enable(api: Api, region: str = "PK", enabled: bool = True) -> None:
    await pool_of(api).execute(
        """INSERT INTO region_features VALUES ($1, 'instant', $2)
           ON CONFLICT (region, feature) DO UPDATE SET enabled = EXCLUDED.enabled""",
        region,
        enabled,
    )


def _queue(clinic: Clinic, specialty: str = "general") -> str:
    return f"/api/v1/instant/{clinic.id}/{specialty}"


async def test_region_feature_gates_the_queue(api: Api, clinic: Clinic, doctor: Doctor) -> None:
    patient = await anon(api)
    err = await api.post(_queue(clinic), {}, token=patient, expect=403)
    assert err["code"] == "instant-unavailable"
    await _enable(api, enabled=False)
    await api.post(_queue(clinic), {}, token=patient, expect=403)
    err = await api.post(f"{_queue(clinic)}/take", token=doctor.token, expect=403)
    assert err["code"] == "instant-unavailable"
    await _enable(api)
    await api.post(_queue(clinic), {}, token=patient, expect=201)
    # Another region's switch does not count.
    gulf = await make_clinic(api, region="AE", name="Gulf Clinic")
    await make_doctor(api, gulf)
    await api.post(_queue(gulf), {}, token=patient, expect=403)


async def test_join_position_take_and_leave(api: Api) -> None:
    await _enable(api)
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic)
    other_clinic = await make_clinic(api, name="Other")
    first, second = await anon(api), await anon(api)

    e1 = await api.post(_queue(clinic), {"note": "fever"}, token=first, expect=201)
    assert (e1["status"], e1["position"], e1["note"]) == ("waiting", 1, "fever")
    assert e1["estimated_wait_seconds"] == DEFAULT_CONSULT_SECONDS
    err = await api.post(_queue(clinic), {}, token=first, expect=409)
    assert err["code"] == "already-waiting"
    e2 = await api.post(_queue(clinic), {}, token=second, expect=201)
    assert (e2["position"], e2["estimated_wait_seconds"]) == (2, 2 * DEFAULT_CONSULT_SECONDS)

    # Bad and unknown queues, and who may look.
    await api.post(_queue(clinic, "cardiology"), {}, token=first, expect=404)
    await api.post(f"/api/v1/instant/{uuid.uuid4()}/general", {}, token=first, expect=404)
    await api.post(f"/api/v1/instant/{clinic.id}/General", {}, token=first, expect=404)
    await api.post(_queue(clinic), {"note": "x" * 2001}, token=first, expect=422)
    await api.post(_queue(clinic), {}, token=doctor.token, expect=403)
    entry = f"/api/v1/instant/entries/{e1['id']}"
    await api.get(entry, token=second, expect=404)
    await api.get(entry, token=other_clinic.staff_token, expect=404)
    assert (await api.get(entry, token=clinic.staff_token, expect=200))["position"] == 1
    length = await api.get(_queue(clinic), token=clinic.staff_token, expect=200)
    assert (length["waiting"], length["doctors_taking"]) == (2, 0)
    await api.get(_queue(clinic), token=other_clinic.staff_token, expect=404)
    await api.get(_queue(clinic), token=first, expect=403)

    # First come, first served; the booking is an accepted video consult now.
    before = dt.datetime.now(dt.UTC)
    booking = await api.post(f"{_queue(clinic)}/take", token=doctor.token, expect=201)
    assert booking["patient_id"] == (await api.get("/api/v1/me", token=first))["id"]
    assert (booking["status"], booking["type"], booking["instant"]) == ("accepted", "video", True)
    assert booking["price_minor"] == doctor.fee_minor
    starts = dt.datetime.fromisoformat(booking["starts_at"])
    assert before <= starts <= dt.datetime.now(dt.UTC)
    mine = await api.get(entry, token=first, expect=200)
    assert (mine["status"], mine["position"], mine["booking_id"]) == ("taken", None, booking["id"])
    assert (await api.get(f"/api/v1/instant/entries/{e2['id']}", token=second))["position"] == 1
    # The patient can join the call at once.
    link = await api.get(f"/api/v1/bookings/{booking['id']}/video-link", token=first, expect=200)
    grant = auth.decode_room_token(api.app[keys.SETTINGS], link["token"])
    assert grant.room == f"booking-{booking['id']}"
    assert [e["entry_id"] for e in await events(api, "instant.taken")] == [e1["id"]]
    assert [e["booking_id"] for e in await events(api, "booking.accepted")] == [booking["id"]]

    # A doctor in a consultation takes nobody else until it ends.
    err = await api.post(f"{_queue(clinic)}/take", token=doctor.token, expect=409)
    assert err["code"] == "doctor-busy"
    await api.post(f"/api/v1/bookings/{booking['id']}/start", token=doctor.token, expect=200)
    await api.post(f"/api/v1/bookings/{booking['id']}/complete", token=doctor.token, expect=200)

    # The second patient leaves; they cannot leave twice, nor for someone else.
    e2_path = f"/api/v1/instant/entries/{e2['id']}"
    await api.delete(e2_path, token=first, expect=404)
    await api.delete(e2_path, token=second, expect=204)
    err = await api.delete(e2_path, token=second, expect=409)
    assert err["code"] == "not-waiting"
    err = await api.post(f"{_queue(clinic)}/take", token=doctor.token, expect=404)
    assert err["code"] == "queue-empty"
    # Leaving is not forever.
    await api.post(_queue(clinic), {}, token=second, expect=201)


async def test_who_takes(api: Api) -> None:
    await _enable(api)
    clinic = await make_clinic(api)
    await make_doctor(api, clinic)
    cardiologist = await make_doctor(api, clinic, specialty="cardiology")
    stranger = await make_doctor(api, await make_clinic(api, name="Other"))
    await api.post(_queue(clinic), {}, token=await anon(api), expect=201)
    await api.post(f"{_queue(clinic)}/take", token=cardiologist.token, expect=403)
    await api.post(f"{_queue(clinic)}/take", token=stranger.token, expect=404)
    await api.post(f"{_queue(clinic)}/take", token=clinic.staff_token, expect=403)
    await api.post(f"{_queue(clinic)}/take", token=await anon(api), expect=403)


async def test_estimate_uses_recent_consultations(api: Api) -> None:
    await _enable(api)
    clinic = await make_clinic(api)
    doctors = [await make_doctor(api, clinic) for _ in range(2)]
    patients = [await anon(api) for _ in range(2)]
    for patient, doctor in zip(patients, doctors, strict=True):
        await api.post(_queue(clinic), {}, token=patient, expect=201)
        b = await api.post(f"{_queue(clinic)}/take", token=doctor.token, expect=201)
        await api.post(f"/api/v1/bookings/{b['id']}/start", token=doctor.token, expect=200)
        await api.post(f"/api/v1/bookings/{b['id']}/complete", token=doctor.token, expect=200)
    # Make the two consultations last 8 and 12 minutes: 10 on average.
    for booking_id, minutes in zip(
        await pool_of(api).fetch("SELECT id FROM bookings ORDER BY created_at"),
        (8, 12),
        strict=True,
    ):
        await pool_of(api).execute(
            """UPDATE booking_events SET at = at - make_interval(mins => $2)
               WHERE booking_id = $1 AND to_state = 'in_progress'""",
            booking_id["id"],
            minutes,
        )
        await pool_of(api).execute(
            """UPDATE booking_events e SET at = s.at + make_interval(mins => $2)
               FROM booking_events s
               WHERE e.booking_id = $1 AND e.to_state = 'completed'
                 AND s.booking_id = $1 AND s.to_state = 'in_progress'""",
            booking_id["id"],
            minutes,
        )
    waiting = [await anon(api) for _ in range(3)]
    entries = [await api.post(_queue(clinic), {}, token=p, expect=201) for p in waiting]
    # Two doctors took patients in the last hour: positions 1-2 wait one
    # consultation, position 3 two.
    assert [e["estimated_wait_seconds"] for e in entries] == [600, 600, 1200]
