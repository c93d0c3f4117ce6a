"""The calls a visit's doctor or clinic asks the phone bridge to place to the
patient's phone (docs/phone.md, "Calling the patient").

Asking is a row (migration 0027, state ``requested``) and a ``NOTIFY`` on
:data:`CHANNEL` in one transaction: the API (``POST
/api/v1/bookings/{id}/phone-calls``) and the call page (the doctor's
``phone-call`` frame) write it here; a bridge (``sip.node.outcalls``) hears
the NOTIFY, claims the row and writes each step after it (:data:`STATES`).
Both sides share PostgreSQL whatever else they share, so a bridge on
another machine, with or without Redis, hears the request.

A visit has one call live at a time (:class:`PhoneCallLive`), and only an
open visit (its links work now, :func:`booking.calls.link_refusal`'s window)
may ask (:class:`PhoneCallRefused`). ``number`` names someone other than the
patient (an interpreter's line): the bridge places it only if a trunk's
``dial_allow`` lists it, never an arbitrary number.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import asyncpg

from booking.bookings.access import visible_booking
from booking.bookings.errors import BookingNotFound
from booking.calls import is_open
from wadud.config import Settings
from wadud.errors import Conflict, Forbidden, Unprocessable
from wadud.principal import Principal
from wadud.state import audit
from wadud.web.api_keys import ApiKey, Scope

__all__ = [
    "CHANNEL",
    "ENDED",
    "LIVE",
    "NUMBER",
    "STATES",
    "PhoneCallLive",
    "PhoneCallRefused",
    "masked",
    "of_booking",
    "of_booking_as",
    "offered",
    "request",
    "request_as",
    "request_by_key",
    "request_in_room",
    "view",
]

#: The NOTIFY channel a request wakes the bridges on (payload: the call's id).
CHANNEL = "wadud_phone_calls"
#: A call's states, in the order a call goes through them: ``requested``
#: (no bridge has it yet), ``dialling``, ``ringing``, ``answered``,
#: ``joined`` (the phone is in the room), then one of :data:`ENDED`.
STATES = ("requested", "dialling", "ringing", "answered", "joined", *("ended", "busy",
          "no_answer", "declined", "failed"))  # fmt: skip
#: States a call ends in: ``ended`` (it was answered, and is over now).
ENDED = frozenset(STATES[5:])
#: States in which a visit's call is still going towards the room.
LIVE = frozenset(STATES[:4])
#: A number a request may name: E.164.
NUMBER = re.compile(r"^\+[0-9]{6,15}$")


class PhoneCallRefused(Conflict):
    """The visit cannot call a phone now: not open, or no number to call."""

    code = "phone_call_refused"
    title = "The visit cannot call a phone now"


class PhoneCallLive(Conflict):
    """The visit's phone is being called already."""

    code = "phone_call_live"
    title = "A phone call is already being placed for this visit"


class InvalidNumber(Unprocessable):
    code = "invalid_phone_number"
    title = "Not a phone number in E.164 form"


def offered(settings: Settings) -> bool:
    """Whether this deployment's settings name a trunk that places calls
    (``[sip.trunks.NAME] outbound``): then the call page offers the call."""
    return any(isinstance(t, Mapping) and t.get("outbound") for t in settings.sip_trunks.values())


def masked(number: str) -> str:
    """A phone number as pages, rooms, logs and the audit trail show it:
    its last two digits (``Phone ••34``)."""
    digits = [c for c in number if c.isdigit()]
    return "••" + "".join(digits[-2:]) if digits else "••"


def view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A call as the API and the page tell it (the number masked; JSON's
    types, times in ISO 8601)."""
    return {
        "id": str(row["id"]),
        "booking_id": str(row["booking_id"]),
        "to": "other" if row["number"] else "patient",
        "number": masked(shown) if (shown := row["number"] or row.get("patient_phone")) else "",
        "state": row["state"],
        "reason": row["reason"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


_LOST = """UPDATE phone_calls SET state = 'failed', updated_at = now(),
                                 reason = 'lost: its bridge went quiet'
           WHERE booking_id = $1 AND state = ANY($2::text[])
             AND updated_at < now() - interval '2 minutes'"""
_INSERT = """INSERT INTO phone_calls (booking_id, number, requested_by)
             VALUES ($1, $2, $3)
             RETURNING *, (SELECT phone FROM users WHERE id = $4) AS patient_phone"""


async def request(
    conn: asyncpg.Connection,
    booking: Mapping[str, Any],
    *,
    by: UUID | None,
    role: str,
    number: str | None = None,
    now: dt.datetime | None = None,
    detail: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Ask for a call to ``booking``'s patient (or ``number``), on ``conn``
    (its own transaction is made here, or joined), audited as ``by`` in
    ``role`` (``detail``: what else names the asker): the call's :func:`view`."""
    detail = detail or {}
    now = now or dt.datetime.now(dt.UTC)
    if number is not None and not NUMBER.match(number):
        raise InvalidNumber("give the number in E.164 form, e.g. +923001234567")
    if not is_open(booking, now):
        raise PhoneCallRefused("the visit is not open now: its links work from 10 minutes before")
    async with conn.transaction():
        if number is None:
            phone = await conn.fetchval(
                "SELECT phone FROM users WHERE id = $1", booking["patient_id"]
            )
            if not phone:
                raise PhoneCallRefused("the patient has no phone number on file")
        # A call no bridge wrote a step of for long is lost (its bridge
        # died): it no longer keeps the visit from calling again.
        await conn.execute(_LOST, booking["id"], sorted(LIVE))
        try:
            row = await conn.fetchrow(_INSERT, booking["id"], number, by, booking["patient_id"])
        except asyncpg.UniqueViolationError:
            raise PhoneCallLive("wait for this one to end, or hang it up in the room") from None
        assert row is not None
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(row["id"]))
        await audit.record(
            conn, actor=by, role=role, action="phone_call.request",
            subject=booking["patient_id"], clinic=booking["clinic_id"],
            object=f"booking/{booking['id']}",
            detail={"call": str(row["id"]), "to": "other" if number else "patient", **detail},
        )  # fmt: skip
    return view(row)


async def request_as(
    pool: asyncpg.Pool, booking_id: UUID, me: Principal, number: str | None = None
) -> dict[str, Any]:
    """:func:`request`, by a signed-in doctor or staff member who may see the
    booking (else 404, as for any booking out of their scope)."""
    async with pool.acquire() as conn:
        row = await visible_booking(conn, booking_id, me)
        return await request(conn, row, by=me.user_id, role=me.role.value, number=number)


async def request_by_key(
    pool: asyncpg.Pool, booking_id: UUID, key: ApiKey, number: str | None = None
) -> dict[str, Any]:
    """:func:`request`, by a clinic's server with its API key: a booking of
    that clinic (else 404); a load key asks for no call (403)."""
    if key.scope is not Scope.CLINIC or key.clinic_id is None:
        raise Forbidden("only a clinic's key asks for calls to its patients")
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT * FROM bookings WHERE id = $1 AND clinic_id = $2", booking_id, key.clinic_id
        )
        if row is None:
            raise BookingNotFound("no such booking")
        return await request(
            conn, row, by=None, role="api_key", number=number, detail={"api_key": key.id}
        )


async def request_in_room(
    pool: asyncpg.Pool, booking_id: str, identity: str, number: str | None = None
) -> dict[str, Any]:
    """:func:`request`, by an admin of the visit's room (the call page's
    ``call_phone``): its link was checked at join; ``identity`` is their
    account where the link names one."""
    try:
        by: UUID | None = UUID(identity)
    except ValueError:
        by = None
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM bookings WHERE id = $1", UUID(booking_id))
        if row is None:
            raise PhoneCallRefused("the visit is gone")
        if by is not None and not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)", by
        ):
            by = None
        return await request(conn, row, by=by, role="room_admin", number=number)


async def of_booking_as(
    pool: asyncpg.Pool, booking_id: UUID, me: Principal
) -> list[dict[str, Any]]:
    """The calls of a booking ``me`` may see (else 404), oldest first."""
    async with pool.acquire() as conn:
        await visible_booking(conn, booking_id, me)
        return await of_booking(conn, booking_id)


async def of_booking(
    conn: asyncpg.Connection | asyncpg.Pool, booking_id: UUID
) -> list[dict[str, Any]]:
    """The visit's calls, oldest first."""
    rows = await conn.fetch(
        """SELECT c.*, u.phone AS patient_phone FROM phone_calls c
           JOIN bookings b ON b.id = c.booking_id JOIN users u ON u.id = b.patient_id
           WHERE c.booking_id = $1 ORDER BY c.created_at""",
        booking_id,
    )
    return [view(r) for r in rows]
