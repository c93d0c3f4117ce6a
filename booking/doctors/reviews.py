"""Reviews: a patient rates a completed consultation once; admins hide abuse.

The doctor's ``rating_count`` and ``rating_sum`` (what search sorts and
filters on) change in the same transaction as the review row, so they always
equal the sum over the doctor's visible reviews.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

import asyncpg

from booking.doctors import fetch_doctor
from wadud.errors import Conflict, NotFound
from wadud.messaging import outbox
from wadud.web import cursor
from wadud.web.api import Principal

__all__ = ["AlreadyReviewed", "hide", "page", "post", "rating_average"]


class AlreadyReviewed(Conflict):
    code = "already-reviewed"
    title = "This booking has a review already"


_COLS = "id, doctor_id, booking_id, rating, body, hidden, created_at"


def rating_average(doctor: Mapping[str, Any]) -> float | None:
    """A doctor's average rating, to two places, from their row's
    ``rating_sum`` and ``rating_count``; None before their first review."""
    count = int(doctor["rating_count"])
    return round(doctor["rating_sum"] / count, 2) if count else None


async def _counted(
    conn: asyncpg.Connection, row: asyncpg.Record, sign: int, event: str, **data: Any
) -> None:
    """Count the review ``row`` into (``sign`` 1) or out of (-1) its doctor's
    rating, and emit ``event`` about it with ``data``."""
    await conn.execute(
        """UPDATE doctors SET rating_count = rating_count + $3,
                              rating_sum = rating_sum + $3 * $2
           WHERE id = $1""",
        row["doctor_id"],
        row["rating"],
        sign,
    )
    await outbox.emit(
        conn,
        event,
        {
            "review_id": str(row["id"]),
            "doctor_id": str(row["doctor_id"]),
            "clinic_id": str(row["clinic_id"]),
            **data,
        },
    )


async def post(
    pool: asyncpg.Pool, me: Principal, booking_id: UUID, rating: int, body: str
) -> asyncpg.Record:
    """The patient ``me`` reviews their completed consultation ``booking_id``
    (404 if not theirs, 409 unless completed, 409 ``already-reviewed``)."""
    async with pool.acquire() as conn, conn.transaction():
        booking = await conn.fetchrow(
            "SELECT id, clinic_id, doctor_id, patient_id, status FROM bookings WHERE id = $1",
            booking_id,
        )
        if booking is None or booking["patient_id"] != me.user_id:
            raise NotFound("no such booking")
        if booking["status"] != "completed":
            raise Conflict("only a completed consultation can be reviewed")
        try:
            # A savepoint, so a duplicate leaves the transaction usable.
            async with conn.transaction():
                row = await conn.fetchrow(
                    f"""INSERT INTO reviews (booking_id, clinic_id, doctor_id, patient_id,
                                             rating, body)
                        VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLS}, clinic_id""",
                    booking["id"],
                    booking["clinic_id"],
                    booking["doctor_id"],
                    me.user_id,
                    rating,
                    body,
                )
        except asyncpg.UniqueViolationError:
            raise AlreadyReviewed("you reviewed this consultation already") from None
        assert row is not None
        await _counted(conn, row, 1, "review.created", rating=rating)
    return row


async def page(
    pool: asyncpg.Pool,
    me: Principal | None,
    doctor_id: UUID,
    *,
    after: str | None,
    limit: int,
    secret: str,
) -> tuple[list[asyncpg.Record], str | None]:
    """Up to ``limit`` of a doctor's visible reviews, newest first, and the
    cursor of the next page (None on the last); ``after``: the cursor the
    previous page gave, signed with ``secret``. 404 for a doctor ``me`` may
    not see, whatever the cursor."""
    async with pool.acquire() as conn:
        doctor = await fetch_doctor(conn, me, doctor_id)
        args: list[object] = [doctor["id"], limit + 1]
        older = ""
        if after is not None:
            args += cursor.decode_instant_id(secret, "reviews", after)
            older = "AND (created_at, id) < ($3, $4)"
        rows = await conn.fetch(
            f"""SELECT id, rating, body, created_at FROM reviews
                WHERE doctor_id = $1 AND NOT hidden {older}
                ORDER BY created_at DESC, id DESC LIMIT $2""",
            *args,
        )
    next_cursor = None
    if len(rows) > limit:
        last_row = rows[limit - 1]
        next_cursor = cursor.encode_instant_id(
            secret, "reviews", last_row["created_at"], last_row["id"]
        )
    return rows[:limit], next_cursor


async def hide(pool: asyncpg.Pool, review_id: UUID, me: Principal, reason: str) -> asyncpg.Record:
    """Hide a review from the public and from the doctor's rating (404 if
    none); hiding a hidden review changes nothing."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {_COLS}, clinic_id FROM reviews WHERE id = $1 FOR UPDATE",
            review_id,
        )
        if row is None:
            raise NotFound("no such review")
        if not row["hidden"]:
            row = await conn.fetchrow(
                f"""UPDATE reviews SET hidden = true, hidden_by = $2 WHERE id = $1
                    RETURNING {_COLS}, clinic_id""",
                row["id"],
                me.user_id,
            )
            assert row is not None
            await _counted(conn, row, -1, "review.hidden", reason=reason)
    return row
