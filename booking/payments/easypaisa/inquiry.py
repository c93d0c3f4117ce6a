"""The EasyPaisa inquiry round: settles payments whose IPN never came.

EasyPaisa notifies once per status change and gives up after a few tries;
a notification lost on the way (our outage, theirs, a proxy) would leave a
paid booking held until its hold lapses. So every
``payments_easypaisa_inquiry_interval`` seconds one replica asks
``inquire-transaction`` about every EasyPaisa payment still ``processing``
and applies each definite answer exactly as an IPN would (the same
:func:`~booking.payments.checkout.verdicts.apply_verdict`, idempotent under the
intent's row lock, so a round racing an IPN or the redirect landing is
harmless). A payment paid at time *t* is therefore settled by *t + interval*
at the latest.

Like retention's rounds (:mod:`privacy.retention`), a round first takes a
PostgreSQL advisory lock with ``pg_try_advisory_lock``; a replica that does
not get it skips the round, so N replicas make one round per interval, not N.
Expiry stays with the payments sweeper (:func:`booking.payments.checkout.sweeper.sweep_once`),
which inquires once more before it expires anything.

When EasyPaisa cannot be reached (:class:`~booking.payments.errors.GatewayUnreachable`)
the round stops asking it, counts it (``wadud_payments_gateway_unreachable_total``),
logs the outage once, and the next round comes at the gateway's retry time
(backing off, :mod:`booking.payments.reach`) instead of a whole interval
later; the first answer ends the outage, and the round goes on as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import asyncpg

from booking.payments.checkout.sweeper import gateway_answered, gateway_unreachable
from booking.payments.checkout.verdicts import apply_verdict
from booking.payments.errors import GatewayError, GatewayUnreachable, UnknownReference
from booking.payments.gateway import GatewayRegistry, PaymentStatus, Verdict
from wadud.errors import WadudError
from wadud.messaging import loops

__all__ = ["BATCH", "LOCK_KEY", "PARALLEL", "run_round", "schedule"]

log = logging.getLogger("wadud.payments.easypaisa")

#: The advisory lock a round holds; spells "easypais".
LOCK_KEY: Final = 0x6561737970616973
#: Payments asked about per round, least recently touched first.
BATCH: Final = 200
#: Inquiries in flight at once (each settles on its own pool connection).
PARALLEL: Final = 4


async def run_round(
    pool: asyncpg.Pool,
    registry: GatewayRegistry,
    gateways: Sequence[str],
    now: datetime,
    *,
    default_bp: int,
    batch: int = BATCH,
) -> int | None:
    """One round under the advisory lock; None when another replica holds
    it. Returns how many payments the round settled. ``now`` is the round's
    time (kept for the log; the verdicts carry EasyPaisa's own)."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
            return None
        try:
            rows = await conn.fetch(
                """SELECT id, gateway, gateway_ref FROM payment_intents
                   WHERE status = 'processing' AND gateway = ANY($1::text[])
                     AND gateway_ref IS NOT NULL
                   ORDER BY updated_at LIMIT $2""",
                list(gateways),
                batch,
            )
            settled = 0
            # A few inquiries at a time: one slow answer must not push the
            # rest of the batch past the interval. A gateway found unreachable
            # is not asked about the rest (schedule comes back at its retry).
            for start in range(0, len(rows), PARALLEL):
                chunk = [
                    row
                    for row in rows[start : start + PARALLEL]
                    if registry.reach.may_ask(row["gateway"], time.monotonic())
                ]
                done = await asyncio.gather(
                    *(_settle_one(pool, registry, row, default_bp) for row in chunk)
                )
                settled += sum(done)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    if settled:
        log.info("EasyPaisa inquiry round", extra={"settled": settled, "at": now.isoformat()})
    return settled


async def _settle_one(
    pool: asyncpg.Pool, registry: GatewayRegistry, row: asyncpg.Record, default_bp: int
) -> int:
    try:
        answer = await registry.get(row["gateway"]).inquire(row["gateway_ref"])
    except UnknownReference:
        gateway_answered(registry, row["gateway"])
        return 0  # not at EasyPaisa (yet): the patient may still be paying
    except GatewayUnreachable as exc:
        gateway_unreachable(registry, row["gateway"], exc)
        return 0
    except GatewayError:
        gateway_answered(registry, row["gateway"])
        log.warning("EasyPaisa inquiry failed", extra={"payment_id": str(row["id"])}, exc_info=True)
        return 0
    gateway_answered(registry, row["gateway"])
    if answer.status is PaymentStatus.PENDING:
        return 0
    try:
        async with pool.acquire() as conn, conn.transaction():
            await apply_verdict(
                conn, Verdict.of_inquiry(answer), default_bp=default_bp, registry=registry
            )
    except WadudError:
        # An amount that does not match: logged by the service; the round
        # moves on, nothing of this one was written. (Money for a booking no
        # longer held is not an error: it is owed back by hand and the
        # payment leaves 'processing', so the round stops asking.)
        log.warning(
            "EasyPaisa inquiry round could not settle a payment",
            extra={"payment_id": str(row["id"])},
            exc_info=True,
        )
        return 0
    return 1


async def schedule(
    pool: asyncpg.Pool,
    registry: GatewayRegistry,
    gateways: Sequence[str],
    interval: float,
    *,
    default_bp: int,
) -> None:
    """Run a round every ``interval`` seconds, forever (a task the app's
    lifespan owns). The first round comes one interval after start; while
    EasyPaisa is unreachable, the next comes at its retry time."""
    delay = interval
    while True:
        loops.go_on()
        await asyncio.sleep(delay)
        try:
            await run_round(pool, registry, gateways, datetime.now(UTC), default_bp=default_bp)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("EasyPaisa inquiry round failed; retrying next round")
        retry = registry.reach.retry_in(time.monotonic(), gateways)
        delay = interval if retry is None else min(interval, retry + 0.01)
