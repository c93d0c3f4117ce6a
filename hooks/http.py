"""A clinic's webhook endpoints over HTTP: create (the secret is shown once),
list, read, change, delete, rotate the secret; the delivery log with each
delivery's attempts; redeliver.

Clinic staff manage their own clinic's endpoints, platform admins any
clinic's; another clinic's endpoints are a 404 (ids do not leak); patients
and doctors get 403. ``install`` adds the routes (every role that serves
HTTP); ``install_worker`` also runs a :class:`~hooks.service.Deliverer` in
the process (``wadud serve`` and ``wadud api``, unless ``webhooks_deliver`` is off).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
from aiohttp import web
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver
from pydantic import Field, StringConstraints

from hooks.addresses import policy, resolve_checked
from hooks.errors import DeliveryNotFound, EndpointNotFound, RefusedAddress
from hooks.events import EVENTS
from hooks.service import Deliverer
from turn.policy import PeerPolicy
from wadud.state import keys
from wadud.web import workers
from wadud.web.api import ApiModel, Call, Principal, Role, Routes

log = logging.getLogger("wadud.hooks")

__all__ = ["DELIVERER", "RESOLVER", "install", "install_worker", "routes"]

DELIVERER = web.AppKey("webhook_deliverer", Deliverer)
#: The name resolver endpoint URLs are checked (and delivered) with; tests
#: put one here that answers as a rebinding DNS server would.
RESOLVER = web.AppKey("webhook_resolver", AbstractResolver)

routes = Routes("webhooks", "A clinic's signed room webhooks: endpoints and the delivery log.")

EventName = Literal[
    "room_started",
    "room_finished",
    "participant_waiting",
    "participant_admitted",
    "participant_denied",
    "participant_joined",
    "participant_left",
    "track_published",
    "track_unpublished",
    "recording_started",
    "recording_ready",
    "recording_failed",
    "call_report_ready",
    "phone_call",
]
assert set(EventName.__args__) == set(EVENTS)  # type: ignore[attr-defined]

Url = Annotated[str, StringConstraints(min_length=8, max_length=2048)]
Description = Annotated[str, StringConstraints(max_length=500)]
_STAFF = {Role.ADMIN, Role.CLINIC_STAFF}
_BASE = "/api/v1/clinics/{clinic_id:uuid}/webhooks"
_ONE = _BASE + "/{endpoint_id:uuid}"


class EndpointIn(ApiModel):
    #: https, or http to a network ``webhooks_allow_networks`` lists.
    url: Url
    #: The events to receive; empty: every event.
    events: list[EventName] = Field(default_factory=list, max_length=len(EVENTS))
    description: Description = ""
    enabled: bool = True


class EndpointPatch(ApiModel):
    url: Url | None = None
    events: list[EventName] | None = Field(default=None, max_length=len(EVENTS))
    description: Description | None = None
    enabled: bool | None = None


class WebhookEndpoint(ApiModel):
    id: UUID
    clinic_id: UUID
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class EndpointWithSecret(WebhookEndpoint):
    #: Signs every delivery (docs/webhooks.md); shown only here.
    secret: str


class Attempt(ApiModel):
    attempt: int
    at: dt.datetime
    ok: bool
    http_status: int | None
    detail: str
    duration_ms: int


class WebhookDelivery(ApiModel):
    id: int
    event_id: str
    event: str
    room: str
    booking_id: UUID
    status: Literal["pending", "sent", "failed"]
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: str | None
    created_at: dt.datetime
    sent_at: dt.datetime | None
    tries: list[Attempt]


class DeliveryQuery(ApiModel):
    status: Literal["pending", "sent", "failed"] | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    #: Deliveries older than this id (the last page's smallest).
    before: Annotated[int, Field(ge=1)] | None = None


_COLS = "id, clinic_id, url, events, description, enabled, created_at, updated_at"


async def _clinic(call: Call[Any, Any]) -> UUID:
    """The path's clinic, if it exists and the caller may manage its webhooks."""
    clinic_id = call.path_uuid("clinic_id")
    me: Principal = call.user
    if me.role != Role.ADMIN and me.clinic_id != clinic_id:
        raise EndpointNotFound("no such clinic")
    if me.role == Role.ADMIN and not await call.pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM clinics WHERE id = $1)", clinic_id
    ):
        raise EndpointNotFound("no such clinic")
    return clinic_id


def _resolver(call: Call[Any, Any]) -> AbstractResolver:
    found = call.request.app.get(RESOLVER)
    return found if found is not None else ThreadedResolver()


def _plain_http_allowed(allow: list[str]) -> PeerPolicy:
    # Only the operator's explicit networks: nothing is allowed by default.
    return PeerPolicy(allow=allow, default_deny=("0.0.0.0/0", "::/0"))


async def _check(call: Call[Any, Any], url: str) -> None:
    allow = list(call.settings.webhooks_allow_networks)
    resolver = _resolver(call)
    try:
        addresses = await resolve_checked(url, policy(allow), resolver)
    finally:
        if call.request.app.get(RESOLVER) is None:
            await resolver.close()
    if url.lower().startswith("http:"):
        plain = _plain_http_allowed(allow)
        if not all(plain.allowed(a) for a in addresses):
            raise RefusedAddress("an endpoint URL is https (plain http only to allowed networks)")


def _endpoint(row: asyncpg.Record) -> WebhookEndpoint:
    return WebhookEndpoint(**{k: row[k] for k in WebhookEndpoint.model_fields})


async def _row(pool: asyncpg.Pool, clinic_id: UUID, endpoint_id: UUID) -> asyncpg.Record:
    row = await pool.fetchrow(
        f"SELECT {_COLS} FROM room_hook_endpoints WHERE id = $1 AND clinic_id = $2",
        endpoint_id,
        clinic_id,
    )
    if row is None:
        raise EndpointNotFound("no such webhook endpoint")
    return row


def _new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


@routes.post(
    _BASE, body=EndpointIn, returns=EndpointWithSecret, status=201, auth=_STAFF, replay=False
)
async def create_endpoint(call: Call[EndpointIn, None]) -> EndpointWithSecret:
    """Add a webhook endpoint to the clinic; the answer shows its secret, once.

    The URL is refused (422 ``webhook-address-refused``) when its host is,
    or resolves to, a loopback, private, link-local or otherwise reserved
    address (the TURN peer rules); it is checked again on every delivery."""
    clinic_id = await _clinic(call)
    body = call.body
    await _check(call, body.url)
    secret = _new_secret()
    row = await call.pool.fetchrow(
        f"""INSERT INTO room_hook_endpoints (clinic_id, url, events, secret, description, enabled)
            VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLS}""",
        clinic_id,
        body.url,
        sorted(set(body.events)),
        secret,
        body.description,
        body.enabled,
    )
    assert row is not None
    return EndpointWithSecret(**_endpoint(row).model_dump(), secret=secret)


@routes.get(_BASE, returns=list[WebhookEndpoint], auth=_STAFF)
async def list_endpoints(call: Call[None, None]) -> list[WebhookEndpoint]:
    """The clinic's webhook endpoints (never their secrets)."""
    clinic_id = await _clinic(call)
    rows = await call.pool.fetch(
        f"SELECT {_COLS} FROM room_hook_endpoints WHERE clinic_id = $1 ORDER BY created_at, id",
        clinic_id,
    )
    return [_endpoint(r) for r in rows]


@routes.get(_ONE, returns=WebhookEndpoint, auth=_STAFF)
async def get_endpoint(call: Call[None, None]) -> WebhookEndpoint:
    """One webhook endpoint."""
    clinic_id = await _clinic(call)
    return _endpoint(await _row(call.pool, clinic_id, call.path_uuid("endpoint_id")))


@routes.patch(_ONE, body=EndpointPatch, returns=WebhookEndpoint, auth=_STAFF)
async def update_endpoint(call: Call[EndpointPatch, None]) -> WebhookEndpoint:
    """Change an endpoint's URL (checked as on creation), events, description
    or whether it is enabled."""
    clinic_id = await _clinic(call)
    body = call.body
    if body.url is not None:
        await _check(call, body.url)
    row = await call.pool.fetchrow(
        f"""UPDATE room_hook_endpoints
            SET url = coalesce($3, url), events = coalesce($4, events),
                description = coalesce($5, description), enabled = coalesce($6, enabled),
                updated_at = now()
            WHERE id = $1 AND clinic_id = $2 RETURNING {_COLS}""",
        call.path_uuid("endpoint_id"),
        clinic_id,
        body.url,
        sorted(set(body.events)) if body.events is not None else None,
        body.description,
        body.enabled,
    )
    if row is None:
        raise EndpointNotFound("no such webhook endpoint")
    return _endpoint(row)


@routes.delete(_ONE, auth=_STAFF)
async def delete_endpoint(call: Call[None, None]) -> None:
    """Delete an endpoint, with its delivery log."""
    clinic_id = await _clinic(call)
    done = await call.pool.execute(
        "DELETE FROM room_hook_endpoints WHERE id = $1 AND clinic_id = $2",
        call.path_uuid("endpoint_id"),
        clinic_id,
    )
    if done == "DELETE 0":
        raise EndpointNotFound("no such webhook endpoint")


@routes.post(_ONE + "/secret", returns=EndpointWithSecret, auth=_STAFF, replay=False)
async def rotate_secret(call: Call[None, None]) -> EndpointWithSecret:
    """Give the endpoint a new secret, shown once; deliveries from now on
    (retries included) are signed with it."""
    clinic_id = await _clinic(call)
    secret = _new_secret()
    row = await call.pool.fetchrow(
        f"""UPDATE room_hook_endpoints SET secret = $3, updated_at = now()
            WHERE id = $1 AND clinic_id = $2 RETURNING {_COLS}""",
        call.path_uuid("endpoint_id"),
        clinic_id,
        secret,
    )
    if row is None:
        raise EndpointNotFound("no such webhook endpoint")
    return EndpointWithSecret(**_endpoint(row).model_dump(), secret=secret)


_DELIVERIES = """
SELECT d.id, d.event_id::text AS event_id, v.name AS event, d.room, v.booking_id, d.status,
       d.attempts, CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
       d.last_error, d.created_at, d.sent_at,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'attempt', a.attempt, 'at', a.at, 'ok', a.ok, 'http_status', a.http_status,
                    'detail', a.detail, 'duration_ms', a.duration_ms) ORDER BY a.attempt, a.id)
                 FROM room_hook_attempts a WHERE a.delivery_id = d.id), '[]') AS tries
FROM room_hook_deliveries d JOIN room_hook_events v ON v.id = d.event_id
WHERE d.endpoint_id = $1"""


def _delivery(row: asyncpg.Record) -> WebhookDelivery:
    return WebhookDelivery.model_validate({k: row[k] for k in WebhookDelivery.model_fields})


@routes.get(_ONE + "/deliveries", query=DeliveryQuery, returns=list[WebhookDelivery], auth=_STAFF)
async def list_deliveries(call: Call[None, DeliveryQuery]) -> list[WebhookDelivery]:
    """The endpoint's delivery log, newest first, each with its attempts."""
    clinic_id = await _clinic(call)
    endpoint = await _row(call.pool, clinic_id, call.path_uuid("endpoint_id"))
    q = call.query
    rows = await call.pool.fetch(
        _DELIVERIES
        + """ AND ($2::text IS NULL OR d.status = $2)
              AND ($3::bigint IS NULL OR d.id < $3) ORDER BY d.id DESC LIMIT $4""",
        endpoint["id"],
        q.status,
        q.before,
        q.limit,
    )
    return [_delivery(r) for r in rows]


@routes.post(
    _ONE + "/deliveries/{delivery_id:[0-9]{1,18}}/redeliver",
    returns=WebhookDelivery,
    status=202,
    auth=_STAFF,
)
async def redeliver(call: Call[None, None]) -> WebhookDelivery:
    """Send a delivery again now, whatever became of it: the same event id
    and body, a new attempt in its log."""
    clinic_id = await _clinic(call)
    endpoint = await _row(call.pool, clinic_id, call.path_uuid("endpoint_id"))
    delivery_id = int(call.path("delivery_id"))
    # Queued and read back in one transaction: the answer is the delivery as
    # queued. Two statements let a sender that was already polling (not
    # only one this wake starts) claim and send it in between, and the
    # answer said 'sent' (seen in CI twice, the second time after the read
    # was moved before the wake).
    async with call.pool.acquire() as conn, conn.transaction():
        updated = await conn.execute(
            """UPDATE room_hook_deliveries SET status = 'pending', next_attempt_at = now()
               WHERE id = $1 AND endpoint_id = $2""",
            delivery_id,
            endpoint["id"],
        )
        if updated == "UPDATE 0":
            raise DeliveryNotFound("no such delivery")
        row = await conn.fetchrow(_DELIVERIES + " AND d.id = $2", endpoint["id"], delivery_id)
    assert row is not None
    deliverer = call.request.app.get(DELIVERER)
    if deliverer is not None:
        deliverer.wake()
    return _delivery(row)


async def _worker(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    if not settings.webhooks_deliver:
        yield
        return
    deliverer = Deliverer(app[keys.DB], settings, resolver=app.get(RESOLVER))
    async with workers.in_app(app, DELIVERER, deliverer):
        yield


def install(app: web.Application) -> None:
    routes.install(app)


def install_worker(app: web.Application) -> None:
    app.cleanup_ctx.append(_worker)
