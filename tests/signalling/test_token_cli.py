"""``wadud token``: the link it prints carries a room token that the server
reading the same configuration and data folder accepts, with the rights its
role implies."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bin.assembly import build_app
from bin.main import main
from wadud import config
from wadud.auth import decode_room_token
from wadud.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
    return subprocess.run(
        [str(Path(sys.executable).parent / "wadud"), "token", *argv],
        env={**clean, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def split(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    [tok] = parse_qs(parts.query)["token"]
    return f"{parts.scheme}://{parts.netloc}", parts.path, tok


def settings_for(data_dir: Path, **env: str) -> Settings:
    return config.load(env=env, overrides={"data_dir": str(data_dir)}).with_secret()


def test_doctor_link_from_the_command(tmp_path: Path) -> None:
    done = run_cli(
        "--room", "clinic-42", "--identity", "dr-amina", "--role", "doctor",
        "--name", "ڈاکٹر آمنہ", "--data-dir", str(tmp_path),
        env={"WADUD_PUBLIC_URL": "https://calls.example"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    base, path, tok = split(done.stdout.strip())
    assert (base, path) == ("https://calls.example", "/call/clinic-42")
    # The secret was created under the data folder, where `wadud serve` finds it.
    assert (tmp_path / "secret_key").exists()
    grant = decode_room_token(settings_for(tmp_path), tok)
    assert (grant.room, grant.identity, grant.name, grant.role) == (
        "clinic-42",
        "dr-amina",
        "ڈاکٹر آمنہ",
        "doctor",
    )
    assert (grant.publish, grant.subscribe, grant.admin) == (True, True, True)


def _claims(tok: str) -> dict[str, Any]:
    import base64

    body = tok.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


@pytest.mark.parametrize(("role", "admin"), [("patient", False), ("staff", True)])
def test_roles_and_ttl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], role: str, admin: bool
) -> None:
    argv = ["token", "--room", "r", "--identity", f"id-{role}", "--role", role]
    assert main([*argv, "--data-dir", str(tmp_path), "--ttl", "90"]) == 0
    _, path, tok = split(capsys.readouterr().out.strip())
    assert path == "/call/r"
    grant = decode_room_token(settings_for(tmp_path), tok)
    assert grant.admin is admin and grant.name == f"id-{role}"
    claims = _claims(tok)
    assert claims["exp"] - claims["nbf"] == pytest.approx(90 + 60, abs=2)
    # Default validity: four hours.
    assert main([*argv, "--data-dir", str(tmp_path)]) == 0
    claims = _claims(split(capsys.readouterr().out.strip())[2])
    now = dt.datetime.now(dt.UTC).timestamp()
    assert claims["exp"] - now == pytest.approx(4 * 3600, abs=5)


def test_room_names_are_quoted_and_bad_arguments_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--identity", "x", "--role", "patient", "--data-dir", str(tmp_path)]
    assert main(["token", "--room", "a b/c", *common]) == 0
    assert split(capsys.readouterr().out.strip())[1] == "/call/a%20b%2Fc"
    assert main(["token", "--room", "r", *common, "--ttl", "0"]) == 2
    assert "--ttl" in capsys.readouterr().err
    assert main(["token", "--room", "", *common]) == 2
    assert main(["token", "--room", "x" * 129, *common]) == 2
    with pytest.raises(SystemExit):
        main(["token", "--room", "r", "--identity", "x", "--role", "nurse"])


async def _join(settings: Settings, tok: str) -> dict[str, Any]:
    app = build_app(settings)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        async with aiohttp.ClientSession() as s, s.ws_connect(client.make_url("/ws")) as ws:
            await ws.send_json({"type": "join", "token": tok, "id": "1"})
            return dict(await ws.receive_json(timeout=10))
    finally:
        await client.close()


async def test_the_server_on_the_same_data_folder_accepts_it(
    settings: Settings, tmp_path: Path
) -> None:
    data = tmp_path / "var"
    done = run_cli(
        "--room", "r1", "--identity", "dr-a", "--role", "doctor", "--data-dir", str(data)
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    tok = split(done.stdout.strip())[2]
    # As `wadud serve` would run: no secret configured, the data folder's one.
    serve = dataclasses.replace(settings, data_dir=data, secret_key="")
    answer = await _join(serve, tok)
    assert answer["type"] == "joined" and answer["participant"]["identity"] == "dr-a"
    # A server with another data folder (another secret) refuses it.
    other = dataclasses.replace(settings, data_dir=tmp_path / "elsewhere", secret_key="")
    answer = await _join(other, tok)
    assert (answer["code"], answer["fatal"]) == ("unauthorized", True)
