"""Opening conversations, and their members' places in them.

A conversation is opened on first ask, by a booking (one per booking) or by
a clinic for a patient and one of its doctors (one per pair); two racing
opens agree on one row. Members keep a read position that only moves
forward; clinic staff become members when they first write.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

from chat.access import Access, Conn
from chat.errors import BadSequence, PatientNotFound
from wadud.errors import NotFound
from wadud.messaging import outbox
from wadud.principal import Principal, Role


async def _get_or_create(
    conn: asyncpg.Connection,
    *,
    clinic_id: UUID,
    booking_id: UUID | None,
    patient_id: UUID,
    doctor_id: UUID,
    doctor_user_id: UUID | None,
    created_by: UUID,
) -> UUID:
    async with conn.transaction():
        # ON CONFLICT DO NOTHING makes two racing opens agree on one row.
        if booking_id is not None:
            cid = await conn.fetchval(
                """INSERT INTO chat_conversations
                       (clinic_id, booking_id, patient_id, doctor_id, created_by)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (booking_id) DO NOTHING RETURNING id""",
                clinic_id,
                booking_id,
                patient_id,
                doctor_id,
                created_by,
            )
            if cid is None:
                found: UUID = await conn.fetchval(
                    "SELECT id FROM chat_conversations WHERE booking_id = $1", booking_id
                )
                return found
        else:
            cid = await conn.fetchval(
                """INSERT INTO chat_conversations (clinic_id, patient_id, doctor_id, created_by)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (clinic_id, patient_id, doctor_id) WHERE booking_id IS NULL
                   DO NOTHING RETURNING id""",
                clinic_id,
                patient_id,
                doctor_id,
                created_by,
            )
            if cid is None:
                found = await conn.fetchval(
                    """SELECT id FROM chat_conversations WHERE clinic_id = $1
                       AND patient_id = $2 AND doctor_id = $3 AND booking_id IS NULL""",
                    clinic_id,
                    patient_id,
                    doctor_id,
                )
                return found
        members = [(patient_id, "patient")]
        if doctor_user_id is not None:
            members.append((doctor_user_id, "doctor"))
        await conn.executemany(
            """INSERT INTO chat_members (conversation_id, user_id, clinic_id, role)
               VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
            [(cid, uid, clinic_id, role) for uid, role in members],
        )
        await outbox.emit(
            conn,
            "chat.conversation.opened",
            {
                "conversation_id": str(cid),
                "clinic_id": str(clinic_id),
                "booking_id": str(booking_id) if booking_id else None,
                "patient_id": str(patient_id),
                "doctor_id": str(doctor_id),
            },
        )
        new_id: UUID = cid
        return new_id


async def open_for_booking(conn: asyncpg.Connection, who: Principal, booking_id: UUID) -> UUID:
    """The conversation of a booking, opened on first ask, by its patient,
    its doctor, its clinic's staff or an admin."""
    b = await conn.fetchrow(
        """SELECT b.clinic_id, b.patient_id, b.doctor_id, d.user_id AS doctor_user_id,
                  u.erased_at IS NOT NULL AS erased
           FROM bookings b JOIN doctors d ON d.id = b.doctor_id
           JOIN users u ON u.id = b.patient_id WHERE b.id = $1""",
        booking_id,
    )
    # An erased patient's bookings stay for the ledger; their chat does not
    # come back.
    allowed = (
        b is not None
        and not b["erased"]
        and (who.oversees(b["clinic_id"]) or who.user_id in (b["patient_id"], b["doctor_user_id"]))
    )
    if b is None or not allowed:
        raise NotFound("no such booking")
    return await _get_or_create(
        conn,
        clinic_id=b["clinic_id"],
        booking_id=booking_id,
        patient_id=b["patient_id"],
        doctor_id=b["doctor_id"],
        doctor_user_id=b["doctor_user_id"],
        created_by=who.user_id,
    )


async def open_direct(
    conn: asyncpg.Connection, who: Principal, patient_id: UUID, doctor_id: UUID
) -> UUID:
    """A clinic-opened conversation between a patient of the clinic (one
    with a booking there) and one of the clinic's doctors (clinic staff, or
    an admin)."""
    d = await conn.fetchrow("SELECT clinic_id, user_id FROM doctors WHERE id = $1", doctor_id)
    if d is None or (who.role != Role.ADMIN and d["clinic_id"] != who.clinic_id):
        raise NotFound("no such doctor")
    # Only a patient of this clinic: one with a booking here that got past
    # the hold. Any other id, real or not, gets the same answer, so the
    # endpoint tells no one which user ids exist.
    known = await conn.fetchval(
        """SELECT EXISTS (
               SELECT 1 FROM bookings b JOIN users u ON u.id = b.patient_id
               WHERE b.patient_id = $1 AND b.clinic_id = $2
                 AND b.status NOT IN ('held', 'expired')
                 AND u.role = 'patient' AND NOT u.disabled)""",
        patient_id,
        d["clinic_id"],
    )
    if not known:
        raise PatientNotFound("no patient with a booking at this clinic has that id")
    return await _get_or_create(
        conn,
        clinic_id=d["clinic_id"],
        booking_id=None,
        patient_id=patient_id,
        doctor_id=doctor_id,
        doctor_user_id=d["user_id"],
        created_by=who.user_id,
    )


async def mark_read(pool: asyncpg.Pool, acc: Access, who: Principal, seq: int) -> int:
    """Move the caller's read position forward to ``seq`` (never back);
    return the position. Admins, not being members, keep none."""
    if seq > acc.last_seq:
        last = await pool.fetchval(
            "SELECT last_seq FROM chat_conversations WHERE id = $1", acc.conversation_id
        )
        if seq > last:
            raise BadSequence(f"seq {seq} is past the conversation's last ({last})")
    if acc.member_role is None:
        return seq
    async with pool.acquire() as conn, conn.transaction():
        before = await conn.fetchval(
            """SELECT last_read_seq FROM chat_members
               WHERE conversation_id = $1 AND user_id = $2 FOR UPDATE""",
            acc.conversation_id,
            who.user_id,
        )
        if before is not None and before >= seq:
            return int(before)
        await conn.execute(
            """INSERT INTO chat_members (conversation_id, user_id, clinic_id, role, last_read_seq)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (conversation_id, user_id)
               DO UPDATE SET last_read_seq = GREATEST(chat_members.last_read_seq, $5)""",
            acc.conversation_id,
            who.user_id,
            acc.clinic_id,
            acc.member_role,
            seq,
        )
        await outbox.emit(
            conn,
            "chat.message.read",
            {
                "conversation_id": str(acc.conversation_id),
                "clinic_id": str(acc.clinic_id),
                "user_id": str(who.user_id),
                "seq": seq,
            },
        )
    return seq


async def ensure_member(conn: Conn, acc: Access, who: Principal) -> None:
    """Clinic staff become members when they first write, so they get a read
    position and unread counts."""
    if acc.member_role == "clinic_staff":
        await conn.execute(
            """INSERT INTO chat_members (conversation_id, user_id, clinic_id, role)
               VALUES ($1, $2, $3, 'clinic_staff') ON CONFLICT DO NOTHING""",
            acc.conversation_id,
            who.user_id,
            acc.clinic_id,
        )
