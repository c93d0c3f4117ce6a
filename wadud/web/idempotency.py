"""``Idempotency-Key`` on every state-changing request.

A client that sends ``Idempotency-Key: K`` with a POST (or PUT, PATCH, DELETE)
can retry it safely: the first request with K for that client and endpoint
runs; every retry gets the first answer back, byte for byte, with
``Idempotent-Replayed: true``. A retry with the same key but a different body
is a client bug and gets 422; a retry while the first is still running gets
409. Answers of 5xx are not kept, so a request that failed on our side can be
retried for real.

The row is claimed before the handler runs (``INSERT ... ON CONFLICT DO
NOTHING``), so two concurrent requests with one key cannot both run. A claim
left by a crashed process is taken over after ``STALE_AFTER`` seconds.

Sign-in (everything under ``/api/v1/auth/``: login, refresh, anonymous,
register, logout) ignores the header: each of those calls must run for real
(a refresh token presented twice is a theft signal that revokes the session,
which a replay would hide), and their answers are tokens, which must not sit
in this table. The same holds for any route declared with ``replay=False``
(a booking's fresh manage link, the demo's join links). A caller without a
token owns its keys together with its client address (as an HMAC under the
secret key, so the table holds no addresses), so nobody else can replay its
answers.
"""

from __future__ import annotations

import hashlib
import hmac

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler

from wadud.errors import BadRequest, Conflict, Unprocessable
from wadud.state import keys
from wadud.web import ratelimit

HEADER = "Idempotency-Key"
METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
STALE_AFTER = 120.0
KEEP_DAYS = 2
#: Sign-in: never kept, never replayed (see the module doc).
NEVER_REPLAYED = "/api/v1/auth/"
#: Set on a route's handler whose answers hold secrets (``replay=False`` in
#: wadud.web.api): like sign-in, never kept, never replayed.
NO_REPLAY = "wadud_no_replay"


class KeyReused(Unprocessable):
    code = "idempotency-key-reused"
    title = "Idempotency key reused with a different request"


class KeyInFlight(Conflict):
    code = "idempotency-key-in-flight"
    title = "A request with this idempotency key is still being processed"


def _owner(request: web.Request) -> str:
    principal = request.get(keys.PRINCIPAL)
    if principal is not None:
        return f"user:{principal.user_id}"
    secret = request.app[keys.SETTINGS].secret_key.encode()
    address = ratelimit.client_address(request).encode()
    return "address:" + hmac.new(secret, address, hashlib.sha256).hexdigest()[:32]


@web.middleware
async def idempotency(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.headers.get(HEADER)
    if (
        key is None
        or request.method not in METHODS
        or request.path.startswith(NEVER_REPLAYED)
        or getattr(request.match_info.handler, NO_REPLAY, False)
    ):
        return await handler(request)
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise BadRequest(f"{HEADER} must be 1 to 255 printable characters")
    body = await request.read()
    digest = hashlib.sha256(
        b"\0".join([request.method.encode(), request.path_qs.encode(), body])
    ).digest()
    owner = _owner(request)
    pool = request.app[keys.DB]
    ident = (owner, request.method, request.path, key)

    claimed = await pool.fetchval(
        """INSERT INTO idempotency_keys (owner, method, path, key, request_hash)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (owner, method, path, key) DO UPDATE
               SET request_hash = EXCLUDED.request_hash, created_at = now()
               WHERE idempotency_keys.status IS NULL
                 AND idempotency_keys.request_hash = EXCLUDED.request_hash
                 AND idempotency_keys.created_at < now() - make_interval(secs => $6)
           RETURNING true""",
        *ident,
        digest,
        STALE_AFTER,
    )
    if not claimed:
        row = await pool.fetchrow(
            """SELECT request_hash, status, content_type, body FROM idempotency_keys
               WHERE owner = $1 AND method = $2 AND path = $3 AND key = $4""",
            *ident,
        )
        if row is None:  # pruned between the two statements; vanishingly rare
            raise KeyInFlight("retry the request")
        if bytes(row["request_hash"]) != digest:
            raise KeyReused(f"{HEADER} {key!r} was first used with a different request")
        if row["status"] is None:
            raise KeyInFlight(f"{HEADER} {key!r} is still being processed; retry shortly")
        resp = web.Response(status=row["status"], body=row["body"])
        if row["content_type"]:
            resp.headers["Content-Type"] = row["content_type"]
        resp.headers["Idempotent-Replayed"] = "true"
        return resp

    # The handler's own errors arrive here as problem responses (an inner
    # ``problems`` middleware), so a 4xx answer is kept like any other.
    try:
        response = await handler(request)
    except BaseException:
        await pool.execute(
            """DELETE FROM idempotency_keys
               WHERE owner = $1 AND method = $2 AND path = $3 AND key = $4""",
            *ident,
        )
        raise
    if response.status >= 500 or not isinstance(response, web.Response):
        await pool.execute(
            """DELETE FROM idempotency_keys
               WHERE owner = $1 AND method = $2 AND path = $3 AND key = $4""",
            *ident,
        )
        return response
    await pool.execute(
        """UPDATE idempotency_keys SET status = $5, content_type = $6, body = $7,
                  completed_at = now()
           WHERE owner = $1 AND method = $2 AND path = $3 AND key = $4""",
        *ident,
        response.status,
        response.headers.get("Content-Type"),
        response.body if isinstance(response.body, bytes) else b"",
    )
    return response


async def prune(pool: asyncpg.Pool) -> None:
    """Forget keys older than ``KEEP_DAYS``."""
    await pool.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(days => $1)",
        KEEP_DAYS,
    )
