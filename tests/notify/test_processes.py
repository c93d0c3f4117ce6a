"""``wadud notify`` as real processes: a reminder survives a notifier killed
and started again, and two replicas racing for the same due reminders send
each one once."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest

from tests.conftest import free_port
from tests.notify.conftest import Inbox, World, emit, make_booking
from tests.polling import wait_until
from tests.wadud.processes import RoleProcess, role_env
from wadud.config import Settings
from wadud.messaging.outbox import OBSERVE_IDLE


class Role(RoleProcess):
    """One ``wadud notify`` process in its own process group."""

    def __init__(self, settings: Settings, smtp: Inbox, name: str, **extra_env: str) -> None:
        env = {
            **role_env(settings),
            "WADUD_NOTIFY_SMTP_HOST": "127.0.0.1",
            "WADUD_NOTIFY_SMTP_PORT": str(smtp.port),
            "WADUD_NOTIFY_SMTP_TLS": "none",
            "WADUD_NOTIFY_POLL_INTERVAL": "0.1",
            "WADUD_NOTIFY_BACKOFF_BASE": "0.2",
            **extra_env,
        }
        self.name = name
        super().__init__("notify", env)

    def sent(self) -> int:
        return sum("notification sent" in line for line in self.lines)


@pytest.fixture
def roles(settings: Settings, smtp: Inbox) -> Iterator[list[Role]]:
    started: list[Role] = []
    yield started
    for role in started:
        role.kill()


async def _sent(pool: asyncpg.Pool, n: int) -> bool:
    done = await pool.fetchval(
        """SELECT count(*) FILTER (WHERE status = 'sent') = $1 AND count(*) = $1
           FROM notify_deliveries""",
        n,
    )
    return bool(done)


def _soon(seconds: float) -> dt.datetime:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return now + dt.timedelta(minutes=15, seconds=seconds)


async def test_a_reminder_is_sent_once_across_a_killed_and_restarted_notifier(
    pool: asyncpg.Pool, world: World, smtp: Inbox, settings: Settings, roles: list[Role]
) -> None:
    first = Role(settings, smtp, "first")
    roles.append(first)
    await first.started()
    row = await make_booking(pool, world, _soon(120))
    await emit(pool, row, "confirm_payment", "held")
    # The first notifier planned the reminders and sent the two confirmations
    # (and logged them sent: a kill between the SMTP server's "250" and that
    # commit is the one window where a message goes twice, see
    # test_delivery.py)...
    await wait_until(
        lambda: pool.fetchval("SELECT count(*) FROM notify_jobs WHERE template = 'reminder_15m'")
    )
    await wait_until(lambda: _sent(pool, 2))
    # ...and dies, before the reminders fall due.
    first.kill()
    await pool.execute(
        """UPDATE notify_jobs SET due_at = now() + interval '1 second'
           WHERE template = 'reminder_15m' AND state = 'scheduled'"""
    )
    assert len(smtp.of("reminder_15m")) == 0

    second = Role(settings, smtp, "second")
    roles.append(second)
    await second.started()
    await wait_until(lambda: _sent(pool, 4), within=15)
    # The one that sent them dies too; a third starts and finds nothing to send.
    second.kill()
    third = Role(settings, smtp, "third")
    roles.append(third)
    await third.started()
    await asyncio.sleep(1.5)
    assert third.stop() == 0
    to_patient = [m for m in smtp.of("reminder_15m") if world.patient_email in m["To"]]
    assert len(to_patient) == 1
    assert len(smtp.of("reminder_15m")) == 2
    assert len(smtp.of("booking_received")) == 1
    assert len(smtp.of("doctor_new_booking")) == 1
    assert third.sent() == 0


async def test_two_replicas_send_each_reminder_once(
    pool: asyncpg.Pool, world: World, smtp: Inbox, settings: Settings, roles: list[Role]
) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    a = Role(settings, smtp, "a", WADUD_METRICS_LISTEN=metrics)
    b = Role(settings, smtp, "b")
    roles += [a, b]
    await asyncio.gather(a.started(), b.started())

    async def page() -> str:
        async with aiohttp.ClientSession() as http, http.get(f"http://{metrics}/metrics") as resp:
            return await resp.text()

    # Before anything is sent, each outcome is there at 0 (ci71: b sent every
    # message once, and a's page had no line for "sent" at all).
    before = await page()
    for outcome in ("sent", "retried", "failed", "expired"):
        line = f'wadud_notify_deliveries_total{{channel="email",outcome="{outcome}"}} 0.0'
        assert line in before, outcome
    bookings = 8
    for i in range(bookings):
        # Back to back, 20 minutes each (one doctor: they may not overlap).
        starts = _soon(3) + dt.timedelta(minutes=20 * i)
        row = await make_booking(pool, world, starts)
        await emit(pool, row, "confirm_payment", "held")
    await wait_until(lambda: len(smtp.of("booking_received")) == bookings, within=15)
    # Only the first booking's reminders fall due in the test; make the rest
    # due now too, so both replicas race for a crowd of them at once.
    await pool.execute(
        "UPDATE notify_jobs SET due_at = now() + interval '1 second' WHERE state = 'scheduled'"
    )
    await wait_until(lambda: len(smtp.of("reminder_15m")) >= 2 * bookings, within=20)
    await asyncio.sleep(1.5)
    after = await page()
    counted = re.search(
        r'wadud_notify_deliveries_total\{channel="email",outcome="sent"\} (\d+)', after
    )
    assert counted and int(counted.group(1)) == a.sent()

    # The inbox's backlog gauge comes down to 0. A replica refreshes it after
    # its own first idle round that follows work, else every OBSERVE_IDLE
    # seconds: when the other replica planned every event, this one's gauge
    # is up to that old (ci128: 3.0 read 1.5 s after the last reminder).
    async def drained() -> bool:
        return 'wadud_notify_backlog{queue="inbox"} 0.0' in await page()

    await wait_until(drained, within=OBSERVE_IDLE + 5, every=0.5)
    # Its probes (Kubernetes, compose) live on the same private listener.
    async with aiohttp.ClientSession() as http:
        for path, body in (("/healthz", "ok"), ("/readyz", "ready")):
            async with http.get(f"http://{metrics}{path}") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == body
    assert a.stop() == 0 and b.stop() == 0

    ids = [m["Message-ID"] for m in smtp.messages]
    assert len(ids) == len(set(ids)), "a delivery went out twice"
    assert len(smtp.of("reminder_15m")) == 2 * bookings
    assert len(smtp.of("booking_received")) == bookings
    assert len(smtp.of("doctor_new_booking")) == bookings
    assert a.sent() + b.sent() == len(smtp.messages)
    dupes = await pool.fetchval(
        """SELECT count(*) FROM (SELECT event_id, channel, recipient_id FROM notify_deliveries
                                 GROUP BY 1, 2, 3 HAVING count(*) > 1) x"""
    )
    assert dupes == 0
    print(f"replica a sent {a.sent()}, replica b sent {b.sent()}")
