"""The inbox trigger copies exactly the events the planner acts on
(:data:`notify.plan.INBOX`), and the planner plans nothing for what the
trigger leaves out."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import asyncpg

from notify.plan import INBOX, Context, InboxEvent, PlanSettings, plan_event
from tests.conftest import Api
from wadud.state import keys

_GATEWAYS = ("sandbox", "easypaisa", "bank_transfer")
#: Topics the features write that the notifier has nothing to say about.
_SILENT = ("payment.created", "payment.cancelled", "booking.held", "payout_batch.created")


def _wanted(topic: str, gateway: str) -> bool:
    only = INBOX.get(topic, "never")
    if only is None:
        return True
    if only.startswith("!"):
        return gateway != only[1:]
    return gateway == only


async def test_the_trigger_copies_exactly_the_planned_topics(api: Api) -> None:
    pool: asyncpg.Pool = api.app[keys.DB]
    sent: dict[int, tuple[str, str]] = {}
    for topic in [*INBOX, *_SILENT]:
        for gateway in _GATEWAYS:
            payload = {"gateway": gateway, "booking_id": str(uuid.uuid4())}
            row_id = await pool.fetchval(
                "INSERT INTO outbox (topic, payload) VALUES ($1, $2::jsonb) RETURNING id",
                topic,
                payload,
            )
            sent[row_id] = (topic, gateway)
    copied = {
        r["event_id"]
        for r in await pool.fetch(
            "SELECT event_id FROM notify_inbox WHERE event_id = ANY($1::bigint[])", list(sent)
        )
    }
    for row_id, (topic, gateway) in sent.items():
        assert (row_id in copied) == _wanted(topic, gateway), (topic, gateway)


def test_the_planner_is_silent_on_what_the_trigger_leaves_out() -> None:
    patient = uuid.uuid4()
    ctx = Context(patient_id=patient, patient_name="P", doctor_name="D")
    data = {
        "gateway": "bank_transfer",
        "amount_minor": 150_000,
        "currency": "PKR",
        "payment_id": str(uuid.uuid4()),
        "booking_id": str(uuid.uuid4()),
        "reference": "WDABCDE",
    }
    at = dt.datetime.now(dt.UTC)
    for topic, gateway in [
        ("payment.succeeded", "bank_transfer"),
        ("payment.expired", "sandbox"),
        ("payment.expired", "easypaisa"),
        *((t, "sandbox") for t in _SILENT),
    ]:
        event = InboxEvent(1, topic, json.loads(json.dumps({**data, "gateway": gateway})), at)
        assert not plan_event(event, ctx, PlanSettings()).jobs, (topic, gateway)
    # ... and plans for what it takes.
    for topic in ("payment.bank_transfer.requested", "payment.bank_transfer.confirmed"):
        assert plan_event(InboxEvent(1, topic, data, at), ctx, PlanSettings()).jobs, topic
