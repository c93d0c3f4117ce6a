"""A patient's data rights over HTTP: ``GET /api/v1/me/export`` and
``POST /api/v1/me/erasure`` (docs/privacy.md, "Export" and "Erasure").

Erasure is confirmed in two steps, so neither a stray click nor a stolen
access token alone erases an account:

1. ``POST /api/v1/me/erasure`` with ``{}``: 202 with a ``confirmation_token``
   (valid ``privacy_erasure_confirm_seconds``, bound to this account and
   session), the phrase to type back, and whether the password is needed.
2. ``POST /api/v1/me/erasure`` with ``confirmation_token``, ``phrase`` and,
   for an account with a password, ``password``: 200 when erased.

The token is an HMAC over (account, session, expiry) with the server's
secret: nothing is stored between the steps.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import time
from typing import Annotated

from aiohttp import web
from pydantic import StringConstraints

from privacy import rights
from wadud.state.storage import storage_of
from wadud.web import auth, ratelimit
from wadud.web.api import ApiModel, Call, Principal, Role, Routes

routes = Routes("privacy", "A patient's data rights: export and erasure.")

PHRASE = "erase my data"


class ErasureIn(ApiModel):
    """Empty to ask for a confirmation token; with it (and the phrase, and
    the password of an account that has one) to erase."""

    confirmation_token: Annotated[str, StringConstraints(max_length=200)] | None = None
    phrase: Annotated[str, StringConstraints(max_length=100)] | None = None
    password: Annotated[str, StringConstraints(max_length=256)] | None = None


class ErasureOut(ApiModel):
    status: str  # "confirm" (step 1) or "erased" (step 2)
    confirmation_token: str | None = None
    phrase: str | None = None
    password_required: bool | None = None
    expires_at: dt.datetime | None = None
    counts: dict[str, int] | None = None


def _mac(secret: str, me: Principal, expires: int) -> str:
    key = hashlib.sha256(b"wadud-erasure" + secret.encode()).digest()
    msg = f"{me.user_id}:{me.family_id}:{expires}".encode()
    digest = hmac.new(key, msg, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def confirmation_token(secret: str, me: Principal, ttl: int, now: float) -> tuple[str, int]:
    expires = int(now) + ttl
    return f"{expires}.{_mac(secret, me, expires)}", expires


def check_token(secret: str, me: Principal, token: str, now: float) -> None:
    exp_text, _, mac = token.partition(".")
    try:
        expires = int(exp_text)
    except ValueError:
        raise rights.ErasureNotConfirmed("the confirmation token is malformed") from None
    good = hmac.compare_digest(_mac(secret, me, expires).encode(), mac.encode())
    if not good:
        raise rights.ErasureNotConfirmed("the confirmation token is not this session's")
    if expires < now:
        raise rights.ErasureNotConfirmed("the confirmation token expired; ask for a new one")


@routes.get(
    "/api/v1/me/export",
    auth={Role.PATIENT, Role.DOCTOR},
    returns={"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
)
async def export_me(call: Call[None, None]) -> web.Response:
    """Everything Wadud holds about the caller, as one ZIP archive:
    ``manifest.json`` (format, parts, files with SHA-256), one JSON file per
    part (profile, sessions, consents, the audit of who accessed the data,
    bookings, payments, conversations and messages decrypted) and the
    attachments decrypted under ``files/``. A doctor's archive also holds
    their profile, schedule, payout bank details (decrypted), earnings,
    payouts and payout-batch lines (``doctor/``)."""
    me = call.user
    data = await rights.export(
        call.pool,
        rights.providers_of(call.request.app),
        me.user_id,
        now=dt.datetime.now(dt.UTC),
        audit_actor=me,
    )
    day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    return web.Response(
        body=data,
        content_type="application/zip",
        headers={
            "Cache-Control": "private, no-store",
            "Content-Disposition": f'attachment; filename="wadud-export-{day}.zip"',
        },
    )


@routes.post(
    "/api/v1/me/erasure",
    body=ErasureIn,
    returns=ErasureOut,
    auth={Role.PATIENT},
    responses={
        202: "Confirmation token issued (step 1)",
        403: "Not a patient's own account",
        409: "Already erased",
        422: "Wrong or expired token, phrase or password",
    },
)
async def erase_me(call: Call[ErasureIn, None]) -> ErasureOut | web.Response:
    """Erase the caller's personal data, in two steps (see the module doc):
    the account is disabled, every session ends, chat and attachments are
    deleted and their key destroyed, bookings and payments keep only what
    the ledger needs, with no name, email, phone or note."""
    me, body, settings = call.user, call.body, call.settings
    app = call.request.app
    now = time.time()
    row = await call.pool.fetchrow(
        "SELECT password_hash, erased_at FROM users WHERE id = $1", me.user_id
    )
    if row is None or row["erased_at"] is not None:
        raise rights.AlreadyErased("this account's data was erased")
    needs_password = row["password_hash"] is not None
    if body.confirmation_token is None:
        token, expires = confirmation_token(
            settings.secret_key, me, settings.privacy_erasure_confirm_seconds, now
        )
        out = ErasureOut(
            status="confirm",
            confirmation_token=token,
            phrase=PHRASE,
            password_required=needs_password,
            expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
        )
        return web.json_response(out.model_dump(mode="json", exclude_none=True), status=202)
    check_token(settings.secret_key, me, body.confirmation_token, now)
    if (body.phrase or "").strip().lower() != PHRASE:
        raise rights.ErasureNotConfirmed(f'type the phrase "{PHRASE}" to confirm')
    if needs_password:
        limiter = app[ratelimit.LIMITER]
        rule = ratelimit.Backoff(
            settings.limits_login_account_free,
            settings.limits_login_delay,
            settings.limits_login_delay_max,
            settings.limits_login_forget,
        )
        attempt = await limiter.attempt(
            "erasure-password", str(me.user_id), rule, "erasure confirmations"
        )
        ok = body.password is not None and await auth.check_password(
            row["password_hash"], body.password, app[auth.PASSWORDS]
        )
        if not ok:
            await limiter.fail(attempt, rule)
            raise rights.ErasureNotConfirmed("the password is wrong")
        await limiter.forget(attempt)
    counts = await rights.erase(
        call.pool,
        rights.providers_of(app),
        me.user_id,
        storage=storage_of(app),
        actor=me,
    )
    return ErasureOut(status="erased", counts=counts)


def install(app: web.Application) -> None:
    routes.install(app)
