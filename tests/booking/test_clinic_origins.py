"""A clinic's allowed origins over HTTP: who sets them, what is taken, how
they come back (``PATCH /api/v1/clinics/{id}``, booking/api/clinics.py)."""

from __future__ import annotations

import uuid

import pytest

from tests.booking.factories import Clinic, make_clinic
from tests.conftest import Api
from wadud.web.api import Role


async def test_staff_set_their_clinics_origins_and_they_come_back_normalised(
    api: Api, clinic: Clinic
) -> None:
    path = f"/api/v1/clinics/{clinic.id}"
    before = await api.get(path, token=clinic.staff_token, expect=200)
    assert before["allowed_origins"] == []
    sent = ["https://Clinic.Example:443", "http://127.0.0.1:9090/", "https://clinic.example"]
    after = await api.patch(path, {"allowed_origins": sent}, token=clinic.staff_token, expect=200)
    assert after["allowed_origins"] == ["https://clinic.example", "http://127.0.0.1:9090"]
    # Only the field sent changed.
    assert {k: v for k, v in after.items() if k != "allowed_origins"} == {
        k: v for k, v in before.items() if k != "allowed_origins"
    }
    again = await api.get(path, token=clinic.staff_token, expect=200)
    assert again["allowed_origins"] == after["allowed_origins"]
    listed = await api.get("/api/v1/clinics", token=clinic.staff_token, expect=200)
    assert listed["items"][0]["allowed_origins"] == after["allowed_origins"]
    # Another field left alone by a later change; [] clears.
    admin = await api.user(Role.ADMIN)
    renamed = await api.patch(path, {"name": "Shifa Intl"}, token=admin, expect=200)
    assert renamed["allowed_origins"] == after["allowed_origins"]
    cleared = await api.patch(path, {"allowed_origins": []}, token=admin, expect=200)
    assert cleared["allowed_origins"] == []


async def test_who_may_set_a_clinics_origins(api: Api, clinic: Clinic) -> None:
    other = await make_clinic(api, name="Other Clinic")
    body = {"allowed_origins": ["https://clinic.example"]}
    # Another clinic's staff: no such clinic, to them.
    await api.patch(f"/api/v1/clinics/{clinic.id}", body, token=other.staff_token, expect=404)
    # Staff change only the origins of their own clinic.
    for field in ({"name": "Mine"}, {"commission_bp": 0}, {"commission_fixed_minor": 1}):
        await api.patch(
            f"/api/v1/clinics/{clinic.id}",
            {**body, **field},
            token=clinic.staff_token,
            expect=403,
        )
    doctor = await api.user(Role.DOCTOR, clinic_id=clinic.id)
    await api.patch(f"/api/v1/clinics/{clinic.id}", body, token=doctor, expect=403)
    patient = await api.user(Role.PATIENT)
    await api.patch(f"/api/v1/clinics/{clinic.id}", body, token=patient, expect=403)
    await api.patch(f"/api/v1/clinics/{clinic.id}", body, expect=401)
    admin = await api.user(Role.ADMIN)
    await api.patch(f"/api/v1/clinics/{uuid.uuid4()}", body, token=admin, expect=404)
    done = await api.patch(f"/api/v1/clinics/{other.id}", body, token=admin, expect=200)
    assert done["allowed_origins"] == ["https://clinic.example"]


@pytest.mark.parametrize(
    "origins",
    [
        ["https://clinic.example/visit"],
        ["https://*.clinic.example"],
        ["clinic.example"],
        ["null"],
        ["ftp://clinic.example"],
        ["https://user@clinic.example"],
        ["https://clinic.example:99999"],
        ["https://clinic.example\x00"],
        ["https://" + "a" * 300 + ".example"],
        [f"https://c{i}.example" for i in range(21)],
        "https://clinic.example",
        [7],
        None,
    ],
    ids=str.split(
        "path wildcard no-scheme null ftp user port nul long 21 not-a-list not-text null-list"
    ),
)
async def test_anything_but_origins_is_refused(api: Api, clinic: Clinic, origins: object) -> None:
    resp = await api.client.patch(
        f"/api/v1/clinics/{clinic.id}",
        json={"allowed_origins": origins},
        headers={"Authorization": f"Bearer {clinic.staff_token}"},
    )
    assert resp.status == 422, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    got = await api.get(f"/api/v1/clinics/{clinic.id}", token=clinic.staff_token, expect=200)
    assert got["allowed_origins"] == []


async def test_the_openapi_document_says_so(api: Api) -> None:
    doc = await api.get("/api/v1/openapi.json", expect=200)
    schemas = doc["components"]["schemas"]
    patch = schemas["ClinicPatch"]["properties"]["allowed_origins"]
    assert "scheme://host[:port]" in patch["description"]
    clinic = schemas["Clinic"]["properties"]["allowed_origins"]
    assert clinic["type"] == "array" and clinic["items"] == {"type": "string"}
    assert "allowed_origins" in schemas["Clinic"]["required"]
    op = doc["paths"]["/api/v1/clinics/{clinic_id}"]["patch"]
    assert {"403", "404", "422"} <= set(op["responses"])
    assert "allowed_origins" in op["description"]
