"""Revocation reaches live sockets: the ``auth.revoked`` bus topic.

An access token is checked once when a WebSocket opens; the socket then lives
for hours. So that logout, a reused refresh token, a role or clinic change, a
disabled or deleted account end those sockets too, every such change commits
an outbox event (the triggers of migration 0008) that the outbox relay
publishes on the bus topic :data:`TOPIC`, to every replica. A feature that
holds sockets (chat, calls) subscribes and closes those :meth:`Revocation.covers`.

Pub/sub can lose a message (Redis restarting), so holders also re-check their
sockets' principals now and then with :func:`stale`, one query for all.

Bus message (what :meth:`wadud.messaging.bus.Bus.subscribe` yields as ``data``)::

    {"id": 17, "topic": "auth.revoked", "at": "2025-...",
     "data": {"user_id": "<uuid>", "family_id": "<uuid>" | null, "reason": "logout"}}

``family_id`` null: every session of the user (rights changed, account
disabled or deleted); otherwise only sockets opened with that session's tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from wadud.principal import Principal

__all__ = ["TOPIC", "Revocation", "parse", "stale"]

TOPIC = "auth.revoked"


@dataclass(frozen=True)
class Revocation:
    user_id: UUID
    family_id: UUID | None
    reason: str

    def covers(self, principal: Principal) -> bool:
        """Whether a socket opened as ``principal`` must close."""
        return principal.user_id == self.user_id and (
            self.family_id is None or principal.family_id == self.family_id
        )


def parse(data: Mapping[str, Any]) -> Revocation | None:
    """The revocation in a bus message on :data:`TOPIC` (None if malformed)."""
    payload = data.get("data", data)
    if not isinstance(payload, Mapping):
        return None
    try:
        family = payload.get("family_id")
        return Revocation(
            UUID(str(payload["user_id"])),
            None if family is None else UUID(str(family)),
            str(payload.get("reason") or "revoked"),
        )
    except (KeyError, TypeError, ValueError):
        return None


async def stale(
    conn: asyncpg.Pool | asyncpg.Connection, principals: Iterable[Principal]
) -> set[Principal]:
    """Those of ``principals`` whose tokens no longer hold: the session was
    revoked, the account is disabled or gone, or its role or clinic is not
    the one the token names."""
    wanted = list(set(principals))
    if not wanted:
        return set()
    rows = await conn.fetch(
        """SELECT p.i, u.id IS NULL OR u.disabled
                  OR u.role <> p.role OR u.clinic_id IS DISTINCT FROM p.clinic
                  OR (p.fid IS NOT NULL AND (f.id IS NULL OR f.revoked_at IS NOT NULL)) AS bad
           FROM unnest($1::int[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[])
                AS p(i, uid, role, clinic, fid)
           LEFT JOIN users u ON u.id = p.uid
           LEFT JOIN token_families f ON f.id = p.fid AND f.user_id = p.uid""",
        list(range(len(wanted))),
        [p.user_id for p in wanted],
        [p.role.value for p in wanted],
        [p.clinic_id for p in wanted],
        [p.family_id for p in wanted],
    )
    return {wanted[r["i"]] for r in rows if r["bad"]}
