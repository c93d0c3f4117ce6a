"""The call page, its assets and the demo room, over plain HTTP against the
app with a real PostgreSQL (the browser tests drive the same pages in
Chromium: tests/signalling/test_browser_call.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from bin.assembly import build_app
from signalling.edge.pages import STATIC
from tests.conftest import Api, served
from wadud.config import Settings
from wadud.state import keys
from wadud.web.auth import decode_room_token

PAGES = ("call.html", "demo.html", "check.html")


@pytest.fixture
async def demo_api(settings: Settings) -> AsyncIterator[Api]:
    app = build_app(dataclasses.replace(settings, call_demo=True))
    async with served(app) as api:
        yield api


def _directives(csp: str) -> dict[str, str]:
    out = {}
    for part in csp.split(";"):
        name, _, value = part.strip().partition(" ")
        out[name] = value
    return out


async def test_call_page_can_be_framed_and_use_devices(api: Api) -> None:
    resp = await api.client.get("/call/clinic-room-7?token=abc.def.ghi")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    body = await resp.text()
    assert '<script type="module" src="/static/call/call.js">' in body
    csp = _directives(resp.headers["Content-Security-Policy"])
    assert csp["frame-ancestors"] == "*"
    assert csp["script-src"] == "'self'"
    assert csp["default-src"] == "'none'"
    host = resp.url.host
    assert f"ws://{host}:{resp.url.port}" in csp["connect-src"]
    assert resp.headers["Permissions-Policy"] == "camera=*, microphone=*, display-capture=*"
    assert "X-Frame-Options" not in resp.headers
    # The URL carries a credential: no Referer, no stored copy.
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/call/", "/call/a/b", "/call/" + "r" * 129])
async def test_call_page_needs_one_room_segment(api: Api, path: str) -> None:
    resp = await api.client.get(path)
    assert resp.status == 404


@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("wadud-call.js", "text/javascript; charset=utf-8"),
        ("consult-chat.js", "text/javascript; charset=utf-8"),
        ("call.js", "text/javascript; charset=utf-8"),
        ("demo.js", "text/javascript; charset=utf-8"),
        ("call.css", "text/css; charset=utf-8"),
        ("check.js", "text/javascript; charset=utf-8"),
        ("wadud-check.js", "text/javascript; charset=utf-8"),
        ("i18n.js", "text/javascript; charset=utf-8"),
        ("check.css", "text/css; charset=utf-8"),
        ("i18n.css", "text/css; charset=utf-8"),
    ],
)
async def test_assets_have_types_and_revalidate(api: Api, name: str, ctype: str) -> None:
    resp = await api.client.get(f"/static/call/{name}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == ctype
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert await resp.read() == (STATIC / name).read_bytes()
    etag = resp.headers["ETag"]
    again = await api.client.get(f"/static/call/{name}", headers={"If-None-Match": etag})
    assert again.status == 304


@pytest.mark.parametrize(
    "name",
    ["call.html", "demo.html", "nope.js", "..%2Fpages.py", "%2e%2e%2fpages.py", ".hidden.js"],
)
async def test_only_assets_are_served(api: Api, name: str) -> None:
    resp = await api.client.get(f"/static/call/{name}")
    assert resp.status == 404
    assert "def install" not in await resp.text()


async def test_every_asset_a_page_or_module_names_is_served(api: Api) -> None:
    """A typo in a src, href or import would break the page in the browser
    only; catch it here."""
    wanted: set[str] = set()
    for page in PAGES:
        html = (STATIC / page).read_text()
        wanted |= set(re.findall(r'(?:src|href)="/static/call/([^"]+)"', html))
    for script in STATIC.glob("*.js"):
        wanted |= set(re.findall(r"from '\./([^']+)'", script.read_text()))
    assert {"call.js", "call.css", "demo.js", "wadud-call.js", "consult-chat.js"} <= wanted
    assert {"check.js", "check.css", "i18n.js", "i18n.css", "wadud-check.js"} <= wanted
    for name in sorted(wanted):
        resp = await api.client.get(f"/static/call/{name}")
        assert resp.status == 200, name


async def test_demo_is_off_unless_configured(api: Api) -> None:
    assert (await api.client.get("/demo")).status == 404
    resp = await api.client.post("/api/v1/calls/demo")
    assert resp.status == 404
    assert (await resp.json())["code"] == "not-found"
    assert "/demo" not in await api.get("/")


async def test_demo_page(demo_api: Api) -> None:
    resp = await demo_api.client.get("/demo")
    assert resp.status == 200
    assert '<script type="module" src="/static/call/demo.js">' in await resp.text()
    # It hands out admin links: not for framing.
    assert _directives(resp.headers["Content-Security-Policy"])["frame-ancestors"] == "'none'"
    assert 'href="/demo"' in await demo_api.get("/")


async def test_demo_room_links_hold_room_tokens(demo_api: Api) -> None:
    before = dt.datetime.now(dt.UTC)
    body = await demo_api.post("/api/v1/calls/demo", expect=200)
    assert set(body) == {"room", "doctor_url", "patient_url"}
    room = body["room"]
    assert re.fullmatch(r"demo-[0-9a-f]{10}", room)
    settings = demo_api.app[keys.SETTINGS]
    origin = f"http://{demo_api.client.host}:{demo_api.client.port}"
    grants = {}
    for who in ("doctor", "patient"):
        url = urlsplit(body[f"{who}_url"])
        assert f"{url.scheme}://{url.netloc}" == origin
        assert url.path == f"/call/{room}"
        (token,) = parse_qs(url.query)["token"]
        grants[who] = decode_room_token(settings, token)
        assert grants[who].room == room
        assert grants[who].role == who
        assert grants[who].publish and grants[who].subscribe
        claims = jwt.decode(token, options={"verify_signature": False})
        expires = dt.datetime.fromtimestamp(claims["exp"], dt.UTC)
        assert dt.timedelta(hours=2) - dt.timedelta(seconds=5) <= expires - before
        assert expires - before <= dt.timedelta(hours=2, seconds=5)
        assert claims["nbf"] < before.timestamp()
    assert grants["doctor"].admin
    assert not grants["patient"].admin
    assert grants["doctor"].identity != grants["patient"].identity
    # Each press makes a new room.
    other = await demo_api.post("/api/v1/calls/demo", expect=200)
    assert other["room"] != room


async def test_demo_links_use_the_public_url(settings: Settings) -> None:
    app = build_app(
        dataclasses.replace(settings, call_demo=True, public_url="https://video.clinic.example/")
    )
    async with served(app) as api:
        resp = await api.client.post("/api/v1/calls/demo")
        body = await resp.json()
    assert body["doctor_url"].startswith(f"https://video.clinic.example/call/{body['room']}?token=")


async def test_demo_endpoint_is_in_the_openapi_document(api: Api) -> None:
    doc = await api.get("/api/v1/openapi.json", expect=200)
    op = doc["paths"]["/api/v1/calls/demo"]["post"]
    assert op["tags"] == ["calls"]
    assert "security" not in op
    schema = doc["components"]["schemas"]["DemoRoom"]
    assert set(schema["required"]) == {"room", "doctor_url", "patient_url"}
    chat = doc["paths"]["/api/v1/calls/chat"]["post"]
    assert chat["tags"] == ["calls"] and "security" not in chat
    assert {"401", "404", "410"} <= set(chat["responses"])
    # The HTML pages are not part of the JSON API.
    assert not any(p.startswith(("/call", "/static", "/demo")) for p in doc["paths"])
