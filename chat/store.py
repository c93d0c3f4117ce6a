"""Chat's SQL: who may see a conversation, appending events in order,
reading them back (resume and history), read positions and attachments.

PostgreSQL is the truth and the orderer: ``chat_append`` (migration 0007)
takes the conversation's row lock, so sequence numbers are dense and a
sequence visible to anyone means every smaller one is committed too. The hub
relies on that to fill any gap from here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from chat.crypto import Keyring, Shredded, message_aad
from chat.errors import (
    AttachmentNotFound,
    BadSequence,
    ConversationNotFound,
    NotAllowed,
    PatientNotFound,
)
from wadud import loops, outbox
from wadud.errors import NotFound
from wadud.principal import Principal, Role
from wadud.rows import from_row

Event = dict[str, Any]
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


# -- conversations ---------------------------------------------------------------


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


# -- events ----------------------------------------------------------------------


@dataclass(frozen=True)
class Appended:
    seq: int
    at: dt.datetime
    duplicate: bool


async def check_target(conn: Conn, acc: Access, who: Principal, kind: str, target_seq: int) -> None:
    """An edit or delete must name an earlier message: its sender may edit
    or delete it; writing clinic staff may delete it (moderation)."""
    row = await conn.fetchrow(
        "SELECT kind, sender_id FROM chat_events WHERE conversation_id = $1 AND seq = $2",
        acc.conversation_id,
        target_seq,
    )
    if row is None or row["kind"] != "message":
        raise BadSequence(f"seq {target_seq} is not a message of this conversation")
    if row["sender_id"] != who.user_id and not (kind == "delete" and acc.role == "clinic_staff"):
        raise NotAllowed(f"only its sender may {kind} message {target_seq}")


async def attachment_meta(
    conn: Conn, acc: Access, who: Principal, attachment_id: UUID
) -> dict[str, Any]:
    row = await conn.fetchrow(
        """SELECT id, content_type, size_bytes FROM chat_attachments
           WHERE id = $1 AND conversation_id = $2 AND uploader_id = $3""",
        attachment_id,
        acc.conversation_id,
        who.user_id,
    )
    if row is None:
        raise AttachmentNotFound("no such attachment of yours in this conversation")
    return {"id": str(row["id"]), "content_type": row["content_type"], "size": row["size_bytes"]}


@dataclass(frozen=True)
class _Item:
    conversation_id: UUID
    sender: UUID
    client_id: str
    kind: str
    target_seq: int | None
    key_id: str | None
    nonce: bytes | None
    body: bytes | None
    attachment_id: UUID | None


_APPEND_ONE = (
    "SELECT seq, created_at, duplicate FROM chat_append($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
# Many appends in one statement (one transaction, one WAL flush). Rows are
# processed in array order; the caller sorts by conversation so two batches
# on different nodes take the conversations' row locks in the same order and
# cannot deadlock.
_APPEND_MANY = """
    SELECT x.i, r.seq, r.created_at, r.duplicate
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                $7::bytea[], $8::bytea[], $9::uuid[])
         WITH ORDINALITY AS x(c, s, cl, k, t, kid, n, b, a, i)
    CROSS JOIN LATERAL chat_append(x.c, x.s, x.cl, x.k, x.t, x.kid, x.n, x.b, x.a) r
    ORDER BY x.i
"""


class Appender:
    """Group commit for chat: appends that arrive while others are being
    committed wait and go together in one statement, so a busy node pays one
    round trip and one WAL flush per batch instead of per message; an idle
    node commits a lone message at once. Conversations are split over
    ``lanes`` by id, one batch in flight per lane, so concurrent batches of a
    node never wait for each other's row locks. A batch that fails is retried
    item by item, so one bad append fails alone."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 200, lanes: int = 8) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self._lanes: list[list[tuple[_Item, asyncio.Future[Appended]]]] = [[] for _ in range(lanes)]
        self._busy = [False] * lanes
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0

    async def append(self, item: _Item) -> Appended:
        fut: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        lane = item.conversation_id.int % len(self._lanes)
        self._lanes[lane].append((item, fut))
        if not self._busy[lane]:
            self._busy[lane] = True
            task = asyncio.create_task(self._drain(lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def _drain(self, lane: int) -> None:
        queue = self._lanes[lane]
        try:
            # One connection for as long as the lane is busy: the pool resets
            # a connection on every release, a round trip per batch otherwise.
            async with self.pool.acquire() as conn:
                await self._drain_on(conn, queue)
        except BaseException as exc:
            for _, fut in queue:
                if not fut.done():
                    fut.set_exception(exc)
            queue.clear()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._busy[lane] = False
            if queue:  # arrived after the last look, before busy was cleared
                self._busy[lane] = True
                task = asyncio.create_task(self._drain(lane))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _drain_on(
        self, conn: asyncpg.Connection, queue: list[tuple[_Item, asyncio.Future[Appended]]]
    ) -> None:
        while queue:
            batch = queue[: self.max_batch]
            del queue[: self.max_batch]
            try:
                results = await self._many(conn, [it for it, _ in batch])
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                if conn.is_closed():
                    raise
                for it, fut in batch:
                    await loops.settle(fut, functools.partial(self._one, conn, it))
                continue
            for (_, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)

    async def _one(self, conn: asyncpg.Connection, it: _Item) -> Appended:
        row = await conn.fetchrow(
            _APPEND_ONE,
            it.conversation_id,
            it.sender,
            it.client_id,
            it.kind,
            it.target_seq,
            it.key_id,
            it.nonce,
            it.body,
            it.attachment_id,
        )
        assert row is not None
        outbox.written(conn)  # chat_append wrote the outbox row
        return Appended(row["seq"], row["created_at"], row["duplicate"])

    async def _many(self, conn: asyncpg.Connection, items: list[_Item]) -> list[Appended]:
        if len(items) == 1:
            return [await self._one(conn, items[0])]
        self.batches += 1
        order = sorted(range(len(items)), key=lambda i: items[i].conversation_id.bytes)
        ordered = [items[i] for i in order]
        rows = await conn.fetch(
            _APPEND_MANY,
            [it.conversation_id for it in ordered],
            [it.sender for it in ordered],
            [it.client_id for it in ordered],
            [it.kind for it in ordered],
            [it.target_seq for it in ordered],
            [it.key_id for it in ordered],
            [it.nonce for it in ordered],
            [it.body for it in ordered],
            [it.attachment_id for it in ordered],
        )
        outbox.written(conn)
        out: list[Appended | None] = [None] * len(items)
        for row in rows:
            out[order[row["i"] - 1]] = Appended(row["seq"], row["created_at"], row["duplicate"])
        assert all(r is not None for r in out)
        return out  # type: ignore[return-value]


async def append(
    appender: Appender,
    keyring: Keyring,
    acc: Access,
    sender: UUID,
    *,
    client_id: str,
    kind: str,
    body: bytes | None,
    target_seq: int | None = None,
    attachment_id: UUID | None = None,
) -> Appended:
    """Commit one event (and its outbox row) and return its sequence; a
    repeated ``client_id`` from the same sender returns the first result."""
    sealed = None
    if body is not None:
        sealed = await keyring.seal_for(
            appender.pool, acc.patient_id, body, message_aad(acc.conversation_id)
        )
    return await appender.append(
        _Item(
            acc.conversation_id,
            sender,
            client_id,
            kind,
            target_seq,
            sealed.key_id if sealed else None,
            sealed.nonce if sealed else None,
            sealed.data if sealed else None,
            attachment_id,
        )
    )


def event_of(
    conversation_id: UUID,
    *,
    seq: int,
    kind: str,
    sender_id: UUID,
    client_id: str,
    body: str | None,
    target_seq: int | None,
    attachment: dict[str, Any] | None,
    at: dt.datetime,
) -> Event:
    """An event as clients receive it (and as the bus carries it)."""
    return {
        "conversation_id": str(conversation_id),
        "seq": seq,
        "kind": kind,
        "sender_id": str(sender_id),
        "client_id": client_id,
        "body": body,
        "target_seq": target_seq,
        "attachment": attachment,
        "at": at.isoformat(),
    }


_EVENTS = """
    SELECT e.seq, e.kind, e.sender_id, e.client_id, e.target_seq, e.key_id, e.nonce, e.body,
           e.created_at, a.id AS att_id, a.content_type AS att_type, a.size_bytes AS att_size
    FROM chat_events e LEFT JOIN chat_attachments a ON a.id = e.attachment_id
"""


def _events(rows: list[asyncpg.Record], conversation_id: UUID, keyring: Keyring) -> list[Event]:
    aad = message_aad(conversation_id)
    out = []
    for r in rows:
        body = None
        if r["body"] is not None:
            try:
                body = keyring.open(r["key_id"], r["nonce"], r["body"], aad).decode("utf-8")
            except Shredded:
                body = None  # the patient was erased while this was being read
        att = None
        if r["att_id"] is not None:
            att = {"id": str(r["att_id"]), "content_type": r["att_type"], "size": r["att_size"]}
        out.append(
            event_of(
                conversation_id,
                seq=r["seq"],
                kind=r["kind"],
                sender_id=r["sender_id"],
                client_id=r["client_id"],
                body=body,
                target_seq=r["target_seq"],
                attachment=att,
                at=r["created_at"],
            )
        )
    return out


async def events_after(
    conn: Conn,
    keyring: Keyring,
    conversation_id: UUID,
    after: int,
    *,
    upto: int | None = None,
    limit: int = 500,
) -> list[Event]:
    """Events with ``after < seq <= upto``, oldest first, at most ``limit``."""
    rows = await conn.fetch(
        _EVENTS
        + """ WHERE e.conversation_id = $1 AND e.seq > $2 AND ($3::bigint IS NULL OR e.seq <= $3)
              ORDER BY e.seq LIMIT $4""",
        conversation_id,
        after,
        upto,
        limit,
    )
    await keyring.load(conn, {r["key_id"] for r in rows if r["key_id"]})
    return _events(rows, conversation_id, keyring)


async def events_before(
    conn: Conn, keyring: Keyring, conversation_id: UUID, before: int | None, *, limit: int
) -> list[Event]:
    """Events with ``seq < before`` (all when None), newest first: history
    paging backwards."""
    rows = await conn.fetch(
        _EVENTS
        + """ WHERE e.conversation_id = $1 AND ($2::bigint IS NULL OR e.seq < $2)
              ORDER BY e.seq DESC LIMIT $3""",
        conversation_id,
        before,
        limit,
    )
    await keyring.load(conn, {r["key_id"] for r in rows if r["key_id"]})
    return _events(rows, conversation_id, keyring)


async def last_seqs(conn: Conn, ids: list[UUID]) -> dict[UUID, int]:
    rows = await conn.fetch(
        "SELECT id, last_seq FROM chat_conversations WHERE id = ANY($1::uuid[])", ids
    )
    return {r["id"]: r["last_seq"] for r in rows}


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


# -- attachments -----------------------------------------------------------------


async def insert_attachment(
    conn: Conn,
    acc: Access,
    who: Principal,
    *,
    attachment_id: UUID,
    content_type: str,
    size: int,
    sha256: str,
    storage_key: str,
    key_id: str,
    nonce: bytes,
) -> dict[str, Any]:
    row = await conn.fetchrow(
        """INSERT INTO chat_attachments (id, conversation_id, clinic_id, uploader_id,
               content_type, size_bytes, sha256, storage_key, key_id, nonce)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           RETURNING id, conversation_id, content_type, size_bytes, sha256, created_at""",
        attachment_id,
        acc.conversation_id,
        acc.clinic_id,
        who.user_id,
        content_type,
        size,
        sha256,
        storage_key,
        key_id,
        nonce,
    )
    assert row is not None
    return dict(row)


async def attachment_row(conn: Conn, attachment_id: UUID) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM chat_attachments WHERE id = $1", attachment_id)
    if row is None:
        raise AttachmentNotFound("no such attachment")
    return row
