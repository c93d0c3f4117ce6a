"""Accounts and sessions over HTTP: register, log in, anonymous patient
sessions and their upgrade, token refresh, logout, and the admin's user
management. The token mechanics live in :mod:`wadud.web.auth`.

Sign-in is rate limited (:mod:`wadud.web.ratelimit`, docs/security.md): guesses
per account and per client address with growing delays, registrations and
anonymous sessions per client address. Its answers hold tokens, so the
idempotency layer never keeps or replays them (:mod:`wadud.web.idempotency`).

Staff and admins may sign in with a TOTP code as a second factor
(:mod:`wadud.totp`): required once a user has enrolled, of a clinic's doctors
and staff when the clinic says so, and of admins when ``auth_totp_admins`` is
on. Every sign-in, successful or not, is written to the audit trail
(:mod:`wadud.state.audit`)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from pydantic import StringConstraints

from wadud import totp
from wadud.config import Settings
from wadud.errors import Conflict, Forbidden, NotFound, Unauthorized, Unprocessable
from wadud.state import audit
from wadud.web import auth, ratelimit
from wadud.web.api import ApiModel, Call, Principal, Role, Routes

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


class TotpRequired(Unauthorized):
    """The password was right; this account signs in with a TOTP code too."""

    code = "totp-required"
    title = "A one-time code from the authenticator app is required"


class TotpInvalid(Unauthorized):
    """A wrong, expired or already used TOTP code."""

    code = "totp-invalid"
    title = "Wrong or already used one-time code"


class TotpEnrolmentRequired(Unauthorized):
    """The password was right, but the account must enrol an authenticator
    first. The body's ``enrolment_token`` (valid 10 minutes) opens
    ``/api/v1/auth/totp/enrol`` and ``/confirm``, and nothing else."""

    code = "totp-enrolment-required"
    title = "Enrol an authenticator app to sign in"


class TotpAlreadyEnrolled(Conflict):
    code = "totp-already-enrolled"
    title = "An authenticator is enrolled already"


Code = Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")]
EnrolmentToken = Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class Register(ApiModel):
    email: Email
    password: Password
    display_name: Name = ""


class Login(ApiModel):
    email: Email
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    #: The authenticator app's current code, for accounts that use TOTP.
    totp_code: Code | None = None


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
        row = await call.pool.fetchrow(_LOGIN_ROW, call.body.email)
        ok = await auth.check_password(
            row["password_hash"] if row else None,
            call.body.password,
            app[auth.PASSWORDS],
        )
        guessed = True
    finally:
        if not guessed:
            await limiter.refund(account)
    pool = call.pool
    if row is None or not ok or row["disabled"]:
        await limiter.fail(address, by_address)
        reason = "unknown-account" if row is None else "disabled" if ok else "bad-password"
        await _signin_audit(pool, row, "auth.signin_failed", reason=reason)
        raise BadCredentials()
    second = _needs_totp(settings, row)
    if second and row["totp_confirmed_at"] is None:
        await _signin_audit(pool, row, "auth.signin_failed", reason="totp-enrolment-required")
        raise TotpEnrolmentRequired(
            "this account must enrol an authenticator app: POST /api/v1/auth/totp/enrol"
            " with this enrolment_token, then /api/v1/auth/totp/confirm with a code",
            enrolment_token=auth.issue_enrolment_token(settings, row["id"]),
        )
    if second:
        code = call.body.totp_code
        if code is None:
            await _signin_audit(pool, row, "auth.signin_failed", reason="totp-required")
            raise TotpRequired("send totp_code with the email and password")
        if not await _spend_code(pool, row["id"], row["totp_secret"], code, row["totp_last_step"]):
            await limiter.fail(address, by_address)
            await _signin_audit(pool, row, "auth.signin_failed", reason="totp-invalid")
            raise TotpInvalid()
    await limiter.forget(account)
    async with pool.acquire() as conn, conn.transaction():
        pair = await auth.start_session(conn, settings, row["id"])
        await _signin_audit(conn, row, "auth.signin", totp=second)
        return _tokens(pair)


_LOGIN_ROW = """SELECT u.id, u.password_hash, u.disabled, u.role, u.clinic_id, u.email,
                       u.totp_secret, u.totp_confirmed_at, u.totp_last_step,
                       coalesce(c.require_totp, false) AS clinic_requires_totp
                FROM users u LEFT JOIN clinics c ON c.id = u.clinic_id
                WHERE lower(u.email) = lower($1)"""


def _needs_totp(settings: Settings, row: asyncpg.Record) -> bool:
    """Whether this account signs in with a TOTP code: once enrolled always;
    a clinic's doctors and staff when the clinic requires it; admins when
    ``auth_totp_admins`` is on. Patients never have to."""
    if row["totp_confirmed_at"] is not None:
        return True
    if row["role"] == Role.ADMIN.value:
        return settings.auth_totp_admins
    return row["role"] in (Role.DOCTOR.value, Role.CLINIC_STAFF.value) and bool(
        row["clinic_requires_totp"]
    )


async def _spend_code(
    conn: asyncpg.Connection | asyncpg.Pool,
    user_id: UUID,
    secret: str,
    code: str,
    last_step: int | None,
) -> bool:
    """Whether ``code`` is valid now and not used before; it is spent if so
    (two racing sign-ins with one code: one wins)."""
    step = totp.matching_step(secret, code, time.time(), last_step)
    if step is None:
        return False
    spent = await conn.fetchval(
        """UPDATE users SET totp_last_step = $2
           WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2) RETURNING id""",
        user_id,
        step,
    )
    return spent is not None


async def _signin_audit(
    conn: asyncpg.Connection | asyncpg.Pool,
    row: asyncpg.Record | None,
    action: str,
    **detail: Any,
) -> None:
    """A sign-in's audit row: the account by id (an unknown one by nothing:
    the email typed is personal data and never goes into the chain)."""
    if row is None:
        await audit.record(conn, actor=None, role="anonymous", action=action, detail=detail)
        return
    await audit.record(
        conn,
        actor=row["id"],
        role=row["role"],
        action=action,
        subject=row["id"] if row["role"] == Role.PATIENT.value else None,
        clinic=row["clinic_id"],
        object=f"user/{row['id']}",
        detail=detail,
    )


def _login_rules(s: Settings) -> tuple[ratelimit.Backoff, ratelimit.Backoff]:
    """(per client address, per account)."""
    delays = (s.limits_login_delay, s.limits_login_delay_max, s.limits_login_forget)
    return ratelimit.guesses_by_address(s), ratelimit.Backoff(s.limits_login_account_free, *delays)


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


# -- TOTP enrolment -------------------------------------------------------------------


class EnrolIn(ApiModel):
    #: From a sign-in refused with ``totp-enrolment-required``; omit when
    #: calling with a bearer token (enrolling of one's own accord).
    enrolment_token: EnrolmentToken | None = None


class Enrolment(ApiModel):
    #: Base32 secret to type into an authenticator app, or ...
    secret: str
    #: ... the ``otpauth://`` URI to show as a QR code.
    otpauth_uri: str


class ConfirmIn(ApiModel):
    code: Code
    enrolment_token: EnrolmentToken | None = None


class Confirmed(ApiModel):
    enrolled: bool = True
    #: A session, when the enrolment came from a sign-in (enrolment_token).
    tokens: Tokens | None = None


class ClinicTotp(ApiModel):
    #: Doctors and staff of the clinic sign in with a TOTP code.
    required: bool


async def _enrolling(call: Call[Any, None], token: str | None) -> UUID:
    """Whose enrolment this is: the enrolment token's user, or the caller's."""
    if token is not None:
        return auth.decode_enrolment_token(call.settings, token)
    if call.principal is None:
        raise Unauthorized("send a bearer token or the enrolment_token of a sign-in")
    if call.principal.anonymous:
        raise Forbidden("anonymous sessions have no sign-in to protect")
    return call.principal.user_id


@routes.post("/api/v1/auth/totp/enrol", body=EnrolIn, returns=Enrolment, auth="optional",
             replay=False)  # fmt: skip
async def totp_enrol(call: Call[EnrolIn, None]) -> Enrolment:
    """Start enrolling an authenticator app (RFC 6238 TOTP).

    Returns a new secret; it takes effect once confirmed with a code. Asking
    again before confirming replaces the secret."""
    user_id = await _enrolling(call, call.body.enrolment_token)
    secret = totp.new_secret()
    email = await call.pool.fetchval(
        """UPDATE users SET totp_secret = $2, totp_last_step = NULL
           WHERE id = $1 AND totp_confirmed_at IS NULL RETURNING email""",
        user_id,
        secret,
    )
    if email is None:
        raise TotpAlreadyEnrolled("an authenticator is enrolled; an admin can reset it")
    uri = totp.provisioning_uri(secret, email, call.settings.auth_totp_issuer)
    return Enrolment(secret=secret, otpauth_uri=uri)


@routes.post("/api/v1/auth/totp/confirm", body=ConfirmIn, returns=Confirmed, auth="optional",
             replay=False)  # fmt: skip
async def totp_confirm(call: Call[ConfirmIn, None]) -> Confirmed:
    """Confirm an enrolment with the app's current code; from then on every
    sign-in of this account needs a code. With an ``enrolment_token`` the
    answer also holds a session (the sign-in that asked for enrolment)."""
    token = call.body.enrolment_token
    user_id = await _enrolling(call, token)
    async with call.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """SELECT id, role, clinic_id, totp_secret, totp_confirmed_at, totp_last_step
               FROM users WHERE id = $1 FOR UPDATE""",
            user_id,
        )
        if row is None or row["totp_secret"] is None:
            raise Conflict("start with POST /api/v1/auth/totp/enrol")
        if row["totp_confirmed_at"] is not None:
            raise TotpAlreadyEnrolled("this authenticator is confirmed already")
        if not await _spend_code(
            conn, user_id, row["totp_secret"], call.body.code, row["totp_last_step"]
        ):
            raise TotpInvalid()
        await conn.execute("UPDATE users SET totp_confirmed_at = now() WHERE id = $1", user_id)
        await _signin_audit(conn, row, "auth.totp_enrolled")
        if token is None:
            return Confirmed()
        pair = await auth.start_session(conn, call.settings, user_id)
        await _signin_audit(conn, row, "auth.signin", totp=True)
        return Confirmed(tokens=_tokens(pair))


@routes.delete("/api/v1/users/{id:uuid}/totp", auth={Role.ADMIN, Role.CLINIC_STAFF})
async def totp_reset(call: Call[None, None]) -> None:
    """Remove a user's authenticator (a lost phone): admins for anyone,
    clinic staff for their clinic's doctors and staff. The user enrols again
    at their next sign-in if TOTP is required of them."""
    me = call.user
    done = await call.pool.fetchval(
        """UPDATE users SET totp_secret = NULL, totp_confirmed_at = NULL, totp_last_step = NULL
           WHERE id = $1 AND ($2::uuid IS NULL OR clinic_id = $2) RETURNING id""",
        call.path_uuid("id"),
        None if me.role is Role.ADMIN else principal_clinic(me),
    )
    if done is None:
        raise NotFound("no such user")


@routes.put("/api/v1/clinics/{id:uuid}/totp", body=ClinicTotp, returns=ClinicTotp,
            auth={Role.ADMIN, Role.CLINIC_STAFF})  # fmt: skip
async def clinic_totp(call: Call[ClinicTotp, None]) -> ClinicTotp:
    """Require (or stop requiring) a TOTP code at sign-in of the clinic's
    doctors and staff: admins, or the clinic's own staff."""
    me, clinic = call.user, call.path_uuid("id")
    if me.role is Role.CLINIC_STAFF and me.clinic_id != clinic:
        raise NotFound("no such clinic")
    async with call.pool.acquire() as conn, conn.transaction():
        done = await conn.fetchval(
            "UPDATE clinics SET require_totp = $2 WHERE id = $1 RETURNING id",
            clinic,
            call.body.required,
        )
        if done is None:
            raise NotFound("no such clinic")
        if me.role is not Role.ADMIN:  # an admin's request is audited by its route
            await audit.record(
                conn,
                actor=me,
                action="clinic.totp_required",
                clinic=clinic,
                object=f"clinic/{clinic}",
                detail={"required": call.body.required},
            )
    return ClinicTotp(required=call.body.required)


def principal_clinic(me: Principal) -> UUID:
    """The clinic a doctor or staff member acts for."""
    if me.clinic_id is None:
        raise Forbidden("this action needs a clinic account")
    return me.clinic_id
