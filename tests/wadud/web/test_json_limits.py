"""Issue 35: JSON nested 100,000 deep (or past the limit) and bodies past
the size limit, sent to every route that takes a body, are each a 4xx problem
document and no error line. The routes come from the app's router, so a
route added later is held to this too; each is called with a token its roles
allow, so the body is read rather than refused at the door. The standalone
EasyPaisa simulator (``wadud easypaisa-sim``) gets the same.

Beside it, the structural half: no module outside :mod:`wadud.jsonin` parses
JSON from a request or a socket itself."""

from __future__ import annotations

import ast
import datetime as dt
import io
import itertools
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from booking.payments.easypaisa.http_simulator import simulator_app
from booking.payments.gateways.easypaisa import from_config
from booking.payments.gateways.easypaisa_sim import SIM_PREFIX
from tests.booking.payments.checkout.test_webhooks import with_card_webhooks
from tests.conftest import Api
from tests.syntax import parse_files
from wadud import signing
from wadud.config import Settings
from wadud.jsonin import MAX_DEPTH
from wadud.state import keys
from wadud.web.api import ENDPOINTS, Role

ROOT = Path(__file__).resolve().parents[3]
CARD_SECRET = "whsec_" + "j" * 24
DEEP = b"[" * 100_000 + b"]" * 100_000
JUST_PAST = b'{"a": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"
INITIATE = SIM_PREFIX + "/easypay-service/rest/v4/initiate-ma-transaction"

# Tried in order for each path parameter until the route's pattern matches.
_CANDIDATES = (
    "sandbox",
    str(uuid.UUID(int=1)),
    "PK",
    "2030-01-07",
    "sbx_limits",
    "EPM203001070000ABCDE",
    "1",
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The card gateway, so a signed webhook reaches its body parser.
    return with_card_webhooks(settings, [CARD_SECRET])


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.WARNING)
    yield caplog
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad][:5]


def _concrete(resource: web.AbstractResource) -> str | None:
    """A path the resource matches, its parameters filled from
    :data:`_CANDIDATES` (None if no filling matches)."""
    info = resource.get_info()
    if "path" in info:
        return str(info["path"])
    formatter, pattern = info["formatter"], info["pattern"]
    names = re.findall(r"{(\w+)}", formatter)
    for values in itertools.product(_CANDIDATES, repeat=len(names)):
        path = str(formatter.format(**dict(zip(names, values, strict=True))))
        if pattern.fullmatch(path):
            return path
    return None


def body_routes(app: web.Application) -> list[tuple[str, str, str]]:
    """(method, path, role to call as: "" for none) of every route that may
    take a body."""
    # Keyed by aiohttp's patterns, as the router has them.
    roles = {(ep.method, ep.path): ep.auth for ep in app[ENDPOINTS]}
    found = []
    for route in app.router.routes():
        if route.method not in ("POST", "PUT", "PATCH") or route.resource is None:
            continue
        path = _concrete(route.resource)
        assert path is not None, f"no parameter filling for {route.resource.canonical}"
        auth = roles.get((route.method, route.resource.canonical), "public")
        role = "" if isinstance(auth, str) else ("admin" if Role.ADMIN in auth else sorted(auth)[0])
        found.append((route.method, path, role))
    return found


def _assert_problem(status: int, ctype: str, text: str, what: str) -> None:
    assert 400 <= status < 500, f"{what}: {status} {text[:300]}"
    assert ctype == "application/problem+json", f"{what}: {ctype} {text[:300]}"


async def test_every_body_route_refuses_deep_and_oversized_json(
    api: Api, settings: Settings, errors: pytest.LogCaptureFixture
) -> None:
    routes = body_routes(api.app)
    assert len(routes) > 60 and ("POST", INITIATE, "") in routes
    tokens = {"": None}
    for role in {r for _, _, r in routes} - {""}:
        tokens[role] = await api.user(Role(role))
    big = b'{"a": "' + b"x" * settings.max_body_bytes + b'"}'
    for (method, path, role), (name, body) in itertools.product(
        routes, [("deep", DEEP), ("just past the limit", JUST_PAST), ("oversized", big)]
    ):
        headers = {"Content-Type": "application/json"}
        if tokens[role]:
            headers["Authorization"] = f"Bearer {tokens[role]}"
        resp = await api.client.request(method, path, data=io.BytesIO(body), headers=headers)
        what = f"{method} {path} as {role or 'nobody'}, {name}"
        _assert_problem(resp.status, resp.content_type, await resp.text(), what)
    # The simulator's route of the finding, by code.
    for body, status, code in ((DEEP, 400, "json-too-deep"), (big, 413, "payload-too-large")):
        resp = await api.client.post(
            INITIATE, data=io.BytesIO(body), headers={"Content-Type": "x/y"}
        )
        assert (resp.status, (await resp.json())["code"]) == (status, code)
    # Everyone else is still served.
    assert (await api.client.get("/healthz")).status == 200


async def test_a_signed_webhook_nested_too_deep_is_a_malformed_payload(
    api: Api, errors: pytest.LogCaptureFixture
) -> None:
    """Past the signature check, which a fuzzer's request never gets."""
    stamp = int(dt.datetime.now(dt.UTC).timestamp())
    for body in (DEEP, JUST_PAST):
        headers = {
            "Content-Type": "application/json",
            "Wadud-Signature": signing.sign(body, CARD_SECRET, stamp),
        }
        resp = await api.client.post("/api/v1/webhooks/card", data=body, headers=headers)
        problem = await resp.json()
        assert (resp.status, problem["code"]) == (400, "malformed_payload"), problem
        assert "deep" in problem["detail"]


async def test_the_standalone_simulator_refuses_them_too(
    api: Api, errors: pytest.LogCaptureFixture
) -> None:
    store = from_config(api.app[keys.SETTINGS])
    assert store is not None
    sim = simulator_app(store, "http://127.0.0.1:9", "http://127.0.0.1:9/ipn")
    client: TestClient[Any, Any] = TestClient(TestServer(sim))
    await client.start_server()
    try:
        for body, status, code in (
            (DEEP, 400, "json-too-deep"),
            (b'{"a": "' + b"x" * 2_000_000 + b'"}', 413, "payload-too-large"),
        ):
            resp = await client.post(INITIATE, data=io.BytesIO(body))
            problem = await resp.json()
            assert (resp.status, problem["code"]) == (status, code)
            assert resp.content_type == "application/problem+json"
    finally:
        await client.close()


# Calls that parse JSON, and the modules allowed to make them on outside
# input: wadud.jsonin itself, and readers of what we wrote ourselves (Redis,
# our own tables, files we saved, cursors we signed, the client library's
# view of our own server).
_PARSERS = {"loads", "json", "model_validate_json", "validate_json", "from_json"}
_TRUSTED = {
    "wadud/jsonin.py",
    "wadud/messaging/bus.py",
    "wadud/web/cursor.py",
    "wadud/state/db.py",
    "booking/call_reports/privacy.py",
    "booking/call_reports/storage.py",
    "booking/payments/payouts/details.py",
    "privacy/http.py",
    "privacy/rights.py",
    "rtc/rtpdump.py",
    "signalling/cluster/link.py",
    "notify/channels.py",
    "wadud_client/socket.py",
    # The load tester: our server's answer to a token request, and the
    # --json files of its own runs that `wadud load merge` joins.
    "wadud_client/load/run.py",
    "wadud_client/load/cli.py",
}
_PACKAGES = (
    "wadud bin booking turn chat rtc sfu signalling privacy notify hooks recording sip wadud_client"
)


def test_no_module_but_jsonin_parses_outside_json() -> None:
    paths = [
        path
        for package in _PACKAGES.split()
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.relative_to(ROOT).as_posix() not in _TRUSTED
    ]
    found = []
    for path, tree in zip(paths, parse_files(paths), strict=True):
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _PARSERS
                and not (isinstance(node.func.value, ast.Name) and node.func.value.id == "jsonin")
            ):
                rel = path.relative_to(ROOT).as_posix()
                found.append(f"{rel}:{node.lineno} .{node.func.attr}()")
    assert not found, "parse outside JSON with wadud.jsonin:\n" + "\n".join(found)
