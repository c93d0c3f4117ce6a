"""Accounts and sessions over HTTP: register, log in, anonymous patient
sessions and their upgrade, token refresh, logout, and the admin's user
management. The token mechanics live in :mod:`wadud.auth`.

Sign-in is rate limited (:mod:`wadud.ratelimit`, docs/security.md): guesses
per account and per client address with growing delays, registrations and
anonymous sessions per client address. Its answers hold tokens, so the
idempotency layer never keeps or replays them (:mod:`wadud.idempotency`)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated
from uuid import UUID

import asyncpg
from pydantic import StringConstraints

from wadud import auth, ratelimit
from wadud.api import ApiModel, Call, Principal, Role, Routes
from wadud.config import Settings
from wadud.errors import Conflict, Forbidden, NotFound, Unauthorized, Unprocessable

routes = Routes("auth", "Accounts, sessions and tokens.")

Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    ),
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=256)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]


class EmailTaken(Conflict):
    code = "email-taken"
    title = "An account with this email exists"


class BadCredentials(Unauthorized):
    code = "bad-credentials"
    title = "Wrong email or password"


class Register(ApiModel):
    email: Email
    password: Password
    display_name: Name = ""


class Login(ApiModel):
    email: Email
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class Anonymous(ApiModel):
    display_name: Name = ""


class Refresh(ApiModel):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Tokens(ApiModel):
    access_token: str
    refresh_token: str
    token_type: str = "Bearer"
    expires_in: int
    user_id: UUID
    role: Role


class CreateUser(ApiModel):
    email: Email
    password: Password
    role: Role
    clinic_id: UUID | None = None
    display_name: Name = ""


class User(ApiModel):
    id: UUID
    email: str | None
    role: Role
    clinic_id: UUID | None
    display_name: str
    anonymous: bool
    created_at: dt.datetime


def _tokens(pair: auth.TokenPair) -> Tokens:
    return Tokens(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
        user_id=pair.principal.user_id,
        role=pair.principal.role,
    )


_USER_COLS = "id, email, role, clinic_id, display_name, anonymous, created_at"


async def create_user(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    email: str,
    password: str,
    role: Role,
    clinic_id: UUID | None = None,
    display_name: str = "",
    passwords: auth.Passwords | None = None,
) -> User:
    """Create an account with credentials. Used by the API and by
    ``wadud user add`` (how the first admin comes to be)."""
    if (role in (Role.DOCTOR, Role.CLINIC_STAFF)) != (clinic_id is not None):
        raise Unprocessable("doctors and clinic staff need a clinic_id; other roles take none")
    pw_hash = await auth.hash_password(password, passwords)
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO users (email, password_hash, role, clinic_id, display_name)
                VALUES ($1, $2, $3, $4, $5) RETURNING {_USER_COLS}""",
            email,
            pw_hash,
            role.value,
            clinic_id,
            display_name,
        )
    except asyncpg.UniqueViolationError:
        raise EmailTaken(f"{email} is already registered") from None
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("no such clinic") from None
    assert row is not None
    return User(**dict(row))


@routes.post("/api/v1/auth/register", body=Register, returns=Tokens, status=201, auth="optional")
async def register(call: Call[Register, None]) -> Tokens:
    """Register a patient account.

    Called with an anonymous session's token, the anonymous patient becomes this
    account, keeping its id and so its bookings and conversations."""
    body, settings = call.body, call.settings
    app = call.request.app
    rate = ratelimit.Rate(settings.limits_register_burst, settings.limits_register_per_hour)
    await app[ratelimit.LIMITER].take(
        "register", ratelimit.client_address(call.request), rate, "registrations"
    )
    passwords = app[auth.PASSWORDS]
    async with call.pool.acquire() as conn, conn.transaction():
        me = call.principal
        if me is not None and me.anonymous:
            pw_hash = await auth.hash_password(body.password, passwords)
            try:
                await conn.execute(
                    """UPDATE users SET email = $2, password_hash = $3, anonymous = false,
                              display_name = CASE WHEN $4 = '' THEN display_name ELSE $4 END,
                              upgraded_at = now()
                       WHERE id = $1 AND anonymous""",
                    me.user_id,
                    body.email,
                    pw_hash,
                    body.display_name,
                )
            except asyncpg.UniqueViolationError:
                raise EmailTaken(f"{body.email} is already registered") from None
            assert me.family_id is not None
            await auth.revoke_family(conn, me.family_id, "upgraded to an account")
            return _tokens(await auth.start_session(conn, settings, me.user_id))
        if me is not None:
            raise Conflict("you are signed in already; log out to register another account")
        user = await create_user(
            conn,
            email=body.email,
            password=body.password,
            role=Role.PATIENT,
            display_name=body.display_name,
            passwords=passwords,
        )
        return _tokens(await auth.start_session(conn, settings, user.id))


@routes.post("/api/v1/auth/anonymous", body=Anonymous, returns=Tokens, status=201, auth="public")
async def anonymous(call: Call[Anonymous, None]) -> Tokens:
    """Start an anonymous patient session (search, book and pay without an
    account; register later to keep it). Limited per client address."""
    s = call.settings
    rate = ratelimit.Rate(s.limits_anonymous_burst, s.limits_anonymous_per_hour)
    await call.request.app[ratelimit.LIMITER].take(
        "anonymous", ratelimit.client_address(call.request), rate, "anonymous sessions"
    )
    async with call.pool.acquire() as conn, conn.transaction():
        user_id = await conn.fetchval(
            """INSERT INTO users (role, anonymous, display_name)
               VALUES ('patient', true, $1) RETURNING id""",
            call.body.display_name,
        )
        return _tokens(await auth.start_session(conn, call.settings, user_id))


@routes.post("/api/v1/auth/login", body=Login, returns=Tokens, auth="public")
async def login(call: Call[Login, None]) -> Tokens:
    """Log in with email and password.

    Guesses are limited per account and per client address: after a few
    failures each further attempt must wait, twice as long each time (429
    with Retry-After)."""
    app, settings = call.request.app, call.settings
    limiter = app[ratelimit.LIMITER]
    by_address, by_account = _login_rules(settings)
    # A guess at one account counts before the password is checked, so a
    # burst of concurrent guesses is stopped before it costs a hash (refunded
    # if the request never got to guess: busy, gone). An address counts only
    # its failures: many patients behind one NAT may sign in at once.
    address = await limiter.attempt(
        "login-address",
        ratelimit.client_address(call.request),
        by_address,
        "failed sign-ins",
        count=False,
    )
    account = await limiter.attempt(
        "login-account", call.body.email.lower(), by_account, "failed sign-ins to this account"
    )
    guessed = False
    try:
        row = await call.pool.fetchrow(
            "SELECT id, password_hash, disabled FROM users WHERE lower(email) = lower($1)",
            call.body.email,
        )
        ok = await auth.check_password(
            row["password_hash"] if row else auth.DUMMY_HASH,
            call.body.password,
            app[auth.PASSWORDS],
        )
        guessed = True
    finally:
        if not guessed:
            await limiter.refund(account)
    if row is None or not ok or row["disabled"]:
        await limiter.fail(address, by_address)
        raise BadCredentials()
    await limiter.forget(account)
    async with call.pool.acquire() as conn, conn.transaction():
        return _tokens(await auth.start_session(conn, settings, row["id"]))


def _login_rules(s: Settings) -> tuple[ratelimit.Backoff, ratelimit.Backoff]:
    """(per client address, per account)."""
    delays = (s.limits_login_delay, s.limits_login_delay_max, s.limits_login_forget)
    return (
        ratelimit.Backoff(s.limits_login_address_free, *delays),
        ratelimit.Backoff(s.limits_login_account_free, *delays),
    )


@routes.post("/api/v1/auth/refresh", body=Refresh, returns=Tokens, auth="public")
async def refresh(call: Call[Refresh, None]) -> Tokens:
    """Exchange a refresh token for a new pair; the old one is spent.
    Presenting a spent token again revokes the whole session."""
    async with call.pool.acquire() as conn:
        return _tokens(await auth.rotate(conn, call.settings, call.body.refresh_token))


@routes.post("/api/v1/auth/logout", auth="any")
async def logout(call: Call[None, None]) -> None:
    """End this session: its refresh token and every access token from it stop
    working at once."""
    me = call.user
    if me.family_id is not None:
        async with call.pool.acquire() as conn:
            await auth.revoke_family(conn, me.family_id, "logout")


@routes.get("/api/v1/me", returns=User, auth="any")
async def me(call: Call[None, None]) -> User:
    """The caller's account."""
    row = await call.pool.fetchrow(
        f"SELECT {_USER_COLS} FROM users WHERE id = $1", call.user.user_id
    )
    if row is None:
        raise NotFound("no such user")
    return User(**dict(row))


@routes.post(
    "/api/v1/users", body=CreateUser, returns=User, status=201, auth={Role.ADMIN, Role.CLINIC_STAFF}
)
async def add_user(call: Call[CreateUser, None]) -> User:
    """Create an account: admins create any role; clinic staff create doctors
    and staff of their own clinic."""
    body, me = call.body, call.user
    if me.role == Role.CLINIC_STAFF and (
        body.role not in (Role.DOCTOR, Role.CLINIC_STAFF) or body.clinic_id != me.clinic_id
    ):
        raise Forbidden("clinic staff create doctors and staff of their own clinic only")
    return await create_user(
        call.pool,
        email=body.email,
        password=body.password,
        role=body.role,
        clinic_id=body.clinic_id,
        display_name=body.display_name,
        passwords=call.request.app[auth.PASSWORDS],
    )


def principal_clinic(me: Principal) -> UUID:
    """The clinic a doctor or staff member acts for."""
    if me.clinic_id is None:
        raise Forbidden("this action needs a clinic account")
    return me.clinic_id
