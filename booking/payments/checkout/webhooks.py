"""A gateway's webhook delivery: verified, deduplicated by its event id, and
applied in one transaction (the common case in one statement,
:mod:`booking.payments.checkout.settle`; the rest as any verdict,
:mod:`booking.payments.checkout.verdicts`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from booking.payments.checkout import settle
from booking.payments.checkout.verdicts import apply_verdict
from booking.payments.gateway import Gateway, GatewayRegistry, Verdict, WebhookEvent
from booking.payments.rows import INTENT_COLUMNS

__all__ = ["WebhookOutcome", "handle_webhook"]


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    duplicate: bool
    event_id: str
    payment_id: UUID | None
    status: str | None


async def handle_webhook(
    pool: asyncpg.Pool,
    registry: GatewayRegistry,
    gateway_name: str,
    body: bytes,
    headers: Mapping[str, str],
    now: datetime,
    *,
    default_bp: int,
) -> WebhookOutcome:
    """Verify, deduplicate and apply one webhook delivery, in one transaction.

    A bad signature or stale timestamp raises before anything is stored. A
    delivery whose event id was seen is acknowledged and ignored; the
    ``webhook_events`` insert and the verdict commit together, so a delivery
    that failed half way is applied whole when the gateway redelivers.
    Concurrent deliveries of one event serialise on that row's primary key.
    """
    gateway = registry.get(gateway_name)
    event = await gateway.parse_webhook(body, headers, now)
    async with pool.acquire() as conn:
        if event.reference is not None and event.status is not None:
            # The common case (paid, still held) in two statements; everything
            # else, and a race that case gives way on, the general way below.
            verdict = Verdict.of_webhook(event)
            settled = await settle.settle(
                conn, gateway.name, event, verdict, default_bp=default_bp, now=now
            )
            if settled is not None:
                return WebhookOutcome(
                    settled.duplicate, event.event_id, settled.payment_id, settled.status
                )
        return await _apply_webhook(conn, registry, gateway, event, default_bp)


async def _apply_webhook(
    conn: asyncpg.Connection,
    registry: GatewayRegistry,
    gateway: Gateway,
    event: WebhookEvent,
    default_bp: int,
) -> WebhookOutcome:
    async with conn.transaction():
        # One round trip: record the delivery and lock the intent it is about.
        got = await conn.fetchrow(
            f"""WITH w AS (INSERT INTO webhook_events (gateway, event_id, payload)
                           VALUES ($1, $2, $3::jsonb) ON CONFLICT DO NOTHING RETURNING true),
                     i AS (SELECT {INTENT_COLUMNS} FROM payment_intents
                           WHERE gateway = $5 AND gateway_ref = $4 FOR UPDATE)
                SELECT (SELECT true FROM w) AS fresh, i.* FROM (SELECT 1) AS one
                LEFT JOIN i ON true""",
            gateway.name,
            event.event_id,
            dict(event.payload),
            event.reference,
            event.gateway,
        )
        assert got is not None
        if not got["fresh"]:
            return WebhookOutcome(True, event.event_id, None, None)
        if event.reference is None or event.status is None:
            return WebhookOutcome(False, event.event_id, None, None)
        row = await apply_verdict(
            conn,
            Verdict.of_webhook(event),
            default_bp=default_bp,
            registry=registry,
            locked=got if got["id"] is not None else None,
        )
        return WebhookOutcome(False, event.event_id, row["id"], row["status"])
