"""The notifier's SQL: the inbox, the schedule (``notify_jobs``), the
delivery log, and the few facts it reads from other features' tables.

Every claim is ``FOR UPDATE SKIP LOCKED``, so any number of notifiers share
the work and no row is handled by two at once. The other features' tables
are read, never written, and only for what an event does not carry: names,
a doctor's user id, a conversation's members, and whether a booking still
stands or a chat message is still unread when its job falls due.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from notify.plan import Context, Delivery, Device, InboxEvent, Job, Plan, Preferences, Recipient
from wadud.messaging import loops
from wadud.state.rows import from_row

__all__ = [
    "add_deliveries",
    "audiences",
    "claim_delivery",
    "claim_events",
    "claim_jobs",
    "context_for",
    "contexts_for",
    "delete_events",
    "device",
    "finish_jobs",
    "recipient",
    "save_plans",
    "still_wanted",
]

Conn: TypeAlias = asyncpg.Connection


async def claim_events(conn: Conn, limit: int) -> list[InboxEvent]:
    # The outbox row (while the relay keeps it) holds the event's trace context.
    rows = await conn.fetch(
        """SELECT i.event_id, i.topic, i.payload, i.at, o.trace FROM notify_inbox i
           LEFT JOIN outbox o ON o.id = i.event_id
           ORDER BY i.event_id LIMIT $1 FOR UPDATE OF i SKIP LOCKED""",
        limit,
    )
    return [InboxEvent(r["event_id"], r["topic"], r["payload"], r["at"], r["trace"]) for r in rows]


async def delete_events(conn: Conn, ids: Sequence[int]) -> None:
    await conn.execute("DELETE FROM notify_inbox WHERE event_id = ANY($1::bigint[])", list(ids))


def _uuid(value: Any) -> UUID | None:
    try:
        return UUID(str(value)) if value else None
    except ValueError:
        return None


async def _name(conn: Conn, user_id: UUID | None) -> str:
    if user_id is None:
        return ""
    # A doctor is known by their public name; anyone else by their account's.
    name = await conn.fetchval(
        """SELECT coalesce(nullif(d.display_name, ''), u.display_name)
           FROM users u LEFT JOIN doctors d ON d.user_id = u.id WHERE u.id = $1""",
        user_id,
    )
    return str(name or "")


def _about_a_booking(event: InboxEvent) -> bool:
    return event.topic.startswith("booking.") or event.topic in ("call.waiting", "call.incoming")


async def contexts_for(conn: Conn, events: Sequence[InboxEvent]) -> list[Context]:
    """:func:`context_for` of each event, in order; the people of every
    booking event of the batch in one round trip."""
    about = [e for e in events if _about_a_booking(e)]
    people = dict(zip(map(id, about), await _booking_people(conn, about), strict=True))
    return [people[id(e)] if id(e) in people else await context_for(conn, e) for e in events]


async def _booking_people(conn: Conn, events: Sequence[InboxEvent]) -> list[Context]:
    """The patient and doctor of each booking event, by the ids it carries;
    an event lacking either id takes both from its booking, when there is
    one. One round trip for all of them."""
    if not events:
        return []
    rows = await conn.fetch(
        """SELECT p.i, w.patient_id, d.user_id, d.display_name,
                  d.id IS NOT NULL AS found,
                  (SELECT coalesce(nullif(pd.display_name, ''), u.display_name)
                   FROM users u LEFT JOIN doctors pd ON pd.user_id = u.id
                   WHERE u.id = w.patient_id) AS patient_name
           FROM unnest($1::int[], $2::uuid[], $3::uuid[], $4::uuid[])
                AS p(i, booking, patient, doctor)
           LEFT JOIN bookings b
                  ON b.id = p.booking AND (p.patient IS NULL OR p.doctor IS NULL)
           CROSS JOIN LATERAL (
               SELECT CASE WHEN b.id IS NULL THEN p.patient ELSE b.patient_id END,
                      CASE WHEN b.id IS NULL THEN p.doctor ELSE b.doctor_id END
           ) AS w(patient_id, doctor_id)
           LEFT JOIN doctors d ON d.id = w.doctor_id
           ORDER BY p.i""",
        list(range(len(events))),
        [_uuid(e.data.get("booking_id")) for e in events],
        [_uuid(e.data.get("patient_id")) for e in events],
        [_uuid(e.data.get("doctor_id")) for e in events],
    )
    return [
        Context(
            patient_id=r["patient_id"],
            patient_name=str(r["patient_name"] or ""),
            doctor_user_id=r["user_id"] if r["found"] else None,
            doctor_name=str(r["display_name"]) if r["found"] else "",
        )
        for r in rows
    ]


async def context_for(conn: Conn, event: InboxEvent) -> Context:
    """The people an event concerns, looked up by the ids it carries."""
    d = event.data
    if _about_a_booking(event):
        (people,) = await _booking_people(conn, [event])
        return people
    if event.topic.startswith("payment."):
        return Context(patient_id=_uuid(d.get("patient_id")))
    if event.topic == "invite.created":
        clinic = _uuid(d.get("clinic_id"))
        if clinic is None:
            return Context()
        zone = await conn.fetchval(f"SELECT {_REGION_ZONE} FROM clinics c WHERE c.id = $1", clinic)
        return Context(clinic_zone=zone)
    if event.topic == "chat.message.sent":
        conversation = _uuid(d.get("conversation_id"))
        sender = _uuid(d.get("sender_id"))
        if conversation is None or sender is None:
            return Context()
        rows = await conn.fetch(
            """SELECT c.patient_id AS user_id FROM chat_conversations c WHERE c.id = $1
               UNION SELECT d.user_id FROM chat_conversations c
                     JOIN doctors d ON d.id = c.doctor_id WHERE c.id = $1
               UNION SELECT m.user_id FROM chat_members m WHERE m.conversation_id = $1""",
            conversation,
        )
        role = await conn.fetchval("SELECT role FROM users WHERE id = $1", sender)
        return Context(
            chat_recipients=sorted(
                (r["user_id"] for r in rows if r["user_id"] not in (None, sender)), key=str
            ),
            sender_name=await _name(conn, sender),
            sender_role=str(role or ""),
        )
    return Context()


async def save_plans(conn: Conn, plans: Sequence[Plan]) -> None:
    """Store the plans of a batch of events, in their order: the jobs of
    consecutive plans go in one statement, and a plan that cancels reminders
    first stores what came before it (a cancellation then sees the reminders
    an earlier event of the batch scheduled)."""
    jobs: list[Job] = []
    for plan in plans:
        if plan.cancel_reminders is not None:
            await _insert_jobs(conn, jobs)
            jobs = []
            await conn.execute(
                """UPDATE notify_jobs SET state = 'cancelled', done_at = now()
                   WHERE booking_id = $1 AND state = 'scheduled'
                     AND template IN ('reminder_24h', 'reminder_15m')
                     AND ($2::text IS NULL OR params->>'starts_at' <> $2)""",
                plan.cancel_reminders,
                plan.keep,
            )
        jobs.extend(plan.jobs)
    await _insert_jobs(conn, jobs)


async def _insert_jobs(conn: Conn, jobs: Sequence[Job]) -> None:
    if not jobs:
        return
    await conn.execute(
        """INSERT INTO notify_jobs (key, event_id, recipient_id, template, params,
                                    booking_id, due_at, expires_at, channel, address)
           SELECT j.key, j.event_id, j.recipient_id, j.template, j.params::jsonb,
                  j.booking_id, j.due_at, j.expires_at, j.channel, j.address
           FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::text[],
                       $6::uuid[], $7::timestamptz[], $8::timestamptz[], $9::text[],
                       $10::text[])
                AS j(key, event_id, recipient_id, template, params, booking_id, due_at,
                     expires_at, channel, address)
           WHERE j.recipient_id IS NULL OR EXISTS (SELECT 1 FROM users WHERE id = j.recipient_id)
           ON CONFLICT (key) DO NOTHING""",
        [j.key for j in jobs],
        [j.event_id for j in jobs],
        [j.recipient_id for j in jobs],
        [j.template for j in jobs],
        [_json(dict(j.params)) for j in jobs],
        [j.booking_id for j in jobs],
        [j.due_at for j in jobs],
        [j.expires_at for j in jobs],
        [j.channel for j in jobs],
        [j.address for j in jobs],
    )


def _json(value: Any) -> str:
    """JSON as the pool's jsonb codec writes it (wadud.state.db)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def claim_jobs(conn: Conn, now: dt.datetime, limit: int) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            """SELECT * FROM notify_jobs WHERE state = 'scheduled' AND due_at <= $1
               ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED""",
            now,
            limit,
        )
    )


def job_of(row: asyncpg.Record) -> Job:
    return from_row(Job, row)


async def still_wanted(conn: Conn, job: Job, chat_delay: float) -> bool:
    """Whether a due job still has something to say: a reminder's booking
    still stands at the time it names; a chat message is still unread and its
    recipient was not told about this conversation moments ago."""
    p = job.params
    if job.template in ("reminder_24h", "reminder_15m"):
        row = await conn.fetchrow(
            "SELECT status, starts_at FROM bookings WHERE id = $1", job.booking_id
        )
        return (
            row is not None
            and row["status"] in ("requested", "accepted")
            and row["starts_at"] == dt.datetime.fromisoformat(str(p["starts_at"]))
        )
    if job.template == "chat_message":
        conversation = _uuid(p.get("conversation_id"))
        read = await conn.fetchval(
            """SELECT last_read_seq FROM chat_members
               WHERE conversation_id = $1 AND user_id = $2""",
            conversation,
            job.recipient_id,
        )
        if read is not None and int(read) >= int(p.get("seq") or 0):
            return False
        told = await conn.fetchval(
            """SELECT 1 FROM notify_jobs
               WHERE recipient_id = $1 AND template = 'chat_message' AND state = 'done'
                 AND params->>'conversation_id' = $2
                 AND done_at > now() - make_interval(secs => $3)""",
            job.recipient_id,
            str(conversation),
            chat_delay,
        )
        return told is None
    if job.template == "guest_invite":
        # An invitation taken back (or refused by the patient) before it went
        # out: its link is dead, so the guest is not told of it.
        dead = await conn.fetchval(
            """SELECT 1 FROM room_invites
               WHERE id = $1 AND status IN ('refused', 'revoked')""",
            _uuid(p.get("invite_id")),
        )
        return dead is None
    return True


#: The time zone of a clinic's region (``c``), for people who set none.
_REGION_ZONE = """CASE c.region WHEN 'PK' THEN 'Asia/Karachi' WHEN 'AE' THEN 'Asia/Dubai'
                     WHEN 'QA' THEN 'Asia/Qatar' WHEN 'SA' THEN 'Asia/Riyadh' END"""

_RECIPIENT = f"""
SELECT u.id, u.email, u.phone, u.locale, u.display_name,
       coalesce(u.time_zone, d.time_zone, {_REGION_ZONE}) AS time_zone{{more}}
FROM users u
LEFT JOIN doctors d ON d.user_id = u.id
LEFT JOIN clinics c ON c.id = u.clinic_id{{join}}
WHERE u.id = $1 AND NOT u.disabled"""


def _recipient(row: asyncpg.Record) -> Recipient:
    return from_row(Recipient, row, display_name=row["display_name"] or "")


async def recipient(conn: Conn, user_id: UUID) -> Recipient | None:
    row = await conn.fetchrow(_RECIPIENT.format(more="", join=""), user_id)
    return None if row is None else _recipient(row)


async def audiences(
    conn: Conn, user_ids: Iterable[UUID]
) -> dict[UUID, tuple[Recipient, Preferences, list[Device]]]:
    """:func:`recipient`, :func:`preferences` and :func:`devices` of each user
    at once (one round trip for a batch of jobs); users gone or disabled are
    missing from the answer."""
    rows = await conn.fetch(
        _RECIPIENT.format(
            more=""",
       p.user_id IS NOT NULL AS has_preferences, p.channels, p.muted,
       p.quiet_start, p.quiet_end,
       (SELECT jsonb_agg(jsonb_build_object('id', v.id, 'kind', v.kind, 'token', v.token,
                                            'keys', v.keys, 'voip', v.voip)
                         ORDER BY v.created_at)
        FROM notify_devices v WHERE v.user_id = u.id) AS devices""",
            join="\nLEFT JOIN notify_preferences p ON p.user_id = u.id",
        ).replace("WHERE u.id = $1", "WHERE u.id = ANY($1::uuid[])"),
        list(set(user_ids)),
    )
    found = {}
    for row in rows:
        prefs = (
            Preferences(
                channels=frozenset(row["channels"]),
                muted=frozenset(row["muted"]),
                quiet_start=row["quiet_start"],
                quiet_end=row["quiet_end"],
            )
            if row["has_preferences"]
            else Preferences()
        )
        devices = [
            Device(UUID(d["id"]), d["kind"], d["token"], d["keys"], bool(d.get("voip")))
            for d in row["devices"] or ()
        ]
        found[row["id"]] = (_recipient(row), prefs, devices)
    return found


def _device(row: asyncpg.Record) -> Device:
    return Device(row["id"], row["kind"], row["token"], row["keys"], row["voip"])


async def device(conn: Conn, device_id: str) -> Device | None:
    did = _uuid(device_id)
    if did is None:
        return None
    row = await conn.fetchrow(
        "SELECT id, kind, token, keys, voip FROM notify_devices WHERE id = $1", did
    )
    return _device(row) if row else None


async def add_deliveries(conn: Conn, job: Job, deliveries: Sequence[Delivery]) -> None:
    """Log a job's deliveries, pending, or failed untried where one says why
    it never can go. A delivery already logged (a user's on its unique key,
    a guest's by its job) is left as it is."""
    if not deliveries:
        return
    await conn.executemany(
        """INSERT INTO notify_deliveries (event_id, channel, recipient_id, target, job_key,
                                          next_attempt_at, expires_at, status, last_error)
           VALUES ($1, $2, $3, $4, $5, $6, $7,
                   CASE WHEN $8 = '' THEN 'pending' ELSE 'failed' END, nullif($8, ''))
           ON CONFLICT DO NOTHING""",
        [
            (
                job.event_id,
                d.channel,
                job.recipient_id,
                d.target,
                job.key,
                d.due_at,
                job.expires_at,
                d.failed,
            )
            for d in deliveries
        ],
    )


async def finish_jobs(conn: Conn, states: Mapping[str, str]) -> None:
    """Close jobs (key to final state) in one statement."""
    if not states:
        return
    await conn.execute(
        """UPDATE notify_jobs j SET state = f.state, done_at = now()
           FROM unnest($1::text[], $2::text[]) AS f(key, state) WHERE j.key = f.key""",
        list(states),
        list(states.values()),
    )


async def next_to_plan(conn: Conn | asyncpg.Pool, now: dt.datetime) -> float | None:
    """Seconds until there is something to plan: 0 when an inbox event
    waits, else until the next scheduled job is due (0 or less: one is),
    None when neither waits. One statement, no lock."""
    at = await conn.fetchval(
        """SELECT CASE WHEN EXISTS (SELECT 1 FROM notify_inbox) THEN $1::timestamptz
                       ELSE (SELECT min(due_at) FROM notify_jobs WHERE state = 'scheduled')
                  END""",
        now,
    )
    return loops.seconds_until(at, now)


async def next_delivery_due(conn: Conn | asyncpg.Pool, now: dt.datetime) -> float | None:
    """Seconds until the next pending delivery comes due (what
    :func:`claim_delivery` looks for; 0 or less: one is due), None when none
    is pending. One statement, no lock."""
    at = await conn.fetchval(
        "SELECT min(next_attempt_at) FROM notify_deliveries WHERE status = 'pending'"
    )
    return loops.seconds_until(at, now)


async def claim_delivery(conn: Conn, now: dt.datetime) -> asyncpg.Record | None:
    """The next due delivery, locked until the caller's transaction ends."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """SELECT d.*, j.template, j.params, j.address FROM notify_deliveries d
           JOIN notify_jobs j ON j.key = d.job_key
           WHERE d.status = 'pending' AND d.next_attempt_at <= $1
           ORDER BY d.next_attempt_at LIMIT 1 FOR UPDATE OF d SKIP LOCKED""",
        now,
    )
    return row


async def record_attempt(
    conn: Conn,
    delivery_id: int,
    attempt: int,
    *,
    status: str,
    ok: bool,
    detail: str,
    next_attempt_at: dt.datetime | None = None,
) -> None:
    await conn.execute(
        """UPDATE notify_deliveries
           SET status = $2, attempts = $3, last_error = CASE WHEN $4 THEN NULL ELSE $5 END,
               sent_at = CASE WHEN $2 = 'sent' THEN clock_timestamp() END,
               next_attempt_at = coalesce($6, next_attempt_at)
           WHERE id = $1""",
        delivery_id,
        status,
        attempt,
        ok,
        detail[:1000],
        next_attempt_at,
    )
    await conn.execute(
        """INSERT INTO notify_attempts (delivery_id, attempt, ok, detail)
           VALUES ($1, $2, $3, $4)""",
        delivery_id,
        attempt,
        ok,
        detail[:1000],
    )
