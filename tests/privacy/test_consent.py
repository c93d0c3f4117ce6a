"""Consent against a real PostgreSQL and the real call WebSocket: texts and
versions, accept and withdraw, and the refusals at booking and at join."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from privacy.consent import PURPOSES, REGIONS, parse_requirements
from privacy.errors import InvalidConsentText
from tests.booking.bookings.test_bookings import anon, confirm, hold, local, shift
from tests.booking.factories import Clinic, Doctor, make_clinic, make_doctor
from tests.conftest import Api
from tests.signalling.service.test_ws import connect, joined
from wadud.config import Settings
from wadud.state import keys
from wadud.web.api import Role

REQUIRED = ["telehealth_consultation", "data_processing"]
#: A patient's join that got in: the room or its waiting room.
ADMITTED = ("joined", "waiting")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Pakistan requires the two; the UAE overrides with nothing required.
    return dataclasses.replace(
        settings, consent_required=REQUIRED, consent_required_regions=["AE:"]
    )


@pytest.fixture
async def admin(api: Api) -> str:
    return await api.user(Role.ADMIN)


async def publish(
    api: Api, admin: str, purpose: str, language: str = "en", **kw: Any
) -> dict[str, Any]:
    body = {
        "region": "PK",
        "purpose": purpose,
        "language": language,
        "title": f"{purpose} ({language})",
        "body": f"The text of {purpose} in {language}.",
        **kw,
    }
    result: dict[str, Any] = await api.post("/api/v1/consents/texts", body, token=admin, expect=201)
    return result


async def texts(api: Api, admin: str) -> dict[str, dict[str, Any]]:
    """Publish version 1 of both required purposes (English, and Urdu for one)."""
    out = {p: await publish(api, admin, p) for p in REQUIRED}
    await publish(api, admin, "telehealth_consultation", "ur", version=1)
    return out


def refused_for(answer: dict[str, Any], *purposes: str) -> None:
    assert answer["status"] == 403, answer
    assert answer["code"] == "consent_required"
    assert answer["missing"] == sorted(purposes)
    assert answer["region"] == "PK"
    for purpose in purposes:
        assert purpose in answer["detail"]


async def test_consent_is_checked_in_the_hold_s_one_statement(
    api: Api, admin: str, doctor: Doctor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hold on a remembered schedule (booking.schedule.cache) writes in one
    statement; the consent check is in it, and refuses as the long way does."""
    from booking.schedule import cache, slots

    published = await texts(api, admin)
    patient = await anon(api)
    for purpose in REQUIRED:
        await api.post("/api/v1/me/consents/accept", {"text_id": published[purpose]["id"]},
                       token=patient, expect=200)  # fmt: skip
    await hold(api, patient, doctor, local(2, "09:00"), expect=201)
    assert cache.known(uuid.UUID(doctor.id)) is not None
    long_ways: list[object] = []
    real = slots.view_for_hold

    async def counting(*a: Any, **kw: Any) -> Any:
        long_ways.append(a)
        return await real(*a, **kw)

    monkeypatch.setattr(slots, "view_for_hold", counting)
    await hold(api, patient, doctor, local(2, "10:00"), expect=201)
    assert long_ways == []
    # Withdrawn: refused, naming it, without the long way's read.
    await api.post("/api/v1/me/consents/withdraw", {"region": "PK", "purpose": "data_processing"},
                   token=patient, expect=200)  # fmt: skip
    refused_for(await hold(api, patient, doctor, local(2, "11:00"), expect=403), "data_processing")
    assert long_ways == []
    # Someone who never accepted: both named.
    stranger = await anon(api)
    refused_for(await hold(api, stranger, doctor, local(2, "11:00"), expect=403), *REQUIRED)
    assert long_ways == []
    taken = await api.app[keys.DB].fetchval(
        "SELECT count(*) FROM bookings WHERE starts_at = $1", local(2, "11:00")
    )
    assert taken == 0


async def test_booking_needs_the_region_s_consents(api: Api, admin: str, doctor: Doctor) -> None:
    published = await texts(api, admin)
    patient = await anon(api)
    when = local(2, "10:00")
    refused_for(await hold(api, patient, doctor, when, expect=403), *REQUIRED)

    accept = "/api/v1/me/consents/accept"
    await api.post(accept, {"text_id": published["telehealth_consultation"]["id"]},
                   token=patient, expect=200)  # fmt: skip
    refused_for(await hold(api, patient, doctor, when, expect=403), "data_processing")
    await api.post(accept, {"text_id": published["data_processing"]["id"]},
                   token=patient, expect=200)  # fmt: skip
    await hold(api, patient, doctor, when, expect=201)

    # A material new version: acceptances of version 1 stop counting...
    v2 = await publish(api, admin, "data_processing", title="Processing, revised")
    assert v2["version"] == 2
    refused_for(await hold(api, patient, doctor, local(2, "11:00"), expect=403), "data_processing")
    # ... and version 1 can no longer be accepted.
    stale = await api.post(accept, {"text_id": published["data_processing"]["id"]},
                           token=patient, expect=409)  # fmt: skip
    assert stale["code"] == "stale_consent_version"
    await api.post(accept, {"text_id": v2["id"]}, token=patient, expect=200)
    await hold(api, patient, doctor, local(2, "11:00"), expect=201)

    # A non-material version (a typo fixed) leaves acceptances standing.
    await publish(api, admin, "data_processing", material=False)
    await hold(api, patient, doctor, local(2, "12:00"), expect=201)


async def test_a_region_that_requires_nothing_books_without_consent(api: Api) -> None:
    ae = await make_doctor(api, await make_clinic(api, "AE"), time_zone="Asia/Dubai")
    patient = await anon(api)
    await hold(api, patient, ae, local(2, "10:00", ae_tz()), expect=201)
    required = await api.get("/api/v1/consents/required?region=AE", expect=200)
    assert required == {"region": "AE", "purposes": []}
    required = await api.get("/api/v1/consents/required?region=PK", expect=200)
    assert required == {"region": "PK", "purposes": REQUIRED}


def ae_tz() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo("Asia/Dubai")


async def test_joining_needs_consent_and_a_withdrawal_stops_later_joins(
    api: Api, admin: str, doctor: Doctor
) -> None:
    published = await texts(api, admin)
    patient = await anon(api)
    for purpose in REQUIRED:
        await api.post("/api/v1/me/consents/accept", {"text_id": published[purpose]["id"]},
                       token=patient, expect=200)  # fmt: skip
    booking = await hold(api, patient, doctor, local(2, "10:00"))
    bid = booking["id"]
    await confirm(api, bid)
    await api.post(f"/api/v1/bookings/{bid}/accept", token=doctor.token, expect=200)
    await shift(api, bid, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    link = await api.get(f"/api/v1/bookings/{bid}/video-link", token=patient, expect=200)
    doctor_link = await api.get(f"/api/v1/bookings/{bid}/video-link", token=doctor.token,
                                expect=200)  # fmt: skip

    # Accepted: the patient joins (into the waiting room: the doctor admits).
    async with joined(api, link["token"]) as (_, answer):
        assert answer["type"] in ADMITTED, answer

    # Withdrawn: the next join is refused, naming the consent, and closed 4403.
    mine = await api.post("/api/v1/me/consents/withdraw",
                          {"region": "PK", "purpose": "data_processing"},
                          token=patient, expect=200)  # fmt: skip
    current = {(a["purpose"], a["action"]) for a in mine["current"]}
    assert current == {("telehealth_consultation", "accept"), ("data_processing", "withdraw")}
    assert [a["action"] for a in mine["history"]] == ["withdraw", "accept", "accept"]
    async with connect(api) as ws:
        answer = await ws.request({"type": "join", "token": link["token"]}, "j")
        assert answer["type"] == "error" and answer["code"] == "consent_required", answer
        assert "data_processing" in answer["message"]
        assert await ws.closed_with() == 4403
    # The doctor's consent is not the question: their link still opens the room.
    async with joined(api, doctor_link["token"]) as (_, answer):
        assert answer["type"] == "joined", answer

    # Accepted again: joins again.
    await api.post("/api/v1/me/consents/accept",
                   {"text_id": published["data_processing"]["id"]},
                   token=patient, expect=200)  # fmt: skip
    async with joined(api, link["token"]) as (_, answer):
        assert answer["type"] in ADMITTED, answer


async def test_texts_versions_and_who_may_publish(api: Api, admin: str, clinic: Clinic) -> None:
    await texts(api, admin)
    body = {"region": "PK", "purpose": "marketing", "language": "en", "title": "t", "body": "b"}
    for token in (clinic.staff_token, await anon(api)):
        await api.post("/api/v1/consents/texts", body, token=token, expect=403)
    # A version may not skip ahead, nor repeat one in the same language.
    await api.post("/api/v1/consents/texts", {**body, "version": 2}, token=admin, expect=422)
    await publish(api, admin, "marketing")
    again = await api.post("/api/v1/consents/texts", {**body, "version": 1}, token=admin,
                           expect=409)  # fmt: skip
    assert again["code"] == "stale_consent_version"
    bad = {**body, "language": "fr"}
    await api.post("/api/v1/consents/texts", bad, token=admin, expect=422)

    # Urdu where it exists, English otherwise; public.
    current = await api.get("/api/v1/consents/texts?region=PK&language=ur", expect=200)
    languages = {t["purpose"]: t["language"] for t in current}
    assert languages == {
        "telehealth_consultation": "ur",
        "data_processing": "en",
        "marketing": "en",
    }
    one = await api.get(f"/api/v1/consents/texts/{current[0]['id']}", expect=200)
    assert one == current[0]
    # Texts are never edited in place, whoever asks.
    import asyncpg

    from wadud.state import keys

    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api.app[keys.DB].execute("UPDATE consent_texts SET body = 'changed'")


async def test_accept_refuses_unknown_texts_and_other_roles(api: Api, doctor: Doctor) -> None:
    patient = await anon(api)
    missing = await api.post("/api/v1/me/consents/accept",
                             {"text_id": "00000000-0000-0000-0000-000000000000"},
                             token=patient, expect=404)  # fmt: skip
    assert missing["code"] == "unknown_consent_version"
    await api.post("/api/v1/me/consents/withdraw", {"region": "PK", "purpose": "nope"},
                   token=patient, expect=422)  # fmt: skip
    await api.post("/api/v1/me/consents/withdraw", {"region": "PK", "purpose": "marketing"},
                   token=doctor.token, expect=403)  # fmt: skip


_purpose_lists = st.lists(st.sampled_from(PURPOSES), max_size=4)


@given(
    base=_purpose_lists,
    regions=st.dictionaries(st.sampled_from(REGIONS), _purpose_lists, max_size=4),
)
def test_requirements_parse_what_they_say(base: list[str], regions: dict[str, list[str]]) -> None:
    entries = [f"{r.lower()}:{'+'.join(ps)}" for r, ps in regions.items()]
    got_base, got_regions = parse_requirements(base, entries)
    assert got_base == tuple(base)
    assert got_regions == {r: tuple(ps) for r, ps in regions.items()}


@given(st.text(max_size=30))
def test_malformed_requirements_are_a_typed_error(text: str) -> None:
    try:
        base, regions = parse_requirements([], [text])
    except InvalidConsentText:
        return
    region = text.partition(":")[0]
    assert region.strip().upper() in REGIONS
    assert all(p in PURPOSES for p in regions[region.strip().upper()])
    assert base == ()
