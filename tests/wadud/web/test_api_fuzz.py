"""Property-based fuzz of the whole HTTP API from its own OpenAPI document.

schemathesis (a client no one here wrote) generates requests from the
document: valid ones, edge cases and malformed ones, anonymous and with an
admin's and a patient's token, against a real ``wadud serve`` process on a
real PostgreSQL. The check is that no request gets a 5xx; the server's own
4xx validation is what the generated garbage should meet.

Beside the whole-API passes (anonymous, admin, patient), a focused pass gives
more examples to the operations where a review found 500s (issue 12, finding
8): the booking list (``from``/``to``, ``cursor``), doctor search and reviews
(cursors, instants), slots, and the payment webhook with its documented
signature header.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from benchmarks.common import answers_ready
from tests.conftest import free_port
from tests.wadud.processes import serve

BIN = Path(sys.executable).parent
SECRET = "fuzz-secret-" + "y" * 40


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = serve(database_url, tmp_path, port, WADUD_SECRET_KEY=SECRET, WADUD_LOG_LEVEL="info")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        # SIGTERM is a graceful stop: in-flight requests finish, pools close,
        # and the process exits 0.
        proc.terminate()
        assert proc.wait(20) == 0
        log = (tmp_path / "server.log").read_text()
        # The server logs every unhandled error and every request's status; a
        # fuzz run must leave neither an unhandled error nor a 5xx.
        bad = [
            line
            for line in log.splitlines()
            if "unhandled error" in line or re.search(r'"status": 5\d\d', line)
        ]
        assert not bad, "\n".join(bad)[-6000:]


async def _token(base: str, tmp_path: Path, database_url: str, role: str) -> str:
    email = f"{role}@fuzz.test"
    password = "fuzz password 123"
    if role == "patient":
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                base + "/api/v1/auth/register", json={"email": email, "password": password}
            ) as r,
        ):
            return str((await r.json())["access_token"])
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "wadud"),
        "user",
        "add",
        "--email",
        email,
        "--role",
        role,
        "--password-stdin",
        "--data-dir",
        str(tmp_path),
        stdin=subprocess.PIPE,
        env={**os.environ, "WADUD_DATABASE_URL": database_url, "WADUD_SECRET_KEY": SECRET},
    )
    await proc.communicate(password.encode() + b"\n")
    assert proc.returncode == 0
    async with (
        aiohttp.ClientSession() as s,
        s.post(base + "/api/v1/auth/login", json={"email": email, "password": password}) as r,
    ):
        return str((await r.json())["access_token"])


#: Operations that once answered some inputs with a 500 (issue 12, finding 8).
FOCUS = (
    r"^/api/v1/(bookings|doctors|doctors/\{doctor_id\}/(reviews|slots)"
    r"|webhooks/\{gateway\})$"
)


#: The passes: who asks, and whether only the focused operations. Each is its
#: own test (its own server and database), so a parallel run spreads them.
PASSES = ("anonymous", "admin", "patient", "admin, focused")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", PASSES)
async def test_fuzz_finds_no_server_errors(
    name: str, server: str, tmp_path: Path, database_url: str
) -> None:
    if shutil.which("schemathesis", path=str(BIN)) is None:
        pytest.fail("schemathesis is a test dependency; install wadud[test]")
    async with aiohttp.ClientSession() as s:
        # A minute: four workers start servers at once.
        assert await answers_ready(s, server, 60), "server did not become ready"
    headers: list[str] = []
    if name != "anonymous":
        role = "patient" if name == "patient" else "admin"
        token = await _token(server, tmp_path, database_url, role)
        headers = ["-H", f"Authorization: Bearer {token}"]
    extra: list[str] = []
    if name.endswith("focused"):
        extra = [
            "--include-path-regex",
            FOCUS,
            "--max-examples",
            os.environ.get("WADUD_FUZZ_FOCUS_EXAMPLES", "80"),
        ]
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "schemathesis"),
        "run",
        f"{server}/api/v1/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        os.environ.get("WADUD_FUZZ_EXAMPLES", "12"),
        "--seed",
        "20261122",
        "--max-time",
        os.environ.get("WADUD_FUZZ_SECONDS", "25"),
        "--exclude-path",
        "/api/v1/auth/logout",
        "--no-color",
        "--warnings",
        "off",
        *headers,
        *extra,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{name}:\n{text[-6000:]}"
