"""The notifier's part of a patient's data rights and of retention
(:mod:`privacy.rights`, :mod:`privacy.retention`).

Jobs carry rendered parameters, among them the other party's name (a
doctor's reminder names the patient), so erasure removes every job and
delivery addressed to the patient or about their bookings and
conversations, the events about them still waiting in the notifier's inbox,
and their devices and preferences. Retention removes finished jobs (with
their deliveries and attempts: the delivery log) after
``retention_notify_days``.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from privacy.retention import RoundContext, Rule
from privacy.rights import Erased, Part, Subject, records

__all__ = ["NotifyProvider", "retention_rules"]

# Jobs addressed to the subject, or about one of their bookings or
# conversations ($1: the subject). Evaluated before chat's provider deletes
# the conversations: the providers run in the order the assembly registers.
_ABOUT = """
    recipient_id = $1
    OR booking_id IN (SELECT id FROM bookings WHERE patient_id = $1)
    OR params->>'booking_id' IN (SELECT id::text FROM bookings WHERE patient_id = $1)
    OR params->>'conversation_id' IN
       (SELECT id::text FROM chat_conversations WHERE patient_id = $1)
"""


class NotifyProvider:
    name = "notify"

    async def export(self, conn: asyncpg.Connection, subject: Subject) -> Sequence[Part]:
        prefs = await conn.fetch(
            """SELECT channels, muted, quiet_start, quiet_end, updated_at
               FROM notify_preferences WHERE user_id = $1""",
            subject.user_id,
        )
        devices = await conn.fetch(
            """SELECT id, kind, created_at FROM notify_devices
               WHERE user_id = $1 ORDER BY created_at""",
            subject.user_id,
        )
        sent = await conn.fetch(
            """SELECT d.channel, d.status, d.attempts, d.created_at, d.sent_at, j.template
               FROM notify_deliveries d JOIN notify_jobs j ON j.key = d.job_key
               WHERE d.recipient_id = $1 ORDER BY d.id""",
            subject.user_id,
        )
        return [
            Part("preferences", records(prefs)),
            Part("devices", records(devices)),
            Part("deliveries", records(sent)),
        ]

    async def erase(self, conn: asyncpg.Connection, subject: Subject) -> Erased:
        uid = subject.user_id
        out = Erased()
        # Deliveries and attempts go with their jobs (ON DELETE CASCADE).
        status = await conn.execute(f"DELETE FROM notify_jobs WHERE {_ABOUT}", uid)
        out.counts["jobs"] = int(status.split()[-1])
        status = await conn.execute(
            """DELETE FROM notify_inbox WHERE strpos(payload::text, $2) > 0
               OR payload->>'booking_id' IN
                  (SELECT id::text FROM bookings WHERE patient_id = $1)
               OR payload->>'conversation_id' IN
                  (SELECT id::text FROM chat_conversations WHERE patient_id = $1)""",
            uid,
            str(uid),
        )
        out.counts["inbox"] = int(status.split()[-1])
        status = await conn.execute("DELETE FROM notify_devices WHERE user_id = $1", uid)
        out.counts["devices"] = int(status.split()[-1])
        await conn.execute("DELETE FROM notify_preferences WHERE user_id = $1", uid)
        return out


async def _finished_jobs(conn: asyncpg.Connection, ctx: RoundContext, days: float) -> int:
    return await ctx.delete_batched(
        conn,
        "notify_jobs",
        "state <> 'scheduled' AND COALESCE(done_at, created_at) < $1"
        " AND NOT EXISTS (SELECT 1 FROM notify_deliveries d"
        "                 WHERE d.job_key = notify_jobs.key AND d.status = 'pending')",
        ctx.days_ago(days),
    )


def retention_rules() -> list[Rule]:
    return [
        Rule(
            "notify_log",
            "Notifications sent: finished jobs, their deliveries and attempts",
            "retention_notify_days",
            _finished_jobs,
        )
    ]
