"""TOTP (RFC 6238) at sign-in for staff and admins, against the real API:
enrolment, confirmation, sign-in with a code, and the typed refusals."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import pyotp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import Api
from wadud import totp
from wadud.config import Settings
from wadud.state import keys
from wadud.web.api import Role

PASSWORD = "correct horse battery"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, auth_totp_admins=True)


async def _account(api: Api, role: Role, clinic_id: str | None = None) -> str:
    return await api.account(role, clinic_id=clinic_id, password=PASSWORD)


async def _login(api: Api, email: str, code: str | None = None, expect: int = 200) -> Any:
    body: dict[str, Any] = {"email": email, "password": PASSWORD}
    if code is not None:
        body["totp_code"] = code
    return await api.post("/api/v1/auth/login", body, expect=expect)


def _code(secret: str, offset: int = 0) -> str:
    return pyotp.TOTP(secret).at(time.time() + offset)


async def test_admin_enrols_at_first_sign_in_then_needs_a_code(api: Api) -> None:
    email = await _account(api, Role.ADMIN)
    refused = await _login(api, email, expect=401)
    assert refused["code"] == "totp-enrolment-required"
    enrolment = refused["enrolment_token"]

    # The enrolment token opens enrolment and nothing else.
    await api.get("/api/v1/me", token=enrolment, expect=401)
    started = await api.post("/api/v1/auth/totp/enrol", {"enrolment_token": enrolment},
                             expect=200)  # fmt: skip
    secret = started["secret"]
    assert started["otpauth_uri"].startswith("otpauth://totp/")
    assert pyotp.parse_uri(started["otpauth_uri"]).secret == secret

    wrong = await api.post("/api/v1/auth/totp/confirm",
                           {"enrolment_token": enrolment, "code": "000000"
                            if _code(secret) != "000000" else "111111"},
                           expect=401)  # fmt: skip
    assert wrong["code"] == "totp-invalid"
    spent = _code(secret)
    done = await api.post("/api/v1/auth/totp/confirm",
                          {"enrolment_token": enrolment, "code": spent},
                          expect=200)  # fmt: skip
    assert done["enrolled"] is True
    me = await api.get("/api/v1/me", token=done["tokens"]["access_token"], expect=200)
    assert me["email"] == email

    # From now on: no code, a wrong code, a reused code are typed 401s.
    assert (await _login(api, email, expect=401))["code"] == "totp-required"
    bad = str((int(_code(secret)) + 1) % 1_000_000).zfill(6)
    assert (await _login(api, email, bad, expect=401))["code"] == "totp-invalid"
    assert (await _login(api, email, spent, expect=401))["code"] == "totp-invalid"
    # The next step's code (a phone clock a little ahead) is accepted, once.
    tokens = await _login(api, email, _code(secret, 30))
    await api.get("/api/v1/me", token=tokens["access_token"], expect=200)
    # A wrong password with a right code is still just bad credentials.
    body = {"email": email, "password": "wrong password", "totp_code": _code(secret)}
    assert (await api.post("/api/v1/auth/login", body, expect=401))["code"] == "bad-credentials"


async def test_a_clinic_requires_totp_of_its_staff(api: Api) -> None:
    pool = api.app[keys.DB]
    clinic = str(
        await pool.fetchval(
            "INSERT INTO clinics (name, region, currency) VALUES ('C', 'PK', 'PKR') RETURNING id"
        )
    )
    other = str(
        await pool.fetchval(
            "INSERT INTO clinics (name, region, currency) VALUES ('D', 'PK', 'PKR') RETURNING id"
        )
    )
    staff = await _account(api, Role.CLINIC_STAFF, clinic)
    doctor = await _account(api, Role.DOCTOR, clinic)
    outsider = await _account(api, Role.DOCTOR, other)
    staff_token = (await _login(api, staff))["access_token"]
    # Not required yet: a password is enough.
    await _login(api, doctor)

    await api.put(f"/api/v1/clinics/{other}/totp", {"required": True}, token=staff_token,
                  expect=404)  # fmt: skip
    await api.put(f"/api/v1/clinics/{clinic}/totp", {"required": True}, token=staff_token,
                  expect=200)  # fmt: skip
    refused = await _login(api, doctor, expect=401)
    assert refused["code"] == "totp-enrolment-required"
    await _login(api, outsider)  # another clinic: unaffected
    # Patients never need a code.
    patient = await _account(api, Role.PATIENT)
    await _login(api, patient)

    # Enrolling of one's own accord, with a bearer token, works too.
    started = await api.post("/api/v1/auth/totp/enrol", {}, token=staff_token, expect=200)
    confirmed = await api.post("/api/v1/auth/totp/confirm", {"code": _code(started["secret"])},
                               token=staff_token, expect=200)  # fmt: skip
    assert confirmed == {"enrolled": True, "tokens": None}
    again = await api.post("/api/v1/auth/totp/enrol", {}, token=staff_token, expect=409)
    assert again["code"] == "totp-already-enrolled"

    # A lost phone: the clinic's staff reset the doctor's... of their clinic only.
    doctor_id = await pool.fetchval("SELECT id FROM users WHERE email = $1", doctor)
    outsider_id = await pool.fetchval("SELECT id FROM users WHERE email = $1", outsider)
    await api.delete(f"/api/v1/users/{outsider_id}/totp", token=staff_token, expect=404)
    await api.delete(f"/api/v1/users/{doctor_id}/totp", token=staff_token, expect=204)

    # Every sign-in was audited, the refused ones too, without the email.
    rows = await pool.fetch(
        "SELECT action, detail FROM audit_log WHERE actor_id = $1 ORDER BY seq", doctor_id
    )
    assert [(r["action"], r["detail"]) for r in rows] == [
        ("auth.signin", '{"totp":false}'),
        ("auth.signin_failed", '{"reason":"totp-enrolment-required"}'),
    ]
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE detail LIKE '%@%'") == 0


async def test_an_enrolment_token_is_not_an_access_token(api: Api) -> None:
    settings = api.app[keys.SETTINGS]
    from wadud.web import auth

    token = auth.issue_enrolment_token(settings, uuid.uuid4())
    with pytest.raises(auth.InvalidToken):
        auth.decode_access_token(settings, token)
    await api.post("/api/v1/auth/totp/enrol", {"enrolment_token": "x"}, expect=401)
    await api.post("/api/v1/auth/totp/enrol", {}, expect=401)


@given(offset=st.integers(min_value=-200, max_value=200), last=st.integers(-3, 3))
def test_codes_match_one_step_either_side_and_only_after_the_last(offset: int, last: int) -> None:
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    now = 1_700_000_000.0
    code = pyotp.TOTP(secret).at(now + offset)
    step = totp.matching_step(secret, code, now, int(now) // 30 + last)
    current = int(now) // 30
    expected = (int(now) + offset) // 30
    if abs(expected - current) <= 1 and expected > current + last:
        assert step == expected
    else:
        # A code of another step may collide by chance (1 in a million).
        assert step is None or step != expected


@given(st.text(max_size=10))
def test_anything_but_six_digits_never_matches(code: str) -> None:
    if len(code) == 6 and code.isdigit():
        return
    assert totp.matching_step("JBSWY3DPEHPK3PXP", code, 1_700_000_000.0, None) is None
