"""EasyPaisa over HTTP: our side of its protocol, and the built-in simulator.

Our side (:mod:`booking.payments.gateways.easypaisa` is the adapter):

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

The simulator (:mod:`booking.payments.gateways.easypaisa_sim`), under
``/easypaisa-sim/``, only while the ``easypaisa`` gateway is configured to use
it: ``Index.jsf``, ``Confirm.jsf``, the Open API's two calls, the IPN record,
and ``/easypaisa-sim/phone``, the customer's phone, where a pending MA
request is approved or declined. Settling a simulated order "sends" the IPN
in process through the very function the webhook endpoint calls, before the
browser is redirected (as the sandbox checkout does), unless the test knob
``deliver_ipn`` is off.

:func:`lifespan` creates the simulator and schedules the inquiry round
(:mod:`booking.payments.easypaisa.inquiry`).
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from urllib.parse import urlencode, urlsplit
from uuid import UUID

import aiohttp
from aiohttp import web
from pydantic import StringConstraints

from booking import pages
from booking.payments.checkout import service
from booking.payments.checkout.http_webhooks import WebhookAck, deliver
from booking.payments.easypaisa import inquiry
from booking.payments.errors import GatewayError
from booking.payments.gateways.easypaisa import (
    INITIATE_MA_PATH,
    INQUIRE_PATH,
    IPN_HANDLER_PATH,
    IPN_PATH,
    MA_PAGE_PATH,
    POSTBACK_PATH,
    EasyPaisaGateway,
    EasyPaisaSettings,
)
from booking.payments.gateways.easypaisa_sim import SIM_PREFIX, EasyPaisaSimulator, codes
from booking.payments.intent import IntentState
from booking.payments.rows import money
from wadud import http, jsonin, keys, loops
from wadud.api import ENDPOINTS, ApiModel, Call, Routes
from wadud.errors import BadRequest, NotFound, Unprocessable, WadudError

__all__ = ["SIMULATOR", "SimulatorHost", "lifespan", "routes", "simulator_app", "simulator_routes"]

log = logging.getLogger("wadud.payments.easypaisa")

routes = Routes(
    "easypaisa",
    "EasyPaisa: the hosted checkout's postback, the mobile-account page, the IPN handler.",
)
simulator_routes = Routes(
    "easypaisa-simulator",
    "A local EasyPaisa (development, tests, benchmarks): in `wadud serve` while no store is"
    " configured, or on its own with `wadud easypaisa-sim`.",
)

_REF = "{reference:EP[HM][0-9]{12}[0-9A-Z]{5}}"
_HTML: Final = {"content": {"text/html": {"schema": {"type": "string"}}}}
_JSON: Final = {"content": {"application/json": {"schema": {"type": "object"}}}}
_MOBILE: Final = r"03[0-9]{9}"


@dataclass
class SimulatorHost:
    """The simulator with what serving it needs: the MA calls held open
    until the phone decides, and where its IPNs go."""

    core: EasyPaisaSimulator
    waiters: dict[str, asyncio.Event] = field(default_factory=dict)
    #: How long ``initiate-ma-transaction`` holds a call for the phone.
    ma_wait: float = 60.0
    #: The merchant's IPN handler (``.../api/v1/payments/easypaisa/ipn``),
    #: called over HTTP as EasyPaisa calls it, with ``http``; empty: the
    #: merchant is this very app, and the IPN is handed over in process.
    merchant_ipn: str = ""
    http: aiohttp.ClientSession | None = None


SIMULATOR: Final = web.AppKey("easypaisa_simulator", SimulatorHost)


def _now() -> datetime:
    return datetime.now(UTC)


def _gateway(call: Call[Any, Any], name: str = "easypaisa") -> EasyPaisaGateway:
    registry = call.request.app[service.GATEWAYS]
    gateway = registry.get(name) if name in registry else None
    if not isinstance(gateway, EasyPaisaGateway):
        raise NotFound("EasyPaisa is not enabled")
    return gateway


def _names(gateway: EasyPaisaGateway) -> list[str]:
    return [gateway.settings.name, gateway.settings.ma_name]


async def _intent(call: Call[Any, Any], gateway: str, reference: str) -> dict[str, Any]:
    row = await call.pool.fetchrow(
        "SELECT id, status FROM payment_intents WHERE gateway = $1 AND gateway_ref = $2",
        gateway,
        reference,
    )
    if row is None:
        raise NotFound("no such EasyPaisa payment")
    return dict(row)


def _landing(intent_id: UUID, reference: str) -> web.Response:
    query = urlencode({"orderRefNumber": reference})
    return web.Response(
        status=303, headers={"Location": f"/api/v1/payments/{intent_id}/return?{query}"}
    )


_STYLE: Final = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:2rem auto;"
    "padding:0 1rem;color:#1b1b1b}button{font:inherit;padding:.6rem 1.2rem;margin:.2rem}"
    ".primary{background:#0b6e4f;color:#fff;border:0;border-radius:.3rem}"
    ".sim{background:#fff3cd;padding:.3rem .6rem;border-radius:.3rem}"
)


def _bare_page(title: str, body: str, *, nonce: str = "", form_to: str = "") -> web.Response:
    """A page of our own shell-less HTML (the postback bridge, the simulator).
    ``nonce``: the page's one script carries it."""
    style = secrets.token_urlsafe(12)
    policy = [
        "default-src 'none'",
        f"script-src 'nonce-{nonce}'" if nonce else "script-src 'none'",
        f"style-src 'nonce-{style}'",
        "base-uri 'none'",
        f"form-action 'self' {form_to}".strip(),
        "frame-ancestors 'none'",
    ]
    text = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f'<style nonce="{style}">{_STYLE}</style>'
        f"</head><body>{body}</body></html>"
    )
    return web.Response(
        text=text,
        content_type="text/html",
        headers={
            "Content-Security-Policy": "; ".join(policy),
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


def _hidden(fields: dict[str, str]) -> str:
    return "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
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
            f'<form id="go" method="post" action="{html.escape(target)}">{_hidden(fields)}'
            "<p>Taking you to EasyPaisa to pay…</p>"
            '<button class="primary" type="submit">Continue to EasyPaisa</button></form>'
            f'<script nonce="{nonce}">document.getElementById("go").submit()</script>'
        )
        return _bare_page("EasyPaisa", body, nonce=nonce, form_to=origin)
    given = query.get("orderRefNumber", reference)
    if given != reference:
        raise BadRequest("orderRefNumber differs from the postback's order")
    intent = await _intent(call, gateway.settings.name, reference)
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
    intent = await _intent(call, gateway.name, call.path("reference"))
    async with call.pool.acquire() as conn:
        facts = await pages.visit_facts(conn, intent["id"])
    if facts is None:
        raise NotFound("no such payment")
    if IntentState(intent["status"]) not in service.LIVE_STATES:
        return _landing(intent["id"], call.path("reference"))
    return pages.page("pay.page.title", _MA_FORM.format(visit=pages.VISIT), facts)


@routes.post(
    MA_PAGE_PATH.replace("{reference}", _REF),
    status=303,
    auth="public",
    raw_body=service.form_body(
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
    intent = await _intent(call, gateway.name, reference)
    form = await service.read_form(call.request)
    mobile = form.get("mobileAccountNo", "")
    email = form.get("emailAddress", "")
    if not re.fullmatch(_MOBILE, mobile) or len(email) > 200:
        raise Unprocessable("mobileAccountNo must be a mobile number like 03XXXXXXXXX")
    if IntentState(intent["status"]) in service.LIVE_STATES:
        amount = await call.pool.fetchrow(
            "SELECT amount_minor, currency FROM payment_intents WHERE id = $1", intent["id"]
        )
        assert amount is not None
        try:
            answer = await gateway.initiate_ma(
                reference,
                money(amount),
                mobile,
                email,
            )
            log.info(
                "EasyPaisa MA request answered",
                extra={"payment_id": str(intent["id"]), "code": answer.gateway_code},
            )
        except GatewayError:
            # Timed out or unreachable: the landing inquires, and the IPN or
            # the inquiry round settles it later if the phone said yes.
            log.warning("EasyPaisa MA request failed", extra={"payment_id": str(intent["id"])})
    return _landing(intent["id"], reference)


# --- our side: the IPN handler -----------------------------------------------------------


def _ipn(url: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an IPN naming the record at ``url``, as the
    gateway's ``parse_webhook`` reads it."""
    return urlencode({"url": url}).encode(), {"Content-Type": "application/x-www-form-urlencoded"}


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
    return await deliver(call, _gateway(call).name, *_ipn(call.query.url), _now())


# --- the simulator ------------------------------------------------------------------------


def _sim(call: Call[Any, Any]) -> SimulatorHost:
    host = call.request.app.get(SIMULATOR)
    if host is None:
        raise NotFound("the EasyPaisa simulator is not enabled")
    return host


async def _notify(call: Call[Any, Any], host: SimulatorHost, reference: str) -> None:
    """The simulator's IPN: to the merchant's handler over HTTP when it is
    elsewhere, else in process, through the webhook's own function."""
    if not host.core.deliver_ipn:
        log.info("simulated EasyPaisa IPN dropped", extra={"reference": reference})
        return
    if host.merchant_ipn and host.http is not None:
        target = host.merchant_ipn + "?" + urlencode({"url": host.core.ipn_url(reference)})
        try:
            async with host.http.get(target) as resp:
                await resp.read()
                if resp.status != 200:
                    log.warning(
                        "simulated EasyPaisa IPN refused",
                        extra={"reference": reference, "status": resp.status},
                    )
        except aiohttp.ClientError:
            log.warning("simulated EasyPaisa IPN failed", extra={"reference": reference})
        return
    try:
        await deliver(call, host.core.settings.name, *_ipn(host.core.ipn_url(reference)), _now())
    except WadudError:
        log.warning("simulated EasyPaisa IPN failed", extra={"reference": reference}, exc_info=True)


def _decided(host: SimulatorHost, reference: str) -> None:
    waiter = host.waiters.pop(reference, None)
    if waiter is not None:
        waiter.set()


_FORM_BODY: Final = service.form_body()


@simulator_routes.post(
    SIM_PREFIX + "/easypay/Index.jsf",
    status=303,
    auth="public",
    raw_body=_FORM_BODY,
    responses={400: "merchantHashedReq does not match, or a field is missing"},
)
async def easypaisa_sim_index(call: Call[None, None]) -> web.Response:
    """Simulator: the hosted checkout's entry (checks merchantHashedReq)."""
    host = _sim(call)
    form = await service.read_form(call.request)
    return web.Response(status=303, headers={"Location": host.core.start_hosted(form, _now())})


_CONFIRM = """<p class="sim">EasyPaisa simulator: no money moves</p>
<h1>Pay {amount} to store {store}</h1>
<p>Order {reference}</p>
<form method="post">{hidden}
<button class="primary" name="action" value="pay">Pay with EasyPaisa</button>
<button name="action" value="decline">Cancel</button></form>"""


@simulator_routes.post(
    SIM_PREFIX + "/easypay/Confirm.jsf",
    returns=_HTML,
    auth="public",
    raw_body=_FORM_BODY,
    responses={303: "Paid or declined: back to postBackURL"},
)
async def easypaisa_sim_confirm(call: Call[None, None]) -> web.Response:
    """Simulator: EasyPaisa's checkout page (pay or cancel)."""
    host = _sim(call)
    form = await service.read_form(call.request)
    token, postback = form.get("auth_token", ""), form.get("postBackURL", "")
    order = host.core.order_for_token(token, postback)
    action = form.get("action")
    if action is None:
        body = _CONFIRM.format(
            amount=html.escape(str(order.amount)),
            store=html.escape(host.core.settings.store_id),
            reference=html.escape(order.reference),
            hidden=_hidden({"auth_token": token, "postBackURL": postback}),
        )
        back = urlsplit(postback)
        return _bare_page("EasyPaisa", body, form_to=f"{back.scheme}://{back.netloc}")
    if action not in ("pay", "decline"):
        raise BadRequest("action must be pay or decline")
    target = host.core.finish_hosted(token, postback, action == "pay", _now())
    await _notify(call, host, order.reference)
    return web.Response(status=303, headers={"Location": target})


async def _json_body(call: Call[None, None]) -> dict[str, Any]:
    data = jsonin.loads(await jsonin.read_bytes(call.request) or b"{}")
    if not isinstance(data, dict):
        raise BadRequest("the body is not a JSON object")
    return data


_CREDENTIALS: Final = {
    "Credentials": {"type": "string", "description": "base64 of USERNAME:PASSWORD"}
}


@simulator_routes.post(
    SIM_PREFIX + INITIATE_MA_PATH,
    returns=_JSON,
    auth="public",
    raw_body=_JSON,
    headers=_CREDENTIALS,
)
async def easypaisa_sim_initiate_ma(call: Call[None, None]) -> web.Response:
    """Simulator: initiate-ma-transaction (held open until the phone decides)."""
    host = _sim(call)
    body = await _json_body(call)
    if not host.core.authorised(call.request.headers):
        return web.json_response(
            {"responseCode": codes.INVALID_CREDENTIALS, "responseDesc": "INVALID CREDENTIALS"}
        )
    order, refusal = host.core.start_ma(body, _now())
    if order is None:
        return web.json_response(refusal)
    waiter = host.waiters.setdefault(order.reference, asyncio.Event())
    await loops.woken(waiter, host.ma_wait)
    if order.open:  # nobody answered the phone
        host.core.settle(order.reference, False, _now())
        host.waiters.pop(order.reference, None)
        await _notify(call, host, order.reference)
    return web.json_response(host.core.ma_answer(order.reference))


@simulator_routes.post(
    SIM_PREFIX + INQUIRE_PATH, returns=_JSON, auth="public", raw_body=_JSON, headers=_CREDENTIALS
)
async def easypaisa_sim_inquire(call: Call[None, None]) -> web.Response:
    """Simulator: inquire-transaction."""
    host = _sim(call)
    body = await _json_body(call)
    if not host.core.authorised(call.request.headers):
        return web.json_response(
            {"responseCode": codes.INVALID_CREDENTIALS, "responseDesc": "INVALID CREDENTIALS"}
        )
    return web.json_response(host.core.inquire(body))


@simulator_routes.get(
    SIM_PREFIX + IPN_PATH + "{order:[A-Za-z0-9_-]{1,40}}", returns=_JSON, auth="public"
)
async def easypaisa_sim_ipn_record(call: Call[None, None]) -> web.Response:
    """Simulator: what an IPN's url answers (the order's status)."""
    return web.json_response(_sim(call).core.ipn_record(call.path("order")))


_PHONE = """<p class="sim">EasyPaisa simulator: the customer's phone</p>
<h1>Payment requests</h1>{requests}"""
_REQUEST = """<form method="post" action="{action}"><p>{msisdn}: pay {amount}
(order {reference})?</p>
<button class="primary" name="action" value="approve">Approve</button>
<button name="action" value="decline">Decline</button></form>"""


@simulator_routes.get(SIM_PREFIX + "/phone", returns=_HTML, auth="public")
async def easypaisa_sim_phone(call: Call[None, None]) -> web.Response:
    """Simulator: the phone, with the MA requests waiting for approval."""
    host = _sim(call)
    items = [
        _REQUEST.format(
            action=html.escape(f"{SIM_PREFIX}/phone/{order.reference}"),
            msisdn=html.escape(order.msisdn),
            amount=html.escape(str(order.amount)),
            reference=html.escape(order.reference),
        )
        for order in host.core.pending_ma()
    ]
    return _bare_page("EasyPaisa", _PHONE.format(requests="".join(items) or "<p>None.</p>"))


@simulator_routes.post(
    SIM_PREFIX + "/phone/{order:[A-Za-z0-9_-]{1,40}}",
    status=303,
    auth="public",
    raw_body=service.choice_body("approve", "decline"),
)
async def easypaisa_sim_phone_answer(call: Call[None, None]) -> web.Response:
    """Simulator: approve or decline an MA request on the phone."""
    host = _sim(call)
    approved = await service.read_choice(call.request, "approve", "decline")
    order = host.core.settle(call.path("order"), approved, _now())
    _decided(host, order.reference)
    await _notify(call, host, order.reference)
    return web.Response(status=303, headers={"Location": f"{SIM_PREFIX}/phone"})


# --- lifespan ---------------------------------------------------------------------------


async def lifespan(app: web.Application) -> AsyncIterator[None]:
    """The simulator (when the ``easypaisa`` gateway uses it) and the
    inquiry round (every ``payments_easypaisa_inquiry_interval`` seconds)."""
    settings = app[keys.SETTINGS]
    registry = app[service.GATEWAYS]
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


def simulator_app(store: EasyPaisaSettings, public_url: str, merchant_ipn: str) -> web.Application:
    """The simulator on its own, as ``wadud easypaisa-sim`` serves it: a
    stand-in for EasyPaisa's servers at ``public_url`` for the merchant whose
    IPN handler is ``merchant_ipn``, over the network as the real one is.
    ``store``: the same store settings the merchant is configured with (its
    ``endpoint`` is this simulator)."""
    app = web.Application(middlewares=[http.problems])
    app[ENDPOINTS] = []
    app[SIMULATOR] = SimulatorHost(EasyPaisaSimulator(store, public_url), merchant_ipn=merchant_ipn)

    async def client(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            app[SIMULATOR].http = session
            yield

    app.cleanup_ctx.append(client)
    simulator_routes.install(app)
    return app
