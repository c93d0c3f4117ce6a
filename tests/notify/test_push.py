"""Push and webhook channels against a real local HTTPS server that speaks
HTTP/2 (hypercorn): the requests must match what FCM HTTP v1, APNs, web push
services (RFC 8030/8291/8292) and an SMS/WhatsApp provider expect."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from notify import channels as ch
from notify.service import Notifier
from tests.notify.conftest import Inbox, Peer, Request, Tls, World
from wadud.config import Settings
from wadud.messaging import outbox

TOKEN = "ya29.test-access-token"
APNS_DEVICE = "a1b2c3d4" * 8
FCM_DEVICE = "fcm-registration-token-1"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclasses.dataclass
class Keys:
    fcm_private: rsa.RSAPrivateKey
    apns_private: ec.EllipticCurvePrivateKey
    vapid_private: ec.EllipticCurvePrivateKey
    subscriber: ec.EllipticCurvePrivateKey
    auth: bytes


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
        os.urandom(16),
    )


@pytest.fixture
def push_settings(
    notify_settings: Settings, peer: Peer, tls: Tls, keys: Keys, tmp_path: Path
) -> Settings:
    account = tmp_path / "service-account.json"
    account.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "wadud-test",
                "client_email": "notifier@wadud-test.iam.gserviceaccount.com",
                "private_key": keys.fcm_private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode(),
                "token_uri": f"{peer.url}/token",
            }
        )
    )
    p8 = tmp_path / "AuthKey_KEY1234567.p8"
    p8.write_bytes(
        keys.apns_private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    raw = keys.vapid_private.private_numbers().private_value.to_bytes(32, "big")
    return dataclasses.replace(
        notify_settings,
        notify_ca_file=str(tls.ca_file),
        notify_fcm_service_account=str(account),
        notify_fcm_url=peer.url,
        notify_apns_key_file=str(p8),
        notify_apns_key_id="KEY1234567",
        notify_apns_team_id="TEAM987654",
        notify_apns_topic="pk.wadud.patient",
        notify_apns_url=peer.url,
        notify_vapid_private_key=b64url(raw),
        notify_vapid_subject="mailto:ops@wadud.test",
        notify_sms_url=f"{peer.url}/hooks/sms",
        notify_whatsapp_url=f"{peer.url}/hooks/whatsapp",
        notify_webhook_secret="whsec-test-secret",
    )


@pytest.fixture
async def notifier(pool: asyncpg.Pool, push_settings: Settings) -> AsyncIterator[Notifier]:
    opened = await ch.open_channels(push_settings)
    try:
        yield Notifier(pool, push_settings, opened.senders)
    finally:
        await opened.close()


async def _devices(pool: asyncpg.Pool, world: World, keys: Keys, peer: Peer) -> None:
    pub = keys.subscriber.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    await pool.executemany(
        "INSERT INTO notify_devices (user_id, kind, token, keys) VALUES ($1, $2, $3, $4::jsonb)",
        [
            (world.patient, "fcm", FCM_DEVICE, None),
            (world.patient, "apns", APNS_DEVICE, None),
            (
                world.patient,
                "webpush",
                f"{peer.url}/push/subscription-1",
                {"p256dh": b64url(pub), "auth": b64url(keys.auth)},
            ),
        ],
    )


async def _paid(pool: asyncpg.Pool, world: World, amount: int = 150_000) -> str:
    """The outbox event a captured payment writes (booking.payments.checkout.verdicts)."""
    payment_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        await outbox.emit(
            conn,
            "payment.succeeded",
            {
                "payment_id": payment_id,
                "booking_id": str(uuid.uuid4()),
                "clinic_id": str(world.clinic_id),
                "patient_id": str(world.patient),
                "gateway": "sandbox",
                "status": "succeeded",
                "amount_minor": amount,
                "currency": "PKR",
                "refunded_minor": 0,
            },
        )
    return payment_id


async def test_fcm_v1_and_apns_requests_match_the_services_formats(
    pool: asyncpg.Pool, world: World, keys: Keys, peer: Peer, notifier: Notifier, smtp: Inbox
) -> None:
    await pool.execute(
        "INSERT INTO notify_preferences (user_id, channels) VALUES ($1, '{fcm,apns}')",
        world.patient,
    )
    await _devices(pool, world, keys, peer)
    peer.answers["/token"] = lambda req: (
        200,
        {"content-type": "application/json"},
        json.dumps({"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"}).encode(),
    )
    peer.answers["/v1/projects/"] = lambda req: (
        200,
        {"content-type": "application/json"},
        b'{"name": "projects/wadud-test/messages/0:123"}',
    )
    peer.answers["/3/device/"] = lambda req: (200, {"apns-id": req.headers["apns-id"]}, b"")
    before = int(dt.datetime.now(dt.UTC).timestamp())
    payment_id = await _paid(pool, world)

    assert await notifier.run_until_idle() == 2
    assert smtp.messages == []  # email was not among the chosen channels

    # FCM: an OAuth 2.0 token from the service account (RFC 7523 JWT grant)...
    (grant,) = peer.to("/token")
    assert grant.method == "POST"
    assert grant.headers["content-type"] == "application/x-www-form-urlencoded"
    form = dict(p.split("=", 1) for p in grant.body.decode().split("&"))
    assert form["grant_type"] == "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
    claims = jwt.decode(
        form["assertion"],
        keys.fcm_private.public_key(),
        algorithms=["RS256"],
        audience=f"{peer.url}/token",
    )
    assert claims["iss"] == "notifier@wadud-test.iam.gserviceaccount.com"
    assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
    assert claims["exp"] - claims["iat"] == 3600
    # ...then the v1 send.
    (send,) = peer.to("/v1/projects/")
    assert send.http_version == "2"
    assert (send.method, send.path) == ("POST", "/v1/projects/wadud-test/messages:send")
    assert send.headers["authorization"] == f"Bearer {TOKEN}"
    assert send.headers["content-type"] == "application/json"
    message = send.json()["message"]
    assert set(message) <= {"token", "notification", "data", "android", "apns", "webpush"}
    assert message["token"] == FCM_DEVICE
    assert message["notification"]["title"] == "ادائیگی موصول"
    assert "PKR 1,500.00" in message["notification"]["body"]
    assert payment_id[:8] in message["notification"]["body"]
    assert all(isinstance(v, str) for v in message["data"].values())
    assert message["data"]["template"] == "payment_receipt"
    assert message["android"]["priority"] in ("normal", "high")

    # APNs: HTTP/2, a provider token signed ES256 with the key id, the topic.
    (push,) = peer.to("/3/device/")
    assert push.http_version == "2"
    assert (push.method, push.path) == ("POST", f"/3/device/{APNS_DEVICE}")
    h = push.headers
    assert h["apns-topic"] == "pk.wadud.patient"
    assert h["apns-push-type"] == "alert"
    assert h["apns-priority"] in ("5", "10")
    assert h["apns-expiration"].isdigit()
    assert uuid.UUID(h["apns-id"])  # a canonical UUID
    assert len(h["apns-collapse-id"].encode()) <= 64
    scheme, _, token = h["authorization"].partition(" ")
    assert scheme == "bearer"
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == "KEY1234567"
    provider = jwt.decode(token, keys.apns_private.public_key(), algorithms=["ES256"])
    assert provider["iss"] == "TEAM987654"
    assert before - 5 <= provider["iat"] <= before + 30
    body = push.json()
    assert body["aps"]["alert"]["title"] == "ادائیگی موصول"
    assert "PKR 1,500.00" in body["aps"]["alert"]["body"]
    assert body["template"] == "payment_receipt"

    log = await pool.fetch("SELECT channel, status, attempts FROM notify_deliveries ORDER BY 1")
    assert [tuple(r) for r in log] == [("apns", "sent", 1), ("fcm", "sent", 1)]


async def test_an_unregistered_device_is_forgotten_and_not_retried(
    pool: asyncpg.Pool, world: World, keys: Keys, peer: Peer, notifier: Notifier
) -> None:
    await pool.execute(
        "INSERT INTO notify_preferences (user_id, channels) VALUES ($1, '{apns}')", world.patient
    )
    await _devices(pool, world, keys, peer)
    peer.answers["/3/device/"] = lambda req: (
        410,
        {"content-type": "application/json"},
        b'{"reason": "Unregistered", "timestamp": 1700000000000}',
    )
    await _paid(pool, world)
    await notifier.run_until_idle()
    row = await pool.fetchrow("SELECT status, attempts, last_error FROM notify_deliveries")
    assert row is not None
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert "Unregistered" in row["last_error"]
    assert await pool.fetchval("SELECT count(*) FROM notify_devices WHERE kind = 'apns'") == 0
    assert len(peer.to("/3/device/")) == 1


async def test_web_push_is_encrypted_for_the_subscription_and_signed_with_vapid(
    pool: asyncpg.Pool, world: World, keys: Keys, peer: Peer, notifier: Notifier
) -> None:
    import http_ece

    await pool.execute(
        "INSERT INTO notify_preferences (user_id, channels) VALUES ($1, '{webpush}')",
        world.patient,
    )
    await _devices(pool, world, keys, peer)
    peer.answers["/push/"] = lambda req: (201, {}, b"")
    await _paid(pool, world)
    assert await notifier.run_until_idle() == 1

    (req,) = peer.to("/push/")
    assert (req.method, req.path) == ("POST", "/push/subscription-1")
    h = req.headers
    assert h["content-encoding"] == "aes128gcm"
    assert int(h["ttl"]) > 0
    assert h["urgency"] in ("normal", "high")
    assert len(h["topic"]) <= 32
    # RFC 8292: "vapid t=<JWT>, k=<public key>"; the JWT is ES256 by that key.
    scheme, _, params = h["authorization"].partition(" ")
    assert scheme == "vapid"
    fields = dict(p.strip().split("=", 1) for p in params.split(","))
    expected_k = keys.vapid_private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert unb64url(fields["k"]) == expected_k
    claims = jwt.decode(
        fields["t"], keys.vapid_private.public_key(), algorithms=["ES256"], audience=peer.url
    )
    assert claims["sub"] == "mailto:ops@wadud.test"
    # Only the subscriber's private key opens the payload (RFC 8291).
    plain = http_ece.decrypt(
        req.body, private_key=keys.subscriber, auth_secret=keys.auth, version="aes128gcm"
    )
    payload = json.loads(plain)
    assert payload["title"] == "ادائیگی موصول"
    assert payload["dir"] == "rtl"
    assert payload["template"] == "payment_receipt"


def _verify(req: Request, secret: str) -> dict[str, object]:
    parts = dict(p.split("=", 1) for p in req.headers["x-wadud-signature"].split(","))
    mac = hmac.new(secret.encode(), f"{parts['t']}.".encode() + req.body, hashlib.sha256)
    assert hmac.compare_digest(parts["v1"], mac.hexdigest())
    assert abs(int(parts["t"]) - dt.datetime.now(dt.UTC).timestamp()) < 60
    out: dict[str, object] = req.json()
    return out


async def test_sms_and_whatsapp_are_signed_webhooks_retried_with_backoff(
    pool: asyncpg.Pool, world: World, peer: Peer, notifier: Notifier
) -> None:
    await pool.execute(
        "INSERT INTO notify_preferences (user_id, channels) VALUES ($1, '{sms,whatsapp}')",
        world.patient,
    )
    # The SMS provider is down once (503), then takes it; WhatsApp refuses (400).
    peer.answers["/hooks/sms"] = [(503, {"retry-after": "1"}, b"busy")]
    peer.answers["/hooks/whatsapp"] = [(400, {}, b"template not approved")]
    await _paid(pool, world)
    assert await notifier.run_until_idle() == 0  # nothing went through yet

    first = await pool.fetchrow(
        "SELECT status, attempts, next_attempt_at FROM notify_deliveries WHERE channel = 'sms'"
    )
    assert first is not None
    assert (first["status"], first["attempts"]) == ("pending", 1)
    wait = (first["next_attempt_at"] - dt.datetime.now(dt.UTC)).total_seconds()
    assert 0.5 < wait <= 1.1  # max(backoff 0.2 s, Retry-After 1 s)
    wa = await pool.fetchrow(
        "SELECT status, attempts FROM notify_deliveries WHERE channel = 'whatsapp'"
    )
    assert wa is not None and tuple(wa) == ("failed", 1)  # a 4xx is not retried

    sms_before = len(peer.to("/hooks/sms"))
    assert await notifier.run_until_idle() == 0  # not due yet: no second try
    assert len(peer.to("/hooks/sms")) == sms_before
    await _sleep_until(first["next_attempt_at"])
    assert await notifier.run_until_idle() == 1

    tries = peer.to("/hooks/sms")
    assert len(tries) == 2
    assert tries[0].headers["idempotency-key"] == tries[1].headers["idempotency-key"]
    body = _verify(tries[1], "whsec-test-secret")
    assert body["channel"] == "sms"
    assert body["to"] == "+923001234567"
    assert body["language"] == "ur"
    assert "PKR 1,500.00" in str(body["text"])
    assert _verify(peer.to("/hooks/whatsapp")[0], "whsec-test-secret")["channel"] == "whatsapp"

    attempts = await pool.fetch(
        """SELECT a.attempt, a.ok FROM notify_attempts a
           JOIN notify_deliveries d ON d.id = a.delivery_id WHERE d.channel = 'sms'
           ORDER BY a.attempt"""
    )
    assert [tuple(a) for a in attempts] == [(1, False), (2, True)]


async def _sleep_until(when: dt.datetime) -> None:
    import asyncio

    await asyncio.sleep(max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds()) + 0.05)


def test_the_vapid_key_is_read_raw_as_pem_text_or_from_a_pem_file(
    push_settings: Settings, keys: Keys, tmp_path: Path
) -> None:
    pem = keys.vapid_private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp_path / "vapid.pem"
    path.write_text(pem)
    want = keys.vapid_private.public_key().public_numbers()
    for value in (push_settings.notify_vapid_private_key, pem, str(path)):
        s = dataclasses.replace(push_settings, notify_vapid_private_key=value)
        assert ch.vapid(s).public_key.public_numbers() == want
    with pytest.raises(ch.ConfigError):
        ch.vapid(dataclasses.replace(push_settings, notify_vapid_private_key="bm90IGEga2V5"))
