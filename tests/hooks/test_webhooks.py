"""Clinics' signed room webhooks (issue 23), against real PostgreSQL and a
real HTTP receiver (an aiohttp server on loopback, allowed for the test by
``webhooks_allow_networks``):

* a visit (wait, admit, join, publish, leave, end) reaches the receiver as
  every event once, in order, each signed as docs/webhooks.md says; a
  tampered body fails the documented check;
* the receiver down for 30 s gets every event, still in order, once it is
  back; a redeliver sends one again with the same event id;
* endpoints at 127.0.0.1, 169.254.169.254, ``::ffff:10.0.0.1`` or a name
  that resolves to one of them are refused on save, and on delivery when
  one got into the table (or a name resolves elsewhere than when saved);
* the configuration is refused to patients and doctors (403) and across
  clinics (404); bad input is a typed 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

import hooks.http
from bin.assembly import build_app, in_process
from hooks import events as hook_events
from hooks.service import Deliverer
from signalling.edge.http import RECORDER
from tests.booking.bookings.test_bookings import local, requested, shift
from tests.booking.factories import Clinic, Doctor, make_clinic
from tests.conftest import Api, free_port_in
from tests.polling import wait_until
from tests.signalling.service.test_ws import joined, loopback_aiortc, publish_video
from tests.wadud.web.test_api_keys import basic
from wadud import signing
from wadud.config import Settings
from wadud.state import keys
from wadud.web import api_keys
from wadud.web.api import Role

pytestmark = pytest.mark.timeout(180)
__all__ = ["loopback_aiortc"]  # a fixture these tests use

VISIT = [
    "room_started",
    "participant_waiting",
    "participant_joined",
    "participant_admitted",
    "participant_joined",
    "track_published",
    "track_unpublished",
    "participant_left",
    "participant_left",
    "room_finished",
]


def receiver_port() -> int:
    """A free TCP port in 26000-26999 (the range this suite's servers use)."""
    return free_port_in(26000, 26999)


def verify(secret: str, header: str, body: bytes, tolerance: float = 300) -> bool:
    """The receiver's check, as docs/webhooks.md gives it."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    signatures = [v for k, v in (i.split("=", 1) for i in header.split(",")) if k == "v1"]
    timestamp = parts.get("t", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return any(hmac.compare_digest(expected.hexdigest(), s) for s in signatures)


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that keeps what it is sent; stop()
    and start() take it down and bring it back on the same port."""

    port: int = field(default_factory=receiver_port)
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/wadud"

    async def _hook(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.read()))
        self.arrived.set()
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/wadud", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got]

    async def wait(self, count: int, within: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within
        while len(self.got) < count and time.monotonic() < deadline:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 0.5)
        return self.events()


class Rebinding(AbstractResolver):
    """A DNS server's answers, set by the test: a name can resolve to a
    public address now and to a private one later (DNS rebinding)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.system = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.names:
            return await self.system.resolve(host, port, family)
        address = self.names[host]
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": fam,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        await self.system.close()


def _settings(settings: Settings, *, loopback: bool) -> Settings:
    return dataclasses.replace(
        settings,
        webhooks_allow_networks=["127.0.0.0/8"] if loopback else [],
        webhooks_backoff_base=0.25,
        webhooks_backoff_max=1.0,
        webhooks_max_attempts=1000,
        webhooks_timeout=3.0,
    )


@pytest.fixture
async def app(settings: Settings, request: pytest.FixtureRequest) -> web.Application:
    # The refusal tests run as a deployment does: no network allowed.
    loopback = "refused" not in request.node.name
    built = build_app(
        _settings(settings, loopback=loopback), [*in_process(), hooks.http.install_worker]
    )
    built[hooks.http.RESOLVER] = Rebinding()
    return built


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    yield r
    await r.stop()


async def _live_booking(api: Api, doctor: Doctor) -> tuple[str, str, str]:
    """An accepted video booking starting in five minutes: (id, the
    patient's join token, the doctor's join token)."""
    patient, bid, _ = await requested(api, doctor, local(2, "10:00"))
    await api.post(f"/api/v1/bookings/{bid}/accept", token=doctor.token, expect=200)
    await shift(api, bid, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    path = f"/api/v1/bookings/{bid}/video-link"
    mine = await api.get(path, token=patient, expect=200)
    theirs = await api.get(path, token=doctor.token, expect=200)
    return bid, mine["token"], theirs["token"]


async def _endpoint(api: Api, clinic: Clinic, url: str, **kw: Any) -> dict[str, Any]:
    created: dict[str, Any] = await api.post(
        f"/api/v1/clinics/{clinic.id}/webhooks", {"url": url, **kw},
        token=clinic.staff_token, expect=201,
    )  # fmt: skip
    return created


async def _visit(
    api: Api, pt_link: str, dr_link: str, *, publish: bool = True, report: bool = False
) -> list[Any]:
    """Wait, admit, join, publish, leave, end: the patient waits for the
    doctor, who admits them and publishes video; the doctor leaves, then the
    patient (the last one out ends the room). With ``report``, the patient's
    page sends its call stats once, so the visit has a call report, which
    is ready once the recorder next writes after the room ended. Returns
    the peer connections."""
    pcs: list[Any] = []
    async with joined(api, pt_link) as (pt, pj):
        assert pj["type"] == "waiting"
        async with joined(api, dr_link) as (dr, dj):
            assert dj["type"] == "joined"
            ok = await dr.request(
                {"type": "admit", "participant_id": pj["participant"]["id"]}, "admit"
            )
            assert ok["type"] == "ok", ok
            await pt.type("joined")
            if report:
                stats = {"rtt": 0.05, "media": "connected", "concealed_seconds": 0.0}
                await api.post(
                    "/api/v1/calls/stats",
                    {"participant_id": pj["participant"]["id"], "stats": stats, "token": pt_link},
                    expect=204,
                )
            if publish:
                pc, _ = await publish_video(dr, "pub")
                pcs.append(pc)
                await pt.type("track_published")
            assert (await dr.request({"type": "leave"}, "bye"))["type"] == "ok"
            await pt.type("participant_left")
        assert (await pt.request({"type": "leave"}, "bye"))["type"] == "ok"
    return pcs


def _check_visit(events: list[dict[str, Any]], bid: str) -> None:
    assert [e["type"] for e in events] == VISIT
    assert len({e["id"] for e in events}) == len(events)
    assert all(e["booking_id"] == bid for e in events)
    assert len({e["room"] for e in events}) == 1
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids)
    roles = [e["data"]["participant"]["role"] for e in events if "participant" in e["data"]]
    assert roles == ["patient", "doctor", "patient", "patient", "doctor", "patient"]
    patient = events[1]["data"]["participant"]["id"]
    assert (
        events[3]["data"]["participant"]["id"] == events[4]["data"]["participant"]["id"] == patient
    )
    track = events[5]["data"]["track"]
    assert (
        track["kind"] == "video" and track["participant"] == events[2]["data"]["participant"]["id"]
    )
    assert events[6]["data"]["track"]["id"] == track["id"]
    # No more personal data than needed: ids and roles, never names or accounts.
    text = json.dumps(events)
    assert "name" not in text and "identity" not in text and "@" not in text


async def test_a_visit_reaches_the_receiver_once_each_in_order_and_signed(
    api: Api, clinic: Clinic, doctor: Doctor, receiver: Receiver, loopback_aiortc: None
) -> None:
    await receiver.start()
    hook = await _endpoint(api, clinic, receiver.url)
    assert hook["secret"].startswith("whsec_") and hook["events"] == []
    bid, pt_link, dr_link = await _live_booking(api, doctor)
    pcs = await _visit(api, pt_link, dr_link, report=True)
    try:
        events = await receiver.wait(len(VISIT))
        # The call report is ready when the recorder next writes after the
        # room ended (every 5 s): now, here. Its event comes last.
        await api.app[RECORDER].flush()
        events = await receiver.wait(len(VISIT) + 1)
        await asyncio.sleep(1.0)  # nothing more comes
    finally:
        for pc in pcs:
            await pc.close()
    assert len(receiver.got) == len(VISIT) + 1
    _check_visit(receiver.events()[: len(VISIT)], bid)
    report = receiver.events()[-1]
    assert report["type"] == "call_report_ready" and report["booking_id"] == bid
    assert report["data"]["report"] == f"/api/v1/bookings/{bid}/call-report"
    assert report["room"] == events[0]["room"]
    for headers, body in receiver.got:
        event = json.loads(body)
        assert verify(hook["secret"], headers["Wadud-Signature"], body)
        assert signing.verify(body, headers["Wadud-Signature"], hook["secret"], time.time())
        assert headers["Wadud-Event-Id"] == event["id"]
        assert headers["Wadud-Event"] == event["type"]
        assert headers["Wadud-Attempt"] == "1"
    # A tampered body, or another secret, fails the documented check.
    headers, body = receiver.got[1]
    tampered = body.replace(b'"patient"', b'"doctor"')
    assert tampered != body
    assert not verify(hook["secret"], headers["Wadud-Signature"], tampered)
    assert not verify("whsec_" + "x" * 43, headers["Wadud-Signature"], body)
    with pytest.raises(signing.BadSignature):
        signing.verify(tampered, headers["Wadud-Signature"], hook["secret"], time.time())
    # The delivery log: one delivery per event, each sent on its first attempt.
    log = await api.get(
        f"/api/v1/clinics/{clinic.id}/webhooks/{hook['id']}/deliveries", token=clinic.staff_token,
        expect=200,
    )  # fmt: skip
    assert [d["event"] for d in reversed(log)] == [*VISIT, "call_report_ready"]
    assert {(d["status"], d["attempts"], len(d["tries"])) for d in log} == {("sent", 1, 1)}
    assert log[0]["tries"][0]["http_status"] == 204
    assert events == receiver.events()


async def test_a_visit_booked_elsewhere_gets_the_same_events_and_report(
    api: Api, clinic: Clinic, doctor: Doctor, receiver: Receiver, loopback_aiortc: None
) -> None:
    """A clinic that books in its own system asks for the visit with its
    key (POST /api/v1/visits): its room's events and call report reach the
    clinic's receiver as a booked visit's do."""
    await receiver.start()
    await _endpoint(api, clinic, receiver.url)
    pool = api.app[keys.DB]
    async with pool.acquire() as conn:
        made = await api_keys.create_key(
            conn, name="ehr", scope=api_keys.Scope.CLINIC, clinic_id=uuid.UUID(clinic.id)
        )
    now = dt.datetime.now(dt.UTC)
    resp = await api.client.post(
        "/api/v1/visits",
        json={
            "reference": "EHR-2025-0042",
            "doctor_id": doctor.id,
            "starts_at": now.isoformat(),
            "ends_at": (now + dt.timedelta(minutes=30)).isoformat(),
            "patient": {"reference": "MRN-77", "name": "Bilal"},
        },
        headers=basic(made.key.id, made.secret),
    )
    visit = await resp.json()
    assert resp.status == 201, visit
    dr, pt = visit["links"][:2]
    pcs = await _visit(api, pt["token"], dr["token"], report=True)
    try:
        await receiver.wait(len(VISIT))
        await api.app[RECORDER].flush()
        await receiver.wait(len(VISIT) + 1)
    finally:
        for pc in pcs:
            await pc.close()
    _check_visit(receiver.events()[: len(VISIT)], visit["id"])
    report = receiver.events()[-1]
    assert (report["type"], report["booking_id"]) == ("call_report_ready", visit["id"])


async def test_a_receiver_down_for_30_s_gets_every_event_once_it_is_back(
    api: Api, clinic: Clinic, doctor: Doctor, receiver: Receiver, loopback_aiortc: None
) -> None:
    # The visit's own events only: whether a call report comes out of so
    # short a visit is the media worker's sampling, not this test's matter.
    hook = await _endpoint(api, clinic, receiver.url, events=sorted(set(VISIT)))
    bid, pt_link, dr_link = await _live_booking(api, doctor)
    down_since = time.monotonic()
    pcs = await _visit(api, pt_link, dr_link)
    for pc in pcs:
        await pc.close()
    base = f"/api/v1/clinics/{clinic.id}/webhooks/{hook['id']}/deliveries"
    await asyncio.sleep(max(0.0, 30.0 - (time.monotonic() - down_since)))
    log = await api.get(base, token=clinic.staff_token, expect=200)
    assert len(log) == len(VISIT) and {d["status"] for d in log} == {"pending"}
    first = log[-1]
    # The first event was tried again and again (backoff capped at 1 s);
    # the later ones wait behind it, so order holds.
    assert first["attempts"] >= 10, first
    assert first["tries"][0]["http_status"] is None
    assert "unreachable" in first["tries"][0]["detail"]
    assert all(d["attempts"] == 0 for d in log[:-1])
    await receiver.start()
    events = await receiver.wait(len(VISIT), within=20)
    await asyncio.sleep(1.0)
    assert len(receiver.got) == len(VISIT)
    _check_visit(events, bid)
    for headers, body in receiver.got:
        assert verify(hook["secret"], headers["Wadud-Signature"], body)
    log = await api.get(base, token=clinic.staff_token, expect=200)
    assert {d["status"] for d in log} == {"sent"}
    # Redeliver: the same event id and body again, as a new attempt.
    again = log[-1]
    answer = await api.post(f"{base}/{again['id']}/redeliver", token=clinic.staff_token,
                            expect=202)  # fmt: skip
    assert answer["status"] == "pending"
    await receiver.wait(len(VISIT) + 1, within=10)
    assert receiver.got[-1][1] == receiver.got[0][1]
    assert receiver.got[-1][0]["Wadud-Event-Id"] == again["event_id"]
    await api.post(f"{base}/999999999/redeliver", token=clinic.staff_token, expect=404)


PRIVATE = [
    "http://127.0.0.1:26999/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::ffff:10.0.0.1]/hook",
    "https://[::ffff:169.254.169.254]/hook",
    "https://localhost/hook",
    "https://metadata.example.test/hook",
]


async def test_private_and_metadata_endpoints_are_refused_on_save(api: Api, clinic: Clinic) -> None:
    api.app[hooks.http.RESOLVER].names["metadata.example.test"] = "169.254.169.254"  # type: ignore[attr-defined]
    for url in PRIVATE:
        answer = await api.post(
            f"/api/v1/clinics/{clinic.id}/webhooks", {"url": url}, token=clinic.staff_token,
            expect=422,
        )  # fmt: skip
        assert answer["code"] == "webhook-address-refused", (url, answer)
    # A changed URL is checked the same way.
    api.app[hooks.http.RESOLVER].names["hooks.example.test"] = "93.184.216.34"  # type: ignore[attr-defined]
    hook = await _endpoint(api, clinic, "https://hooks.example.test/in")
    one = f"/api/v1/clinics/{clinic.id}/webhooks/{hook['id']}"
    answer = await api.patch(one, {"url": PRIVATE[1]}, token=clinic.staff_token, expect=422)
    assert answer["code"] == "webhook-address-refused"
    # Plain http only to an allowed network.
    answer = await api.post(
        f"/api/v1/clinics/{clinic.id}/webhooks", {"url": "http://hooks.example.test/in"},
        token=clinic.staff_token, expect=422,
    )  # fmt: skip
    assert "https" in answer["detail"]


async def test_private_endpoints_are_refused_on_every_delivery(
    api: Api, clinic: Clinic, doctor: Doctor, receiver: Receiver
) -> None:
    """Endpoints that got past the check (written before a rule changed, or
    a name that now resolves elsewhere: DNS rebinding) are never connected to."""
    await receiver.start()
    names = api.app[hooks.http.RESOLVER].names  # type: ignore[attr-defined]
    names["rebind.example.test"] = "93.184.216.34"
    rebind = await _endpoint(api, clinic, f"https://rebind.example.test:{receiver.port}/in")
    # Now the name answers with the metadata service, then with loopback.
    names["rebind.example.test"] = "169.254.169.254"
    names["loop.example.test"] = "127.0.0.1"
    pool = api.app[keys.DB]
    sneaked = [receiver.url, "https://169.254.169.254/latest", "https://[::ffff:10.0.0.1]/x",
               f"http://loop.example.test:{receiver.port}/hooks/wadud"]  # fmt: skip
    for url in sneaked:
        await pool.execute(
            """INSERT INTO room_hook_endpoints (clinic_id, url, secret)
               VALUES ($1, $2, 'whsec_' || repeat('s', 40))""",
            uuid.UUID(clinic.id),
            url,
        )
    bid, _pt, _dr = await _live_booking(api, doctor)
    async with pool.acquire() as conn, conn.transaction():
        await hook_events.emit(
            conn, "room_started", booking_id=bid, room=f"booking-{bid}",
            at=dt.datetime.now(dt.UTC).isoformat(),
        )  # fmt: skip
    deadline = time.monotonic() + 15
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = await pool.fetch(
            """SELECT e.url, a.detail FROM room_hook_attempts a
               JOIN room_hook_deliveries d ON d.id = a.delivery_id
               JOIN room_hook_endpoints e ON e.id = d.endpoint_id
               WHERE a.attempt = 1 AND e.clinic_id = $1""",
            uuid.UUID(clinic.id),
        )
        if len(rows) == len(sneaked) + 1:
            break
        await asyncio.sleep(0.2)
    details = {r["url"]: r["detail"] for r in rows}
    assert set(details) == {*sneaked, rebind["url"]}
    assert all(d.startswith("refused:") for d in details.values()), details
    assert "169.254.169.254" in details[rebind["url"]]
    assert receiver.got == []


async def test_configuration_is_for_the_clinic_s_staff_only(
    api: Api, clinic: Clinic, doctor: Doctor, receiver: Receiver
) -> None:
    other = await make_clinic(api, name="Other Clinic")
    base = f"/api/v1/clinics/{clinic.id}/webhooks"
    hook = await _endpoint(api, clinic, receiver.url, events=["room_started"])
    one = f"{base}/{hook['id']}"
    patient = await api.user(Role.PATIENT)
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", base, {"url": receiver.url}),
        ("GET", base, None),
        ("GET", one, None),
        ("PATCH", one, {"enabled": False}),
        ("DELETE", one, None),
        ("POST", f"{one}/secret", None),
        ("GET", f"{one}/deliveries", None),
    ]
    for tok in (patient, doctor.token):
        for method, path, body in calls:
            answer = await api.call(method, path, body, token=tok, expect=403)
            assert answer["code"] == "forbidden"
    # Another clinic's staff: as if the clinic and its endpoints did not exist.
    for method, path, body in [*calls, ("POST", f"{one}/deliveries/1/redeliver", None)]:
        await api.call(method, path, body, token=other.staff_token, expect=404)
    # A platform admin manages any clinic's; a clinic that does not exist is a 404.
    admin = await api.user(Role.ADMIN)
    await api.get(base, token=admin, expect=200)
    await api.post(f"/api/v1/clinics/{uuid.uuid4()}/webhooks", {"url": receiver.url},
                   token=admin, expect=404)  # fmt: skip
    # Nor through its own clinic's path.
    await api.get(f"/api/v1/clinics/{other.id}/webhooks/{hook['id']}",
                  token=other.staff_token, expect=404)  # fmt: skip
    await api.call("GET", base, token=None, expect=401)
    # Bad input: typed 4xx.
    for body in [
        {"url": "ftp://example.com/x"},
        {"url": "https://user:pw@example.com/x"},
        {"url": receiver.url, "events": ["room_exploded"]},
        {"url": receiver.url, "colour": "red"},
        {"url": 7},
        {},
    ]:
        answer = await api.post(base, body, token=clinic.staff_token)
        assert answer["status"] == 422, (body, answer)
    answer = await api.call("POST", base, data=b"{nope", token=clinic.staff_token,
                            headers={"Content-Type": "application/json"})  # fmt: skip
    assert answer["status"] == 400
    await api.get(f"{one}/deliveries?limit=0", token=clinic.staff_token, expect=422)
    await api.get(f"{one}/deliveries?status=lost", token=clinic.staff_token, expect=422)
    # The clinic's staff: list (no secret), change, rotate, delete.
    listed = await api.get(base, token=clinic.staff_token, expect=200)
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    changed = await api.patch(one, {"enabled": False, "events": ["room_finished"]},
                              token=clinic.staff_token, expect=200)  # fmt: skip
    assert (changed["enabled"], changed["events"]) == (False, ["room_finished"])
    rotated = await api.post(f"{one}/secret", token=clinic.staff_token, expect=200)
    assert rotated["secret"] != hook["secret"] and rotated["secret"].startswith("whsec_")
    await api.delete(one, token=clinic.staff_token, expect=204)
    await api.get(one, token=clinic.staff_token, expect=404)


async def test_an_endpoint_gets_only_its_events_and_other_clinics_nothing(
    api: Api, clinic: Clinic, doctor: Doctor, receiver: Receiver
) -> None:
    await receiver.start()
    other = await make_clinic(api, name="Other Clinic")
    await _endpoint(api, clinic, receiver.url, events=["room_started", "room_finished"])
    theirs = Receiver()
    await theirs.start()
    try:
        await _endpoint(api, other, theirs.url)
        _bid, pt_link, dr_link = await _live_booking(api, doctor)
        await _visit(api, pt_link, dr_link, publish=False)
        events = await receiver.wait(2)
        await asyncio.sleep(1.0)
        assert [e["type"] for e in events] == ["room_started", "room_finished"]
        assert theirs.got == []
    finally:
        await theirs.stop()


async def test_a_wake_with_nothing_due_costs_one_claim_not_one_per_sender(
    api: Api, settings: Settings
) -> None:
    """Every relayed outbox batch wakes the deliverer, and most hold no room
    event: only the first sender looks then (wakes that come while it looks
    fold into one look)."""
    quiet = dataclasses.replace(_settings(settings, loopback=True), webhooks_poll_interval=60.0)
    deliverer = Deliverer(api.app[keys.DB], quiet)
    assert deliverer.concurrency == 4
    await deliverer.start()
    try:
        # At start every sender looks once; a batch the app relays meanwhile
        # (its own outbox) wakes it too, and costs one look, not four.
        await wait_until(lambda: deliverer.looked >= 4)
        assert 4 <= deliverer.looked <= 4 + deliverer.woken
        for n in range(1, 4):
            deliverer.wake()
            await wait_until(lambda n=n: deliverer.looked >= 4 + n)
            await asyncio.sleep(0.3)
            # A relayed batch of the app's own may wake it too.
            assert 4 + n <= deliverer.looked <= 4 + deliverer.woken
    finally:
        await deliverer.close()


@dataclass
class SlowReceiver(Receiver):
    """Holds each delivery ``hold`` seconds, counting how many it holds at once."""

    hold: float = 0.5
    holding: int = 0
    most: int = 0

    async def _hook(self, request: web.Request) -> web.Response:
        self.holding += 1
        self.most = max(self.most, self.holding)
        try:
            await asyncio.sleep(self.hold)
            return await super()._hook(request)
        finally:
            self.holding -= 1


async def test_a_burst_over_rooms_brings_up_every_sender(
    api: Api, doctor: Doctor, clinic: Clinic
) -> None:
    """Deliveries of different rooms go out ``webhooks_concurrency`` at a
    time: a sender that finds work wakes the next."""
    receiver = SlowReceiver()
    await receiver.start()
    try:
        await _endpoint(api, clinic, receiver.url)
        _patient, bid, _ = await requested(api, doctor, local(2, "10:00"))
        at = dt.datetime.now(dt.UTC).isoformat()
        async with api.app[keys.DB].acquire() as conn, conn.transaction():
            for room in range(8):
                await hook_events.emit(
                    conn, "room_started", booking_id=bid, room=f"burst-{room}", at=at
                )
        events = await receiver.wait(8)
        assert sorted(e["room"] for e in events) == sorted(f"burst-{r}" for r in range(8))
        assert receiver.most == api.app[hooks.http.DELIVERER].concurrency == 4
    finally:
        await receiver.stop()
