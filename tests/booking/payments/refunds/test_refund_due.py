"""Refunds owed by hand: a refund EasyPaisa refuses is kept, a payment that
arrives after its booking lapsed is owed back, and finance marks either paid.

EasyPaisa's merchant API has no refund call, so it stands for every gateway
that says no. The app runs as ``wadud serve`` does with no configuration
(the built-in simulator, real PostgreSQL, HTTP on a real port), as in
test_easypaisa_flow.py, whose helpers these tests share.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bin.assembly import build_app
from booking.payments import ledger
from booking.payments.easypaisa import inquiry
from booking.payments.intent import Currency, Money
from booking.payments.keys import GATEWAYS
from tests.booking.factories import Clinic, make_clinic
from tests.booking.payments.checkout.test_payments_api import (
    account_balances,
    booking_status,
    pool_of,
    start_payment,
)
from tests.booking.payments.easypaisa import test_easypaisa_flow as flow
from tests.booking.payments.transfers.test_bank_transfer import told
from tests.conftest import Api, free_port_in
from wadud.config import Settings


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[Api]:
    """The app on a port its own settings name (the simulator is reached
    over HTTP at ``base_url``), with no inquiry round of its own."""
    port = free_port_in(25_000, 25_999)
    app = build_app(
        dataclasses.replace(
            settings, host="127.0.0.1", port=port, payments_easypaisa_inquiry_interval=0
        )
    )
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=port))
    await client.start_server()
    yield Api(client, app)
    await client.close()


async def paid(api: Api) -> tuple[Clinic, str, str, dict[str, Any]]:
    """A booking paid through EasyPaisa's hosted checkout: (clinic, patient
    token, booking id, payment)."""
    clinic, _, token, booking = await flow.setting_up(api)
    payment = await start_payment(api, token, booking, gateway="easypaisa")
    await flow.hosted_checkout(api, payment)
    assert (await flow.intent(api, payment["id"]))["status"] == "succeeded"
    return clinic, token, booking, payment


async def state(api: Api) -> tuple[int, int, int, int]:
    """Rows that any change would add: ledger transactions, payment events,
    refunds, audit rows."""
    pool = pool_of(api)
    return (
        int(await pool.fetchval("SELECT count(*) FROM ledger_transactions")),
        int(await pool.fetchval("SELECT count(*) FROM payment_events")),
        int(await pool.fetchval("SELECT count(*) FROM refunds")),
        int(await pool.fetchval("SELECT count(*) FROM audit_log")),
    )


async def audited(api: Api, refund_id: str) -> list[str]:
    rows = await pool_of(api).fetch(
        "SELECT action FROM audit_log WHERE object = $1 ORDER BY seq", f"refund/{refund_id}"
    )
    return [r["action"] for r in rows]


async def test_a_refused_refund_is_kept_and_finance_pays_it_by_hand(served: Api) -> None:
    api = served
    clinic, token, booking, payment = await paid(api)
    pid = payment["id"]
    captured = await account_balances(api, clinic)
    ledger_rows = (await state(api))[0]

    refused = await api.post(
        f"/api/v1/payments/{pid}/refunds",
        {"amount_minor": 50_000, "reason": "doctor ill"},
        token=clinic.staff_token,
        expect=202,
    )
    assert refused["status"] == "refused_by_gateway"
    assert refused["kind"] == "refund"
    assert refused["gateway_code"] == "refund_not_supported"
    # The patient hears that their refund will come by hand.
    me = (await api.get("/api/v1/me", token=token))["id"]
    assert await told(api, "payment.refund_refused") == [("payment_refund_by_hand", me)]
    assert "merchant portal" in refused["gateway_message"]
    assert refused["payment_status"] == "succeeded"
    assert refused["payment_refunded_minor"] == 0
    # No money moved, so the ledger did not.
    assert (await state(api))[0] == ledger_rows
    assert await account_balances(api, clinic) == captured
    shown = await api.get(f"/api/v1/payments/{pid}", token=token)
    assert (shown["status"], shown["refunded_minor"], shown["refund_due_minor"]) == (
        "succeeded",
        0,
        50_000,
    )
    mine = await api.get(f"/api/v1/payments/{pid}/refunds", token=token)
    assert [r["id"] for r in mine] == [refused["id"]]
    owed = await api.get(
        f"/api/v1/clinics/{clinic.id}/refunds?status=refused_by_gateway", token=clinic.staff_token
    )
    assert [r["id"] for r in owed] == [refused["id"]]
    assert await audited(api, refused["id"]) == ["payment.refund.refused_by_gateway"]

    other = await make_clinic(api, name="Other Clinic")
    # What is owed is reserved: no more than the capture in all.
    before = await state(api)
    over = await api.post(
        f"/api/v1/payments/{pid}/refunds",
        {"amount_minor": 100_001},
        token=clinic.staff_token,
        expect=409,
    )
    assert over["code"] == "refund_exceeds_capture"
    assert await state(api) == before

    # Bad input and strangers change nothing.
    mark = f"/api/v1/refunds/{refused['id']}/refunded"
    await api.post(mark, {"note": "  "}, token=clinic.staff_token, expect=422)
    await api.post(mark, {}, token=clinic.staff_token, expect=422)
    await api.post(mark, {"note": "x" * 1001}, token=clinic.staff_token, expect=422)
    await api.post(mark, {"note": "paid"}, token=other.staff_token, expect=404)
    await api.post(mark, {"note": "paid"}, token=token, expect=403)
    await api.post(
        f"/api/v1/refunds/{uuid.uuid4()}/refunded",
        {"note": "x"},
        token=clinic.staff_token,
        expect=404,
    )
    await api.get(f"/api/v1/clinics/{clinic.id}/refunds", token=other.staff_token, expect=404)
    await api.get(
        f"/api/v1/clinics/{clinic.id}/refunds?status=lost", token=clinic.staff_token, expect=422
    )
    await api.get(f"/api/v1/payments/{pid}/refunds", token=other.staff_token, expect=404)
    assert await state(api) == before

    done = await api.post(
        mark, {"note": "sent from the merchant portal, txn 88231"}, token=clinic.staff_token
    )
    assert done["status"] == "refunded_by_hand"
    assert done["note"] == "sent from the merchant portal, txn 88231"
    assert done["resolved_at"] is not None
    assert (done["payment_status"], done["payment_refunded_minor"]) == (
        "partially_refunded",
        50_000,
    )
    # Exactly what a gateway refund posts: the capture's split, reversed in
    # proportion (15 % commission: 7,500 back from the platform, 42,500 from
    # the doctor).
    after = await account_balances(api, clinic)
    doctor = next(a for a in captured if a.startswith("doctor_payable:"))
    capture = ledger.Transaction(
        "capture",
        pid,
        tuple(ledger.Leg(a, v, Currency.PKR) for a, v in captured.items()),
    )
    reversal = ledger.refund(capture, Money(50_000, Currency.PKR))
    assert after == {a: captured[a] + reversal.amount_of(a) for a in captured}
    assert after == {
        "gateway_clearing:easypaisa": 100_000,
        doctor: -85_000,
        "platform_revenue": -15_000,
    }
    assert sum(after.values()) == 0
    kinds = await pool_of(api).fetch(
        """SELECT kind, reference FROM ledger_transactions
           WHERE payment_intent_id = $1 ORDER BY created_at""",
        uuid.UUID(pid),
    )
    assert [(k["kind"], k["reference"]) for k in kinds] == [
        ("capture", pid),
        ("refund", done["id"]),
    ]
    await flow.balanced(api, clinic)
    assert (await api.get(f"/api/v1/payments/{pid}", token=token))["refund_due_minor"] == 0
    assert await audited(api, refused["id"]) == [
        "payment.refund.refused_by_gateway",
        "payment.refund.by_hand",
    ]
    again = await api.post(mark, {"note": "twice?"}, token=clinic.staff_token, expect=409)
    assert again["code"] == "refund_not_owed"
    # Finance's list of what is owed is empty again; the refund is in the history.
    assert (
        await api.get(
            f"/api/v1/clinics/{clinic.id}/refunds?status=refused_by_gateway",
            token=clinic.staff_token,
        )
        == []
    )
    assert await booking_status(api, booking) == "requested"


async def test_cancelling_a_booking_paid_by_easypaisa_owes_the_refund(served: Api) -> None:
    """A clinic's cancellation refunds in full; EasyPaisa cannot, so the
    cancellation goes through and the refund is owed by hand (it used to be
    refused whole with a 502, leaving the booking uncancellable). What a
    refused refund owes already is not owed twice."""
    api = served
    clinic, token, booking, payment = await paid(api)
    pid = payment["id"]
    await api.post(
        f"/api/v1/payments/{pid}/refunds",
        {"amount_minor": 50_000, "reason": "late start"},
        token=clinic.staff_token,
        expect=202,
    )
    done = await api.post(
        f"/api/v1/bookings/{booking}/cancel", {"reason": "doctor away"}, token=clinic.staff_token
    )
    assert (done["status"], done["refund_minor"]) == ("cancelled", 100_000)
    refunds = await api.get(f"/api/v1/payments/{pid}/refunds", token=token)
    assert [(r["status"], r["amount_minor"]) for r in refunds] == [
        ("refused_by_gateway", 50_000),
        ("refused_by_gateway", 100_000),
    ]
    # Both refusals name who asked: the staff member, directly and by cancelling.
    actors = await pool_of(api).fetch(
        """SELECT actor_id FROM audit_log WHERE action = 'payment.refund.refused_by_gateway'
           ORDER BY seq"""
    )
    assert len({a["actor_id"] for a in actors}) == 1
    assert actors[0]["actor_id"] is not None
    shown = await api.get(f"/api/v1/payments/{pid}", token=token)
    assert (shown["status"], shown["refund_due_minor"]) == ("succeeded", 150_000)
    for refund in refunds:
        await api.post(
            f"/api/v1/refunds/{refund['id']}/refunded",
            {"note": "portal refund"},
            token=clinic.staff_token,
        )
    assert set((await account_balances(api, clinic)).values()) == {0}
    await flow.balanced(api, clinic)
    assert (await flow.intent(api, pid))["status"] == "refunded"


async def lapse(api: Api, booking: str) -> None:
    await pool_of(api).execute(
        "UPDATE bookings SET status = 'expired', hold_expires_at = NULL WHERE id = $1",
        uuid.UUID(booking),
    )


async def paid_after_the_hold_lapsed(api: Api) -> tuple[Clinic, str, str, dict[str, Any]]:
    """A patient pays by EasyPaisa's hosted checkout but the IPN is held
    back and the booking lapses meanwhile: (clinic, patient token, booking
    id, payment)."""
    clinic, _, token, booking = await flow.setting_up(api)
    flow.sim(api).core.deliver_ipn = False
    payment = await start_payment(api, token, booking, gateway="easypaisa")
    await flow.hosted_checkout(api, payment)
    await lapse(api, booking)
    return clinic, token, booking, payment


async def test_payment_after_the_hold_lapsed_is_owed_back_and_the_ipn_acknowledged(
    served: Api,
) -> None:
    api = served
    clinic, token, _, payment = await paid_after_the_hold_lapsed(api)
    reference = payment["checkout"]["fields"]["orderRefNum"]

    ack = await flow.ipn(api, reference, 200)
    assert (ack["duplicate"], ack["status"]) == (False, "cancelled")
    row = await pool_of(api).fetchrow(
        "SELECT status, failure_reason FROM payment_intents WHERE id = $1",
        uuid.UUID(payment["id"]),
    )
    assert row is not None
    assert row["status"] == "cancelled"
    assert row["failure_reason"].startswith("received late (the booking is expired")
    # Never a silent credit: the money sits owed to the patient.
    assert await account_balances(api, clinic) == {
        "gateway_clearing:easypaisa": 150_000,
        "patient_refunds_due": -150_000,
    }
    await flow.balanced(api, clinic)
    shown = await api.get(f"/api/v1/payments/{payment['id']}", token=token)
    assert (shown["status"], shown["refund_due_minor"]) == ("cancelled", 150_000)
    owed = await api.get(
        f"/api/v1/clinics/{clinic.id}/refunds?kind=late_payment", token=clinic.staff_token
    )
    assert [(r["kind"], r["status"], r["amount_minor"]) for r in owed] == [
        ("late_payment", "refused_by_gateway", 150_000)
    ]
    assert await audited(api, owed[0]["id"]) == ["payment.received_late"]
    me = (await api.get("/api/v1/me", token=token))["id"]
    assert await told(api, "payment.received_late") == [("payment_received_late", me)]
    events = await pool_of(api).fetch(
        "SELECT event FROM payment_events WHERE payment_intent_id = $1 ORDER BY id",
        uuid.UUID(payment["id"]),
    )
    assert [e["event"] for e in events][-2:] == ["expire", "received_late"]

    # Redelivered: a duplicate. The inquiry round no longer asks about it.
    before = await state(api)
    assert (await flow.ipn(api, reference, 200))["duplicate"] is True
    settled = await inquiry.run_round(
        pool_of(api),
        api.app[GATEWAYS],
        ["easypaisa"],
        dt.datetime.now(dt.UTC),
        default_bp=0,
    )
    assert settled == 0
    assert await state(api) == before
    # A staff refund of a closed payment is refused; it is finance's item.
    await api.post(
        f"/api/v1/payments/{payment['id']}/refunds",
        {"amount_minor": 1000},
        token=clinic.staff_token,
        expect=409,
    )

    done = await api.post(
        f"/api/v1/refunds/{owed[0]['id']}/refunded",
        {"note": "returned to 0345..., portal txn 991"},
        token=clinic.staff_token,
    )
    assert (done["status"], done["payment_status"], done["payment_refunded_minor"]) == (
        "refunded_by_hand",
        "cancelled",
        150_000,
    )
    balances = await account_balances(api, clinic)
    assert set(balances.values()) == {0}
    await flow.balanced(api, clinic)
    assert await audited(api, owed[0]["id"]) == ["payment.received_late", "payment.refund.by_hand"]


async def test_money_for_a_payment_closed_already_is_owed_back_once(served: Api) -> None:
    """The sweeper closed the payment (EasyPaisa said nothing yet), then the
    money came: the payment stays closed and the money is owed back, once,
    however often EasyPaisa reports it."""
    api = served
    clinic, token, _, payment = await paid_after_the_hold_lapsed(api)
    reference = payment["checkout"]["fields"]["orderRefNum"]
    await pool_of(api).execute(
        "UPDATE payment_intents SET status = 'cancelled' WHERE id = $1", uuid.UUID(payment["id"])
    )
    ack = await flow.ipn(api, reference, 200)
    assert ack["status"] == "cancelled"
    answer = await api.get(
        f"/api/v1/payments/{payment['id']}/return?orderRefNumber={reference}", expect=200
    )
    assert answer["status"] == "cancelled"
    refunds = await api.get(f"/api/v1/payments/{payment['id']}/refunds", token=token)
    assert [(r["kind"], r["amount_minor"]) for r in refunds] == [("late_payment", 150_000)]
    # The patient's browser is told the money came too late and goes back,
    # not that nothing was charged.
    page = await api.get(
        f"/api/v1/payments/{payment['id']}/return?orderRefNumber={reference}",
        headers={"Accept": "text/html"},
        expect=200,
    )
    assert 'data-i18n="done.late.title"' in page
    assert "done.failed" not in page
    assert await account_balances(api, clinic) == {
        "gateway_clearing:easypaisa": 150_000,
        "patient_refunds_due": -150_000,
    }


async def test_the_refund_endpoints_are_documented(served: Api) -> None:
    paths = (await served.get("/api/v1/openapi.json"))["paths"]
    assert "get" in paths["/api/v1/payments/{payment_id}/refunds"]
    assert "post" in paths["/api/v1/payments/{payment_id}/refunds"]
    assert "202" in paths["/api/v1/payments/{payment_id}/refunds"]["post"]["responses"]
    assert "get" in paths["/api/v1/clinics/{clinic_id}/refunds"]
    marked = paths["/api/v1/refunds/{refund_id}/refunded"]["post"]
    assert {"200", "404", "409", "422"} <= set(marked["responses"])


async def test_the_inquiry_round_settles_late_money_once_then_stops_asking(served: Api) -> None:
    """The IPN was lost and the hold lapsed: the round finds the money, owes
    it back, and the payment leaves 'processing', so no round asks again."""
    api = served
    clinic, _, booking, payment = await paid_after_the_hold_lapsed(api)

    async def round_() -> int | None:
        return await inquiry.run_round(
            pool_of(api),
            api.app[GATEWAYS],
            ["easypaisa"],
            dt.datetime.now(dt.UTC),
            default_bp=1500,
        )

    assert await round_() == 1
    assert (await flow.intent(api, payment["id"]))["status"] == "cancelled"
    before = await state(api)
    assert await round_() == 0
    assert await state(api) == before
    assert await account_balances(api, clinic) == {
        "gateway_clearing:easypaisa": 150_000,
        "patient_refunds_due": -150_000,
    }
    assert await booking_status(api, booking) == "expired"


def test_money_owed_back_and_sent_back_balance_and_cancel_out() -> None:
    amount = Money(150_000, Currency.PKR)
    owed = ledger.owed_back("easypaisa", amount, "r1")
    sent = ledger.owed_back_sent("easypaisa", amount, "r1")
    assert (owed.kind, owed.reference) == ("adjustment", "late_payment:r1")
    assert (sent.kind, sent.reference) == ("adjustment", "late_payment_refund:r1")
    assert ledger.balances([owed]) == {
        ("gateway_clearing:easypaisa", Currency.PKR): 150_000,
        (ledger.PATIENT_REFUNDS_DUE, Currency.PKR): -150_000,
    }
    assert set(ledger.balances([owed, sent]).values()) == {0}
    with pytest.raises(ValueError, match="positive"):
        ledger.owed_back("easypaisa", Money(0, Currency.PKR), "r2")
