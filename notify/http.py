"""Notifications over HTTP: a user's language, time zone, phone, channels,
muted categories and quiet hours; their push devices; what was sent to them.

``install`` adds the routes (every role that serves HTTP); ``install_worker``
also runs a :class:`~notify.service.Notifier` in the process (``wadud serve``,
unless ``notify_in_serve`` is off).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

from aiohttp import web
from pydantic import AfterValidator, Field, StringConstraints

from notify import channels as ch
from notify.errors import DeviceNotFound, InvalidPreferences
from notify.service import Notifier
from notify.templates import zone
from wadud.state import keys
from wadud.web import workers
from wadud.web.api import ApiModel, Call, Routes

log = logging.getLogger("wadud.notify")

__all__ = ["NOTIFIER", "install", "install_worker", "routes"]

NOTIFIER = web.AppKey("notifier", Notifier)

routes = Routes("notifications", "Notification preferences, push devices and the delivery log.")

Channel = Literal["email", "webpush", "fcm", "apns", "sms", "whatsapp"]
Category = Literal["booking", "reminder", "payment", "chat", "call"]
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


def _zone_name(value: str | None) -> str | None:
    if value is None:
        return None
    if zone(value).key != value:
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Asia/Karachi)")
    return value


def _hhmm(value: str | None) -> str | None:
    if value is not None and not _HHMM.match(value):
        raise ValueError("a local time is HH:MM, 00:00 to 23:59")
    return value


TimeZone = Annotated[str | None, StringConstraints(max_length=64), AfterValidator(_zone_name)]
LocalTime = Annotated[str | None, AfterValidator(_hhmm)]
PushKey = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Phone = Annotated[str | None, StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$")]


def _default_channels() -> list[Channel]:
    return ["email", "webpush", "fcm", "apns"]


class PreferencesIn(ApiModel):
    locale: Literal["en", "ur", "ar"] | None = None
    time_zone: TimeZone = None
    phone: Phone = None
    channels: list[Channel] = Field(default_factory=_default_channels, max_length=6)
    muted: list[Category] = Field(default_factory=list, max_length=5)
    quiet_start: LocalTime = None
    quiet_end: LocalTime = None


class PreferencesOut(ApiModel):
    locale: str | None
    time_zone: str | None
    phone: str | None
    channels: list[str]
    muted: list[str]
    quiet_start: str | None
    quiet_end: str | None
    #: Channels this server can send on.
    available: list[str]


class DeviceIn(ApiModel):
    kind: Literal["webpush", "fcm", "apns"]
    #: FCM registration token, APNs device token (hex), or the web push endpoint URL.
    token: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    #: Web push only: the subscription's ``p256dh`` and ``auth`` keys.
    keys: dict[Literal["p256dh", "auth"], PushKey] | None = None
    #: APNs only: a PushKit (VoIP) token, which gets the incoming-visit ring
    #: as a VoIP push and nothing else (register the app's alert token apart).
    voip: bool = False


class DeviceOut(ApiModel):
    id: UUID
    kind: str
    created_at: dt.datetime
    voip: bool = False


class DeliveryOut(ApiModel):
    channel: str
    template: str
    status: str
    attempts: int
    created_at: dt.datetime
    sent_at: dt.datetime | None
    last_error: str | None


class VapidKey(ApiModel):
    #: The ``applicationServerKey`` for ``pushManager.subscribe`` (base64url).
    public_key: str


def _hm(value: dt.time | None) -> str | None:
    return value.strftime("%H:%M") if value is not None else None


async def _preferences(call: Call[Any, None]) -> PreferencesOut:
    me = call.user.user_id
    row = await call.pool.fetchrow(
        """SELECT u.locale, u.time_zone, u.phone,
                  coalesce(p.channels, '{email,webpush,fcm,apns}') AS channels,
                  coalesce(p.muted, '{}') AS muted, p.quiet_start, p.quiet_end
           FROM users u LEFT JOIN notify_preferences p ON p.user_id = u.id WHERE u.id = $1""",
        me,
    )
    assert row is not None
    return PreferencesOut(
        locale=row["locale"],
        time_zone=row["time_zone"],
        phone=row["phone"],
        channels=list(row["channels"]),
        muted=list(row["muted"]),
        quiet_start=_hm(row["quiet_start"]),
        quiet_end=_hm(row["quiet_end"]),
        available=sorted(ch.available(call.settings)),
    )


@routes.get("/api/v1/me/notifications", returns=PreferencesOut, auth="any")
async def get_preferences(call: Call[None, None]) -> PreferencesOut:
    """My notification preferences, language, time zone and phone."""
    return await _preferences(call)


@routes.put("/api/v1/me/notifications", body=PreferencesIn, returns=PreferencesOut, auth="any")
async def put_preferences(call: Call[PreferencesIn, None]) -> PreferencesOut:
    """Set my notification preferences.

    ``quiet_start`` and ``quiet_end`` are local times (in ``time_zone``);
    during them push, SMS and WhatsApp wait until the end (email and the
    15-minute reminder do not). Give both or neither."""
    b = call.body
    if (b.quiet_start is None) != (b.quiet_end is None):
        raise InvalidPreferences("give quiet_start and quiet_end together, or neither")
    me = call.user.user_id
    async with call.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE users SET locale = $2, time_zone = $3, phone = $4 WHERE id = $1",
            me,
            b.locale,
            b.time_zone,
            b.phone,
        )
        await conn.execute(
            """INSERT INTO notify_preferences (user_id, channels, muted, quiet_start, quiet_end)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (user_id) DO UPDATE SET channels = $2, muted = $3,
                   quiet_start = $4, quiet_end = $5, updated_at = now()""",
            me,
            sorted(set(b.channels)),
            sorted(set(b.muted)),
            dt.time.fromisoformat(b.quiet_start) if b.quiet_start else None,
            dt.time.fromisoformat(b.quiet_end) if b.quiet_end else None,
        )
    return await _preferences(call)


def _device_out(row: Any) -> DeviceOut:
    return DeviceOut(id=row["id"], kind=row["kind"], created_at=row["created_at"], voip=row["voip"])


def _check_push_endpoint(url: str) -> None:
    """A browser's push service is a public https host (fcm.googleapis.com,
    updates.push.services.mozilla.com, web.push.apple.com, ...). The notifier
    POSTs to whatever a user registers, so an address inside the network
    (an IP literal or localhost) is refused: no reaching internal services
    through it."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    literal = True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        literal = False
    if parts.scheme != "https" or not host or literal or host == "localhost" or "." not in host:
        raise InvalidPreferences("a web push endpoint is an https URL on a public push service")


@routes.post("/api/v1/me/devices", body=DeviceIn, returns=DeviceOut, status=201, auth="any")
async def add_device(call: Call[DeviceIn, None]) -> DeviceOut:
    """Register this device or browser for push notifications.

    A token already registered moves to the caller (a phone changes hands,
    or another account signs in on it)."""
    b = call.body
    if b.kind == "webpush" and not (b.keys and "p256dh" in b.keys and "auth" in b.keys):
        raise InvalidPreferences("a web push subscription needs keys.p256dh and keys.auth")
    if b.kind == "webpush":
        _check_push_endpoint(b.token)
    if b.voip and b.kind != "apns":
        raise InvalidPreferences("voip is for APNs PushKit tokens only")
    row = await call.pool.fetchrow(
        """INSERT INTO notify_devices (user_id, kind, token, keys, voip)
           VALUES ($1, $2, $3, $4::jsonb, $5)
           ON CONFLICT (kind, token) DO UPDATE SET user_id = $1, keys = $4::jsonb, voip = $5,
               created_at = now()
           RETURNING id, kind, created_at, voip""",
        call.user.user_id,
        b.kind,
        b.token,
        dict(b.keys) if b.keys else None,
        b.voip,
    )
    return _device_out(row)


@routes.get("/api/v1/me/devices", returns=list[DeviceOut], auth="any")
async def list_devices(call: Call[None, None]) -> list[DeviceOut]:
    """My registered push devices."""
    rows = await call.pool.fetch(
        """SELECT id, kind, created_at, voip FROM notify_devices
           WHERE user_id = $1 ORDER BY created_at""",
        call.user.user_id,
    )
    return [_device_out(r) for r in rows]


@routes.delete("/api/v1/me/devices/{id:uuid}", returns=None, status=204, auth="any")
async def remove_device(call: Call[None, None]) -> None:
    """Stop push notifications to one of my devices."""
    done = await call.pool.fetchval(
        "DELETE FROM notify_devices WHERE id = $1 AND user_id = $2 RETURNING true",
        call.path_uuid("id"),
        call.user.user_id,
    )
    if not done:
        raise DeviceNotFound("no such device of yours")


@routes.get("/api/v1/me/notifications/log", returns=list[DeliveryOut], auth="any")
async def delivery_log(call: Call[None, None]) -> list[DeliveryOut]:
    """The last 50 notifications sent (or being tried) to me, newest first."""
    rows = await call.pool.fetch(
        """SELECT d.channel, j.template, d.status, d.attempts, d.created_at, d.sent_at,
                  d.last_error
           FROM notify_deliveries d JOIN notify_jobs j ON j.key = d.job_key
           WHERE d.recipient_id = $1 ORDER BY d.created_at DESC, d.id DESC LIMIT 50""",
        call.user.user_id,
    )
    return [DeliveryOut(**dict(r)) for r in rows]


@routes.get("/api/v1/notify/vapid-key", returns=VapidKey, auth="public")
async def vapid_key(call: Call[None, None]) -> VapidKey:
    """The server's VAPID public key, for a browser's push subscription (404
    when web push is not configured)."""
    from cryptography.hazmat.primitives import serialization

    from wadud.errors import NotFound

    if not call.settings.notify_vapid_private_key:
        raise NotFound("web push is not configured on this server")
    raw = ch.vapid(call.settings).public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return VapidKey(public_key=base64.urlsafe_b64encode(raw).rstrip(b"=").decode())


async def _worker(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    if not settings.notify_in_serve:
        yield
        return
    opened = await ch.open_channels(settings)
    try:
        async with workers.in_app(app, NOTIFIER, Notifier(app[keys.DB], settings, opened.senders)):
            log.info("notifier running in this process", extra={"channels": sorted(opened.senders)})
            yield
    finally:
        await opened.close()


def install(app: web.Application) -> None:
    routes.install(app)


def install_worker(app: web.Application) -> None:
    app.cleanup_ctx.append(_worker)
