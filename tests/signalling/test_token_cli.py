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
from wadud.config import Settings, sources
from wadud.web.auth import decode_room_token

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    *argv: str, env: dict[str, str] | None = None, command: str = "token"
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
    return subprocess.run(
        [str(Path(sys.executable).parent / "wadud"), *command.split(), *argv],
        stdin=subprocess.DEVNULL,
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
    return sources.load(env=env, overrides={"data_dir": str(data_dir)}).with_secret()


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
    # No --name: no name in the link (the page asks for one, never shows the id).
    assert grant.admin is admin and grant.name == ""
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


async def test_url_names_the_server_the_link_opens_on(settings: Settings, tmp_path: Path) -> None:
    data = tmp_path / "var"
    serve = dataclasses.replace(settings, data_dir=data, secret_key="")
    app = build_app(serve)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        url = str(client.make_url("")).rstrip("/")  # http://127.0.0.1:<port>, as --port 18080
        done = run_cli(
            "--room", "r2", "--identity", "pt-9", "--role", "patient",
            "--data-dir", str(data), "--url", url + "/",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        link = done.stdout.strip()
        assert link.startswith(f"{url}/call/r2?token="), link
        async with aiohttp.ClientSession() as s:
            async with s.get(link) as page:  # the link opens the call page...
                assert page.status == 200 and "text/html" in page.headers["Content-Type"]
            async with s.ws_connect(f"{url}/ws") as ws:  # ...and its token joins
                await ws.send_json({"type": "join", "token": split(link)[2], "id": "1"})
                answer = await ws.receive_json(timeout=10)
        assert answer["type"] in ("joined", "waiting"), answer
        assert answer["participant"]["name"] == "", answer
    finally:
        await client.close()


def test_url_defaults_to_the_address_serve_announced(tmp_path: Path) -> None:
    from bin.main import served_url_file

    argv = ["--room", "r", "--identity", "x", "--role", "patient", "--data-dir", str(tmp_path)]
    (tmp_path).mkdir(exist_ok=True)
    served_url_file(settings_for(tmp_path)).write_text("http://127.0.0.1:18080\n")
    done = run_cli(*argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("http://127.0.0.1:18080/call/r?token="), done.stdout
    # A configured public URL wins over it; --url over both.
    done = run_cli(*argv, env={"WADUD_PUBLIC_URL": "https://calls.example"})
    assert done.stdout.startswith("https://calls.example/call/r?"), done.stdout
    done = run_cli(*argv, "--url", "http://10.0.0.5:9000",
                   env={"WADUD_PUBLIC_URL": "https://calls.example"})  # fmt: skip
    assert done.stdout.startswith("http://10.0.0.5:9000/call/r?"), done.stdout
    bad = run_cli(*argv, "--url", "calls.example")
    assert bad.returncode == 2 and "--url" in bad.stderr, bad.stderr


def test_user_add_without_a_terminal_says_how(tmp_path: Path) -> None:
    """No terminal and no --password-stdin: exit 2 and one line saying how,
    not a traceback (and nothing is created: the database is never opened)."""
    done = run_cli(
        "--email", "admin@example.com", "--role", "admin", "--data-dir", str(tmp_path),
        command="user add",
    )  # fmt: skip
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--password-stdin" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "postgres").exists()
