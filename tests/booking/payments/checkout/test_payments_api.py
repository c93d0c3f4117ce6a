"""Payments over HTTP against a real PostgreSQL: the sandbox flow end to end,
the redirect landing, refunds, payouts, earnings and tenant isolation.

Held bookings are inserted with SQL (tests/booking/factories.py style) so
these tests do not depend on the bookings endpoints.
"""

from __future__ import annotations

import datetime as dt
import html
import itertools
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from booking.api import bookings
from booking.payments.keys import GATEWAYS
from booking.payments.postings import ledger_is_balanced
from tests.booking.factories import Clinic, Doctor, make_clinic, make_doctor
from tests.conftest import Api
from wadud.state import keys
from wadud.web.api import Role

_SLOTS = itertools.count(1)


def pool_of(api: Api) -> asyncpg.Pool:
    return api.app[keys.DB]


def path_of(url: str) -> str:
    """The path and query of a URL built on settings.base_url (not the test port)."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def anon_patient(api: Api) -> tuple[str, str]:
    tokens = await api.post("/api/v1/auth/anonymous", {}, expect=201)
    return str(tokens["access_token"]), str(tokens["user_id"])


async def held_booking(
    api: Api,
    doctor: Doctor,
    patient_id: str,
    *,
    price: int | None = None,
    hold_minutes: float = 10,
    status: str = "held",
    day: int | None = None,
) -> str:
    """A booking row held for payment, ``day`` days ahead at 10:00 UTC (by
    default a fresh half hour each call, so holds never overlap)."""
    pool = pool_of(api)
    start = dt.datetime.now(dt.UTC).replace(hour=10, minute=0, second=0, microsecond=0)
    start += dt.timedelta(days=1) if day is None else dt.timedelta(days=day)
    if day is None:
        start += dt.timedelta(minutes=30 * next(_SLOTS))
    end = start + dt.timedelta(minutes=20)
    hold = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=hold_minutes)
    key, currency = await pool.fetchrow(
        "SELECT key, currency FROM doctors WHERE id = $1", uuid.UUID(doctor.id)
    )
    bid = await pool.fetchval(
        """INSERT INTO bookings (clinic_id, doctor_id, doctor_key, patient_id, type, starts_at,
               ends_at, blocked, status, hold_expires_at, price_minor, currency)
           VALUES ($1, $2, $3, $4, 'video', $5, $6, tstzrange($5, $6), $7, $8, $9, $10)
           RETURNING id""",
        uuid.UUID(doctor.clinic_id),
        uuid.UUID(doctor.id),
        key,
        uuid.UUID(patient_id),
        start,
        end,
        status,
        hold if status == "held" else None,
        doctor.fee_minor if price is None else price,
        currency,
    )
    return str(bid)


async def booking_status(api: Api, booking_id: str) -> str:
    return str(
        await pool_of(api).fetchval(
            "SELECT status FROM bookings WHERE id = $1", uuid.UUID(booking_id)
        )
    )


async def start_payment(api: Api, token: str, booking_id: str, **body: Any) -> dict[str, Any]:
    result: dict[str, Any] = await api.post(
        f"/api/v1/bookings/{booking_id}/payments", body, token=token, expect=201
    )
    return result


async def checkout(api: Api, payment: dict[str, Any], action: str = "pay") -> str:
    """Press a button on the sandbox page; return the redirect's path and query."""
    resp = await api.client.post(
        path_of(payment["checkout"]["url"]), data={"action": action}, allow_redirects=False
    )
    assert resp.status == 303, await resp.text()
    return path_of(resp.headers["Location"])


async def paid_booking(
    api: Api, doctor: Doctor, *, price: int | None = None
) -> tuple[str, str, dict[str, Any]]:
    """A booking paid through the sandbox: (patient token, booking id, payment)."""
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient, price=price)
    payment = await start_payment(api, token, booking)
    landing = await checkout(api, payment)
    await api.get(landing, expect=200)
    return token, booking, payment


async def set_commission(api: Api, clinic: Clinic, bp: int | None, fixed: int = 0) -> None:
    await pool_of(api).execute(
        "UPDATE clinics SET commission_bp = $2, commission_fixed_minor = $3 WHERE id = $1",
        uuid.UUID(clinic.id),
        bp,
        fixed,
    )


async def owed(api: Api, commission_bp: int = 0) -> tuple[Clinic, Doctor]:
    """A new clinic taking ``commission_bp`` and its doctor (fee 100,000),
    owed for one booking paid through the sandbox."""
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic, fee_minor=100_000)
    await set_commission(api, clinic, commission_bp)
    await paid_booking(api, doctor)
    return clinic, doctor


async def account_balances(api: Api, clinic: Clinic) -> dict[str, int]:
    rows = await pool_of(api).fetch(
        """SELECT account, sum(amount_minor) AS total FROM ledger_entries
           WHERE clinic_id = $1 GROUP BY account""",
        uuid.UUID(clinic.id),
    )
    return {r["account"]: int(r["total"]) for r in rows}


# --- the whole flow ----------------------------------------------------------------


async def test_sandbox_flow_end_to_end(api: Api) -> None:
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic, fee_minor=150_000)
    await set_commission(api, clinic, 1250, 1_000)
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)

    payment = await start_payment(api, token, booking)
    assert payment["status"] == "processing"
    assert payment["amount_minor"] == 150_000
    assert payment["currency"] == "PKR"
    assert payment["checkout"]["method"] == "GET"
    assert "/sandbox/checkout/sbx_" in payment["checkout"]["url"]

    page = await api.get(path_of(payment["checkout"]["url"]), expect=200)
    # The amount travels as data, for the page to write the patient's way.
    assert '"amount_minor": 150000, "currency": "PKR"' in page
    assert 'value="pay"' in page

    landing = await checkout(api, payment)
    assert landing.startswith(f"/api/v1/payments/{payment['id']}/return?")
    # The webhook was delivered in process before the redirect.
    got = await api.get(f"/api/v1/payments/{payment['id']}", token=token, expect=200)
    assert got["status"] == "succeeded"
    assert got["checkout"] is None
    assert await booking_status(api, booking) == "requested"

    # The landing verifies the signed result and finds it applied already.
    result = await api.get(landing, expect=200)
    assert result == {"payment_id": payment["id"], "booking_id": booking, "status": "succeeded"}

    # Commission: floor(150000 * 12.5 %) + 10.00 fixed = 19750 to the platform.
    balances = await account_balances(api, clinic)
    assert balances == {
        "gateway_clearing:sandbox": 150_000,
        f"doctor_payable:{doctor.id}": -130_250,
        "platform_revenue": -19_750,
    }
    async with pool_of(api).acquire() as conn:
        assert await ledger_is_balanced(conn)
        assert await ledger_is_balanced(conn, uuid.UUID(clinic.id))
    topics = [r["topic"] for r in await pool_of(api).fetch("SELECT topic FROM outbox ORDER BY id")]
    assert "payment.created" in topics
    assert "payment.succeeded" in topics
    assert "booking.requested" in topics

    earnings = await api.get(f"/api/v1/doctors/{doctor.id}/earnings", token=doctor.token)
    assert earnings["currencies"] == [
        {
            "currency": "PKR",
            "gross_minor": 150_000,
            "refunds_minor": 0,
            "commission_minor": 19_750,
            "paid_out_minor": 0,
            "payable_minor": 130_250,
        }
    ]


async def test_decline_fails_the_intent_and_keeps_the_hold(
    api: Api, clinic: Clinic, doctor: Doctor
) -> None:
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    payment = await start_payment(api, token, booking)
    landing = await checkout(api, payment, "decline")
    result = await api.get(landing, expect=200)
    assert result["status"] == "failed"
    assert await booking_status(api, booking) == "held"
    assert await account_balances(api, clinic) == {}
    # A failed intent is terminal; the patient may try again with a new one.
    again = await start_payment(api, token, booking)
    assert again["id"] != payment["id"]


#: What a browser's navigation asks for (Chromium's Accept).
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


async def test_return_url_redirect_after_verification(
    api: Api, clinic: Clinic, doctor: Doctor
) -> None:
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    payment = await start_payment(api, token, booking, return_url="https://clinic.example/done?x=1")
    landing = await checkout(api, payment)
    resp = await api.client.get(landing, allow_redirects=False)
    assert resp.status == 303
    target = urlsplit(resp.headers["Location"])
    assert target.netloc == "clinic.example"
    assert dict(parse_qsl(target.query)) == {
        "x": "1",
        "payment_id": payment["id"],
        "status": "succeeded",
    }
    # A browser lands on the confirmation page instead, whose Continue link
    # goes where a program is redirected; no accepted visit, no video link.
    browser = await api.client.get(landing, headers=BROWSER, allow_redirects=False)
    assert browser.status == 200 and browser.content_type == "text/html"
    page = await browser.text()
    assert f'id="continue" href="{html.escape(resp.headers["Location"])}"' in page
    assert "Dr. Test" in page and 'id="join-visit"' not in page
    bad = await api.post(
        f"/api/v1/bookings/{booking}/payments",
        {"return_url": "javascript:alert(1)"},
        token=token,
        expect=422,
    )
    assert bad["status"] == 422


async def test_second_create_returns_the_live_intent(api: Api, doctor: Doctor) -> None:
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    first = await start_payment(api, token, booking)
    second = await api.post(f"/api/v1/bookings/{booking}/payments", {}, token=token, expect=200)
    assert second["id"] == first["id"]
    assert second["checkout"] == first["checkout"]
    other = await api.post(
        f"/api/v1/bookings/{booking}/payments", {"gateway": "jazzcash"}, token=token, expect=409
    )
    assert other["code"] == "live_payment_exists"
    count = await pool_of(api).fetchval(
        "SELECT count(*) FROM payment_intents WHERE booking_id = $1", uuid.UUID(booking)
    )
    assert count == 1


async def test_create_refusals(api: Api, clinic: Clinic, doctor: Doctor) -> None:
    token, patient = await anon_patient(api)
    other_token, _ = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    # Someone else's booking does not exist for you.
    await api.post(f"/api/v1/bookings/{booking}/payments", {}, token=other_token, expect=404)
    # Unknown gateway, unknown fields, a lapsed hold, a free booking.
    unknown = await api.post(
        f"/api/v1/bookings/{booking}/payments", {"gateway": "paypal"}, token=token, expect=422
    )
    assert unknown["code"] == "unknown_gateway"
    await api.post(
        f"/api/v1/bookings/{booking}/payments", {"amount_minor": 1}, token=token, expect=422
    )
    lapsed = await held_booking(api, doctor, patient, hold_minutes=-1, day=2)
    refused = await api.post(f"/api/v1/bookings/{lapsed}/payments", {}, token=token, expect=409)
    assert refused["code"] == "booking_not_payable"
    free = await held_booking(api, doctor, patient, price=0, day=3)
    await api.post(f"/api/v1/bookings/{free}/payments", {}, token=token, expect=409)
    staff = clinic.staff_token
    await api.post(f"/api/v1/bookings/{booking}/payments", {}, token=staff, expect=403)


# --- the redirect landing ------------------------------------------------------------


async def test_forged_landing_changes_nothing(api: Api, clinic: Clinic, doctor: Doctor) -> None:
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    payment = await start_payment(api, token, booking)
    ref = urlsplit(payment["checkout"]["url"]).path.rsplit("/", 1)[1]
    forged = {
        "sbx_reference": ref,
        "sbx_intent": payment["id"],
        "sbx_status": "succeeded",
        "sbx_code": "approved",
        "sbx_amount": str(payment["amount_minor"]),
        "sbx_currency": "PKR",
        "sbx_ts": str(int(dt.datetime.now(dt.UTC).timestamp())),
        "sbx_signature": "0" * 64,
    }
    problem = await api.get(f"/api/v1/payments/{payment['id']}/return", params=forged, expect=400)
    assert problem["code"] == "invalid_signature"
    unsigned = {k: v for k, v in forged.items() if k != "sbx_signature"}
    await api.get(f"/api/v1/payments/{payment['id']}/return", params=unsigned, expect=400)
    await api.get(f"/api/v1/payments/{payment['id']}/return?status=succeeded", expect=400)
    got = await api.get(f"/api/v1/payments/{payment['id']}", token=token)
    assert got["status"] == "processing"
    assert await booking_status(api, booking) == "held"
    assert await account_balances(api, clinic) == {}


async def test_landing_applies_a_genuine_result_without_webhook(api: Api) -> None:
    """The redirect alone (its webhook lost) settles the payment once verified,
    and a signed result for another payment is refused."""
    from booking.payments.gateways.sandbox import SandboxGateway

    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic)
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    payment = await start_payment(api, token, booking)
    other_booking = await held_booking(api, doctor, patient, day=2)
    other = await start_payment(api, token, other_booking)

    sandbox = api.app[GATEWAYS].get("sandbox")
    assert isinstance(sandbox, SandboxGateway)
    ref = urlsplit(payment["checkout"]["url"]).path.rsplit("/", 1)[1]
    redirect = path_of(sandbox.complete(ref, True, dt.datetime.now(dt.UTC)))
    query = urlsplit(redirect).query
    # Replayed onto the other payment's landing: signed, but not about it.
    await api.get(f"/api/v1/payments/{other['id']}/return?{query}", expect=400)
    result = await api.get(redirect, expect=200)
    assert result["status"] == "succeeded"
    assert await booking_status(api, booking) == "requested"
    again = await api.get(redirect, expect=200)
    assert again["status"] == "succeeded"
    captures = await pool_of(api).fetchval(
        "SELECT count(*) FROM ledger_transactions WHERE kind = 'capture'"
    )
    assert captures == 1


# --- refunds -------------------------------------------------------------------------


async def test_refunds_reverse_the_ledger_exactly(api: Api) -> None:
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic, fee_minor=100_001)
    await set_commission(api, clinic, 1500)
    token, _booking, payment = await paid_booking(api, doctor)
    url = f"/api/v1/payments/{payment['id']}/refunds"
    staff = clinic.staff_token

    first = await api.post(
        url, {"amount_minor": 33_333, "reason": "partial"}, token=staff, expect=201
    )
    assert first["payment_status"] == "partially_refunded"
    assert first["payment_refunded_minor"] == 33_333
    second = await api.post(url, {"amount_minor": 33_333}, token=staff, expect=201)
    assert second["id"] != first["id"]
    over = await api.post(url, {"amount_minor": 33_336}, token=staff, expect=409)
    assert over["code"] == "refund_exceeds_capture"
    await api.post(url, {"amount_minor": 0}, token=staff, expect=422)
    await api.post(url, {"amount_minor": "5"}, token=staff, expect=422)
    last = await api.post(url, {"amount_minor": 33_335}, token=staff, expect=201)
    assert last["payment_status"] == "refunded"
    await api.post(url, {"amount_minor": 1}, token=staff, expect=409)

    # Every account is back at zero: the reversal matched the split exactly.
    balances = await account_balances(api, clinic)
    assert set(balances.values()) == {0}
    async with pool_of(api).acquire() as conn:
        assert await ledger_is_balanced(conn)
    got = await api.get(f"/api/v1/payments/{payment['id']}", token=token)
    assert got["status"] == "refunded"
    assert got["refunded_minor"] == 100_001
    earnings = await api.get(f"/api/v1/doctors/{doctor.id}/earnings", token=staff)
    (pkr,) = earnings["currencies"]
    assert pkr["gross_minor"] == pkr["refunds_minor"] == 100_001
    assert pkr["commission_minor"] == 0
    assert pkr["payable_minor"] == 0


async def test_refund_booking_for_cancellations(api: Api) -> None:
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic, fee_minor=80_000)
    _token, booking, payment = await paid_booking(api, doctor)
    # The refunder the app hands the bookings API, bound to its gateways.
    refund = api.app[bookings.REFUNDER]
    async with pool_of(api).acquire() as conn, conn.transaction():
        assert await refund(conn, uuid.UUID(booking), 30_000, "late cancel", actor=None) == 30_000
        # Capped at what is left, never more than captured.
        assert await refund(conn, uuid.UUID(booking), 90_000, "again", actor=None) == 50_000
        assert await refund(conn, uuid.UUID(booking), 10, "nothing left", actor=None) == 0
    unpaid = await held_booking(api, doctor, (await anon_patient(api))[1], day=2)
    async with pool_of(api).acquire() as conn, conn.transaction():
        assert await refund(conn, uuid.UUID(unpaid), 10_000, "never paid", actor=None) == 0
    reasons = await pool_of(api).fetch(
        "SELECT reason FROM refunds WHERE payment_intent_id = $1 ORDER BY created_at",
        uuid.UUID(payment["id"]),
    )
    assert [r["reason"] for r in reasons] == ["late cancel", "again"]
    assert set((await account_balances(api, clinic)).values()) == {0}


# --- payouts, earnings, the ledger -------------------------------------------------------


async def test_payouts_are_bounded_by_the_payable_balance(api: Api) -> None:
    clinic, doctor = await owed(api, 2000)
    url = f"/api/v1/doctors/{doctor.id}/payouts"
    staff = clinic.staff_token
    over = await api.post(url, {"amount_minor": 80_001}, token=staff, expect=409)
    assert over["code"] == "payout_exceeds_payable"
    done = await api.post(
        url, {"amount_minor": 50_000, "reference": "bank 1"}, token=staff, expect=201
    )
    assert done["payable_minor"] == 30_000
    assert done["currency"] == "PKR"
    await api.post(url, {"amount_minor": 30_001}, token=staff, expect=409)
    await api.post(url, {"amount_minor": 30_000}, token=staff, expect=201)
    await api.post(url, {"amount_minor": 1}, token=staff, expect=409)
    await api.post(url, {"amount_minor": 1}, token=doctor.token, expect=403)

    earnings = await api.get(f"/api/v1/doctors/{doctor.id}/earnings", token=doctor.token)
    (pkr,) = earnings["currencies"]
    assert pkr == {
        "currency": "PKR",
        "gross_minor": 100_000,
        "refunds_minor": 0,
        "commission_minor": 20_000,
        "paid_out_minor": 80_000,
        "payable_minor": 0,
    }
    page = await api.get(f"/api/v1/clinics/{clinic.id}/ledger?limit=2", token=staff)
    assert [t["kind"] for t in page["items"]] == ["payout", "payout"]
    assert page["next_offset"] == 2
    rest = await api.get(f"/api/v1/clinics/{clinic.id}/ledger?limit=2&offset=2", token=staff)
    assert [t["kind"] for t in rest["items"]] == ["capture"]
    assert rest["next_offset"] is None
    assert sum(e["amount_minor"] for e in rest["items"][0]["entries"]) == 0
    captures = await api.get(f"/api/v1/clinics/{clinic.id}/ledger?kind=capture", token=staff)
    assert len(captures["items"]) == 1


async def test_concurrent_payouts_never_overdraw(api: Api) -> None:
    import asyncio

    clinic, doctor = await owed(api)
    url = f"/api/v1/doctors/{doctor.id}/payouts"
    results = await asyncio.gather(
        *[
            api.client.post(
                url,
                json={"amount_minor": 40_000},
                headers={"Authorization": f"Bearer {clinic.staff_token}"},
            )
            for _ in range(4)
        ]
    )
    assert sorted(r.status for r in results) == [201, 201, 409, 409]


# --- tenant isolation -------------------------------------------------------------------


async def test_tenant_isolation(api: Api, clinic: Clinic, doctor: Doctor) -> None:
    other_clinic = await make_clinic(api, name="Other Clinic")
    other_doctor = await make_doctor(api, other_clinic)
    token, booking, payment = await paid_booking(api, doctor)
    stranger, _ = await anon_patient(api)
    admin = await api.user(Role.ADMIN)
    pid = payment["id"]

    for who in (other_clinic.staff_token, stranger):
        await api.get(f"/api/v1/payments/{pid}", token=who, expect=404)
        assert await api.get(f"/api/v1/payments?booking_id={booking}", token=who) == []
    await api.get(f"/api/v1/payments/{pid}", token=doctor.token, expect=403)
    for who in (token, clinic.staff_token, admin):
        got = await api.get(f"/api/v1/payments/{pid}", token=who, expect=200)
        assert got["id"] == pid
        listed = await api.get(f"/api/v1/payments?booking_id={booking}", token=who)
        assert [p["id"] for p in listed] == [pid]
    assert [p["id"] for p in await api.get("/api/v1/payments", token=token)] == [pid]
    assert await api.get("/api/v1/payments", token=other_clinic.staff_token) == []

    await api.post(
        f"/api/v1/payments/{pid}/refunds",
        {"amount_minor": 1},
        token=other_clinic.staff_token,
        expect=404,
    )
    for path in (f"/api/v1/doctors/{doctor.id}/earnings",):
        await api.get(path, token=other_clinic.staff_token, expect=404)
        await api.get(path, token=other_doctor.token, expect=404)
        await api.get(path, token=clinic.staff_token, expect=200)
        await api.get(path, token=admin, expect=200)
        await api.get(path, token=token, expect=403)
    await api.post(
        f"/api/v1/doctors/{doctor.id}/payouts",
        {"amount_minor": 1},
        token=other_clinic.staff_token,
        expect=404,
    )
    await api.get(f"/api/v1/clinics/{clinic.id}/ledger", token=other_clinic.staff_token, expect=404)
    own = await api.get(f"/api/v1/clinics/{other_clinic.id}/ledger", token=other_clinic.staff_token)
    assert own["items"] == []
    assert len((await api.get(f"/api/v1/clinics/{clinic.id}/ledger", token=admin))["items"]) == 1


async def test_openapi_documents_the_payment_endpoints(api: Api) -> None:
    doc = await api.get("/api/v1/openapi.json")
    if not isinstance(doc, dict):  # the document lives elsewhere in this build
        return
    paths = doc["paths"]
    for path in (
        "/api/v1/bookings/{booking_id}/payments",
        "/api/v1/payments/{payment_id}",
        "/api/v1/payments/{payment_id}/return",
        "/api/v1/webhooks/{gateway}",
        "/api/v1/payments/{payment_id}/refunds",
        "/api/v1/doctors/{doctor_id}/payouts",
        "/api/v1/doctors/{doctor_id}/earnings",
        "/api/v1/clinics/{clinic_id}/ledger",
        "/sandbox/checkout/{reference}",
    ):
        assert path in paths, path


async def test_concurrent_creates_share_one_intent(api: Api) -> None:
    import asyncio

    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic)
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    url = f"/api/v1/bookings/{booking}/payments"
    headers = {"Authorization": f"Bearer {token}"}
    responses = await asyncio.gather(
        *[api.client.post(url, json={}, headers=headers) for _ in range(4)]
    )
    assert sorted(r.status for r in responses) == [200, 200, 200, 201]
    ids = {(await r.json())["id"] for r in responses}
    assert len(ids) == 1
