"""Reviews over HTTP: a patient rates a completed consultation once; the
public reads a doctor's visible reviews; admins hide abuse
(:mod:`booking.doctors.reviews`)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated
from uuid import UUID

from pydantic import Field, StringConstraints

from booking.doctors import reviews
from wadud.state.rows import from_row
from wadud.web.api import ApiModel, Call, Role, Routes

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


@routes.post(
    "/api/v1/bookings/{booking_id:uuid}/review",
    body=ReviewIn,
    returns=Review,
    status=201,
    auth={Role.PATIENT},
)
async def post_review(call: Call[ReviewIn, None]) -> Review:
    """Review a completed consultation (its patient, once per booking)."""
    body = call.body
    row = await reviews.post(
        call.pool, call.user, call.path_uuid("booking_id"), body.rating, body.body
    )
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
    rows, next_cursor = await reviews.page(
        call.pool,
        call.principal,
        call.path_uuid("doctor_id"),
        after=q.cursor,
        limit=q.limit,
        secret=call.settings.secret_key,
    )
    return ReviewPage(items=[PublicReview(**dict(r)) for r in rows], next_cursor=next_cursor)


@routes.post(
    "/api/v1/reviews/{review_id:uuid}/hide", body=HideIn, returns=Review, auth={Role.ADMIN}
)
async def hide_review(call: Call[HideIn, None]) -> Review:
    """Hide a review from the public and from the doctor's rating.

    Hiding a hidden review changes nothing."""
    row = await reviews.hide(call.pool, call.path_uuid("review_id"), call.user, call.body.reason)
    return from_row(Review, row)
