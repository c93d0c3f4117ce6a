"""EasyPaisa's payments for its pages: found by the reference EasyPaisa knows
them by, and a mobile account charged for one."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg

from booking.payments.errors import GatewayError
from booking.payments.gateways.easypaisa import EasyPaisaGateway
from booking.payments.intent import LIVE_STATES, IntentState
from booking.payments.rows import money
from wadud.errors import NotFound

__all__ = ["charge_mobile_account", "payment_of"]

log = logging.getLogger("wadud.payments.easypaisa")


async def payment_of(pool: asyncpg.Pool, gateway: str, reference: str) -> asyncpg.Record:
    """The ``gateway`` payment EasyPaisa knows as ``reference`` (its id,
    state and amount); 404 when there is none."""
    row = await pool.fetchrow(
        """SELECT id, status, amount_minor, currency FROM payment_intents
           WHERE gateway = $1 AND gateway_ref = $2""",
        gateway,
        reference,
    )
    if row is None:
        raise NotFound("no such EasyPaisa payment")
    return row


async def charge_mobile_account(
    gateway: EasyPaisaGateway,
    payment: Mapping[str, Any],
    reference: str,
    mobile: str,
    email: str,
) -> None:
    """Ask EasyPaisa to charge ``mobile`` for the payment while it is live,
    waiting while the patient approves on their phone. A request that timed
    out or found EasyPaisa unreachable is logged: the landing inquires, and
    the IPN or the inquiry round settles it later if the phone said yes."""
    if IntentState(payment["status"]) not in LIVE_STATES:
        return
    try:
        answer = await gateway.initiate_ma(reference, money(payment), mobile, email)
        log.info(
            "EasyPaisa MA request answered",
            extra={"payment_id": str(payment["id"]), "code": answer.gateway_code},
        )
    except GatewayError:
        log.warning("EasyPaisa MA request failed", extra={"payment_id": str(payment["id"])})
