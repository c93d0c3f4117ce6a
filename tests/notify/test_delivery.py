"""The delivery log: retries with backoff against a real SMTP server that
refuses, a permanent refusal, the last try, and the one window where a
message can go twice (the server took it, our commit was lost), which must
then carry the same Message-ID."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

import asyncpg
import pytest

from notify import channels as ch
from notify.channels import Outgoing
from notify.service import Notifier
from tests.conftest import free_port
from tests.notify.conftest import Inbox, Tls, World
from tests.polling import wait_until
from wadud.config import Settings
from wadud.messaging import outbox


async def _receipt(pool: asyncpg.Pool, world: World) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await outbox.emit(
            conn,
            "payment.succeeded",
            {"payment_id": str(uuid.uuid4()), "patient_id": str(world.patient),
             "amount_minor": 250000, "currency": "PKR"},
        )  # fmt: skip


async def _delivery(pool: asyncpg.Pool) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM notify_deliveries")
    assert row is not None
    return row


async def test_a_refusing_smtp_server_is_retried_with_growing_waits(
    pool: asyncpg.Pool, world: World, smtp: Inbox, notify_settings: Settings
) -> None:
    settings = dataclasses.replace(notify_settings, notify_backoff_base=0.3, notify_backoff_max=5)
    opened = await ch.open_channels(settings)
    n = Notifier(pool, settings, opened.senders)
    try:
        smtp.refuse += ["451 4.3.0 try again later", "451 4.3.0 try again later"]
        before = dt.datetime.now(dt.UTC)
        await _receipt(pool, world)
        assert await n.run_until_idle() == 0
        first = await _delivery(pool)
        assert (first["status"], first["attempts"]) == ("pending", 1)
        # The base: from the failure, which came after `before`.
        assert first["next_attempt_at"] - before >= dt.timedelta(seconds=0.3)
        await _until(first["next_attempt_at"])
        assert await n.run_until_idle() == 0
        second = await _delivery(pool)
        assert second["attempts"] == 2
        # Twice the base, from the second failure, which came after the first
        # wait ended.
        assert second["next_attempt_at"] - first["next_attempt_at"] >= dt.timedelta(seconds=0.6)
        await _until(second["next_attempt_at"])
        assert await n.run_until_idle() == 1
        done = await _delivery(pool)
        assert (done["status"], done["attempts"], done["last_error"]) == ("sent", 3, None)
        log = await pool.fetch("SELECT attempt, ok, at, detail FROM notify_attempts ORDER BY 1")
        assert [(r["attempt"], r["ok"]) for r in log] == [(1, False), (2, False), (3, True)]
        assert "451" in log[0]["detail"]
        # No try before its time. (The log's times are when each try was
        # recorded, after it: their gaps are the waits give or take how long
        # a loaded machine took to record a try: ci179 saw 0.175 s after a
        # wait of 0.3 s.)
        assert log[1]["at"] >= first["next_attempt_at"]
        assert log[2]["at"] >= second["next_attempt_at"]
        assert len(smtp.messages) == 1
    finally:
        await opened.close()


async def test_a_permanent_refusal_and_the_last_try_are_logged_as_failed(
    pool: asyncpg.Pool, world: World, smtp: Inbox, notify_settings: Settings
) -> None:
    settings = dataclasses.replace(notify_settings, notify_max_attempts=2)
    opened = await ch.open_channels(settings)
    n = Notifier(pool, settings, opened.senders)
    try:
        smtp.refuse.append("550 5.1.1 no such mailbox")
        await _receipt(pool, world)
        await n.run_until_idle()
        row = await _delivery(pool)
        assert (row["status"], row["attempts"]) == ("failed", 1)
        assert "550" in row["last_error"]

        await pool.execute("DELETE FROM notify_deliveries")
        await pool.execute("DELETE FROM notify_jobs")
        smtp.refuse += ["421 4.7.0 busy", "421 4.7.0 busy"]
        await _receipt(pool, world)
        await n.run_until_idle()
        await _until((await _delivery(pool))["next_attempt_at"])
        await n.run_until_idle()
        row = await _delivery(pool)
        assert (row["status"], row["attempts"]) == ("failed", 2)  # notify_max_attempts
        assert smtp.messages == []
    finally:
        await opened.close()


class _LoseTheCommit:
    """Sends for real, then ends the notifier's database session before it can
    commit: the provider has the message, our log does not know it."""

    name = "email"

    def __init__(self, real: ch.Channel, pool: asyncpg.Pool) -> None:
        self.real = real
        self.pool = pool
        self.armed = True

    async def send(self, msg: Outgoing) -> str:
        detail = await self.real.send(msg)
        if self.armed:
            self.armed = False
            await self.pool.execute(
                """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE datname = current_database() AND state = 'idle in transaction'
                     AND pid <> pg_backend_pid()"""
            )
        return detail


async def test_a_lost_commit_after_the_server_took_the_mail_resends_the_same_message_id(
    pool: asyncpg.Pool, world: World, smtp: Inbox, notify_settings: Settings
) -> None:
    """The documented window of at-least-once delivery: no loss, and the
    repeat is recognisable as the same message."""
    opened = await ch.open_channels(notify_settings)
    senders = dict(opened.senders)
    senders["email"] = _LoseTheCommit(opened.senders["email"], pool)
    n = Notifier(pool, notify_settings, senders)
    try:
        await _receipt(pool, world)
        await n.plan_events()
        await n.expand_jobs()
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await n.send_one()
        assert len(smtp.messages) == 1
        assert (await _delivery(pool))["status"] == "pending"  # the commit was lost
        await wait_until(lambda: n.send_one())
        assert len(smtp.messages) == 2
        first, again = smtp.messages
        assert first["Message-ID"] == again["Message-ID"]
        assert (await _delivery(pool))["status"] == "sent"
        assert await n.run_until_idle() == 0
    finally:
        await opened.close()


async def _until(when: dt.datetime) -> None:
    import asyncio

    await asyncio.sleep(max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds()) + 0.05)


async def test_email_goes_over_starttls_with_auth_as_configured_for_a_provider(
    pool: asyncpg.Pool, world: World, notify_settings: Settings, tls: Tls
) -> None:
    """The production path: port 587, STARTTLS (certificate checked against
    notify_ca_file), then AUTH; a server that requires both takes the mail."""
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    logins: list[tuple[bytes, bytes]] = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        assert isinstance(data, LoginPassword)
        assert session.ssl is not None, "credentials sent before STARTTLS"
        logins.append((data.login, data.password))
        return AuthResult(success=data.login == b"wadud" and data.password == b"s3cret")

    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tls.cert_file, tls.key_file)
    inbox = Inbox(free_port())
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=inbox.port,
        tls_context=server_tls,
        require_starttls=True,
        auth_require_tls=True,
        authenticator=authenticate,
        auth_required=True,
        server_hostname="127.0.0.1",
    )
    controller.start()
    settings = dataclasses.replace(
        notify_settings,
        notify_smtp_port=inbox.port,
        notify_smtp_tls="starttls",
        notify_smtp_username="wadud",
        notify_smtp_password="s3cret",
        notify_ca_file=str(tls.ca_file),
    )
    opened = await ch.open_channels(settings)
    try:
        n = Notifier(pool, settings, opened.senders)
        await _receipt(pool, world)
        await _receipt(pool, world)
        assert await n.run_until_idle() == 2
        assert len(inbox.messages) == 2
        assert logins == [(b"wadud", b"s3cret")]  # one session, reused
    finally:
        await opened.close()
        controller.stop()
