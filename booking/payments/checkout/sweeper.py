"""The sweeper of stale intents: a checkout window that closed unpaid is
expired, and a payment still processing after :data:`INQUIRE_AFTER` is asked
about at its gateway (its lost webhook settled, or expired once the gateway
says nobody paid). Gateways that cannot be reached are left alone until
their retry time (:mod:`booking.payments.reach`), here and in EasyPaisa's
inquiry round alike.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Final
from uuid import UUID

import asyncpg
from prometheus_client import Counter

from booking.payments.checkout.verdicts import apply_verdict
from booking.payments.errors import GatewayError, GatewayUnreachable, UnknownReference
from booking.payments.gateway import GatewayRegistry, PaymentStatus, Verdict
from booking.payments.intent import LIVE_STATES, IntentEvent, IntentState
from booking.payments.postings import move_intent
from booking.payments.rows import INTENT_COLUMNS, payment_payload
from wadud.errors import WadudError
from wadud.messaging import outbox

__all__ = [
    "INQUIRE_AFTER",
    "SWEEP_BATCH",
    "gateway_answered",
    "gateway_unreachable",
    "sweep_once",
]

log = logging.getLogger("wadud.payments")

UNREACHABLE = Counter(
    "wadud_payments_gateway_unreachable_total",
    "Inquiries that found a payment gateway unreachable (refused, timed out, 5xx), by"
    " gateway; the rounds back off from it until it answers.",
    ["gateway"],
)

#: Processing intents younger than this are left to the webhook and callback.
INQUIRE_AFTER: Final = timedelta(minutes=5)
#: Intents handled per sweep round.
SWEEP_BATCH: Final = 100


def gateway_unreachable(registry: GatewayRegistry, gateway: str, exc: GatewayUnreachable) -> None:
    """An inquiry round found ``gateway`` unreachable: counted, logged once
    per outage, and left alone until its retry (:mod:`booking.payments.reach`)."""
    UNREACHABLE.labels(gateway).inc()
    if registry.reach.failed(gateway, time.monotonic()):
        log.warning(
            "payment gateway unreachable; inquiries back off until it answers",
            extra={"gateway": gateway, "error": str(exc)},
        )


def gateway_answered(registry: GatewayRegistry, gateway: str) -> None:
    """``gateway`` answered an inquiry: an outage it was in is over (logged)."""
    outage = registry.reach.answered(gateway)
    if outage is not None:
        log.info(
            "payment gateway reachable again",
            extra={
                "gateway": gateway,
                "down_seconds": round(time.monotonic() - outage.since, 1),
                "failed_inquiries": outage.failures,
            },
        )


async def _expire(conn: asyncpg.Connection, intent_id: UUID, why: str) -> None:
    row = await conn.fetchrow(
        f"SELECT {INTENT_COLUMNS} FROM payment_intents WHERE id = $1 FOR UPDATE", intent_id
    )
    if row is None or IntentState(row["status"]) not in LIVE_STATES:
        return
    row = await move_intent(conn, row, IntentEvent.EXPIRE, {"reason": why}, failure_reason=why)
    await outbox.emit(conn, "payment.expired", payment_payload(row, reason=why))


async def sweep_once(
    pool: asyncpg.Pool, registry: GatewayRegistry, now: datetime, *, default_bp: int
) -> int:
    """One round: expire unpaid intents past their window; ask the gateway
    about processing ones older than :data:`INQUIRE_AFTER` and apply its
    answer (expiring only on a non-success answer past the window, as the
    state machine requires). Returns how many intents changed or were checked.
    """
    done = 0
    async with pool.acquire() as conn, conn.transaction():
        stale = await conn.fetch(
            """SELECT id FROM payment_intents
               WHERE status = 'requires_payment' AND expires_at <= $1
               ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED""",
            now,
            SWEEP_BATCH,
        )
        for r in stale:
            await _expire(conn, r["id"], "checkout window closed unpaid")
        done += len(stale)
    # A gateway with nobody to ask (a bank transfer waits for a statement
    # line) comes up only once its window closed: asked every round, a day's
    # held transfers would fill the batch before the gateways that answer.
    candidates = await pool.fetch(
        """SELECT id, gateway, gateway_ref, expires_at FROM payment_intents
           WHERE status = 'processing' AND gateway_ref IS NOT NULL
             AND ((created_at <= $1 AND gateway = ANY($4::text[])) OR expires_at <= $2)
           ORDER BY created_at LIMIT $3""",
        now - INQUIRE_AFTER,
        now,
        SWEEP_BATCH,
        registry.names(),
    )
    for r in candidates:
        # A gateway in an outage is asked again at its retry time, not once
        # per payment meanwhile (the sweeper's loop wakes for it); nothing is
        # expired while it cannot say whether the patient paid.
        if not registry.reach.may_ask(r["gateway"], time.monotonic()):
            continue
        # The inquiry is I/O and holds no lock; applying its answer locks the
        # row and is idempotent, so a webhook racing with it is harmless.
        try:
            if r["gateway"] not in registry:
                raise UnknownReference(f"gateway {r['gateway']} is not configured")
            answer = await registry.get(r["gateway"]).inquire(r["gateway_ref"])
            status = answer.status
        except UnknownReference:
            status = PaymentStatus.PENDING  # the gateway forgot it; only expiry can close it
            answer = None
        except GatewayUnreachable as exc:
            gateway_unreachable(registry, r["gateway"], exc)
            continue
        except GatewayError:
            log.warning("inquiry failed", extra={"payment_id": str(r["id"])}, exc_info=True)
            gateway_answered(registry, r["gateway"])
            continue
        if r["gateway"] in registry:
            gateway_answered(registry, r["gateway"])
        try:
            async with pool.acquire() as conn, conn.transaction():
                if answer is not None and status is not PaymentStatus.PENDING:
                    await apply_verdict(
                        conn, Verdict.of_inquiry(answer), default_bp=default_bp, registry=registry
                    )
                elif r["expires_at"] <= now:
                    await _expire(
                        conn, r["id"], "checkout window closed; gateway reports no payment"
                    )
        except WadudError:
            log.warning(
                "sweep could not settle a payment",
                extra={"payment_id": str(r["id"])},
                exc_info=True,
            )
            continue
        done += 1
    return done
