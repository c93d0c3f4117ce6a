"""Rows for booking tests, inserted with SQL so a test of one resource does not
depend on another resource's handlers. Whole-flow tests go through HTTP.

The fixtures ``clinic`` and ``doctor`` (a clinic in Pakistan and a doctor of
it, as :func:`make_clinic` and :func:`make_doctor` make them) serve every
folder: tests/conftest.py names this module a plugin."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from tests.conftest import Api
from wadud.state import keys
from wadud.web.api import Role

REGION_CURRENCY = {"PK": "PKR", "AE": "AED", "QA": "QAR", "SA": "SAR"}


@dataclass
class Clinic:
    id: str
    region: str
    currency: str
    staff_token: str


@dataclass
class Doctor:
    id: str
    clinic_id: str
    user_id: str
    token: str
    fee_minor: int


async def make_clinic(api: Api, region: str = "PK", name: str = "Shifa Clinic") -> Clinic:
    pool: asyncpg.Pool = api.app[keys.DB]
    cid = await pool.fetchval(
        "INSERT INTO clinics (name, region, currency) VALUES ($1, $2, $3) RETURNING id",
        name,
        region,
        REGION_CURRENCY[region],
    )
    staff = await api.user(Role.CLINIC_STAFF, clinic_id=str(cid))
    return Clinic(str(cid), region, REGION_CURRENCY[region], staff)


async def make_doctor(
    api: Api,
    clinic: Clinic,
    *,
    specialty: str = "general",
    languages: tuple[str, ...] = ("en", "ur"),
    fee_minor: int = 150_000,
    time_zone: str = "Asia/Karachi",
    windows: list[tuple[int, str, str]] | None = None,
    types: tuple[str, ...] = ("video", "in_person"),
    buffer_before: int = 0,
    buffer_after: int = 0,
    min_notice: int = 0,
    horizon_days: int = 60,
    published: bool = True,
    **extra: Any,
) -> Doctor:
    """A doctor with a login and weekly windows ``(weekday, "HH:MM", "HH:MM")``
    (default: every day 09:00-17:00 local)."""
    pool: asyncpg.Pool = api.app[keys.DB]
    email = f"dr-{uuid.uuid4().hex[:8]}@example.test"
    token = await api.user(Role.DOCTOR, clinic_id=clinic.id, email=email)
    user_id = await pool.fetchval("SELECT id FROM users WHERE email = $1", email)
    async with pool.acquire() as conn, conn.transaction():
        did = await conn.fetchval(
            """INSERT INTO doctors (clinic_id, user_id, display_name, specialty, languages,
                   fee_minor, currency, region, status, published_at, time_zone,
                   buffer_before_min, buffer_after_min, min_notice_min, horizon_days)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                       CASE WHEN $9 = 'published' THEN now() END, $10, $11, $12, $13, $14)
               RETURNING id""",
            uuid.UUID(clinic.id),
            user_id,
            extra.get("display_name", "Dr. Test"),
            specialty,
            list(languages),
            fee_minor,
            clinic.currency,
            clinic.region,
            "published" if published else "draft",
            time_zone,
            buffer_before,
            buffer_after,
            min_notice,
            horizon_days,
        )
        for weekday, start, end in windows or [(d, "09:00", "17:00") for d in range(7)]:
            await conn.execute(
                """INSERT INTO availability_rules
                       (doctor_id, clinic_id, weekday, start_local, end_local, types)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                did,
                uuid.UUID(clinic.id),
                weekday,
                dt.time.fromisoformat(start),
                dt.time.fromisoformat(end),
                list(types),
            )
    return Doctor(str(did), clinic.id, str(user_id), token, fee_minor)


async def video_slots(
    api: Api, doctor_id: str, start: dt.datetime, end: dt.datetime
) -> list[dict[str, Any]]:
    """The doctor's free video slots starting in ``[start, end)``, as anyone
    browsing the catalogue sees them."""
    got = await api.get(
        f"/api/v1/doctors/{doctor_id}/slots",
        params={"type": "video", "from": start.isoformat(), "to": end.isoformat()},
        expect=200,
    )
    return list(got["slots"])


@pytest.fixture
async def clinic(api: Api) -> Clinic:
    return await make_clinic(api)


@pytest.fixture
async def doctor(api: Api, clinic: Clinic) -> Doctor:
    return await make_doctor(api, clinic)
