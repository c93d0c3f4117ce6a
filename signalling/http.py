"""Call signalling on the HTTP side: ``GET /ws`` and the service behind it.

``install(app)`` adds the WebSocket route and a cleanup context that owns the
:class:`signalling.service.CallService`; the media worker is whatever
``app[sfu.http.MEDIA]`` holds when a client first needs it (``sfu.http`` installs
one in ``wadud serve``), so the order of installers does not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp import web

import booking.calls
from privacy import consent
from privacy.errors import ConsentRequired
from recording.http import RECORDINGS
from sfu.control import MediaControl
from sfu.http import MEDIA
from sfu.rpc import MediaClient
from signalling import errors
from signalling.call_reports import CallRecorder, post_stats
from signalling.cluster import Cluster
from signalling.placement import Placement, parse_distances
from signalling.roomevents import RoomEvents
from signalling.service import CallService
from turn.credentials import ice_server
from wadud import keys, outbox, revocation
from wadud.auth import RoomGrant
from wadud.bus import Subscription
from wadud.errors import ConfigError

CALLS = web.AppKey("calls", CallService)
#: Gathers each visit's call report (signalling.call_reports).
RECORDER = web.AppKey("call_recorder", CallRecorder)


def ice_servers_for(
    app: web.Application, identity: str, ttl: int | None = None
) -> list[dict[str, Any]]:
    """``RTCIceServer`` entries for ``joined``: our TURN relay with short-lived
    REST credentials (the same as ``GET /api/v1/turn/credentials``), from the
    embedded relay of ``wadud serve`` or the configured secret and URLs; empty
    when there is no relay. ``ttl``: seconds the credentials last
    (``turn_credential_ttl`` by default)."""
    import turn.http

    settings = app[keys.SETTINGS]
    embedded = app.get(turn.http.EMBEDDED)
    if embedded is not None and embedded.config.secrets:
        secret, urls = embedded.config.secrets[0], embedded.urls()
    elif settings.turn_secrets and settings.turn_urls:
        secret, urls = settings.turn_secrets[0], list(settings.turn_urls)
    else:
        return []
    lifetime = settings.turn_credential_ttl if ttl is None else ttl
    return [ice_server(secret, identity, lifetime, time.time(), urls)]


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """``GET /ws``: the call signalling WebSocket (docs/protocol.md, "Calls")."""
    return await request.app[CALLS].serve(request)


async def call_stats(request: web.Request) -> web.Response:
    """``POST /api/v1/calls/stats``: a call page's own stats (signalling.call_reports)."""
    await post_stats(request, request.app[keys.SETTINGS], request.app[RECORDER])
    return web.Response(status=204)


async def _context(app: web.Application) -> AsyncIterator[None]:
    def media() -> MediaControl | None:
        found = app.get(MEDIA)
        if found is not None:
            recorder.watch(found)
        return found

    settings = app[keys.SETTINGS]
    # With Redis, rooms are shared by every replica (signalling.cluster); with
    # no media worker in this process (`wadud api`), they are placed on the
    # registered media nodes and driven over Redis (sfu.rpc).
    redis = getattr(app[keys.BUS], "redis", None) if settings.redis_url else None
    cluster = placement = client = None
    if redis is not None:
        cluster = Cluster(redis, lease=settings.call_owner_lease)
        if MEDIA not in app:
            try:
                distances = parse_distances(settings.media_region_distances)
            except ValueError as exc:
                raise ConfigError(f"media_region_distances: {exc}") from None
            placement = Placement(redis, distances)
            client = MediaClient(redis, cluster.replica, settings.media_rpc_timeout)
            await client.start()

    async def guard(grant: RoomGrant) -> None:
        if grant.sid and not await _session_live(app[keys.DB], grant.identity, grant.sid):
            raise errors.Unauthorized("you signed out since this link was made")
        if grant.booking:
            why = await booking.calls.link_refusal(app[keys.DB], grant.booking, grant.slot)
            if why is not None:
                raise errors.BookingClosed(why.detail, reason=why.reason)
            await _require_consent(app, grant)

    async def waiting(grant: RoomGrant) -> None:
        # A patient in a booking's waiting room: an outbox event, which the
        # notifier (notify/) turns into a heads-up to the doctor.
        if grant.booking and grant.role == "patient":
            async with app[keys.DB].acquire() as conn, conn.transaction():
                await outbox.emit(
                    conn,
                    "call.waiting",
                    {"booking_id": grant.booking, "room": grant.room, "name": grant.name},
                )

    # Room events for clinics' webhooks (hooks/), written as outbox rows.
    room_events = RoomEvents(lambda: app.get(keys.DB))
    service = CallService(
        settings,
        media,
        lambda pid: ice_servers_for(app, pid),
        cluster=cluster,
        placement=placement,
        media_client=client,
        guard=guard,
        on_waiting=waiting,
        observe=room_events,
        recording_store=lambda: app.get(RECORDINGS),
    )
    app[CALLS] = service

    def identity(room: str, pid: str) -> str | None:
        found = service.rooms.get(room)
        who = found.core.get(pid) if found is not None else None
        return who.grant.identity if who is not None else None

    recorder = app[RECORDER] = CallRecorder(
        app[keys.DB], lambda room: room in service.rooms, identity
    )
    if client is not None:
        client.add_listener(recorder.on_worker_message)
    bus = app[keys.BUS]
    cancelled = await bus.subscribe(*booking.calls.ENDING_TOPICS)
    revoked = await bus.subscribe(revocation.TOPIC)
    listeners = [
        asyncio.create_task(_end_cancelled(cancelled, service), name="call-booking-ends"),
        asyncio.create_task(_revocations(revoked, service), name="call-revocations"),
        asyncio.create_task(recorder.run(), name="call-reports"),
    ]
    try:
        await service.start()
        yield
    finally:
        # Closing a subscription ends its loop; a cancel alone may land
        # inside the Redis client's read and be retried.
        for sub in (cancelled, revoked):
            await sub.close()
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        await service.close()
        await room_events.close()
        # Rooms end with the replica, not the call: their reports are
        # finished by the replica that owns them next, or stay not ready.
        recorder.live.clear()
        with contextlib.suppress(Exception):
            await recorder.flush()
        if client is not None:
            await client.close()


#: The region whose consent rules apply to the call of booking $4.
_BOOKING_REGION = (
    "SELECT c.region FROM bookings b JOIN clinics c ON c.id = b.clinic_id WHERE b.id = $4"
)


async def _require_consent(app: web.Application, grant: RoomGrant) -> None:
    """A patient's join of a booking's call needs the consents the clinic's
    region requires (docs/privacy.md). Only a booking's patient link names a
    known patient: a link made with ``wadud token`` or the demo page names no
    account, and doctors and staff consent to nothing here."""
    if grant.role != "patient":
        return
    try:
        user, booking_id = UUID(grant.identity), UUID(grant.booking)
    except ValueError:
        return
    settings = app[keys.SETTINGS]
    try:
        await consent.require(app[keys.DB], settings, user, _BOOKING_REGION, booking_id)
    except ConsentRequired as exc:
        raise errors.ConsentMissing(exc.missing, region=exc.region) from None


async def _session_live(pool: asyncpg.Pool, identity: str, sid: str) -> bool:
    """The sign-in session a link was issued to still stands (not revoked, the
    account neither disabled nor gone)."""
    try:
        user, family = UUID(identity), UUID(sid)
    except ValueError:
        return False
    return bool(
        await pool.fetchval(
            """SELECT f.revoked_at IS NULL AND NOT u.disabled
               FROM token_families f JOIN users u ON u.id = f.user_id
               WHERE f.id = $1 AND f.user_id = $2""",
            family,
            user,
        )
    )


async def _revocations(sub: Subscription, service: CallService) -> None:
    """``auth.revoked`` (wadud.revocation): the account's participants leave
    the calls whose links came from the revoked session."""
    async for msg in sub:
        rev = revocation.parse(msg.data)
        if rev is not None:
            family = str(rev.family_id) if rev.family_id is not None else None
            service.revoked(str(rev.user_id), family)


async def _end_cancelled(sub: Subscription, service: CallService) -> None:
    """A cancelled booking's call ends for whoever is in it (on the replica
    that owns the room; every replica hears the event)."""
    async for msg in sub:
        data = msg.data.get("data") or {}
        booking_id = data.get("booking_id")
        if isinstance(booking_id, str):
            service.end_room(booking.calls.room_of(booking_id), "booking-cancelled")


async def _shutdown(app: web.Application) -> None:
    service = app.get(CALLS)
    if service is not None:
        service.shutdown()


def install(app: web.Application) -> None:
    app.router.add_get("/ws", websocket, name="call-ws")
    app.router.add_post("/api/v1/calls/stats", call_stats, name="call-stats")
    app.cleanup_ctx.append(_context)
    app.on_shutdown.append(_shutdown)


__all__ = ["CALLS", "ice_servers_for", "install"]
