"""API keys (wadud/web/api_keys.py) and the room tokens they mint
(``POST /api/v1/tokens``, signalling/edge/tokens.py): made and revoked by
the real ``wadud key`` command, presented as HTTP Basic credentials to the
app served on loopback, and the tokens joined with over ``/ws``."""

from __future__ import annotations

import base64
import dataclasses
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import pytest

from bin.assembly import build_app
from tests.conftest import Api, served
from wadud.config import Settings
from wadud.state import keys
from wadud.web import api_keys
from wadud.web.auth import decode_room_token

ROOT = Path(__file__).resolve().parents[3]


def wadud(*argv: str, database_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
    return subprocess.run(
        [str(Path(sys.executable).parent / "wadud"), *argv, "--data-dir", str(data_dir)],
        stdin=subprocess.DEVNULL,
        env={**clean, "WADUD_DATABASE_URL": database_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _load_key(database_url: str, data_dir: Path) -> tuple[str, str]:
    """A load key from ``wadud key create``: its id and secret."""
    made = wadud(
        "key", "create", "--name", "load", "--scope", "load",
        database_url=database_url, data_dir=data_dir,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    env = dict(line.split("=", 1) for line in made.stdout.split())
    return env["WADUD_API_KEY"], env["WADUD_API_SECRET"]


def basic(key_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key_id}:{secret}".encode()).decode()}


async def mint(api: Api, auth: dict[str, str], body: dict[str, Any]) -> aiohttp.ClientResponse:
    return await api.client.post("/api/v1/tokens", json=body, headers=auth)


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    app = build_app(
        dataclasses.replace(settings, limits_load_tokens_burst=5, limits_load_tokens_per_hour=1)
    )
    async with served(app) as api:
        yield api


async def _clinic(pool: asyncpg.Pool) -> uuid.UUID:
    clinic: uuid.UUID = await pool.fetchval(
        "INSERT INTO clinics (name, region, currency) VALUES ('Shifa', 'PK', 'PKR') RETURNING id"
    )
    return clinic


async def test_a_key_from_the_command_line_mints_until_it_is_revoked(
    api: Api, database_url: str, tmp_path: Path
) -> None:
    made = wadud(
        "key", "create", "--name", "load tests", "--scope", "load",
        database_url=database_url, data_dir=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    env = dict(line.split("=", 1) for line in made.stdout.split())
    key_id, secret = env["WADUD_API_KEY"], env["WADUD_API_SECRET"]
    assert api_keys.KEY_ID.match(key_id) and "shown only now" in made.stderr
    # Only its hash is kept.
    pool = api.app[keys.DB]
    stored = await pool.fetchval("SELECT secret_hash FROM api_keys WHERE id = $1", key_id)
    assert secret.encode() not in bytes(stored) and len(stored) == 32

    resp = await mint(
        api, basic(key_id, secret), {"room": "load-r1", "identity": "sub-1", "publish": False}
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    grant = decode_room_token(api.app[keys.SETTINGS], body["token"])
    assert (grant.room, grant.identity, grant.role) == ("load-r1", "sub-1", "load")
    assert (grant.publish, grant.subscribe, grant.admin) == (False, True, True)
    link = urlsplit(body["url"])
    assert link.path == "/call/load-r1" and parse_qs(link.query)["token"] == [body["token"]]
    assert body["room"] == "load-r1" and body["expires_at"]

    listed = wadud("key", "list", database_url=database_url, data_dir=tmp_path)
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(key_id)]
    assert " load " in row and "never" not in row and row.endswith("load tests")
    assert secret not in listed.stdout

    revoked = wadud("key", "revoke", key_id, database_url=database_url, data_dir=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    resp = await mint(api, basic(key_id, secret), {"room": "load-r1", "identity": "sub-2"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert (await resp.json())["code"] == "invalid-api-key"
    listed = wadud("key", "list", database_url=database_url, data_dir=tmp_path)
    assert "revoked" in listed.stdout
    # Both audited, by the system, naming the key and never its secret.
    rows = await pool.fetch(
        "SELECT action, actor_role, object, detail FROM audit_log WHERE object = $1 ORDER BY seq",
        f"api_key/{key_id}",
    )
    assert [(r["action"], r["actor_role"]) for r in rows] == [
        ("api_key.create", "system"),
        ("api_key.revoke", "system"),
    ]
    assert all(secret not in str(r["detail"]) for r in rows)
    # Bad arguments: one line, exit 2.
    bad = wadud(
        "key", "create", "--name", "x", "--scope", "clinic",
        database_url=database_url, data_dir=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2 and "--clinic-id" in bad.stderr and "Traceback" not in bad.stderr
    bad = wadud("key", "revoke", "wk_nope", database_url=database_url, data_dir=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


async def test_a_load_key_mints_only_load_rooms_and_a_clinic_key_only_its_own(api: Api) -> None:
    pool = api.app[keys.DB]
    async with pool.acquire() as conn:
        load = await api_keys.create_key(conn, name="load", scope=api_keys.Scope.LOAD)
        clinics = [await _clinic(pool) for _ in range(2)]
        by_clinic = [
            await api_keys.create_key(conn, name="ehr", scope=api_keys.Scope.CLINIC, clinic_id=c)
            for c in clinics
        ]
    load_auth = basic(load.key.id, load.secret)
    for room in ("visit-1", "booking-" + str(uuid.uuid4()), "load-", "check-abc"):
        resp = await mint(api, load_auth, {"room": room, "identity": "x"})
        assert resp.status == 403, room
        assert (await resp.json())["code"] == "room-not-allowed"
    settings = api.app[keys.SETTINGS]
    rooms = []
    for made, clinic in zip(by_clinic, clinics, strict=True):
        auth = basic(made.key.id, made.secret)
        resp = await mint(api, auth, {"room": "visit-1", "identity": "dr", "role": "doctor"})
        assert resp.status == 201, await resp.text()
        body = await resp.json()
        doctor = decode_room_token(settings, body["token"])
        assert body["room"] == doctor.room == f"clinic-{clinic.hex}-visit-1"
        assert (doctor.role, doctor.admin) == ("doctor", True)
        resp = await mint(api, auth, {"room": "visit-1", "identity": "pt", "role": "patient"})
        patient = decode_room_token(settings, (await resp.json())["token"])
        assert (patient.room, patient.role, patient.admin) == (doctor.room, "patient", False)
        rooms.append(doctor.room)
    # Two clinics' "visit-1" are two rooms.
    assert rooms[0] != rooms[1]


@pytest.mark.parametrize(
    "header",
    [
        "Basic " + base64.b64encode(b"wk_0123456789abcdef:wks_wrong").decode(),
        "Basic " + base64.b64encode(b"not-a-key:secret").decode(),
        "Basic " + base64.b64encode(b"no colon").decode(),
        "Basic !!!not base64!!!",
        "Basic " + base64.b64encode(b"wk_0123456789abcdef:" + b"\xff\xfe").decode(),
        # Long, yet under any server's header limit: it reaches the key check.
        "Basic " + "A" * 8_000,
        "Basic",
    ],
)
async def test_bad_credentials_are_a_401_problem(api: Api, header: str) -> None:
    resp = await api.client.post(
        "/api/v1/tokens",
        json={"room": "load-r", "identity": "x"},
        headers={"Authorization": header},
    )
    assert resp.status in (400, 401), await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    # No credentials at all: 401 naming what to send.
    resp = await api.client.post("/api/v1/tokens", json={"room": "load-r", "identity": "x"})
    assert resp.status == 401
    assert "API key" in (await resp.json())["detail"]


async def test_a_wrong_secret_of_a_real_key_is_refused(api: Api) -> None:
    async with api.app[keys.DB].acquire() as conn:
        made = await api_keys.create_key(conn, name="load", scope=api_keys.Scope.LOAD)
    resp = await mint(
        api, basic(made.key.id, made.secret + "x"), {"room": "load-r", "identity": "x"}
    )
    assert resp.status == 401
    # A bearer token's routes are untouched by a key: it is no user.
    resp = await api.client.get("/api/v1/me", headers=basic(made.key.id, made.secret))
    assert resp.status == 401, await resp.text()


async def test_each_key_has_its_own_limit(api: Api) -> None:
    async with api.app[keys.DB].acquire() as conn:
        first = await api_keys.create_key(conn, name="a", scope=api_keys.Scope.LOAD)
        second = await api_keys.create_key(conn, name="b", scope=api_keys.Scope.LOAD)
    for i in range(5):
        resp = await mint(
            api, basic(first.key.id, first.secret), {"room": "load-r", "identity": f"s{i}"}
        )
        assert resp.status == 201
    resp = await mint(api, basic(first.key.id, first.secret), {"room": "load-r", "identity": "s5"})
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    resp = await mint(api, basic(second.key.id, second.secret), {"room": "load-r", "identity": "t"})
    assert resp.status == 201


async def test_load_participants_skip_the_waiting_room_and_a_clinic_patient_waits(api: Api) -> None:
    pool = api.app[keys.DB]
    async with pool.acquire() as conn:
        load = await api_keys.create_key(conn, name="load", scope=api_keys.Scope.LOAD)
        clinic = await api_keys.create_key(
            conn, name="ehr", scope=api_keys.Scope.CLINIC, clinic_id=await _clinic(pool)
        )

    async def token(made: api_keys.NewKey, **body: Any) -> str:
        resp = await mint(api, basic(made.key.id, made.secret), body)
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["token"])

    async with aiohttp.ClientSession() as s:
        answers = []
        sockets = []
        for who in ("sub-1", "sub-2"):
            ws = await s.ws_connect(api.client.make_url("/ws"))
            sockets.append(ws)
            tok = await token(load, room="load-r9", identity=who, publish=False)
            await ws.send_json({"type": "join", "token": tok, "id": "1"})
            answers.append(await ws.receive_json(timeout=10))
        assert [a["type"] for a in answers] == ["joined", "joined"], answers
        ws = await s.ws_connect(api.client.make_url("/ws"))
        sockets.append(ws)
        await ws.send_json(
            {"type": "join", "token": await token(clinic, room="v", identity="pt"), "id": "1"}
        )
        assert (await ws.receive_json(timeout=10))["type"] == "waiting"
        for ws in sockets:
            await ws.close()


async def test_the_openapi_document_names_the_basic_scheme(api: Api) -> None:
    doc = await api.get("/api/v1/openapi.json", expect=200)
    op = doc["paths"]["/api/v1/tokens"]["post"]
    assert op["security"] == [{"api_key": []}]
    assert doc["components"]["securitySchemes"]["api_key"]["scheme"] == "basic"
    assert {"401", "403", "429"} <= set(op["responses"])


async def test_refused_secrets_from_one_address_must_wait_as_failed_sign_ins_do(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    key_id, secret = _load_key(database_url, tmp_path)
    body = {"room": "load-guessed", "identity": "sub-1", "publish": False}
    app = build_app(dataclasses.replace(settings, limits_login_address_free=2,
                                        limits_login_delay=30.0))  # fmt: skip
    async with served(app) as api:
        # Two refusals are free; the third makes the next attempt wait.
        for _ in range(3):
            resp = await mint(api, basic(key_id, "wks_" + "x" * 43), body)
            assert resp.status == 401, await resp.text()
        # Even the right secret waits: the address is guessing.
        resp = await mint(api, basic(key_id, secret), body)
        assert resp.status == 429, await resp.text()
        assert 0 < float(resp.headers["Retry-After"]) <= 30
        assert (await resp.json())["code"] == "rate-limited"
        # Malformed credentials count as refused ones too, and no 500.
        resp = await mint(api, {"Authorization": "Basic !!!"}, body)
        assert resp.status == 429, await resp.text()
