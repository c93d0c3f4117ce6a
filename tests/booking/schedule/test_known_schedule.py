"""Holds on a remembered schedule (booking.schedule.cache): one statement that
writes what the long way writes, and never decides on a schedule, a setting,
a price or a consent that changed since it was remembered, whoever changed
it and however (the API, SQL behind its back)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from booking.schedule import cache, slots
from tests.booking.bookings.test_bookings import anon, hold, iso, local, pool_of
from tests.booking.factories import Doctor, make_clinic, make_doctor
from tests.conftest import Api

pytestmark = pytest.mark.usefixtures("counted")

#: How many holds took the long way (read the doctor's view) since reset.
_long_ways: list[uuid.UUID] = []


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real = slots.view_for_hold

    async def counting(conn: Any, doctor_id: uuid.UUID, *a: Any, **kw: Any) -> Any:
        _long_ways.append(doctor_id)
        return await real(conn, doctor_id, *a, **kw)

    monkeypatch.setattr(slots, "view_for_hold", counting)
    _long_ways.clear()
    yield
    _long_ways.clear()


async def _remembered(api: Api, **kw: Any) -> tuple[Doctor, str]:
    """A doctor whose schedule this process remembers (one hold made), and a
    patient's token."""
    doctor = await make_doctor(api, await make_clinic(api), **kw)
    token = await anon(api)
    await hold(api, token, doctor, local(2, "09:00"))
    assert cache.known(uuid.UUID(doctor.id)) is not None
    _long_ways.clear()
    return doctor, token


async def _rows(api: Api, booking_id: str) -> dict[str, Any]:
    pool = pool_of(api)
    bid = uuid.UUID(booking_id)
    booking = await pool.fetchrow(
        """SELECT type, status, starts_at, ends_at, lower(blocked) AS lo, upper(blocked) AS hi,
                  price_minor, currency, instant, hold_expires_at - created_at AS held_for
           FROM bookings WHERE id = $1""",
        bid,
    )
    history = await pool.fetch(
        "SELECT event, from_state, to_state, detail FROM booking_events WHERE booking_id = $1",
        bid,
    )
    events = await pool.fetch(
        "SELECT topic, payload FROM outbox WHERE payload->>'booking_id' = $1", booking_id
    )
    return {
        "booking": dict(booking),
        "history": [dict(r) for r in history],
        "events": [
            (e["topic"], {k: v for k, v in e["payload"].items() if k != "booking_id"})
            for e in events
        ],
    }


async def test_a_hold_on_a_remembered_schedule_writes_what_the_long_way_writes(
    api: Api,
) -> None:
    doctor, token = await _remembered(api, buffer_before=10, buffer_after=5, fee_minor=123_400)
    # Buffers space the grid out: take two slots it offers.
    day = local(3, "00:00")
    offered = await api.get(
        f"/api/v1/doctors/{doctor.id}/slots",
        params={"type": "video", "from": iso(day), "to": iso(day + dt.timedelta(days=1))},
    )
    first, second = (dt.datetime.fromisoformat(s["start"]) for s in offered["slots"][1:3])
    _long_ways.clear()
    short = await hold(api, token, doctor, first)
    assert _long_ways == []
    cache.forget(uuid.UUID(doctor.id))
    long = await hold(api, token, doctor, second)
    assert _long_ways == [uuid.UUID(doctor.id)]
    one, other = await _rows(api, short["id"]), await _rows(api, long["id"])
    for rows in (one, other):
        b = rows["booking"]
        assert b["lo"] == b["starts_at"] - dt.timedelta(minutes=10)
        assert b["hi"] == b["ends_at"] + dt.timedelta(minutes=5)
        for key in ("starts_at", "ends_at", "lo", "hi"):
            del b[key]
        for _, payload in rows["events"]:
            del payload["starts_at"], payload["ends_at"]
    assert one == other
    assert one["booking"]["price_minor"] == 123_400
    assert [topic for topic, _ in one["events"]] == ["booking.held"]


async def test_a_changed_schedule_is_never_decided_on(api: Api) -> None:
    doctor, token = await _remembered(api)
    did = uuid.UUID(doctor.id)
    pool = pool_of(api)
    # Behind the API's back: mornings only from now on.
    await pool.execute(
        "UPDATE availability_rules SET end_local = '12:00' WHERE doctor_id = $1", did
    )
    refused = await hold(api, token, doctor, local(3, "15:00"), expect=409)
    assert refused["code"] == "slot-not-offered"
    assert _long_ways == [did]
    _long_ways.clear()
    # Remembered again, afresh: the morning is offered, in one statement.
    await hold(api, token, doctor, local(3, "10:00"))
    assert _long_ways == []
    # A date override, added or removed, counts the same way.
    day = local(4, "10:00")
    await pool.execute(
        """INSERT INTO availability_overrides (doctor_id, clinic_id, day, closed)
           VALUES ($1, $2, $3, true)""",
        did,
        uuid.UUID(doctor.clinic_id),
        day.astimezone(dt.timezone(dt.timedelta(hours=5))).date(),
    )
    refused = await hold(api, token, doctor, day, expect=409)
    assert refused["code"] == "slot-not-offered"
    await pool.execute("DELETE FROM availability_overrides WHERE doctor_id = $1", did)
    await hold(api, token, doctor, day)


@pytest.mark.parametrize(
    ("column", "value", "at"),
    [
        ("fee_minor", 99_000, "10:40"),
        ("buffer_after_min", 30, "10:40"),  # a 50-minute grid from 09:00
        ("min_notice_min", 60 * 24 * 5, "10:40"),
        ("time_zone", "Asia/Dubai", "10:40"),
        ("slot_minutes", {"video": 30, "in_person": 30}, "10:30"),
        ("horizon_days", 2, "10:40"),
    ],
)
async def test_a_changed_setting_or_price_is_never_decided_on(
    api: Api, column: str, value: Any, at: str
) -> None:
    doctor, token = await _remembered(api)
    did = uuid.UUID(doctor.id)
    cast = "::jsonb" if column == "slot_minutes" else ""
    await pool_of(api).execute(f"UPDATE doctors SET {column} = $2{cast} WHERE id = $1", did, value)
    start = local(3, at)
    got = await api.post(
        "/api/v1/bookings",
        {"doctor_id": doctor.id, "type": "video", "starts_at": iso(start)},
        token=token,
    )
    assert _long_ways == [did]  # the statement found the row changed
    if column == "fee_minor":
        assert got["price_minor"] == 99_000
    elif column == "buffer_after_min":
        b = await pool_of(api).fetchrow(
            "SELECT upper(blocked) - ends_at AS after FROM bookings WHERE id = $1",
            uuid.UUID(got["id"]),
        )
        assert b["after"] == dt.timedelta(minutes=30)
    elif column == "slot_minutes":
        assert dt.datetime.fromisoformat(got["ends_at"]) - start == dt.timedelta(minutes=30)
    elif column == "time_zone":
        # 10:40 in Karachi is 09:40 in Dubai: still inside 09:00-17:00.
        assert got["status"] == "held"
    else:  # notice of five days, or a horizon of two: no longer offered
        assert got["code"] == "slot-not-offered"


async def test_refusals_on_a_remembered_schedule_are_the_long_way_s(api: Api) -> None:
    doctor, token = await _remembered(api)
    did = uuid.UUID(doctor.id)
    pool = pool_of(api)
    start = local(3, "10:00")
    await hold(api, token, doctor, start)
    # Taken: the exclusion constraint stops the statement; the long way names it.
    other = await anon(api)
    taken = await hold(api, other, doctor, start, expect=409)
    assert taken["code"] == "slot-taken"
    # Off the grid, and a type not offered: the core says so, the long way answers.
    off = await hold(api, other, doctor, start + dt.timedelta(minutes=7), expect=409)
    assert off["code"] == "slot-not-offered"
    # A lapsed hold in the way is expired and the time held for the newcomer.
    await pool.execute(
        "UPDATE bookings SET hold_expires_at = now() - interval '1 minute' WHERE doctor_id = $1",
        did,
    )
    _long_ways.clear()
    again = await hold(api, other, doctor, start)
    assert again["status"] == "held"
    assert _long_ways == [did]
    # Unpublished since it was remembered: 404, as ever.
    await pool.execute("UPDATE doctors SET status = 'suspended' WHERE id = $1", did)
    gone = await hold(api, other, doctor, local(3, "12:00"), expect=404)
    assert gone["status"] == 404


async def test_only_committed_schedules_are_remembered(api: Api) -> None:
    doctor = await make_doctor(api, await make_clinic(api))
    did = uuid.UUID(doctor.id)
    cache.forget(did)
    async with pool_of(api).acquire() as conn:
        async with conn.transaction():
            await slots.load_availability(conn, did)
        assert cache.known(did) is None
        await slots.load_availability(conn, did)
        assert cache.known(did) is not None


async def test_every_change_of_rules_or_overrides_bumps_the_version(api: Api) -> None:
    doctor = await make_doctor(api, await make_clinic(api), windows=[(0, "09:00", "12:00")])
    did, cid = uuid.UUID(doctor.id), uuid.UUID(doctor.clinic_id)
    pool = pool_of(api)

    async def version() -> int:
        return int(await pool.fetchval("SELECT schedule_version FROM doctors WHERE id = $1", did))

    seen = [await version()]
    for sql in (
        "UPDATE availability_rules SET end_local = '13:00' WHERE doctor_id = $1",
        "INSERT INTO availability_overrides (doctor_id, clinic_id, day) VALUES ($1, $2, '2031-01-01')",  # noqa: E501
        "UPDATE availability_overrides SET closed = true WHERE doctor_id = $1",
        "DELETE FROM availability_overrides WHERE doctor_id = $1",
        "DELETE FROM availability_rules WHERE doctor_id = $1",
        """INSERT INTO availability_rules (doctor_id, clinic_id, weekday, start_local, end_local)
           VALUES ($1, $2, 1, '09:00', '10:00')""",
    ):
        await pool.execute(sql, did, *([cid] if "$2" in sql else []))
        seen.append(await version())
    assert seen == sorted(set(seen)), seen  # strictly increasing
