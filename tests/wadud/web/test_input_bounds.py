"""Issue 12, finding 8: inputs that gave a 500 with a traceback.

Each request below is what the review sent: extreme timestamps in
``/bookings`` ``from``/``to``, page cursors crafted by hand for bookings,
search (next-free and price orders, a 2**70 price) and reviews, and a payment
webhook signature header whose timestamp has 5,000 digits. Every one must be
answered with a 4xx problem document, and the server must log no unhandled
error.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from typing import Any

import pytest

from tests.booking.factories import make_clinic, make_doctor
from tests.booking.payments.checkout.test_webhooks import with_card_webhooks
from tests.conftest import Api
from wadud.config import Settings
from wadud.web.api import Role


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The card gateway, so its webhook verifier is reachable.
    return with_card_webhooks(settings, ["whsec_" + "s" * 24])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _json_cursor(*parts: Any) -> str:
    # The format search and reviews used to hand out: base64 of a JSON list.
    return _b64(json.dumps(parts).encode())


def _is_4xx(status: int, body: str, what: str) -> None:
    assert 400 <= status < 500, f"{what}: {status} {body[:500]}"


@pytest.fixture
def unhandled(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR, logger="wadud.http")
    return caplog


async def _status(api: Api, method: str, path: str, **kw: Any) -> tuple[int, str]:
    resp = await api.client.request(method, path, **kw)
    return resp.status, await resp.text()


async def test_extreme_timestamps_in_booking_range_are_4xx(
    api: Api, unhandled: pytest.LogCaptureFixture
) -> None:
    token = await api.user(Role.ADMIN)
    auth = {"Authorization": f"Bearer {token}"}
    for name in ("from", "to"):
        for value in (
            "0001-01-01T00:00:00+05:00",
            "0001-01-01T00:00:00-05:00",
            "9999-12-31T23:59:59-14:00",
            "9999-12-31T23:59:59+14:00",
        ):
            status, body = await _status(
                api, "GET", "/api/v1/bookings", params={name: value}, headers=auth
            )
            _is_4xx(status, body, f"{name}={value}")
    assert not [r for r in unhandled.records if "unhandled" in r.getMessage()]


async def test_crafted_cursors_are_4xx(api: Api, unhandled: pytest.LogCaptureFixture) -> None:
    token = await api.user(Role.ADMIN)
    auth = {"Authorization": f"Bearer {token}"}
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic)
    some_id = str(uuid.uuid4())
    cases: list[tuple[str, dict[str, str]]] = [
        # Bookings: "<starts_at>|<id>", base64.
        (
            "/api/v1/bookings",
            {"cursor": _b64(f"0001-01-01T00:00:00+05:00|{some_id}".encode())},
        ),
        (
            "/api/v1/bookings",
            {"cursor": _b64(f"9999-12-31T23:59:59-14:00|{some_id}".encode())},
        ),
        # Search, next-free order: a timestamp the database cannot hold.
        (
            "/api/v1/doctors",
            {
                "sort": "next_free",
                "cursor": _json_cursor("next_free", "0001-01-01T00:00+05:00", some_id),
            },
        ),
        (
            "/api/v1/doctors",
            {"sort": "next_free", "cursor": _json_cursor("next_free", "2030-01-01T00:00", some_id)},
        ),
        # Search, price order: 2**70 does not fit a bigint.
        ("/api/v1/doctors", {"sort": "price", "cursor": _json_cursor("price", 2**70, some_id)}),
        ("/api/v1/doctors", {"sort": "rating", "cursor": _json_cursor("rating", 1e308, some_id)}),
        # Reviews: (created_at, id).
        (
            f"/api/v1/doctors/{doctor.id}/reviews",
            {"cursor": _json_cursor("0001-01-01T00:00:00+14:00", some_id)},
        ),
        (
            f"/api/v1/doctors/{doctor.id}/reviews",
            {"cursor": _json_cursor("9999-12-31T23:59:59-14:00", some_id)},
        ),
    ]
    for path, params in cases:
        status, body = await _status(api, "GET", path, params=params, headers=auth)
        _is_4xx(status, body, f"{path} {params}")
    assert not [r for r in unhandled.records if "unhandled" in r.getMessage()]


async def test_cursors_still_page(api: Api) -> None:
    """The cursors the API hands out keep working after the change."""
    clinic = await make_clinic(api)
    for fee in (100_000, 200_000, 300_000):
        await make_doctor(api, clinic, fee_minor=fee)
    for sort in ("price", "next_free", "rating"):
        seen: list[str] = []
        params: dict[str, str] = {"sort": sort, "limit": "1"}
        for _ in range(10):
            page = await api.get("/api/v1/doctors", params=params, expect=200)
            seen += [d["id"] for d in page["items"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        assert len(seen) == len(set(seen)) == 3, sort
        # A cursor of one order is refused by another.
        if sort == "price":
            first = await api.get("/api/v1/doctors", params={"sort": "price", "limit": "1"})
            other = await api.client.get(
                "/api/v1/doctors", params={"sort": "rating", "cursor": first["next_cursor"]}
            )
            assert 400 <= other.status < 500


async def test_webhook_signature_with_a_huge_timestamp_is_4xx(
    api: Api, unhandled: pytest.LogCaptureFixture
) -> None:
    body = b'{"id": "evt_1", "type": "payment_intent.succeeded"}'
    for header in (
        "t=" + "9" * 5000 + ",v1=" + "0" * 64,
        "t=" + "1" * 20 + ",v1=" + "0" * 64,
    ):
        status, text = await _status(
            api,
            "POST",
            "/api/v1/webhooks/card",
            data=body,
            headers={"Content-Type": "application/json", "Wadud-Signature": header},
        )
        _is_4xx(status, text, header[:40])
    assert not [r for r in unhandled.records if "unhandled" in r.getMessage()]
