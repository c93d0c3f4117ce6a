"""A doctor's hours: their schedule settings, weekly windows and date
overrides as stored, changed by the doctor or their clinic's staff, and the
free slots they offer. Every change is validated whole by the core
(:mod:`booking.schedule.availability`) before it can commit, refreshes the
doctor's ``next_free_at`` and emits ``doctor.availability_changed``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from booking.doctors import fetch_doctor
from booking.schedule import free_time, slots
from wadud.errors import NotFound
from wadud.messaging import outbox
from wadud.web.api import Principal

__all__ = [
    "SETTINGS",
    "Hours",
    "free_slots",
    "read",
    "remove_override",
    "replace_weekly",
    "set_override",
]

#: The doctors columns that are a schedule's settings.
SETTINGS = (
    "time_zone",
    "buffer_before_min",
    "buffer_after_min",
    "min_notice_min",
    "horizon_days",
    "slot_minutes",
)


@dataclass(frozen=True, slots=True)
class Hours:
    """A doctor's schedule as stored: the doctors row (its settings), the
    weekly rules by weekday and start, and the date overrides from
    yesterday on."""

    doctor: asyncpg.Record
    rules: list[asyncpg.Record]
    overrides: list[asyncpg.Record]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _hours(conn: asyncpg.Connection, doctor_id: UUID) -> Hours:
    row = await conn.fetchrow("SELECT * FROM doctors WHERE id = $1", doctor_id)
    assert row is not None
    rules = await conn.fetch(
        """SELECT weekday, start_local, end_local, types FROM availability_rules
           WHERE doctor_id = $1 ORDER BY weekday, start_local""",
        doctor_id,
    )
    overrides = await conn.fetch(
        """SELECT day, windows, closed FROM availability_overrides
           WHERE doctor_id = $1 AND day >= (now() AT TIME ZONE 'UTC')::date - 1 ORDER BY day""",
        doctor_id,
    )
    return Hours(row, rules, overrides)


async def _changed(conn: asyncpg.Connection, row: Mapping[str, Any]) -> None:
    await slots.refresh_next_free(conn, row["id"], _now())
    await outbox.emit(
        conn,
        "doctor.availability_changed",
        {"doctor_id": str(row["id"]), "clinic_id": str(row["clinic_id"])},
    )


async def read(pool: asyncpg.Pool, me: Principal, doctor_id: UUID) -> Hours:
    """The doctor's hours (staff of the clinic, admins, the doctor)."""
    async with pool.acquire() as conn:
        row = await fetch_doctor(conn, me, doctor_id, need="manage")
        return await _hours(conn, row["id"])


async def replace_weekly(
    pool: asyncpg.Pool,
    me: Principal,
    doctor_id: UUID,
    settings: Mapping[str, Any],
    rules: Sequence[Mapping[str, Any]],
) -> Hours:
    """Replace the doctor's schedule ``settings`` (each of :data:`SETTINGS`)
    and all weekly ``rules`` (weekday, start_local, end_local, types). Existing
    bookings and date overrides are kept."""
    async with pool.acquire() as conn, conn.transaction():
        row = await fetch_doctor(conn, me, doctor_id, need="manage", lock=True)
        overrides = await conn.fetch(
            """SELECT day, windows, closed FROM availability_overrides
               WHERE doctor_id = $1 AND day >= (now() AT TIME ZONE 'UTC')::date - 2""",
            row["id"],
        )
        # Validate the whole schedule with the core before writing anything.
        slots.build_availability(settings, rules, overrides)
        await conn.execute(
            """UPDATE doctors SET time_zone = $2, buffer_before_min = $3, buffer_after_min = $4,
                      min_notice_min = $5, horizon_days = $6, slot_minutes = $7,
                      updated_at = now()
               WHERE id = $1""",
            row["id"],
            *(settings[column] for column in SETTINGS),
        )
        await conn.execute("DELETE FROM availability_rules WHERE doctor_id = $1", row["id"])
        await conn.executemany(
            """INSERT INTO availability_rules
                   (doctor_id, clinic_id, weekday, start_local, end_local, types)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            [
                (
                    row["id"],
                    row["clinic_id"],
                    r["weekday"],
                    r["start_local"],
                    r["end_local"],
                    r["types"],
                )
                for r in rules
            ],
        )
        await _changed(conn, row)
        return await _hours(conn, row["id"])


async def set_override(
    pool: asyncpg.Pool,
    me: Principal,
    doctor_id: UUID,
    day: dt.date,
    windows: list[dict[str, Any]],
) -> None:
    """Set one local date's ``windows`` (start, end, types), replacing the
    weekly ones; no windows makes the date a day off."""
    closed = not windows
    async with pool.acquire() as conn, conn.transaction():
        row = await fetch_doctor(conn, me, doctor_id, need="manage", lock=True)
        await conn.execute(
            """INSERT INTO availability_overrides (doctor_id, clinic_id, day, windows, closed)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (doctor_id, day) DO UPDATE
                   SET windows = EXCLUDED.windows, closed = EXCLUDED.closed""",
            row["id"],
            row["clinic_id"],
            day,
            windows,
            closed,
        )
        # Validate with the core (overlaps, slot lengths) inside the
        # transaction: a 422 rolls the write back.
        slots.build_availability(row, [], [{"day": day, "windows": windows, "closed": closed}])
        await _changed(conn, row)


async def remove_override(pool: asyncpg.Pool, me: Principal, doctor_id: UUID, day: dt.date) -> None:
    """Remove a date override (404 if none); the weekly windows apply again
    that day."""
    async with pool.acquire() as conn, conn.transaction():
        row = await fetch_doctor(conn, me, doctor_id, need="manage", lock=True)
        deleted = await conn.fetchval(
            "DELETE FROM availability_overrides WHERE doctor_id = $1 AND day = $2 RETURNING 1",
            row["id"],
            day,
        )
        if deleted is None:
            raise NotFound(f"no override on {day.isoformat()}")
        await _changed(conn, row)


async def free_slots(
    pool: asyncpg.Pool,
    me: Principal | None,
    doctor_id: UUID,
    consultation_type: str,
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime,
) -> tuple[asyncpg.Record, list[free_time.Slot]]:
    """The doctor (published ones are public) and their free slots of
    ``consultation_type`` starting in ``[start, end)``, as of ``now``."""
    async with pool.acquire() as conn:
        # Only published doctors are public (fetch_doctor's "view").
        row = await fetch_doctor(conn, me, doctor_id)
        found = await slots.free_slots(conn, row["id"], consultation_type, start, end, now)
    return row, found
