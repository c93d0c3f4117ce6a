"""The catalogue over HTTP: clinics, region settings, doctor onboarding,
credentials, publication, availability and slots."""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from booking.doctors.documents import safe_filename, sniff
from tests.booking.factories import make_clinic, make_doctor
from tests.conftest import Api
from wadud.state import keys
from wadud.web.api import ENDPOINTS, Role

PDF = b"%PDF-1.7\n" + b"x" * 100
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 64

WEEKLY = [{"weekday": d, "start": "09:00", "end": "17:00", "types": ["video"]} for d in range(7)]


async def _admin(api: Api) -> str:
    return await api.user(Role.ADMIN)


async def _onboard(api: Api, clinic_id: str, token: str, **extra: Any) -> dict[str, Any]:
    body = {
        "email": f"dr-{uuid.uuid4().hex[:8]}@example.test",
        "password": "a long password",
        "display_name": "Dr. Amina",
        "specialty": "cardiology",
        "languages": ["ur", "en"],
        "fee_minor": 250_000,
        **extra,
    }
    return dict(
        await api.post(f"/api/v1/clinics/{clinic_id}/doctors", body, token=token, expect=201)
    )


async def test_clinics_admin_and_tenant_isolation(api: Api) -> None:
    admin = await _admin(api)
    c1 = await api.post(
        "/api/v1/clinics", {"name": "Shifa", "region": "AE"}, token=admin, expect=201
    )
    assert c1["currency"] == "AED" and c1["commission_bp"] is None
    c2 = await api.post(
        "/api/v1/clinics",
        {"name": "Aga Khan", "region": "PK", "commission_bp": 1200},
        token=admin,
        expect=201,
    )
    await api.post("/api/v1/clinics", {"name": "X", "region": "US"}, token=admin, expect=422)
    await api.post(
        "/api/v1/clinics", {"name": "X", "region": "PK", "extra": 1}, token=admin, expect=422
    )

    staff1 = await api.user(Role.CLINIC_STAFF, clinic_id=c1["id"])
    await api.post("/api/v1/clinics", {"name": "X", "region": "PK"}, token=staff1, expect=403)
    everything = await api.get("/api/v1/clinics", token=admin, expect=200)
    assert {c["id"] for c in everything["items"]} >= {c1["id"], c2["id"]}
    mine = await api.get("/api/v1/clinics", token=staff1, expect=200)
    assert [c["id"] for c in mine["items"]] == [c1["id"]]
    await api.get(f"/api/v1/clinics/{c1['id']}", token=staff1, expect=200)
    await api.get(f"/api/v1/clinics/{c2['id']}", token=staff1, expect=404)
    await api.get(f"/api/v1/clinics/{uuid.uuid4()}", token=admin, expect=404)

    page = await api.get("/api/v1/clinics?limit=1", token=admin, expect=200)
    assert len(page["items"]) == 1 and page["next_after"]

    patched = await api.patch(
        f"/api/v1/clinics/{c2['id']}", {"name": "AKU"}, token=admin, expect=200
    )
    assert patched["name"] == "AKU" and patched["commission_bp"] == 1200
    patched = await api.patch(
        f"/api/v1/clinics/{c2['id']}", {"commission_bp": None}, token=admin, expect=200
    )
    assert patched["commission_bp"] is None and patched["name"] == "AKU"
    await api.patch(f"/api/v1/clinics/{c2['id']}", {"name": None}, token=admin, expect=422)
    await api.patch(f"/api/v1/clinics/{c1['id']}", {"name": "Mine"}, token=staff1, expect=403)


async def test_region_features_and_commission(api: Api) -> None:
    admin = await _admin(api)
    assert await api.get("/api/v1/regions/PK/features", expect=200) == {
        "region": "PK",
        "features": {},
    }
    await api.put("/api/v1/regions/PK/features/instant", {"enabled": True}, token=admin, expect=200)
    await api.put(
        "/api/v1/regions/PK/features/gateway.jazzcash", {"enabled": False}, token=admin, expect=200
    )
    got = await api.get("/api/v1/regions/PK/features", expect=200)
    assert got["features"] == {"instant": True, "gateway.jazzcash": False}
    await api.get("/api/v1/regions/US/features", expect=404)
    await api.put(
        "/api/v1/regions/PK/features/" + "a" * 64, {"enabled": True}, token=admin, expect=422
    )
    await api.put("/api/v1/regions/PK/features/x", {"enabled": "yes"}, token=admin, expect=422)
    staff = (await make_clinic(api)).staff_token
    await api.put("/api/v1/regions/PK/features/x", {"enabled": True}, token=staff, expect=403)

    await api.put(
        "/api/v1/regions/QA/commission",
        {"commission_bp": 1000, "commission_fixed_minor": 50},
        token=admin,
        expect=200,
    )
    await api.put("/api/v1/regions/QA/commission", {"commission_bp": 900}, token=admin, expect=200)
    got = await api.get("/api/v1/regions/QA/commission", token=admin, expect=200)
    assert got == {"region": "QA", "commission_bp": 900, "commission_fixed_minor": 0}
    await api.put(
        "/api/v1/regions/QA/commission", {"commission_bp": 10_001}, token=admin, expect=422
    )
    pool = api.app[keys.DB]
    topics = [r["topic"] for r in await pool.fetch("SELECT topic FROM outbox ORDER BY id")]
    assert "region.feature_changed" in topics and "region.commission_changed" in topics


async def test_onboarding_profile_and_visibility(api: Api) -> None:
    clinic = await make_clinic(api, region="SA")
    other = await make_clinic(api, region="PK", name="Other")
    admin = await _admin(api)
    doc = await _onboard(api, clinic.id, clinic.staff_token)
    assert doc["status"] == "draft" and doc["currency"] == "SAR" and doc["region"] == "SA"
    assert doc["languages"] == ["en", "ur"]
    # Staff of another clinic can neither onboard here nor see the draft.
    await _onboard_fails(api, clinic.id, other.staff_token, 404)
    await api.get(f"/api/v1/doctors/{doc['id']}", token=other.staff_token, expect=404)
    await api.get(f"/api/v1/doctors/{doc['id']}", expect=404)
    await api.get(f"/api/v1/doctors/{doc['id']}", token=clinic.staff_token, expect=200)
    await api.get(f"/api/v1/doctors/{doc['id']}", token=admin, expect=200)
    # The doctor logs in with the initial password and edits their own profile.
    pool = api.app[keys.DB]
    email = await pool.fetchval(
        "SELECT u.email FROM users u JOIN doctors d ON d.user_id = u.id WHERE d.id = $1",
        uuid.UUID(doc["id"]),
    )
    tokens = await api.post(
        "/api/v1/auth/login", {"email": email, "password": "a long password"}, expect=200
    )
    me = tokens["access_token"]
    patched = await api.patch(
        f"/api/v1/doctors/{doc['id']}",
        {"bio": "Heart doctor", "fee_minor": 300},
        token=me,
        expect=200,
    )
    assert patched["bio"] == "Heart doctor" and patched["fee_minor"] == 300
    await api.patch(f"/api/v1/doctors/{doc['id']}", {"fee_minor": -1}, token=me, expect=422)
    await api.patch(f"/api/v1/doctors/{doc['id']}", {"specialty": "Bad Name"}, token=me, expect=422)
    await api.patch(f"/api/v1/doctors/{doc['id']}", {"bio": None}, token=me, expect=422)
    await api.patch(
        f"/api/v1/doctors/{doc['id']}", {"bio": "x"}, token=other.staff_token, expect=404
    )
    # A duplicate email is a conflict, and nothing is left half-made.
    await _onboard_fails(api, clinic.id, clinic.staff_token, 409, email=email)
    assert await pool.fetchval("SELECT count(*) FROM doctors") == 1


async def _onboard_fails(api: Api, clinic_id: str, token: str, status: int, **extra: Any) -> None:
    body = {
        "email": f"dr-{uuid.uuid4().hex[:8]}@example.test",
        "password": "a long password",
        "display_name": "Dr. X",
        "specialty": "general",
        "fee_minor": 1,
        **extra,
    }
    await api.post(f"/api/v1/clinics/{clinic_id}/doctors", body, token=token, expect=status)


async def _upload(
    api: Api,
    doctor_id: str,
    token: str,
    data: bytes,
    ctype: str,
    expect: int,
    kind: str = "license",
) -> Any:
    return await api.call(
        "POST",
        f"/api/v1/doctors/{doctor_id}/documents?kind={kind}&filename=../../etc/My%20Licence.pdf",
        None,
        token=token,
        expect=expect,
        data=io.BytesIO(data),
        headers={"Content-Type": ctype},
    )


async def test_documents_publication_lifecycle(api: Api) -> None:
    clinic = await make_clinic(api)
    other = await make_clinic(api, name="Other")
    admin = await _admin(api)
    doc = await _onboard(api, clinic.id, clinic.staff_token)
    did = doc["id"]
    staff = clinic.staff_token

    # Type by content: a PNG labelled PDF, HTML labelled PDF, an unknown type.
    await _upload(api, did, staff, PNG, "application/pdf", 415)
    await _upload(api, did, staff, b"<html>", "application/pdf", 415)
    await _upload(api, did, staff, PDF, "text/html", 415)
    await _upload(api, did, staff, b"", "application/pdf", 422)
    await _upload(api, did, other.staff_token, PDF, "application/pdf", 404)
    await _upload(api, did, staff, PDF, "application/pdf", 422, kind="Bad Kind")
    big = b"%PDF-" + b"0" * api.app[keys.SETTINGS].booking_upload_max_bytes
    await _upload(api, did, staff, big, "application/pdf", 413)

    pdf = await _upload(api, did, staff, PDF, "application/pdf", 201)
    assert pdf["filename"] == "My Licence.pdf" and pdf["status"] == "pending"
    png = await _upload(api, did, staff, PNG, "image/png", 201, kind="id_card")
    jpg = await _upload(api, did, staff, JPEG, "image/jpeg", 201, kind="photo")
    listed = await api.get(f"/api/v1/doctors/{did}/documents", token=staff, expect=200)
    assert [d["id"] for d in listed] == [pdf["id"], png["id"], jpg["id"]]

    resp = await api.client.get(
        f"/api/v1/doctors/{did}/documents/{pdf['id']}/content",
        headers={"Authorization": f"Bearer {staff}"},
    )
    assert resp.status == 200 and await resp.read() == PDF
    assert resp.headers["Content-Type"] == "application/pdf"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    await api.get(
        f"/api/v1/doctors/{did}/documents/{pdf['id']}/content",
        token=other.staff_token,
        expect=404,
    )
    # The file on disk is content-addressed under data_dir/uploads.
    stored = api.app[keys.SETTINGS].data_dir / "uploads" / pdf["sha256"][:2]
    assert any(stored.rglob(pdf["sha256"]))

    # Publication needs submit, a verified document and availability.
    await api.post(f"/api/v1/doctors/{did}/publish", token=admin, expect=409)
    await api.post(f"/api/v1/doctors/{did}/submit", token=staff, expect=200)
    await api.post(f"/api/v1/doctors/{did}/submit", token=staff, expect=409)
    await api.post(f"/api/v1/doctors/{did}/publish", token=staff, expect=403)
    await api.post(f"/api/v1/doctors/{did}/publish", token=admin, expect=409)
    base = f"/api/v1/doctors/{did}/documents"
    await api.post(f"{base}/{png['id']}/reject", {"note": ""}, token=admin, expect=422)
    # No body at all is an empty object: here a missing note, named (not 415).
    missing = await api.post(f"{base}/{png['id']}/reject", token=admin, expect=422)
    assert "note" in json.dumps(missing)
    rejected = await api.post(
        f"{base}/{png['id']}/reject", {"note": "blurry"}, token=admin, expect=200
    )
    assert rejected["status"] == "rejected" and rejected["review_note"] == "blurry"
    await api.post(f"{base}/{pdf['id']}/verify", {}, token=staff, expect=403)
    # The note is optional, so the body may be left out altogether.
    verified = await api.post(f"{base}/{pdf['id']}/verify", token=admin, expect=200)
    assert verified["status"] == "verified"
    await api.post(f"{base}/{pdf['id']}/verify", {}, token=admin, expect=409)
    await api.post(f"/api/v1/doctors/{did}/publish", token=admin, expect=409)  # no hours yet

    await api.put(
        f"/api/v1/doctors/{did}/availability",
        {"time_zone": "Asia/Karachi", "weekly": WEEKLY, "min_notice_min": 0},
        token=staff,
        expect=200,
    )
    published = await api.post(f"/api/v1/doctors/{did}/publish", token=admin, expect=200)
    assert published["status"] == "published" and published["next_free_at"] is not None
    assert (await api.get(f"/api/v1/doctors/{did}", expect=200))["status"] == "published"
    # Published: others may look but not touch.
    await api.patch(f"/api/v1/doctors/{did}", {"bio": "x"}, token=other.staff_token, expect=403)
    await api.post(f"/api/v1/doctors/{did}/suspend", token=admin, expect=200)
    await api.get(f"/api/v1/doctors/{did}", expect=404)
    await api.get(f"/api/v1/doctors/{did}/slots", expect=404)
    pool = api.app[keys.DB]
    topics = [r["topic"] for r in await pool.fetch("SELECT topic FROM outbox ORDER BY id")]
    for t in (
        "doctor.created",
        "doctor.document_uploaded",
        "doctor.document_verified",
        "doctor.document_rejected",
        "doctor.submitted",
        "doctor.published",
        "doctor.suspended",
        "doctor.availability_changed",
    ):
        assert t in topics


async def test_availability_validation_and_overrides(api: Api) -> None:
    clinic = await make_clinic(api)
    dr = await make_doctor(api, clinic, min_notice=0)
    url = f"/api/v1/doctors/{dr.id}/availability"
    got = await api.get(url, token=dr.token, expect=200)
    assert got["time_zone"] == "Asia/Karachi" and len(got["weekly"]) == 7
    await api.get(url, expect=401)
    other = await make_clinic(api, name="Other")
    await api.get(url, token=other.staff_token, expect=403)  # published: visible, not theirs

    bad: list[dict[str, Any]] = [
        {"time_zone": "Mars/Olympus", "weekly": WEEKLY},
        {"time_zone": "../../etc/passwd", "weekly": WEEKLY},
        {"time_zone": "UTC", "weekly": [{"weekday": 7, "start": "09:00", "end": "10:00"}]},
        {"time_zone": "UTC", "weekly": [{"weekday": 0, "start": "10:00", "end": "09:00"}]},
        {"time_zone": "UTC", "weekly": [{"weekday": 0, "start": "9:00", "end": "10:00"}]},
        {
            "time_zone": "UTC",
            "weekly": [
                {"weekday": 0, "start": "09:00", "end": "12:00"},
                {"weekday": 0, "start": "11:00", "end": "13:00"},
            ],
        },
        {
            "time_zone": "UTC",
            "slot_minutes": {"video": 90},
            "weekly": [{"weekday": 0, "start": "09:00", "end": "10:00"}],
        },
        {
            "time_zone": "UTC",
            "slot_minutes": {"video": 20},
            "weekly": [{"weekday": 0, "start": "09:00", "end": "10:00", "types": ["in_person"]}],
        },
        {"time_zone": "UTC", "buffer_before_min": 241},
        {"time_zone": "UTC", "slot_minutes": {"phone": 20}},
    ]
    for body in bad:
        problem = await api.put(url, body, token=dr.token, expect=422)
        assert problem["status"] == 422
    assert (await api.get(url, token=dr.token, expect=200))["time_zone"] == "Asia/Karachi"

    new = await api.put(
        url,
        {
            "time_zone": "Asia/Dubai",
            "buffer_after_min": 10,
            "min_notice_min": 0,
            "horizon_days": 30,
            "slot_minutes": {"video": 30},
            "weekly": [{"weekday": d, "start": "18:00", "end": "24:00"} for d in range(7)],
        },
        token=clinic.staff_token,
        expect=200,
    )
    assert new["time_zone"] == "Asia/Dubai" and new["weekly"][0]["end"] == "24:00"
    assert new["next_free_at"] is not None

    day = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).date().isoformat()
    ov = f"{url}/overrides/{day}"
    got_ov = await api.put(
        ov, {"windows": [{"start": "08:00", "end": "09:00"}]}, token=dr.token, expect=200
    )
    assert got_ov == {
        "day": day,
        "closed": False,
        "windows": [{"start": "08:00", "end": "09:00", "types": ["video"]}],
    }
    slots = await api.get(
        f"/api/v1/doctors/{dr.id}/slots",
        params={"from": f"{day}T00:00:00+04:00", "to": f"{day}T23:59:00+04:00"},
        expect=200,
    )
    assert [s["local_start"][11:16] for s in slots["slots"]] == ["08:00"]
    await api.put(ov, {"windows": []}, token=dr.token, expect=200)
    slots = await api.get(
        f"/api/v1/doctors/{dr.id}/slots",
        params={"from": f"{day}T00:00:00+04:00", "to": f"{day}T23:59:00+04:00"},
        expect=200,
    )
    assert slots["slots"] == []
    listed = await api.get(url, token=dr.token, expect=200)
    assert listed["overrides"] == [{"day": day, "closed": True, "windows": []}]
    await api.put(
        ov,
        {"windows": [{"start": "08:00", "end": "09:00"}, {"start": "08:30", "end": "10:00"}]},
        token=dr.token,
        expect=422,
    )
    await api.put(f"{url}/overrides/2025-02-30", {"windows": []}, token=dr.token, expect=422)
    await api.put(f"{url}/overrides/2025-2-3", {"windows": []}, token=dr.token, expect=404)
    await api.delete(ov, token=dr.token, expect=204)
    await api.delete(ov, token=dr.token, expect=404)
    assert (await api.get(url, token=dr.token, expect=200))["overrides"] == []


async def test_slots_endpoint_rules(api: Api) -> None:
    clinic = await make_clinic(api)
    dr = await make_doctor(api, clinic, time_zone="UTC", min_notice=0)
    url = f"/api/v1/doctors/{dr.id}/slots"
    day = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).date()
    got = await api.get(
        url, params={"type": "in_person", "from": f"{day}T00:00:00Z", "to": f"{day}T12:00:00Z"}
    )
    assert [s["start"] for s in got["slots"]] == [
        f"{day}T09:00:00Z",
        f"{day}T09:30:00Z",
        f"{day}T10:00:00Z",
        f"{day}T10:30:00Z",
        f"{day}T11:00:00Z",
        f"{day}T11:30:00Z",
    ]
    now = dt.datetime.now(dt.UTC)
    await api.get(
        url,
        params={"from": now.isoformat(), "to": (now + dt.timedelta(days=32)).isoformat()},
        expect=422,
    )
    await api.get(url, params={"from": now.isoformat(), "to": now.isoformat()}, expect=422)
    await api.get(url, params={"from": "2025-01-01T00:00:00"}, expect=422)  # naive
    await api.get(url, params={"type": "phone"}, expect=422)
    await api.get(f"/api/v1/doctors/{uuid.uuid4()}/slots", expect=404)
    default = await api.get(url, expect=200)
    assert default["type"] == "video" and default["slots"]
    draft = await make_doctor(api, clinic, published=False)
    await api.get(f"/api/v1/doctors/{draft.id}/slots", expect=404)
    await api.get(f"/api/v1/doctors/{draft.id}/slots", token=clinic.staff_token, expect=200)


async def test_openapi_lists_catalogue(api: Api) -> None:
    paths = [
        "/api/v1/clinics",
        "/api/v1/clinics/{clinic_id}/doctors",
        "/api/v1/doctors",
        "/api/v1/doctors/{doctor_id}/documents",
        "/api/v1/doctors/{doctor_id}/availability/overrides/{day}",
        "/api/v1/doctors/{doctor_id}/slots",
        "/api/v1/bookings/{booking_id}/review",
        "/api/v1/regions/{region}/features/{feature}",
    ]
    for ep in paths:
        assert any(e.doc_path == ep for e in api.app[ENDPOINTS]), ep


@given(st.binary(max_size=16))
def test_sniff_needs_magic(data: bytes) -> None:
    found = sniff(data)
    if found is not None:
        assert data.startswith((b"%PDF-", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"))


@given(st.text(max_size=300))
def test_safe_filename_is_safe(name: str) -> None:
    out = safe_filename(name, "doc.pdf")
    assert out and "/" not in out and "\\" not in out and '"' not in out
    assert len(out) <= 255 and out not in (".", "..")


@pytest.mark.parametrize(
    ("name", "want"),
    [("../../a.pdf", "a.pdf"), ("C:\\x\\b.png", "b.png"), ("", "doc.pdf"), ("..", "doc.pdf")],
)
def test_safe_filename_examples(name: str, want: str) -> None:
    assert safe_filename(name, "doc.pdf") == want


async def test_edge_inputs_are_4xx(api: Api) -> None:
    clinic = await make_clinic(api)
    dr = await make_doctor(api, clinic)
    url = f"/api/v1/doctors/{dr.id}/slots"
    for params in (
        {"from": "9999-12-31T23:00:00-05:00"},
        {"from": "0001-01-01T00:00:00+05:00"},
        {"to": "9999-12-31T23:59:59Z"},
        {"from": "not a date"},
        {"type": ""},
    ):
        await api.get(url, params=params, expect=422)
    # Every instant a request names lies in wadud.web.api's sane range.
    for params in (
        {"available_before": "9999-12-31T23:00:00-05:00"},
        {"available_before": "0001-01-01T00:00:00+05:00"},
    ):
        await api.get("/api/v1/doctors", params=params, expect=422)
    await api.get(
        "/api/v1/doctors", params={"available_before": "2199-12-31T00:00:00Z"}, expect=200
    )
    await api.get("/api/v1/doctors", params={"limit": "abc"}, expect=422)
    await api.get("/api/v1/doctors", params={"min_fee": str(10**40)}, expect=422)
    await api.get("/api/v1/doctors", params={"limit": str(10**40)}, expect=422)
    await api.get("/api/v1/doctors", params={"min_rating": "nan"}, expect=422)
    # Bodies that are not JSON, or JSON of the wrong shape.
    admin = await _admin(api)
    await api.call(
        "POST",
        "/api/v1/clinics",
        None,
        token=admin,
        expect=400,
        data=b"{",
        headers={"Content-Type": "application/json"},
    )
    await api.post("/api/v1/clinics", [], token=admin, expect=422)
    await api.put(
        f"/api/v1/doctors/{dr.id}/availability",
        {"time_zone": "UTC", "weekly": "x"},
        token=dr.token,
        expect=422,
    )
    doc = await api.get("/api/v1/openapi.json", expect=200)
    assert "/api/v1/doctors/{doctor_id}/slots" in doc["paths"]
    upload = doc["paths"]["/api/v1/doctors/{doctor_id}/documents"]["post"]
    assert "application/pdf" in upload["requestBody"]["content"]


async def test_upload_with_idempotency_key(api: Api) -> None:
    clinic = await make_clinic(api)
    dr = await make_doctor(api, clinic, published=False)
    headers = {"Content-Type": "application/pdf", "Idempotency-Key": "upload-1"}
    path = f"/api/v1/doctors/{dr.id}/documents?kind=license"
    first = await api.call(
        "POST", path, None, token=clinic.staff_token, expect=201, data=PDF, headers=headers
    )
    again = await api.call(
        "POST", path, None, token=clinic.staff_token, expect=201, data=PDF, headers=headers
    )
    assert first == again
    listed = await api.get(f"/api/v1/doctors/{dr.id}/documents", token=clinic.staff_token)
    assert len(listed) == 1
