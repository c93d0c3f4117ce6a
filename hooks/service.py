"""The deliverer: the loops that send due webhook deliveries.

Runs inside ``wadud serve`` and each ``wadud api`` replica
(``hooks.http.install_worker``), or as ``wadud hooks`` (:func:`run`) when
``webhooks_deliver`` is off; any number of them share one database.

Guarantees, and where they come from:

* In: a delivery row exists for every (event, subscribed endpoint) if and
  only if the event's transaction committed (the trigger of migration 0020),
  and at most one (its unique key).
* Out: a delivery is claimed ``FOR UPDATE SKIP LOCKED`` and marked sent in
  the transaction that claimed it, with the row lock held across the POST,
  as the notifier does: two replicas never send one row; a deliverer killed
  mid-send leaves it pending for another. The one window left, "the receiver
  answered 2xx, our commit was lost", sends it again with the same
  ``Wadud-Event-Id``, which receivers use to fold repeats.
* Order: per (endpoint, room), a delivery is not claimed while an earlier
  event of that room is still pending for that endpoint, so a receiver sees
  a room's events in the order they happened, retries included. A delivery
  that failed for good stops holding the later ones back.
* Retries: any answer but 2xx, a timeout or a refused address is retried
  after ``webhooks_backoff_base * 2**(attempt-1)`` seconds (at most
  ``webhooks_backoff_max``), ``webhooks_max_attempts`` times in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
from aiohttp.abc import AbstractResolver
from prometheus_client import Counter, Gauge

from hooks.addresses import CheckedResolver, check_url, policy
from hooks.errors import RefusedAddress
from wadud import signing
from wadud.config import Settings
from wadud.messaging import loops, outbox

log = logging.getLogger("wadud.hooks")

__all__ = ["Deliverer", "backoff", "body_of", "run"]

SIGNATURE_HEADER = "Wadud-Signature"
DELIVERIES = Counter(
    "wadud_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (sent, retried, failed).",
    ["outcome"],
)
BACKLOG = Gauge("wadud_webhook_backlog", "Webhook deliveries due and not sent.")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Seconds before try ``attempt + 1`` after try ``attempt`` failed."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


def body_of(row: asyncpg.Record | dict[str, Any]) -> bytes:
    """The JSON body of an event's delivery: the same bytes on every try."""
    payload = row["payload"]
    event = {
        "id": str(row["event_id"]),
        "type": row["name"],
        "created_at": row["created_at"].isoformat(),
        "occurred_at": payload.get("at") or row["created_at"].isoformat(),
        "clinic_id": str(row["clinic_id"]),
        "booking_id": str(row["booking_id"]),
        "room": row["room"],
        "data": payload.get("data") or {},
    }
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


#: Deliveries a sender may take once due: pending, to an enabled endpoint,
#: and first of their endpoint's and room's pending ones (order holds).
_HEADS = """d.status = 'pending' AND e.enabled
  AND NOT EXISTS (
      SELECT 1 FROM room_hook_deliveries o
      WHERE o.endpoint_id = d.endpoint_id AND o.room = d.room
        AND o.status = 'pending' AND o.event_id < d.event_id)"""
_NEXT_DUE = f"""SELECT min(d.next_attempt_at) FROM room_hook_deliveries d
JOIN room_hook_endpoints e ON e.id = d.endpoint_id
WHERE {_HEADS}"""
_CLAIM = f"""
SELECT d.id, d.event_id, d.attempts, e.url, e.secret,
       v.name, v.payload, v.created_at, v.clinic_id, v.booking_id, v.room
FROM room_hook_deliveries d
JOIN room_hook_endpoints e ON e.id = d.endpoint_id
JOIN room_hook_events v ON v.id = d.event_id
WHERE d.next_attempt_at <= $1 AND {_HEADS}
ORDER BY d.next_attempt_at, d.event_id
LIMIT 1 FOR UPDATE OF d SKIP LOCKED"""

_RECORD = """
WITH a AS (
    INSERT INTO room_hook_attempts (delivery_id, attempt, ok, http_status, detail, duration_ms)
    VALUES ($1, $3, $4, $5, $6, $7))
UPDATE room_hook_deliveries
SET status = $2, attempts = $3, last_error = CASE WHEN $4 THEN NULL ELSE $6 END,
    sent_at = CASE WHEN $2 = 'sent' THEN clock_timestamp() END,
    next_attempt_at = coalesce($8, next_attempt_at)
WHERE id = $1"""


class Deliverer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        resolver: AbstractResolver | None = None,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.rules = policy(settings.webhooks_allow_networks)
        self.resolver = CheckedResolver(self.rules, resolver)
        self.clock = clock
        self.sent = 0
        self.woken = 0
        self.looked = 0
        """Wakes, and claims that found nothing due (for tests and tools)."""
        self._session: aiohttp.ClientSession | None = None
        # A wake reaches the first sender only, and a sender that found a
        # delivery wakes the next: a burst brings up to ``concurrency``
        # senders, while a wake with nothing due (most outbox batches hold
        # no room event) costs one claim, not one per sender.
        self._wakes = [asyncio.Event() for _ in range(self.concurrency)]
        self._tasks: list[asyncio.Task[None]] = []
        self._listener = outbox.Listener(pool, lambda _payload: self.wake())

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=self.resolver, use_dns_cache=False, limit=max(4, 4 * self.concurrency)
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # no proxy from the environment: we judge the address we reach
            timeout=aiohttp.ClientTimeout(total=self.settings.webhooks_timeout),
        )
        self._tasks.append(asyncio.create_task(self._listen_loop(), name="hooks-listen"))
        for i in range(self.concurrency):
            self._tasks.append(asyncio.create_task(self._send_loop(i), name=f"hooks-send-{i}"))

    @property
    def concurrency(self) -> int:
        return max(1, self.settings.webhooks_concurrency)

    async def close(self) -> None:
        await loops.stopped(*self._tasks)
        self._tasks.clear()
        await self._listener.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- waking ------------------------------------------------------------

    def wake(self) -> None:
        """Look for due deliveries now (a relayed batch, or a redeliver)."""
        self.woken += 1
        self._wakes[0].set()

    async def _listen_loop(self) -> None:
        """Keep a LISTEN on the outbox channel (a relay's NOTIFY after each
        published batch wakes the senders) and refresh the backlog gauge, every
        outbox.OBSERVE_IDLE seconds: the first sender's poll finds what a lost
        LISTEN missed meanwhile, and the gauge is scraped every 15 s."""
        while True:
            await self._listener.round(self._observe, "webhook listener failed; retrying", log)
            await asyncio.sleep(max(outbox.OBSERVE_IDLE, self.settings.webhooks_poll_interval))

    async def _observe(self) -> None:
        BACKLOG.set(
            await self.pool.fetchval(
                """SELECT count(*) FROM room_hook_deliveries
                   WHERE status = 'pending' AND next_attempt_at <= $1""",
                self.clock(),
            )
        )

    async def _send_loop(self, i: int) -> None:
        """Sender ``i``: the first also looks when the next retry comes due,
        and every poll interval for work no wake announced; the others look
        when the one before them claimed a delivery, and hourly besides."""
        after = self._wakes[i + 1] if i + 1 < len(self._wakes) else None
        await loops.drain(
            lambda: self.send_one(claimed=after),
            self._wakes[i],
            self.settings.webhooks_poll_interval if i == 0 else 3600.0,
            "webhook send round failed; retrying",
            log,
            due=self._next_due if i == 0 else None,
        )

    async def _next_due(self) -> float | None:
        """Seconds until the next delivery a sender may take comes due (0 or
        less: one is due), None when there is none: one statement, no lock."""
        at = await self.pool.fetchval(_NEXT_DUE)
        return loops.seconds_until(at, self.clock())

    # -- one delivery ------------------------------------------------------

    async def send_one(self, *, claimed: asyncio.Event | None = None) -> bool:
        """Send the next due delivery, if any; False when there was none.
        ``claimed`` is set once a delivery is claimed, before it is sent."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_CLAIM, self.clock())
            if row is None:
                self.looked += 1
                return False
            if claimed is not None:
                claimed.set()
            attempt = row["attempts"] + 1
            started = time.monotonic()
            status, detail = await self._post(row, attempt)
            took = int((time.monotonic() - started) * 1000)
            ok = status is not None and 200 <= status < 300
            s = self.settings
            if ok:
                state, next_at = "sent", None
            elif attempt >= s.webhooks_max_attempts:
                state, next_at = "failed", None
            else:
                wait = backoff(attempt, base=s.webhooks_backoff_base, cap=s.webhooks_backoff_max)
                state, next_at = "pending", self.clock() + dt.timedelta(seconds=wait)
            await conn.execute(
                _RECORD, row["id"], state, attempt, ok, status, detail[:1000], took, next_at
            )
        outcome = {"sent": "sent", "failed": "failed"}.get(state, "retried")
        DELIVERIES.labels(outcome).inc()
        if ok:
            self.sent += 1
        else:
            log.info(
                "webhook delivery %s",
                "failed for good" if state == "failed" else "will be retried",
                extra={"delivery": row["id"], "attempt": attempt, "error": detail},
            )
        return True

    async def _post(self, row: asyncpg.Record, attempt: int) -> tuple[int | None, str]:
        """POST the event; (HTTP status or None when unreached, detail)."""
        assert self._session is not None, "start() first"
        body = body_of(row)
        timestamp = int(self.clock().timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Wadud-Webhooks/1",
            SIGNATURE_HEADER: signing.sign(body, row["secret"], timestamp),
            "Wadud-Event-Id": str(row["event_id"]),
            "Wadud-Event": row["name"],
            "Wadud-Delivery": str(row["id"]),
            "Wadud-Attempt": str(attempt),
        }
        try:
            check_url(row["url"], self.rules)  # an IP literal skips the resolver
            async with self._session.post(
                row["url"], data=body, headers=headers, allow_redirects=False
            ) as resp:
                answer = await resp.content.read(200)
                return resp.status, answer.decode("utf-8", "replace")
        except RefusedAddress as exc:
            return None, f"refused: {exc.detail}"
        except aiohttp.ClientConnectorError as exc:
            cause = exc.__cause__ or exc.os_error
            if isinstance(cause, RefusedAddress):
                return None, f"refused: {cause.detail}"
            return None, f"unreachable: {exc}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    async def run_until_idle(self, seconds: float = 10.0) -> int:
        """Send until nothing is due; return how many were sent (tests, tools)."""
        deadline = time.monotonic() + seconds
        before = self.sent
        while time.monotonic() < deadline and await self.send_one():
            pass
        return self.sent - before


async def run(settings: Settings) -> int:
    """``wadud hooks``: the deliverer until SIGTERM or SIGINT."""
    from wadud.state import db
    from wadud.web import workers

    stop = workers.stop_on_signals()
    async with contextlib.AsyncExitStack() as stack:
        _, pool = await stack.enter_async_context(db.database(settings))
        await workers.start_worker(stack, settings, pool, Deliverer(pool, settings))
        log.info("webhook deliverer running")
        print("wadud hooks: running", flush=True)
        await stop.wait()
    return 0
