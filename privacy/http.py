"""Consent and audit over HTTP, and the audit of every admin action.

Consent (docs/privacy.md, "Consent"):

* ``GET /api/v1/consents/texts?region=&language=``: the current text of each
  purpose in a region (public: a patient reads them before signing up);
* ``GET /api/v1/consents/required?region=``: what the region requires;
* ``POST /api/v1/consents/texts`` (admins): publish a new version;
* ``GET /api/v1/me/consents``: the caller's current answers and history;
* ``POST /api/v1/me/consents/accept`` and ``.../withdraw``.

Audit (docs/privacy.md, "Audit trail"):

* ``GET /api/v1/audit``: clinic staff their clinic's rows, admins everyone's;
* ``GET /api/v1/me/audit``: who accessed the caller's data.

:func:`admin_actions`, a middleware, writes one audit row for every request
an admin makes that may change something (POST, PUT, PATCH, DELETE), with
its route and status, after the handler answered.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
import pydantic
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import Field, StringConstraints

from privacy import audit, consent
from privacy.errors import InvalidConsentText, StaleConsentVersion, UnknownConsentVersion
from wadud.errors import Forbidden, WadudError
from wadud.principal import Principal
from wadud.state import keys
from wadud.state.rows import from_row
from wadud.web import cursor
from wadud.web.api import ApiModel, Call, Role, Routes

routes = Routes("privacy", "Consent texts and answers; the audit trail.")

Region = Literal["PK", "AE", "QA", "SA"]
Purpose = Literal["telehealth_consultation", "data_processing", "call_recording", "marketing"]
Language = Literal["en", "ur", "ar"]


class TextIn(ApiModel):
    region: Region
    purpose: Purpose
    language: Language
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    body: Annotated[str, StringConstraints(min_length=1, max_length=100_000)]
    #: Earlier acceptances stop counting once this version is published.
    material: bool = True
    #: The version number; omitted: the next one in this language. A
    #: translation of an existing version names that version.
    version: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class TextOut(ApiModel):
    id: UUID
    region: Region
    purpose: Purpose
    language: Language
    version: int
    title: str
    body: str
    material: bool
    published_at: dt.datetime


class TextsQuery(ApiModel):
    region: Region
    language: Language = "en"


class RegionQuery(ApiModel):
    region: Region


class Required(ApiModel):
    region: Region
    purposes: list[Purpose]


class AcceptIn(ApiModel):
    text_id: UUID


class WithdrawIn(ApiModel):
    region: Region
    purpose: Purpose


class ConsentAnswer(ApiModel):
    region: Region
    purpose: Purpose
    action: Literal["accept", "withdraw"]
    version: int | None
    text_id: UUID | None
    at: dt.datetime


class MyConsents(ApiModel):
    #: The latest answer per (region, purpose).
    current: list[ConsentAnswer]
    #: Every answer, newest first.
    history: list[ConsentAnswer]


class AuditRow(ApiModel):
    seq: int
    at: dt.datetime
    actor_id: UUID | None
    actor_role: str
    actor_name: str
    action: str
    clinic_id: UUID | None
    object: str
    detail: dict[str, Any]


class AuditPage(ApiModel):
    items: list[AuditRow]
    #: Pass as ``cursor`` for the next (older) page; null on the last.
    next_cursor: str | None


class AuditQuery(ApiModel):
    #: Admins: one clinic's rows (default: all). Staff always see their own.
    clinic_id: UUID | None = None
    action: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")] | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: Annotated[str, StringConstraints(max_length=400)] | None = None


class PageQuery(ApiModel):
    limit: int = Field(default=50, ge=1, le=500)
    cursor: Annotated[str, StringConstraints(max_length=400)] | None = None


_TEXT_COLS = "id, region, purpose, language, version, title, body, material, published_at"


# -- consent texts ----------------------------------------------------------------


@routes.get("/api/v1/consents/texts", query=TextsQuery, returns=list[TextOut], auth="public")
async def current_texts(call: Call[None, TextsQuery]) -> list[TextOut]:
    """The current consent text of each purpose in a region.

    In the language asked for where it exists, else in English."""
    rows = await call.pool.fetch(
        f"""SELECT DISTINCT ON (purpose) {_TEXT_COLS} FROM consent_texts
            WHERE region = $1 AND language IN ($2, 'en')
            ORDER BY purpose, version DESC, (language = $2) DESC""",
        call.query.region,
        call.query.language,
    )
    return [TextOut(**dict(r)) for r in rows]


@routes.get("/api/v1/consents/texts/{id:uuid}", returns=TextOut, auth="public")
async def one_text(call: Call[None, None]) -> TextOut:
    """One consent text, any version."""
    row = await call.pool.fetchrow(
        f"SELECT {_TEXT_COLS} FROM consent_texts WHERE id = $1", call.path_uuid("id")
    )
    if row is None:
        raise UnknownConsentVersion("no such consent text")
    return TextOut(**dict(row))


@routes.get("/api/v1/consents/required", query=RegionQuery, returns=Required, auth="public")
async def required(call: Call[None, RegionQuery]) -> Required:
    """The purposes a patient must accept in a region to book and to join a call."""
    region = call.query.region
    return Required(
        region=region,
        purposes=list(consent.required_in(call.settings, region)),  # type: ignore[arg-type]
    )


@routes.post("/api/v1/consents/texts", body=TextIn, returns=TextOut, status=201,
             auth={Role.ADMIN})  # fmt: skip
async def publish_text(call: Call[TextIn, None]) -> TextOut:
    """Publish a consent text: a new version, or a translation of one.

    Texts are never edited; a change is a new version. With ``material``
    (the default) patients who accepted an earlier version must accept again
    before their next booking or call."""
    b = call.body
    async with call.pool.acquire() as conn, conn.transaction():
        # One publisher at a time per (region, purpose): versions stay dense.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('consent:' || $1 || ':' || $2))",
            b.region,
            b.purpose,
        )
        top = await conn.fetchval(
            """SELECT coalesce(max(version), 0) FROM consent_texts
               WHERE region = $1 AND purpose = $2 AND language = $3""",
            b.region,
            b.purpose,
            b.language,
        )
        latest = await conn.fetchval(
            """SELECT coalesce(max(version), 0) FROM consent_texts
               WHERE region = $1 AND purpose = $2""",
            b.region,
            b.purpose,
        )
        version = b.version if b.version is not None else top + 1
        if version <= top:
            raise StaleConsentVersion(
                f"version {version} exists in {b.language}; publish {top + 1} or later"
            )
        if version > latest + 1:
            raise InvalidConsentText(f"the next version is {latest + 1}, not {version}")
        row = await conn.fetchrow(
            f"""INSERT INTO consent_texts
                    (region, purpose, language, version, title, body, material, published_by)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_TEXT_COLS}""",
            b.region,
            b.purpose,
            b.language,
            version,
            b.title,
            b.body,
            b.material,
            call.user.user_id,
        )
    assert row is not None
    return TextOut(**dict(row))


# -- a patient's answers ------------------------------------------------------------


def _answer(row: asyncpg.Record) -> ConsentAnswer:
    return from_row(ConsentAnswer, row)


async def _mine(conn: asyncpg.Connection | asyncpg.Pool, user_id: UUID) -> MyConsents:
    history = await conn.fetch(
        """SELECT region, purpose, action, version, text_id, at FROM consent_events
           WHERE user_id = $1 ORDER BY id DESC LIMIT 1000""",
        user_id,
    )
    current = await consent.current_state(conn, user_id)
    return MyConsents(
        current=[_answer(r) for r in current],
        history=[_answer(r) for r in history],
    )


@routes.get("/api/v1/me/consents", returns=MyConsents, auth="any")
async def my_consents(call: Call[None, None]) -> MyConsents:
    """The caller's consent answers: the current one per purpose and region,
    and the whole history."""
    return await _mine(call.pool, call.user.user_id)


@routes.post("/api/v1/me/consents/accept", body=AcceptIn, returns=MyConsents,
             auth={Role.PATIENT})  # fmt: skip
async def accept(call: Call[AcceptIn, None]) -> MyConsents:
    """Accept a consent text (its purpose, in its region, at its version).

    Only the current version of a purpose can be accepted (409
    ``stale_consent_version`` for an older one)."""
    me = call.user.user_id
    async with call.pool.acquire() as conn, conn.transaction():
        text = await conn.fetchrow(
            """SELECT t.id, t.region, t.purpose, t.version,
                      (SELECT max(version) FROM consent_texts o
                       WHERE o.region = t.region AND o.purpose = t.purpose) AS newest
               FROM consent_texts t WHERE t.id = $1""",
            call.body.text_id,
        )
        if text is None:
            raise UnknownConsentVersion("no such consent text")
        if text["version"] != text["newest"]:
            raise StaleConsentVersion(
                f"version {text['version']} was replaced by {text['newest']}; accept that one"
            )
        await conn.execute(
            """INSERT INTO consent_events (user_id, region, purpose, action, text_id, version)
               VALUES ($1, $2, $3, 'accept', $4, $5)""",
            me,
            text["region"],
            text["purpose"],
            text["id"],
            text["version"],
        )
        return await _mine(conn, me)


@routes.post("/api/v1/me/consents/withdraw", body=WithdrawIn, returns=MyConsents,
             auth={Role.PATIENT})  # fmt: skip
async def withdraw(call: Call[WithdrawIn, None]) -> MyConsents:
    """Withdraw a consent. Later bookings and joins that need it are refused
    until it is accepted again; what was done before stays lawful."""
    me = call.user.user_id
    async with call.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO consent_events (user_id, region, purpose, action)
               VALUES ($1, $2, $3, 'withdraw')""",
            me,
            call.body.region,
            call.body.purpose,
        )
        return await _mine(conn, me)


# -- the audit trail ------------------------------------------------------------------


def _audit_row(row: asyncpg.Record) -> AuditRow:
    data = {k: row[k] for k in AuditRow.model_fields if k != "detail"}
    try:
        detail = json.loads(row["detail"])
    except ValueError:
        detail = {}
    return AuditRow(**data, detail=detail if isinstance(detail, dict) else {})


def _before(secret: str, text: str | None) -> int | None:
    if text is None:
        return None
    (seq,) = cursor.decode(secret, "audit", text, 1)
    if not isinstance(seq, int) or seq < 1:
        raise cursor.InvalidCursor("the cursor is not one this API handed out")
    return seq


def _page(secret: str, rows: list[asyncpg.Record], limit: int) -> AuditPage:
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(
        items=[_audit_row(r) for r in rows],
        next_cursor=cursor.encode(secret, "audit", rows[-1]["seq"]) if more else None,
    )


@routes.get("/api/v1/audit", query=AuditQuery, returns=AuditPage,
            auth={Role.CLINIC_STAFF, Role.ADMIN})  # fmt: skip
async def clinic_audit(call: Call[None, AuditQuery]) -> AuditPage:
    """The audit trail, newest first: clinic staff see their clinic's rows,
    admins everyone's (or one clinic's with ``clinic_id``)."""
    q, me = call.query, call.user
    clinic = q.clinic_id
    if me.role is Role.CLINIC_STAFF:
        if clinic is not None and clinic != me.clinic_id:
            raise Forbidden("clinic staff see their own clinic's audit only")
        clinic = me.clinic_id
    before = _before(call.settings.secret_key, q.cursor)
    rows = await call.pool.fetch(
        f"""SELECT a.seq, a.at, a.actor_id, a.actor_role, a.action, a.clinic_id, a.object,
                   a.detail, coalesce(u.display_name, '') AS actor_name
            FROM {audit.TABLE} a LEFT JOIN users u ON u.id = a.actor_id
            WHERE ($1::uuid IS NULL OR a.clinic_id = $1)
              AND ($2::text IS NULL OR a.action = $2)
              AND ($3::bigint IS NULL OR a.seq < $3)
            ORDER BY a.seq DESC LIMIT $4""",
        clinic,
        q.action,
        before,
        q.limit + 1,
    )
    return _page(call.settings.secret_key, list(rows), q.limit)


@routes.get("/api/v1/me/audit", query=PageQuery, returns=AuditPage, auth="any")
async def my_audit(call: Call[None, PageQuery]) -> AuditPage:
    """Who accessed the caller's data, and when, newest first (reads and
    changes by doctors, staff and admins, and the caller's own sign-ins)."""
    q = call.query
    rows = await audit.accesses_to(
        call.pool,
        call.user.user_id,
        before=_before(call.settings.secret_key, q.cursor),
        limit=q.limit + 1,
    )
    return _page(call.settings.secret_key, rows, q.limit)


# -- admin actions --------------------------------------------------------------------

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _object(request: web.Request) -> str:
    """``kind/id`` of what a request names: the resource after /api/v1/ and
    the first id in its path."""
    parts = [p for p in request.path.split("/") if p]
    kind = parts[2] if len(parts) > 2 and parts[:2] == ["api", "v1"] else ""
    kind = "".join(c for c in kind.replace("-", "_").lower() if c.isalpha() or c == "_")[:32]
    for value in request.match_info.values():
        try:
            return f"{kind or 'resource'}/{UUID(value)}"
        except ValueError:
            continue
    return ""


@web.middleware
async def admin_actions(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One audit row per admin request that may change something, with its
    route and status (failures too: an attempt is an action)."""
    principal: Principal | None = request.get(keys.PRINCIPAL)
    if principal is None or principal.role is not Role.ADMIN or request.method not in _MUTATING:
        return await handler(request)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    # Innermost: the handler's errors pass here before the problem
    # middleware turns them into responses.
    except web.HTTPException as exc:
        status = exc.status
        raise
    except WadudError as exc:
        status = exc.http_status
        raise
    except pydantic.ValidationError:
        status = 422
        raise
    finally:
        info = request.match_info
        route = info.route.resource.canonical if info.route.resource is not None else ""
        await audit.record(
            request.app[keys.DB],
            actor=principal,
            action="admin.request",
            object=_object(request),
            detail={"method": request.method, "route": route, "status": status},
        )


def install(app: web.Application) -> None:
    routes.install(app)
    # Innermost, after authentication: it sees the principal, and the
    # handler's answer or error.
    app.middlewares.append(admin_actions)
