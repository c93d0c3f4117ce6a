"""Who may see a conversation and what they may do in it.

A caller's rights come from the conversation's row: its patient and its
doctor write, an admin reads, and the clinic's staff read or write as the
clinic's chat policy (``chat_clinic_policies``) says. :func:`access` decides
for one conversation; :func:`list_for` applies the same rule in SQL to list a
caller's conversations. Anyone else is told the conversation does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from chat.errors import ConversationNotFound, NotAllowed
from wadud.errors import NotFound
from wadud.principal import Principal, Role
from wadud.state.rows import from_row

#: What chat's SQL functions run on: one connection, or the pool.
Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

STAFF_ACCESS = ("none", "read", "write")
DEFAULT_STAFF_ACCESS = "write"


@dataclass(frozen=True)
class Access:
    """What one caller may do in one conversation."""

    conversation_id: UUID
    clinic_id: UUID
    patient_id: UUID
    doctor_user_id: UUID | None
    role: str  # patient, doctor, clinic_staff, admin
    can_write: bool
    last_seq: int

    @property
    def member_role(self) -> str | None:
        """The role kept in ``chat_members`` (admins are not members)."""
        return None if self.role == "admin" else self.role


_CONV = """
    SELECT c.id, c.clinic_id, c.booking_id, c.patient_id, c.doctor_id, d.user_id AS doctor_user_id,
           c.last_seq, c.created_at, c.last_event_at,
           COALESCE(p.staff_access, 'write') AS staff_access
    FROM chat_conversations c
    JOIN doctors d ON d.id = c.doctor_id
    LEFT JOIN chat_clinic_policies p ON p.clinic_id = c.clinic_id
"""


def _decide(row: asyncpg.Record, who: Principal) -> Access | None:
    role: str
    if who.role == Role.ADMIN:
        role, write = "admin", False
    elif who.user_id == row["patient_id"]:
        role, write = "patient", True
    elif who.user_id == row["doctor_user_id"]:
        role, write = "doctor", True
    elif who.role == Role.CLINIC_STAFF and who.clinic_id == row["clinic_id"]:
        if row["staff_access"] == "none":
            return None
        role, write = "clinic_staff", row["staff_access"] == "write"
    else:
        return None
    return from_row(Access, row, conversation_id=row["id"], role=role, can_write=write)


async def access(conn: Conn, who: Principal, conversation_id: UUID) -> Access:
    """The caller's rights in a conversation; 404 when they have none, so a
    conversation id never tells an outsider that it exists."""
    row = await conn.fetchrow(_CONV + " WHERE c.id = $1", conversation_id)
    acc = None if row is None else _decide(row, who)
    if acc is None:
        raise ConversationNotFound("no such conversation")
    return acc


def require_write(acc: Access) -> None:
    if not acc.can_write:
        raise NotAllowed(f"{acc.role.replace('_', ' ')} may read this conversation but not write")


_UNREAD = """
    (SELECT count(*) FROM chat_events e
     WHERE e.conversation_id = c.id AND e.kind = 'message'
       AND e.seq > COALESCE(m.last_read_seq, 0) AND e.sender_id <> $1)
"""


async def conversation_view(conn: Conn, who: Principal, conversation_id: UUID) -> dict[str, Any]:
    """One conversation as its caller sees it, with their unread count."""
    row = await conn.fetchrow(
        f"""SELECT q.*, COALESCE(m.last_read_seq, 0) AS last_read_seq, {_UNREAD} AS unread
            FROM ({_CONV} WHERE c.id = $2) q
            JOIN chat_conversations c ON c.id = q.id
            LEFT JOIN chat_members m ON m.conversation_id = c.id AND m.user_id = $1""",
        who.user_id,
        conversation_id,
    )
    acc = None if row is None else _decide(row, who)
    if acc is None or row is None:
        raise ConversationNotFound("no such conversation")
    return {**dict(row), "my_role": acc.role, "can_write": acc.can_write}


async def list_for(conn: Conn, who: Principal, *, limit: int) -> list[dict[str, Any]]:
    """The caller's conversations, most recently active first, with unread
    counts."""
    rows = await conn.fetch(
        f"""SELECT q.*, COALESCE(m.last_read_seq, 0) AS last_read_seq, {_UNREAD} AS unread
            FROM ({_CONV}
                  WHERE CASE $2::text
                      WHEN 'admin' THEN true
                      WHEN 'patient' THEN c.patient_id = $1
                      WHEN 'doctor' THEN d.user_id = $1
                      WHEN 'clinic_staff' THEN c.clinic_id = $3
                           AND COALESCE(p.staff_access, 'write') <> 'none'
                      ELSE false END
                  ORDER BY COALESCE(c.last_event_at, c.created_at) DESC
                  LIMIT $4) q
            JOIN chat_conversations c ON c.id = q.id
            LEFT JOIN chat_members m ON m.conversation_id = c.id AND m.user_id = $1
            ORDER BY COALESCE(q.last_event_at, q.created_at) DESC""",
        who.user_id,
        who.role.value,
        who.clinic_id,
        limit,
    )
    out = []
    for row in rows:
        acc = _decide(row, who)
        if acc is not None:
            out.append({**dict(row), "my_role": acc.role, "can_write": acc.can_write})
    return out


async def staff_policy(conn: Conn, clinic_id: UUID) -> str:
    value = await conn.fetchval(
        "SELECT staff_access FROM chat_clinic_policies WHERE clinic_id = $1", clinic_id
    )
    return str(value or DEFAULT_STAFF_ACCESS)


async def set_staff_policy(conn: Conn, clinic_id: UUID, staff_access: str, by: UUID) -> None:
    try:
        await conn.execute(
            """INSERT INTO chat_clinic_policies (clinic_id, staff_access, updated_by)
               VALUES ($1, $2, $3)
               ON CONFLICT (clinic_id) DO UPDATE
               SET staff_access = EXCLUDED.staff_access, updated_by = EXCLUDED.updated_by,
                   updated_at = now()""",
            clinic_id,
            staff_access,
            by,
        )
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("no such clinic") from None
