"""Reviews: a patient rates a completed consultation once; admins hide abuse.

The doctor's ``rating_count`` and ``rating_sum`` (what search sorts and
filters on) change in the same transaction as the review row, so they always
equal the sum over the doctor's visible reviews.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from pydantic import Field, StringConstraints

from booking.api.doctors import fetch_doctor
from wadud import cursor, outbox
from wadud.api import ApiModel, Call, Role, Routes
from wadud.errors import Conflict, NotFound
from wadud.rows import from_row

routes = Routes("reviews", "Patients' reviews of doctors.")


class ReviewIn(ApiModel):
    rating: Annotated[int, Field(ge=1, le=5)]
    body: Annotated[str, StringConstraints(strip_whitespace=True, max_length=5000)] = ""


class Review(ApiModel):
    id: UUID
    doctor_id: UUID
    booking_id: UUID
    rating: int
    body: str
    hidden: bool
    created_at: dt.datetime


class PublicReview(ApiModel):
    id: UUID
    rating: int
    body: str
    created_at: dt.datetime


class ReviewPage(ApiModel):
    items: list[PublicReview]
    next_cursor: str | None


class ReviewQuery(ApiModel):
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    cursor: Annotated[str, StringConstraints(max_length=400)] | None = None


class HideIn(ApiModel):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] = ""


class AlreadyReviewed(Conflict):
    code = "already-reviewed"
    title = "This booking has a review already"


_COLS = "id, doctor_id, booking_id, rating, body, hidden, created_at"


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


@routes.post(
    "/api/v1/bookings/{booking_id:uuid}/review",
    body=ReviewIn,
    returns=Review,
    status=201,
    auth={Role.PATIENT},
)
async def post_review(call: Call[ReviewIn, None]) -> Review:
    """Review a completed consultation (its patient, once per booking)."""
    me, body = call.user, call.body
    async with call.pool.acquire() as conn, conn.transaction():
        booking = await conn.fetchrow(
            "SELECT id, clinic_id, doctor_id, patient_id, status FROM bookings WHERE id = $1",
            call.path_uuid("booking_id"),
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
                    body.rating,
                    body.body,
                )
        except asyncpg.UniqueViolationError:
            raise AlreadyReviewed("you reviewed this consultation already") from None
        assert row is not None
        await _counted(conn, row, 1, "review.created", rating=body.rating)
    return from_row(Review, row)


@routes.get(
    "/api/v1/doctors/{doctor_id:uuid}/reviews",
    query=ReviewQuery,
    returns=ReviewPage,
    auth="optional",
)
async def list_reviews(call: Call[None, ReviewQuery]) -> ReviewPage:
    """A doctor's visible reviews, newest first. Page with ``cursor``."""
    q = call.query
    async with call.pool.acquire() as conn:
        doctor = await fetch_doctor(conn, call.principal, call.path_uuid("doctor_id"))
        args: list[object] = [doctor["id"], q.limit + 1]
        after = ""
        if q.cursor is not None:
            args += cursor.decode_instant_id(call.settings.secret_key, "reviews", q.cursor)
            after = "AND (created_at, id) < ($3, $4)"
        rows = await conn.fetch(
            f"""SELECT id, rating, body, created_at FROM reviews
                WHERE doctor_id = $1 AND NOT hidden {after}
                ORDER BY created_at DESC, id DESC LIMIT $2""",
            *args,
        )
    items = [PublicReview(**dict(r)) for r in rows[: q.limit]]
    next_cursor = None
    if len(rows) > q.limit:
        last_row = rows[q.limit - 1]
        next_cursor = cursor.encode_instant_id(
            call.settings.secret_key, "reviews", last_row["created_at"], last_row["id"]
        )
    return ReviewPage(items=items, next_cursor=next_cursor)


@routes.post(
    "/api/v1/reviews/{review_id:uuid}/hide", body=HideIn, returns=Review, auth={Role.ADMIN}
)
async def hide_review(call: Call[HideIn, None]) -> Review:
    """Hide a review from the public and from the doctor's rating.

    Hiding a hidden review changes nothing."""
    async with call.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {_COLS}, clinic_id FROM reviews WHERE id = $1 FOR UPDATE",
            call.path_uuid("review_id"),
        )
        if row is None:
            raise NotFound("no such review")
        if not row["hidden"]:
            row = await conn.fetchrow(
                f"""UPDATE reviews SET hidden = true, hidden_by = $2 WHERE id = $1
                    RETURNING {_COLS}, clinic_id""",
                row["id"],
                call.user.user_id,
            )
            assert row is not None
            await _counted(conn, row, -1, "review.hidden", reason=call.body.reason)
    return from_row(Review, row)
