"""Credentials and tokens.

* Passwords: argon2id (argon2-cffi), hashed off the event loop in a bounded
  pool (:class:`Passwords`).
* Access tokens: short-lived JWTs (HS256) naming the user, role, clinic and the
  refresh-token family they came from; a revoked family makes its access
  tokens fail at once, not at expiry.
* Refresh tokens: opaque random strings stored hashed; each use rotates to a
  new one in the same family, and replaying a used one revokes the family.
* Room tokens: JWTs granting one room with explicit rights for a time window;
  booking's video links are room tokens, and signalling verifies them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import itertools
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import jwt
from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from wadud.config import Settings
from wadud.errors import Unauthorized, Unavailable
from wadud.web import roles
from wadud.web.api import Principal, Role

_T = TypeVar("_T")
ALGORITHM = "HS256"


class InvalidToken(Unauthorized):
    code = "invalid-token"
    title = "Invalid or expired token"


class HashingBusy(Unavailable):
    code = "password-hashing-busy"
    title = "Too many sign-ins at once; retry shortly"


def _lower_priority() -> None:
    # Linux nice values are per thread (and inherited by the lanes argon2
    # starts), so hashing yields the CPU to the event loop and to PostgreSQL.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class Passwords:
    """Argon2id hashing and verifying, at most ``concurrency`` at once.

    Each hash takes ``memory_kib`` (64 MiB by default) and four CPU-hungry
    lanes (RFC 9106 section 4, the low-memory choice, argon2-cffi's default),
    so a burst of sign-ins left unbounded takes memory and CPU from everyone
    else. Hashes run in a thread pool of their own (not the loop's default
    executor, which DNS lookups and file I/O share) at low priority; callers
    beyond ``concurrency`` queue for at most ``wait`` seconds and are then
    refused with 503 and Retry-After.
    """

    def __init__(self, concurrency: int = 2, wait: float = 10.0, memory_kib: int = 65536) -> None:
        self.concurrency = max(1, concurrency)
        self.wait = wait
        self._hasher = PasswordHasher(memory_cost=memory_kib, parallelism=4)
        # What an unknown account's password is checked against, so that a
        # sign-in for one takes as long as a wrong password; made at the
        # first need, in a hashing thread.
        self._dummy: str | None = None
        self._executor: ThreadPoolExecutor | None = None
        # A semaphore belongs to one event loop; tests run many.
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    async def _run(self, fn: Callable[[], _T]) -> _T:
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = self._gates[loop] = asyncio.Semaphore(self.concurrency)
        try:
            # asyncio.timeout, not wait_for (see wadud.messaging.loops.woken): a
            # cancelled sign-in must not go on to hash.
            async with asyncio.timeout(self.wait):
                await gate.acquire()
        except TimeoutError:
            raise HashingBusy("every password hashing slot is busy", retry_after=1) from None
        try:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.concurrency, "argon2", initializer=_lower_priority
                )
            return await loop.run_in_executor(self._executor, fn)
        finally:
            gate.release()

    def _verify(self, stored: str | None, password: str) -> bool:
        if stored is None:
            if self._dummy is None:
                self._dummy = self._hasher.hash(secrets.token_hex(16))
            self._verify(self._dummy, password)
            return False
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    async def hash(self, password: str) -> str:
        return await self._run(functools.partial(self._hasher.hash, password))

    async def check(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored``; None (no such account, or
        one without a password) never matches, after as long a check."""
        return await self._run(functools.partial(self._verify, stored, password))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


#: The pool of code that has no application at hand (``wadud user add``);
#: an application has its own, sized by its settings (:data:`PASSWORDS`).
DEFAULT_PASSWORDS = Passwords()
PASSWORDS = web.AppKey("passwords", Passwords)


def passwords_for(settings: Settings) -> Passwords:
    """The hashing pool ``settings`` ask for."""
    return Passwords(
        settings.auth_hash_concurrency, settings.auth_hash_wait, settings.auth_hash_memory_kib
    )


async def hash_password(password: str, passwords: Passwords | None = None) -> str:
    return await (passwords or DEFAULT_PASSWORDS).hash(password)


async def check_password(
    stored: str | None, password: str, passwords: Passwords | None = None
) -> bool:
    return await (passwords or DEFAULT_PASSWORDS).check(stored, password)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def issue_access_token(
    settings: Settings, principal: Principal, *, now: dt.datetime | None = None
) -> str:
    now = now or _now()
    claims: dict[str, Any] = {
        "iss": settings.auth_issuer,
        "typ": "access",
        "sub": str(principal.user_id),
        "role": principal.role.value,
        "anon": principal.anonymous,
        "iat": now,
        "exp": now + dt.timedelta(seconds=settings.auth_access_ttl),
    }
    if principal.clinic_id is not None:
        claims["clinic"] = str(principal.clinic_id)
    if principal.family_id is not None:
        claims["sid"] = str(principal.family_id)
    return jwt.encode(claims, settings.secret_key, algorithm=ALGORITHM)


class _Verified:
    """Access tokens whose signature and claims were checked, by their exact
    text: a client sends the same token with every request until it expires,
    and PyJWT's decode is a tenth of a booking's server CPU. An entry holds
    the principal and the expiry, which is checked on every use; the key
    includes the signing key and issuer, so a change of either misses. A
    revoked session is a matter for :func:`principal_is_live`, not for this
    cache. Bounded: the oldest entries go first."""

    MAX = 20_000

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, str], tuple[Principal, float]] = {}

    def get(self, key: tuple[str, str, str], now: float) -> Principal | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if now >= hit[1]:
            del self._entries[key]
            return None
        return hit[0]

    def put(self, key: tuple[str, str, str], principal: Principal, expires: float) -> None:
        if len(self._entries) >= self.MAX:
            # Dicts keep insertion order: drop the oldest tenth at once.
            for old in list(itertools.islice(self._entries, self.MAX // 10)):
                del self._entries[old]
        self._entries[key] = (principal, expires)


_verified = _Verified()


#: What each type of token is called when another is given in its place.
_TOKEN_NAMES = {
    "access": "an access token",
    "totp-enrol": "an enrolment token",
    "room": "a room token",
}


def _claims(
    settings: Settings, token: str, typ: str, require: list[str], *, leeway: float = 0
) -> dict[str, Any]:
    """The claims of a token this deployment signed (HS256, our issuer, not
    expired, every claim in ``require`` present) whose ``typ`` is ``typ``.
    PyJWT's errors pass through; a token of another type is InvalidToken."""
    claims: dict[str, Any] = jwt.decode(
        token,
        settings.secret_key,
        algorithms=[ALGORITHM],
        issuer=settings.auth_issuer,
        leeway=leeway,
        options={"require": require},
    )
    if claims["typ"] != typ:
        raise InvalidToken(f"not {_TOKEN_NAMES[typ]}")
    return claims


def decode_access_token(settings: Settings, token: str) -> Principal:
    key = (settings.secret_key, settings.auth_issuer, token)
    now = time.time()
    principal = _verified.get(key, now)
    if principal is None:
        principal, expires = _decode_access_token(settings, token)
        _verified.put(key, principal, expires)
    return principal


def _decode_access_token(settings: Settings, token: str) -> tuple[Principal, float]:
    try:
        claims = _claims(settings, token, "access", ["exp", "sub", "typ", "role"])
        principal = Principal(
            user_id=UUID(claims["sub"]),
            role=Role(claims["role"]),
            clinic_id=UUID(claims["clinic"]) if claims.get("clinic") else None,
            anonymous=bool(claims.get("anon", False)),
            family_id=UUID(claims["sid"]) if claims.get("sid") else None,
        )
        # PyJWT refuses a token once now >= exp (no leeway here); so does
        # the cache. A token with a "nbf" is cached only once it is valid.
        return principal, float(claims["exp"])
    except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
        raise InvalidToken(str(exc) or "invalid token") from exc


async def principal_is_live(conn: asyncpg.Pool | asyncpg.Connection, principal: Principal) -> bool:
    """False when the token's family was revoked (logout, reuse), the user was
    disabled, or the user's role or clinic is no longer the one the token
    names (a demoted doctor's token does not keep a doctor's rights)."""
    row = await conn.fetchrow(
        """SELECT u.disabled, u.role, u.clinic_id, f.revoked_at
           FROM users u LEFT JOIN token_families f ON f.id = $2 AND f.user_id = u.id
           WHERE u.id = $1""",
        principal.user_id,
        principal.family_id,
    )
    if row is None or row["disabled"]:
        return False
    if row["role"] != principal.role.value or row["clinic_id"] != principal.clinic_id:
        return False
    return principal.family_id is None or row["revoked_at"] is None


def _hash_refresh(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    principal: Principal


async def _new_refresh(conn: asyncpg.Connection, settings: Settings, family_id: UUID) -> str:
    token = secrets.token_urlsafe(32)
    await conn.execute(
        """INSERT INTO refresh_tokens (token_hash, family_id, expires_at)
           VALUES ($1, $2, now() + make_interval(secs => $3))""",
        _hash_refresh(token),
        family_id,
        float(settings.auth_refresh_ttl),
    )
    return token


def _principal(row: asyncpg.Record, family_id: UUID) -> Principal:
    return Principal(
        user_id=row["id"],
        role=Role(row["role"]),
        clinic_id=row["clinic_id"],
        anonymous=row["anonymous"],
        family_id=family_id,
    )


async def start_session(conn: asyncpg.Connection, settings: Settings, user_id: UUID) -> TokenPair:
    """A new token family for ``user_id`` (a login)."""
    user = await conn.fetchrow(
        "SELECT id, role, clinic_id, anonymous FROM users WHERE id = $1", user_id
    )
    assert user is not None
    family_id = await conn.fetchval(
        "INSERT INTO token_families (user_id) VALUES ($1) RETURNING id", user_id
    )
    principal = _principal(user, family_id)
    refresh = await _new_refresh(conn, settings, family_id)
    return TokenPair(
        issue_access_token(settings, principal), refresh, settings.auth_access_ttl, principal
    )


class RefreshReused(InvalidToken):
    code = "refresh-token-reused"
    title = "Refresh token reused; the session is revoked"


async def rotate(conn: asyncpg.Connection, settings: Settings, refresh_token: str) -> TokenPair:
    """Exchange a refresh token for a new pair (RFC 6819 section 5.2.2.3,
    rotation). The old token is locked while it is spent; a spent token
    presented again revokes its family (and that revocation is committed even
    though the request fails)."""
    async with conn.transaction():
        pair = await _rotate(conn, settings, refresh_token)
    if pair is None:
        raise RefreshReused("this refresh token was used before; sign in again")
    return pair


async def _rotate(
    conn: asyncpg.Connection, settings: Settings, refresh_token: str
) -> TokenPair | None:
    row = await conn.fetchrow(
        """SELECT t.family_id, t.expires_at, t.used_at, f.revoked_at, f.user_id
           FROM refresh_tokens t JOIN token_families f ON f.id = t.family_id
           WHERE t.token_hash = $1 FOR UPDATE OF t, f""",
        _hash_refresh(refresh_token),
    )
    if row is None:
        raise InvalidToken("unknown refresh token")
    if row["revoked_at"] is not None:
        raise InvalidToken("this session was revoked")
    if row["used_at"] is not None:
        # A rotated-out token came back: someone holds a copy. End the family.
        await revoke_family(conn, row["family_id"], "refresh token reused")
        return None
    if row["expires_at"] <= _now():
        raise InvalidToken("refresh token expired")
    user = await conn.fetchrow(
        "SELECT id, role, clinic_id, anonymous, disabled FROM users WHERE id = $1",
        row["user_id"],
    )
    if user is None or user["disabled"]:
        raise InvalidToken("account disabled")
    await conn.execute(
        "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1",
        _hash_refresh(refresh_token),
    )
    principal = _principal(user, row["family_id"])
    refresh = await _new_refresh(conn, settings, row["family_id"])
    return TokenPair(
        issue_access_token(settings, principal), refresh, settings.auth_access_ttl, principal
    )


async def revoke_family(conn: asyncpg.Connection, family_id: UUID, reason: str) -> None:
    await conn.execute(
        """UPDATE token_families SET revoked_at = now(), revoked_reason = $2
           WHERE id = $1 AND revoked_at IS NULL""",
        family_id,
        reason,
    )


# -- TOTP enrolment tokens ----------------------------------------------------

#: How long a sign-in that must enrol TOTP first has to do it.
ENROLMENT_TTL = 600


def issue_enrolment_token(
    settings: Settings, user_id: UUID, *, now: dt.datetime | None = None
) -> str:
    """A short token that lets a user whose password was right, but who must
    enrol an authenticator first, do that and nothing else."""
    now = now or _now()
    claims = {
        "iss": settings.auth_issuer,
        "typ": "totp-enrol",
        "sub": str(user_id),
        "iat": now,
        "exp": now + dt.timedelta(seconds=ENROLMENT_TTL),
    }
    return jwt.encode(claims, settings.secret_key, algorithm=ALGORITHM)


def decode_enrolment_token(settings: Settings, token: str) -> UUID:
    try:
        claims = _claims(settings, token, "totp-enrol", ["exp", "sub", "typ"])
        return UUID(claims["sub"])
    except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
        raise InvalidToken(str(exc) or "invalid enrolment token") from exc


# -- room tokens --------------------------------------------------------------


@dataclass(frozen=True)
class RoomGrant:
    room: str
    identity: str
    name: str
    role: str  # "doctor", "patient", "staff", ... (display and policy)
    publish: bool = True
    subscribe: bool = True
    admin: bool = False
    #: Where the participant's media should go (a media node region); empty:
    #: the region of the API replica they reach.
    region: str = ""
    #: The region whose own control plane (its ``redis_region_url``) holds
    #: the room, for a visit whose participants are all in that region: it
    #: goes on when the region is cut off from the rest of the deployment.
    #: Empty: the deployment-wide plane (``redis_url``), any region.
    home: str = ""
    #: A booking's video link: the booking id and the slot start (ISO 8601)
    #: the link was issued for. Signalling checks both against the booking
    #: at every join and resume, so a cancelled, completed or rescheduled
    #: booking's links stop working before their token expires.
    booking: str = ""
    slot: str = ""
    #: The sign-in session (token family) the link was issued to: signing out
    #: of it, or any revocation of the account, ends the link and the call.
    sid: str = ""
    #: How the participant is in the call when it is not a browser or app of
    #: theirs: ``phone`` for a caller through the phone bridge. Shown to
    #: everyone in the room (the page draws a phone on the tile).
    device: str = ""
    #: A guest's invite (its id), whose revocation sends them out and
    #: kills the link (signalling.edge.invites).
    invite: str = ""
    #: The guest waits for the patient's agreement (a family member, an
    #: observer) unless the room already has it for their invite.
    approval: bool = False
    #: What the participant may do: :class:`wadud.web.roles.Action` values,
    #: sorted. Left out (None), the role's (:func:`wadud.web.roles.actions_of`,
    #: narrowed by ``publish`` and ``subscribe``, widened by ``admin``).
    #: Either way ``publish``, ``subscribe`` and ``admin`` (who admits: a
    #: host) then say what the actions say.
    actions: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.actions is not None:
            actions = roles.parse_actions(self.actions)
        else:
            actions = roles.actions_of(
                self.role, publish=self.publish, subscribe=self.subscribe, admin=self.admin
            )
        fix = functools.partial(object.__setattr__, self)
        fix("actions", tuple(sorted(a.value for a in actions)))
        fix("publish", bool(actions & roles.PUBLISH))
        fix("subscribe", roles.Action.SUBSCRIBE in actions)
        fix("admin", roles.Action.ADMIT in actions)

    def can(self, action: roles.Action) -> bool:
        return action in (self.actions or ())


#: Characters of an invite link's key (base64url of HMAC-SHA256: 128 bits).
INVITE_KEY_CHARS = 22


def invite_key(settings: Settings, invite_id: UUID) -> str:
    """The key of invite ``invite_id``'s link: an HMAC of its id under the
    server's secret, so no copy of it is kept and any replica checks it."""
    mac = hmac.new(settings.secret_key.encode(), b"room-invite:" + invite_id.bytes, "sha256")
    return base64.urlsafe_b64encode(mac.digest()).decode()[:INVITE_KEY_CHARS]


def invite_key_matches(settings: Settings, invite_id: UUID, key: str) -> bool:
    return hmac.compare_digest(invite_key(settings, invite_id).encode(), key.encode())


def issue_room_token(
    settings: Settings,
    grant: RoomGrant,
    *,
    not_before: dt.datetime,
    expires: dt.datetime,
) -> str:
    claims = {
        "iss": settings.auth_issuer,
        "typ": "room",
        "room": grant.room,
        "sub": grant.identity,
        "name": grant.name,
        "role": grant.role,
        "grants": {"publish": grant.publish, "subscribe": grant.subscribe, "admin": grant.admin},
        "actions": list(grant.actions or ()),
        "nbf": not_before,
        "exp": expires,
    }
    if grant.region:
        claims["region"] = grant.region
    if grant.home:
        claims["home"] = grant.home
    if grant.booking:
        claims["booking"] = {"id": grant.booking, "slot": grant.slot}
    if grant.sid:
        claims["sid"] = grant.sid
    if grant.device:
        claims["device"] = grant.device
    if grant.invite:
        claims["invite"] = {"id": grant.invite, "approval": grant.approval}
    return jwt.encode(claims, settings.secret_key, algorithm=ALGORITHM)


def decode_room_token(settings: Settings, token: str, *, leeway: float = 0) -> RoomGrant:
    try:
        c = _claims(settings, token, "room", ["exp", "nbf", "sub", "room", "typ"], leeway=leeway)
        g = c.get("grants") or {}
        return RoomGrant(
            room=str(c["room"]),
            identity=str(c["sub"]),
            name=str(c.get("name", "")),
            role=str(c.get("role", "")),
            publish=bool(g.get("publish", False)),
            subscribe=bool(g.get("subscribe", False)),
            admin=bool(g.get("admin", False)),
            region=str(c.get("region") or ""),
            home=str(c.get("home") or ""),
            booking=str((c.get("booking") or {}).get("id") or ""),
            slot=str((c.get("booking") or {}).get("slot") or ""),
            sid=str(c.get("sid") or ""),
            device=str(c.get("device") or ""),
            invite=str((c.get("invite") or {}).get("id") or ""),
            approval=bool((c.get("invite") or {}).get("approval", False)),
            actions=None if (a := c.get("actions")) is None else tuple(str(x) for x in a),
        )
    except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
        raise InvalidToken(str(exc) or "invalid room token") from exc
