"""A guest's invitation (issue 39, ``invite.created``): one message to the
address on the channel the inviter chose, in the guest's language, with a
link whose key is the invite's, through the real SMTP server and the signed
SMS/WhatsApp webhooks of a real HTTPS server; never the key in a log line or
the delivery log."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from notify.service import Notifier
from tests.notify.conftest import Inbox, Peer, Request, Tls, World, started
from tests.polling import wait_until
from wadud.config import Settings
from wadud.messaging import outbox
from wadud.web.auth import invite_key

SECRET = "whsec-invites"
LINK = re.compile(
    r"https://wadud\.test/call/(?P<room>[^?\s]+)"
    r"\?invite=(?P<id>[0-9a-f-]{36})\.(?P<key>[A-Za-z0-9_-]+)"
)


@pytest.fixture
def guest_settings(notify_settings: Settings, peer: Peer, tls: Tls) -> Settings:
    """Email, SMS and WhatsApp, as a deployment that sends invitations has them."""
    return dataclasses.replace(
        notify_settings,
        notify_ca_file=str(tls.ca_file),
        notify_sms_url=f"{peer.url}/hooks/sms",
        notify_whatsapp_url=f"{peer.url}/hooks/whatsapp",
        notify_webhook_secret=SECRET,
    )


@pytest.fixture
async def running(pool: asyncpg.Pool, guest_settings: Settings) -> AsyncIterator[Notifier]:
    """A notifier with its loops running, as in ``wadud notify``."""
    async with started(pool, guest_settings) as n:
        yield n


async def invite(pool: asyncpg.Pool, **fields: Any) -> uuid.UUID:
    """The event the invites' code writes with a new invitation."""
    now = dt.datetime.now(dt.UTC)
    payload = {
        "invite_id": str(uuid.uuid4()),
        "room": "shifa:visit-7",
        "role": "interpreter",
        "name": "Sana Malik",
        "inviter": "Dr. Ayesha Khan",
        "channel": "sms",
        "address": "+923001234567",
        "locale": "en",
        "not_before": (now - dt.timedelta(minutes=1)).isoformat(),
        "expires_at": (now + dt.timedelta(hours=2)).isoformat(),
        "clinic_id": None,
        **fields,
    }
    async with pool.acquire() as conn, conn.transaction():
        await outbox.emit(conn, "invite.created", payload)
    return uuid.UUID(payload["invite_id"])


def signed(req: Request) -> dict[str, Any]:
    parts = dict(p.split("=", 1) for p in req.headers["x-wadud-signature"].split(","))
    mac = hmac.new(SECRET.encode(), f"{parts['t']}.".encode() + req.body, hashlib.sha256)
    assert hmac.compare_digest(parts["v1"], mac.hexdigest())
    out: dict[str, Any] = req.json()
    return out


def link_in(text: str, settings: Settings, invite_id: uuid.UUID) -> str:
    """The link in ``text``, checked: the invite's id, and the key made for it."""
    found = LINK.search(text)
    assert found, text
    assert urllib.parse.unquote(found["room"]) == "shifa:visit-7"
    assert found["room"] == "shifa%3Avisit-7"
    assert found["id"] == str(invite_id)
    assert found["key"] == invite_key(settings, invite_id)
    return found["key"]


async def test_a_guest_hears_on_the_channel_the_inviter_chose_in_their_language(
    pool: asyncpg.Pool,
    world: World,
    peer: Peer,
    smtp: Inbox,
    guest_settings: Settings,
    running: Notifier,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="wadud.notify")
    # The SMS provider is busy once and says so quoting the message (link
    # and all): the retry goes through, and the quote is kept without the key.
    peer.answers["/hooks/sms"] = lambda req: (
        (503, {}, f"busy: {req.json()['text']}".encode())
        if len(peer.to("/hooks/sms")) == 1
        else (200, {}, b"{}")
    )
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    sms = await invite(
        pool,
        locale="ur",
        not_before=later.isoformat(),
        expires_at=(later + dt.timedelta(hours=1)).isoformat(),
    )
    wa = await invite(
        pool,
        channel="whatsapp",
        address="+971501234567",
        locale="ar",
        role="dietitian",
        name="Omar",
    )
    mail = await invite(
        pool,
        channel="email",
        address="amina@example.test",
        role="family",
        name="Amina Ahmed",
        not_before=later.isoformat(),
        clinic_id=str(world.clinic_id),
    )

    # SMS, in Urdu, from a time ahead in the zone of the number (+92).
    tries = await wait_until(lambda: len(peer.to("/hooks/sms")) >= 2 and peer.to("/hooks/sms"))
    body = signed(tries[1])
    assert (body["channel"], body["to"], body["language"]) == ("sms", "+923001234567", "ur")
    assert body["template"] == "guest_invite"
    text = body["text"]
    assert text.startswith("\u200f")
    assert "Dr. Ayesha Khan نے آپ کو" in text and "ترجمان کے طور پر" in text
    assert "(PKT) سے" in text and "ابھی" not in text
    sms_key = link_in(text, guest_settings, sms)
    assert tries[0].headers["idempotency-key"] == tries[1].headers["idempotency-key"]

    # WhatsApp, in Arabic, open now, a clinic's own role named as it is, and
    # the approved template's parameters in order.
    (req,) = await wait_until(lambda: peer.to("/hooks/whatsapp"))
    body = signed(req)
    assert (body["channel"], body["to"], body["language"]) == ("whatsapp", "+971501234567", "ar")
    assert "دعوة من Dr. Ayesha Khan" in body["text"] and "بصفة dietitian الآن" in body["text"]
    inviter, role, when, link = body["parameters"]
    assert (inviter, role, when) == ("Dr. Ayesha Khan", "dietitian", "الآن")
    wa_key = link_in(link, guest_settings, wa)

    # Email, in English, from a time ahead in the clinic's zone (Karachi).
    (msg,) = await wait_until(lambda: smtp.of("guest_invite"))
    assert msg["To"] == "Amina Ahmed <amina@example.test>"
    assert msg["Subject"] == "Invitation to a video visit"
    assert msg["Content-Language"] == "en"
    plain = msg.get_body(("plain",)).get_content()
    assert plain.startswith(
        "Dr. Ayesha Khan invites you to join a video visit as a family member from "
    )
    assert "(PKT): https://wadud.test/call/" in plain
    mail_key = link_in(plain, guest_settings, mail)

    sent = await wait_until(
        lambda: (
            pool.fetch(
                """SELECT d.status, d.recipient_id, d.attempts, j.params, j.address
               FROM notify_deliveries d JOIN notify_jobs j ON j.key = d.job_key
               WHERE d.status = 'sent' ORDER BY d.id"""
            )
            if running.sent >= 3
            else None
        )
    )
    assert [(r["status"], r["recipient_id"], r["address"]) for r in sent] == [
        ("sent", None, "+923001234567"),
        ("sent", None, "+971501234567"),
        ("sent", None, "amina@example.test"),
    ]
    keys = (sms_key, wa_key, mail_key)
    # The link is made when it is sent: the schedule holds only the invite's id.
    stored = json.dumps([r["params"] for r in sent])
    assert "link" not in stored and not any(k in stored for k in keys)
    errors = [r["detail"] for r in await pool.fetch("SELECT detail FROM notify_attempts")]
    assert any("busy" in e and "<invite key>" in e for e in errors), errors
    assert not any(k in e for e in errors for k in keys)
    lines = [f"{r.getMessage()} {r.__dict__}" for r in caplog.records]
    assert any("notification will be retried" in line for line in lines)
    assert sum("notification sent" in line for line in lines) == 3
    assert not any(k in line for line in lines for k in keys)


async def test_a_channel_this_server_lacks_fails_for_good_and_the_loop_serves_on(
    pool: asyncpg.Pool,
    world: World,
    smtp: Inbox,
    notify_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="wadud.notify")
    async with started(pool, notify_settings):  # email only
        await invite(pool, channel="whatsapp")
        failed = await wait_until(
            lambda: pool.fetchrow("SELECT * FROM notify_deliveries WHERE status = 'failed'")
        )
        assert failed["channel"] == "whatsapp" and failed["recipient_id"] is None
        assert failed["attempts"] == 0  # never tried
        assert failed["last_error"] == "whatsapp: channel not configured on this server"
        assert any("notification refused for good" in r.getMessage() for r in caplog.records)

        mail = await invite(pool, channel="email", address="guest@example.test")
        (msg,) = await wait_until(lambda: smtp.of("guest_invite"))
        link_in(msg.get_body(("plain",)).get_content(), notify_settings, mail)
        assert "invites you to join a video visit as an interpreter now: " in str(
            msg.get_body(("plain",)).get_content()
        )


async def test_an_invitation_taken_back_before_it_went_is_not_sent(
    pool: asyncpg.Pool, world: World, smtp: Inbox, notifier: Notifier
) -> None:
    now = dt.datetime.now(dt.UTC)
    invite_id = await pool.fetchval(
        """INSERT INTO room_invites (room, role, actions, name, channel, address,
                                     needs_approval, invited_by, not_before, expires_at,
                                     status)
           VALUES ('shifa:visit-7', 'family', '{subscribe}', 'Amina', 'email',
                   'amina@example.test', true, 'doctor-1', $1, $2, 'refused')
           RETURNING id""",
        now,
        now + dt.timedelta(hours=1),
    )
    await invite(pool, invite_id=str(invite_id), channel="email", address="amina@example.test")
    assert await notifier.run_until_idle() == 0
    assert await pool.fetchval("SELECT state FROM notify_jobs") == "skipped"
    assert smtp.messages == []
