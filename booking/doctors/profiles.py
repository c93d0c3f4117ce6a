"""Doctors' profiles and their life from draft to published: onboarding
(a login and a draft profile), edits, submission for verification,
publication and suspension. Each change emits its outbox event in its
transaction."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg

from booking.doctors import fetch_doctor
from booking.schedule import slots
from wadud.errors import Conflict, NotFound
from wadud.messaging import outbox
from wadud.web import accounts, auth
from wadud.web.api import Principal, Role

__all__ = ["onboard", "publish", "read", "submit", "suspend", "update"]

_STATUS_TOPICS = {
    "pending_verification": "doctor.submitted",
    "published": "doctor.published",
    "suspended": "doctor.suspended",
}


def _now() -> datetime:
    return datetime.now(UTC)


async def _to_change(
    conn: asyncpg.Connection,
    me: Principal,
    doctor_id: UUID,
    need: Literal["manage", "staff"],
) -> asyncpg.Record:
    """The doctor, locked for a change ``me`` may ``need``."""
    return await fetch_doctor(conn, me, doctor_id, need=need, lock=True)


async def onboard(
    pool: asyncpg.Pool,
    passwords: auth.Passwords,
    clinic_id: UUID,
    *,
    email: str,
    password: str,
    display_name: str,
    specialty: str,
    languages: list[str],
    bio: str,
    fee_minor: int,
) -> asyncpg.Record:
    """A doctor's login and draft profile in ``clinic_id`` (404 if no such
    clinic). The fee is in the clinic's currency (minor units); region and
    currency follow the clinic."""
    async with pool.acquire() as conn, conn.transaction():
        clinic = await conn.fetchrow(
            "SELECT region, currency FROM clinics WHERE id = $1", clinic_id
        )
        if clinic is None:
            raise NotFound("no such clinic")
        user = await accounts.create_user(
            conn,
            email=email,
            password=password,
            role=Role.DOCTOR,
            clinic_id=clinic_id,
            display_name=display_name,
            passwords=passwords,
        )
        row = await conn.fetchrow(
            """INSERT INTO doctors (clinic_id, user_id, display_name, specialty, languages, bio,
                                    fee_minor, currency, region)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *""",
            clinic_id,
            user.id,
            display_name,
            specialty,
            sorted(set(languages)),
            bio,
            fee_minor,
            clinic["currency"],
            clinic["region"],
        )
        assert row is not None
        await outbox.emit(
            conn,
            "doctor.created",
            {"doctor_id": str(row["id"]), "clinic_id": str(clinic_id), "user_id": str(user.id)},
        )
    return row


async def read(pool: asyncpg.Pool, me: Principal | None, doctor_id: UUID) -> asyncpg.Record:
    """The doctor's profile if ``me`` may see it (published doctors are
    public; staff of the clinic, admins and the doctor see any status)."""
    async with pool.acquire() as conn:
        return await fetch_doctor(conn, me, doctor_id)


async def update(
    pool: asyncpg.Pool, me: Principal, doctor_id: UUID, fields: Mapping[str, Any]
) -> asyncpg.Record:
    """Change the profile ``fields`` named (none: the profile as it is)."""
    changes = dict(fields)
    if "languages" in changes:
        changes["languages"] = sorted(set(changes["languages"]))
    async with pool.acquire() as conn, conn.transaction():
        row = await _to_change(conn, me, doctor_id, "manage")
        if changes:
            # Column names come from the API model's own field names, never input.
            sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=2))
            row = await conn.fetchrow(
                f"UPDATE doctors SET {sets}, updated_at = now() WHERE id = $1 RETURNING *",
                row["id"],
                *changes.values(),
            )
            assert row is not None
            await outbox.emit(
                conn,
                "doctor.updated",
                {
                    "doctor_id": str(row["id"]),
                    "clinic_id": str(row["clinic_id"]),
                    "fields": sorted(changes),
                },
            )
    return row


# -- status ----------------------------------------------------------------------


async def _set_status(
    conn: asyncpg.Connection, row: Mapping[str, Any], allowed_from: set[str], to: str
) -> asyncpg.Record:
    if row["status"] not in allowed_from:
        raise Conflict(f"a {row['status']} doctor cannot become {to}")
    new = await conn.fetchrow(
        """UPDATE doctors SET status = $2, updated_at = now(),
                  published_at = CASE WHEN $2 = 'published' THEN now() ELSE published_at END
           WHERE id = $1 RETURNING *""",
        row["id"],
        to,
    )
    assert new is not None
    await outbox.emit(
        conn,
        _STATUS_TOPICS[to],
        {"doctor_id": str(row["id"]), "clinic_id": str(row["clinic_id"]), "status": to},
    )
    return new


async def submit(pool: asyncpg.Pool, me: Principal, doctor_id: UUID) -> asyncpg.Record:
    """Submit a draft profile for verification (draft -> pending_verification)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await _to_change(conn, me, doctor_id, "staff")
        return await _set_status(conn, row, {"draft"}, "pending_verification")


async def publish(pool: asyncpg.Pool, me: Principal, doctor_id: UUID) -> asyncpg.Record:
    """Publish a doctor: visible in search and bookable. Needs at least one
    verified credential document and some availability (a weekly window or
    an upcoming date with windows)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await _to_change(conn, me, doctor_id, "staff")
        verified = await conn.fetchval(
            "SELECT count(*) FROM doctor_documents WHERE doctor_id = $1 AND status = 'verified'",
            row["id"],
        )
        if not verified:
            raise Conflict("publishing needs at least one verified credential document")
        has_hours = await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM availability_rules WHERE doctor_id = $1)
                   OR EXISTS (SELECT 1 FROM availability_overrides
                              WHERE doctor_id = $1 AND NOT closed AND windows <> '[]'
                                AND day >= (now() AT TIME ZONE 'UTC')::date - 1)""",
            row["id"],
        )
        if not has_hours:
            raise Conflict("publishing needs some availability")
        row = await _set_status(conn, row, {"pending_verification", "suspended"}, "published")
        await slots.refresh_next_free(conn, row["id"], _now())
        row = await conn.fetchrow("SELECT * FROM doctors WHERE id = $1", row["id"])
        assert row is not None
    return row


async def suspend(pool: asyncpg.Pool, me: Principal, doctor_id: UUID) -> asyncpg.Record:
    """Suspend a doctor: hidden from the public and no longer bookable
    (existing bookings are left to the bookings API)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await _to_change(conn, me, doctor_id, "staff")
        return await _set_status(
            conn, row, {"draft", "pending_verification", "published"}, "suspended"
        )
