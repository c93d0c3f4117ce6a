"""The sandbox gateway's hosted checkout, served by Wadud itself.

Playing the part of a real gateway's payment page so the whole flow runs
locally: ``GET /sandbox/checkout/{reference}`` shows the amount with Pay and
Decline buttons; the form's POST settles the sandbox payment, then "the
gateway" delivers its signed webhook, in process, through the very function
the webhook endpoint calls (:func:`booking.payments.service.handle_webhook`),
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

from aiohttp import web

from booking.payments import service
from booking.payments.gateway import PaymentStatus
from booking.payments.sandbox import SandboxGateway
from wadud.api import Call, Routes
from wadud.errors import BadRequest, NotFound, WadudError

__all__ = ["routes"]

log = logging.getLogger("wadud.payments.sandbox")

routes = Routes("sandbox", "The built-in sandbox gateway's hosted checkout (development, tests).")

_PATH = "/sandbox/checkout/{reference:sbx_[A-Za-z0-9_-]+}"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Wadud sandbox checkout</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 28rem; margin: 3rem auto; padding: 0 1rem; }}
.amount {{ font-size: 2rem; margin: 1rem 0; }}
button {{ font-size: 1rem; padding: .6rem 1.4rem; margin-right: .5rem; }}
.note {{ color: #666; font-size: .9rem; }}
</style></head>
<body>
<h1>Sandbox checkout</h1>
<p>{description}</p>
<p class="amount">{amount}</p>
{body}
<p class="note">This is the built-in test gateway: no money moves. Reference {reference},
open until {expires}.</p>
</body></html>
"""

_FORM = """<form method="post">
<button type="submit" name="action" value="pay">Pay</button>
<button type="submit" name="action" value="decline">Decline</button>
</form>"""


def _sandbox(call: Call[None, None]) -> SandboxGateway:
    registry = call.request.app[service.GATEWAYS]
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
    if record.status is PaymentStatus.PENDING:
        body = _FORM
    else:
        outcome = f"{record.status.value} ({record.code})"
        body = f"<p>This payment is {html.escape(outcome)}.</p>"
    page = _PAGE.format(
        description=html.escape(record.description),
        amount=html.escape(str(record.amount)),
        body=body,
        reference=html.escape(reference),
        expires=html.escape(record.expires_at.isoformat()),
    )
    return web.Response(text=page, content_type="text/html")


@routes.post(
    _PATH,
    status=303,
    auth="public",
    raw_body={
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["action"],
                    "properties": {"action": {"type": "string", "enum": ["pay", "decline"]}},
                }
            }
        }
    },
)
async def sandbox_checkout_submit(call: Call[None, None]) -> web.Response:
    """Pay or decline on the sandbox page; redirects to the signed return URL."""
    reference = call.path("reference")
    gateway = _sandbox(call)
    form = await service.read_form(call.request)
    action = form.get("action")
    if action not in ("pay", "decline"):
        raise BadRequest("action must be pay or decline")
    now = datetime.now(UTC)
    target = gateway.complete(reference, action == "pay", now)
    body, headers = gateway.webhook(reference, now)
    try:
        await service.handle_webhook(
            call.pool,
            call.request.app[service.GATEWAYS],
            gateway.name,
            body,
            headers,
            now,
            default_bp=call.settings.payments_platform_commission_bp,
        )
    except WadudError:
        log.warning(
            "sandbox webhook delivery failed", extra={"reference": reference}, exc_info=True
        )
    return web.Response(status=303, headers={"Location": target})
