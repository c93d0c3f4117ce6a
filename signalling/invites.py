"""Guests invited into a visit, in the database: ``room_invites``
(migration 0029; docs/guests.md). The HTTP side is signalling.edge.invites.

An invite is a room, the guest's role and actions, their name, a validity
window and a use count. Its link's key is an HMAC of its id under the
server's secret (:func:`wadud.web.auth.invite_key`), so nothing stored
opens a room. Every change is audited; an invite with a channel writes
``invite.created`` in the same transaction, which the notifier sends
(notify/). A revocation is published on the bus (:data:`REVOKED_TOPIC`):
each replica sends the guest out of the room it owns (signalling.edge.http).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import quote
from uuid import UUID

import asyncpg

from booking.calls import booking_of
from signalling import errors
from signalling.room.outputs import InviteDecided
from wadud.config import Settings
from wadud.errors import NotFound
from wadud.messaging import outbox
from wadud.messaging.bus import Bus
from wadud.state import audit
from wadud.web.auth import invite_key

__all__ = [
    "REVOKED_TOPIC",
    "Guest",
    "InviteNotFound",
    "clinic_of_visit",
    "create",
    "decided",
    "link",
    "list_for",
    "redeem",
    "refusal",
    "revoke",
]

#: The bus topic of a revoked invite: ``{"room", "invite_id"}``.
REVOKED_TOPIC = "call.invite_revoked"

COLUMNS = """id, room, role, actions, name, channel, locale, needs_approval, invited_by,
    not_before, expires_at, max_uses, uses, status, created_at"""


class InviteNotFound(NotFound):
    code = "invite-not-found"
    title = "No such invite"


@dataclass(frozen=True)
class Guest:
    """Who is invited, and how they hear of it."""

    role: str
    name: str
    actions: Collection[str]
    needs_approval: bool
    channel: str | None
    address: str | None
    locale: str
    not_before: dt.datetime
    expires_at: dt.datetime
    uses: int


def link(settings: Settings, room: str, invite_id: UUID) -> str:
    """The guest's link: the call page with ``invite=<id>.<key>``."""
    key = invite_key(settings, invite_id)
    return f"{settings.base_url}/call/{quote(room, safe='')}?invite={invite_id}.{key}"


def _audit_role(role: str) -> str:
    return re.sub(r"[^a-z_]", "_", role)[:32] or "participant"


def _actor(identity: str) -> UUID | None:
    try:
        return UUID(identity)
    except ValueError:
        return None


async def _clinic_of(conn: asyncpg.Connection, room: str) -> UUID | None:
    """The clinic whose room ``room`` is: a booking's, or a clinic key's."""
    booking = booking_of(room)
    if booking is not None:
        return await clinic_of_visit(conn, booking)
    if room.startswith("clinic-") and len(room) > 40:
        try:
            return UUID(room[7:39])
        except ValueError:
            return None
    return None


async def clinic_of_visit(pool: asyncpg.Pool | asyncpg.Connection, booking: UUID) -> UUID | None:
    """The clinic of booking (or visit) ``booking``."""
    found = await pool.fetchval("SELECT clinic_id FROM bookings WHERE id = $1", booking)
    return found if isinstance(found, UUID) else None


async def create(
    pool: asyncpg.Pool,
    room: str,
    guest: Guest,
    *,
    invited_by: str,
    inviter_name: str,
    inviter_role: str,
) -> asyncpg.Record:
    """Keep a new invite of ``room``, audited, with its message's event."""
    async with pool.acquire() as conn, conn.transaction():
        clinic = await _clinic_of(conn, room)
        row = await conn.fetchrow(
            f"""INSERT INTO room_invites (room, clinic_id, role, actions, name, channel, address,
                    locale, needs_approval, invited_by, not_before, expires_at, max_uses)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                RETURNING {COLUMNS}""",
            room,
            clinic,
            guest.role,
            sorted(guest.actions),
            guest.name,
            guest.channel,
            guest.address,
            guest.locale,
            guest.needs_approval,
            invited_by,
            guest.not_before,
            guest.expires_at,
            guest.uses,
        )
        assert row is not None
        await audit.record(
            conn,
            actor=_actor(invited_by),
            role=_audit_role(inviter_role),
            action="invite.created",
            clinic=clinic,
            object=f"invite/{row['id']}",
            detail={"room": room, "role": guest.role, "channel": guest.channel},
        )
        if guest.channel is not None:
            await outbox.emit(
                conn,
                "invite.created",
                {
                    "invite_id": str(row["id"]),
                    "room": room,
                    "role": guest.role,
                    "name": guest.name,
                    "inviter": inviter_name,
                    "channel": guest.channel,
                    "address": guest.address,
                    "locale": guest.locale,
                    "not_before": guest.not_before.isoformat(),
                    "expires_at": guest.expires_at.isoformat(),
                    "clinic_id": str(clinic) if clinic else None,
                },
            )
        return row


async def revoke(
    pool: asyncpg.Pool, bus: Bus, room: str, invite_id: UUID, *, by: str, role: str
) -> None:
    """Take invite ``invite_id`` of ``room`` back (audited) and tell every
    replica, whose room sends its guest out."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE room_invites SET status = 'revoked', closed_at = now(), decided_by = $3
               WHERE id = $1 AND room = $2 RETURNING clinic_id""",
            invite_id,
            room,
            by,
        )
        if row is None:
            raise InviteNotFound(f"no invite {invite_id} in this room")
        await audit.record(
            conn,
            actor=_actor(by),
            role=_audit_role(role),
            action="invite.revoked",
            clinic=row["clinic_id"],
            object=f"invite/{invite_id}",
            detail={"room": room},
        )
    await bus.publish(REVOKED_TOPIC, {"room": room, "invite_id": str(invite_id)})


async def list_for(pool: asyncpg.Pool, room: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            f"SELECT {COLUMNS} FROM room_invites WHERE room = $1 ORDER BY created_at", room
        )
    )


async def redeem(pool: asyncpg.Pool, invite_id: UUID) -> asyncpg.Record:
    """One use of the invite (audited): its row, or :class:`errors.InviteClosed`."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""UPDATE room_invites SET uses = uses + 1
                WHERE id = $1 AND status IN ('open', 'approved') AND uses < max_uses
                  AND now() >= not_before AND now() < expires_at
                RETURNING {COLUMNS}, clinic_id""",
            invite_id,
        )
        if row is None:
            why = await _closed(conn, invite_id)
            raise errors.InviteClosed(why or "the link is not open yet")
        await audit.record(
            conn,
            actor=None,
            role=_audit_role(row["role"]),
            action="invite.redeemed",
            clinic=row["clinic_id"],
            object=f"invite/{invite_id}",
            detail={"room": row["room"], "use": row["uses"]},
        )
        return row


async def _closed(conn: asyncpg.Connection | asyncpg.Pool, invite_id: UUID) -> str | None:
    row = await conn.fetchrow(
        """SELECT status, expires_at <= now() AS over, uses >= max_uses AS used
           FROM room_invites WHERE id = $1""",
        invite_id,
    )
    if row is None:
        return "the invite is gone"
    if row["status"] in ("revoked", "refused"):
        return f"the invite was {row['status']}"
    if row["over"]:
        return "the invite has expired"
    if row["used"]:
        return "the link was used"
    return None


async def refusal(pool: asyncpg.Pool, invite_id: str) -> str | None:
    """Why a guest's link no longer opens the room (None: it does). The
    join guard asks at every join and resume; a link used up still lets in
    the guest who used it."""
    try:
        iid = UUID(invite_id)
    except ValueError:
        return "the link names no invite"
    why = await _closed(pool, iid)
    return None if why == "the link was used" else why


async def decided(pool: asyncpg.Pool, room: str, answer: InviteDecided) -> None:
    """Keep the patient's answer about an invite of ``room`` (the room's
    :class:`InviteDecided`): approved, or refused (its link dies)."""
    try:
        iid = UUID(answer.invite)
    except ValueError:
        return
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE room_invites
               SET status = $3, decided_by = $4,
                   closed_at = CASE WHEN $3 = 'refused' THEN now() END
               WHERE id = $1 AND room = $2 AND needs_approval AND status IN ('open', 'approved')
               RETURNING clinic_id""",
            iid,
            room,
            "approved" if answer.agreed else "refused",
            answer.by,
        )
        if row is None:
            return
        await audit.record(
            conn,
            actor=_actor(answer.by),
            role="patient",
            action="invite.approved" if answer.agreed else "invite.refused",
            clinic=row["clinic_id"],
            object=f"invite/{iid}",
            detail={"room": room},
        )
