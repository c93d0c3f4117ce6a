"""doctors.next_free_at stays equal to a full recomputation however holds and
cancellations fall, although most of them skip the recomputation."""

from __future__ import annotations

import datetime as dt
import random
import uuid

from booking.bookings import changes, holds
from booking.refunds import Canceller
from booking.schedule import slots
from tests.booking.factories import make_clinic, make_doctor
from tests.conftest import Api
from wadud.state import keys
from wadud.web.api import Role


async def test_next_free_matches_recomputation_after_random_changes(api: Api) -> None:
    clinic = await make_clinic(api)
    doctor = await make_doctor(
        api,
        clinic,
        buffer_before=5,
        buffer_after=10,
        windows=[(d, "09:00", "12:00") for d in range(7)],
    )
    did = uuid.UUID(doctor.id)
    pool = api.app[keys.DB]
    patient = await api.user(Role.PATIENT)
    pid = await pool.fetchval("SELECT id FROM users WHERE role = 'patient' LIMIT 1")
    assert patient
    now = dt.datetime.now(dt.UTC)
    rnd = random.Random(1122)
    held: list[uuid.UUID] = []
    async with pool.acquire() as conn:
        await slots.refresh_next_free(conn, did, now)
        for _ in range(40):
            if held and rnd.random() < 0.35:
                bid = held.pop(rnd.randrange(len(held)))
                await changes.cancel_booking(conn, bid, by=Canceller.CLINIC, actor_id=None, now=now)
            else:
                free = await slots.free_slots(
                    conn, did, "video", now, now + dt.timedelta(days=2), now
                )
                # Mostly the earliest slots, where the skip logic matters.
                slot = free[min(int(rnd.expovariate(0.5)), len(free) - 1)]
                row = await holds.create_hold(
                    conn,
                    patient_id=pid,
                    doctor_id=did,
                    consultation_type="video",
                    starts_at=slot.start,
                    hold_minutes=10,
                    now=now,
                )
                held.append(row["id"])
            stored = await conn.fetchval("SELECT next_free_at FROM doctors WHERE id = $1", did)
            _, availability = await slots.load_availability(conn, did)
            assert stored == await slots.next_free(conn, did, availability, now)
