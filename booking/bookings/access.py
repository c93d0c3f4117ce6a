"""Who reaches a booking: the caller's scope, a booking by id or by its
manage link, the bookings a caller lists, and the caller's video link. A
doctor's, staff member's or admin's read is written to the audit trail
(:mod:`privacy.audit`).

Who sees what: a patient their own bookings, a doctor theirs, clinic staff
their clinic's, admins all. A booking outside the caller's scope is a
:class:`~booking.bookings.errors.BookingNotFound` (404), the same as one
that does not exist, so ids do not leak across tenants.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg

from booking import calls
from booking.bookings.errors import BookingNotFound, NoVideoLink
from booking.lifecycle import BookingState
from privacy import audit
from wadud.config import Settings
from wadud.errors import NotFound
from wadud.state.db import Args
from wadud.web.api import Principal, Role

__all__ = [
    "audit_access",
    "by_manage_token",
    "hash_manage_token",
    "list_visible",
    "new_manage_token",
    "read_by_manage_link",
    "read_visible",
    "scope",
    "video_link_for",
    "visible_booking",
    "visit_by_phone_pin",
]


# -- manage tokens -------------------------------------------------------------


def new_manage_token() -> str:
    """A fresh secret for a patient's manage link (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def hash_manage_token(token: str) -> bytes:
    """What ``bookings.manage_token_hash`` stores: the secret is never kept."""
    return hashlib.sha256(token.encode()).digest()


async def by_manage_token(
    conn: asyncpg.Connection, token: str, *, lock: bool = False
) -> asyncpg.Record:
    """The booking a manage link is for (locked ``FOR UPDATE`` with ``lock``),
    else 404."""
    row = await conn.fetchrow(
        "SELECT * FROM bookings WHERE manage_token_hash = $1" + (" FOR UPDATE" if lock else ""),
        hash_manage_token(token),
    )
    if row is None:
        raise NotFound("no booking has this manage link; ask for a new one")
    return row


async def read_by_manage_link(pool: asyncpg.Pool, token: str) -> asyncpg.Record:
    """The booking a manage link is for (404 if the link names none)."""
    async with pool.acquire() as conn:
        return await by_manage_token(conn, token)


# -- the caller's scope ----------------------------------------------------------


def scope(me: Principal, args: list[Any], alias: str = "b") -> str:
    """The SQL condition restricting bookings ``alias`` to what ``me`` may
    see; appends its parameters to ``args``."""
    if me.role is Role.ADMIN:
        return "true"
    if me.role is Role.PATIENT:
        args.append(me.user_id)
        return f"{alias}.patient_id = ${len(args)}"
    if me.clinic_id is None:  # a doctor or staff token always names a clinic
        return "false"
    args.append(me.clinic_id)
    clinic = f"{alias}.clinic_id = ${len(args)}"
    if me.role is Role.DOCTOR:
        args.append(me.user_id)
        return (
            f"{clinic} AND {alias}.doctor_id IN "
            f"(SELECT id FROM doctors WHERE user_id = ${len(args)})"
        )
    return clinic


async def visible_booking(
    conn: asyncpg.Connection, booking_id: UUID, me: Principal, *, lock: bool = False
) -> asyncpg.Record:
    """The booking if ``me`` may see it (locked ``FOR UPDATE`` with ``lock``),
    else :class:`BookingNotFound`."""
    args: list[Any] = [booking_id]
    cond = scope(me, args)
    row = await conn.fetchrow(
        f"SELECT b.* FROM bookings b WHERE b.id = $1 AND {cond}"
        + (" FOR UPDATE OF b" if lock else ""),
        *args,
    )
    if row is None:
        raise BookingNotFound("no such booking")
    return row


async def audit_access(
    conn: asyncpg.Connection | asyncpg.Pool, me: Principal, action: str, row: asyncpg.Record
) -> None:
    """Write ``me``'s ``action`` on the booking ``row`` to the audit trail
    (a patient's own is no access)."""
    await audit.record_access(conn, me, action, row, "booking")


# -- reading -----------------------------------------------------------------------


async def read_visible(pool: asyncpg.Pool, booking_id: UUID, me: Principal) -> asyncpg.Record:
    """One booking ``me`` may see (else 404), the read audited as ``booking.read``."""
    async with pool.acquire() as conn:
        row = await visible_booking(conn, booking_id, me)
        await audit_access(conn, me, "booking.read", row)
    return row


async def list_visible(
    pool: asyncpg.Pool,
    me: Principal,
    *,
    statuses: Sequence[BookingState],
    doctor_id: UUID | None,
    start_from: dt.datetime | None,
    to: dt.datetime | None,
    after: tuple[dt.datetime, UUID] | None,
    limit: int,
) -> tuple[list[asyncpg.Record], bool]:
    """Up to ``limit`` bookings ``me`` may see, by start time, and whether
    more follow. Filters: any of ``statuses`` (none: all), ``doctor_id``,
    starts in ``[start_from, to)``; ``after``: the (start, id) the previous
    page ended on. A doctor's, staff member's or admin's list is audited as
    ``booking.list``, one entry per booking."""
    args = Args()
    where = [scope(me, args.values)]
    if statuses:
        where.append(f"b.status = ANY({args([s.value for s in statuses])}::text[])")
    if doctor_id is not None:
        where.append(f"b.doctor_id = {args(doctor_id)}")
    if start_from is not None:
        where.append(f"b.starts_at >= {args(start_from)}")
    if to is not None:
        where.append(f"b.starts_at < {args(to)}")
    if after is not None:
        last_start, last_id = after
        where.append(f"(b.starts_at, b.id) > ({args(last_start)}, {args(last_id)})")
    rows = await pool.fetch(
        f"""SELECT b.* FROM bookings b WHERE {" AND ".join(where)}
            ORDER BY b.starts_at, b.id LIMIT {args(limit + 1)}""",
        *args.values,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    if me.role is not Role.PATIENT:
        await audit.record_many(
            pool,
            actor=me,
            action="booking.list",
            entries=[
                audit.AuditEntry(
                    f"booking/{r['id']}", subject=r["patient_id"], clinic=r["clinic_id"]
                )
                for r in rows
            ],
        )
    return rows, more


# -- video links -----------------------------------------------------------------


async def video_link_for(
    pool: asyncpg.Pool, settings: Settings, booking_id: UUID, me: Principal
) -> calls.VideoLink:
    """``me``'s link into the booking's consultation room (see
    :func:`booking.calls.video_link`): the patient's publishes and
    subscribes, the doctor's and staff's also administer the room. 409
    ``video-link-unavailable`` unless the booking is an accepted or
    in-progress video consultation."""
    async with pool.acquire() as conn:
        row = await visible_booking(conn, booking_id, me)
        if row["status"] not in calls.OPEN_STATES:
            raise NoVideoLink(f"the booking is {row['status']}; links open once it is accepted")
        if not calls.has_video_link(row):
            raise NoVideoLink("this is an in-person consultation")
        user = await conn.fetchrow(
            "SELECT display_name, locale FROM users WHERE id = $1", me.user_id
        )
        region = await conn.fetchval("SELECT region FROM clinics WHERE id = $1", row["clinic_id"])
        if me.role is Role.DOCTOR:
            name = await conn.fetchval(
                "SELECT display_name FROM doctors WHERE id = $1", row["doctor_id"]
            )
        else:
            name = user["display_name"] if user else ""
    is_patient = me.role is Role.PATIENT
    return calls.video_link(
        settings,
        row,
        identity=str(me.user_id),
        name=name or "",
        role="patient" if is_patient else ("doctor" if me.role is Role.DOCTOR else "staff"),
        locale=user["locale"] if user is not None else None,
        sid=str(me.family_id) if me.family_id else "",
        clinic_region=region or "",
    )


async def visit_by_phone_pin(
    conn: asyncpg.Connection, pin: str, now: dt.datetime
) -> asyncpg.Record | None:
    """The video visit a caller's PIN opens at ``now`` (the phone bridge's
    dial-in): accepted or under way, within the same window as its video
    links (:data:`booking.calls.EARLY_JOIN` before its slot to its end).
    None for a PIN that opens nothing now, which the caller is told the same
    way as a mistyped one."""
    if len(pin) != 8 or not pin.isascii() or not pin.isdigit():
        return None
    return await conn.fetchrow(
        """SELECT * FROM bookings
           WHERE phone_pin = $1 AND type = 'video' AND status = ANY($2::text[])
             AND starts_at - $3::interval <= $4 AND $4 <= ends_at""",
        pin,
        sorted(calls.OPEN_STATES),
        calls.EARLY_JOIN,
        now,
    )
