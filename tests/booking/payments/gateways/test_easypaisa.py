"""EasyPaisa adapter (booking/payments/gateways/easypaisa.py) without a database.

The hash vector is built here from the published recipe by hand (the string,
then AES-ECB with the cryptography primitives directly, not through the
module); the Open API and IPN calls run against a small aiohttp server on
127.0.0.1 that replays the request/response fixtures in
tests/data/easypaisa/ and checks every request our adapter sends.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from booking.payments.errors import (
    GatewayError,
    InvalidSignature,
    MalformedPayload,
    UnknownReference,
    UnsupportedCurrency,
)
from booking.payments.gateway import PaymentStatus
from booking.payments.gateways.easypaisa import (
    HASHED_FIELDS,
    HOSTED,
    MOBILE,
    REFUND_UNSUPPORTED,
    EasyPaisaGateway,
    EasyPaisaSettings,
    format_amount,
    format_expiry,
    hash_string,
    merchant_hash,
    parse_amount,
    read_merchant_hash,
)
from booking.payments.gateways.easypaisa_sim import EasyPaisaSimulator
from booking.payments.intent import Currency, Money, PaymentIntent
from tests.booking.payments.gateways.provider import provider_at

DATA = Path(__file__).parents[3] / "data" / "easypaisa"
KEY = "0123456789abcdef"  # 16 bytes: AES-128
NOW = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)  # 14:00 in Karachi
USER, PASSWORD = "shifa", "s3cret"


def settings(endpoint: str = "https://easypaystg.easypaisa.com.pk", **kw: Any) -> EasyPaisaSettings:
    base: dict[str, Any] = {
        "store_id": "43210",
        "hash_key": KEY,
        "username": USER,
        "password": PASSWORD,
        "account_num": "654123987",
        "site_url": "https://consult.example",
        "endpoint": endpoint,
    }
    base.update(kw)
    return EasyPaisaSettings(**base)


def intent(currency: Currency = Currency.PKR, amount: int = 150_000) -> PaymentIntent:
    return PaymentIntent(
        id="6a1e0f3c-0000-4000-8000-000000000042",
        amount=Money(amount, currency),
        description="Video consultation",
        return_url="https://consult.example/api/v1/payments/x/return",
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=10),
    )


def fixed(ref: str) -> Any:
    return lambda flow, i: ref


def test_hash_vector_built_by_hand() -> None:
    fields = {
        "storeId": "43210",
        "amount": "1500.0",
        "postBackURL": "https://consult.example/api/v1/payments/easypaisa/postback/EPH1",
        "orderRefNum": "EPH1",
        "expiryDate": "20250301 141000",
        "autoRedirect": "1",
        "paymentMethod": "",  # empty: left out
        "merchantHashedReq": "ignored",  # never hashes itself
        "other": "ignored",  # not a hashed field
    }
    by_hand = (
        "amount=1500.0&autoRedirect=1&expiryDate=20250301 141000&orderRefNum=EPH1"
        "&postBackURL=https://consult.example/api/v1/payments/easypaisa/postback/EPH1"
        "&storeId=43210"
    )
    assert hash_string(fields) == by_hand
    raw = by_hand.encode()
    pad = 16 - len(raw) % 16
    encryptor = Cipher(algorithms.AES(KEY.encode()), modes.ECB()).encryptor()
    want = base64.b64encode(encryptor.update(raw + bytes([pad]) * pad) + encryptor.finalize())
    assert merchant_hash(fields, KEY) == want.decode()
    assert read_merchant_hash(want.decode(), KEY) == by_hand
    with pytest.raises(InvalidSignature):
        read_merchant_hash(want.decode(), "fedcba9876543210")
    with pytest.raises(InvalidSignature):
        read_merchant_hash("not base64!", KEY)
    with pytest.raises(ValueError, match="16, 24 or 32"):
        settings(hash_key="short")


def test_amounts_and_times() -> None:
    assert format_amount(Money(150_000, Currency.PKR)) == "1500.0"
    assert format_amount(Money(150_050, Currency.PKR)) == "1500.5"
    assert format_amount(Money(150_025, Currency.PKR)) == "1500.25"
    assert format_amount(Money(100_000, Currency.PKR)) == "1000.0"
    assert format_amount(Money(150_000, Currency.PKR), decimals=2) == "1500.00"
    with pytest.raises(UnsupportedCurrency):
        format_amount(Money(1, Currency.AED))
    assert parse_amount(3000) == Money(300_000, Currency.PKR)
    assert parse_amount("1500.0") == Money(150_000, Currency.PKR)
    assert parse_amount(1500.5) == Money(150_050, Currency.PKR)
    for bad in ("1,500", "1e3", "15.005", "-1", "", True, None, [1]):
        with pytest.raises(MalformedPayload):
            parse_amount(bad)
    assert format_expiry(NOW) == "20250301 140000"
    with pytest.raises(ValueError, match="aware"):
        format_expiry(datetime(2025, 1, 1))  # naive on purpose


async def test_hosted_checkout_form_and_ma_page() -> None:
    async with aiohttp.ClientSession() as http:
        hosted = EasyPaisaGateway(settings(), http, HOSTED, fixed("EPH25030114000012345"))
        session = await hosted.create(intent())
        mobile = EasyPaisaGateway(settings(), http, MOBILE, fixed("EPM25030114000054321"))
        ma = await mobile.create(intent())
        with pytest.raises(UnsupportedCurrency):
            await hosted.create(intent(Currency.SAR))
    assert session.method == "POST"
    assert session.url == "https://easypaystg.easypaisa.com.pk/easypay/Index.jsf"
    fields = dict(session.fields)
    assert fields["amount"] == "1500.0"
    assert fields["expiryDate"] == "20250301 141000"
    assert fields["postBackURL"] == (
        "https://consult.example/api/v1/payments/easypaisa/postback/EPH25030114000012345"
    )
    assert read_merchant_hash(fields["merchantHashedReq"], KEY) == hash_string(fields)
    # The simulator (EasyPaisa's side) accepts exactly this form, and not an
    # edited amount.
    sim = EasyPaisaSimulator(settings(), "https://consult.example")
    assert "auth_token=" in sim.start_hosted(fields, NOW)
    with pytest.raises(InvalidSignature):
        sim.start_hosted({**fields, "amount": "15.0", "orderRefNum": "EPH2"}, NOW)
    assert ma.method == "GET"
    assert ma.url == "https://consult.example/api/v1/payments/easypaisa/ma/EPM25030114000054321"
    assert ma.gateway == "easypaisa_ma"


async def test_default_reference_shape() -> None:
    async with aiohttp.ClientSession() as http:
        ref = (await EasyPaisaGateway(settings(), http, MOBILE).create(intent())).reference
    assert len(ref) == 20 and ref.isalnum()
    assert ref.startswith("EPM250301140000")


async def test_refund_is_refused_by_the_gateway() -> None:
    async with aiohttp.ClientSession() as http:
        result = await EasyPaisaGateway(settings(), http).refund(
            "EPM25030114000054321", Money(100, Currency.PKR), idempotency_key="k"
        )
    assert not result.succeeded
    assert result.gateway_code == REFUND_UNSUPPORTED
    assert result.gateway == "easypaisa_ma"


# --- replaying the recorded exchanges -------------------------------------------


@dataclass
class Replay:
    """Answers each fixture's path with its recorded body, checking the request."""

    fixtures: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        key = request.path
        if request.method == "POST":
            body = await request.json()
            key = f"{request.path}#{body.get('orderId')}"
        else:
            body = {}
        self.seen.append((request.path, body, dict(request.headers)))
        fixture = self.fixtures.get(key)
        if fixture is None:
            return web.Response(status=500, text="no fixture")
        if fixture["request"] is not None:
            assert body == fixture["request"], (body, fixture["request"])
        return web.Response(
            status=fixture["status"],
            body=fixture["body"].encode(),
            headers={"Content-Type": fixture["content_type"]},
        )


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


@dataclass
class Harness:
    replay: Replay
    base: str
    http: aiohttp.ClientSession

    def gateway(self, flow: Any = HOSTED, **kw: Any) -> EasyPaisaGateway:
        return EasyPaisaGateway(settings(self.base, **kw), self.http, flow)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    replay = Replay()
    async with provider_at([web.route("*", "/{tail:.*}", replay.handle)]) as (base, http):
        yield Harness(replay, base, http)


def install(harness: Harness, name: str) -> dict[str, Any]:
    fixture = load(name)
    key = fixture["path"]
    if fixture["request"] is not None:
        key += "#" + fixture["request"]["orderId"]
    harness.replay.fixtures[key] = fixture
    return fixture


@pytest.mark.parametrize(
    "name",
    [
        "inquire_paid.json",
        "inquire_failed.json",
        "inquire_pending.json",
        "inquire_invalid_order.json",
        "inquire_invalid_credentials.json",
    ],
)
async def test_inquiry_against_recorded_answers(harness: Harness, name: str) -> None:
    fixture = install(harness, name)
    gateway = harness.gateway()
    expect = fixture["expect"]
    reference = fixture["request"]["orderId"]
    if "error" in expect:
        error = {"UnknownReference": UnknownReference, "GatewayError": GatewayError}
        with pytest.raises(error[expect["error"]]):
            await gateway.inquire(reference)
    else:
        answer = await gateway.inquire(reference)
        assert answer.status is PaymentStatus(expect["status"])
        assert answer.amount == Money(expect["amount_minor"], Currency.PKR)
        assert answer.gateway == ("easypaisa_ma" if reference.startswith("EPM") else "easypaisa")
    path, _, headers = harness.replay.seen[-1]
    assert path == "/easypay-service/rest/v4/inquire-transaction"
    assert base64.b64decode(headers["Credentials"]).decode() == f"{USER}:{PASSWORD}"


async def test_verify_callback_is_an_inquiry(harness: Harness) -> None:
    install(harness, "inquire_paid.json")
    install(harness, "inquire_invalid_order.json")
    gateway = harness.gateway()
    # Whatever the browser says ("status=0000" or not), the inquiry decides.
    paid = await gateway.verify_callback(
        {"status": "0001", "orderRefNumber": "EPH25030114000012345"}, {}, NOW
    )
    assert paid.status is PaymentStatus.SUCCEEDED
    paid.check_amount(Money(150_000, Currency.PKR))
    # An order EasyPaisa does not know (yet) is pending, never failed.
    unknown = await gateway.verify_callback({"orderRefNumber": "EPH25030114000000000"}, {}, NOW)
    assert unknown.status is PaymentStatus.PENDING and unknown.event is None
    with pytest.raises(MalformedPayload):
        await gateway.verify_callback({"status": "0000"}, {}, NOW)
    with pytest.raises(MalformedPayload):
        await gateway.verify_callback({"orderRefNumber": "T2025"}, {}, NOW)


@pytest.mark.parametrize("name", ["initiate_ma_success.json", "initiate_ma_system_error.json"])
async def test_initiate_ma_against_recorded_answers(harness: Harness, name: str) -> None:
    fixture = install(harness, name)
    answer = await harness.gateway(MOBILE).initiate_ma(
        "EPM25030114000054321", Money(150_000, Currency.PKR), "03451234567"
    )
    assert answer.status is PaymentStatus(fixture["expect"]["status"])
    assert answer.amount is None  # the initiate answer never settles by itself


async def test_ipn_is_read_from_easypaisa_only(harness: Harness) -> None:
    fixture = install(harness, "ipn_paid.json")
    gateway = harness.gateway()
    link = harness.base + fixture["path"]
    event = await gateway.parse_webhook(f"url={link}".encode(), {}, NOW)
    assert event.status is PaymentStatus.SUCCEEDED
    assert event.amount == Money(fixture["expect"]["amount_minor"], Currency.PKR)
    assert event.event_id == fixture["expect"]["event_id"]
    assert event.gateway == "easypaisa"
    as_json = json.dumps({"url": link}).encode()
    again = await gateway.parse_webhook(as_json, {"Content-Type": "application/json"}, NOW)
    assert again.event_id == event.event_id
    host = harness.base.split("//", 1)[1]
    for forged in (
        "https://evil.example/easypay-service/rest/v1/ipn/EPH25030114000012345",
        f"http://{host}@evil.example/easypay-service/rest/v1/ipn/EPH25030114000012345",
        f"{harness.base}/elsewhere/EPH25030114000012345",
        f"{harness.base}/easypay-service/rest/v1/ipn/../../x/EPH1",
        f"{link}?x=1",
    ):
        with pytest.raises(InvalidSignature):
            await gateway.parse_webhook(f"url={forged}".encode(), {}, NOW)
    for junk in (b"", b"nourl=1", b"\xff\xfe", b"[1]"):
        with pytest.raises(MalformedPayload):
            await gateway.parse_webhook(junk, {}, NOW)
    # A record for another store is no notification of ours.
    other = harness.gateway(store_id="99999")
    with pytest.raises(InvalidSignature, match="another store"):
        await other.parse_webhook(f"url={link}".encode(), {}, NOW)
    # An unreachable or broken EasyPaisa is a 502 (EasyPaisa will redeliver).
    with pytest.raises(GatewayError):
        await gateway.parse_webhook(
            f"url={harness.base}/easypay-service/rest/v1/ipn/EPH0".encode(), {}, NOW
        )


# --- properties ------------------------------------------------------------------

_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="&="), max_size=40
)


@given(
    st.dictionaries(st.sampled_from(HASHED_FIELDS), _TEXT), st.sampled_from(["k" * 16, "k" * 32])
)
def test_merchant_hash_round_trips(fields: dict[str, str], key: str) -> None:
    assert read_merchant_hash(merchant_hash(fields, key), key) == hash_string(fields)


@given(st.integers(min_value=0, max_value=10**13))
def test_amounts_round_trip(paisa: int) -> None:
    money = Money(paisa, Currency.PKR)
    assert parse_amount(format_amount(money)) == money
    assert parse_amount(format_amount(money, decimals=2)) == money


@given(st.binary(max_size=300), st.sampled_from([{}, {"Content-Type": "application/json"}]))
async def test_ipn_link_refuses_junk_with_typed_errors(
    body: bytes, headers: dict[str, str]
) -> None:
    async with aiohttp.ClientSession() as http:
        gateway = EasyPaisaGateway(settings(), http)
        try:
            link = gateway.ipn_link(body, headers)
        except (MalformedPayload, InvalidSignature):
            return
    assert link.startswith(settings().ipn_base)
