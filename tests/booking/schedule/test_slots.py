"""booking.schedule.slots (the database glue of the availability core), the next-free
sweep, and a schedule across a DST change through the slots endpoint."""

from __future__ import annotations

import datetime as dt
import uuid
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from booking.doctors.search import sweep_next_free
from booking.schedule import slots
from tests.booking.factories import Doctor, make_clinic, make_doctor
from tests.conftest import Api
from wadud.errors import NotFound, Unprocessable
from wadud.state import keys
from wadud.web.api import Role

UTC = dt.UTC


async def _patient_id(api: Api) -> uuid.UUID:
    token = await api.user(Role.PATIENT)
    me = await api.get("/api/v1/me", token=token, expect=200)
    return uuid.UUID(me["id"])


async def _book(
    pool: asyncpg.Pool,
    dr: Doctor,
    patient: uuid.UUID,
    start: dt.datetime,
    minutes: int,
    status: str,
    hold_expires_at: dt.datetime | None = None,
) -> None:
    end = start + dt.timedelta(minutes=minutes)
    await pool.execute(
        """INSERT INTO bookings (clinic_id, doctor_id, doctor_key, patient_id, type, starts_at,
                                 ends_at, blocked, status, hold_expires_at, price_minor, currency)
           SELECT clinic_id, id, key, $2, 'video', $3, $4, tstzrange($3, $4), $5, $6, 100, currency
           FROM doctors WHERE id = $1""",
        uuid.UUID(dr.id),
        patient,
        start,
        end,
        status,
        hold_expires_at,
    )


async def test_busy_holds_and_offers(api: Api) -> None:
    pool: asyncpg.Pool = api.app[keys.DB]
    clinic = await make_clinic(api)
    dr = await make_doctor(api, clinic, time_zone="UTC", min_notice=0, types=("video",))
    did = uuid.UUID(dr.id)
    patient = await _patient_id(api)
    now = dt.datetime.now(UTC)
    day = (now + dt.timedelta(days=2)).date()

    def at(h: int, m: int = 0) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(h, m), UTC)

    await _book(pool, dr, patient, at(9), 20, "requested")
    await _book(pool, dr, patient, at(10), 20, "held", now - dt.timedelta(minutes=1))
    await _book(pool, dr, patient, at(11), 20, "held", now + dt.timedelta(minutes=5))
    await _book(pool, dr, patient, at(12), 20, "cancelled")

    async with pool.acquire() as conn:
        busy = await slots.busy_intervals(conn, did, at(0), at(23), now=now)
        assert [(b.start, b.end) for b in busy] == [
            (at(9), at(9, 20)),
            (at(11), at(11, 20)),
        ]
        free = await slots.free_slots(conn, did, "video", at(9), at(12, 30), now)
        starts = [s.start for s in free]
        assert at(9) not in starts and at(11) not in starts
        assert at(10) in starts and at(12) in starts and at(9, 20) in starts
        assert await slots.is_offered(conn, did, "video", at(9), now) is None
        offered = await slots.is_offered(conn, did, "video", at(10), now)
        assert offered is not None and offered.end == at(10, 20)
        assert await slots.is_offered(conn, did, "video", at(10, 5), now) is None
        assert await slots.is_offered(conn, did, "video", at(18), now) is None  # after hours
        # After the live hold lapses, its slot is free again.
        later = now + dt.timedelta(minutes=6)
        assert await slots.is_offered(conn, did, "video", at(11), later) is not None

        # Offered (it has a slot length) but in no window: simply nothing free.
        assert await slots.free_slots(conn, did, "in_person", at(9), at(12), now) == []
        await conn.execute(
            """UPDATE doctors SET slot_minutes = '{"video": 20}' WHERE id = $1""", did
        )
        with pytest.raises(Unprocessable):
            await slots.free_slots(conn, did, "in_person", at(9), at(12), now)
        with pytest.raises(Unprocessable):
            await slots.free_slots(conn, did, "phone", at(9), at(12), now)
        with pytest.raises(Unprocessable):
            await slots.free_slots(conn, did, "video", at(12), at(9), now)
        with pytest.raises(NotFound):
            await slots.load_availability(conn, uuid.uuid4())

        row, availability = await slots.load_availability(conn, did)
        assert availability.time_zone == ZoneInfo("UTC") and row["id"] == did


async def test_blocked_uses_buffers(api: Api) -> None:
    clinic = await make_clinic(api)
    dr = await make_doctor(api, clinic, buffer_before=5, buffer_after=10)
    pool: asyncpg.Pool = api.app[keys.DB]
    row = await pool.fetchrow("SELECT * FROM doctors WHERE id = $1", uuid.UUID(dr.id))
    assert row is not None
    start = dt.datetime(2030, 1, 1, 9, tzinfo=UTC)
    end = start + dt.timedelta(minutes=20)
    assert slots.blocked(row, start, end) == (
        start - dt.timedelta(minutes=5),
        end + dt.timedelta(minutes=10),
    )
    with pytest.raises(Unprocessable):
        slots.blocked(row, start.replace(tzinfo=None), end)


async def test_refresh_next_free_and_sweep(api: Api) -> None:
    pool: asyncpg.Pool = api.app[keys.DB]
    clinic = await make_clinic(api)
    dr = await make_doctor(api, clinic, time_zone="UTC", min_notice=0)
    closed = await make_doctor(api, clinic, windows=[(0, "09:00", "09:30")], horizon_days=1)
    did = uuid.UUID(dr.id)
    now = dt.datetime.now(UTC)
    async with pool.acquire() as conn:
        # The earliest free slot of any type the doctor offers (their grids
        # differ, so which type comes first depends on the time of day).
        firsts = [
            (await slots.free_slots(conn, did, kind, now, now + dt.timedelta(days=2), now))[0]
            for kind in ("video", "in_person")
        ]
        first = min(firsts, key=lambda slot: slot.start)
        assert await slots.refresh_next_free(conn, did, now) == first.start
    assert await pool.fetchval("SELECT next_free_at FROM doctors WHERE id = $1", did) == first.start

    # Time passes: the stored value is stale, and the sweep recomputes it.
    await pool.execute(
        "UPDATE doctors SET next_free_at = $2 WHERE id = $1", did, now - dt.timedelta(hours=1)
    )
    await pool.execute(
        "UPDATE doctors SET next_free_at = NULL, next_free_checked_at = NULL WHERE id = $1",
        uuid.UUID(closed.id),
    )
    assert await sweep_next_free(pool, now) >= 2
    assert await pool.fetchval("SELECT next_free_at FROM doctors WHERE id = $1", did) == first.start
    # Nothing stale is left, and a doctor with no free slot waits before a recheck.
    fresh = await pool.fetchval(
        "SELECT next_free_at FROM doctors WHERE id = $1", uuid.UUID(closed.id)
    )
    assert await sweep_next_free(pool, now) == 0 or fresh is not None


def _next_transition(tz: ZoneInfo, today: dt.date) -> dt.date:
    """The first local date after ``today`` whose noon offset differs from the day before."""

    def noon_offset(d: dt.date) -> dt.timedelta | None:
        return dt.datetime.combine(d, dt.time(12), tz).utcoffset()

    for i in range(2, 400):
        d = today + dt.timedelta(days=i)
        if noon_offset(d) != noon_offset(d - dt.timedelta(days=1)):
            return d
    raise AssertionError("no DST change within a year")


@pytest.mark.parametrize("zone", ["America/New_York", "Europe/London"])
async def test_slots_across_dst_change(api: Api, zone: str) -> None:
    tz = ZoneInfo(zone)
    clinic = await make_clinic(api)
    dr = await make_doctor(
        api,
        clinic,
        time_zone=zone,
        min_notice=0,
        horizon_days=365,
        types=("video",),
        windows=[(d, "09:00", "12:00") for d in range(7)],
    )
    pool: asyncpg.Pool = api.app[keys.DB]
    await pool.execute(
        """UPDATE doctors SET slot_minutes = '{"video": 60}' WHERE id = $1""", uuid.UUID(dr.id)
    )
    change = _next_transition(tz, dt.datetime.now(tz).date())
    before, after = change - dt.timedelta(days=1), change
    got = await api.get(
        f"/api/v1/doctors/{dr.id}/slots",
        params={
            "from": dt.datetime.combine(before, dt.time(0), tz).isoformat(),
            "to": dt.datetime.combine(after + dt.timedelta(days=1), dt.time(0), tz).isoformat(),
        },
        expect=200,
    )
    want = [
        dt.datetime.combine(d, dt.time(h), tz).astimezone(UTC)
        for d in (before, after)
        for h in (9, 10, 11)
    ]
    assert [dt.datetime.fromisoformat(s["start"]) for s in got["slots"]] == want
    # Same wall times on both sides, different UTC offsets.
    assert [s["local_start"][11:16] for s in got["slots"]] == ["09:00", "10:00", "11:00"] * 2
    offsets = {s["local_start"][19:] for s in got["slots"]}
    assert len(offsets) == 2
    utc_hours = {w.hour for w in want}
    assert len(utc_hours) == 4  # the UTC times shift by an hour across the change
