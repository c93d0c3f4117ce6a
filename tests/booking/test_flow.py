"""The whole booking flow over HTTP, every step through the public API, as
the clinic, the admin, the doctor and an anonymous patient would drive it."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from yarl import URL

from tests.booking.bookings.test_bookings import shift
from tests.booking.factories import video_slots
from tests.conftest import Api
from wadud.state import keys
from wadud.web import auth
from wadud.web.api import Role

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"


async def test_onboard_publish_search_hold_pay_consult_review(api: Api) -> None:
    admin = await api.user(Role.ADMIN)

    # The admin creates a clinic in Pakistan with a 12.5% + Rs 10 commission,
    # and its first staff member.
    clinic = await api.post(
        "/api/v1/clinics",
        {
            "name": "Shifa Telehealth",
            "region": "PK",
            "commission_bp": 1250,
            "commission_fixed_minor": 1000,
        },
        token=admin,
        expect=201,
    )
    assert clinic["currency"] == "PKR"
    await api.post(
        "/api/v1/users",
        {
            "email": "staff@shifa.test",
            "password": "staff password 1",
            "role": "clinic_staff",
            "clinic_id": clinic["id"],
        },
        token=admin,
        expect=201,
    )
    staff = await api.login("staff@shifa.test", "staff password 1")

    # Staff onboard a doctor, upload a credential and set the availability:
    # every day, 5-minute video consultations, no notice needed.
    doctor = await api.post(
        f"/api/v1/clinics/{clinic['id']}/doctors",
        {
            "email": "dr.amina@shifa.test",
            "password": "doctor password 1",
            "display_name": "Dr. Amina Khan",
            "specialty": "cardiology",
            "languages": ["ur", "en"],
            "bio": "ماہر امراض قلب",
            "fee_minor": 150_000,
        },
        token=staff,
        expect=201,
    )
    did = doctor["id"]
    doc = await api.post(
        f"/api/v1/doctors/{did}/documents?kind=license&filename=pmdc.pdf",
        data=PDF,
        headers={"Content-Type": "application/pdf"},
        token=staff,
        expect=201,
    )
    await api.put(
        f"/api/v1/doctors/{did}/availability",
        {
            "time_zone": "Asia/Karachi",
            "min_notice_min": 0,
            "horizon_days": 14,
            "slot_minutes": {"video": 5},
            "weekly": [
                {"weekday": d, "start": "00:00", "end": "24:00", "types": ["video"]}
                for d in range(7)
            ],
        },
        token=staff,
        expect=200,
    )
    await api.post(f"/api/v1/doctors/{did}/submit", token=staff, expect=200)
    # Not public until an admin verifies the credential and publishes.
    await api.get(f"/api/v1/doctors/{did}", expect=404)
    await api.post(f"/api/v1/doctors/{did}/publish", token=admin, expect=409)
    await api.post(
        f"/api/v1/doctors/{did}/documents/{doc['id']}/verify",
        {"note": "PMDC number checked"},
        token=admin,
        expect=200,
    )
    await api.post(f"/api/v1/doctors/{did}/publish", token=admin, expect=200)

    # An anonymous patient searches, finds the doctor and a free slot.
    patient = (await api.post("/api/v1/auth/anonymous", {"display_name": "Bilal"}, expect=201))[
        "access_token"
    ]
    found = await api.get(
        "/api/v1/doctors?specialty=cardiology&language=ur&region=PK&sort=next_free", expect=200
    )
    assert [d["id"] for d in found["items"]] == [did]
    now = dt.datetime.now(dt.UTC)
    first = (await video_slots(api, did, now, now + dt.timedelta(hours=2)))[0]

    # Hold, pay on the sandbox's hosted checkout; its webhook confirms.
    booking = await api.post(
        "/api/v1/bookings",
        {"doctor_id": did, "type": "video", "starts_at": first["start"]},
        token=patient,
        expect=201,
    )
    assert booking["status"] == "held"
    assert booking["price_minor"] == 150_000
    # Someone else cannot take the held time.
    other = (await api.post("/api/v1/auth/anonymous", {}, expect=201))["access_token"]
    taken = await api.post(
        "/api/v1/bookings",
        {"doctor_id": did, "type": "video", "starts_at": first["start"]},
        token=other,
        expect=409,
    )
    assert taken["code"] in {"slot-taken", "slot-not-offered"}
    payment = await api.post(
        f"/api/v1/bookings/{booking['id']}/payments", {}, token=patient, expect=201
    )
    # The checkout URL is absolute, on the configured public URL; the test
    # server listens elsewhere, so follow its path.
    checkout = URL(payment["checkout"]["url"]).path
    page = await api.client.get(checkout)
    assert page.status == 200 and "Pay" in await page.text()
    paid = await api.client.post(checkout, data={"action": "pay"}, allow_redirects=False)
    assert paid.status == 303
    assert (await api.get(f"/api/v1/payments/{payment['id']}", token=patient))[
        "status"
    ] == "succeeded"
    assert (await api.get(f"/api/v1/bookings/{booking['id']}", token=patient))[
        "status"
    ] == "requested"

    # The ledger balances and splits 150,000 as 12.5% + 1,000 to the platform.
    ledger = await api.get(f"/api/v1/clinics/{clinic['id']}/ledger", token=staff, expect=200)
    totals: dict[str, int] = defaultdict(int)
    for txn in ledger["items"]:
        assert sum(e["amount_minor"] for e in txn["entries"]) == 0
        for e in txn["entries"]:
            totals[e["account"].split(":")[0]] += e["amount_minor"]
    assert totals["platform_revenue"] == -(150_000 * 1250 // 10_000 + 1000)
    assert totals["doctor_payable"] == -(150_000 - 150_000 * 1250 // 10_000 - 1000)
    earnings = await api.get(f"/api/v1/doctors/{did}/earnings", token=staff, expect=200)
    (pkr,) = earnings["currencies"]
    assert (pkr["gross_minor"], pkr["commission_minor"], pkr["payable_minor"]) == (
        150_000,
        19_750,
        130_250,
    )

    # The doctor accepts, both get join links, the consultation happens.
    dr = await api.login("dr.amina@shifa.test", "doctor password 1")
    await api.post(
        f"/api/v1/bookings/{booking['id']}/review", {"rating": 5}, token=patient, expect=409
    )
    await api.post(f"/api/v1/bookings/{booking['id']}/accept", token=dr, expect=200)
    link = await api.get(f"/api/v1/bookings/{booking['id']}/video-link", token=patient, expect=200)
    grant = auth.decode_room_token(api.app[keys.SETTINGS], link["token"], leeway=600)
    assert grant.room == f"booking-{booking['id']}" and not grant.admin
    dr_link = await api.get(f"/api/v1/bookings/{booking['id']}/video-link", token=dr, expect=200)
    assert auth.decode_room_token(api.app[keys.SETTINGS], dr_link["token"], leeway=600).admin
    await api.post(f"/api/v1/bookings/{booking['id']}/start", token=dr, expect=200)
    # Complete only once the slot has begun (it may be minutes away still).
    await shift(api, booking["id"], dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    await api.post(f"/api/v1/bookings/{booking['id']}/complete", token=dr, expect=200)

    # The patient reviews once; the doctor's rating follows.
    await api.post(
        f"/api/v1/bookings/{booking['id']}/review",
        {"rating": 5, "body": "بہت اچھے ڈاکٹر"},
        token=patient,
        expect=201,
    )
    await api.post(
        f"/api/v1/bookings/{booking['id']}/review", {"rating": 1}, token=patient, expect=409
    )
    reviews = await api.get(f"/api/v1/doctors/{did}/reviews", expect=200)
    assert [r["body"] for r in reviews["items"]] == ["بہت اچھے ڈاکٹر"]
    profile = await api.get(f"/api/v1/doctors/{did}", expect=200)
    assert profile["rating_count"] == 1

    # The events went out through the outbox.
    pool = api.app[keys.DB]
    topics = {r["topic"] for r in await pool.fetch("SELECT topic FROM outbox")}
    assert {"booking.requested", "booking.accepted", "booking.completed"} <= topics
    assert any(t.startswith("payment.") for t in topics)
