"""The built-in sandbox gateway and the shared webhook signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from booking.payments.errors import (
    AmountMismatch,
    InvalidSignature,
    MalformedPayload,
    RefundExceedsCapture,
    StaleWebhook,
    UnknownGateway,
    UnknownReference,
)
from booking.payments.gateway import (
    Gateway,
    PaymentStatus,
    verify_webhook,
)
from booking.payments.gateways.card import CardSettings
from booking.payments.gateways.registry import PaymentSettings, gateways
from booking.payments.gateways.sandbox import (
    SandboxGateway,
    SandboxPayment,
    SandboxSettings,
    canonical_string,
    sign_fields,
    verify_fields,
)
from booking.payments.intent import Currency, IntentEvent, Money, PaymentIntent
from wadud import signing

NOW = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
SECRET = "sbx-secret"
SETTINGS = SandboxSettings(secret=SECRET, base_url="http://127.0.0.1:8080/")


def make_intent(amount: int = 250_000) -> PaymentIntent:
    return PaymentIntent(
        id="pi_7",
        amount=Money(amount, Currency.AED),
        description="video consult",
        return_url="http://127.0.0.1:8080/pay/return?booking=9",
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=20),
    )


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def test_canonical_string_by_hand() -> None:
    fields = {
        "sbx_status": "succeeded",
        "sbx_amount": "100",
        "sbx_code": "a&b=c",
        "booking": "9",  # not ours: neither signed nor read
        "sbx_signature": "ignored",
    }
    expected = "sbx_amount=100&sbx_code=a%26b%3Dc&sbx_status=succeeded"
    assert canonical_string(fields) == expected
    want = hmac.new(SECRET.encode(), expected.encode(), hashlib.sha256).hexdigest()
    assert sign_fields(fields, SECRET) == want


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=6))
def test_boundaries_cannot_shift(extra: dict[str, str]) -> None:
    """Moving text between a name and a value, or between fields, changes the string."""
    fields = {"sbx_" + k: v for k, v in extra.items()}
    shifted = {("sbx_" + k + "&" + v): "" for k, v in extra.items()}
    if fields:
        assert canonical_string(fields) != canonical_string(shifted)


async def test_full_flow_success() -> None:
    gw = SandboxGateway(SETTINGS)
    session = await gw.create(make_intent())
    assert session.method == "GET"
    assert session.url == f"http://127.0.0.1:8080/sandbox/checkout/{session.reference}"
    assert gw.checkout(session.reference).amount == Money(250_000, Currency.AED)
    assert (await gw.inquire(session.reference)).status is PaymentStatus.PENDING

    redirect = gw.complete(session.reference, paid=True, now=NOW + timedelta(minutes=2))
    assert redirect.startswith("http://127.0.0.1:8080/pay/return?booking=9&")
    params = query(redirect)
    result = await gw.verify_callback(params, {}, NOW + timedelta(minutes=2, seconds=3))
    assert result.status is PaymentStatus.SUCCEEDED
    assert result.event is IntentEvent.VERIFIED_SUCCESS
    assert result.reference == session.reference
    result.check_amount(Money(250_000, Currency.AED))
    assert (await gw.inquire(session.reference)).status is PaymentStatus.SUCCEEDED

    # Reloading the page re-signs the same outcome, it never flips it.
    again = query(gw.complete(session.reference, paid=False, now=NOW + timedelta(minutes=3)))
    assert again["sbx_status"] == "succeeded"


async def test_declined_and_expired() -> None:
    gw = SandboxGateway(SETTINGS)
    declined = await gw.create(make_intent())
    params = query(gw.complete(declined.reference, paid=False, now=NOW))
    result = await gw.verify_callback(params, {}, NOW)
    assert (result.status, result.gateway_code) == (PaymentStatus.FAILED, "declined")
    assert result.event is IntentEvent.VERIFIED_FAILURE

    late = await gw.create(make_intent())
    when = NOW + timedelta(minutes=21)
    params = query(gw.complete(late.reference, paid=True, now=when))
    result = await gw.verify_callback(params, {}, when)
    assert (result.status, result.gateway_code) == (PaymentStatus.FAILED, "expired")


async def test_tampered_stale_and_unsigned_callbacks() -> None:
    gw = SandboxGateway(SETTINGS)
    session = await gw.create(make_intent())
    params = query(gw.complete(session.reference, paid=True, now=NOW))

    tampered = {**params, "sbx_amount": "1"}
    with pytest.raises(InvalidSignature) as info:
        await gw.verify_callback(tampered, {}, NOW)
    assert info.value.http_status == 400
    assert isinstance(info.value, ValueError)

    with pytest.raises(StaleWebhook):
        await gw.verify_callback(params, {}, NOW + timedelta(seconds=301))
    with pytest.raises(StaleWebhook):
        await gw.verify_callback(params, {}, NOW - timedelta(seconds=301))
    await gw.verify_callback(params, {}, NOW + timedelta(seconds=300))

    unsigned = {k: v for k, v in params.items() if k != "sbx_signature"}
    with pytest.raises(InvalidSignature):
        await gw.verify_callback(unsigned, {}, NOW)
    with pytest.raises(InvalidSignature):
        await gw.verify_callback({**params, "sbx_signature": "é" * 64}, {}, NOW)

    # Correctly signed but incomplete: a signature is not a schema.
    partial = {k: v for k, v in params.items() if k not in ("sbx_amount", "sbx_signature")}
    partial["sbx_signature"] = sign_fields(partial, SECRET)
    with pytest.raises(MalformedPayload):
        await gw.verify_callback(partial, {}, NOW)

    # Another deployment's secret proves nothing here.
    other = SandboxGateway(SandboxSettings(secret="other", base_url="http://x"))
    with pytest.raises(InvalidSignature):
        await other.verify_callback(params, {}, NOW)


async def test_amount_mismatch_is_caught_by_the_caller_check() -> None:
    gw = SandboxGateway(SETTINGS)
    session = await gw.create(make_intent(100))
    result = await gw.verify_callback(query(gw.complete(session.reference, True, NOW)), {}, NOW)
    with pytest.raises(AmountMismatch):
        result.check_amount(Money(250_000, Currency.AED))


async def test_webhook_round_trip_and_dedup_id() -> None:
    gw = SandboxGateway(SETTINGS)
    session = await gw.create(make_intent())
    gw.complete(session.reference, paid=True, now=NOW)
    body, headers = gw.webhook(session.reference, NOW)
    event = await gw.parse_webhook(body, headers, NOW + timedelta(seconds=5))
    assert event.status is PaymentStatus.SUCCEEDED
    assert event.event is IntentEvent.VERIFIED_SUCCESS
    assert event.reference == session.reference
    assert event.amount == Money(250_000, Currency.AED)
    assert event.type == "payment.succeeded"
    # A redelivery (signed later) keeps its id so the receiver can drop it.
    body2, headers2 = gw.webhook(session.reference, NOW + timedelta(minutes=1))
    again = await gw.parse_webhook(body2, headers2, NOW + timedelta(minutes=1))
    assert again.event_id == event.event_id

    with pytest.raises(InvalidSignature):
        await gw.parse_webhook(body + b" ", headers, NOW)
    with pytest.raises(StaleWebhook):
        await gw.parse_webhook(body, headers, NOW + timedelta(minutes=6))
    with pytest.raises(ValueError, match="pending"):
        gw.webhook((await gw.create(make_intent())).reference, NOW)


async def test_signed_garbage_webhook_is_malformed() -> None:
    gw = SandboxGateway(SETTINGS)
    ts = int(NOW.timestamp())
    for body in (b"not json", b"[]", json.dumps({"id": "e", "type": "t", "data": {}}).encode()):
        headers = {"wadud-signature": signing.sign(body, SECRET, ts)}  # any header case
        with pytest.raises(MalformedPayload):
            await gw.parse_webhook(body, headers, NOW)


async def test_inquire_and_refund() -> None:
    gw = SandboxGateway(SETTINGS)
    session = await gw.create(make_intent(1000))
    early = await gw.refund(session.reference, Money(1, Currency.AED))
    assert not early.succeeded
    assert early.gateway_code == "not_captured"
    gw.complete(session.reference, paid=True, now=NOW)

    first = await gw.refund(session.reference, Money(400, Currency.AED), idempotency_key="r1")
    assert first.succeeded
    retried = await gw.refund(session.reference, Money(400, Currency.AED), idempotency_key="r1")
    assert retried == first  # the retry was not a second refund
    await gw.refund(session.reference, Money(600, Currency.AED))
    with pytest.raises(RefundExceedsCapture):
        await gw.refund(session.reference, Money(1, Currency.AED))
    with pytest.raises(UnknownReference) as info:
        await gw.inquire("sbx_nope")
    assert info.value.http_status == 404


async def test_shared_records_are_injectable() -> None:
    """Two processes' gateways over one store see each other's checkouts."""
    shared: dict[str, SandboxPayment] = {}
    one, two = SandboxGateway(SETTINGS, shared), SandboxGateway(SETTINGS, shared)
    session = await one.create(make_intent())
    two.complete(session.reference, paid=True, now=NOW)
    assert (await one.inquire(session.reference)).status is PaymentStatus.SUCCEEDED


# --- the shared Stripe-style webhook signature ------------------------------


def test_webhook_signature_recipe_by_hand() -> None:
    body = b'{"id":"evt_1","type":"payment.succeeded"}'
    ts = 1_740_819_600
    expected = hmac.new(b"whsec_a", b"1740819600." + body, hashlib.sha256).hexdigest()
    assert signing.sign(body, "whsec_a", ts) == f"t={ts},v1={expected}"
    now = datetime.fromtimestamp(ts, UTC)
    headers = {"Wadud-Signature": f"t={ts},v1={expected}"}
    assert verify_webhook(body, headers, ["whsec_a"], now) == ts


def test_verify_webhook_rejects_malformed_headers() -> None:
    body = b"{}"
    for header in ("", "v1=abc", "t=12", "t=x,v1=ab", "t=+12,v1=ab", "garbage"):
        with pytest.raises(InvalidSignature):
            verify_webhook(body, {"Wadud-Signature": header}, [SECRET], NOW)
    with pytest.raises(InvalidSignature, match="missing"):
        verify_webhook(body, {}, [SECRET], NOW)
    with pytest.raises(InvalidSignature, match="no webhook secret"):
        verify_webhook(body, {"Wadud-Signature": "t=1,v1=a"}, [], NOW)


async def test_registry() -> None:
    registry = gateways(PaymentSettings(sandbox=SETTINGS))
    assert registry.names() == ["sandbox"]
    assert "sandbox" in registry
    gateway = registry.get("sandbox")
    assert isinstance(gateway, Gateway)
    with pytest.raises(UnknownGateway) as info:
        registry.get("paypal")
    assert (info.value.http_status, info.value.code) == (422, "unknown_gateway")
    with pytest.raises(ValueError, match="twice"):
        registry.register(gateway)
    card = CardSettings(api_base="http://x", api_key="k", webhook_secrets=("s",))
    with pytest.raises(ValueError, match="ClientSession"):
        gateways(PaymentSettings(card=card))


def test_verify_fields_needs_aware_now() -> None:
    fields = {"sbx_ts": "1", "sbx_reference": "r"}
    fields["sbx_signature"] = sign_fields(fields, SECRET)
    with pytest.raises(ValueError, match="aware"):
        verify_fields(fields, SECRET, datetime(2025, 1, 1))  # naive on purpose
