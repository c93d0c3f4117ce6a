"""Call signalling on the HTTP side: ``GET /ws`` and the service behind it.

``install(app)`` adds the WebSocket route and a cleanup context that owns the
:class:`signalling.service.calls.CallService`; the media worker is whatever
``app[sfu.node.http.MEDIA]`` holds when a client first needs it (``sfu.node.http`` installs
one in ``wadud serve``), so the order of installers does not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp import web

import booking.calls
import hooks.events
from booking import phone_calls
from privacy import consent
from privacy.errors import ConsentRequired
from recording.http import RECORDINGS
from sfu.control.messages import MediaControl
from sfu.control.rpc import MediaClient
from sfu.node.http import MEDIA
from signalling import errors, invites
from signalling.cluster.link import Cluster
from signalling.edge.planes import CallPlanes
from signalling.live.events import RoomEvents
from signalling.live.report import CallRecorder, post_stats
from signalling.media.placement import Placement, parse_distances
from signalling.service.calls import CallService
from turn.credentials import ice_server
from wadud.config import Settings
from wadud.errors import ConfigError
from wadud.messaging import outbox, revocation
from wadud.messaging.bus import BusSubscription, RedisBus, redis_client
from wadud.state import keys
from wadud.web.auth import RoomGrant

log = logging.getLogger("wadud.signalling")

#: The global plane's call service (the only one without ``redis_region_url``).
CALLS = web.AppKey("calls", CallService)
#: Every plane's call service (signalling.edge.planes).
PLANES = web.AppKey("call_planes", CallPlanes)
#: Gathers each visit's call report (signalling.live.report).
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
    return await request.app[PLANES].serve(request)


async def call_stats(request: web.Request) -> web.Response:
    """``POST /api/v1/calls/stats``: a call page's own stats (signalling.live.report)."""
    await post_stats(request, request.app[keys.SETTINGS], request.app[RECORDER])
    return web.Response(status=204)


async def _context(app: web.Application) -> AsyncIterator[None]:
    def media() -> MediaControl | None:
        found = app.get(MEDIA)
        if found is not None:
            recorder.watch(found)
        return found

    settings = app[keys.SETTINGS]
    # With Redis, rooms are shared by every replica (signalling.cluster.link); with
    # no media worker in this process (`wadud api`), they are placed on the
    # registered media nodes and driven over Redis (sfu.control.rpc). The region's
    # own Redis, if any, is a second plane of its own (signalling.edge.planes).
    redis = getattr(app[keys.BUS], "redis", None) if settings.redis_url else None
    regional_redis = redis_client(settings.redis_region_url) if settings.redis_region_url else None
    if regional_redis is not None and (redis is None or not settings.region):
        raise ConfigError("redis_region_url needs redis_url and this process's region")
    if regional_redis is not None:
        app[keys.REGION_PLANE] = RedisBus.from_client(regional_redis)
    planes: list[tuple[Cluster | None, Placement | None, MediaClient | None]] = [
        await _plane(app, settings, r) for r in (redis, regional_redis) if r is not None
    ]

    async def guard(grant: RoomGrant) -> None:
        if not grant.booking and not grant.sid and not grant.invite:
            return
        try:
            async with asyncio.timeout(LINK_CHECK_TIMEOUT):
                await _check_link(app, grant)
        except _DATABASE_AWAY as exc:
            # The database is out of reach (a region cut off from it): a link
            # this region saw pass opens the room again; another one waits.
            if regional_redis is not None and await _passed_before(regional_redis, grant):
                log.info("room link let in on its earlier check: database: %r", exc)
                return
            log.warning("room link not checked: database: %r", exc)
            raise errors.BookingUnverifiable(
                "the booking cannot be checked now (the database is out of reach); try again"
            ) from None
        if regional_redis is not None:
            await _note_passed(regional_redis, grant)

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

    async def visit_started(grant: RoomGrant) -> None:
        # A booked visit's doctor came in and the patient is not there: an
        # outbox event, which the notifier turns into a ring on the patient's
        # phone (a VoIP push, a high-priority FCM message), once per visit.
        async with app[keys.DB].acquire() as conn, conn.transaction():
            await outbox.emit(
                conn,
                "call.incoming",
                {
                    "booking_id": grant.booking,
                    "slot": grant.slot,
                    "room": grant.room,
                    "name": grant.name,
                },
            )

    # Room events for clinics' webhooks (hooks/), written as outbox rows.
    room_events = RoomEvents(lambda: app.get(keys.DB))
    services = [
        CallService(
            settings,
            media,
            lambda pid: ice_servers_for(app, pid),
            cluster=cluster,
            placement=placement,
            media_client=client,
            guard=guard,
            on_waiting=waiting,
            on_visit_started=visit_started,
            observe=room_events,
            recording_store=lambda: app.get(RECORDINGS),
            call_phone=lambda booking_id, identity, number: phone_calls.request_in_room(
                app[keys.DB], booking_id, identity, number
            ),
            decided=lambda room, answer: invites.decided(app[keys.DB], room, answer),
            home=settings.region if i else "",
        )
        for i, (cluster, placement, client) in enumerate(planes or [(None, None, None)])
    ]
    app[CALLS] = services[0]
    calls = app[PLANES] = CallPlanes(settings, *services)

    def grant_of(room: str, pid: str) -> RoomGrant | None:
        found = calls.room(room)
        who = found.core.members.get(pid) if found is not None else None
        return who.grant if who is not None else None

    recorder = app[RECORDER] = CallRecorder(
        app[keys.DB], lambda room: calls.room(room) is not None, grant_of
    )
    clients = [client for _, _, client in planes if client is not None]
    for client in clients:
        client.add_listener(recorder.on_worker_message)
    bus = app[keys.BUS]
    cancelled = await bus.subscribe(*booking.calls.ENDING_TOPICS)
    revoked = await bus.subscribe(revocation.TOPIC)
    phoned = await bus.subscribe(hooks.events.topic("phone_call"))
    uninvited = await bus.subscribe(invites.REVOKED_TOPIC)
    listeners = [
        asyncio.create_task(_end_cancelled(cancelled, calls), name="call-booking-ends"),
        asyncio.create_task(_revocations(revoked, calls), name="call-revocations"),
        asyncio.create_task(_phone_steps(phoned, calls), name="call-phone-steps"),
        asyncio.create_task(_uninvited(uninvited, calls), name="call-invites-revoked"),
        asyncio.create_task(recorder.run(), name="call-reports"),
    ]
    try:
        for service in calls:
            await service.start()
        yield
    finally:
        # Closing a subscription ends its loop; a cancel alone may land
        # inside the Redis client's read and be retried.
        for sub in (cancelled, revoked, phoned, uninvited):
            await sub.close()
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        for service in calls:
            await service.close()
        await room_events.close()
        # Rooms end with the replica, not the call: their reports are
        # finished by the replica that owns them next, or stay not ready.
        recorder.live.clear()
        with contextlib.suppress(Exception):
            await recorder.flush()
        for client in clients:
            await client.close()
        if regional_redis is not None:
            await regional_redis.aclose()


async def _plane(
    app: web.Application, settings: Settings, redis: Any
) -> tuple[Cluster, Placement | None, MediaClient | None]:
    """One control plane's cluster and, with no media worker in this
    process, its placement and media client (started)."""
    cluster = Cluster(redis, lease=settings.call_owner_lease)
    if MEDIA in app:
        return cluster, None, None
    try:
        distances = parse_distances(settings.media_region_distances)
    except ValueError as exc:
        raise ConfigError(f"media_region_distances: {exc}") from None
    client = MediaClient(redis, cluster.replica, settings.media_rpc_timeout)
    await client.start()
    cluster.renew_with(client.renew)
    return cluster, Placement(redis, distances), client


#: Seconds a join waits for the database to check its link (a region cut off
#: from it leaves connections that hang rather than fail).
LINK_CHECK_TIMEOUT = 5.0
#: Seconds a region's own plane remembers a link that passed its checks, so
#: the visit's joins and resumes go on while the database is out of reach:
#: longer than any visit.
LINK_PASSED_TTL = 6 * 3600
_DATABASE_AWAY = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)


def _passed_key(grant: RoomGrant) -> str:
    return f"wadud:call:link-passed:{grant.booking}:{grant.slot}:{grant.identity}:{grant.sid}"


async def _note_passed(redis: Any, grant: RoomGrant) -> None:
    """Remember in the region's own plane that ``grant``'s link passed."""
    from redis.exceptions import RedisError  # here: wadud serve loads no redis-py

    try:
        await redis.set(_passed_key(grant), "1", ex=LINK_PASSED_TTL)
    except (RedisError, OSError) as exc:
        log.warning("room link check not remembered: redis: %r", exc)


async def _passed_before(redis: Any, grant: RoomGrant) -> bool:
    from redis.exceptions import RedisError

    try:
        return bool(await redis.exists(_passed_key(grant)))
    except (RedisError, OSError):
        return False


async def _check_link(app: web.Application, grant: RoomGrant) -> None:
    """Refuses a link whose sign-in session or booking is over, or whose
    patient lacks a consent the clinic's region requires."""
    if grant.sid and not await _session_live(app[keys.DB], grant.identity, grant.sid):
        raise errors.BadRoomToken("you signed out since this link was made")
    if grant.invite and (closed := await invites.refusal(app[keys.DB], grant.invite)):
        raise errors.InviteClosed(closed)
    if grant.booking:
        why = await booking.calls.link_refusal(app[keys.DB], grant.booking, grant.slot)
        if why is not None:
            raise errors.BookingClosed(why.detail, reason=why.reason)
        await _require_consent(app, grant)


#: The region whose consent rules apply to the call of booking $4.
#: A visit booked elsewhere (``external_ref``) has none: its clinic collects
#: consent in its own system (booking.bookings.elsewhere).
_BOOKING_REGION = (
    "SELECT c.region FROM bookings b JOIN clinics c ON c.id = b.clinic_id"
    " WHERE b.id = $4 AND b.external_ref IS NULL"
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


async def _revocations(sub: BusSubscription, calls: CallPlanes) -> None:
    """``auth.revoked`` (wadud.messaging.revocation): the account's participants leave
    the calls whose links came from the revoked session."""
    async for msg in sub:
        rev = revocation.parse(msg.data)
        if rev is not None:
            family = str(rev.family_id) if rev.family_id is not None else None
            for service in calls:
                service.rooms.revoked(str(rev.user_id), family)


async def _end_cancelled(sub: BusSubscription, calls: CallPlanes) -> None:
    """A cancelled booking's call ends for whoever is in it (on the replica
    that owns the room; every replica hears the event)."""
    async for msg in sub:
        data = msg.data.get("data") or {}
        booking_id = data.get("booking_id")
        if isinstance(booking_id, str):
            for service in calls:
                service.rooms.end_room(booking.calls.room_of(booking_id), "booking-cancelled")


async def _phone_steps(sub: BusSubscription, calls: CallPlanes) -> None:
    """Each step of a call the bridge places reaches the visit's admins (on
    the replica that owns the room; every replica hears the event)."""
    async for msg in sub:
        event = msg.data.get("data") or {}
        room, step = event.get("room"), event.get("data")
        if isinstance(room, str) and isinstance(step, dict):
            for service in calls:
                service.rooms.phone_call(room, step)


async def _uninvited(sub: BusSubscription, calls: CallPlanes) -> None:
    """A revoked invite's guests leave the room (on the replica that owns
    it; every replica hears the message)."""
    async for msg in sub:
        room, invite = msg.data.get("room"), msg.data.get("invite_id")
        if isinstance(room, str) and isinstance(invite, str):
            for service in calls:
                service.rooms.invite_revoked(room, invite)


async def _shutdown(app: web.Application) -> None:
    for service in app.get(PLANES) or ():
        service.shutdown()


def install(app: web.Application) -> None:
    app.router.add_get("/ws", websocket, name="call-ws")
    app.router.add_post("/api/v1/calls/stats", call_stats, name="call-stats")
    app.cleanup_ctx.append(_context)
    app.on_shutdown.append(_shutdown)


__all__ = ["CALLS", "PLANES", "ice_servers_for", "install"]
