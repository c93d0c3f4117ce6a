"""A gateway's notification, taken in by a request handler.

The webhook endpoint, EasyPaisa's IPN handler and the in-process deliveries
of the sandbox and the EasyPaisa simulator all hand a delivery to
:func:`booking.payments.checkout.webhooks.handle_webhook` the same way: the app's pool
and gateways, the configured platform commission, and the handler's clock.
They answer with one acknowledgement, :class:`WebhookAck`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from booking.payments.checkout.webhooks import handle_webhook
from booking.payments.keys import GATEWAYS
from wadud.web.api import ApiModel, Call

__all__ = ["WebhookAck", "deliver"]


class WebhookAck(ApiModel):
    received: bool = True
    duplicate: bool
    event_id: str
    payment_id: UUID | None
    status: str | None


async def deliver(
    call: Call[Any, Any],
    gateway_name: str,
    body: bytes,
    headers: Mapping[str, str],
    now: datetime,
) -> WebhookAck:
    """Verify, deduplicate and apply one delivery (``handle_webhook``) and
    say what came of it."""
    outcome = await handle_webhook(
        call.pool,
        call.request.app[GATEWAYS],
        gateway_name,
        body,
        headers,
        now,
        default_bp=call.settings.payments_platform_commission_bp,
    )
    return WebhookAck(
        duplicate=outcome.duplicate,
        event_id=outcome.event_id,
        payment_id=outcome.payment_id,
        status=outcome.status,
    )
