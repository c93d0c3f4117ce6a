"""Card gateway: Stripe-style signed webhooks and the hosted-checkout API.

Signature vectors are computed here from the published recipe (signed payload
``f"{t}.{raw_body}"``, HMAC-SHA256, lowercase hex); the API runs against a
small Stripe-shaped aiohttp server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from booking.payments.errors import (
    GatewayError,
    InvalidSignature,
    MalformedPayload,
    StaleWebhook,
)
from booking.payments.gateway import (
    PaymentStatus,
    verify_webhook,
)
from booking.payments.gateways.card import CardGateway, CardSettings
from booking.payments.gateways.registry import PaymentSettings, gateways
from booking.payments.intent import Currency, IntentEvent, Money, PaymentIntent
from tests.booking.payments.gateways.provider import provider_at
from wadud import signing

NOW = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
T = int(NOW.timestamp())
OLD, NEW = "whsec_old", "whsec_new"
API_KEY = "sk_test_123"


def v1(secret: str, t: int, body: bytes) -> str:
    """The recipe by hand: HMAC-SHA256(secret, "<t>." + body), lowercase hex."""
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def event_body(kind: str = "checkout.session.completed", **obj: Any) -> bytes:
    session = {
        "id": "cs_test_1",
        "object": "checkout.session",
        "status": "complete",
        "payment_status": "paid",
        "amount_total": 9_900,
        "currency": "sar",
    }
    session.update(obj)
    event = {"id": "evt_1", "type": kind, "created": T, "data": {"object": session}}
    return json.dumps(event).encode()


def card_settings(api_base: str = "http://127.0.0.1:9", **overrides: Any) -> CardSettings:
    values: dict[str, Any] = {
        "api_base": api_base,
        "api_key": API_KEY,
        "webhook_secrets": (NEW,),
    }
    values.update(overrides)
    return CardSettings(**values)


# --- signature --------------------------------------------------------------


def test_sign_matches_recipe() -> None:
    body = b'{"id":"evt_1"}'
    header = signing.sign(body, [OLD, NEW], T)
    assert header == f"t={T},v1={v1(OLD, T, body)},v1={v1(NEW, T, body)}"


def test_verify_accepts_recipe_vectors() -> None:
    body = event_body()
    header = f"t={T},v1={v1(NEW, T, body)}"
    assert verify_webhook(body, {"Wadud-Signature": header}, [NEW], NOW) == T
    # Stripe's header name, any case, extra schemes and spaces.
    loose = f"t={T}, v0=deadbeef, v1={v1(NEW, T, body)}"
    assert verify_webhook(body, {"stripe-signature": loose}, [NEW], NOW) == T


def test_rotation() -> None:
    body = event_body()
    # Sender signs with both during a rotation; we only know the new one.
    both = f"t={T},v1={v1(OLD, T, body)},v1={v1(NEW, T, body)}"
    verify_webhook(body, {"Wadud-Signature": both}, [NEW], NOW)
    # Sender still on the old one; we accept both.
    old_only = f"t={T},v1={v1(OLD, T, body)}"
    verify_webhook(body, {"Wadud-Signature": old_only}, [NEW, OLD], NOW)
    with pytest.raises(InvalidSignature):
        verify_webhook(body, {"Wadud-Signature": old_only}, [NEW], NOW)


def test_tolerance_both_ways() -> None:
    body = event_body()
    header = {"Wadud-Signature": f"t={T},v1={v1(NEW, T, body)}"}
    verify_webhook(body, header, [NEW], NOW + timedelta(seconds=300))
    verify_webhook(body, header, [NEW], NOW - timedelta(seconds=300))
    for skew in (301, -301):
        with pytest.raises(StaleWebhook) as info:
            verify_webhook(body, header, [NEW], NOW + timedelta(seconds=skew))
        assert info.value.http_status == 400
        assert isinstance(info.value, InvalidSignature)
    verify_webhook(body, header, [NEW], NOW + timedelta(seconds=900), timedelta(seconds=900))


def test_signature_checked_before_timestamp() -> None:
    body = event_body()
    forged = {"Wadud-Signature": f"t={T},v1={'0' * 64}"}
    with pytest.raises(InvalidSignature) as info:
        verify_webhook(body, forged, [NEW], NOW + timedelta(days=1))
    assert not isinstance(info.value, StaleWebhook)


def test_v0_alone_is_not_enough() -> None:
    body = event_body()
    with pytest.raises(InvalidSignature, match="no v1"):
        verify_webhook(body, {"Wadud-Signature": f"t={T},v0={v1(NEW, T, body)}"}, [NEW], NOW)


@given(st.binary(max_size=200), st.integers(0, 2**33), st.text(min_size=1, max_size=20))
def test_round_trip_and_tamper(body: bytes, t: int, secret: str) -> None:
    now = datetime.fromtimestamp(t, UTC)
    header = {"Wadud-Signature": signing.sign(body, secret, t)}
    assert verify_webhook(body, header, [secret], now) == t
    with pytest.raises(InvalidSignature):
        verify_webhook(body + b"x", header, [secret], now)
    with pytest.raises(InvalidSignature):
        verify_webhook(body, header, [secret + "x"], now)


@given(st.text(max_size=80))
def test_any_header_text_fails_cleanly(header: str) -> None:
    """Garbage never escapes as anything but InvalidSignature (no TypeError, no 500)."""
    with pytest.raises(InvalidSignature):
        verify_webhook(b"{}", {"Wadud-Signature": header}, [NEW], NOW)


# --- webhook parsing --------------------------------------------------------


async def parse(body: bytes, now: datetime = NOW) -> Any:
    async with aiohttp.ClientSession() as http:
        gw = CardGateway(card_settings(), http)
        headers = {"Wadud-Signature": f"t={T},v1={v1(NEW, T, body)}"}
        return await gw.parse_webhook(body, headers, now)


async def test_parse_completed_paid() -> None:
    event = await parse(event_body())
    assert (event.event_id, event.reference) == ("evt_1", "cs_test_1")
    assert event.status is PaymentStatus.SUCCEEDED
    assert event.event is IntentEvent.VERIFIED_SUCCESS
    assert event.amount == Money(9_900, Currency.SAR)
    assert event.created_at == NOW


@pytest.mark.parametrize(
    ("kind", "obj", "status"),
    [
        ("checkout.session.completed", {"payment_status": "unpaid"}, PaymentStatus.PENDING),
        ("checkout.session.async_payment_succeeded", {}, PaymentStatus.SUCCEEDED),
        ("checkout.session.async_payment_failed", {}, PaymentStatus.FAILED),
        (
            "checkout.session.expired",
            {"status": "expired", "payment_status": "unpaid"},
            PaymentStatus.FAILED,
        ),
        ("charge.refunded", {"object": "charge", "id": "ch_1"}, None),
    ],
)
async def test_parse_event_types(
    kind: str, obj: dict[str, Any], status: PaymentStatus | None
) -> None:
    event = await parse(event_body(kind, **obj))
    assert event.status is status
    if obj.get("object") == "charge":
        assert event.reference is None
        assert event.amount is None


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"id": "evt_1", "type": "x"}).encode(),
        json.dumps({"id": 5, "type": "x", "data": {"object": {}}}).encode(),
        event_body(currency="usd"),
        event_body(amount_total="99"),
    ],
)
async def test_signed_but_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        await parse(body)


# --- the API against a local Stripe-shaped server ---------------------------


@dataclass
class FakeCardApi:
    base: str = ""
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_key: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunded: dict[str, int] = field(default_factory=dict)
    created: list[dict[str, str]] = field(default_factory=list)
    refund_keys: list[str | None] = field(default_factory=list)

    def authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {API_KEY}"

    @staticmethod
    def error(status: int, code: str) -> web.Response:
        return web.json_response({"error": {"code": code, "message": code}}, status=status)

    async def create(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return self.error(401, "unauthorized")
        key = request.headers.get("Idempotency-Key")
        if key in self.by_key:
            return web.json_response(self.by_key[key])
        form = dict(await request.post())
        self.created.append({k: str(v) for k, v in form.items()})
        sid = f"cs_test_{len(self.sessions) + 1}"
        session = {
            "id": sid,
            "object": "checkout.session",
            "url": f"{self.base}/pay/{sid}",
            "status": "open",
            "payment_status": "unpaid",
            "amount_total": int(str(form["amount"])),
            "currency": str(form["currency"]),
            "payment_intent": None,
        }
        self.sessions[sid] = session
        if key is not None:
            self.by_key[key] = session
        return web.json_response(session)

    async def get(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return self.error(401, "unauthorized")
        session = self.sessions.get(request.match_info["sid"])
        if session is None:
            return self.error(404, "resource_missing")
        return web.json_response(session)

    async def refund(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return self.error(401, "unauthorized")
        self.refund_keys.append(request.headers.get("Idempotency-Key"))
        form = await request.post()
        pi, amount = str(form["payment_intent"]), int(str(form["amount"]))
        total = next(s["amount_total"] for s in self.sessions.values() if s["payment_intent"] == pi)
        if self.refunded.get(pi, 0) + amount > total:
            return self.error(400, "amount_too_large")
        self.refunded[pi] = self.refunded.get(pi, 0) + amount
        return web.json_response({"id": f"re_{len(self.refund_keys)}", "status": "succeeded"})

    def pay(self, sid: str) -> None:
        self.sessions[sid].update(
            status="complete", payment_status="paid", payment_intent=f"pi_{sid}"
        )


@dataclass
class Harness:
    api: FakeCardApi
    gateway: CardGateway


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    api = FakeCardApi()
    routes = [
        web.post("/v1/checkout/sessions", api.create),
        web.get("/v1/checkout/sessions/{sid}", api.get),
        web.post("/v1/refunds", api.refund),
    ]
    async with provider_at(routes) as (base, http):
        api.base = base
        yield Harness(api, CardGateway(card_settings(api.base), http))


def make_intent() -> PaymentIntent:
    return PaymentIntent(
        id="pi_w_1",
        amount=Money(9_900, Currency.SAR),
        description="Follow-up",
        return_url="https://api.example/pay/card/return?booking=5",
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=30),
    )


async def test_checkout_flow(harness: Harness) -> None:
    gw, api = harness.gateway, harness.api
    session = await gw.create(make_intent())
    assert session.method == "GET"
    assert session.url == f"{api.base}/pay/{session.reference}"
    sent = api.created[0]
    assert (sent["amount"], sent["currency"]) == ("9900", "sar")
    assert sent["success_url"] == (
        "https://api.example/pay/card/return?booking=5&session_id={CHECKOUT_SESSION_ID}"
    )
    assert sent["expires_at"] == str(T + 1800)
    # Same intent twice: the idempotency key gives back the same session.
    assert (await gw.create(make_intent())).reference == session.reference

    # The redirect back only names the session; the API decides.
    back = {"booking": "5", "session_id": session.reference}
    pending = await gw.verify_callback(back, {}, NOW)
    assert pending.status is PaymentStatus.PENDING
    assert pending.event is None
    api.pay(session.reference)
    paid = await gw.verify_callback(back, {}, NOW)
    assert paid.status is PaymentStatus.SUCCEEDED
    paid.check_amount(Money(9_900, Currency.SAR))

    with pytest.raises(MalformedPayload):
        await gw.verify_callback({"session_id": "{CHECKOUT_SESSION_ID}"}, {}, NOW)
    with pytest.raises(GatewayError, match="resource_missing"):
        await gw.verify_callback({"session_id": "cs_forged"}, {}, NOW)


async def test_refunds(harness: Harness) -> None:
    gw, api = harness.gateway, harness.api
    session = await gw.create(make_intent())
    early = await gw.refund(session.reference, Money(100, Currency.SAR))
    assert (early.succeeded, early.gateway_code) == (False, "not_captured")
    api.pay(session.reference)
    ok = await gw.refund(session.reference, Money(4_000, Currency.SAR), idempotency_key="rf_1")
    assert ok.succeeded
    assert ok.refund_id == "re_1"
    assert api.refund_keys == ["rf_1"]
    refused = await gw.refund(session.reference, Money(6_000, Currency.SAR))
    assert (refused.succeeded, refused.gateway_code) == (False, "amount_too_large")


async def test_api_failures(harness: Harness) -> None:
    http = harness.gateway._session
    wrong_key = CardGateway(card_settings(harness.api.base, api_key="sk_wrong"), http)
    with pytest.raises(GatewayError, match="401"):
        await wrong_key.create(make_intent())
    nowhere = CardGateway(card_settings(f"{harness.api.base}/nothing-here"), http)
    with pytest.raises(GatewayError):
        await nowhere.inquire("cs_1")


async def test_registry_builds_card_and_sandbox(harness: Harness) -> None:
    from booking.payments.gateways.sandbox import SandboxSettings

    registry = gateways(
        PaymentSettings(
            sandbox=SandboxSettings(secret="s", base_url="http://x"),
            card=card_settings(harness.api.base),
        ),
        harness.gateway._session,
    )
    assert registry.names() == ["card", "sandbox"]


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        card_settings(webhook_secrets=())
    with pytest.raises(ValueError, match="webhook secret"):
        card_settings(webhook_secrets=("",))
    with pytest.raises(ValueError, match="api_key"):
        card_settings(api_key="")
