"""Headless Firefox ESR as a WebRTC test peer, driven over WebDriver BiDi.

There is no geckodriver package here, but ``firefox-esr --headless
--remote-debugging-port=N`` serves WebDriver BiDi at
``ws://127.0.0.1:N/session`` (../shared/TESTING.md). :class:`FirefoxPage`
speaks just enough of it (``session.new``, ``browsingContext.getTree``,
``browsingContext.navigate``, ``script.evaluate``) to offer the ``eval`` and
``wait_for`` that the call tests use on a Chromium :class:`tests.browser.Page`.

Fake devices and loopback candidates come from prefs in the profile's
``user.js``. Firefox gathers nothing in a loopback-only namespace (it finds
no default address): give it a namespace with a veth interface and a
default route (:func:`veth_namespace_command`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.browser import DriverError, Scripted

FIREFOX = shutil.which("firefox-esr") or "/usr/bin/firefox-esr"
#: The address of the veth interface :func:`veth_namespace_command` makes.
VETH_ADDRESS = "10.211.0.1"

PREFS = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True,
    "browser.aboutwelcome.enabled": False,
    # A floor under Firefox's own uplink estimate (bit/s), which the
    # loopback and veth paths carry many times over. On a machine starved of
    # CPU Firefox's estimate could stay under what a second simulcast layer
    # needs for as long as one waits (ci140, ci143; here 3 runs in 22
    # beside two busy loops: only "q" for 40 s while the worker asked for
    # all three layers and its feedback reported every packet, with the
    # kernel's arrival times as with the loop's), where Chromium, on the
    # same feedback and load, sent "q" and "f" (1.65 Mbit/s). With the
    # floor: 8 runs in 8, a second layer within 0.5 s of decoding (2.3 s
    # before). The tests are about the worker and the pages, not about how
    # fast Firefox's estimator ramps.
    "media.peerconnection.video.min_bitrate_estimate": 1_000_000,
}


def veth_namespace_command() -> list[str]:
    """A prefix that runs a command in a fresh network namespace with
    loopback and one veth pair (10.211.0.1/24, the default route through
    it); skips the test where Firefox, unshare or ip is missing."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2)")
    if not os.path.exists(FIREFOX):
        pytest.skip("needs firefox-esr")
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    setup = (
        "ip link set lo up && ip link add wv0 type veth peer name wv1"
        f" && ip addr add {VETH_ADDRESS}/24 dev wv0 && ip link set wv0 up && ip link set wv1 up"
        " && ip route add default dev wv0"
    )
    return ["unshare", *user, "--net", "--", "sh", "-c", f'{setup} && exec "$0" "$@"']


class FirefoxPage(Scripted):
    """One Firefox with one tab, driven over WebDriver BiDi; ``eval`` and
    ``wait_for`` as on :class:`tests.browser.Page` (values cross as JSON)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, http: aiohttp.ClientSession,
                 ws: aiohttp.ClientWebSocketResponse, context: str) -> None:  # fmt: skip
        self.name, self.proc, self.http, self.ws, self.context = name, proc, http, ws, context
        self.ids = itertools.count(100)
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, work: Path, name: str, url: str, port: int) -> FirefoxPage:
        profile = work / f"firefox-{name}"
        profile.mkdir(parents=True)
        (profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
        )
        log = os.open(work / f"firefox-{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        proc = await asyncio.create_subprocess_exec(
            FIREFOX, "--headless", "--no-remote", "--profile", str(profile),
            f"--remote-debugging-port={port}", "--width=1280", "--height=800", "about:blank",
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        os.close(log)
        with (work / "browser-groups").open("a") as f:
            f.write(f"{proc.pid}\n")
        http = aiohttp.ClientSession()
        ws: aiohttp.ClientWebSocketResponse | None = None
        deadline = time.monotonic() + 30
        while ws is None:
            try:
                ws = await http.ws_connect(f"ws://127.0.0.1:{port}/session", max_msg_size=0)
            except aiohttp.ClientError:
                if time.monotonic() > deadline or proc.returncode is not None:
                    await http.close()
                    raise DriverError(f"{name}: Firefox offered no WebDriver BiDi") from None
                await asyncio.sleep(0.3)
        page = cls(name, proc, http, ws, "")
        await page.send("session.new", capabilities={})
        tree = await page.send("browsingContext.getTree")
        page.context = tree["contexts"][0]["context"]
        await page.send("browsingContext.navigate", context=page.context, url=url, wait="none")
        return page

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            fut = self.waiting.pop(data.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(data)
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(DriverError("WebDriver BiDi connection closed"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[msg_id] = fut
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, 30)
        if reply.get("type") == "error" or "error" in reply:
            raise DriverError(
                f"{self.name}: {method}: {reply.get('error')}: {reply.get('message')}"
            )
        return dict(reply["result"])

    async def eval(self, expression: str) -> Any:
        wrapped = f"(async () => JSON.stringify(await ({expression})))()"
        result = await self.send(
            "script.evaluate",
            expression=wrapped,
            target={"context": self.context},
            awaitPromise=True,
            userActivation=True,
        )
        if result.get("type") == "exception":
            details = result.get("exceptionDetails", {})
            raise DriverError(f"{self.name}: {expression[:80]}: {details.get('text')}")
        value = result.get("result", {}).get("value")
        return None if value is None else json.loads(value)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        await self.http.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()
