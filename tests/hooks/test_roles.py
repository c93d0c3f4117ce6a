"""Which roles deliver webhooks: ``wadud serve`` and every ``wadud api``
replica (they share the work), so an api deployment needs no other process;
``webhooks_deliver = false`` leaves it to ``wadud hooks``."""

from __future__ import annotations

import dataclasses

import hooks.http
from bin import assembly
from tests.conftest import Api, served_with_worker
from wadud.config import Settings


def test_serve_and_api_both_serve_the_routes_and_deliver() -> None:
    for role in ("serve", "api"):
        installed = assembly.installers(role)  # type: ignore[arg-type]
        assert hooks.http.install in installed
        assert hooks.http.install_worker in installed


async def test_webhooks_deliver_off_runs_no_deliverer(settings: Settings) -> None:
    for deliver in (True, False):
        with_deliver = dataclasses.replace(settings, webhooks_deliver=deliver)
        async with served_with_worker(with_deliver, hooks.http.install_worker) as app:
            assert (hooks.http.DELIVERER in app) is deliver


async def test_the_routes_are_in_the_openapi_document(api: Api) -> None:
    doc = await api.get("/api/v1/openapi.json", expect=200)
    paths = doc["paths"]
    base = "/api/v1/clinics/{clinic_id}/webhooks"
    assert set(paths[base]) == {"get", "post"}
    assert set(paths[base + "/{endpoint_id}"]) == {"get", "patch", "delete"}
    assert "post" in paths[base + "/{endpoint_id}/secret"]
    assert "get" in paths[base + "/{endpoint_id}/deliveries"]
    assert "post" in paths[base + "/{endpoint_id}/deliveries/{delivery_id}/redeliver"]
