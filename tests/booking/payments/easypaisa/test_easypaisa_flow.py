"""EasyPaisa end to end: the app as ``wadud serve`` runs it with no
configuration (the built-in simulator), a real PostgreSQL, and HTTP on a
real port, since the adapter calls EasyPaisa (here: the simulator, on our
own origin) over the network like the real thing.

A patient pays through the hosted checkout and through the mobile-account
flow with approval on the phone; IPNs delivered twice, early, forged or for
the wrong amount change nothing; a payment whose IPN is lost is settled by
the inquiry round within its interval. EasyPaisa refuses refunds: those are
kept and paid by hand (tests/booking/payments/refunds/test_refund_due.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import html
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from bin.assembly import build_app
from booking.payments.easypaisa import inquiry
from booking.payments.easypaisa.http_simulator import SIMULATOR, SimulatorHost, simulator_app
from booking.payments.gateways.easypaisa import IPN_HANDLER_PATH, EasyPaisaGateway
from booking.payments.intent import Currency, Money
from booking.payments.keys import GATEWAYS
from booking.payments.postings import ledger_is_balanced
from booking.payments.reach import Reach
from tests.booking.factories import Clinic, Doctor, make_clinic, make_doctor
from tests.booking.payments.checkout.test_payments_api import (
    account_balances,
    anon_patient,
    booking_status,
    held_booking,
    path_of,
    pool_of,
    start_payment,
)
from tests.chromium import CHROMIUM, FLAGS
from tests.cluster import WADUD, Proc
from tests.conftest import Api, free_port
from tests.polling import wait_until
from wadud.config import Settings
from wadud.state import keys

Start = Callable[..., Awaitable[Api]]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture
async def start(tmp_path: Path, database_url: str) -> AsyncIterator[Start]:
    """Start the app on a port its own settings name (the simulator's links
    and the adapter's calls go to ``settings.base_url``)."""
    clients: list[TestClient[Any, Any]] = []

    async def go(**overrides: Any) -> Api:
        port = free_port()
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "data_dir": tmp_path,
            "database_url": database_url,
            "secret_key": "test-secret-" + "x" * 32,
            "database_pool_min": 1,
            "database_pool_max": 10,
            "log_format": "text",
            "outbox_poll_interval": 0.2,
            "payments_easypaisa_inquiry_interval": 0,
        }
        values.update(overrides)
        app = build_app(Settings(**values))
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=port))
        await client.start_server()
        clients.append(client)
        return Api(client, app)

    yield go
    for client in clients:
        await client.close()


@pytest.fixture
async def api(start: Start) -> Api:
    return await start()


def sim(api: Api) -> SimulatorHost:
    return api.app[SIMULATOR]


async def setting_up(api: Api) -> tuple[Clinic, Doctor, str, str]:
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic, fee_minor=150_000)
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    return clinic, doctor, token, booking


_FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


async def hosted_checkout(api: Api, payment: dict[str, Any], action: str = "pay") -> str:
    """The browser's way through EasyPaisa's hosted checkout (the simulator):
    Index.jsf, the postback with auth_token, Confirm.jsf, pay. Returns where
    EasyPaisa finally sends the browser (our postback, path and query)."""
    checkout = payment["checkout"]
    assert checkout["method"] == "POST"
    first = await api.client.post(
        path_of(checkout["url"]), data=checkout["fields"], allow_redirects=False
    )
    assert first.status == 303, await first.text()
    bridge = await api.client.get(path_of(first.headers["Location"]), allow_redirects=False)
    page = await bridge.text()
    assert bridge.status == 200, page
    action_url = html.unescape(_FORM_ACTION.search(page).group(1))  # type: ignore[union-attr]
    fields = {k: html.unescape(v) for k, v in _HIDDEN.findall(page)}
    assert set(fields) == {"auth_token", "postBackURL"}
    shown = await api.client.post(path_of(action_url), data=fields)
    assert shown.status == 200
    assert "Pay with EasyPaisa" in await shown.text()
    done = await api.client.post(
        path_of(action_url), data={**fields, "action": action}, allow_redirects=False
    )
    assert done.status == 303, await done.text()
    return path_of(done.headers["Location"])


async def back_to_landing(api: Api, postback: str) -> str:
    resp = await api.client.get(postback, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    return resp.headers["Location"]


async def intent(api: Api, payment_id: str) -> dict[str, Any]:
    row = await pool_of(api).fetchrow(
        "SELECT status, refunded_minor, gateway_ref FROM payment_intents WHERE id = $1",
        uuid.UUID(payment_id),
    )
    assert row is not None
    return dict(row)


async def counts(api: Api) -> tuple[int, int, int]:
    pool = pool_of(api)
    return (
        int(await pool.fetchval("SELECT count(*) FROM webhook_events")),
        int(await pool.fetchval("SELECT count(*) FROM ledger_transactions")),
        int(await pool.fetchval("SELECT count(*) FROM payment_events")),
    )


async def balanced(api: Api, clinic: Clinic) -> None:
    async with pool_of(api).acquire() as conn:
        assert await ledger_is_balanced(conn)
        assert await ledger_is_balanced(conn, uuid.UUID(clinic.id))


async def test_hosted_checkout_end_to_end(api: Api) -> None:
    clinic, doctor, token, booking = await setting_up(api)
    payment = await start_payment(api, token, booking, gateway="easypaisa")
    assert payment["gateway"] == "easypaisa"
    assert payment["checkout"]["url"].endswith("/easypaisa-sim/easypay/Index.jsf")
    postback = await hosted_checkout(api, payment)
    assert "status=0000" in postback
    # The IPN came (in process) before the browser did.
    assert (await intent(api, payment["id"]))["status"] == "succeeded"
    assert await booking_status(api, booking) == "requested"
    landing = await back_to_landing(api, postback)
    assert landing.startswith(f"/api/v1/payments/{payment['id']}/return?")
    result = await api.get(landing, expect=200)
    assert result == {"payment_id": payment["id"], "booking_id": booking, "status": "succeeded"}
    assert await account_balances(api, clinic) == {
        "gateway_clearing:easypaisa": 150_000,
        f"doctor_payable:{doctor.id}": -127_500,
        "platform_revenue": -22_500,
    }
    await balanced(api, clinic)


async def test_mobile_account_flow_with_approval_on_the_phone(api: Api) -> None:
    clinic, _, token, booking = await setting_up(api)
    payment = await start_payment(api, token, booking, gateway="easypaisa_ma")
    assert payment["checkout"]["method"] == "GET"
    page_path = path_of(payment["checkout"]["url"])
    page = await api.get(page_path, headers={"Accept": "text/html"}, expect=200)
    assert 'name="mobileAccountNo"' in page
    bad = await api.client.post(page_path, data={"mobileAccountNo": "12345"})
    assert bad.status == 422

    # The patient presses Pay; the request waits for the phone.
    submit = asyncio.create_task(
        api.client.post(page_path, data={"mobileAccountNo": "03451234567"}, allow_redirects=False)
    )
    phone = ""
    for _ in range(200):
        phone = await api.get("/easypaisa-sim/phone", expect=200)
        if "03451234567" in phone:
            break
        await asyncio.sleep(0.02)
    assert "Approve" in phone
    assert not submit.done()
    assert (await intent(api, payment["id"]))["status"] == "processing"
    reference = (await intent(api, payment["id"]))["gateway_ref"]
    approve = await api.client.post(
        f"/easypaisa-sim/phone/{reference}", data={"action": "approve"}, allow_redirects=False
    )
    assert approve.status == 303
    answered = await asyncio.wait_for(submit, 10)
    assert answered.status == 303
    landing = answered.headers["Location"]
    result = await api.get(landing, expect=200)
    assert result["status"] == "succeeded"
    assert await booking_status(api, booking) == "requested"
    balances = await account_balances(api, clinic)
    assert balances["gateway_clearing:easypaisa_ma"] == 150_000
    assert sum(balances.values()) == 0
    await balanced(api, clinic)


async def test_declined_on_the_phone_fails_and_keeps_the_hold(api: Api) -> None:
    _, _, token, booking = await setting_up(api)
    payment = await start_payment(api, token, booking, gateway="easypaisa_ma")
    page_path = path_of(payment["checkout"]["url"])
    submit = asyncio.create_task(
        api.client.post(page_path, data={"mobileAccountNo": "03001112223"}, allow_redirects=False)
    )
    for _ in range(200):
        if sim(api).core.pending_ma():
            break
        await asyncio.sleep(0.02)
    reference = sim(api).core.pending_ma()[0].reference
    await api.client.post(f"/easypaisa-sim/phone/{reference}", data={"action": "decline"})
    answered = await asyncio.wait_for(submit, 10)
    result = await api.get(answered.headers["Location"], expect=200)
    assert result["status"] == "failed"
    assert await booking_status(api, booking) == "held"


async def ipn(api: Api, reference: str, expect: int = 200, link: str | None = None) -> Any:
    url = link or sim(api).core.ipn_url(reference)
    return await api.get(f"/api/v1/payments/easypaisa/ipn?{urlencode({'url': url})}", expect=expect)


async def test_ipn_twice_early_or_forged_changes_nothing(api: Api) -> None:
    clinic, _, token, booking = await setting_up(api)
    sim(api).core.deliver_ipn = False  # this test delivers each IPN itself
    payment = await start_payment(api, token, booking, gateway="easypaisa")
    checkout = payment["checkout"]
    reference = checkout["fields"]["orderRefNum"]

    # Forged: a link to another host, or a sneaky one, is refused unread.
    before = await counts(api)
    for forged in (
        "https://evil.example/easypay-service/rest/v1/ipn/" + reference,
        sim(api).core.ipn_url(reference).replace("://", "://user@evil.example@"),
    ):
        refused = await ipn(api, reference, 400, link=forged)
        assert refused["code"] == "invalid_signature"
    assert await counts(api) == before

    # Early: EasyPaisa notifies while the order is still open (the patient
    # has not paid yet); a pending status moves nothing.
    first = await api.client.post(path_of(checkout["url"]), data=checkout["fields"])
    assert first.status == 200  # followed to our postback bridge page
    early = await ipn(api, reference)
    assert early["duplicate"] is False and early["event_id"].endswith(":PENDING:")
    assert (await intent(api, payment["id"]))["status"] == "processing"

    # Paid: the notification applies once...
    token_ = next(iter(sim(api).core.tokens))
    sim(api).core.finish_hosted(token_, sim(api).core.orders[reference].postback, True, _now())
    paid = await ipn(api, reference)
    assert paid["status"] == "succeeded" and paid["duplicate"] is False
    after = await counts(api)
    # ...and the same notification again, by IPN or the generic webhook, is
    # acknowledged and ignored; so is the early one redelivered late (its
    # link now reads PAID: the same event).
    again = await ipn(api, reference)
    assert again["duplicate"] is True
    generic = await api.client.post(
        "/api/v1/webhooks/easypaisa",
        data={"url": sim(api).core.ipn_url(reference)},
    )
    assert generic.status == 200 and (await generic.json())["duplicate"] is True
    assert await counts(api) == after
    assert await booking_status(api, booking) == "requested"
    balances = await account_balances(api, clinic)
    assert balances["gateway_clearing:easypaisa"] == 150_000
    await balanced(api, clinic)


async def test_wrong_amounts_are_refused_and_change_nothing(api: Api) -> None:
    clinic, _, token, booking = await setting_up(api)
    sim(api).core.deliver_ipn = False
    payment = await start_payment(api, token, booking, gateway="easypaisa")
    checkout = payment["checkout"]
    reference = checkout["fields"]["orderRefNum"]

    # The patient edits the amount in the form: EasyPaisa refuses the hash.
    edited = {**checkout["fields"], "amount": "15.0"}
    resp = await api.client.post(path_of(checkout["url"]), data=edited, allow_redirects=False)
    assert resp.status == 400
    assert (await resp.json())["code"] == "invalid_signature"
    assert reference not in sim(api).core.orders

    # EasyPaisa reports another amount paid than we asked: the IPN, the
    # landing and the inquiry round all refuse it with a typed 409.
    postback = await hosted_checkout(api, payment)
    sim(api).core.tamper_amount(reference, Money(1_500, Currency.PKR))
    before = await counts(api)
    refused = await ipn(api, reference, 409)
    assert refused["code"] == "amount_mismatch"
    landing = await back_to_landing(api, postback)
    assert (await api.get(landing, expect=409))["code"] == "amount_mismatch"
    settled = await inquiry.run_round(
        pool_of(api),
        api.app[GATEWAYS],
        ["easypaisa", "easypaisa_ma"],
        _now(),
        default_bp=1500,
    )
    assert settled == 0
    assert await counts(api) == before
    assert (await intent(api, payment["id"]))["status"] == "processing"
    assert await booking_status(api, booking) == "held"
    assert await account_balances(api, clinic) == {}


async def test_lost_ipn_is_settled_by_the_inquiry_round(start: Start) -> None:
    interval = 0.5
    api = await start(payments_easypaisa_inquiry_interval=interval)
    clinic, _, token, booking = await setting_up(api)
    sim(api).core.deliver_ipn = False  # every notification is lost
    payment = await start_payment(api, token, booking, gateway="easypaisa")
    await hosted_checkout(api, payment)  # paid; the browser never comes back
    pool = pool_of(api)
    # By the database's clock, as the settlement's own record is: a round
    # may come while the checkout's last answer is on its way (ci69), and a
    # busy test process reads late.
    paid_at = await pool.fetchval("SELECT clock_timestamp()")

    async def settled() -> bool:
        return (await intent(api, payment["id"]))["status"] == "succeeded"

    await wait_until(settled, within=10.0, every=0.05)
    settled_at = await pool.fetchval(
        "SELECT at FROM payment_events WHERE payment_intent_id = $1 AND to_state = 'succeeded'",
        uuid.UUID(payment["id"]),
    )
    # No notification came, so a round settled it, within its interval (plus
    # the round's own work on a busy machine).
    ipns = "SELECT count(*) FROM webhook_events WHERE gateway = 'easypaisa'"
    assert await pool.fetchval(ipns) == 0
    assert (settled_at - paid_at).total_seconds() < interval + 1.0, (paid_at, settled_at)
    assert await booking_status(api, booking) == "requested"
    await balanced(api, clinic)


async def test_inquiry_round_runs_on_one_replica_at_a_time(api: Api) -> None:
    async with pool_of(api).acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", inquiry.LOCK_KEY)
        try:
            skipped = await inquiry.run_round(
                pool_of(api), api.app[GATEWAYS], ["easypaisa"], _now(), default_bp=0
            )
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", inquiry.LOCK_KEY)
    assert skipped is None


async def test_postback_and_pages_refuse_strangers(api: Api) -> None:
    await api.get("/api/v1/payments/easypaisa/postback/EPH12345678901234567", expect=404)
    # The auth_token bridge reads nothing of ours: it only posts the token on
    # to EasyPaisa, which knows whether it issued it for this order.
    bridge = await api.client.get(
        "/api/v1/payments/easypaisa/postback/EPH12345678901234567?auth_token=unknown"
    )
    assert bridge.status == 200
    assert "/easypay/Confirm.jsf" in await bridge.text()
    await api.get("/api/v1/payments/easypaisa/ma/EPM12345678901234567", expect=404)
    await api.client.post("/easypaisa-sim/phone/EPM1", data={"action": "approve"})
    junk = await api.client.post(
        "/easypaisa-sim/easypay-service/rest/v4/inquire-transaction", data=b"{"
    )
    assert junk.status == 400
    nocreds = await api.client.post(
        "/easypaisa-sim/easypay-service/rest/v4/inquire-transaction", json={"orderId": "x"}
    )
    assert (await nocreds.json())["responseCode"] == "0010"


async def test_no_simulator_when_turned_off(start: Start) -> None:
    api = await start(payments_easypaisa_simulator=False)
    assert "easypaisa" not in api.app[GATEWAYS]
    await api.get("/easypaisa-sim/phone", expect=404)


async def test_openapi_documents_the_easypaisa_endpoints(api: Api) -> None:
    doc = await api.get("/api/v1/openapi.json")
    paths = doc["paths"]
    for path in (
        "/api/v1/payments/easypaisa/postback/{reference}",
        "/api/v1/payments/easypaisa/ma/{reference}",
        "/api/v1/payments/easypaisa/ipn",
        "/easypaisa-sim/easypay/Index.jsf",
        "/easypaisa-sim/easypay/Confirm.jsf",
        "/easypaisa-sim/easypay-service/rest/v4/initiate-ma-transaction",
        "/easypaisa-sim/easypay-service/rest/v4/inquire-transaction",
        "/easypaisa-sim/easypay-service/rest/v1/ipn/{order}",
        "/easypaisa-sim/phone",
        "/easypaisa-sim/phone/{order}",
    ):
        assert path in paths, path
    assert "post" in paths["/api/v1/payments/easypaisa/ma/{reference}"]


async def test_postback_bridge_posts_on_in_a_real_browser(api: Api, tmp_path: Path) -> None:
    """The auth_token page's form and its nonce-allowed script pass its own
    Content-Security-Policy: headless Chromium lands on EasyPaisa's (the
    simulator's) checkout page by itself."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip("needs Chromium")
    _, _, token, booking = await setting_up(api)
    payment = await start_payment(api, token, booking, gateway="easypaisa")
    checkout = payment["checkout"]
    first = await api.client.post(
        path_of(checkout["url"]), data=checkout["fields"], allow_redirects=False
    )
    browser = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        first.headers["Location"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={"HOME": str(tmp_path)},
    )
    out, _ = await asyncio.wait_for(browser.communicate(), 60)
    assert "Pay with EasyPaisa" in out.decode()


#: A store both the merchant and ``wadud easypaisa-sim`` are configured with.
STORE = {
    "payments_easypaisa_store_id": "90002",
    "payments_easypaisa_hash_key": "00112233445566778899aabbccddeeff",
    "payments_easypaisa_username": "merchant",
    "payments_easypaisa_password": "merchant-password",
    "payments_easypaisa_account_num": "654123987",
}


async def test_the_simulator_on_its_own_calls_our_ipn_handler(start: Start, tmp_path: Path) -> None:
    """``wadud easypaisa-sim`` in its own process, and the production adapter
    configured with the same store and pointed at it, as at a real
    EasyPaisa: the hosted checkout and the MA flow settle through our IPN
    handler over HTTP (the simulator inside ``wadud serve`` hands the IPN
    over in process instead); a merchant that answers its IPN badly does not
    stop the simulator."""
    sim_port = free_port()
    endpoint = f"http://127.0.0.1:{sim_port}/easypaisa-sim"
    api = await start(**STORE, payments_easypaisa_endpoint=endpoint)
    assert SIMULATOR not in api.app  # a store is configured: no built-in one
    env = {**os.environ, **{"WADUD_" + k.upper(): v for k, v in STORE.items()}}
    env["WADUD_PAYMENTS_EASYPAISA_ENDPOINT"] = endpoint
    env.pop("WADUD_CONFIG", None)
    simulator = Proc(
        "easypaisa-sim",
        [
            WADUD,
            "easypaisa-sim",
            "--port",
            str(sim_port),
            "--merchant",
            api.app[keys.SETTINGS].base_url,
        ],
        env,
        tmp_path / "sim.log",
    )
    simulator.start()
    try:
        async with aiohttp.ClientSession() as browser:
            # A fresh interpreter's start: ci176 saw it take over 10 s on a
            # starved machine, so a minute, by the loop's clock.
            loop = asyncio.get_running_loop()
            until = loop.time() + 60.0
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with browser.get(endpoint + "/phone") as r:
                        if r.status == 200:
                            break
                if loop.time() > until:
                    raise AssertionError(simulator.tail())
                await asyncio.sleep(0.1)
            clinic, _, token, booking = await setting_up(api)
            payment = await start_payment(api, token, booking, gateway="easypaisa")
            checkout = payment["checkout"]
            assert checkout["url"].startswith(endpoint)
            # Index.jsf, our postback bridge, Confirm.jsf: the browser's way.
            async with browser.post(
                checkout["url"], data=checkout["fields"], allow_redirects=False
            ) as r:
                assert r.status == 303, await r.text()
                bridge = r.headers["Location"]
            async with browser.get(bridge) as r:
                page = await r.text()
            action = html.unescape(_FORM_ACTION.search(page).group(1))  # type: ignore[union-attr]
            assert action.startswith(endpoint)
            fields = {k: html.unescape(v) for k, v in _HIDDEN.findall(page)}
            async with browser.post(
                action, data={**fields, "action": "pay"}, allow_redirects=False
            ) as r:
                assert r.status == 303, await r.text()
            # The simulator called our IPN handler before redirecting.
            assert (await intent(api, payment["id"]))["status"] == "succeeded"
            assert await booking_status(api, booking) == "requested"
            ipn = await pool_of(api).fetchval(
                "SELECT count(*) FROM webhook_events WHERE gateway = 'easypaisa'"
            )
            assert ipn == 1
            await balanced(api, clinic)

            # The MA flow: our page's call waits while the phone approves.
            token, patient = await anon_patient(api)
            doctor = await make_doctor(api, clinic, fee_minor=150_000)
            booking = await held_booking(api, doctor, patient)
            payment = await start_payment(api, token, booking, gateway="easypaisa_ma")
            submit = asyncio.create_task(
                api.client.post(
                    path_of(payment["checkout"]["url"]),
                    data={"mobileAccountNo": "03451234567"},
                    allow_redirects=False,
                )
            )
            reference = ""
            for _ in range(200):
                reference = (await intent(api, payment["id"]))["gateway_ref"]
                async with browser.get(endpoint + "/phone") as r:
                    if reference in await r.text():
                        break
                await asyncio.sleep(0.05)
            async with browser.post(
                f"{endpoint}/phone/{reference}", data={"action": "approve"}, allow_redirects=False
            ) as r:
                assert r.status == 303
            answered = await asyncio.wait_for(submit, 10)
            assert answered.status == 303
            assert (await intent(api, payment["id"]))["status"] == "succeeded"
            await balanced(api, clinic)
    finally:
        # Stopped whatever happened; its exit judged only after a run that
        # passed (a start cut short by SIGTERM exits -15, and an assertion
        # here would hide why the run failed).
        code = await simulator.stop()
    assert code == 0, simulator.tail()


async def test_an_unreachable_easypaisa_is_asked_again_as_it_comes_back(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """EasyPaisa (the simulator on its own port) goes down after a patient
    paid and their IPN was lost: the inquiry round finds it unreachable,
    counts it, logs the outage once and tries again at a backing-off retry
    time instead of a whole interval later, so the payment settles soon
    after EasyPaisa is back, with one more log line for the recovery."""
    sim_port = free_port()
    endpoint = f"http://127.0.0.1:{sim_port}/easypaisa-sim"
    interval = 6.0
    api = await start(
        **STORE,
        payments_easypaisa_endpoint=endpoint,
        payments_easypaisa_inquiry_interval=interval,
    )
    registry = api.app[GATEWAYS]
    registry.reach = Reach(first=0.5, cap=interval)  # seconds, for a short test
    gateway = registry.get("easypaisa")
    assert isinstance(gateway, EasyPaisaGateway)
    simulator = simulator_app(
        gateway.settings, endpoint, api.app[keys.SETTINGS].base_url + IPN_HANDLER_PATH
    )
    simulator[SIMULATOR].core.deliver_ipn = False  # the IPN is lost
    runner = web.AppRunner(simulator)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", sim_port)
    await site.start()
    try:
        _, _, token, booking = await setting_up(api)
        payment = await start_payment(api, token, booking, gateway="easypaisa")
        checkout = payment["checkout"]
        async with (
            aiohttp.ClientSession() as browser,
            browser.post(checkout["url"], data=checkout["fields"], allow_redirects=False) as r,
        ):
            assert r.status == 303, await r.text()
            bridge = r.headers["Location"]
        reference = checkout["fields"]["orderRefNum"]
        core = simulator[SIMULATOR].core
        auth = dict(parse_qsl(urlsplit(bridge).query))["auth_token"]
        core.finish_hosted(auth, core.orders[reference].postback, True, _now())
        await site.stop()  # EasyPaisa goes down with the payment made

        def unreachable() -> float:
            found = REGISTRY.get_sample_value(
                "wadud_payments_gateway_unreachable_total", {"gateway": "easypaisa"}
            )
            return found or 0.0

        before = unreachable()
        with caplog.at_level(logging.INFO, logger="wadud.payments"):
            waited = time.monotonic()
            while unreachable() < before + 2:  # the round's failure and a retry's
                assert time.monotonic() - waited < interval + 3, "no round asked"
                await asyncio.sleep(0.05)
            down_at = time.monotonic()
            assert (await intent(api, payment["id"]))["status"] == "processing"
            site = web.TCPSite(runner, "127.0.0.1", sim_port)
            await site.start()  # back
            while (await intent(api, payment["id"]))["status"] != "succeeded":
                # Sooner than the next interval's round would have asked.
                assert time.monotonic() - down_at < interval - 1.5, "not retried"
                await asyncio.sleep(0.05)
        assert await booking_status(api, booking) == "requested"
        messages = [r.getMessage() for r in caplog.records if r.name == "wadud.payments"]
        assert sum("unreachable" in m for m in messages) == 1, messages
        assert sum("reachable again" in m for m in messages) == 1, messages
        assert registry.reach.down() == {}
    finally:
        await runner.cleanup()
