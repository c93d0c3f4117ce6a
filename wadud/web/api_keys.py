"""API keys: how a clinic's server or a load tester acts from outside.

A key is an id (``wk_`` and 16 hex digits, shown in lists and logs) and a
secret (``wks_`` and 43 characters, shown once, when the key is made). The
caller presents both as HTTP Basic credentials (RFC 7617): the id as the
user name, the secret as the password. Only the secret's SHA-256 is stored
(migration 0025): it is 256 random bits, which no guessing reaches, so a slow
password hash would add cost to every mint and no strength.

Each key has one :class:`Scope`:

* ``load``: the deployment's load testers (``wadud load``). Such a key mints
  tokens only for rooms under :data:`LOAD_ROOM_PREFIX`, which nothing else
  may mint, holding no patient data and no booking.
* ``clinic``: a clinic's own server, which mints its visits' join links.
  Its rooms are the clinic's own namespace.

Making and revoking a key are audited (``api_key.create``,
``api_key.revoke``); a key's use is noted in ``last_used_at``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from uuid import UUID

import asyncpg
from aiohttp import web

from wadud.errors import BadRequest, NotFound, Unauthorized
from wadud.state import audit

__all__ = [
    "API_KEY",
    "KEY_ID",
    "LOAD_ROOM_PREFIX",
    "ApiKey",
    "InvalidApiKey",
    "NewKey",
    "Scope",
    "authenticate",
    "basic_credentials",
    "create_key",
    "list_keys",
    "revoke_key",
]

#: Rooms a ``load`` key mints, and only it.
LOAD_ROOM_PREFIX = "load-"
#: What a key id looks like (the table's own check says the same).
KEY_ID = re.compile(r"^wk_[0-9a-f]{16}$")
_SECRET_PREFIX = "wks_"


class Scope(enum.StrEnum):
    LOAD = "load"
    CLINIC = "clinic"


class InvalidApiKey(Unauthorized):
    code = "invalid-api-key"
    title = "Invalid API key or secret"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="wadud api keys", charset="UTF-8"'}


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scope: Scope
    clinic_id: UUID | None
    created_at: dt.datetime
    last_used_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None


#: The key a request came with (set by wadud.web.http.authenticate).
API_KEY: web.RequestKey[ApiKey] = web.RequestKey("api_key", ApiKey)


@dataclass(frozen=True)
class NewKey:
    """A key just made: the only time its secret is known."""

    key: ApiKey
    secret: str


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        scope=Scope(row["scope"]),
        clinic_id=row["clinic_id"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


_COLUMNS = "id, name, scope, clinic_id, created_at, last_used_at, revoked_at"


async def _audited(conn: asyncpg.Connection, action: str, key: ApiKey) -> None:
    # By the system: keys are made and revoked on the server's command line.
    await audit.record(
        conn,
        actor=None,
        role="system",
        action=action,
        clinic=key.clinic_id,
        object=f"api_key/{key.id}",
        detail={"scope": key.scope.value},
    )


async def create_key(
    conn: asyncpg.Connection, *, name: str, scope: Scope, clinic_id: UUID | None = None
) -> NewKey:
    """Make a key (audited as ``api_key.create``). A clinic key needs its clinic."""
    name = name.strip()
    if not 1 <= len(name) <= 100 or not name.isprintable():
        raise BadRequest("a key's name is 1 to 100 printable characters")
    if (scope is Scope.CLINIC) != (clinic_id is not None):
        raise BadRequest("a clinic key needs --clinic-id, and only a clinic key has one")
    secret = _SECRET_PREFIX + secrets.token_urlsafe(32)
    async with conn.transaction():
        if clinic_id is not None and not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM clinics WHERE id = $1)", clinic_id
        ):
            raise NotFound(f"no clinic {clinic_id}")
        row = await conn.fetchrow(
            f"""INSERT INTO api_keys (id, name, scope, clinic_id, secret_hash)
                VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}""",
            "wk_" + secrets.token_hex(8),
            name,
            scope.value,
            clinic_id,
            _hash(secret),
        )
        assert row is not None
        key = _key(row)
        await _audited(conn, "api_key.create", key)
    return NewKey(key, secret)


async def list_keys(conn: asyncpg.Connection | asyncpg.Pool) -> list[ApiKey]:
    """Every key, revoked ones too, newest first."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at DESC, id")
    return [_key(r) for r in rows]


async def revoke_key(conn: asyncpg.Connection, key_id: str) -> ApiKey:
    """Revoke a key at once: its next request is refused (audited as
    ``api_key.revoke``). Revoking a revoked key changes nothing."""
    if not KEY_ID.match(key_id):
        raise BadRequest("a key id is wk_ and 16 hex digits")
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
                WHERE id = $1 RETURNING {_COLUMNS}""",
            key_id,
        )
        if row is None:
            raise NotFound(f"no key {key_id}")
        key = _key(row)
        await _audited(conn, "api_key.revoke", key)
    return key


def basic_credentials(token: str) -> tuple[str, str]:
    """The key id and secret of an ``Authorization: Basic`` value's token."""
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidApiKey("Basic credentials are base64 of KEY_ID:SECRET") from None
    key_id, sep, secret = decoded.partition(":")
    if not sep or not KEY_ID.match(key_id) or not secret:
        raise InvalidApiKey("Basic credentials are base64 of KEY_ID:SECRET")
    return key_id, secret


async def authenticate(pool: asyncpg.Pool, key_id: str, secret: str) -> ApiKey:
    """The live key ``key_id`` if ``secret`` is its own; else InvalidApiKey,
    the same for an unknown key, a wrong secret and a revoked key."""
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS}, secret_hash FROM api_keys WHERE id = $1 AND revoked_at IS NULL",
        key_id,
    )
    # Compared whether or not the key exists, in constant time.
    stored = row["secret_hash"] if row is not None else b"\0" * 32
    if not hmac.compare_digest(stored, _hash(secret)) or row is None:
        raise InvalidApiKey()
    # Noted at most once a minute: a load run mints thousands of tokens.
    await pool.execute(
        """UPDATE api_keys SET last_used_at = now() WHERE id = $1
           AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')""",
        key_id,
    )
    return _key(row)
