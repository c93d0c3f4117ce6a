"""Booking's part of a patient's data rights and of retention
(:mod:`privacy.rights`, :mod:`privacy.retention`).

Export: the patient's bookings (with doctor and clinic names), their state
history, instant-queue entries, reviews, payments, refunds, and the calls
the phone bridge placed to them.

Erasure keeps every row the ledger and the doctors' schedules stand on
(bookings, payment intents, refunds: amounts, times, states) and removes
what is personal in them: free text (cancel reasons, queue notes, review
text, refund reasons, failure messages), the manage-link hash, the gateway's
checkout form and return URL, and the gateway's webhook payloads for the
patient's payments. The patient id that remains names an account with
nothing personal left in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import asyncpg

from privacy.retention import RoundContext, Rule
from privacy.rights import Erased, Part, Subject, records

__all__ = ["BookingProvider", "retention_rules"]


#: What erasure changes, in order: (the kind it is counted as, a statement on
#: the patient's rows, whose id is $1).
_SCRUBS: Final = (
    (
        "bookings",
        """UPDATE bookings SET cancel_reason = NULL, manage_token_hash = NULL
           WHERE patient_id = $1""",
    ),
    # booking_events is the bookings' own history: keep the transitions,
    # drop any free text (a cancel reason) from their detail.
    (
        "booking_events",
        """UPDATE booking_events e SET detail = e.detail - 'reason'
           FROM bookings b
           WHERE b.id = e.booking_id AND b.patient_id = $1 AND e.detail ? 'reason'""",
    ),
    (
        "instant_queue",
        """UPDATE instant_queue SET note = '',
               status = CASE status WHEN 'waiting' THEN 'left' ELSE status END
           WHERE patient_id = $1""",
    ),
    ("reviews", "UPDATE reviews SET body = '' WHERE patient_id = $1 AND body <> ''"),
    # The gateway's payloads for this patient's payments (they may carry
    # the payer's phone or email) are replaced; the row stays so a
    # redelivered webhook is still recognised as seen.
    (
        "webhook_events",
        """UPDATE webhook_events w SET payload = '{"erased": true}'::jsonb
           FROM payment_intents p
           WHERE p.patient_id = $1 AND p.gateway = w.gateway
             AND p.gateway_ref IS NOT NULL
             AND strpos(w.payload::text, p.gateway_ref) > 0""",
    ),
    (
        "payment_events",
        """UPDATE payment_events e SET detail = '{}'::jsonb
           FROM payment_intents p
           WHERE p.id = e.payment_intent_id AND p.patient_id = $1
             AND e.detail <> '{}'::jsonb""",
    ),
    (
        "payments",
        """UPDATE payment_intents SET checkout_url = NULL, checkout_fields = '{}',
               return_url = NULL, failure_reason = NULL
           WHERE patient_id = $1""",
    ),
    (
        "refunds",
        """UPDATE refunds r SET reason = '', note = ''
           FROM payment_intents p
           WHERE p.id = r.payment_intent_id AND p.patient_id = $1""",
    ),
)


class BookingProvider:
    name = "booking"

    async def export(self, conn: asyncpg.Connection, subject: Subject) -> Sequence[Part]:
        uid = subject.user_id
        bookings = await conn.fetch(
            """SELECT b.id, b.type, b.status, b.starts_at, b.ends_at, b.price_minor, b.currency,
                      b.instant, b.cancelled_by, b.cancel_reason, b.refund_minor,
                      b.created_at, b.updated_at,
                      b.doctor_id, d.display_name AS doctor_name, d.specialty,
                      b.clinic_id, c.name AS clinic_name
               FROM bookings b JOIN doctors d ON d.id = b.doctor_id
               JOIN clinics c ON c.id = b.clinic_id
               WHERE b.patient_id = $1 ORDER BY b.starts_at""",
            uid,
        )
        events = await conn.fetch(
            """SELECT e.booking_id, e.event, e.from_state, e.to_state, e.detail, e.at,
                      e.actor_id = $1 AS by_me
               FROM booking_events e JOIN bookings b ON b.id = e.booking_id
               WHERE b.patient_id = $1 ORDER BY e.id""",
            uid,
        )
        queue = await conn.fetch(
            """SELECT id, clinic_id, specialty, status, note, enqueued_at, taken_at, booking_id
               FROM instant_queue WHERE patient_id = $1 ORDER BY enqueued_at""",
            uid,
        )
        reviews = await conn.fetch(
            """SELECT id, booking_id, doctor_id, rating, body, hidden, created_at
               FROM reviews WHERE patient_id = $1 ORDER BY created_at""",
            uid,
        )
        payments = await conn.fetch(
            """SELECT id, booking_id, clinic_id, amount_minor, currency, gateway, gateway_ref,
                      status, refunded_minor, failure_reason, created_at, updated_at
               FROM payment_intents WHERE patient_id = $1 ORDER BY created_at""",
            uid,
        )
        refunds = await conn.fetch(
            """SELECT r.id, r.payment_intent_id, r.kind, r.amount_minor, r.status, r.reason,
                      r.created_at
               FROM refunds r JOIN payment_intents p ON p.id = r.payment_intent_id
               WHERE p.patient_id = $1 ORDER BY r.created_at""",
            uid,
        )
        # The calls the phone bridge placed for the patient's visits; a
        # number other than theirs (an interpreter's line) is someone else's,
        # shown as the page shows it.
        phone_calls = await conn.fetch(
            """SELECT c.id, c.booking_id,
                      CASE WHEN c.number IS NULL THEN 'patient' ELSE 'other' END AS to,
                      CASE WHEN c.number IS NULL THEN NULL
                           ELSE '••' || right(c.number, 2) END AS number,
                      c.state, c.reason, c.created_at, c.updated_at
               FROM phone_calls c JOIN bookings b ON b.id = c.booking_id
               WHERE b.patient_id = $1 ORDER BY c.created_at""",
            uid,
        )
        return [
            Part("bookings", records(bookings)),
            Part("booking_events", records(events)),
            Part("instant_queue", records(queue)),
            Part("reviews", records(reviews)),
            Part("payments", records(payments)),
            Part("refunds", records(refunds)),
            Part("phone_calls", records(phone_calls)),
        ]

    async def erase(self, conn: asyncpg.Connection, subject: Subject) -> Erased:
        uid = subject.user_id
        out = Erased()
        for kind, statement in _SCRUBS:
            out.count(kind, await conn.execute(statement, uid))
        return out


# -- retention -------------------------------------------------------------------


async def _expired_holds(conn: asyncpg.Connection, ctx: RoundContext, days: float) -> int:
    # Holds that lapsed and were never paid for: nothing of the ledger or a
    # payment points at them. Their events go with them (ON DELETE CASCADE).
    where = """status = 'expired' AND updated_at < $1
               AND NOT EXISTS (SELECT 1 FROM payment_intents p WHERE p.booking_id = bookings.id)
               AND NOT EXISTS (SELECT 1 FROM ledger_transactions t
                               WHERE t.booking_id = bookings.id)
               AND NOT EXISTS (SELECT 1 FROM chat_conversations c
                               WHERE c.booking_id = bookings.id)
               AND NOT EXISTS (SELECT 1 FROM instant_queue q WHERE q.booking_id = bookings.id)
               AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.booking_id = bookings.id)"""
    return await ctx.delete_batched(conn, "bookings", where, ctx.days_ago(days))


async def _webhooks(conn: asyncpg.Connection, ctx: RoundContext, days: float) -> int:
    return await ctx.delete_batched(conn, "webhook_events", "received_at < $1", ctx.days_ago(days))


def retention_rules() -> list[Rule]:
    return [
        Rule(
            "expired_holds",
            "Booking holds that lapsed unpaid",
            "retention_expired_holds_days",
            _expired_holds,
        ),
        Rule(
            "webhook_events",
            "Payment gateways' webhook payloads (deduplication log)",
            "retention_webhook_days",
            _webhooks,
        ),
    ]
