from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import re
import signal
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bin.assembly import build_app
from tests.conftest import Api, RedisServer, free_port, served
from wadud.config import Settings
from wadud.web import ops
from wadud.web.api import ENDPOINTS, Role


async def test_health_ready_metrics_openapi(api: Api) -> None:
    assert (await api.get("/healthz", expect=200)) == {"status": "ok"}
    ready = await api.get("/readyz", expect=200)
    assert ready["status"] == "ready" and ready["migrations"]
    # Metrics are on a listener of their own, never the public port.
    await api.get("/metrics", expect=404)
    doc = await api.get("/api/v1/openapi.json", expect=200)
    assert doc["openapi"] == "3.1.0"
    # Every served route is described.
    served = {(ep.method.lower(), ep.doc_path) for ep in api.app[ENDPOINTS]}
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == described
    assert "/api/v1/auth/login" in doc["paths"]


async def test_readiness_answers_on_time_while_redis_is_silent(
    settings: Settings, redis_server: RedisServer
) -> None:
    """A Redis that stops answering without closing its connections (here
    stopped with SIGSTOP, as a cut-off or frozen host looks) makes ``/readyz``
    say 503 with ``bus`` false within its probe time: the PING is not
    waited for until TCP gives up."""
    app = build_app(dataclasses.replace(settings, redis_url=redis_server.url))
    async with served(app) as api:
        assert (await api.get("/readyz", expect=200))["bus"] is True
        pid = redis_server.handle.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            ready = await api.get("/readyz", expect=503)
            took = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        assert ready["status"] == "not ready" and ready["bus"] is False, ready
        assert ready["database"] is True, ready
        assert took < ops.PROBE_SECONDS + 3.0, took
        assert (await api.get("/readyz", expect=200))["bus"] is True


async def test_malformed_requests_get_problem_json(api: Api) -> None:
    c = api.client
    cases = [
        (dict(data=b"{not json", headers={"Content-Type": "application/json"}), 400),
        (dict(data=b"[]", headers={"Content-Type": "application/json"}), 422),
        (dict(data=b'{"display_name": 5}', headers={"Content-Type": "application/json"}), 422),
        (
            dict(
                data=b'{"display_name": "x", "extra": 1}',
                headers={"Content-Type": "application/json"},
            ),
            422,
        ),
        (
            dict(
                data=b"display_name=x",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
            415,
        ),
        (
            dict(
                data=io.BytesIO(b"{" + b" " * 2_000_000 + b"}"),
                headers={"Content-Type": "application/json"},
            ),
            413,
        ),
    ]
    for kw, status in cases:
        resp = await c.post("/api/v1/auth/anonymous", **kw)
        assert resp.status == status, await resp.text()
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        body = await resp.json(content_type=None)
        assert body["status"] == status and body["type"].startswith("https://")
        assert "request_id" in body
    resp = await c.delete("/healthz")
    assert resp.status == 405
    assert (await resp.json(content_type=None))["code"] == "method-not-allowed"
    # Malformed ids never reach SQL.
    resp = await c.get("/api/v1/clinics/not-a-uuid")
    assert resp.status == 404


async def test_request_id_is_kept_or_made(api: Api) -> None:
    resp = await api.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    resp = await api.client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert resp.headers["X-Request-ID"] != "bad id with spaces"


async def test_idempotency_key_replays_first_answer(api: Api) -> None:
    # Sign-in never replays (tests/wadud/web/test_signin_idempotency.py); creating
    # an account as an admin does.
    admin = await api.user(Role.ADMIN)
    auth = {"Authorization": f"Bearer {admin}"}
    body = {"email": "k1@example.test", "password": "password!", "role": "patient"}
    h = {"Idempotency-Key": "k-1"}
    first = await api.post("/api/v1/users", body, token=admin, headers=h, expect=201)
    resp = await api.client.post("/api/v1/users", json=body, headers={**h, **auth})
    assert resp.status == 201 and resp.headers["Idempotent-Replayed"] == "true"
    assert json.loads(await resp.text()) == first
    other = {**body, "email": "k1b@example.test"}
    reused = await api.post("/api/v1/users", other, token=admin, headers=h, expect=422)
    assert reused["code"] == "idempotency-key-reused"
    # Errors (4xx) are answers too, and replayed as such.
    body = {"email": "x@example.test", "password": "password!", "role": "doctor"}
    h2 = {"Idempotency-Key": "k-2"}
    a = await api.post("/api/v1/users", body, token=admin, headers=h2, expect=422)
    b = await api.post("/api/v1/users", body, token=admin, headers=h2, expect=422)
    assert a == b
    # Concurrent duplicates: exactly one runs.
    h3 = {"Idempotency-Key": "k-3", **auth}
    body = {"email": "k3@example.test", "password": "password!", "role": "patient"}
    results = await asyncio.gather(
        *(api.client.post("/api/v1/users", json=body, headers=h3) for _ in range(20))
    )
    statuses = sorted(r.status for r in results)
    users = {(await r.json(content_type=None)).get("id") for r in results if r.status == 201}
    assert len(users) == 1
    assert set(statuses) <= {201, 409}


async def test_nul_characters_are_422_not_500(api: Api) -> None:
    body = await api.post(
        "/api/v1/auth/login", {"email": "a\u0000@b.test", "password": "x\u0000"}, expect=422
    )
    assert body["code"] == "validation-error"


async def test_metrics_only_on_their_own_listener_and_with_the_token(
    settings: Settings,
) -> None:
    """Issue 12, finding 1: /metrics was public. Now the public port answers
    404, and the metrics listener answers 401 without the scrape token."""
    port = free_port()
    app = build_app(
        dataclasses.replace(
            settings, metrics_listen=f"127.0.0.1:{port}", metrics_token="scrape-" + "t" * 24
        )
    )
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        async with client.get("/metrics") as r:
            assert r.status == 404
        url = f"http://127.0.0.1:{port}/metrics"
        async with aiohttp.ClientSession() as s:
            async with s.get(url) as r:
                assert r.status == 401
            async with s.get(url, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            auth = {"Authorization": "Bearer scrape-" + "t" * 24}
            async with s.get(url, headers=auth) as r:
                assert r.status == 200
                text = await r.text()
            async with s.get(f"http://127.0.0.1:{port}/healthz", headers=auth) as r:
                assert r.status == 404  # metrics only
        assert "wadud_http_requests_total" in text and "wadud_db_pool_connections" in text
        assert "wadud_outbox_lag_seconds" in text
        # The loop's own tasks, read on the loop: at least the handler's.
        tasks = re.search(r"^wadud_asyncio_tasks ([0-9.]+)$", text, re.M)
        assert tasks is not None and float(tasks.group(1)) >= 1, text[-1500:]
    finally:
        await client.close()
    # Closed with the app.
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectionError):
            await s.get(f"http://127.0.0.1:{port}/metrics")
