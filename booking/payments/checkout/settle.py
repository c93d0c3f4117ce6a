"""A paid checkout settled in one statement: the webhook's common case.

Nearly every webhook says one thing: the patient paid for a booking that is
still held. The general path (:func:`.checkout.verdicts.apply_verdict` in a
transaction) applies it in seven round trips: begin, record the delivery and
lock the intent, move the intent, post the capture, move the booking, record
the booking's history and event, commit. Here it takes two, with no
transaction of our own:

1. a plain read of the intent, its booking, the commission terms and whether
   the delivery was seen (:data:`_READ`);
2. the same cores as the general path decide (the intent's transition
   table, the amount check, :func:`.ledger.capture`, the booking's
   lifecycle), and one statement writes everything they decided.

The statement applies whole or not at all, which is what the general path's
transaction gave:

* ``held`` locks the booking ``FOR UPDATE`` if it is still held (a booking
  that moved since the read no longer matches, PostgreSQL re-checks the
  newest version);
* ``moved`` moves the intent only from the state read, only while the
  delivery is not recorded, and only if ``held`` found the booking; every
  other write hangs off ``moved`` (the booking's off ``paid``: held and
  moved), so when either finds nothing, nothing is written;
* the delivery and the capture are plain inserts: a concurrent delivery of
  the same event, or a capture already posted, aborts the statement on its
  unique key instead of being skipped.

A bank statement's credit (:mod:`.transfers.reconcile`) settles the same way
with no delivery to record (the credit's own row is its record): a
:class:`Credit` limits it to its clinic's transfer and a hold that has not
lapsed, and adds ``payment.bank_transfer.confirmed`` to the events.

Whenever the statement writes nothing or aborts on a constraint, and for
every other case (a failure, a duplicate the read could not see, an intent
no longer live, a booking no longer held, an amount that does not match),
:func:`settle` answers None and the caller takes the general path, which
gives each of those its own answer. So this module decides nothing the
general path would decide otherwise; it only writes the same rows sooner.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from uuid import UUID

import asyncpg

from booking.bookings import transitions as bookings
from booking.lifecycle import BookingState
from booking.payments.errors import AmountMismatch
from booking.payments.gateway import Verdict, WebhookEvent
from booking.payments.intent import LIVE_STATES, IntentEvent, IntentState, transition
from booking.payments.rows import (
    COMMISSION,
    INTENT_COLUMNS,
    capture_of,
    ledger_posting,
    money,
    payment_payload,
)
from wadud.messaging import outbox
from wadud.state.db import Args

__all__ = ["Credit", "Settled", "settle"]

log = logging.getLogger("wadud.payments.settle")

#: The intent with what settling it needs ($1 the receiving gateway's name,
#: $2 the event id, NULL for a bank credit, $3 the intent's gateway, $4 its
#: reference there): the booking's status, hold and payload columns, the
#: commission terms, and whether this delivery was recorded.
_READ: Final = f"""
    SELECT {", ".join("i." + c.strip() for c in INTENT_COLUMNS.split(","))},
           EXISTS (SELECT 1 FROM webhook_events w
                   WHERE w.gateway = $1 AND w.event_id = $2) AS seen,
           b.status AS booking_status, b.doctor_id AS booking_doctor_id,
           b.type AS booking_type, b.starts_at AS booking_starts_at,
           b.ends_at AS booking_ends_at, b.price_minor AS booking_price_minor,
           b.currency AS booking_currency, b.instant AS booking_instant,
           b.phone_pin AS booking_phone_pin, b.patient_id AS booking_patient_id,
           b.hold_expires_at AS booking_hold_expires_at,
           t.*
    FROM payment_intents i
    JOIN bookings b ON b.id = i.booking_id
    JOIN LATERAL (SELECT {COMMISSION} WHERE c.id = i.clinic_id) t ON true
    WHERE i.gateway = $3 AND i.gateway_ref = $4"""


@dataclass(frozen=True, slots=True)
class Credit:
    """Money a bank statement shows for a transfer: no delivery proves it,
    so it settles only ``clinic_id``'s transfer, only before the booking's
    hold lapses, and announces ``topic`` (the payment's payload with
    ``extra``) beside ``payment.succeeded``."""

    clinic_id: UUID
    topic: str
    extra: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Settled:
    """What :func:`settle` did: ``duplicate`` (the delivery was recorded
    before; nothing written) or the intent now ``succeeded``."""

    duplicate: bool
    payment_id: UUID | None = None
    status: str | None = None


async def settle(
    conn: asyncpg.Connection,
    receiver: str,
    event: WebhookEvent | Credit,
    verdict: Verdict,
    *,
    default_bp: int,
    now: dt.datetime,
) -> Settled | None:
    """Apply a verified webhook, or a bank credit, the short way if it is
    the common case (see the module docstring); None: take the general path.
    ``receiver``: the name of the gateway whose endpoint received the
    delivery (it keys the recorded deliveries); ``verdict``: the event's, as
    the general path reads it (:meth:`.gateway.Verdict.of_webhook`)."""
    if verdict.event is not IntentEvent.VERIFIED_SUCCESS:
        return None
    delivery = event.event_id if isinstance(event, WebhookEvent) else None
    row = await conn.fetchrow(_READ, receiver, delivery, verdict.gateway, verdict.reference)
    if row is None:
        return None  # unknown reference: the general path says so
    if row["seen"]:
        return Settled(duplicate=True)
    state = IntentState(row["status"])
    if state not in LIVE_STATES or row["booking_status"] != BookingState.HELD.value:
        return None
    if isinstance(event, Credit) and (
        row["clinic_id"] != event.clinic_id
        or row["booking_hold_expires_at"] is None
        or row["booking_hold_expires_at"] <= now
    ):
        return None
    try:
        verdict.check_amount(money(row))
    except AmountMismatch:
        return None  # the general path logs and refuses it
    args = Args()
    sql = _statement(row, receiver, event, verdict, state, default_bp, now, args)
    try:
        settled = await conn.fetchrow(sql, *args.values)
    except asyncpg.IntegrityConstraintViolationError as exc:
        # A race the guards cannot see from here (a concurrent delivery of
        # this event, a capture already posted): nothing was written.
        log.info(
            "settling in one statement gave way to the general path",
            extra={"payment_id": str(row["id"]), "constraint": exc.constraint_name},
        )
        return None
    if settled is None:
        return None  # the intent or the booking moved since the read
    outbox.written(conn)
    return Settled(duplicate=False, payment_id=settled["id"], status=settled["status"])


def _statement(
    row: asyncpg.Record,
    receiver: str,
    event: WebhookEvent | Credit,
    verdict: Verdict,
    state: IntentState,
    default_bp: int,
    now: dt.datetime,
    args: Args,
) -> str:
    """The one statement (see the module docstring), its values in ``args``."""
    # The intent's history, as apply_verdict writes it: a verdict proves the
    # patient reached the checkout, so a checkout not yet handed out is
    # moved there first.
    steps: list[tuple[IntentEvent, IntentState, IntentState, Mapping[str, object]]] = []
    if state is IntentState.REQUIRES_PAYMENT:
        nxt = transition(state, IntentEvent.REDIRECT)
        steps.append((IntentEvent.REDIRECT, state, nxt, {"implied_by": verdict.source}))
        state = nxt
    succeeded = transition(state, IntentEvent.VERIFIED_SUCCESS)
    steps.append((IntentEvent.VERIFIED_SUCCESS, state, succeeded, verdict.detail))
    capture = capture_of(row, row["booking_doctor_id"], row, default_bp)
    booking = {
        "id": row["booking_id"],
        "clinic_id": row["clinic_id"],
        "doctor_id": row["booking_doctor_id"],
        "patient_id": row["booking_patient_id"],
        "type": row["booking_type"],
        "starts_at": row["booking_starts_at"],
        "ends_at": row["booking_ends_at"],
        "price_minor": row["booking_price_minor"],
        "currency": row["booking_currency"],
        "instant": row["booking_instant"],
        "phone_pin": row["booking_phone_pin"],
    }
    confirm_sql, booking_event = bookings.confirm_paid(
        booking, {"payment_id": str(row["id"])}, now, args, gate="paid"
    )
    posting = ledger_posting(
        capture,
        args,
        clinic_id=row["clinic_id"],
        reference=capture.reference,
        payment_intent_id=row["id"],
        booking_id=row["booking_id"],
        source="moved",
        skip_duplicate=False,
    )
    # Every column of the payment's payload but the state is the row's own.
    paid_row = {**dict(row), "status": succeeded.value}
    events = [("payment.succeeded", payment_payload(paid_row)), booking_event]
    if isinstance(event, WebhookEvent):
        unseen = f"""AND NOT EXISTS (SELECT 1 FROM webhook_events
                              WHERE gateway = {args(receiver)}
                                AND event_id = {args(event.event_id)})"""
        record = f"""delivery AS (
            INSERT INTO webhook_events (gateway, event_id, payload)
            SELECT {args(receiver)}, {args(event.event_id)}, {args(dict(event.payload))}::jsonb
            FROM moved),"""
        live = ""
    else:
        # The credit's row is its record; the hold must still be running.
        unseen = record = ""
        live = f"AND hold_expires_at > {args(now)}"
        events.append((event.topic, payment_payload(paid_row, **event.extra)))
    sql = f"""
        WITH held AS (
            SELECT id FROM bookings
            WHERE id = {args(row["booking_id"])} AND status = {args(BookingState.HELD.value)} {live}
            FOR UPDATE),
        moved AS (
            UPDATE payment_intents SET status = {args(succeeded.value)}, updated_at = now()
            WHERE id = {args(row["id"])} AND status = {args(row["status"])}
              AND EXISTS (SELECT 1 FROM held)
              {unseen}
            RETURNING {INTENT_COLUMNS}),
        paid AS (
            SELECT h.id FROM held AS h JOIN moved AS m ON m.booking_id = h.id),
        {record}
        history AS (
            INSERT INTO payment_events
                (payment_intent_id, clinic_id, event, from_state, to_state, detail)
            SELECT m.id, m.clinic_id, x.event, x.from_state, x.to_state, x.detail
            FROM moved AS m,
                 unnest({args([s[0].value for s in steps])}::text[],
                        {args([s[1].value for s in steps])}::text[],
                        {args([s[2].value for s in steps])}::text[],
                        {args([s[3] for s in steps])}::jsonb[])
                     WITH ORDINALITY AS x(event, from_state, to_state, detail, n)
            ORDER BY x.n),
        {posting},
        {confirm_sql}"""
    cte, more = outbox.events(events, args.next, source="moved")
    args.values.extend(more)
    return f"{sql},\n        {cte}\n        SELECT id, status FROM moved"
