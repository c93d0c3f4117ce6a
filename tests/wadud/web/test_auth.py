from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest

from tests.conftest import Api
from wadud.state import keys
from wadud.web import auth
from wadud.web.api import Principal, Role


async def test_register_login_refresh_logout(api: Api) -> None:
    t = await api.post(
        "/api/v1/auth/register",
        {"email": "Amina@Example.test", "password": "long enough pw", "display_name": "Amina"},
        expect=201,
    )
    assert t["role"] == "patient"
    me = await api.get("/api/v1/me", token=t["access_token"], expect=200)
    assert me["email"] == "Amina@Example.test" and not me["anonymous"]
    # Email is unique whatever its case.
    dup = await api.post(
        "/api/v1/auth/register",
        {"email": "amina@example.test", "password": "another pw 123"},
        expect=409,
    )
    assert dup["code"] == "email-taken"
    bad = await api.post(
        "/api/v1/auth/login", {"email": "amina@example.test", "password": "wrong"}, expect=401
    )
    assert bad["code"] == "bad-credentials"
    t2 = await api.post(
        "/api/v1/auth/login",
        {"email": "amina@example.test", "password": "long enough pw"},
        expect=200,
    )
    # Rotation: the new refresh token works once; the old one, replayed,
    # revokes the family, so even the newest tokens of it stop working.
    t3 = await api.post("/api/v1/auth/refresh", {"refresh_token": t2["refresh_token"]}, expect=200)
    assert t3["refresh_token"] != t2["refresh_token"]
    await api.get("/api/v1/me", token=t3["access_token"], expect=200)
    reused = await api.post(
        "/api/v1/auth/refresh", {"refresh_token": t2["refresh_token"]}, expect=401
    )
    assert reused["code"] == "refresh-token-reused"
    await api.post("/api/v1/auth/refresh", {"refresh_token": t3["refresh_token"]}, expect=401)
    await api.get("/api/v1/me", token=t3["access_token"], expect=401)
    # The first login's session is another family and still works, until logout.
    await api.get("/api/v1/me", token=t["access_token"], expect=200)
    await api.post("/api/v1/auth/logout", token=t["access_token"], expect=204)
    await api.get("/api/v1/me", token=t["access_token"], expect=401)
    await api.post("/api/v1/auth/refresh", {"refresh_token": t["refresh_token"]}, expect=401)


async def test_anonymous_session_upgrades_in_place(api: Api) -> None:
    anon = await api.post("/api/v1/auth/anonymous", {"display_name": "Guest"}, expect=201)
    me = await api.get("/api/v1/me", token=anon["access_token"], expect=200)
    assert me["anonymous"] and me["email"] is None
    up = await api.post(
        "/api/v1/auth/register",
        {"email": "guest@example.test", "password": "a fine password"},
        token=anon["access_token"],
        expect=201,
    )
    assert up["user_id"] == anon["user_id"]
    me2 = await api.get("/api/v1/me", token=up["access_token"], expect=200)
    assert not me2["anonymous"] and me2["display_name"] == "Guest"
    # The anonymous session's tokens were retired with the upgrade.
    await api.get("/api/v1/me", token=anon["access_token"], expect=401)


async def test_bad_tokens_are_401_never_anonymous(api: Api) -> None:
    for header in ("Bearer nonsense", "Basic abc", "Bearer "):
        body = await api.get("/api/v1/me", headers={"Authorization": header}, expect=401)
        assert body["status"] == 401
    settings = api.app[keys.SETTINGS]
    expired = auth.issue_access_token(
        settings,
        Principal(uuid.uuid4(), Role.ADMIN, None, False, None),
        now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
    )
    await api.get("/api/v1/me", token=expired, expect=401)
    forged = auth.issue_access_token(
        settings.__class__(secret_key="another key entirely, long enough for HS256"),
        Principal(uuid.uuid4(), Role.ADMIN, None, False, None),
    )
    await api.get("/api/v1/me", token=forged, expect=401)


async def test_roles_and_clinic_scoping_of_user_creation(api: Api) -> None:
    admin = await api.user(Role.ADMIN)
    patient = await api.user(Role.PATIENT)
    body = {"email": "s@example.test", "password": "staff password", "role": "clinic_staff"}
    await api.post("/api/v1/users", body, token=patient, expect=403)
    # Staff need a clinic; a made-up one is 404.
    await api.post("/api/v1/users", body, token=admin, expect=422)
    missing = {**body, "clinic_id": "00000000-0000-0000-0000-000000000000"}
    await api.post("/api/v1/users", missing, token=admin, expect=404)


def test_room_token_round_trip_and_window() -> None:
    from wadud.config import Settings

    s = Settings(secret_key="k" * 40)
    now = dt.datetime.now(dt.UTC)
    grant = auth.RoomGrant("room-1", "u1", "Dr A", "doctor", admin=True)
    tok = auth.issue_room_token(
        s, grant, not_before=now - dt.timedelta(minutes=1), expires=now + dt.timedelta(minutes=5)
    )
    assert auth.decode_room_token(s, tok) == grant
    early = auth.issue_room_token(
        s, grant, not_before=now + dt.timedelta(minutes=10), expires=now + dt.timedelta(minutes=50)
    )
    with pytest.raises(auth.InvalidToken):
        auth.decode_room_token(s, early)
    with pytest.raises(auth.InvalidToken):
        auth.decode_room_token(Settings(secret_key="z" * 40), tok)


def test_a_verified_access_token_is_remembered_until_it_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Signatures are checked once per token text; the expiry every time,
    and another signing key or issuer never finds the remembered answer."""
    from wadud.config import Settings

    s = Settings(secret_key="k" * 40)
    me = Principal(uuid.uuid4(), Role.PATIENT, None, False, uuid.uuid4())
    # Issued so that it expires a second from now.
    issued = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=s.auth_access_ttl - 1)
    tok = auth.issue_access_token(s, me, now=issued)
    assert auth.decode_access_token(s, tok) == me
    calls = []
    real = auth._decode_access_token
    monkeypatch.setattr(auth, "_decode_access_token", lambda *a: calls.append(a) or real(*a))
    assert auth.decode_access_token(s, tok) == me
    assert calls == []  # remembered
    with pytest.raises(auth.InvalidToken):
        auth.decode_access_token(Settings(secret_key="z" * 40), tok)
    with pytest.raises(auth.InvalidToken):
        auth.decode_access_token(Settings(secret_key="k" * 40, auth_issuer="other"), tok)
    # Past its expiry the remembered answer is gone, and the decode refuses.
    time.sleep(1.1)
    with pytest.raises(auth.InvalidToken):
        auth.decode_access_token(s, tok)
    # A token that is not one stays refused however often it comes.
    for _ in range(3):
        with pytest.raises(auth.InvalidToken):
            auth.decode_access_token(s, tok[:-2] + "xx")


async def test_a_changed_role_or_clinic_ends_the_old_access_token(api: Api) -> None:
    """A doctor demoted (or moved to another clinic) keeps no rights from a
    token issued before: the REST side of issue 12, finding 7."""
    admin = await api.user(Role.ADMIN)
    clinics = []
    for name in ("One", "Two"):
        c = await api.post(
            "/api/v1/clinics", {"name": name, "region": "PK"}, token=admin, expect=201
        )
        clinics.append(c["id"])
    staff = await api.user(Role.CLINIC_STAFF, clinic_id=clinics[0])
    me = await api.get("/api/v1/me", token=staff, expect=200)
    pool = api.app[keys.DB]
    await pool.execute("UPDATE users SET clinic_id = $2 WHERE id = $1::uuid", me["id"], clinics[1])
    await api.get("/api/v1/me", token=staff, expect=401)
    patient = await api.user(Role.PATIENT)
    who = await api.get("/api/v1/me", token=patient, expect=200)
    await pool.execute(
        "UPDATE users SET role = 'clinic_staff', clinic_id = $2 WHERE id = $1::uuid",
        who["id"],
        clinics[0],
    )
    await api.get("/api/v1/me", token=patient, expect=401)


async def test_a_hash_verifies_under_another_memory_cost_and_unknown_accounts_never_match() -> None:
    small, default = auth.Passwords(memory_kib=1024), auth.Passwords()
    try:
        stored = await small.hash("correct horse battery")
        assert "m=1024," in stored
        # A deployment that raises (or lowers) the cost keeps its users.
        assert await default.check(stored, "correct horse battery")
        assert not await default.check(stored, "wrong horse battery")
        # No account, or one without a password: checked as long, never a match.
        assert not await small.check(None, "correct horse battery")
        assert not await small.check("not a hash", "correct horse battery")
    finally:
        small.close()
        default.close()


def test_oversees_is_an_admin_or_staff_of_that_clinic() -> None:
    clinic, other = uuid.uuid4(), uuid.uuid4()

    def who(role: Role, clinic_id: uuid.UUID | None) -> Principal:
        return Principal(uuid.uuid4(), role, clinic_id, False, None)

    assert who(Role.ADMIN, None).oversees(clinic)
    assert who(Role.CLINIC_STAFF, clinic).oversees(clinic)
    assert not who(Role.CLINIC_STAFF, other).oversees(clinic)
    assert not who(Role.CLINIC_STAFF, None).oversees(clinic)
    # A doctor of the clinic acts for themselves, not for the clinic.
    assert not who(Role.DOCTOR, clinic).oversees(clinic)
    assert not who(Role.PATIENT, clinic).oversees(clinic)
