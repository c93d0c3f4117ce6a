"""Headless Chromium as a WebRTC test peer: where it is and the flags a loopback
call needs (../shared/TESTING.md explains each; without
--allow-loopback-in-peer-connection it offers no 127.0.0.1 candidate), and a
site whose page reports its outcome back to the test."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

CHROMIUM = "/usr/bin/chromium"
#: The fake camera at 15 frames a second, a phone camera's rate in dim
#: light. Every call page of the suite encodes its camera (1280x720 in three
#: simulcast layers) and decodes the others': the browsers are the largest
#: share of the suite's CPU (39%, by process accounting over a whole
#: run), and the suite is CPU-bound. At Chromium's default of 20 fps,
#: test_browser_call.py and test_browser_guests.py took 186 and 172 CPU
#: seconds; at 15, 160 and 164. Tests that measure a frame rate ask for the
#: default again with :data:`FULL_RATE_CAMERA` (a later flag wins).
CAMERA = "--use-fake-device-for-media-stream=fps=15"
FULL_RATE_CAMERA = "--use-fake-device-for-media-stream=fps=20"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    CAMERA,
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
]


def trust(home: Path, certificate: Path, *, ca: bool) -> None:
    """Make a Chromium started with ``HOME=home`` trust ``certificate``: a CA
    that signs servers' certificates (``ca``), or one server's own
    self-signed certificate. Chromium on Linux takes what a user trusts from
    the NSS database ``~/.pki/nssdb`` (``certutil``, Debian's libnss3-tools),
    and checks a ``turns:`` relay's certificate against it as it checks a web
    site's, name included; without it, no relay candidate (docs/turn.md)."""
    if shutil.which("certutil") is None:
        pytest.skip("needs certutil (libnss3-tools)")
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True, exist_ok=True)
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    if not (db / "cert9.db").exists():
        run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"])
    flags = "C,," if ca else "P,,"  # trusted to issue server certificates / a trusted server
    run(["certutil", "-A", "-d", f"sql:{db}", "-n", certificate.stem, "-t", flags,
         "-i", str(certificate)])  # fmt: skip


@dataclass
class ReportingSite:
    url: str
    #: The JSON the page POSTed to ``/result`` (its first).
    result: asyncio.Future[dict[str, Any]]


@contextlib.asynccontextmanager
async def reporting_site(page: str, routes: Iterable[web.RouteDef]) -> AsyncIterator[ReportingSite]:
    """A site on a free loopback port: ``page`` (HTML) at ``/``, ``routes``
    beside it, and ``/result``, where the page POSTs its outcome."""
    result: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def report(request: web.Request) -> web.Response:
        if not result.done():
            result.set_result(json.loads(await request.text()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_routes(routes)
    app.router.add_post("/result", report)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield ReportingSite(f"http://127.0.0.1:{runner.addresses[0][1]}/", result)
    finally:
        await runner.cleanup()
