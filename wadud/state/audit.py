"""Writing the audit trail: one INSERT per audited action.

The table, its hash chain and its append-only rules are in migration 0009;
reading, verifying and the endpoints are :mod:`privacy.audit` (which
re-exports :func:`record`). The writer lives in the ground because the
ground's own sign-in flow (:mod:`wadud.web.accounts`) is audited too.

``record(conn, actor=..., action=..., subject=..., clinic=..., object=..., detail=...)``:

* ``conn``: a connection (inside the audited action's transaction when the
  action changes something, so the row commits with it) or the pool (a read:
  the row is written in a transaction of its own before the data goes out).
* ``actor``: the :class:`Principal` acting, or a user id with ``role=``, or
  None (an unknown account's failed sign-in).
* ``action``: a dotted slug (:data:`ACTION`), e.g. ``booking.read``.
* ``subject``: the patient whose data this is, or None.
* ``clinic``: the tenant the data belongs to (staff see their clinic's rows).
* ``object``: what was touched, ``kind/id`` (``booking/<uuid>``).
* ``detail``: a small JSON object of ids and codes. Never plaintext personal
  data (names, emails, phone numbers, message text): it is hashed into the
  chain and can never be erased.

A row is written in the caller's transaction: put it last, just before
commit, since it holds the chain's lock from then to the commit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from wadud.principal import Principal

__all__ = ["ACTION", "TABLE", "AuditEntry", "actor_of", "record", "record_about", "record_many"]

#: The audit table (migration 0009).
TABLE = "audit_log"
#: What an action name may be.
ACTION = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_OBJECT = re.compile(r"^([a-z_]{1,32}/[A-Za-z0-9_.:-]{1,128})?$")

_INSERT = f"""INSERT INTO {TABLE}
    (actor_id, actor_role, action, clinic_id, object, detail, subject_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7)"""
# Several rows in one statement (a staff list of many patients' bookings).
_INSERT_MANY = f"""INSERT INTO {TABLE}
    (actor_id, actor_role, action, clinic_id, object, detail, subject_id)
    SELECT $1, $2, $3, c, o, $4, s
    FROM unnest($5::uuid[], $6::text[], $7::uuid[]) AS t(c, o, s)"""


@dataclass(frozen=True)
class AuditEntry:
    """One row of a :func:`record_many` call: what was touched, whose, which clinic's."""

    object: str
    subject: UUID | None = None
    clinic: UUID | None = None


def actor_of(actor: Principal | UUID | None, role: str | None) -> tuple[UUID | None, str]:
    if isinstance(actor, Principal):
        return actor.user_id, role or actor.role.value
    return actor, role or ("anonymous" if actor is None else "system")


def _detail(detail: Mapping[str, Any] | None) -> str:
    # Sorted and compact, so equal details read the same; the chain hashes
    # the text as stored, so this need not be canonical to verify.
    return json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":"), default=str)


def _check(action: str, objects: Sequence[str]) -> None:
    if not ACTION.match(action):
        raise ValueError(f"audit action {action!r} is not a dotted slug")
    for obj in objects:
        if not _OBJECT.match(obj):
            raise ValueError(f"audit object {obj!r} is not kind/id")


async def record(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    actor: Principal | UUID | None,
    action: str,
    subject: UUID | None = None,
    clinic: UUID | None = None,
    object: str = "",
    detail: Mapping[str, Any] | None = None,
    role: str | None = None,
) -> None:
    """Append one row to the audit trail (one INSERT; the chain is the trigger's)."""
    _check(action, [object])
    actor_id, actor_role = actor_of(actor, role)
    await conn.execute(
        _INSERT, actor_id, actor_role, action, clinic, object, _detail(detail), subject
    )


async def record_about(
    conn: asyncpg.Connection | asyncpg.Pool,
    row: Mapping[str, Any],
    kind: str,
    *,
    actor: Principal | UUID | None,
    action: str,
    detail: Mapping[str, Any] | None = None,
    part_id: UUID | None = None,
) -> None:
    """:func:`record` about one row that names its patient and its clinic (a
    booking, a recording, a payment): they are the subject and the clinic,
    ``kind/id`` the object, where the id is the row's own or, for something
    of the row's (a payment's proof), ``part_id``."""
    await record(
        conn,
        actor=actor,
        action=action,
        subject=row["patient_id"],
        clinic=row["clinic_id"],
        object=f"{kind}/{row['id'] if part_id is None else part_id}",
        detail=detail,
    )


async def record_many(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    actor: Principal | UUID | None,
    action: str,
    entries: Sequence[AuditEntry],
    detail: Mapping[str, Any] | None = None,
    role: str | None = None,
) -> None:
    """Append one row per entry, in one INSERT (nothing when ``entries`` is empty)."""
    if not entries:
        return
    _check(action, [e.object for e in entries])
    actor_id, actor_role = actor_of(actor, role)
    await conn.execute(
        _INSERT_MANY,
        actor_id,
        actor_role,
        action,
        _detail(detail),
        [e.clinic for e in entries],
        [e.object for e in entries],
        [e.subject for e in entries],
    )
