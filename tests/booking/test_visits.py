"""Visits a clinic books in its own system (booking/api/visits.py,
docs/guests.md "Visits booked elsewhere"): links for everyone, one visit per
reference, the clinic's own patient gathered under one account, no consent
asked at the join, invites by key into the visit, a recording kept under it,
and a cancellation that ends its links. The webhooks and call report are
tests/hooks/test_webhooks.py's."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

import pytest

from tests.booking.factories import Clinic, Doctor, clinic, doctor  # noqa: F401 - fixtures
from tests.conftest import Api, free_udp_port
from tests.signalling.test_client_call import Call, call, loopback_aiortc  # noqa: F401
from tests.wadud.web.test_api_keys import basic
from wadud.config import Settings
from wadud.state import keys
from wadud.web import api_keys
from wadud.web.auth import decode_room_token
from wadud_client.call import CallClient
from wadud_client.errors import ConnectionClosed, RequestFailed


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A deployment that asks patients for consent to a consultation, where
    # a visit booked elsewhere does not; and a media port of its own.
    return dataclasses.replace(
        settings, media_port=free_udp_port(), consent_required=["telehealth_consultation"]
    )


async def _key(api: Api, clinic_id: str, scope: api_keys.Scope = api_keys.Scope.CLINIC) -> Any:
    async with api.app[keys.DB].acquire() as conn:
        made = await api_keys.create_key(
            conn,
            name="ehr",
            scope=scope,
            clinic_id=uuid.UUID(clinic_id) if scope is api_keys.Scope.CLINIC else None,
        )
    return basic(made.key.id, made.secret)


def _body(doctor_id: str, reference: str = "EHR-1", **kw: Any) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "reference": reference,
        "doctor_id": doctor_id,
        "starts_at": now.isoformat(),
        "ends_at": (now + dt.timedelta(minutes=30)).isoformat(),
        "patient": {"reference": "MRN-7", "name": "Bilal Ahmed"},
        **kw,
    }


async def _post(api: Api, path: str, body: Any, auth: dict[str, str]) -> tuple[int, Any]:
    resp = await api.client.post(path, json=body, headers=auth)
    return resp.status, (await resp.json()) if resp.status != 204 else None


async def test_a_visit_gives_everyone_a_link_once_per_reference(
    api: Api,
    clinic: Clinic,  # noqa: F811 - the fixture
    doctor: Doctor,  # noqa: F811 - the fixture
) -> None:
    auth = await _key(api, clinic.id)
    body = _body(
        doctor.id,
        participants=[{"role": "interpreter", "name": "Gul"}, {"role": "observer", "name": "T"}],
        locale="ur",
    )
    status, visit = await _post(api, "/api/v1/visits", body, auth)
    assert status == 201, visit
    assert (visit["reference"], visit["status"]) == ("EHR-1", "accepted")
    assert visit["room"] == f"booking-{visit['id']}"
    settings = api.app[keys.SETTINGS]
    grants = [decode_room_token(settings, link["token"]) for link in visit["links"]]
    assert [(g.role, g.name) for g in grants] == [
        ("doctor", "Dr. Test"),
        ("patient", "Bilal Ahmed"),
        ("interpreter", "Gul"),
        ("observer", "T"),
    ]
    assert [g.admin for g in grants] == [True, False, False, False]
    assert all(g.booking == visit["id"] and g.room == visit["room"] for g in grants)
    assert all(link["url"].endswith("&lang=ur") for link in visit["links"])
    # The doctor's link names their account; the patient's, theirs made here.
    assert grants[0].identity == doctor.user_id
    # One visit per reference; the same patient reference is the same person.
    status, again = await _post(api, "/api/v1/visits", body, auth)
    assert (status, again["code"]) == (409, "visit-exists")
    status, second = await _post(api, "/api/v1/visits", _body(doctor.id, "EHR-2"), auth)
    assert status == 201, second
    assert decode_room_token(settings, second["links"][1]["token"]).identity == grants[1].identity
    # Nothing a Wadud booking tells its people goes out: the clinic does that.
    pool = api.app[keys.DB]
    told = await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE payload->>'booking_id' = $1", visit["id"]
    )
    assert told == 0
    got = await api.client.get(f"/api/v1/visits/{visit['id']}", headers=auth)
    assert got.status == 200 and len((await got.json())["links"]) == 2


async def test_what_a_visit_refuses(
    api: Api,
    clinic: Clinic,  # noqa: F811 - the fixture
    doctor: Doctor,  # noqa: F811 - the fixture
) -> None:
    auth = await _key(api, clinic.id)
    status, body = await _post(api, "/api/v1/visits", _body(str(uuid.uuid4())), auth)
    assert (status, body["code"]) == (404, "doctor-not-found")
    now = dt.datetime.now(dt.UTC)
    backwards = _body(doctor.id, ends_at=(now - dt.timedelta(minutes=1)).isoformat())
    status, body = await _post(api, "/api/v1/visits", backwards, auth)
    assert status == 422, body
    naive = _body(doctor.id, starts_at="2030-01-01T10:00:00", ends_at="2030-01-01T10:30:00")
    assert (await _post(api, "/api/v1/visits", naive, auth))[0] == 422
    load = await _key(api, clinic.id, api_keys.Scope.LOAD)
    status, body = await _post(api, "/api/v1/visits", _body(doctor.id), load)
    assert (status, body["code"]) == (403, "not-a-clinic-key")
    # Another clinic's key neither sees the doctor nor the visit.
    other = await api.app[keys.DB].fetchval(
        "INSERT INTO clinics (name, region, currency) VALUES ('X', 'PK', 'PKR') RETURNING id"
    )
    theirs = await _key(api, str(other))
    assert (await _post(api, "/api/v1/visits", _body(doctor.id), theirs))[0] == 404
    status, mine = await _post(api, "/api/v1/visits", _body(doctor.id, "EHR-9"), auth)
    assert status == 201
    got = await api.client.get(f"/api/v1/visits/{mine['id']}", headers=theirs)
    assert got.status == 404


async def test_a_visit_joins_without_consent_takes_invites_records_and_cancels(
    call: Call,  # noqa: F811 - the fixture
) -> None:
    from tests.booking.factories import make_clinic, make_doctor

    api = call.api
    clin = await make_clinic(api)
    doc = await make_doctor(api, clin)
    auth = await _key(api, clin.id)
    status, visit = await _post(api, "/api/v1/visits", _body(doc.id), auth)
    assert status == 201, visit
    dr_link, pt_link = visit["links"][:2]

    async def join(token: str, label: str) -> CallClient:
        client = CallClient(call.url, token, label=label)
        call.clients.append(client)
        await client.join()
        return client

    host = await join(dr_link["token"], "dr")
    # Consent is the clinic's to collect: the patient is not asked here.
    patient = await join(pt_link["token"], "pt")
    assert patient.state == "joined"
    # A guest by the clinic's key, into the visit's room.
    status, invite = await _post(
        api,
        "/api/v1/invites",
        {"room": visit["room"], "role": "interpreter", "name": "Gul"},
        auth,
    )
    assert status == 201, invite
    assert invite["room"] == visit["room"]
    # A recording asked for in the visit is kept under it.
    await host.request("record", on=True)
    pool = api.app[keys.DB]

    async def kept() -> bool:
        n = await pool.fetchval(
            "SELECT count(*) FROM recordings WHERE booking_id = $1", uuid.UUID(visit["id"])
        )
        return bool(n)

    from tests.polling import wait_until

    await wait_until(kept, within=10)
    status, _ = await _post(
        api, f"/api/v1/visits/{visit['id']}/cancel", {"reason": "patient unwell"}, auth
    )
    assert status == 204
    await wait_until(lambda: patient.close_code is not None, within=10)
    again = CallClient(call.url, pt_link["token"], label="again")
    call.clients.append(again)
    try:
        await again.join()
        refused = ""
    except (RequestFailed, ConnectionClosed) as exc:
        refused = str(exc)
    assert "booking-closed" in refused or again.close_code == 4410, refused
