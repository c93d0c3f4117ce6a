"""Clinics (tenants), and per-region settings: feature flags and commission.

A clinic belongs to one region and bills in that region's currency. Each
change emits its outbox event in its transaction.
"""

from __future__ import annotations

from collections.abc import Set
from uuid import UUID

import asyncpg

from wadud.errors import NotFound, Unprocessable
from wadud.messaging import outbox

__all__ = [
    "REGION_CURRENCY",
    "booking_origins",
    "create",
    "listed",
    "origin_listed",
    "origins",
    "read",
    "region_commission",
    "region_features",
    "set_region_commission",
    "set_region_feature",
    "update",
]

#: Each region's currency, which its clinics bill in.
REGION_CURRENCY: dict[str, str] = {"PK": "PKR", "AE": "AED", "QA": "QAR", "SA": "SAR"}

_COLS = (
    "id, name, region, currency, commission_bp, commission_fixed_minor, allowed_origins, created_at"
)


async def create(
    pool: asyncpg.Pool,
    *,
    name: str,
    region: str,
    commission_bp: int | None,
    commission_fixed_minor: int,
) -> asyncpg.Record:
    """A new clinic in ``region``, billing in the region's currency."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""INSERT INTO clinics (name, region, currency, commission_bp,
                                     commission_fixed_minor)
                VALUES ($1, $2, $3, $4, $5) RETURNING {_COLS}""",
            name,
            region,
            REGION_CURRENCY[region],
            commission_bp,
            commission_fixed_minor,
        )
        assert row is not None
        await outbox.emit(conn, "clinic.created", {"clinic_id": str(row["id"]), "region": region})
    return row


async def listed(
    pool: asyncpg.Pool, *, only: UUID | None, after: UUID | None, limit: int
) -> list[asyncpg.Record]:
    """Clinics by id after ``after``, at most ``limit`` (``only``: that
    clinic alone)."""
    rows: list[asyncpg.Record] = await pool.fetch(
        f"""SELECT {_COLS} FROM clinics
            WHERE ($1::uuid IS NULL OR id = $1)
              AND ($2::uuid IS NULL OR id > $2)
            ORDER BY id LIMIT $3""",
        only,
        after,
        limit,
    )
    return rows


async def read(pool: asyncpg.Pool, clinic_id: UUID) -> asyncpg.Record:
    """A clinic (404 if none)."""
    row = await pool.fetchrow(f"SELECT {_COLS} FROM clinics WHERE id = $1", clinic_id)
    if row is None:
        raise NotFound("no such clinic")
    return row


async def update(
    pool: asyncpg.Pool,
    clinic_id: UUID,
    sent: Set[str],
    *,
    name: str | None,
    commission_bp: int | None,
    commission_fixed_minor: int | None,
    allowed_origins: list[str] | None = None,
) -> asyncpg.Record:
    """Change the fields named in ``sent`` (404 if no such clinic); a
    ``commission_bp`` of None clears the clinic's own rate.
    ``allowed_origins`` are normalised already (wadud.origins)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""UPDATE clinics SET
                    name = CASE WHEN $2 THEN $3 ELSE name END,
                    commission_bp = CASE WHEN $4 THEN $5 ELSE commission_bp END,
                    commission_fixed_minor =
                        CASE WHEN $6 THEN $7 ELSE commission_fixed_minor END,
                    allowed_origins = CASE WHEN $8 THEN $9 ELSE allowed_origins END
                WHERE id = $1 RETURNING {_COLS}""",
            clinic_id,
            "name" in sent,
            name,
            "commission_bp" in sent,
            commission_bp,
            "commission_fixed_minor" in sent,
            commission_fixed_minor,
            "allowed_origins" in sent,
            allowed_origins,
        )
        if row is None:
            raise NotFound("no such clinic")
        await outbox.emit(
            conn, "clinic.updated", {"clinic_id": str(row["id"]), "fields": sorted(sent)}
        )
    return row


# -- embedding sites ---------------------------------------------------------------


async def origin_listed(pool: asyncpg.Pool, origin: str) -> bool:
    """Whether any clinic lists ``origin`` (normalised) in its allowed_origins."""
    found = await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM clinics WHERE allowed_origins @> ARRAY[$1::text])", origin
    )
    return bool(found)


async def origins(pool: asyncpg.Pool, clinic_id: UUID) -> list[str]:
    """Clinic ``clinic_id``'s allowed origins (none for no such clinic)."""
    found = await pool.fetchval("SELECT allowed_origins FROM clinics WHERE id = $1", clinic_id)
    return list(found or [])


async def booking_origins(pool: asyncpg.Pool, booking_id: UUID) -> list[str]:
    """The allowed origins of the clinic of booking ``booking_id`` (none for
    no such booking)."""
    found = await pool.fetchval(
        """SELECT c.allowed_origins FROM bookings b JOIN clinics c ON c.id = b.clinic_id
           WHERE b.id = $1""",
        booking_id,
    )
    return list(found or [])


# -- regions -----------------------------------------------------------------------


async def region_features(pool: asyncpg.Pool, region: str) -> dict[str, bool]:
    """A region's feature flags by name."""
    rows = await pool.fetch(
        "SELECT feature, enabled FROM region_features WHERE region = $1 ORDER BY feature", region
    )
    return {r["feature"]: r["enabled"] for r in rows}


async def set_region_feature(pool: asyncpg.Pool, region: str, feature: str, enabled: bool) -> None:
    """Turn a region's feature flag on or off (422 for a name the table refuses)."""
    async with pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(
                """INSERT INTO region_features (region, feature, enabled) VALUES ($1, $2, $3)
                   ON CONFLICT (region, feature) DO UPDATE SET enabled = EXCLUDED.enabled""",
                region,
                feature,
                enabled,
            )
        except asyncpg.CheckViolationError:
            raise Unprocessable(f"{feature!r} is not a valid feature name") from None
        await outbox.emit(
            conn,
            "region.feature_changed",
            {"region": region, "feature": feature, "enabled": enabled},
        )


async def set_region_commission(
    pool: asyncpg.Pool, region: str, commission_bp: int, commission_fixed_minor: int
) -> None:
    """Set the platform commission of a region."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO region_commissions (region, commission_bp, commission_fixed_minor)
               VALUES ($1, $2, $3)
               ON CONFLICT (region) DO UPDATE
                   SET commission_bp = EXCLUDED.commission_bp,
                       commission_fixed_minor = EXCLUDED.commission_fixed_minor""",
            region,
            commission_bp,
            commission_fixed_minor,
        )
        await outbox.emit(
            conn,
            "region.commission_changed",
            {
                "region": region,
                "commission_bp": commission_bp,
                "commission_fixed_minor": commission_fixed_minor,
            },
        )


async def region_commission(pool: asyncpg.Pool, region: str) -> asyncpg.Record:
    """The platform commission set for a region (404 if none is set)."""
    row = await pool.fetchrow(
        "SELECT region, commission_bp, commission_fixed_minor FROM region_commissions"
        " WHERE region = $1",
        region,
    )
    if row is None:
        raise NotFound(f"no commission is set for {region}")
    return row
