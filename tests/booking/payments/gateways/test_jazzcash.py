"""JazzCash-style adapter (booking/payments/gateways/jazzcash.py).

The hash vectors are built here from the published recipe, by hand, not by
calling the code under test; the inquiry and refund APIs run against a small
aiohttp server on 127.0.0.1 that implements the documented JSON shape and
checks every request's hash with this file's own implementation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from booking.payments.errors import (
    GatewayError,
    InvalidSignature,
    MalformedPayload,
    UnsupportedCurrency,
)
from booking.payments.gateway import PaymentStatus
from booking.payments.gateways.jazzcash import (
    JazzCashGateway,
    JazzCashSettings,
    format_txn_datetime,
    hash_string,
    secure_hash,
)
from booking.payments.intent import Currency, IntentEvent, Money, PaymentIntent
from tests.booking.payments.gateways.provider import provider_at

SALT = "8zx1vt3w5y"
MERCHANT = "MC12345"
PASSWORD = "p4ss0rd"
NOW = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)  # 14:00 in Karachi


def reference_hash(fields: dict[str, str], salt: str = SALT) -> str:
    """The recipe, written independently of the module under test."""
    keys = [k for k in fields if k[:2] == "pp" and k != "pp_SecureHash" and len(fields[k]) > 0]
    keys.sort()
    message = salt
    for key in keys:
        message += "&" + fields[key]
    return hmac.new(salt.encode(), message.encode(), hashlib.sha256).hexdigest().upper()


def signed(fields: dict[str, str]) -> dict[str, str]:
    return {**fields, "pp_SecureHash": reference_hash(fields)}


def settings(**overrides: Any) -> JazzCashSettings:
    base: dict[str, Any] = {"merchant_id": MERCHANT, "password": PASSWORD, "integrity_salt": SALT}
    base.update(overrides)
    return JazzCashSettings(**base)


def make_intent(currency: Currency = Currency.PKR) -> PaymentIntent:
    return PaymentIntent(
        id="bk-0042",
        amount=Money(150_000, currency),  # PKR 1,500.00
        description="Video consultation",
        return_url="https://api.example/pay/jazzcash/return",
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
    )


def test_hash_vector_built_by_hand() -> None:
    fields = {
        "pp_Version": "1.1",
        "pp_TxnType": "MWALLET",
        "pp_Language": "EN",
        "pp_MerchantID": MERCHANT,
        "pp_SubMerchantID": "",  # empty: left out
        "pp_Password": PASSWORD,
        "pp_BankID": "TBANK",
        "pp_TxnRefNo": "T20250301140000123",
        "pp_Amount": "150000",
        "pp_TxnCurrency": "PKR",
        "pp_TxnDateTime": "20250301140000",
        "pp_BillReference": "bk0042",
        "pp_Description": "Video consultation",
        "pp_TxnExpiryDateTime": "20250301150000",
        "pp_ReturnURL": "https://api.example/r",
        "ppmpf_1": "03001234567",  # pass-through fields count: name starts with "pp"
        "ppmpf_2": "",
        "booking": "ignored",  # not a pp field
        "pp_SecureHash": "IGNORED",  # never hashes itself
    }
    # Sorted by name, ASCII: pp_Amount < pp_BankID < pp_BillReference < ... < pp_Version < ppmpf_1
    by_hand = (
        f"{SALT}&150000&TBANK&bk0042&Video consultation&EN&{MERCHANT}&{PASSWORD}"
        "&https://api.example/r&PKR&20250301140000&20250301150000&T20250301140000123"
        "&MWALLET&1.1&03001234567"
    )
    assert hash_string(fields, SALT) == by_hand
    want = hmac.new(SALT.encode(), by_hand.encode(), hashlib.sha256).hexdigest().upper()
    assert secure_hash(fields, SALT) == want
    assert reference_hash(fields) == want


def test_pakistan_time() -> None:
    assert format_txn_datetime(NOW) == "20250301140000"
    # Crossing midnight in Karachi while still the previous day in UTC.
    assert format_txn_datetime(datetime(2025, 12, 31, 19, 30, tzinfo=UTC)) == "20260101003000"
    with pytest.raises(ValueError, match="aware"):
        format_txn_datetime(datetime(2025, 1, 1))  # naive on purpose


async def test_create_builds_a_signed_form() -> None:
    async with aiohttp.ClientSession() as http:
        gw = JazzCashGateway(settings(), http, reference_factory=lambda i: "T20250301140000001")
        session = await gw.create(make_intent())
        fields = dict(session.fields)
    assert session.method == "POST"
    assert session.url.startswith("https://sandbox.jazzcash.com.pk/")
    assert session.reference == "T20250301140000001"
    assert fields["pp_Amount"] == "150000"
    assert fields["pp_TxnDateTime"] == "20250301140000"
    assert fields["pp_TxnExpiryDateTime"] == "20250301150000"
    assert fields["pp_BillReference"] == "bk0042"
    assert fields["pp_ReturnURL"] == "https://api.example/pay/jazzcash/return"
    assert fields["pp_SecureHash"] == reference_hash(fields)


async def test_default_reference_shape() -> None:
    async with aiohttp.ClientSession() as http:
        ref = (await JazzCashGateway(settings(), http).create(make_intent())).reference
    assert len(ref) == 20
    assert ref.startswith("T20250301140000")
    assert ref.isalnum()


async def test_create_refuses_other_currencies() -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(UnsupportedCurrency):
            await JazzCashGateway(settings(), http).create(make_intent(Currency.AED))


def callback(code: str = "000", **extra: str) -> dict[str, str]:
    """A return POST as the hosted page sends it."""
    fields = {
        "pp_Amount": "150000",
        "pp_AuthCode": "",
        "pp_BankID": "",
        "pp_BillReference": "bk0042",
        "pp_Language": "EN",
        "pp_MerchantID": MERCHANT,
        "pp_ResponseCode": code,
        "pp_ResponseMessage": "Thank you for Using JazzCash" if code == "000" else "Declined",
        "pp_RetreivalReferenceNo": "250301123456",
        "pp_SubMerchantId": "",
        "pp_TxnCurrency": "PKR",
        "pp_TxnDateTime": "20250301140000",
        "pp_TxnRefNo": "T20250301140000001",
        "pp_TxnType": "MWALLET",
        "pp_Version": "1.1",
        "ppmpf_1": "",
    }
    fields.update(extra)
    return signed(fields)


async def test_verify_callback_verdicts() -> None:
    async with aiohttp.ClientSession() as http:
        gw = JazzCashGateway(settings(), http)
        ok = await gw.verify_callback(callback("000"), {}, NOW)
        assert ok.status is PaymentStatus.SUCCEEDED
        assert ok.event is IntentEvent.VERIFIED_SUCCESS
        assert ok.reference == "T20250301140000001"
        ok.check_amount(Money(150_000, Currency.PKR))

        bad = await gw.verify_callback(callback("124"), {}, NOW)
        assert bad.status is PaymentStatus.FAILED
        assert bad.gateway_code == "124"

        lenient = JazzCashGateway(settings(pending_codes=frozenset({"124"})), http)
        assert (await lenient.verify_callback(callback("124"), {}, NOW)).event is None

        # Hex case does not matter.
        lower = callback()
        lower["pp_SecureHash"] = lower["pp_SecureHash"].lower()
        assert (await gw.verify_callback(lower, {}, NOW)).status is PaymentStatus.SUCCEEDED


async def test_verify_callback_rejects_forgeries() -> None:
    async with aiohttp.ClientSession() as http:
        gw = JazzCashGateway(settings(), http)
        tampered = {**callback("999"), "pp_ResponseCode": "000"}
        with pytest.raises(InvalidSignature):
            await gw.verify_callback(tampered, {}, NOW)
        unsigned = {k: v for k, v in callback().items() if k != "pp_SecureHash"}
        with pytest.raises(InvalidSignature):
            await gw.verify_callback(unsigned, {}, NOW)
        with pytest.raises(InvalidSignature):
            await gw.verify_callback({**callback(), "pp_SecureHash": "ÿ" * 64}, {}, NOW)
        other_salt = {**callback(), "pp_SecureHash": reference_hash(callback(), "other")}
        with pytest.raises(InvalidSignature):
            await gw.verify_callback(other_salt, {}, NOW)
        with pytest.raises(InvalidSignature, match="another merchant"):
            await gw.verify_callback(callback(pp_MerchantID="MC999"), {}, NOW)
        # Our own signed checkout form, posted back by the patient, is no verdict.
        form = dict((await gw.create(make_intent())).fields)
        with pytest.raises(MalformedPayload, match="pp_ResponseCode"):
            await gw.verify_callback(form, {}, NOW)


async def test_ipn_as_json_and_form() -> None:
    async with aiohttp.ClientSession() as http:
        gw = JazzCashGateway(settings(), http)
        body = json.dumps(callback()).encode()
        event = await gw.parse_webhook(body, {"Content-Type": "application/json"}, NOW)
        assert event.status is PaymentStatus.SUCCEEDED
        assert event.event_id == "T20250301140000001:000:250301123456"
        assert event.amount == Money(150_000, Currency.PKR)
        form = urlencode(callback()).encode()
        headers = {"content-type": "application/x-www-form-urlencoded"}
        again = await gw.parse_webhook(form, headers, NOW)
        assert again.event_id == event.event_id
        for junk in (b"\xff\xfe", b"[1, 2]", b"{bad json", json.dumps({"pp_Amount": 5}).encode()):
            with pytest.raises(MalformedPayload):
                await gw.parse_webhook(junk, {}, NOW)
        with pytest.raises(InvalidSignature):
            await gw.parse_webhook(json.dumps({**callback(), "pp_Amount": "1"}).encode(), {}, NOW)


# --- the inquiry and refund APIs against a local server ----------------------


@dataclass
class FakeJazzCash:
    """Implements the documented request/response shape of the two JSON APIs."""

    payments: dict[str, dict[str, str]] = field(default_factory=dict)
    refunded: dict[str, int] = field(default_factory=dict)
    requests: list[dict[str, str]] = field(default_factory=list)
    break_hash: bool = False

    def answer(self, fields: dict[str, str]) -> web.Response:
        out = signed(fields)
        if self.break_hash:
            out["pp_ResponseMessage"] = "tampered after signing"
        return web.json_response(out)

    async def _checked(self, request: web.Request) -> dict[str, str] | web.Response:
        body = await request.json()
        self.requests.append(body)
        if body.get("pp_SecureHash") != reference_hash(body):
            return self.answer({"pp_ResponseCode": "115", "pp_ResponseMessage": "bad hash"})
        if (body.get("pp_MerchantID"), body.get("pp_Password")) != (MERCHANT, PASSWORD):
            return self.answer({"pp_ResponseCode": "110", "pp_ResponseMessage": "bad credentials"})
        return dict(body)

    async def inquire(self, request: web.Request) -> web.Response:
        body = await self._checked(request)
        if isinstance(body, web.Response):
            return body
        payment = self.payments.get(body["pp_TxnRefNo"])
        if payment is None:
            return self.answer({"pp_ResponseCode": "404", "pp_ResponseMessage": "no such txn"})
        return self.answer(
            {
                "pp_ResponseCode": "000",
                "pp_ResponseMessage": "Inquiry successful",
                "pp_PaymentResponseCode": payment["code"],
                "pp_PaymentResponseMessage": payment["message"],
                "pp_Amount": payment["amount"],
                "pp_TxnCurrency": "PKR",
                "pp_TxnRefNo": body["pp_TxnRefNo"],
                "pp_Status": "Completed" if payment["code"] == "000" else "Failed",
            }
        )

    async def refund(self, request: web.Request) -> web.Response:
        body = await self._checked(request)
        if isinstance(body, web.Response):
            return body
        ref = body["pp_TxnRefNo"]
        payment = self.payments.get(ref)
        amount = int(body["pp_Amount"])
        already = self.refunded.get(ref, 0)
        if payment is None or payment["code"] != "000" or already + amount > int(payment["amount"]):
            return self.answer({"pp_ResponseCode": "431", "pp_ResponseMessage": "refund refused"})
        self.refunded[ref] = already + amount
        return self.answer(
            {
                "pp_ResponseCode": "000",
                "pp_ResponseMessage": "Refund successful",
                "pp_RetreivalReferenceNo": f"RF{len(self.requests)}",
            }
        )


async def broken_endpoint(request: web.Request) -> web.Response:
    return web.Response(status=500, text="oops")


@dataclass
class Harness:
    fake: FakeJazzCash
    gateway: JazzCashGateway
    base: str


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    fake = FakeJazzCash()
    routes = [
        web.post("/inquire", fake.inquire),
        web.post("/refund", fake.refund),
        web.post("/broken", broken_endpoint),
    ]
    async with provider_at(routes) as (base, http):
        gw = JazzCashGateway(
            settings(inquiry_url=f"{base}/inquire", refund_url=f"{base}/refund", mpin="1234"),
            http,
        )
        yield Harness(fake, gw, base)


async def test_inquire(harness: Harness) -> None:
    harness.fake.payments["T1"] = {"code": "000", "message": "ok", "amount": "150000"}
    harness.fake.payments["T2"] = {"code": "199", "message": "declined", "amount": "500"}
    paid = await harness.gateway.inquire("T1")
    assert paid.status is PaymentStatus.SUCCEEDED
    assert paid.amount == Money(150_000, Currency.PKR)
    assert (await harness.gateway.inquire("T2")).status is PaymentStatus.FAILED
    sent = harness.fake.requests[0]
    assert set(sent) == {"pp_TxnRefNo", "pp_MerchantID", "pp_Password", "pp_SecureHash"}
    # An unanswered question is not a decline.
    with pytest.raises(GatewayError, match="404"):
        await harness.gateway.inquire("T404")


async def test_refund(harness: Harness) -> None:
    harness.fake.payments["T1"] = {"code": "000", "message": "ok", "amount": "150000"}
    first = await harness.gateway.refund("T1", Money(50_000, Currency.PKR))
    assert first.succeeded
    assert first.refund_id is not None
    assert harness.fake.requests[-1]["pp_MerchantMPIN"] == "1234"
    assert harness.fake.requests[-1]["pp_Amount"] == "50000"
    too_much = await harness.gateway.refund("T1", Money(100_001, Currency.PKR))
    assert not too_much.succeeded
    assert too_much.gateway_code == "431"
    with pytest.raises(UnsupportedCurrency):
        await harness.gateway.refund("T1", Money(1, Currency.SAR))


async def test_gateway_failures(harness: Harness) -> None:
    harness.fake.payments["T1"] = {"code": "000", "message": "ok", "amount": "150000"}
    harness.fake.break_hash = True
    with pytest.raises(GatewayError, match="rejected") as info:
        await harness.gateway.inquire("T1")
    assert info.value.http_status == 502
    harness.fake.break_hash = False

    http = harness.gateway._session
    broken = JazzCashGateway(settings(inquiry_url=f"{harness.base}/broken"), http)
    with pytest.raises(GatewayError, match="HTTP 500"):
        await broken.inquire("T1")

    # Nothing listens there: the connection is refused at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gone = JazzCashGateway(settings(inquiry_url=f"http://127.0.0.1:{port}/inquire"), http)
    with pytest.raises(GatewayError):
        await gone.inquire("T1")

    wrong_salt = JazzCashGateway(
        settings(integrity_salt="nope", inquiry_url=f"{harness.base}/inquire"), http
    )
    with pytest.raises(GatewayError):  # the fake answers 115 signed with the real salt
        await wrong_salt.inquire("T1")
