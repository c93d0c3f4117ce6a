"""One sender per channel: what goes on the wire to SMTP, web push, FCM, APNs
and the SMS/WhatsApp provider.

Each sender's ``send`` returns a short detail for the delivery log, raises
:class:`~notify.errors.DeliveryFailed` when trying again later may work, and
:class:`~notify.errors.PermanentFailure` when it never will (an unknown
device token, a refused address).

A send can succeed at the far end while its acknowledgement is lost (a
crash between the provider's answer and our commit); the delivery is then
tried again. Every request carries an id derived from the delivery's unique
key so the far end can fold the repeat: the email's ``Message-ID``, APNs'
``apns-id`` and ``apns-collapse-id``, FCM's ``collapse_key``, web push's
``Topic`` (a pending message with the same topic is replaced), and the
webhook's ``Idempotency-Key``.

Formats:

* FCM HTTP v1: ``POST /v1/projects/{project}/messages:send`` with an OAuth 2.0
  bearer token obtained from the service account (a JWT grant, RFC 7523,
  signed RS256, scope ``firebase.messaging``), body ``{"message": {...}}``.
* APNs: ``POST /3/device/{token}`` over HTTP/2, ``authorization: bearer``
  a provider token (JWT ES256, ``kid`` the key id, ``iss`` the team id,
  renewed every 40 minutes), ``apns-topic``, ``apns-push-type: alert``,
  ``apns-priority``, ``apns-expiration``; body ``{"aps": {"alert": ...}}``.
  A ring (the doctor started the visit) to a PushKit token is a VoIP push:
  ``apns-push-type: voip``, topic ``<notify_apns_topic>.voip``, priority
  10, body ``{"aps": {}, ...}`` with the app's fields, which CallKit shows.
* A ring over FCM is a data message (no ``notification``), Android priority
  high, so the app's handler runs and shows its incoming-call screen.
* Web push: RFC 8030 with VAPID (RFC 8292) and aes128gcm (RFC 8291), by
  pywebpush.
* SMS and WhatsApp: a JSON POST to the provider URL signed like Stripe's
  webhooks: ``X-Wadud-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
  "<t>.<body>">``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import logging
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import aiosmtplib
import jwt

from notify.errors import DeliveryFailed, PermanentFailure
from notify.plan import Device, Recipient
from notify.templates import TEMPLATES, Rendered
from wadud import signing
from wadud.config import Settings
from wadud.errors import ConfigError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("wadud.notify")

__all__ = [
    "Apns",
    "Channel",
    "Email",
    "Fcm",
    "Outgoing",
    "WebPush",
    "Webhook",
    "available",
    "open_channels",
    "sign_webhook",
    "vapid",
]


@dataclass(frozen=True)
class Outgoing:
    """One delivery, rendered, ready for its channel."""

    key: str  # the delivery's unique key: event, channel, recipient, device
    template: str
    rendered: Rendered
    recipient: Recipient
    params: Mapping[str, Any] = field(default_factory=dict)
    device: Device | None = None
    expires_at: float | None = None  # unix time

    @property
    def tag(self) -> str:
        """32 hex characters naming the delivery (collapse ids, topics)."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:32]

    @property
    def urgent(self) -> bool:
        return TEMPLATES[self.template].urgent

    @property
    def ring(self) -> bool:
        return TEMPLATES[self.template].ring

    def data(self) -> dict[str, str]:
        """The app's own fields in push payloads (strings only, as FCM wants).
        A ring's also say who calls and how to join: the path of the
        patient's own video link and the call page, never a room token."""
        out = {"template": self.template, "lang": self.rendered.language}
        if self.ring:
            out["title"], out["body"] = self.rendered.title, self.rendered.text
        ring = ("other", "video_link", "call_url") if self.ring else ()
        for name in ("booking_id", "conversation_id", *ring):
            if self.params.get(name):
                out[name] = str(self.params[name])
        return out


class Channel(Protocol):
    name: str

    async def send(self, msg: Outgoing) -> str: ...


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if settings.notify_ca_file:
        ctx.load_verify_locations(settings.notify_ca_file)
    return ctx


def _http_error() -> type[httpx.HTTPError]:
    """httpx's error, for the senders that use it: imported where they catch
    it, as httpx is only imported once a channel needs it (open_channels)."""
    from httpx import HTTPError

    return HTTPError


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return float(headers.get("retry-after", ""))
    except ValueError:
        return None


def _http_failure(status: int, text: str, headers: Mapping[str, str], what: str) -> DeliveryFailed:
    detail = f"{what}: HTTP {status} {text[:300]}"
    if status in (408, 429) or status >= 500:
        return DeliveryFailed(detail, retry_after=_retry_after(headers))
    return PermanentFailure(detail)


# -- email ---------------------------------------------------------------------


#: Seconds an SMTP session may sit idle before it is closed rather than
#: reused (servers drop idle clients after a minute or so).
_SMTP_IDLE = 30.0


class Email:
    name = "email"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sender = settings.notify_email_from
        self.domain = email.utils.parseaddr(self.sender)[1].rpartition("@")[2] or "wadud.invalid"
        self.tls = _ssl_context(settings)
        #: Open SMTP sessions between sends, with when each went idle: one
        #: connection, EHLO, STARTTLS and AUTH per message would cap a
        #: notifier at a few messages a second against a real provider.
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []

    def build(self, msg: Outgoing) -> EmailMessage:
        r = msg.rendered
        m = EmailMessage()
        m["From"] = self.sender
        m["To"] = email.utils.formataddr((msg.recipient.display_name, msg.recipient.email or ""))
        m["Subject"] = r.title
        m["Date"] = email.utils.formatdate(localtime=False)
        # The same delivery always has the same Message-ID: a resend after a
        # lost acknowledgement is a duplicate any mail store can fold.
        m["Message-ID"] = f"<{msg.tag}@{self.domain}>"
        m["Auto-Submitted"] = "auto-generated"
        m["X-Wadud-Notification"] = msg.template
        m.set_content(r.text)
        m.add_alternative(r.html, subtype="html")
        # After the parts exist: making the alternative moves Content-* headers
        # into the first part.
        m["Content-Language"] = r.language
        return m

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        mode = s.notify_smtp_tls
        return aiosmtplib.SMTP(
            hostname=s.notify_smtp_host,
            port=s.notify_smtp_port,
            username=s.notify_smtp_username or None,
            password=s.notify_smtp_password or None,
            use_tls=mode == "tls",
            start_tls=mode == "starttls",
            tls_context=self.tls if mode != "none" else None,
            timeout=s.notify_send_timeout,
        )

    async def _connected(self) -> aiosmtplib.SMTP:
        """An open session: an idle one that still answers NOOP, else a new one
        (connect, EHLO, STARTTLS, AUTH as configured)."""
        while self._idle:
            client, since = self._idle.pop()
            if client.is_connected and time.monotonic() - since < _SMTP_IDLE:
                try:
                    await client.noop()
                    return client
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    pass
            client.close()
        client = self._client()
        await client.connect()
        return client

    async def send(self, msg: Outgoing) -> str:
        try:
            client = await self._connected()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryFailed(f"smtp: cannot connect: {type(exc).__name__}: {exc}") from exc
        try:
            await client.send_message(self.build(msg))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            self._idle.append((client, time.monotonic()))  # the session is fine
            raise PermanentFailure(f"smtp: recipient refused: {exc}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            if 500 <= exc.code < 600:
                raise PermanentFailure(f"smtp: {exc.code} {exc.message}") from exc
            raise DeliveryFailed(f"smtp: {exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise DeliveryFailed(f"smtp: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            client.close()
            raise
        self._idle.append((client, time.monotonic()))
        return f"smtp: accepted by {self.settings.notify_smtp_host}"

    async def close(self) -> None:
        while self._idle:
            client, _ = self._idle.pop()
            try:
                await asyncio.wait_for(client.quit(), 2)
            except Exception:
                client.close()


# -- web push ------------------------------------------------------------------


def vapid(settings: Settings) -> Any:
    """The VAPID key (a py_vapid ``Vapid``) from ``notify_vapid_private_key``:
    base64url raw or DER, a PEM text, or the path of a PEM file."""
    from py_vapid import Vapid  # type: ignore[import-untyped]

    value = settings.notify_vapid_private_key.strip()
    try:
        if value.startswith("-----BEGIN"):
            return Vapid.from_pem(value.encode())
        if Path(value).is_file():
            return Vapid.from_file(value)
        return Vapid.from_string(value)
    except Exception as exc:
        raise ConfigError(f"notify_vapid_private_key: not a P-256 private key: {exc}") from None


class WebPush:
    name = "webpush"

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session
        self.key = vapid(settings)

    async def send(self, msg: Outgoing) -> str:
        from pywebpush import WebPushException, webpush_async

        assert msg.device is not None
        r = msg.rendered
        payload = json.dumps(
            {"title": r.title, "body": r.text, "dir": r.direction, **msg.data()},
            ensure_ascii=False,
        )
        ttl = 86400
        if msg.expires_at is not None:
            ttl = max(0, int(msg.expires_at - time.time()))
        try:
            resp = await webpush_async(
                subscription_info={
                    "endpoint": msg.device.token,
                    "keys": dict(msg.device.keys or {}),
                },
                data=payload,
                vapid_private_key=self.key,
                # A fresh dict each time: pywebpush writes aud and exp into it.
                vapid_claims={"sub": self.settings.notify_vapid_subject},
                ttl=ttl,
                headers={"Topic": msg.tag, "Urgency": "high" if msg.urgent else "normal"},
                timeout=self.settings.notify_send_timeout,
                aiohttp_session=self.session,
            )
        except WebPushException as exc:
            status = exc.response.status if exc.response is not None else 0
            if status in (404, 410):
                raise PermanentFailure(f"webpush: HTTP {status}", drop_device=True) from exc
            if status and status not in (408, 429) and status < 500:
                raise PermanentFailure(f"webpush: HTTP {status}") from exc
            raise DeliveryFailed(f"webpush: {exc}") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DeliveryFailed(f"webpush: {type(exc).__name__}: {exc}") from exc
        status = getattr(resp, "status", 0)
        return f"webpush: HTTP {status}"


# -- FCM HTTP v1 -----------------------------------------------------------------

_FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


class Fcm:
    name = "fcm"

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http
        try:
            account = json.loads(Path(settings.notify_fcm_service_account).read_text())
            self.project = str(account["project_id"])
            self.client_email = str(account["client_email"])
            self.private_key = str(account["private_key"])
            self.token_uri = str(account.get("token_uri") or "https://oauth2.googleapis.com/token")
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"notify_fcm_service_account: cannot use it: {exc}") from exc
        self.base = settings.notify_fcm_url.rstrip("/")
        self._token: tuple[str, float] | None = None

    async def access_token(self) -> str:
        """An OAuth 2.0 access token for FCM, from the service account by the
        JWT bearer grant (RFC 7523), reused until a minute before it expires."""
        now = time.time()
        if self._token is not None and self._token[1] - 60 > now:
            return self._token[0]
        assertion = jwt.encode(
            {
                "iss": self.client_email,
                "scope": _FCM_SCOPE,
                "aud": self.token_uri,
                "iat": int(now),
                "exp": int(now) + 3600,
            },
            self.private_key,
            algorithm="RS256",
        )
        try:
            resp = await self.http.post(
                self.token_uri,
                data={
                    "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                    "assertion": assertion,
                },
            )
        except _http_error() as exc:
            raise DeliveryFailed(f"fcm oauth: {type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            # A refused grant is our configuration's fault: keep trying (and logging).
            raise DeliveryFailed(f"fcm oauth: HTTP {resp.status_code} {resp.text[:200]}")
        body = resp.json()
        self._token = (str(body["access_token"]), now + float(body.get("expires_in", 3600)))
        return self._token[0]

    def body(self, msg: Outgoing) -> dict[str, Any]:
        assert msg.device is not None
        r = msg.rendered
        if msg.ring:
            # A data message, high priority: the app's handler runs at once
            # (even in the background) and rings; a notification message
            # would only show a banner.
            ring: dict[str, Any] = {
                "token": msg.device.token,
                "data": msg.data(),
                "android": {"priority": "high", "collapse_key": msg.tag},
            }
            if msg.expires_at is not None:
                ring["android"]["ttl"] = f"{max(0, int(msg.expires_at - time.time()))}s"
            return {"message": ring}
        message: dict[str, Any] = {
            "token": msg.device.token,
            "notification": {"title": r.title, "body": r.text},
            "data": msg.data(),
            "android": {"priority": "high" if msg.urgent else "normal", "collapse_key": msg.tag},
            "apns": {"headers": {"apns-collapse-id": msg.tag}},
        }
        if msg.expires_at is not None:
            message["android"]["ttl"] = f"{max(0, int(msg.expires_at - time.time()))}s"
        return {"message": message}

    async def send(self, msg: Outgoing) -> str:
        token = await self.access_token()
        url = f"{self.base}/v1/projects/{self.project}/messages:send"
        try:
            resp = await self.http.post(
                url, json=self.body(msg), headers={"Authorization": f"Bearer {token}"}
            )
        except _http_error() as exc:
            raise DeliveryFailed(f"fcm: {type(exc).__name__}: {exc}") from exc
        if resp.status_code == 200:
            return f"fcm: {resp.json().get('name', '')}"
        if resp.status_code == 401:
            self._token = None
            raise DeliveryFailed("fcm: access token refused; fetching a new one")
        if resp.status_code == 404 or "UNREGISTERED" in resp.text:
            raise PermanentFailure(f"fcm: token unregistered: {resp.text[:200]}", drop_device=True)
        raise _http_failure(resp.status_code, resp.text, resp.headers, "fcm")


# -- APNs ----------------------------------------------------------------------

#: APNs refuses a provider token older than an hour and one renewed more than
#: every 20 minutes; 40 minutes sits between.
_APNS_TOKEN_LIFE = 40 * 60


class Apns:
    name = "apns"

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http
        try:
            self.key = Path(settings.notify_apns_key_file).read_text()
        except OSError as exc:
            raise ConfigError(f"notify_apns_key_file: cannot read it: {exc}") from exc
        self.base = settings.notify_apns_url.rstrip("/")
        self._token: tuple[str, float] | None = None

    def provider_token(self) -> str:
        now = time.time()
        if self._token is None or now - self._token[1] > _APNS_TOKEN_LIFE:
            token = jwt.encode(
                {"iss": self.settings.notify_apns_team_id, "iat": int(now)},
                self.key,
                algorithm="ES256",
                headers={"kid": self.settings.notify_apns_key_id},
            )
            self._token = (token, now)
        return self._token[0]

    def request(self, msg: Outgoing) -> tuple[str, dict[str, str], dict[str, Any]]:
        assert msg.device is not None
        r = msg.rendered
        if msg.device.voip:
            # PushKit: the app must report a call to CallKit on it, which
            # rings like a phone call; nothing but a ring goes to this token.
            voip = {
                "authorization": f"bearer {self.provider_token()}",
                "apns-topic": f"{self.settings.notify_apns_topic}.voip",
                "apns-push-type": "voip",
                "apns-priority": "10",
                "apns-expiration": str(int(msg.expires_at or time.time() + 60)),
                "apns-collapse-id": msg.tag,
                "apns-id": str(uuid.uuid5(uuid.NAMESPACE_URL, msg.key)),
            }
            return f"{self.base}/3/device/{msg.device.token}", voip, {"aps": {}, **msg.data()}
        headers = {
            "authorization": f"bearer {self.provider_token()}",
            "apns-topic": self.settings.notify_apns_topic,
            "apns-push-type": "alert",
            "apns-priority": "10" if msg.urgent else "5",
            # 0 would mean "try once, never store"; a receipt can wait a day.
            "apns-expiration": str(int(msg.expires_at or time.time() + 86400)),
            "apns-collapse-id": msg.tag,
            "apns-id": str(uuid.uuid5(uuid.NAMESPACE_URL, msg.key)),
        }
        body = {
            "aps": {"alert": {"title": r.title, "body": r.text}, "sound": "default"},
            **msg.data(),
        }
        return f"{self.base}/3/device/{msg.device.token}", headers, body

    async def send(self, msg: Outgoing) -> str:
        url, headers, body = self.request(msg)
        try:
            resp = await self.http.post(url, json=body, headers=headers)
        except _http_error() as exc:
            raise DeliveryFailed(f"apns: {type(exc).__name__}: {exc}") from exc
        if resp.status_code == 200:
            return f"apns: {resp.headers.get('apns-id', '')}"
        reason = ""
        with contextlib.suppress(ValueError):
            reason = str(resp.json().get("reason", ""))
        if resp.status_code == 410 or reason in (
            "BadDeviceToken",
            "Unregistered",
            "DeviceTokenNotForTopic",
        ):
            raise PermanentFailure(f"apns: {resp.status_code} {reason}", drop_device=True)
        if resp.status_code == 403 and reason in ("ExpiredProviderToken", "InvalidProviderToken"):
            self._token = None
            raise DeliveryFailed(f"apns: {reason}")
        raise _http_failure(resp.status_code, reason or resp.text, resp.headers, "apns")


# -- SMS and WhatsApp: signed webhooks -----------------------------------------


def sign_webhook(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Wadud-Signature`` value of ``body`` sent at ``timestamp``."""
    return signing.sign(body, secret, timestamp)


class Webhook:
    def __init__(self, name: str, url: str, settings: Settings, http: httpx.AsyncClient) -> None:
        self.name = name
        self.url = url
        self.secret = settings.notify_webhook_secret
        self.http = http

    async def send(self, msg: Outgoing) -> str:
        r = msg.rendered
        payload: dict[str, Any] = {
            "id": msg.tag,
            "channel": self.name,
            "to": msg.recipient.phone,
            "language": r.language,
            "title": r.title,
            "text": r.text,
            "template": msg.template,
        }
        if self.name == "whatsapp" and r.parameters:
            # A business-initiated WhatsApp message is a template Meta
            # approved, filled in with these, in order.
            payload["parameters"] = list(r.parameters)
        body = json.dumps(
            payload,
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Idempotency-Key": msg.tag,
            "X-Wadud-Signature": sign_webhook(self.secret, int(time.time()), body),
        }
        try:
            resp = await self.http.post(self.url, content=body, headers=headers)
        except _http_error() as exc:
            raise DeliveryFailed(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if 200 <= resp.status_code < 300:
            return f"{self.name}: HTTP {resp.status_code}"
        raise _http_failure(resp.status_code, resp.text, resp.headers, self.name)


# -- which channels this server has ----------------------------------------------


def available(settings: Settings) -> frozenset[str]:
    """The channels the settings configure."""
    s = settings
    out = set()
    if s.notify_smtp_host:
        out.add("email")
    if s.notify_vapid_private_key:
        out.add("webpush")
    if s.notify_fcm_service_account:
        out.add("fcm")
    if s.notify_apns_key_file and s.notify_apns_key_id and s.notify_apns_team_id:
        out.add("apns")
    if s.notify_sms_url:
        out.add("sms")
    if s.notify_whatsapp_url:
        out.add("whatsapp")
    return frozenset(out)


#: The channels whose senders go over the shared httpx client.
_OVER_HTTPX = frozenset({"fcm", "apns", "sms", "whatsapp"})


@dataclass
class Channels:
    """The open senders, and what they hold open (HTTP clients)."""

    senders: dict[str, Channel]
    #: Each only when a configured channel uses it.
    http: httpx.AsyncClient | None = None
    session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        for sender in self.senders.values():
            if isinstance(sender, Email):
                await sender.close()
        if self.http is not None:
            await self.http.aclose()
        if self.session is not None:
            await self.session.close()


def check_settings(settings: Settings) -> None:
    s = settings
    if s.notify_smtp_tls not in ("starttls", "tls", "none"):
        raise ConfigError("notify_smtp_tls must be starttls, tls or none")
    if (s.notify_sms_url or s.notify_whatsapp_url) and not s.notify_webhook_secret:
        raise ConfigError("notify_webhook_secret is needed to sign SMS and WhatsApp webhooks")
    if s.notify_apns_key_file and not s.notify_apns_topic:
        raise ConfigError("notify_apns_topic (the app's bundle id) is needed for APNs")
    if s.notify_vapid_private_key and not s.notify_vapid_subject:
        raise ConfigError("notify_vapid_subject (mailto: or https: contact) is needed for web push")


async def open_channels(settings: Settings) -> Channels:
    """Every configured sender. FCM, APNs and the SMS and WhatsApp webhooks
    share one HTTP/2 client (APNs needs HTTP/2; the others are happy with
    it), web push an aiohttp session (pywebpush's). Each is made, and httpx
    imported (with its CLI, about 7 MB where rich and click are installed),
    only when a channel needs it: a server with no channel holds neither."""
    check_settings(settings)
    have = available(settings)
    opened = Channels({})
    senders = opened.senders
    try:
        if "email" in have:
            senders["email"] = Email(settings)
        if "webpush" in have or have & _OVER_HTTPX:
            ctx = _ssl_context(settings)
        if "webpush" in have:
            opened.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
            senders["webpush"] = WebPush(settings, opened.session)
        if have & _OVER_HTTPX:
            import httpx

            http = httpx.AsyncClient(http2=True, verify=ctx, timeout=settings.notify_send_timeout)
            opened.http = http
            if "fcm" in have:
                senders["fcm"] = Fcm(settings, http)
            if "apns" in have:
                senders["apns"] = Apns(settings, http)
            for name, url in (
                ("sms", settings.notify_sms_url),
                ("whatsapp", settings.notify_whatsapp_url),
            ):
                if name in have:
                    senders[name] = Webhook(name, url, settings, http)
    except BaseException:
        await opened.close()
        raise
    return opened
