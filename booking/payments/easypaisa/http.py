"""EasyPaisa over HTTP: our side of its protocol
(:mod:`booking.payments.gateways.easypaisa` is the adapter).

* ``GET /api/v1/payments/easypaisa/postback/{reference}``: the hosted
  checkout's ``postBackURL``. EasyPaisa sends the browser here twice: first
  with an ``auth_token``, which this page posts on to ``Confirm.jsf`` (an
  auto-submitting form, as the guide asks of the merchant), then with
  ``status``/``desc``/``orderRefNumber``, which it hands to the payments
  redirect landing (``/api/v1/payments/{id}/return``); the landing believes
  none of it and inquires.
* ``GET``/``POST /api/v1/payments/easypaisa/ma/{reference}``: the mobile
  account page; the POST calls ``initiate-ma-transaction``, waits while the
  patient approves on their phone, then goes on to the landing.
* ``GET /api/v1/payments/easypaisa/ipn?url=...``: the IPN handler to set in
  the merchant portal (EasyPaisa calls it with ``url``; ``POST
  /api/v1/webhooks/easypaisa`` with the same ``url`` field works too).

:func:`lifespan` creates the simulator
(:mod:`booking.payments.easypaisa.http_simulator`) when the ``easypaisa``
gateway uses it, and schedules the inquiry round
(:mod:`booking.payments.easypaisa.inquiry`).
"""

from __future__ import annotations

import asyncio
import html
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from urllib.parse import urlencode, urlsplit
from uuid import UUID

from aiohttp import web
from pydantic import StringConstraints

from booking import pages
from booking.payments.checkout.forms import form_body, read_form
from booking.payments.checkout.http_webhooks import WebhookAck, deliver
from booking.payments.easypaisa import inquiry, service
from booking.payments.easypaisa.http_simulator import SIMULATOR, SimulatorHost
from booking.payments.easypaisa.pages import bare_page, hidden
from booking.payments.gateways.easypaisa import (
    IPN_HANDLER_PATH,
    MA_PAGE_PATH,
    POSTBACK_PATH,
    EasyPaisaGateway,
    ipn_notification,
)
from booking.payments.gateways.easypaisa_sim import EasyPaisaSimulator
from booking.payments.intent import LIVE_STATES, IntentState
from booking.payments.keys import GATEWAYS
from wadud.errors import BadRequest, NotFound, Unprocessable
from wadud.messaging import loops
from wadud.state import keys
from wadud.web.api import ApiModel, Call, Routes

__all__ = ["lifespan", "routes"]

routes = Routes(
    "easypaisa",
    "EasyPaisa: the hosted checkout's postback, the mobile-account page, the IPN handler.",
)

_REF = "{reference:EP[HM][0-9]{12}[0-9A-Z]{5}}"
_HTML: Final = {"content": {"text/html": {"schema": {"type": "string"}}}}
_MOBILE: Final = r"03[0-9]{9}"


def _now() -> datetime:
    return datetime.now(UTC)


def _gateway(call: Call[Any, Any], name: str = "easypaisa") -> EasyPaisaGateway:
    registry = call.request.app[GATEWAYS]
    gateway = registry.get(name) if name in registry else None
    if not isinstance(gateway, EasyPaisaGateway):
        raise NotFound("EasyPaisa is not enabled")
    return gateway


def _names(gateway: EasyPaisaGateway) -> list[str]:
    return [gateway.settings.name, gateway.settings.ma_name]


def _landing(intent_id: UUID, reference: str) -> web.Response:
    query = urlencode({"orderRefNumber": reference})
    return web.Response(
        status=303, headers={"Location": f"/api/v1/payments/{intent_id}/return?{query}"}
    )


# --- our side: the postback bridge ------------------------------------------------


@routes.get(
    POSTBACK_PATH.replace("{reference}", _REF),
    returns=_HTML,
    auth="public",
    responses={303: "Back from EasyPaisa: on to the payment's redirect landing"},
)
async def easypaisa_postback(call: Call[None, None]) -> web.Response:
    """The hosted checkout's postBackURL (EasyPaisa sends the browser here).

    With ``auth_token``: a page that posts it on to EasyPaisa's Confirm.jsf.
    With ``status``, ``desc`` and ``orderRefNumber``: a redirect (303) to the
    payment's landing, which verifies the outcome with an inquiry."""
    reference = call.path("reference")
    gateway = _gateway(call)
    query = call.request.query
    token = query.get("auth_token", "")
    if token:
        # A render of the query, with no read of ours: the page only hands
        # the token on to EasyPaisa's own Confirm.jsf with this order's
        # postBackURL, which EasyPaisa checks against the order it issued
        # the token for. A stranger's reference gets a page that posts a
        # stranger's token to EasyPaisa, which anyone can do without us.
        if len(token) > 512:
            raise BadRequest("auth_token is too long")
        target, fields = gateway.confirm_form(token, reference)
        nonce = secrets.token_urlsafe(12)
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(target))
        body = (
            f'<form id="go" method="post" action="{html.escape(target)}">{hidden(fields)}'
            "<p>Taking you to EasyPaisa to pay…</p>"
            '<button class="primary" type="submit">Continue to EasyPaisa</button></form>'
            f'<script nonce="{nonce}">document.getElementById("go").submit()</script>'
        )
        return bare_page("EasyPaisa", body, nonce=nonce, form_to=origin)
    given = query.get("orderRefNumber", reference)
    if given != reference:
        raise BadRequest("orderRefNumber differs from the postback's order")
    intent = await service.payment_of(call.pool, gateway.settings.name, reference)
    return _landing(intent["id"], reference)


# --- our side: the mobile-account page ----------------------------------------------

_MA_FORM = """<h1 data-i18n="pay.title">Pay for your visit</h1>
{visit}
<form method="post" class="stack">
<label for="msisdn" data-i18n="pay.easypaisa.account">EasyPaisa mobile account number</label>
<input id="msisdn" name="mobileAccountNo" inputmode="numeric" autocomplete="tel"
 pattern="03[0-9]{{9}}" placeholder="03XXXXXXXXX" dir="ltr" required>
<p class="muted" data-i18n="pay.easypaisa.hint">After you press Pay, EasyPaisa asks you
on your phone to approve the payment. Approve it there within a minute; this page waits
for you.</p>
<button type="submit" class="primary" data-i18n="pay.pay">Pay</button>
</form>"""


@routes.get(MA_PAGE_PATH.replace("{reference}", _REF), returns=_HTML, auth="public")
async def easypaisa_ma_page(call: Call[None, None]) -> web.Response:
    """The EasyPaisa mobile-account page: the visit and the account number to charge."""
    gateway = _gateway(call, _gateway(call).settings.ma_name)
    intent = await service.payment_of(call.pool, gateway.name, call.path("reference"))
    async with call.pool.acquire() as conn:
        facts = await pages.visit_facts(conn, intent["id"])
    if facts is None:
        raise NotFound("no such payment")
    if IntentState(intent["status"]) not in LIVE_STATES:
        return _landing(intent["id"], call.path("reference"))
    return pages.page("pay.page.title", _MA_FORM.format(visit=pages.VISIT), facts)


@routes.post(
    MA_PAGE_PATH.replace("{reference}", _REF),
    status=303,
    auth="public",
    raw_body=form_body(
        required=["mobileAccountNo"],
        properties={
            "mobileAccountNo": {"type": "string", "pattern": f"^{_MOBILE}$"},
            "emailAddress": {"type": "string", "maxLength": 200},
        },
    ),
    responses={422: "Not a Pakistani mobile number (03XXXXXXXXX)"},
)
async def easypaisa_ma_submit(call: Call[None, None]) -> web.Response:
    """Charge an EasyPaisa mobile account: waits while the patient approves on
    their phone, then redirects (303) to the payment's landing, which inquires."""
    reference = call.path("reference")
    gateway = _gateway(call, _gateway(call).settings.ma_name)
    intent = await service.payment_of(call.pool, gateway.name, reference)
    form = await read_form(call.request)
    mobile = form.get("mobileAccountNo", "")
    email = form.get("emailAddress", "")
    if not re.fullmatch(_MOBILE, mobile) or len(email) > 200:
        raise Unprocessable("mobileAccountNo must be a mobile number like 03XXXXXXXXX")
    await service.charge_mobile_account(gateway, intent, reference, mobile, email)
    return _landing(intent["id"], reference)


# --- our side: the IPN handler -----------------------------------------------------------


class IpnQuery(ApiModel):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2000)]


@routes.get(
    IPN_HANDLER_PATH,
    query=IpnQuery,
    returns=WebhookAck,
    auth="public",
    responses={400: "The url is not EasyPaisa's, or its record is not ours"},
)
async def easypaisa_ipn(call: Call[None, IpnQuery]) -> WebhookAck:
    """EasyPaisa's IPN handler (set it in the merchant portal).

    EasyPaisa calls it with ``url``, a link on its own host; we fetch the
    transaction from there (any other host is refused, 400) and apply it like
    any webhook: deduplicated on order, status and transaction id, in one
    transaction."""
    return await deliver(call, _gateway(call).name, *ipn_notification(call.query.url), _now())


# --- lifespan ---------------------------------------------------------------------------


async def lifespan(app: web.Application) -> AsyncIterator[None]:
    """The simulator (when the ``easypaisa`` gateway uses it) and the
    inquiry round (every ``payments_easypaisa_inquiry_interval`` seconds)."""
    settings = app[keys.SETTINGS]
    registry = app[GATEWAYS]
    gateway = registry.get("easypaisa") if "easypaisa" in registry else None
    task: asyncio.Task[None] | None = None
    if isinstance(gateway, EasyPaisaGateway):
        if gateway.settings.simulated:
            app[SIMULATOR] = SimulatorHost(EasyPaisaSimulator(gateway.settings, settings.base_url))
        interval = settings.payments_easypaisa_inquiry_interval
        if interval > 0:
            task = asyncio.create_task(
                inquiry.schedule(
                    app[keys.DB],
                    registry,
                    _names(gateway),
                    interval,
                    default_bp=settings.payments_platform_commission_bp,
                ),
                name="easypaisa-inquiry-round",
            )
    try:
        yield
    finally:
        await loops.stopped(task)
