"""The origin policy over HTTP: CORS on ``POST /api/v1/check`` and
``/api/v1/calls/*`` (signalling/edge/cors.py) and the call page's
``frame-ancestors`` per clinic (signalling/edge/origins.py), against the app
with a real PostgreSQL. A browser's view of both, a clinic's page on
another origin: tests/signalling/edge/test_embedding.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest

from bin.assembly import build_app
from signalling.edge.cors import MAX_AGE
from signalling.edge.origins import CACHE_TTL, clinic_of, frame_sources
from tests.booking.factories import Clinic, Doctor
from tests.conftest import Api, served
from tests.polling import wait_until
from wadud.config import Settings
from wadud.state import keys
from wadud.web.api import Role

SITE = "https://clinic.example"
ELSEWHERE = "https://elsewhere.example"
TRUSTED = "https://platform.example"


@pytest.fixture
async def trusting(settings: Settings) -> AsyncIterator[Api]:
    """The app with a deployment-wide allowed origin."""
    app = build_app(dataclasses.replace(settings, call_allowed_origins=[TRUSTED]))
    async with served(app) as api:
        yield api


async def allow(api: Api, clinic: Clinic, *origins: str) -> None:
    await api.patch(
        f"/api/v1/clinics/{clinic.id}",
        {"allowed_origins": list(origins)},
        token=clinic.staff_token,
        expect=200,
    )


def preflight_headers(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type",
    }


@pytest.mark.parametrize("path", ["/api/v1/check", "/api/v1/calls/stats", "/api/v1/calls/chat"])
async def test_a_preflight_from_a_clinics_site_is_allowed(
    api: Api, clinic: Clinic, path: str
) -> None:
    await allow(api, clinic, SITE)
    resp = await api.client.options(path, headers=preflight_headers(SITE))
    assert resp.status == 204, await resp.text()
    assert resp.headers["Access-Control-Allow-Origin"] == SITE
    assert "Origin" in resp.headers["Vary"]
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "content-type" in resp.headers["Access-Control-Allow-Headers"].lower()
    assert resp.headers["Access-Control-Max-Age"] == str(MAX_AGE)
    # Never credentials: these endpoints take no cookie.
    assert "Access-Control-Allow-Credentials" not in resp.headers


@pytest.mark.parametrize(
    "origin", [ELSEWHERE, "null", "https://CLINIC.example", "https://clinic.example:8443"]
)
async def test_a_preflight_from_another_site_is_refused(
    api: Api, clinic: Clinic, origin: str
) -> None:
    await allow(api, clinic, SITE)
    for path in ("/api/v1/check", "/api/v1/calls/stats"):
        resp = await api.client.options(path, headers=preflight_headers(origin))
        assert resp.status == 403
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        problem = await resp.json()
        assert problem["code"] == "origin-not-allowed" and problem["status"] == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert "Access-Control-Allow-Methods" not in resp.headers
        assert "Origin" in resp.headers["Vary"]


async def test_a_preflight_without_an_origin_is_refused(api: Api) -> None:
    resp = await api.client.options("/api/v1/check")
    assert resp.status == 403
    assert (await resp.json())["code"] == "origin-not-allowed"


async def test_the_answers_carry_the_origin_only_for_an_allowed_site(
    api: Api, clinic: Clinic
) -> None:
    await allow(api, clinic, SITE)
    ok = await api.client.post("/api/v1/check", json={}, headers={"Origin": SITE})
    assert ok.status == 201
    assert ok.headers["Access-Control-Allow-Origin"] == SITE
    assert "Origin" in ok.headers["Vary"]
    assert "Retry-After" in ok.headers["Access-Control-Expose-Headers"]
    # An error's answer too, so the page can read why.
    bad = await api.client.post("/api/v1/check", json={"room": 1}, headers={"Origin": SITE})
    assert bad.status == 422
    assert bad.headers["Access-Control-Allow-Origin"] == SITE
    stats = await api.client.post("/api/v1/calls/stats", json={}, headers={"Origin": SITE})
    assert stats.headers["Access-Control-Allow-Origin"] == SITE
    other = await api.client.post("/api/v1/check", json={}, headers={"Origin": ELSEWHERE})
    assert other.status == 201  # the server answers; the browser keeps it from the page
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Origin" in other.headers["Vary"]
    # Its own pages' requests, and paths outside the policy, get nothing.
    own = f"http://{api.client.host}:{api.client.port}"
    same = await api.client.post("/api/v1/check", json={}, headers={"Origin": own})
    assert "Access-Control-Allow-Origin" not in same.headers
    elsewhere = await api.client.get("/api/v1/regions/PK/features", headers={"Origin": SITE})
    assert "Access-Control-Allow-Origin" not in elsewhere.headers
    assert "Vary" not in elsewhere.headers or "Origin" not in elsewhere.headers["Vary"]


async def test_a_change_of_a_clinics_sites_applies_within_seconds(api: Api, clinic: Clinic) -> None:
    async def status() -> int:
        resp = await api.client.options("/api/v1/check", headers=preflight_headers(SITE))
        return resp.status

    async def allowed() -> bool:
        return await status() == 204

    async def refused() -> bool:
        return await status() == 403

    assert await refused()  # and remembered as refused for a while
    await allow(api, clinic, SITE)
    await wait_until(allowed, within=CACHE_TTL + 3, every=0.2)
    await allow(api, clinic)
    await wait_until(refused, within=CACHE_TTL + 3, every=0.2)


async def test_the_deployments_own_sites_are_allowed(trusting: Api) -> None:
    resp = await trusting.client.options("/api/v1/check", headers=preflight_headers(TRUSTED))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == TRUSTED
    resp = await trusting.client.options("/api/v1/check", headers=preflight_headers(SITE))
    assert resp.status == 403


# -- frame-ancestors ----------------------------------------------------------------


def _frame_ancestors(csp: str) -> str:
    for part in csp.split(";"):
        name, _, value = part.strip().partition(" ")
        if name == "frame-ancestors":
            return value
    raise AssertionError(f"no frame-ancestors in {csp}")


async def framers(api: Api, room: str) -> str:
    resp = await api.client.get(f"/call/{room}?token=x.y.z")
    assert resp.status == 200
    return _frame_ancestors(resp.headers["Content-Security-Policy"])


async def _booking(api: Api, doctor: Doctor) -> str:
    patient = await api.account(Role.PATIENT)
    pool = api.app[keys.DB]
    start = dt.datetime(2030, 1, 1, 9, tzinfo=dt.UTC)
    end = start + dt.timedelta(minutes=20)
    bid = await pool.fetchval(
        """INSERT INTO bookings (clinic_id, doctor_id, doctor_key, patient_id, type, starts_at,
                                 ends_at, blocked, status, price_minor, currency)
           SELECT d.clinic_id, d.id, d.key, u.id, 'video', $3, $4, tstzrange($3, $4),
                  'accepted', 100, d.currency
           FROM doctors d, users u WHERE d.id = $1 AND u.email = $2 RETURNING id""",
        uuid.UUID(doctor.id),
        patient,
        start,
        end,
    )
    return str(bid)


async def test_a_clinics_rooms_are_framed_by_its_sites_only(
    api: Api, clinic: Clinic, doctor: Doctor
) -> None:
    room = f"clinic-{uuid.UUID(clinic.id).hex}-visit-1"
    booking_room = "booking-" + await _booking(api, doctor)
    # No site named anywhere: any site, as before clinics chose.
    assert await framers(api, room) == "*"
    assert await framers(api, booking_room) == "*"
    await allow(api, clinic, SITE, "http://127.0.0.1:9090")
    assert await framers(api, room) == f"{SITE} http://127.0.0.1:9090"
    assert await framers(api, booking_room) == f"{SITE} http://127.0.0.1:9090"
    # Other rooms: the deployment's setting, as before.
    assert await framers(api, "consult-4411") == "*"
    assert await framers(api, f"clinic-{uuid.uuid4().hex}-visit-1") == "*"
    assert await framers(api, f"booking-{uuid.uuid4()}") == "*"
    assert await framers(api, "booking-not-a-uuid") == "*"
    check = await api.client.get("/check")
    assert _frame_ancestors(check.headers["Content-Security-Policy"]) == "*"


async def test_the_deployments_sites_join_a_clinics(trusting: Api, clinic: Clinic) -> None:
    room = f"clinic-{uuid.UUID(clinic.id).hex}-visit-1"
    assert await framers(trusting, room) == "*"
    await allow(trusting, clinic, SITE)
    assert await framers(trusting, room) == f"{TRUSTED} {SITE}"


FRAMED = [
    ("*", [], [], "*"),
    ("", [], [], "*"),
    ("*", [TRUSTED], [], "*"),
    ("https://a.example", [], [], "https://a.example"),
    ("https://a.example", [TRUSTED], [], f"https://a.example {TRUSTED}"),
    ("*", [], [SITE], SITE),
    ("'none'", [], [SITE], SITE),
    (
        "https://*.a.example 'self'",
        [TRUSTED],
        [SITE, TRUSTED],
        f"https://*.a.example 'self' {TRUSTED} {SITE}",
    ),
]


@pytest.mark.parametrize(
    ("deployment", "configured", "clinic", "sources"),
    FRAMED,
    ids=str.split("any empty any-and-mine listed listed-and-mine clinic none-and-clinic all"),
)
def test_frame_sources(
    deployment: str, configured: list[str], clinic: list[str], sources: str
) -> None:
    assert frame_sources(deployment, configured, clinic) == sources


def test_clinic_rooms_are_told_by_their_name() -> None:
    cid = uuid.uuid4()
    assert clinic_of(f"clinic-{cid.hex}-visit-1") == cid
    assert clinic_of(f"clinic-{cid.hex.upper()}-visit-1") is None
    assert clinic_of(f"clinic-{cid}-visit-1") is None
    assert clinic_of("consult-4411") is None
    assert clinic_of(f"booking-{cid}") is None
