"""Each visit's call report (issue 23), in process with real PostgreSQL: the
recorder's batches, the report's assembly, ``call_report_ready``, the API
and its page, who may read it, and its retention rule. The media side here
is the worker's own event types fed to the recorder; real browsers on a
capped link are tests/signalling/test_call_report_browser.py."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from booking.call_reports import assembly, storage
from booking.call_reports.page import render
from booking.call_reports.privacy import CallReportProvider, retention_rules
from hooks import events as hook_events
from privacy import retention
from sfu.control.messages import CallSample, TransportState
from signalling.edge.http import RECORDER
from tests.booking.bookings.test_bookings import events, pool_of
from tests.booking.factories import Clinic, Doctor, make_clinic, make_doctor
from tests.booking.test_video_calls import _live_booking
from tests.chromium import CHROMIUM
from tests.conftest import Api
from tests.signalling.service.test_ws import joined
from wadud.state import keys
from wadud.web.api import Role

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def _sample(room: str, pid: str, i: int, *, capped: bool) -> CallSample:
    """Twelve looks (a minute): the capped one drops to the quarter layer with
    loss from the fourth look on."""
    weak = capped and i >= 4
    return CallSample(
        room=room,
        participant=pid,
        loss=0.12 if weak else 0.0,
        rtt=0.21 if weak else 0.04,
        jitter=0.035 if weak else 0.004,
        sent=240_000 if weak else 1_400_000,
        received=150_000 if weak else 1_300_000,
        available=300_000 if weak else 2_500_000,
        layers={"cam-a": "q" if weak else "f", "cam-b": "q" if weak else "f"},
        quality="poor" if weak else "excellent",
    )


async def _stats(api: Api, token: str, body: Any, expect: int) -> Any:
    return await api.post("/api/v1/calls/stats", {**body, "token": token}, expect=expect)


async def test_a_visit_s_report_from_samples_to_the_page(
    api: Api, clinic: Clinic, doctor: Doctor, tmp_path: Path
) -> None:
    bid, _patient, pt_link, dr_link = await _live_booking(api, doctor)
    room = f"booking-{bid}"
    recorder = api.app[RECORDER]
    pool = pool_of(api)
    async with joined(api, dr_link) as (dr, dj), joined(api, pt_link) as (_pt, pj):
        assert dj["type"] == "joined"
        if pj["type"] == "waiting":
            waiting = await dr.type("waiting")
            await dr.request({"type": "admit", "participant_id": waiting["waiting"][0]["id"]}, "a")
        doc_id, pat_id = dj["participant"]["id"], "p-unknown"
        # The page's own samples: the patient's browser over TURN, with freezes.
        body = {
            "participant_id": pat_id,
            "stats": {
                "relay": True,
                "candidate": "relay/udp",
                "rtt": 0.2,
                "freeze_count": 3,
                "freeze_seconds": 4.5,
                "concealed_seconds": 2.25,
                "ice_restarts": 1,
                "media": "connected",
                "quality_shown": {doc_id: "good"},
            },
        }
        await _stats(api, pt_link, body, 204)
        # Typed refusals: no token, a bad one, a malformed body.
        await api.post("/api/v1/calls/stats", body, expect=401)
        await _stats(api, "not-a-token", body, 401)
        bad = await _stats(api, pt_link, {"participant_id": 7}, 400)
        assert bad["status"] == 400
        await _stats(api, pt_link, {"participant_id": "x", "stats": {"rtt": "slow"}}, 400)
        await api.post("/api/v1/calls/stats", "[1]", expect=401)
        # The doctor's id with the patient's link: not theirs to report for.
        other = await _stats(api, pt_link, {**body, "participant_id": doc_id}, 403)
        assert other["status"] == 403
        # The worker's looks (every 5 s in a call; a minute's worth here).
        for pid in (doc_id, pat_id):
            recorder.on_media_event(TransportState(room, pid, "publish", "connected"))
        for i in range(12):
            for pid in (doc_id, pat_id):
                recorder.on_media_event(_sample(room, pid, i, capped=pid == pat_id))
            if i == 6:
                recorder.on_media_event(TransportState(room, pat_id, "subscribe", "failed"))
            if i == 7:
                recorder.on_media_event(TransportState(room, pat_id, "subscribe", "connected"))
        # A room of no booking and a room this replica does not own: not kept.
        recorder.on_media_event(_sample("demo-room", doc_id, 0, capped=False))
        recorder.on_media_event(_sample(f"booking-{uuid.uuid4()}", doc_id, 0, capped=False))
        await recorder.flush()
        assert await pool.fetchval("SELECT count(*) FROM call_samples") == 25
        # Under way: readable, not ready.
        live = await api.get(f"/api/v1/bookings/{bid}/call-report", token=clinic.staff_token,
                             expect=200)  # fmt: skip
        assert live["ready"] is False
        await dr.request({"type": "end"}, "end")
    await recorder.flush()
    report = await api.get(f"/api/v1/bookings/{bid}/call-report", token=clinic.staff_token,
                           expect=200)  # fmt: skip
    assert report["ready"] is True
    # The room webhook event (topic room.call_report_ready, which the
    # webhook trigger delivers), saying where the report is.
    ready_topic = hook_events.topic(storage.READY_EVENT)
    ready = [e for e in await events(api, ready_topic) if e["booking_id"] == bid]
    assert len(ready) == 1 and ready[0]["room"] == room
    assert ready[0]["data"]["report"] == f"/api/v1/bookings/{bid}/call-report"
    # A second flush finishes nothing again.
    await recorder.flush()
    assert len(await events(api, ready_topic)) == 1
    people = {p["participant_id"]: p for p in report["participants"]}
    pat, doc = people[pat_id], people[doc_id]
    assert pat["role"] == "patient" and pat["turn"] is True and doc["turn"] is False
    # The doctor's page never sent stats (a plain client here): the name and
    # role are the room's, from the link they joined with.
    assert doc["role"] == "doctor" and doc["name"] == dj["participant"]["name"] != ""
    assert pat["freezes"] == 3 and pat["concealed_seconds"] == 2.25
    assert pat["ice_restarts"] == 1
    # The capped one: the quarter layer for most of the minute, loss, two reconnects
    # (the worker's failed-then-connected, the page's ICE restart).
    assert pat["seconds_on_layer"]["q"] > pat["seconds_on_layer"].get("f", 0)
    assert "q" not in doc["seconds_on_layer"]
    assert max(s["loss"] for s in pat["media"]) == 0.12
    assert max(s["loss"] for s in doc["media"]) == 0.0
    assert {r["by"] for r in pat["reconnects"]} == {"media", "page"}
    assert doc["reconnects"] == []
    assert pat["seconds_at_quality"]["poor"] > 0
    # The page: plots, the names, no script.
    page = await api.get(f"/api/v1/bookings/{bid}/call-report/page", token=clinic.staff_token,
                         expect=200)  # fmt: skip
    assert page.count("<svg") >= 8 and "<script" not in page


async def test_the_report_page_at_a_glance(api: Api, doctor: Doctor, tmp_path: Path) -> None:
    """A minute of a three-person visit whose patient's link is capped from
    0:15 (quarter layer, loss) and drops at 0:33: the page, in screenshots."""
    bid, *_ = await _live_booking(api, doctor)
    booking = uuid.UUID(bid)
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    people = [
        storage.CallParticipant(booking, "dr", "Dr. Amina Khan", "doctor"),
        storage.CallParticipant(booking, "pt", "Bilal Ahmed", "patient"),
        storage.CallParticipant(booking, "st", "Sara Malik", "staff"),
    ]
    rows, evs = [], []
    for p in people:
        evs.append(storage.TransportEvent(booking, p.participant, t0, "connected", "publish"))
    for i in range(13):
        at = t0 + dt.timedelta(seconds=5 * i)
        for p in people:
            capped = p.participant == "pt" and i >= 3
            look = _sample("r", p.participant, 4 if capped else 0, capped=capped)
            data = {k: getattr(look, k) for k in
                    ("loss", "rtt", "jitter", "sent", "received", "available", "layers",
                     "quality")}  # fmt: skip
            if capped:
                data["loss"] = [0.08, 0.15, 0.11, 0.09][i % 4]
                data["rtt"] = [0.18, 0.26, 0.22, 0.31][i % 4]
            if p.participant == "pt" and i == 7:
                data["quality"] = "lost"
                data["layers"] = {"cam-a": None, "cam-b": None}
            rows.append(storage.Row(booking, p.participant, "media", at, data))
            page = {"relay": p.participant == "pt", "freeze_count": 2 * (i > 6),
                    "freeze_seconds": 3.1 * (i > 6), "concealed_seconds": 1.4 * (i > 6),
                    "ice_restarts": 1 if p.participant == "pt" and i > 6 else 0}  # fmt: skip
            if p.participant != "pt":
                page = {**page, "freeze_count": 0, "freeze_seconds": 0, "concealed_seconds": 0}
            rows.append(storage.Row(booking, p.participant, "page", at, page))
    evs.append(storage.TransportEvent(booking, "pt", t0 + dt.timedelta(seconds=33), "failed",
                             "subscribe"))  # fmt: skip
    evs.append(storage.TransportEvent(booking, "pt", t0 + dt.timedelta(seconds=37), "connected",
                             "subscribe"))  # fmt: skip
    end = t0 + dt.timedelta(seconds=62)
    for p in people:
        evs.append(storage.TransportEvent(booking, p.participant, end, "closed", "publish"))
    async with pool_of(api).acquire() as conn:
        await storage.store(conn, rows, evs, people)
        await storage.finish(conn, booking, end)
        report = await assembly.assemble(conn, booking)
    assert report is not None
    pt = next(p for p in report["participants"] if p["name"] == "Bilal Ahmed")
    assert pt["seconds_on_layer"]["q"] >= 40 and len(pt["reconnects"]) == 1
    assert report["participants"][0]["name"] == "Dr. Amina Khan"
    _screenshots(report, tmp_path)


def _screenshots(report: dict[str, Any], where: Path) -> None:
    html = where / "report.html"
    html.write_text(render(report, "Call report", "n").replace(" nonce='n'", ""))
    screenshots(html, where, "call-report")


def screenshots(html: Path, where: Path, prefix: str) -> list[Path]:
    """The page at desktop and phone sizes (headless Chromium), as
    ``<prefix>-desktop.png`` and ``<prefix>-phone.png``; copied to docs/img
    with WADUD_SAVE_SCREENSHOTS=1."""
    if not Path(CHROMIUM).exists():
        return []
    shots = []
    for name, size in (("desktop", "1280,800"), ("phone", "390,844")):
        shot = where / f"{prefix}-{name}.png"
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={where / 'profile'}", f"--window-size={size}",
             f"--screenshot={shot}", html.as_uri()],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        assert shot.stat().st_size > 10_000
        if os.environ.get("WADUD_SAVE_SCREENSHOTS"):
            shutil.copy(shot, DOCS_IMG / shot.name)
        shots.append(shot)
    return shots


async def test_only_the_clinic_s_staff_read_a_report(
    api: Api, clinic: Clinic, doctor: Doctor
) -> None:
    bid, patient, _pt_link, _dr_link = await _live_booking(api, doctor)
    path = f"/api/v1/bookings/{bid}/call-report"
    # No call yet: a typed 404.
    none = await api.get(path, token=clinic.staff_token, expect=404)
    assert none["code"] == "call-report-not-found"
    async with pool_of(api).acquire() as conn:
        await storage.store(
            conn,
            [storage.Row(uuid.UUID(bid), "p1", "media", dt.datetime.now(dt.UTC),
                              {"loss": 0.0, "quality": "excellent", "layers": {}})],
        )  # fmt: skip
    await api.get(path, token=clinic.staff_token, expect=200)
    admin = await api.user(Role.ADMIN)
    await api.get(path, token=admin, expect=200)
    # Its own patient and doctor: not theirs to read (the report shows
    # everyone's network); staff of another clinic: no such booking.
    assert (await api.get(path, token=patient, expect=403))["status"] == 403
    await api.get(path, token=doctor.token, expect=403)
    await api.get(f"{path}/page", token=patient, expect=403)
    other = await make_clinic(api, name="Other Clinic")
    assert (await api.get(path, token=other.staff_token, expect=404))["status"] == 404
    await api.get(f"{path}/page", token=other.staff_token, expect=404)
    stranger = await _live_booking(api, await make_doctor(api, other))
    await api.get(path, token=stranger[1], expect=403)
    await api.get(f"/api/v1/bookings/{uuid.uuid4()}/call-report", token=clinic.staff_token,
                  expect=404)  # fmt: skip
    await api.get("/api/v1/bookings/not-an-id/call-report", token=clinic.staff_token,
                  expect=404)  # fmt: skip
    await api.get(path, expect=401)
    spec = await api.get("/api/v1/openapi.json", expect=200)
    assert "get" in spec["paths"]["/api/v1/bookings/{id}/call-report"]
    # Every read is in the audit trail.
    n = await pool_of(api).fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'call_report.read'"
    )
    assert n == 2


async def test_retention_deletes_old_reports(api: Api, doctor: Doctor) -> None:
    bid, *_ = await _live_booking(api, doctor)
    booking = uuid.UUID(bid)
    pool = pool_of(api)
    async with pool.acquire() as conn:
        now = dt.datetime.now(dt.UTC)
        await storage.store(
            conn,
            [storage.Row(booking, "p1", "media", now, {"loss": 0.01})],
            [storage.TransportEvent(booking, "p1", now, "connected", "publish")],
        )
        assert await storage.finish(conn, booking, now)
        assert not await storage.finish(conn, booking, now)
        settings = api.app[keys.SETTINGS]
        rules = retention_rules()
        ctx = retention.RoundContext(now + dt.timedelta(days=89), False, 100, None, settings)
        kept = await retention.run_rules(conn, rules, ctx)
        assert kept[0].rows == 0
        ctx = retention.RoundContext(now + dt.timedelta(days=91), False, 100, None, settings)
        gone = await retention.run_rules(conn, rules, ctx)
        assert gone[0].rows == 1
        assert await conn.fetchval("SELECT count(*) FROM call_samples") == 0
        assert await conn.fetchval("SELECT count(*) FROM call_events") == 0


async def test_a_patient_s_export_and_erasure(api: Api, doctor: Doctor) -> None:
    from privacy.rights import Subject

    bid, *_ = await _live_booking(api, doctor)
    booking = uuid.UUID(bid)
    pool = pool_of(api)
    patient = await pool.fetchval("SELECT patient_id FROM bookings WHERE id = $1", booking)
    now = dt.datetime.now(dt.UTC)
    people = [
        storage.CallParticipant(booking, "pt", "Bilal", "patient"),
        storage.CallParticipant(booking, "dr", "Dr Amina", "doctor"),
    ]
    rows = [storage.Row(booking, p.participant, "media", now, {"loss": 0.0}) for p in people]
    provider = CallReportProvider()
    async with pool.acquire() as conn:
        await storage.store(conn, rows, (), people)
        parts = await provider.export(conn, Subject(patient, None, ""))
        # Only what was recorded of the patient, not of the doctor.
        assert [r["name"] for r in parts[0].records] == ["Bilal"]
        erased = await provider.erase(conn, Subject(patient, None, ""))
        assert erased.counts == {"call_reports": 1}
        assert await conn.fetchval("SELECT count(*) FROM call_samples") == 0
