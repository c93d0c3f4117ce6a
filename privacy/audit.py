"""The tamper-evident audit trail: who read or changed whose data, and when.

Writing
-------
``privacy.audit.record(conn, actor=..., action=..., subject=..., clinic=...,
object=..., detail=...)`` (and ``record_many``, and ``record_about`` for one
row that names its patient and clinic) append rows to the table
:data:`TABLE` (``audit_log``). They are defined in :mod:`wadud.state.audit`, in the
ground, because the ground's sign-in flow is audited too; see there for the
arguments. ``detail`` and every hashed field hold ids and codes only, never
plaintext personal data. :func:`record_access` is ``record_about`` for a read
or change of one patient's record, which is an access only when someone other
than the patient makes it.

The chain
---------
Each row stores ``hash = SHA-256(previous row's hash || content)``, where
``content`` is the row's fields one a line (:func:`content`; the SQL function
``audit_content`` is the same). The database refuses UPDATE, DELETE and
TRUNCATE on the table (triggers, whoever the role), except erasure's one
change: ``subject_id`` set to NULL. ``wadud audit verify`` (:func:`verify`)
recomputes every hash in Python from the stored columns and names the first
row that was altered (its hash no longer matches), removed (a gap in ``seq``)
or inserted out of turn (its successor no longer matches). Removing rows from
the *end* leaves a shorter chain that still verifies, as with any hash chain
that is not anchored outside the database: verify prints the head (seq and
hash) so an operator can keep it elsewhere and compare (docs/privacy.md).

Why a trigger and an advisory lock (concurrency)
------------------------------------------------
The chain needs one order and each row needs its predecessor's hash. The
choices were (a) compute it in the application (a round trip to read the head
under a lock, then the insert: two statements and the lock held across a
network round trip), (b) seal rows later in a background task (no
serialisation in requests, but rows are unprotected until sealed and the
sealer has to UPDATE them, which the table must otherwise refuse), or (c) a
BEFORE INSERT trigger that takes ``pg_advisory_xact_lock``, reads the head
(a fresh snapshot per statement under READ COMMITTED, which every Wadud
transaction uses) and computes the hash. We chose (c): one INSERT per audited
action, nothing else for the application to get wrong, and the chain is in
commit order by construction. Its cost is that the lock is held from the
insert to the end of that transaction, so audited transactions commit one at
a time. Callers therefore write the row as the *last* statement of the
transaction (for a read, in a transaction of its own from the pool), which
keeps the serialised section to the insert plus the commit. Measured here
(``benchmarks/privacy/audit.py``, 16 connections, fsync on): 520 to 660
audited one-row transactions/s against 1,850 to 2,800/s into a plain table;
docs/privacy.md, "Cost and throughput". The booking benchmark's flow (a patient holds and pays)
writes no audit row: a patient acting on their own data is not an access.

Erasure
-------
Rows keep a ``subject_digest`` (hashed) and a ``subject_id`` (not hashed).
Erasing a patient runs :func:`forget_subject`, which sets their rows'
``subject_id`` to NULL: the rows stay in the chain, which still verifies, but
nothing links them to the patient's id any more except the digest of it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from wadud.principal import Principal, Role
from wadud.state.audit import ACTION, TABLE, AuditEntry, record, record_about, record_many

__all__ = [
    "ACTION",
    "GENESIS",
    "TABLE",
    "AuditEntry",
    "AuditVerification",
    "accesses_to",
    "content",
    "forget_subject",
    "record",
    "record_about",
    "record_access",
    "record_many",
    "row_hash",
    "subject_digest",
    "verify",
]

#: The "previous hash" of the first row.
GENESIS = bytes(32)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICRO = dt.timedelta(microseconds=1)

#: Columns of a row as it is listed (API, export).
COLUMNS = (
    "seq, at, actor_id, actor_role, action, clinic_id, object, subject_digest, detail,"
    " hash, subject_id"
)


async def record_access(
    conn: asyncpg.Connection | asyncpg.Pool,
    me: Principal,
    action: str,
    row: Mapping[str, Any],
    kind: str,
    part_id: UUID | None = None,
) -> None:
    """An audit row when a doctor, staff member or admin reads or changes a
    patient's record ``row`` (or its part ``part_id``), as :func:`record_about`
    writes it (docs/privacy.md); a patient's own are not accesses."""
    if me.role is not Role.PATIENT:
        await record_about(conn, row, kind, actor=me, action=action, part_id=part_id)


def subject_digest(subject: UUID) -> str:
    """What the chain holds of a subject's id (the trigger computes the same)."""
    return hashlib.sha256(f"wadud-audit-subject:{subject}".encode()).hexdigest()


def content(row: asyncpg.Record | dict[str, Any]) -> bytes:
    """The bytes a row's hash covers (SQL ``audit_content``): fields one a
    line, ``at`` as whole microseconds since the epoch, detail last."""
    at: dt.datetime = row["at"]
    fields = (
        str(row["seq"]),
        str((at - _EPOCH) // _MICRO),
        str(row["actor_id"] or ""),
        row["actor_role"],
        row["action"],
        str(row["clinic_id"] or ""),
        row["object"],
        row["subject_digest"],
        row["detail"],
    )
    return "\n".join(fields).encode()


def row_hash(previous: bytes, row: asyncpg.Record | dict[str, Any]) -> bytes:
    return hashlib.sha256(previous + content(row)).digest()


@dataclass(frozen=True)
class AuditVerification:
    """What :func:`verify` found."""

    #: Rows checked.
    count: int
    #: The last row's seq and hash (hex): keep them elsewhere to notice a cut tail.
    head_seq: int
    head_hash: str
    #: The first row that fails, and why; None when the chain is intact.
    bad_seq: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


async def _rows(conn: asyncpg.Connection, batch: int) -> AsyncIterator[asyncpg.Record]:
    async for row in conn.cursor(f"SELECT {COLUMNS} FROM {TABLE} ORDER BY seq", prefetch=batch):
        yield row


async def verify(conn: asyncpg.Connection, *, batch: int = 2000) -> AuditVerification:
    """Walk the whole chain in one snapshot and recompute every hash.

    Stops at the first row that does not verify: a gap in ``seq`` (a row
    removed), a hash that does not match the row's content and its
    predecessor (the row altered, or one before it replaced), or a
    ``subject_id`` that is not the one its digest was made from."""
    previous, expected, count = GENESIS, 1, 0
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in _rows(conn, batch):
            seq = row["seq"]
            if seq != expected:
                if seq > expected:
                    what = (
                        f"row {expected} is missing"
                        if seq == expected + 1
                        else f"rows {expected} to {seq - 1} are missing"
                    )
                else:
                    what = f"row {seq} is out of order"
                return AuditVerification(count, expected - 1, previous.hex(), expected, what)
            if row_hash(previous, row) != bytes(row["hash"]):
                return AuditVerification(
                    count,
                    expected - 1,
                    previous.hex(),
                    seq,
                    f"row {seq} was altered: its hash does not match its content"
                    " and the row before it",
                )
            subject = row["subject_id"]
            if subject is not None and subject_digest(subject) != row["subject_digest"]:
                return AuditVerification(
                    count,
                    expected - 1,
                    previous.hex(),
                    seq,
                    f"row {seq} was altered: its subject is not the one it was written with",
                )
            previous, expected, count = bytes(row["hash"]), expected + 1, count + 1
    return AuditVerification(count, expected - 1, previous.hex())


async def forget_subject(conn: asyncpg.Connection | asyncpg.Pool, subject: UUID) -> int:
    """Erasure: unlink every row from ``subject`` (the chain still verifies).
    Returns the number of rows unlinked."""
    done = await conn.execute(
        f"UPDATE {TABLE} SET subject_id = NULL WHERE subject_id = $1", subject
    )
    return int(done.split()[-1])


async def accesses_to(
    conn: asyncpg.Connection | asyncpg.Pool,
    subject: UUID,
    *,
    before: int | None = None,
    limit: int = 1000,
) -> list[asyncpg.Record]:
    """Rows about ``subject``, newest first, with the actor's display name
    (``actor_name``): what a patient sees and what their export holds."""
    return list(
        await conn.fetch(
            f"""SELECT a.seq, a.at, a.actor_id, a.actor_role, a.action, a.clinic_id,
                       a.object, a.detail, coalesce(u.display_name, '') AS actor_name
                FROM {TABLE} a LEFT JOIN users u ON u.id = a.actor_id
                WHERE a.subject_id = $1 AND ($2::bigint IS NULL OR a.seq < $2)
                ORDER BY a.seq DESC LIMIT $3""",
            subject,
            before,
            limit,
        )
    )
