"""The pre-call check: its endpoint over HTTP, and its verdicts with real
Chromium pages as the network closes around them.

The browser tests re-execute this module as a driver in a loopback-only
namespace, as tests/signalling/test_browser_call.py does (its World, and
tests/browser.py's helpers). The check page is framed by another site, which
reads the verdict from its ``wadud-check`` message. Paths are closed with
iptables in the namespace:

* ``paths``: our own TURN relay (UDP, TCP and TLS, relay ports
  45000-45999) in front of the media worker; the namespace's ephemeral ports
  are 20000-39999 so no browser socket shares the relay's range. The relay's
  TLS certificate is signed by a test CA that the page's Chromium trusts
  (tests.chromium.trust), as browsers trust a real relay's CA. Open:
  ``ready``. Every UDP datagram dropped but the relay's own (its relay ports
  to and from the worker): ``ready-relay``, through TURN over TCP. Then
  TURN's TCP port too: ``ready-relay`` through TURN over TLS. Then TURN's TLS
  port too: ``blocked``, within 15 s.
* ``capped``: every peer connection of the page forced through coturn behind
  a rate-limited relay (test_weak_network.py's CappedPath) at 100 kbit/s
  each way: ``audio-only``.
* ``lang``: the call page in Urdu and Arabic from ``?lang=``.

``shots`` (by hand only) saves the screenshots in docs/img (or
``WADUD_SCREENSHOTS``): the check page in three languages on a phone and a
desktop, and the call page's join screen in Urdu and Arabic; the driver's
``--help`` says how to run a scenario by hand.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from signalling.edge.check import CHECK_VALIDITY
from tests.browser import Page, driver_main, frame_of, play
from tests.conftest import Api, served
from tests.signalling.call_world import Scenario, World, embedder, serving
from wadud.config import Settings
from wadud.state import keys
from wadud.web.auth import decode_room_token

ROOT = Path(__file__).resolve().parents[3]
TURN_PORT = 3478
TURNS_PORT = 5349
RELAY_PORTS = (45000, 45999)  # our relay's allocations
EPHEMERAL = "20000 39999"  # the namespace's own sockets (the worker is on 40000)
CAPPED_KBPS = 100


# -- the endpoint, over HTTP ----------------------------------------------------

TURN_URLS = [
    "turn:turn.example:3478?transport=udp",
    "turn:turn.example:3478?transport=tcp",
    "turns:turn.example:5349?transport=tcp",
]


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    """The app with a TURN relay configured (as `wadud api` has one), and a
    check limit low enough to reach."""

    from bin.assembly import build_app

    app = build_app(
        dataclasses.replace(
            settings,
            turn_embedded=False,
            turn_secrets=["relay-secret"],
            turn_urls=TURN_URLS,
            limits_check_burst=3,
        )
    )
    async with served(app) as api:
        yield api


async def test_check_hands_out_a_throwaway_room(api: Api) -> None:
    """Two tokens for a fresh room, one that may only publish and one that may
    only subscribe, both short-lived, and TURN credentials that lapse with
    them under the anonymous quota's user."""
    before = dt.datetime.now(dt.UTC)
    body = await api.post("/api/v1/check", {}, expect=201)
    assert set(body) == {"room", "send_token", "receive_token", "expires_at", "ice_servers"}
    settings = api.app[keys.SETTINGS]
    send = decode_room_token(settings, body["send_token"])
    receive = decode_room_token(settings, body["receive_token"])
    assert send.room == receive.room == body["room"]
    assert body["room"].startswith("check-")
    assert (send.publish, send.subscribe) == (True, False)
    assert (receive.publish, receive.subscribe) == (False, True)
    assert send.identity != receive.identity
    expires = jwt.decode(body["send_token"], options={"verify_signature": False})["exp"]
    assert expires - before.timestamp() <= CHECK_VALIDITY.total_seconds() + 5
    (server,) = body["ice_servers"]
    assert server["urls"] == TURN_URLS
    assert server["ttl"] == CHECK_VALIDITY.total_seconds()
    assert server["username"].split(":", 1)[1] == "anon-" + body["room"]
    again = await api.post("/api/v1/check", {"region": "pk"}, expect=201)
    assert again["room"] != body["room"]
    assert decode_room_token(settings, again["send_token"]).region == "pk"
    doc = await api.get("/api/v1/openapi.json", expect=200)
    op = doc["paths"]["/api/v1/check"]["post"]
    assert op["tags"] == ["check"] and "security" not in op
    assert "429" in op["responses"]


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b'{"region": "Not A Region!"}', "application/json", 422),
        (b'{"room": "mine"}', "application/json", 422),
        (b'{"region": 7}', "application/json", 422),
        (b"{not json", "application/json", 400),
        (b"region=pk", "application/x-www-form-urlencoded", 415),
    ],
)
async def test_check_refuses_bad_input(api: Api, body: bytes, ctype: str, status: int) -> None:
    resp = await api.client.post("/api/v1/check", data=body, headers={"Content-Type": ctype})
    assert resp.status == status
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    problem = await resp.json()
    assert problem["status"] == status and problem["title"]


async def test_check_is_rate_limited_per_address(api: Api) -> None:
    for _ in range(3):
        await api.post("/api/v1/check", {}, expect=201)
    resp = await api.client.post("/api/v1/check", json={})
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["code"] == "rate-limited"


# -- the verdicts, in Chromium ------------------------------------------------------


async def run_check(scenario: str, database_url: str, work: Path, budget: float) -> dict[str, Any]:
    from tests.signalling.weak_paths import run_with_turn

    return await run_with_turn(
        "tests.signalling.edge.test_check", scenario, database_url, work, budget, needs="iptables"
    )


@pytest.mark.timeout(180)
async def test_check_verdicts_as_the_network_closes(database_url: str, tmp_path: Path) -> None:
    """Open path: ``ready`` over UDP. UDP dropped but TURN over TCP:
    ``ready-relay``. TURN's TCP port dropped too, but TURN over TLS:
    ``ready-relay``, and the TLS row says so. Nothing gets through:
    ``blocked``, within 15 s. Each verdict reaches the framing page as a
    ``wadud-check`` message."""
    result = await run_check("paths", database_url, tmp_path, 130)
    print(json.dumps(result))
    open_, relay, tls, blocked = result["open"], result["relay"], result["tls"], result["blocked"]
    assert open_["verdict"] == "ready", open_
    assert open_["details"]["path"] == "udp", open_
    assert open_["details"]["speed"]["video_kbps"] >= 150, open_
    assert open_["details"]["speed"]["frames"] > 0, open_
    assert open_["details"]["tls"]["state"] == "ok", open_
    assert relay["verdict"] == "ready-relay", relay
    assert relay["details"]["udp"]["state"] == "failed", relay
    assert relay["details"]["tcp"]["state"] == "ok", relay
    assert relay["details"]["path"] == "relay-tcp", relay
    assert relay["details"]["speed"]["candidate"]["type"] == "relay", relay
    assert tls["verdict"] == "ready-relay", tls
    assert tls["details"]["udp"]["state"] == "failed", tls
    assert tls["details"]["tcp"]["state"] == "failed", tls
    assert tls["details"]["tls"]["state"] == "ok", tls
    assert tls["details"]["path"] == "relay-tls", tls
    assert tls["details"]["speed"]["candidate"]["relay"] == "tls", tls
    assert tls["details"]["speed"]["video_kbps"] >= 150, tls
    assert tls["rows"]["tls"] == ["ok", "Works"], tls  # what the page shows on that line
    assert tls["rows"]["tcp"][0] == "failed", tls
    assert blocked["verdict"] == "blocked", blocked
    assert blocked["details"]["tcp"]["state"] == "failed", blocked
    assert blocked["details"]["tls"]["state"] == "failed", blocked
    assert blocked["details"]["ms"] <= 15_000, blocked
    assert blocked["wall_s"] <= 17, blocked  # page load included
    # What the page says, in plain words.
    assert open_["title"] == "You are ready for your video visit"
    assert blocked["title"] == "Your network blocks video calls"


@pytest.mark.timeout(150)
async def test_check_at_100_kbps_says_audio_only(database_url: str, tmp_path: Path) -> None:
    """Every connection of the page through a relay capped at 100 kbit/s
    each way: the probe cannot carry the lowest video layer."""
    if shutil.which("turnserver") is None:
        pytest.skip("needs coturn's turnserver")
    result = await run_check("capped", database_url, tmp_path, 90)
    print(json.dumps(result))
    assert result["verdict"] == "audio-only", result
    speed = result["details"]["speed"]
    assert speed["video_kbps"] < 150 and speed["down_kbps"] > 0, speed


@pytest.mark.timeout(90)
async def test_call_page_speaks_urdu_and_arabic(database_url: str, tmp_path: Path) -> None:
    """``?lang=ur`` and ``?lang=ar``: the document's language, right to left,
    the join screen's words, and a link to the check in the same language;
    no ``lang``: English, left to right (the browser's language)."""
    result = await run_check("lang", database_url, tmp_path, 60)
    print(json.dumps(result, ensure_ascii=False))
    ur, ar, en = result["ur"], result["ar"], result["en"]
    assert (ur["lang"], ur["dir"]) == ("ur", "rtl")
    assert ur["join"] == "ابھی شامل ہوں" and ur["title"] == "ویڈیو مشاورت · ودود"
    assert ur["check"].endswith("/check?lang=ur")
    assert (ar["lang"], ar["dir"]) == ("ar", "rtl")
    assert ar["join"] == "انضم الآن" and ar["mic"] == "الميكروفون يعمل"
    assert ar["who"].startswith("ستنضم باسم Bilal")
    assert (en["lang"], en["dir"]) == ("en", "ltr")
    assert en["join"] == "Join now"


# -- the driver: runs inside the namespace ------------------------------------


EMBEDDER = """<!doctype html><html><head><title>Clinic</title></head><body>
<h1>Example Clinic: before your visit</h1>
<iframe id="check" src="{src}" allow="camera; microphone"
        style="width: 900px; height: 700px; border: 0"></iframe>
<script>
  window.seen = [];
  window.addEventListener('message', (e) => {{
    if (e.data && e.data.type === 'wadud-check') window.seen.push(e.data);
  }});
</script></body></html>"""


# Each line of the check page: its state and the word it shows.
ROWS = """Object.fromEntries([...document.querySelectorAll('#rows li')].map((li) => {
  const status = li.querySelector('.status');
  return [li.dataset.step, [status.dataset.state, status.textContent]];
}))"""


async def verdict(page: Page, base: str, within: float = 40) -> dict[str, Any]:
    """The first ``wadud-check`` message the clinic's page got, with what
    the framed page says and how long it took from now."""
    started = time.monotonic()
    seen = await page.wait_for("window.seen.length && window.seen[0]", "a verdict", within)
    framed = await frame_of(page, f"{base}/check")
    title = await framed.eval("document.getElementById('verdict-title').textContent")
    rows = await framed.eval(ROWS)
    return {**seen, "title": title, "rows": rows, "wall_s": round(time.monotonic() - started, 1)}


def sysctl(name: str, value: str) -> None:
    Path("/proc/sys", *name.split(".")).write_text(value)


def iptables(*rule: str) -> None:
    subprocess.run(["iptables", *rule], check=True)


async def scenario_paths(world: World) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with embedder(EMBEDDER.format(src=f"{world.base}/check?lang=en")) as clinic:
        page = await world.browsers.open("clinic", clinic)
        out["open"] = await verdict(page, world.base)
        world.mark("ready")
        # Every UDP datagram goes but the relay's own, to and from the worker.
        low, high = RELAY_PORTS
        iptables("-A", "INPUT", "-p", "udp", "--sport", f"{low}:{high}", "-j", "ACCEPT")
        iptables("-A", "INPUT", "-p", "udp", "--dport", f"{low}:{high}", "-j", "ACCEPT")
        iptables("-A", "INPUT", "-p", "udp", "-j", "DROP")
        await page.cdp.send("Page.reload")
        out["relay"] = await verdict(page, world.base)
        world.mark("ready-relay")
        iptables("-I", "INPUT", "1", "-p", "tcp", "--dport", str(TURN_PORT), "-j", "DROP")
        await page.cdp.send("Page.reload")
        out["tls"] = await verdict(page, world.base)
        world.mark("ready-relay over tls")
        iptables("-I", "INPUT", "1", "-p", "tcp", "--dport", str(TURNS_PORT), "-j", "DROP")
        await page.cdp.send("Page.reload")
        out["blocked"] = await verdict(page, world.base)
        world.mark("blocked")
    out["timings"] = world.timings
    return out


async def scenario_capped(world: World) -> dict[str, Any]:
    from tests.signalling.weak_paths import CAPPED_PORT, CappedPath, Turn, relay_only

    turn = Turn(world.browsers.work, TURN_PORT, 50000)
    await turn.start()
    path = CappedPath(("127.0.0.1", TURN_PORT), CAPPED_KBPS * 1000 / 8)
    await path.start(CAPPED_PORT)
    try:
        page = await world.browsers.open("patient", "about:blank")
        await page.cdp.send("Page.enable")
        script = relay_only(f"turn:127.0.0.1:{CAPPED_PORT}?transport=udp")
        await page.cdp.send("Page.addScriptToEvaluateOnNewDocument", source=script)
        await page.cdp.send("Page.navigate", url=f"{world.base}/check")
        found = await page.wait_for("window.wadudCheck", "a verdict", 40)
        return {**found, "path_stats": path.stats(), "timings": world.timings}
    finally:
        path.close()
        await turn.stop()


LANG_STATE = """({lang: document.documentElement.lang, dir: document.documentElement.dir,
  title: document.title, join: document.getElementById('join').textContent,
  mic: document.getElementById('pre-mic').textContent,
  who: document.getElementById('who').textContent,
  check: document.getElementById('check-link').href})"""


async def call_page_in(page: Page, link: str, lang: str | None) -> dict[str, Any]:
    url = f"{link}&lang={lang}" if lang else link
    await page.cdp.send("Page.navigate", url=url)
    want = f"'{lang}'" if lang else "'en'"
    await page.wait_for(
        f"document.documentElement.lang === {want} && document.body.dataset.screen === 'prejoin'",
        f"the join screen in {lang}",
    )
    return dict(await page.eval(LANG_STATE))


async def scenario_lang(world: World) -> dict[str, Any]:
    link = world.link("pt-991", "Bilal", "patient")
    page = await world.browsers.open("patient", "about:blank")
    out = {lang or "en": await call_page_in(page, link, lang) for lang in ("ur", "ar", None)}
    out["timings"] = world.timings  # type: ignore[assignment]
    return out


PHONE = (390, 844)
DESKTOP = (1280, 800)


async def shoot(page: Page, path: Path, dims: tuple[int, int]) -> None:
    await page.cdp.send(
        "Emulation.setDeviceMetricsOverride",
        width=dims[0], height=dims[1], deviceScaleFactor=1, mobile=dims == PHONE,
    )  # fmt: skip
    await asyncio.sleep(0.8)
    shot = await page.cdp.send("Page.captureScreenshot", format="png")
    save(path, base64.b64decode(shot["data"]))


def save(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def scenario_shots(world: World) -> dict[str, Any]:
    folder = Path(os.environ.get("WADUD_SCREENSHOTS") or ROOT / "docs" / "img")
    page = await world.browsers.open("patient", "about:blank")
    taken = []
    for lang in ("en", "ur", "ar"):
        for dims, kind in ((PHONE, "phone"), (DESKTOP, "desktop")):
            await page.cdp.send(
                "Emulation.setDeviceMetricsOverride",
                width=dims[0], height=dims[1], deviceScaleFactor=1, mobile=dims == PHONE,
            )  # fmt: skip
            await page.cdp.send("Page.navigate", url=f"{world.base}/check?lang={lang}")
            await page.wait_for("document.body.dataset.verdict", "a verdict", 40)
            name = folder / f"check-{lang}-{kind}.png"
            await shoot(page, name, dims)
            taken.append(name.name)
    link = world.link("pt-991", "Bilal Ahmed", "patient")
    for lang in ("ur", "ar"):
        for dims, kind in ((PHONE, "phone"), (DESKTOP, "desktop")):
            await call_page_in(page, link, lang)
            await page.wait_for(
                "document.getElementById('preview').videoWidth > 0", "the camera preview"
            )
            name = folder / f"call-prejoin-{lang}-{kind}.png"
            await shoot(page, name, dims)
            taken.append(name.name)
    return {"taken": taken}


SCENARIOS: dict[str, Scenario] = {
    "paths": scenario_paths,
    "capped": scenario_capped,
    "lang": scenario_lang,
    "shots": scenario_shots,
}


async def drive(scenario: str, database_url: str, work: Path, budget: float) -> dict[str, Any]:
    from tests.chromium import trust
    from tests.tlsca import make_ca
    from turn.aio import TurnServer
    from turn.config import TurnConfig

    # Our sockets and the relay's allocations never share a port range.
    sysctl("net.ipv4.ip_local_port_range", EPHEMERAL)
    secret = "check-relay-secret"
    ca = make_ca(work / "tls")
    relay = TurnServer(
        TurnConfig.for_loopback(
            secret,
            port=TURN_PORT,
            min_port=RELAY_PORTS[0],
            max_port=RELAY_PORTS[1],
            listen_tls=(("127.0.0.1", TURNS_PORT),),
            tls_cert=str(ca.cert_file),
            tls_key=str(ca.key_file),
        )
    )
    overrides: dict[str, Any] = {"turn_embedded": False}
    if scenario != "capped":  # there coturn has the port
        await relay.start()
        overrides |= {"turn_secrets": [secret], "turn_urls": relay.urls()}
    trust(work / "home", ca.ca_file, ca=True)
    try:
        async with serving(database_url, work, **overrides) as world:
            world.browsers.home = work / "home"
            return await play(SCENARIOS[scenario](world), world.browsers, world.timings, budget)
    finally:
        await relay.close()


if __name__ == "__main__":
    driver_main(__doc__, SCENARIOS, drive, 120)
