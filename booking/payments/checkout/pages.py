"""The sandbox gateway's hosted checkout, served by Wadud itself.

Playing the part of a real gateway's payment page so the whole flow runs
locally: ``GET /sandbox/checkout/{reference}`` shows the visit and the amount
with Pay and Decline buttons, in the patient's language
(:mod:`booking.pages`); the form's POST settles the sandbox payment, then "the
gateway" delivers its signed webhook, in process, through the very function
the webhook endpoint calls (:func:`booking.payments.checkout.http_webhooks.deliver`),
and finally sends the browser to the signed return URL, where the redirect
landing verifies it like any gateway's.

The webhook is delivered before the redirect so the landing finds the payment
settled; if the delivery fails it is logged and the landing's verified result
still applies the outcome (a real gateway would redeliver).
"""

from __future__ import annotations

import html
import logging
from datetime import UTC, datetime
from uuid import UUID

from aiohttp import web

from booking import pages
from booking.payments.checkout.forms import choice_body, read_choice
from booking.payments.checkout.http_webhooks import deliver
from booking.payments.gateway import PaymentStatus
from booking.payments.gateways.sandbox import SandboxGateway
from booking.payments.keys import GATEWAYS
from wadud.errors import NotFound, WadudError
from wadud.web.api import Call, Routes

__all__ = ["routes"]

log = logging.getLogger("wadud.payments.sandbox")

routes = Routes("sandbox", "The built-in sandbox gateway's hosted checkout (development, tests).")

_PATH = "/sandbox/checkout/{reference:sbx_[A-Za-z0-9_-]+}"

_CHECKOUT = """<p class="sandbox" data-i18n="pay.sandbox">Test checkout: no money moves</p>
<h1 data-i18n="pay.title">Pay for your visit</h1>
{visit}
{action}
<p class="muted"><span data-i18n="pay.held">Your time is held for you until</span>
<span data-fill="expires"></span></p>"""

_FORM = """<form method="post" class="row">
<button type="submit" name="action" value="pay" class="primary" data-i18n="pay.pay">Pay</button>
<button type="submit" name="action" value="decline" data-i18n="pay.decline">Decline</button>
</form>"""

_SETTLED = """<p class="outcome" data-i18n="pay.settled.{status}">This payment is {status}.</p>"""


def _sandbox(call: Call[None, None]) -> SandboxGateway:
    registry = call.request.app[GATEWAYS]
    gateway = registry.get("sandbox") if "sandbox" in registry else None
    if not isinstance(gateway, SandboxGateway):
        raise NotFound("the sandbox gateway is not enabled")
    return gateway


@routes.get(
    _PATH,
    returns={"content": {"text/html": {"schema": {"type": "string"}}}},
    auth="public",
)
async def sandbox_checkout_page(call: Call[None, None]) -> web.Response:
    """The sandbox's payment page: amount, Pay and Decline."""
    reference = call.path("reference")
    record = _sandbox(call).checkout(reference)
    async with call.pool.acquire() as conn:
        facts = await pages.visit_facts(conn, UUID(record.intent_id))
    if facts is None:
        raise NotFound("no such payment")
    if record.status is PaymentStatus.PENDING:
        action = _FORM
    else:
        status = html.escape(record.status.value)
        action = _SETTLED.format(status=status)
    body = _CHECKOUT.format(visit=pages.VISIT, action=action)
    return pages.page("pay.page.title", body, facts)


@routes.post(
    _PATH,
    status=303,
    auth="public",
    raw_body=choice_body("pay", "decline"),
)
async def sandbox_checkout_submit(call: Call[None, None]) -> web.Response:
    """Pay or decline on the sandbox page; redirects to the signed return URL."""
    reference = call.path("reference")
    gateway = _sandbox(call)
    paid = await read_choice(call.request, "pay", "decline")
    now = datetime.now(UTC)
    target = gateway.complete(reference, paid, now)
    body, headers = gateway.webhook(reference, now)
    try:
        await deliver(call, gateway.name, body, headers, now)
    except WadudError:
        log.warning(
            "sandbox webhook delivery failed", extra={"reference": reference}, exc_info=True
        )
    return web.Response(status=303, headers={"Location": target})
