"""``wadud hooks`` as real processes: two replicas racing for the same
deliveries send each event once, a room's events in order, and one of them
killed mid-run (SIGKILL, transactions cut) loses nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from hooks import events as hook_events
from tests.booking.factories import make_clinic, make_doctor
from tests.conftest import Api
from tests.hooks.test_webhooks import Receiver, _live_booking, receiver_port, verify
from tests.wadud.processes import RoleProcess, role_env
from wadud.config import Settings
from wadud.state import keys

SECRET = "whsec_" + "r" * 40
ROOMS = ["room-a", "room-b", "room-c", "room-d"]
PER_ROOM = 12


class Hooks(RoleProcess):
    """One ``wadud hooks`` process in its own process group."""

    def __init__(self, settings: Settings, **extra_env: str) -> None:
        env = {
            **role_env(settings),
            "WADUD_WEBHOOKS_POLL_INTERVAL": "0.1",
            "WADUD_WEBHOOKS_BACKOFF_BASE": "0.2",
            "WADUD_WEBHOOKS_BACKOFF_MAX": "0.5",
            "WADUD_WEBHOOKS_ALLOW_NETWORKS": "127.0.0.0/8",
            **extra_env,
        }
        super().__init__("hooks", env)


@pytest.fixture
def replicas() -> Iterator[list[Hooks]]:
    started: list[Hooks] = []
    yield started
    for one in started:
        one.kill()


@dataclass
class SlowReceiver(Receiver):
    """Takes a while to answer, so the replicas race for the next rows.
    Once it holds ``hold_after`` deliveries, it keeps each further request
    waiting until :meth:`release`: a replica killed meanwhile dies with
    deliveries in flight and events still to send, however late the test
    gets to kill it (48 deliveries take under half a second)."""

    hold_after: int | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def _hook(self, request: web.Request) -> web.Response:
        if self.hold_after is not None and len(self.got) >= self.hold_after:
            await self.released.wait()
        await asyncio.sleep(0.03)
        return await super()._hook(request)

    def release(self) -> None:
        self.released.set()


@pytest.fixture
async def receiver() -> AsyncIterator[SlowReceiver]:
    r = SlowReceiver()
    await r.start()
    yield r
    await r.stop()


@pytest.mark.timeout(180)
async def test_two_replicas_send_each_event_once_in_order_and_survive_a_kill(
    api: Api, settings: Settings, receiver: SlowReceiver, replicas: list[Hooks]
) -> None:
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic)
    bid, _pt, _dr = await _live_booking(api, doctor)
    pool = api.app[keys.DB]
    await pool.execute(
        "INSERT INTO room_hook_endpoints (clinic_id, url, secret) VALUES ($1, $2, $3)",
        uuid.UUID(clinic.id),
        receiver.url,
        SECRET,
    )
    # Rooms' events interleaved, each room's in its own transactions.
    for n in range(PER_ROOM):
        for room in ROOMS:
            async with pool.acquire() as conn, conn.transaction():
                await hook_events.emit(
                    conn,
                    "track_published",
                    booking_id=bid,
                    room=room,
                    at=dt.datetime.now(dt.UTC).isoformat(),
                    data={"track": {"id": f"t-{n}", "kind": "video"}},
                )
    receiver.hold_after = len(ROOMS) * PER_ROOM // 3
    probes = receiver_port()
    replicas.extend([Hooks(settings), Hooks(settings, WADUD_METRICS_LISTEN=f"127.0.0.1:{probes}")])
    for one in replicas:
        await one.started()
    total = len(ROOMS) * PER_ROOM
    await receiver.wait(total // 3, within=60)
    replicas[0].kill()
    receiver.release()
    deadline = time.monotonic() + 90
    while len({e["id"] for e in receiver.events()}) < total and time.monotonic() < deadline:
        await receiver.wait(len(receiver.got) + 1, within=1)
    await asyncio.sleep(1.0)
    events = receiver.events()
    ids = [e["id"] for e in events]
    # At least once: a delivery whose 2xx was answered but whose commit the
    # kill cut comes again, with the same event id (at most one per send
    # loop of the killed replica: webhooks_concurrency, 4); otherwise once.
    repeats = len(ids) - len(set(ids))
    assert len(set(ids)) == total and repeats <= 4, ids
    for room in ROOMS:
        # Each event's first arrival, in the order they happened.
        first = list(dict.fromkeys(int(e["id"]) for e in events if e["room"] == room))
        assert first == sorted(first) and len(first) == PER_ROOM
        tracks = [e["data"]["track"]["id"] for e in events if e["room"] == room]
        assert list(dict.fromkeys(tracks)) == [f"t-{n}" for n in range(PER_ROOM)]
    for headers, body in receiver.got:
        assert verify(SECRET, headers["Wadud-Signature"], body)
        assert json.loads(body)["booking_id"] == bid
    rows = await pool.fetch("SELECT status, count(*) AS n FROM room_hook_deliveries GROUP BY 1")
    assert {r["status"]: r["n"] for r in rows} == {"sent": total}
    # The survivor's private listener: probes and its counters.
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(f"http://127.0.0.1:{probes}{path}") as resp:
                assert resp.status == 200
        async with http.get(f"http://127.0.0.1:{probes}/metrics") as resp:
            text = await resp.text()
    sent = re.search(r'^wadud_webhook_deliveries_total\{outcome="sent"\} (\S+)$', text, re.M)
    assert sent is not None and float(sent.group(1)) > 0
