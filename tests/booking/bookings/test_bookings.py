"""Bookings over HTTP against a real PostgreSQL: holds, the lifecycle, tenant
isolation and role scopes, cancellation and refunds, rescheduling, manage
links and video links."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import jwt
import pytest

from booking.bookings import holds, transitions
from booking.bookings.errors import BookingNotFound, TransitionRefused
from booking.lifecycle import BookingEvent
from tests.booking.factories import Clinic, Doctor, make_clinic, make_doctor
from tests.conftest import Api
from wadud.state import keys
from wadud.web import auth
from wadud.web.api import Role

KARACHI = ZoneInfo("Asia/Karachi")


# -- helpers (also used by test_queue and test_concurrency) ----------------------


def local(days: int, hhmm: str, tz: ZoneInfo = KARACHI) -> dt.datetime:
    """``hhmm`` local time ``days`` from today in ``tz``, as UTC."""
    day = dt.datetime.now(tz).date() + dt.timedelta(days=days)
    return dt.datetime.combine(day, dt.time.fromisoformat(hhmm), tz).astimezone(dt.UTC)


def iso(value: dt.datetime) -> str:
    return value.isoformat()


def pool_of(api: Api) -> asyncpg.Pool:
    return api.app[keys.DB]


async def anon(api: Api) -> str:
    """An anonymous patient session's access token (cheap: no password hash)."""
    tokens = await api.post("/api/v1/auth/anonymous", {}, expect=201)
    return str(tokens["access_token"])


async def hold(
    api: Api,
    token: str,
    doctor: Doctor,
    starts_at: dt.datetime,
    *,
    type: str = "video",
    expect: int | None = 201,
) -> Any:
    return await api.post(
        "/api/v1/bookings",
        {"doctor_id": doctor.id, "type": type, "starts_at": iso(starts_at)},
        token=token,
        expect=expect,
    )


async def confirm(api: Api, booking_id: str) -> asyncpg.Record:
    """What payments does when a payment succeeds."""
    async with pool_of(api).acquire() as conn, conn.transaction():
        return await transitions.transition_booking(
            conn, uuid.UUID(booking_id), BookingEvent.CONFIRM_PAYMENT, actor_id=None
        )


async def shift(api: Api, booking_id: str, starts_at: dt.datetime) -> None:
    """Move a booking in time behind the API's back (to test time rules
    without waiting), keeping its length and buffers."""
    await pool_of(api).execute(
        """UPDATE bookings SET starts_at = $2, ends_at = $2::timestamptz + (ends_at - starts_at),
               blocked = tstzrange($2::timestamptz - (starts_at - lower(blocked)),
                                   $2::timestamptz + (upper(blocked) - starts_at))
           WHERE id = $1""",
        uuid.UUID(booking_id),
        starts_at,
    )


async def events(api: Api, topic: str) -> list[dict[str, Any]]:
    rows = await pool_of(api).fetch(
        "SELECT payload FROM outbox WHERE topic = $1 ORDER BY id", topic
    )
    return [r["payload"] for r in rows]


async def requested(api: Api, doctor: Doctor, starts_at: dt.datetime) -> tuple[str, str, str]:
    """A requested booking: (patient token, booking id, manage token)."""
    patient = await anon(api)
    booking = await hold(api, patient, doctor, starts_at)
    await confirm(api, booking["id"])
    sent = [e for e in await events(api, "booking.requested") if e["booking_id"] == booking["id"]]
    return patient, booking["id"], sent[-1]["manage_token"]


# -- holds -------------------------------------------------------------------------


async def test_hold_then_full_lifecycle(api: Api, doctor: Doctor) -> None:
    patient = await anon(api)
    start = local(2, "10:00")
    before = dt.datetime.now(dt.UTC)
    b = await hold(api, patient, doctor, start)
    assert b["status"] == "held"
    assert b["price_minor"] == doctor.fee_minor and b["currency"] == "PKR"
    assert b["clinic_id"] == doctor.clinic_id
    assert dt.datetime.fromisoformat(b["starts_at"]) == start
    assert dt.datetime.fromisoformat(b["ends_at"]) == start + dt.timedelta(minutes=20)
    expires = dt.datetime.fromisoformat(b["hold_expires_at"])
    assert before + dt.timedelta(minutes=10) <= expires <= before + dt.timedelta(minutes=11)
    assert "confirm_payment" in b["allowed_events"]

    row = await confirm(api, b["id"])
    assert row["status"] == "requested" and row["manage_token_hash"] is not None

    b = await api.post(f"/api/v1/bookings/{b['id']}/accept", token=doctor.token, expect=200)
    assert b["status"] == "accepted"
    # Not yet: the slot is two days away.
    err = await api.post(f"/api/v1/bookings/{b['id']}/start", token=doctor.token, expect=409)
    assert err["code"] == "too-early"
    await shift(api, b["id"], dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    b = await api.post(f"/api/v1/bookings/{b['id']}/start", token=doctor.token, expect=200)
    assert b["status"] == "in_progress"
    # Started early is fine; over before its slot begins is not (issue 25).
    err = await api.post(f"/api/v1/bookings/{b['id']}/complete", token=doctor.token, expect=409)
    assert err["code"] == "too-early"
    await shift(api, b["id"], dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    b = await api.post(f"/api/v1/bookings/{b['id']}/complete", token=doctor.token, expect=200)
    assert b["status"] == "completed" and b["allowed_events"] == []

    trail = await pool_of(api).fetch(
        "SELECT event, from_state, to_state FROM booking_events WHERE booking_id = $1 ORDER BY id",
        uuid.UUID(b["id"]),
    )
    assert [tuple(r) for r in trail] == [
        ("hold", None, "held"),
        ("confirm_payment", "held", "requested"),
        ("accept", "requested", "accepted"),
        ("start", "accepted", "in_progress"),
        ("complete", "in_progress", "completed"),
    ]
    for topic in ("held", "requested", "accepted", "in_progress", "completed"):
        sent = await events(api, f"booking.{topic}")
        assert [e["booking_id"] for e in sent] == [b["id"]], topic
    # A finished booking refuses more transitions with a typed 409.
    err = await api.post(f"/api/v1/bookings/{b['id']}/accept", token=doctor.token, expect=409)
    assert err["code"] == "invalid-transition"


async def test_start_window_is_the_links_window(api: Api, doctor: Doctor) -> None:
    """A consultation starts from 10 minutes before its slot to its end: not
    after the slot is over (its video links have stopped working then)."""
    _patient, bid, _ = await requested(api, doctor, local(2, "10:00"))
    b = {"id": bid}
    await api.post(f"/api/v1/bookings/{b['id']}/accept", token=doctor.token, expect=200)
    await shift(api, b["id"], dt.datetime.now(dt.UTC) - dt.timedelta(minutes=21))
    err = await api.post(f"/api/v1/bookings/{b['id']}/start", token=doctor.token, expect=409)
    assert err["code"] == "too-late"
    await shift(api, b["id"], dt.datetime.now(dt.UTC) - dt.timedelta(minutes=19))
    await api.post(f"/api/v1/bookings/{b['id']}/start", token=doctor.token, expect=200)


async def test_transition_booking_refuses_invalid_and_unknown(api: Api, doctor: Doctor) -> None:
    patient = await anon(api)
    b = await hold(api, patient, doctor, local(2, "10:00"))
    async with pool_of(api).acquire() as conn, conn.transaction():
        with pytest.raises(TransitionRefused):
            await transitions.transition_booking(
                conn, uuid.UUID(b["id"]), BookingEvent.START, actor_id=None
            )
    async with pool_of(api).acquire() as conn, conn.transaction():
        with pytest.raises(BookingNotFound):
            await transitions.transition_booking(
                conn, uuid.uuid4(), BookingEvent.ACCEPT, actor_id=None
            )


async def test_hold_refuses_bad_requests(api: Api, clinic: Clinic, doctor: Doctor) -> None:
    patient = await anon(api)
    off_grid = await hold(api, patient, doctor, local(2, "10:05"), expect=409)
    assert off_grid["code"] == "slot-not-offered"
    past = await hold(api, patient, doctor, local(-1, "10:00"), expect=409)
    assert past["code"] == "slot-not-offered"
    body = {"doctor_id": str(uuid.uuid4()), "type": "video", "starts_at": iso(local(2, "10:00"))}
    await api.post("/api/v1/bookings", body, token=patient, expect=404)
    draft = await make_doctor(api, clinic, published=False)
    await hold(api, patient, draft, local(2, "10:00"), expect=404)
    for bad in (
        {"doctor_id": doctor.id, "type": "phone", "starts_at": iso(local(2, "10:00"))},
        {"doctor_id": doctor.id, "type": "video", "starts_at": "2030-01-01T10:00:00"},
        {"doctor_id": doctor.id, "type": "video", "starts_at": "tomorrow"},
        {"doctor_id": "nope", "type": "video", "starts_at": iso(local(2, "10:00"))},
        {"doctor_id": doctor.id, "type": "video", "starts_at": iso(local(2, "10:00")), "x": 1},
        {"doctor_id": doctor.id, "type": "video"},
    ):
        err = await api.post("/api/v1/bookings", bad, token=patient, expect=422)
        assert err["code"] == "validation-error"
    await api.post("/api/v1/bookings", "{", token=patient, expect=422)
    # Only patients book.
    body = {"doctor_id": doctor.id, "type": "video", "starts_at": iso(local(2, "10:00"))}
    await api.post("/api/v1/bookings", body, token=doctor.token, expect=403)
    await api.post("/api/v1/bookings", body, expect=401)


async def test_taken_slot_and_lapsed_hold(api: Api, doctor: Doctor) -> None:
    first, second = await anon(api), await anon(api)
    start = local(2, "11:00")
    a = await hold(api, first, doctor, start)
    err = await hold(api, second, doctor, start, expect=409)
    assert err["code"] == "slot-taken"
    # The hold lapses: the very next request frees the time, no sweep needed.
    await pool_of(api).execute(
        "UPDATE bookings SET hold_expires_at = now() - interval '1 second' WHERE id = $1",
        uuid.UUID(a["id"]),
    )
    b = await hold(api, second, doctor, start)
    assert b["status"] == "held"
    a = await api.get(f"/api/v1/bookings/{a['id']}", token=first, expect=200)
    assert a["status"] == "expired"
    assert [e["booking_id"] for e in await events(api, "booking.expired")] == [a["id"]]
    # An expired hold cannot be paid any more.
    async with pool_of(api).acquire() as conn, conn.transaction():
        with pytest.raises(TransitionRefused):
            await transitions.transition_booking(
                conn, uuid.UUID(a["id"]), BookingEvent.CONFIRM_PAYMENT, actor_id=None
            )


async def test_sweeper_expires_lapsed_holds(api: Api, doctor: Doctor) -> None:
    patient = await anon(api)
    ids = [(await hold(api, patient, doctor, local(3, t)))["id"] for t in ("09:00", "09:20")]
    keep = (await hold(api, patient, doctor, local(3, "09:40")))["id"]
    await pool_of(api).execute(
        "UPDATE bookings SET hold_expires_at = now() - interval '1 minute' WHERE id = ANY($1)",
        [uuid.UUID(i) for i in ids],
    )
    assert await holds.sweep_holds(pool_of(api), batch=1) == 2
    assert await holds.sweep_holds(pool_of(api)) == 0
    rows = await pool_of(api).fetch("SELECT id::text, status FROM bookings")
    assert {r["id"]: r["status"] for r in rows} == {
        ids[0]: "expired",
        ids[1]: "expired",
        keep: "held",
    }
    # The app's background sweeper does the same on its own.
    await pool_of(api).execute(
        "UPDATE bookings SET hold_expires_at = now() - interval '1 minute' WHERE id = $1",
        uuid.UUID(keep),
    )
    task = asyncio.create_task(holds.sweep_holds_forever(pool_of(api), 0.01))
    try:
        for _ in range(200):
            await asyncio.sleep(0.02)
            status = await pool_of(api).fetchval(
                "SELECT status FROM bookings WHERE id = $1", uuid.UUID(keep)
            )
            if status == "expired":
                break
        assert status == "expired"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_idempotent_retry_holds_once(api: Api, doctor: Doctor) -> None:
    patient = await anon(api)
    body = {"doctor_id": doctor.id, "type": "video", "starts_at": iso(local(2, "10:00"))}
    key = {"Idempotency-Key": "hold-1"}
    first = await api.post("/api/v1/bookings", body, token=patient, headers=key, expect=201)
    again = await api.post("/api/v1/bookings", body, token=patient, headers=key, expect=201)
    assert again == first
    assert await pool_of(api).fetchval("SELECT count(*) FROM bookings") == 1


# -- who sees what -----------------------------------------------------------------


async def test_tenant_isolation(api: Api, clinic: Clinic, doctor: Doctor) -> None:
    other = await make_clinic(api, name="Other Clinic")
    other_doctor = await make_doctor(api, other)
    same_clinic_doctor = await make_doctor(api, clinic)
    patient_a, patient_b = await anon(api), await anon(api)
    admin = await api.user(Role.ADMIN)
    b = await hold(api, patient_a, doctor, local(2, "10:00"))
    await confirm(api, b["id"])
    path = f"/api/v1/bookings/{b['id']}"

    for token in (other.staff_token, other_doctor.token, patient_b, same_clinic_doctor.token):
        err = await api.get(path, token=token, expect=404)
        assert err["status"] == 404
        page = await api.get("/api/v1/bookings", token=token, expect=200)
        assert page["items"] == []
    await api.post(f"{path}/accept", token=other.staff_token, expect=404)
    await api.post(f"{path}/cancel", {}, token=other.staff_token, expect=404)
    await api.post(f"{path}/cancel", {}, token=patient_b, expect=404)
    for token in (patient_a, doctor.token, clinic.staff_token, admin):
        assert (await api.get(path, token=token, expect=200))["id"] == b["id"]
        page = await api.get("/api/v1/bookings", token=token, expect=200)
        assert [i["id"] for i in page["items"]] == [b["id"]]
    await api.get(path, expect=401)


async def test_role_scopes(api: Api, clinic: Clinic, doctor: Doctor) -> None:
    other_doctor = await make_doctor(api, await make_clinic(api, name="Other"))
    patient = await anon(api)
    b = await hold(api, patient, doctor, local(2, "10:00"))
    await confirm(api, b["id"])
    path = f"/api/v1/bookings/{b['id']}"
    err = await api.post(f"{path}/accept", token=patient, expect=403)
    assert err["code"] == "forbidden"
    for action in ("decline", "start", "complete", "no-show"):
        await api.post(f"{path}/{action}", token=patient, expect=403)
    await api.post(f"{path}/reschedule", {"starts_at": iso(local(2, "11:00"))},
                   token=doctor.token, expect=403)  # fmt: skip
    await api.post(f"{path}/accept", token=other_doctor.token, expect=404)
    # Staff of the clinic act for its doctors.
    b = await api.post(f"{path}/accept", token=clinic.staff_token, expect=200)
    await shift(api, b["id"], dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    await api.post(f"{path}/start", token=other_doctor.token, expect=404)
    err = await api.post(f"{path}/no-show", token=doctor.token, expect=409)
    assert err["code"] == "too-early"
    assert (await api.post(f"{path}/start", token=doctor.token, expect=200))["status"] == (
        "in_progress"
    )
    # A patient leaving a call is not a cancellation.
    err = await api.post(f"{path}/cancel", {}, token=patient, expect=409)
    assert err["code"] == "invalid-transition"


async def test_list_filters_and_pages(api: Api, doctor: Doctor) -> None:
    patient = await anon(api)
    starts = [local(2, t) for t in ("09:00", "09:20", "09:40", "10:00", "10:20")]
    ids = [(await hold(api, patient, doctor, s))["id"] for s in starts]
    await confirm(api, ids[1])
    seen: list[str] = []
    cursor = None
    while True:
        q = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await api.get(f"/api/v1/bookings{q}", token=patient, expect=200)
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    page = await api.get("/api/v1/bookings?status=requested", token=doctor.token, expect=200)
    assert [i["id"] for i in page["items"]] == [ids[1]]
    page = await api.get(
        "/api/v1/bookings?status=requested&status=held", token=doctor.token, expect=200
    )
    assert len(page["items"]) == 5
    window = {"from": iso(starts[1]), "to": iso(starts[3])}
    page = await api.get("/api/v1/bookings", params=window, token=patient, expect=200)
    assert [i["id"] for i in page["items"]] == ids[1:3]
    await api.get("/api/v1/bookings?status=lost", token=patient, expect=422)
    await api.get("/api/v1/bookings?limit=0", token=patient, expect=422)
    await api.get("/api/v1/bookings?cursor=!!!", token=patient, expect=422)
    await api.get("/api/v1/bookings?from=2030-01-01T00:00:00", token=patient, expect=422)


# -- cancel and reschedule ---------------------------------------------------------


async def test_cancel_unpaid_refunds_nothing(api: Api, clinic: Clinic, doctor: Doctor) -> None:
    patient = await anon(api)
    held = await hold(api, patient, doctor, local(2, "10:00"))
    c = await api.post(f"/api/v1/bookings/{held['id']}/cancel", {"reason": "changed my mind"},
                       token=patient, expect=200)  # fmt: skip
    assert (c["status"], c["cancelled_by"], c["cancel_reason"], c["refund_minor"]) == (
        "cancelled", "patient", "changed my mind", 0,
    )  # fmt: skip
    # The time is free again at once.
    again = await hold(api, await anon(api), doctor, local(2, "10:00"))
    await confirm(api, again["id"])
    c = await api.post(f"/api/v1/bookings/{again['id']}/decline", token=doctor.token, expect=200)
    assert (c["status"], c["cancelled_by"], c["refund_minor"]) == ("cancelled", "doctor", 0)
    third = await hold(api, await anon(api), doctor, local(2, "10:20"))
    c = await api.post(f"/api/v1/bookings/{third['id']}/cancel", {},
                       token=clinic.staff_token, expect=200)  # fmt: skip
    assert c["cancelled_by"] == "clinic"
    await api.post(f"/api/v1/bookings/{third['id']}/cancel", {}, token=clinic.staff_token,
                   expect=409)  # fmt: skip
    sent = await events(api, "booking.cancelled")
    assert [e["detail"]["refund_minor"] for e in sent] == [0, 0, 0]
    assert [e["detail"]["cancelled_by"] for e in sent] == ["patient", "doctor", "clinic"]


async def pay(api: Api, patient: str, booking_id: str) -> None:
    """Pay a held booking through the sandbox gateway: the payments API opens
    the intent, and the gateway's verified success is applied as a callback
    would apply it (which confirms the booking through transition_booking)."""
    from booking.payments.checkout.verdicts import apply_verdict
    from booking.payments.gateway import PaymentStatus, Verdict
    from booking.payments.intent import Money
    from booking.payments.keys import GATEWAYS

    await api.post(f"/api/v1/bookings/{booking_id}/payments", {}, token=patient, expect=201)
    async with pool_of(api).acquire() as conn, conn.transaction():
        intent = await conn.fetchrow(
            "SELECT * FROM payment_intents WHERE booking_id = $1", uuid.UUID(booking_id)
        )
        money = Money(int(intent["amount_minor"]), intent["currency"])
        # The patient pays on the sandbox's checkout page.
        sandbox = api.app[GATEWAYS].get("sandbox")
        sandbox.complete(intent["gateway_ref"], True, dt.datetime.now(dt.UTC))  # type: ignore[attr-defined]
        verdict = Verdict("sandbox", intent["gateway_ref"], PaymentStatus.SUCCEEDED, money)
        await apply_verdict(conn, verdict, default_bp=1500)


async def test_cancel_paid_refunds_per_policy(api: Api, doctor: Doctor) -> None:
    fee = doctor.fee_minor
    for notice, by_patient, refund in (
        (dt.timedelta(days=2), True, fee),
        (dt.timedelta(hours=3), True, fee // 2),
        (dt.timedelta(hours=1), True, 0),
        (dt.timedelta(hours=1), False, fee),
    ):
        patient = await anon(api)
        b = await hold(api, patient, doctor, local(2, "10:00"))
        await pay(api, patient, b["id"])
        got = await api.get(f"/api/v1/bookings/{b['id']}", token=patient, expect=200)
        assert got["status"] == "requested"
        await shift(api, b["id"], dt.datetime.now(dt.UTC) + notice)
        token = patient if by_patient else doctor.token
        c = await api.post(f"/api/v1/bookings/{b['id']}/cancel", {}, token=token, expect=200)
        assert (c["status"], c["refund_minor"]) == ("cancelled", refund), notice
        refunded = await pool_of(api).fetchval(
            "SELECT refunded_minor FROM payment_intents WHERE booking_id = $1",
            uuid.UUID(b["id"]),
        )
        assert refunded == refund


async def test_reschedule(api: Api, clinic: Clinic, doctor: Doctor) -> None:
    patient, bid, _ = await requested(api, doctor, local(2, "10:00"))
    other = await hold(api, await anon(api), doctor, local(2, "11:00"))
    path = f"/api/v1/bookings/{bid}/reschedule"
    moved = await api.post(path, {"starts_at": iso(local(2, "12:00"))}, token=patient, expect=200)
    assert dt.datetime.fromisoformat(moved["starts_at"]) == local(2, "12:00")
    assert moved["status"] == "requested"
    # The old time is free; the taken one is refused and nothing moves.
    await hold(api, await anon(api), doctor, local(2, "10:00"))
    err = await api.post(path, {"starts_at": iso(local(2, "11:00"))}, token=patient, expect=409)
    assert err["code"] == "slot-taken"
    err = await api.post(path, {"starts_at": iso(local(2, "11:05"))}, token=patient, expect=409)
    assert err["code"] == "slot-not-offered"
    now = await api.get(f"/api/v1/bookings/{bid}", token=patient, expect=200)
    assert dt.datetime.fromisoformat(now["starts_at"]) == local(2, "12:00")
    # Staff reschedule accepted bookings too; a hold cannot be rescheduled.
    await api.post(f"/api/v1/bookings/{bid}/accept", token=doctor.token, expect=200)
    moved = await api.post(path, {"starts_at": iso(local(3, "09:00"))},
                           token=clinic.staff_token, expect=200)  # fmt: skip
    assert moved["status"] == "accepted"
    err = await api.post(f"/api/v1/bookings/{other['id']}/reschedule",
                         {"starts_at": iso(local(3, "10:00"))}, token=clinic.staff_token,
                         expect=409)  # fmt: skip
    assert err["code"] == "invalid-transition"
    sent = await events(api, "booking.accepted")
    assert sent[-1]["event"] == "reschedule"
    assert sent[-1]["detail"]["to_starts_at"] == iso(local(3, "09:00"))


# -- manage links ------------------------------------------------------------------


async def test_manage_links(api: Api, doctor: Doctor) -> None:
    patient, bid, token = await requested(api, doctor, local(2, "10:00"))
    stored = await pool_of(api).fetchval(
        "SELECT manage_token_hash FROM bookings WHERE id = $1", uuid.UUID(bid)
    )
    assert stored == hashlib.sha256(token.encode()).digest()
    view = await api.get(f"/api/v1/manage/{token}", expect=200)
    assert view["id"] == bid
    await api.get(f"/api/v1/manage/{'x' * 43}", expect=404)
    await api.get("/api/v1/manage/bad%20token", expect=404)

    moved = await api.post(f"/api/v1/manage/{token}/reschedule",
                           {"starts_at": iso(local(2, "12:00"))}, expect=200)  # fmt: skip
    assert dt.datetime.fromisoformat(moved["starts_at"]) == local(2, "12:00")
    actor = await pool_of(api).fetchval(
        "SELECT actor_id::text FROM booking_events WHERE booking_id = $1 ORDER BY id DESC",
        uuid.UUID(bid),
    )
    assert actor == moved["patient_id"]

    # A fresh link replaces the old one; only the patient can ask for it.
    await api.post(f"/api/v1/bookings/{bid}/manage-link", token=doctor.token, expect=403)
    await api.post(f"/api/v1/bookings/{bid}/manage-link", token=await anon(api), expect=404)
    link = await api.post(f"/api/v1/bookings/{bid}/manage-link", token=patient, expect=200)
    assert link["token"] != token and link["url"].endswith(f"/api/v1/manage/{link['token']}")
    await api.get(f"/api/v1/manage/{token}", expect=404)
    await api.post(f"/api/v1/manage/{token}/cancel", {}, expect=404)

    c = await api.post(f"/api/v1/manage/{link['token']}/cancel", {"reason": "ill"}, expect=200)
    assert (c["status"], c["cancelled_by"], c["cancel_reason"]) == ("cancelled", "patient", "ill")
    # The link still shows the booking, but it cannot be cancelled twice.
    assert (await api.get(f"/api/v1/manage/{link['token']}", expect=200))["status"] == "cancelled"
    await api.post(f"/api/v1/manage/{link['token']}/cancel", {}, expect=409)


async def test_a_manage_link_in_a_browser_is_a_page(api: Api, doctor: Doctor) -> None:
    """The same URL: a page for a browser's navigation, the booking as JSON
    for a program (test_visit_journey drives the page in Chromium)."""
    _patient, bid, token = await requested(api, doctor, local(2, "10:00"))
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    resp = await api.client.get(f"/api/v1/manage/{token}", headers=browser)
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()
    assert "/static/call/manage.js" in page and "Dr. Test" in page
    assert "connect-src 'self'" in resp.headers["Content-Security-Policy"]
    # Not accepted yet: no way into the visit.
    assert 'id="join-visit"' not in page
    await api.post(f"/api/v1/bookings/{bid}/accept", token=doctor.token, expect=200)
    page = await (await api.client.get(f"/api/v1/manage/{token}", headers=browser)).text()
    base = api.app[keys.SETTINGS].base_url
    assert f'id="join-visit" href="{base}/call/booking-{bid}?token=' in page
    for accept in ("application/json", "*/*"):
        view = await api.get(f"/api/v1/manage/{token}", headers={"Accept": accept}, expect=200)
        assert (view["id"], view["status"]) == (bid, "accepted")
    gone = await api.client.get(f"/api/v1/manage/{'x' * 43}", headers=browser)
    assert gone.status == 404 and gone.content_type == "text/html"
    await api.get(f"/api/v1/manage/{'x' * 43}", expect=404)  # a problem, as JSON


# -- video links -------------------------------------------------------------------


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def test_video_link_window(api: Api, clinic: Clinic, doctor: Doctor) -> None:
    settings = api.app[keys.SETTINGS]
    patient, bid, _ = await requested(api, doctor, local(2, "10:00"))
    path = f"/api/v1/bookings/{bid}/video-link"
    err = await api.get(path, token=patient, expect=409)
    assert err["code"] == "video-link-unavailable"
    await api.post(f"/api/v1/bookings/{bid}/accept", token=doctor.token, expect=200)

    mine = await api.get(path, token=patient, expect=200)
    start = local(2, "10:00")
    assert _claims(mine["token"])["nbf"] == int((start - dt.timedelta(minutes=10)).timestamp())
    assert _claims(mine["token"])["exp"] == int((start + dt.timedelta(minutes=20)).timestamp())
    assert mine["url"] == f"{settings.base_url}/call/booking-{bid}?token={mine['token']}"
    # Two days early the token is not valid yet.
    with pytest.raises(auth.InvalidToken):
        auth.decode_room_token(settings, mine["token"])

    # Five minutes before the slot it is, for the patient without admin rights
    # and for the doctor and staff with them.
    await shift(api, bid, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    mine = await api.get(path, token=patient, expect=200)
    grant = auth.decode_room_token(settings, mine["token"])
    assert (grant.room, grant.role, grant.admin) == (f"booking-{bid}", "patient", False)
    assert grant.publish and grant.subscribe
    for token, role in ((doctor.token, "doctor"), (clinic.staff_token, "staff")):
        link = await api.get(path, token=token, expect=200)
        grant = auth.decode_room_token(settings, link["token"])
        assert (grant.room, grant.role, grant.admin) == (f"booking-{bid}", role, True)
    # After the slot's end it has expired.
    await shift(api, bid, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30))
    late = await api.get(path, token=patient, expect=200)
    with pytest.raises(auth.InvalidToken):
        auth.decode_room_token(settings, late["token"])
    await api.get(path, token=await anon(api), expect=404)


async def test_openapi_documents_bookings(api: Api) -> None:
    doc = await api.get("/api/v1/openapi.json", expect=200)
    paths = doc["paths"]
    for p in (
        "/api/v1/bookings",
        "/api/v1/bookings/{id}/cancel",
        "/api/v1/manage/{token}/reschedule",
        "/api/v1/instant/{clinic_id}/{specialty}/take",
        "/api/v1/instant/entries/{id}",
    ):
        assert p in paths, p
    assert paths["/api/v1/bookings"]["post"]["summary"] == "Hold a slot while the patient pays."


async def test_a_visit_has_a_phone_pin_that_opens_it_in_its_window_only(
    api: Api, doctor: Doctor
) -> None:
    """The phone bridge's dial-in (issue 38): eight digits drawn with the
    booking, carried to the notifier, shown with the video link where
    dial-in is offered, and opening the visit only while its link would."""
    from booking import calls
    from booking.bookings import access

    pool = pool_of(api)
    _, bid, _ = await requested(api, doctor, local(2, "10:00"))
    pin = await pool.fetchval("SELECT phone_pin FROM bookings WHERE id = $1", uuid.UUID(bid))
    assert isinstance(pin, str) and len(pin) == 8 and pin.isdigit()
    sent = [e for e in await events(api, "booking.requested") if e["booking_id"] == bid]
    assert sent[-1]["phone_pin"] == pin

    async def opens(code: str) -> str | None:
        async with pool.acquire() as conn:
            row = await access.visit_by_phone_pin(conn, code, dt.datetime.now(dt.UTC))
        return None if row is None else str(row["id"])

    assert await opens(pin) is None  # requested, not accepted; and two days early
    await api.post(f"/api/v1/bookings/{bid}/accept", token=doctor.token, expect=200)
    assert await opens(pin) is None  # still two days early
    await shift(api, bid, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    assert await opens(pin) == bid
    wrong = f"{(int(pin) + 1) % 10**8:08d}"
    assert await opens(wrong) is None and await opens(pin[:7]) is None
    assert await opens(pin[:7] + "x") is None and await opens("٤" * 8) is None

    row = await pool.fetchrow("SELECT * FROM bookings WHERE id = $1", uuid.UUID(bid))
    settings = api.app[keys.SETTINGS]
    assert calls.video_link(settings, row, identity="p", name="", role="patient").phone is None
    offered = dataclasses.replace(settings, sip_dial_in="+92 51 1234567")
    link = calls.video_link(offered, row, identity="p", name="", role="patient")
    assert link.phone == calls.PhoneDialIn(number="+92 51 1234567", pin=pin)

    # One PIN names one live visit; a finished visit's PIN is free again.
    _, other, _ = await requested(api, doctor, local(3, "10:00"))
    take = "UPDATE bookings SET phone_pin = $2 WHERE id = $1"
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(take, uuid.UUID(other), pin)
    await shift(api, bid, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30))
    assert await opens(pin) is None  # its slot is over
    await pool.execute("UPDATE bookings SET status = 'completed' WHERE id = $1", uuid.UUID(bid))
    await pool.execute(take, uuid.UUID(other), pin)
