"""The notifier: the loops that turn events into jobs, due jobs into
deliveries, and due deliveries into emails, pushes and webhooks.

Runs as ``wadud notify`` (:func:`run`) or inside ``wadud serve``
(``notify.http.install_worker``); any number of replicas share one database.

Guarantees, and where they come from:

* In: at least once. ``notify_inbox`` is written by a trigger in the domain
  transaction (migration 0011); a batch of inbox rows is planned and deleted
  in one transaction, so a crash replays it, and job keys make the replay
  plan nothing new.
* Out: once per (event, channel, recipient, device), as a database
  invariant: the unique key of ``notify_deliveries``. A delivery is claimed
  ``FOR UPDATE SKIP LOCKED`` and marked sent *in the transaction that
  claimed it*, with the row lock held across the send. Two replicas never
  send one row; a notifier killed before its commit leaves the row pending,
  and PostgreSQL drops the lock at once when its connection dies, so the
  other replica (or the restarted one) picks it up without waiting for a
  lease. The one window left is "the provider accepted, our commit was
  lost": that delivery is sent again (at least once, not at most once), with
  the same Message-ID / apns-id / collapse key / Idempotency-Key so the far
  end can fold it. We chose this over "mark, then send" (at most once),
  which would silently lose a reminder whenever a send crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

import asyncpg
from prometheus_client import Counter, Gauge

from notify import channels, plan, store
from notify.errors import DeliveryFailed, PermanentFailure
from notify.templates import render
from wadud.config import Settings
from wadud.messaging import loops, outbox
from wadud.observe import tracing
from wadud.web import auth

log = logging.getLogger("wadud.notify")

__all__ = ["Notifier", "invite_link", "policy", "run"]

OUTCOMES = ("sent", "retried", "failed", "expired")
DELIVERIES = Counter(
    "wadud_notify_deliveries_total",
    f"Delivery attempts by channel and outcome ({', '.join(OUTCOMES)}).",
    ["channel", "outcome"],
)
BACKLOG = Gauge(
    "wadud_notify_backlog",
    "Events not yet read by a notifier (inbox), and deliveries due and not sent (due).",
    ["queue"],
)


def policy(settings: Settings) -> plan.PlanSettings:
    try:
        minutes = tuple(int(m) for m in settings.notify_reminder_minutes)
    except ValueError:
        from wadud.errors import ConfigError

        raise ConfigError("notify_reminder_minutes must be whole minutes") from None
    return plan.PlanSettings(
        reminder_minutes=minutes,
        chat_delay=settings.notify_chat_delay,
        base_url=settings.base_url,
        phone_dial_in=settings.sip_dial_in,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def invite_link(settings: Settings, params: Mapping[str, Any]) -> str:
    """The guest's link of an invitation job: made when it is sent, never
    stored (its key opens the room)."""
    invite = UUID(str(params["invite_id"]))
    room = urllib.parse.quote(str(params["room"]), safe="")
    return f"{settings.base_url}/call/{room}?invite={invite}.{auth.invite_key(settings, invite)}"


class Notifier:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        senders: dict[str, channels.Channel],
        *,
        clock: Callable[[], dt.datetime] = _now,
        batch: int = 100,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.senders = senders
        self.available = frozenset(senders)
        # Every channel's outcomes from zero, so a replica that has sent
        # nothing yet says 0 rather than nothing (a rate over a series that
        # appears mid-range misses its first increments).
        for channel in senders:
            for outcome in OUTCOMES:
                DELIVERIES.labels(channel, outcome)
        self.policy = policy(settings)
        self.clock = clock
        self.batch = batch
        self._wake = asyncio.Event()
        self._send_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener = outbox.Listener(pool, lambda _payload: self._wake.set())
        self._gauges = outbox.Gauges(self.observe)
        self._plan_ahead: float | None = None
        """Seconds from the last planning round until the next job comes due."""
        self.sent = 0

    # -- life --------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._plan_loop(), name="notify-plan"))
        for i in range(max(1, self.settings.notify_concurrency)):
            self._tasks.append(asyncio.create_task(self._send_loop(i), name=f"notify-send-{i}"))

    async def close(self) -> None:
        await loops.stopped(*self._tasks)
        self._tasks.clear()
        await self._listener.close()

    async def _plan_loop(self) -> None:
        woke = True
        while True:
            await self._listener.round(
                functools.partial(self._plan_round, woke),
                "notifier planning round failed; retrying",
                log,
            )
            self._wake.clear()
            # A scheduled job (a reminder) is planned when it comes due, not
            # at the next poll; the poll is for work no wake announced.
            interval = self.settings.notify_poll_interval
            ahead = self._plan_ahead
            wait = interval if ahead is None or ahead <= 0 else min(interval, ahead)
            woke = await loops.woken(self._wake, wait) or wait < interval

    async def _plan_round(self, woke: bool) -> None:
        # A poll no one woke asks first, in one statement outside a
        # transaction, whether an event or a due job waits (most find none),
        # and when the next job comes due.
        self._plan_ahead = None
        if not woke:
            ahead = await store.next_to_plan(self.pool, self.clock())
            if ahead is None or ahead > 0:
                self._plan_ahead = ahead
                await self._gauges.after_round(busy=False)
                return
        done = 0
        while (n := await self.plan_events()) >= self.batch:
            done += n
        done += n
        while (n := await self.expand_jobs()) >= self.batch:
            done += n
        done += n
        self._plan_ahead = await store.next_to_plan(self.pool, self.clock())
        await self._gauges.after_round(busy=done > 0)

    async def _send_loop(self, i: int) -> None:
        """Sender ``i``: every sender wakes when new deliveries are added; the
        first also looks when the next retry comes due and every poll
        interval for work no wake announced, and, finding one, wakes the
        others, so the poll is one statement rather than one per sender."""
        await loops.drain(
            self._send_first if i == 0 else self.send_one,
            self._send_wake,
            self.settings.notify_poll_interval if i == 0 else 3600.0,
            "notifier send round failed; retrying",
            log,
            due=(lambda: store.next_delivery_due(self.pool, self.clock())) if i == 0 else None,
        )

    async def _send_first(self) -> bool:
        found = await self.send_one()
        if found:
            self._send_wake.set()
        return found

    async def observe(self) -> None:
        row = await self.pool.fetchrow(
            """SELECT (SELECT count(*) FROM notify_inbox) AS inbox,
                      (SELECT count(*) FROM notify_deliveries
                       WHERE status = 'pending' AND next_attempt_at <= $1) AS due""",
            self.clock(),
        )
        assert row is not None
        BACKLOG.labels("inbox").set(row["inbox"])
        BACKLOG.labels("due").set(row["due"])

    # -- the three steps ---------------------------------------------------

    async def plan_events(self) -> int:
        """Turn one batch of inbox events into jobs; return how many events."""
        async with self.pool.acquire() as conn, conn.transaction():
            events = await store.claim_events(conn, self.batch)
            contexts = await store.contexts_for(conn, events)
            plans = []
            for event, ctx in zip(events, contexts, strict=True):
                # A consumer span in the trace of the request that wrote the
                # event; its jobs carry it on, so their sends join it too.
                with tracing.consume(
                    {"id": event.id, tracing.EVENT_KEY: event.trace},
                    f"notify plan {event.topic}",
                    {"messaging.destination.name": event.topic},
                ):
                    planned = plan.plan_event(event, ctx, self.policy)
                    if tracing.enabled():
                        carrier = {"trace": tracing.inject()}
                        planned = dataclasses.replace(
                            planned,
                            jobs=[
                                dataclasses.replace(j, params={**j.params, **carrier})
                                for j in planned.jobs
                            ],
                        )
                    plans.append(planned)
            await store.save_plans(conn, plans)
            if events:
                await store.delete_events(conn, [e.id for e in events])
        return len(events)

    async def expand_jobs(self) -> int:
        """Turn one batch of due jobs into deliveries; return how many jobs."""
        now = self.clock()
        added = False
        refused: list[tuple[plan.Job, plan.Delivery]] = []
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await store.claim_jobs(conn, now, self.batch)
            finished: dict[str, str] = {}
            wanted: list[tuple[plan.Job, UUID]] = []  # jobs for users, and the user
            for row in rows:
                job = store.job_of(row)
                if job.expires_at is not None and job.expires_at <= now:
                    finished[job.key] = "expired"
                elif not await store.still_wanted(conn, job, self.policy.chat_delay):
                    finished[job.key] = "skipped"
                elif job.recipient_id is None:
                    delivery = plan.to_guest(job, self.available, now)
                    await store.add_deliveries(conn, job, [delivery])
                    finished[job.key] = "done"
                    if delivery.failed:
                        refused.append((job, delivery))
                    added = added or not delivery.failed
                else:
                    wanted.append((job, job.recipient_id))
            # Every recipient of the batch in one round trip.
            audiences = await store.audiences(conn, (user for _, user in wanted)) if wanted else {}
            for job, user in wanted:
                found = audiences.get(user)
                if found is None:
                    finished[job.key] = "skipped"
                    continue
                who, prefs, devices = found
                deliveries = plan.expand(job, who, prefs, devices, self.available, now)
                await store.add_deliveries(conn, job, deliveries)
                finished[job.key] = "done"
                added = added or bool(deliveries)
            await store.finish_jobs(conn, finished)
        for job, delivery in refused:
            DELIVERIES.labels(delivery.channel, "failed").inc()
            log.warning(
                "notification refused for good",
                extra={"job": job.key, "channel": delivery.channel, "error": delivery.failed},
            )
        if added:
            self._send_wake.set()
        return len(rows)

    async def send_one(self) -> bool:
        """Send the next due delivery, if any; False when there was none."""
        async with self.pool.acquire() as conn, conn.transaction():
            now = self.clock()
            row = await store.claim_delivery(conn, now)
            if row is None:
                return False
            delivery_id, attempt = row["id"], row["attempts"] + 1
            if row["expires_at"] is not None and row["expires_at"] <= now:
                await conn.execute(
                    "UPDATE notify_deliveries SET status = 'expired' WHERE id = $1", delivery_id
                )
                DELIVERIES.labels(row["channel"], "expired").inc()
                return True
            try:
                detail = await self._send(conn, row)
            except PermanentFailure as exc:
                if exc.drop_device and row["target"]:
                    await conn.execute(
                        "DELETE FROM notify_devices WHERE id = $1", UUID(row["target"])
                    )
                detail = self._redact(row, exc.detail)
                await store.record_attempt(
                    conn, delivery_id, attempt, status="failed", ok=False, detail=detail
                )
                DELIVERIES.labels(row["channel"], "failed").inc()
                log.warning(
                    "notification refused for good",
                    extra={"delivery": delivery_id, "channel": row["channel"], "error": detail},
                )
                return True
            except DeliveryFailed as exc:
                detail = self._redact(row, exc.detail)
                await self._retry(conn, row, attempt, detail, exc.retry_after)
                return True
            except Exception as exc:  # a sender's bug must not stop the others
                detail = self._redact(row, f"{type(exc).__name__}: {exc}")
                # A guest's message holds its link, which a traceback may quote.
                log.error(
                    "notification send crashed",
                    exc_info=row["recipient_id"] is not None,
                    extra={"delivery": delivery_id, "error": detail},
                )
                await self._retry(conn, row, attempt, detail, None)
                return True
            await store.record_attempt(
                conn, delivery_id, attempt, status="sent", ok=True, detail=detail
            )
        self.sent += 1
        DELIVERIES.labels(row["channel"], "sent").inc()
        log.info(
            "notification sent",
            extra={"delivery": delivery_id, "channel": row["channel"], "template": row["template"]},
        )
        return True

    async def _retry(
        self,
        conn: asyncpg.Connection,
        row: asyncpg.Record,
        attempt: int,
        detail: str,
        retry_after: float | None,
    ) -> None:
        s = self.settings
        if attempt >= s.notify_max_attempts:
            await store.record_attempt(
                conn, row["id"], attempt, status="failed", ok=False, detail=detail
            )
            DELIVERIES.labels(row["channel"], "failed").inc()
            log.warning(
                "notification failed after every retry",
                extra={"delivery": row["id"], "channel": row["channel"], "error": detail},
            )
            return
        wait = plan.backoff(
            attempt, base=s.notify_backoff_base, cap=s.notify_backoff_max, retry_after=retry_after
        )
        await store.record_attempt(
            conn,
            row["id"],
            attempt,
            status="pending",
            ok=False,
            detail=detail,
            next_attempt_at=self.clock() + dt.timedelta(seconds=wait),
        )
        DELIVERIES.labels(row["channel"], "retried").inc()
        log.info(
            "notification will be retried",
            extra={"delivery": row["id"], "attempt": attempt, "in": wait, "error": detail},
        )

    def _redact(self, row: asyncpg.Record, text: str) -> str:
        """``text`` without the key of a guest's link (a provider's error may
        quote the message), for the delivery log and the log lines: the key
        wherever it is, and what follows the invite's id in the link (a
        quote cut short may end inside the key)."""
        invite = row["params"].get("invite_id") if row["recipient_id"] is None else None
        if not invite:
            return text
        text = text.replace(auth.invite_key(self.settings, UUID(str(invite))), "<invite key>")
        return re.sub(re.escape(str(invite)) + r"\.[A-Za-z0-9_-]+", f"{invite}.<invite key>", text)

    async def _send(self, conn: asyncpg.Connection, row: asyncpg.Record) -> str:
        sender = self.senders.get(row["channel"])
        if sender is None:
            raise DeliveryFailed(f"{row['channel']}: channel not configured on this notifier")
        params = row["params"]
        device = None
        if row["recipient_id"] is None:
            who = plan.guest(row["channel"], row["address"], params)
            params = {**params, "link": invite_link(self.settings, params)}
        else:
            found = await store.recipient(conn, row["recipient_id"])
            if found is None:
                raise PermanentFailure("recipient gone or disabled")
            who = found
            if row["target"]:
                device = await store.device(conn, row["target"])
                if device is None:
                    raise PermanentFailure("device removed")
        expires = row["expires_at"]
        to = row["recipient_id"] or row["address"]
        msg = channels.Outgoing(
            key=f"{row['event_id']}/{row['channel']}/{to}/{row['target']}",
            template=row["template"],
            rendered=render(row["template"], who.locale, who.time_zone, params),
            recipient=who,
            params=params,
            device=device,
            expires_at=expires.timestamp() if expires is not None else None,
        )
        trace = row["params"].get("trace") if isinstance(row["params"], dict) else None
        with tracing.span(
            f"notify send {row['channel']}",
            kind="producer",
            parent=tracing.extract(trace),
            attributes={"notify.template": row["template"], "notify.channel": row["channel"]},
        ):
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns
            # the send's result when the sender task is cancelled just as the
            # send completes, and the cancellation is lost. aiosmtplib does
            # that inside the send all the same (it waits for each reply
            # with wait_for): loops.go_on in the sender's drain ends it then.
            try:
                async with asyncio.timeout(self.settings.notify_send_timeout + 5):
                    return await sender.send(msg)
            except TimeoutError:
                raise DeliveryFailed(f"{row['channel']}: no answer in time") from None

    async def run_until_idle(self, seconds: float = 10.0) -> int:
        """Plan, expand and send until nothing is due; return how many were
        sent (tests and tools)."""
        deadline = time.monotonic() + seconds
        before = self.sent
        while time.monotonic() < deadline:
            n = await self.plan_events() + await self.expand_jobs()
            while await self.send_one():
                n += 1
            if n == 0:
                break
        return self.sent - before


async def run(settings: Settings) -> int:
    """``wadud notify``: the notifier until SIGTERM or SIGINT."""
    from wadud.state import db
    from wadud.web import workers

    stop = workers.stop_on_signals()
    async with contextlib.AsyncExitStack() as stack:
        # As the HTTP roles do (wadud.web.app): first in, last out.
        tracing.configure(
            settings.otel_endpoint,
            service=settings.otel_service_name,
            sample_ratio=settings.otel_sample_ratio,
            role="notify",
        )
        stack.push_async_callback(tracing.aclose)
        _, pool = await stack.enter_async_context(db.database(settings))
        opened = await channels.open_channels(settings)
        stack.push_async_callback(opened.close)
        await workers.start_worker(stack, settings, pool, Notifier(pool, settings, opened.senders))
        log.info("notifier running", extra={"channels": sorted(opened.senders)})
        print(
            f"wadud notify: running ({', '.join(sorted(opened.senders)) or 'no channels'})",
            flush=True,
        )
        await stop.wait()
        log.info("notifier stopping")
    return 0
