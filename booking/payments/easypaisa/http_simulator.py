"""The built-in EasyPaisa simulator over HTTP
(:mod:`booking.payments.gateways.easypaisa_sim` is its core).

Under ``/easypaisa-sim/``, only while the ``easypaisa`` gateway is
configured to use it, or on its own (:func:`simulator_app`, ``wadud
easypaisa-sim``): ``Index.jsf``, ``Confirm.jsf``, the Open API's two calls,
the IPN record, and ``/easypaisa-sim/phone``, the customer's phone, where a
pending MA request is approved or declined. Settling a simulated order
"sends" the IPN in process through the very function the webhook endpoint
calls, before the browser is redirected (as the sandbox checkout does),
unless the test knob ``deliver_ipn`` is off.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web

from booking.payments.checkout.forms import choice_body, form_body, read_choice, read_form
from booking.payments.checkout.http_webhooks import deliver
from booking.payments.easypaisa.pages import bare_page, hidden
from booking.payments.gateways.easypaisa import (
    INITIATE_MA_PATH,
    INQUIRE_PATH,
    IPN_PATH,
    EasyPaisaSettings,
    ipn_notification,
)
from booking.payments.gateways.easypaisa_sim import SIM_PREFIX, EasyPaisaSimulator, codes
from wadud import jsonin
from wadud.errors import BadRequest, NotFound, WadudError
from wadud.messaging import loops
from wadud.web import http
from wadud.web.api import ENDPOINTS, Call, Routes

__all__ = ["SIMULATOR", "SimulatorHost", "simulator_app", "simulator_routes"]

log = logging.getLogger("wadud.payments.easypaisa")

simulator_routes = Routes(
    "easypaisa-simulator",
    "A local EasyPaisa (development, tests, benchmarks): in `wadud serve` while no store is"
    " configured, or on its own with `wadud easypaisa-sim`.",
)

_HTML: Final = {"content": {"text/html": {"schema": {"type": "string"}}}}
_JSON: Final = {"content": {"application/json": {"schema": {"type": "object"}}}}


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
        await deliver(
            call, host.core.settings.name, *ipn_notification(host.core.ipn_url(reference)), _now()
        )
    except WadudError:
        log.warning("simulated EasyPaisa IPN failed", extra={"reference": reference}, exc_info=True)


def _decided(host: SimulatorHost, reference: str) -> None:
    waiter = host.waiters.pop(reference, None)
    if waiter is not None:
        waiter.set()


_FORM_BODY: Final = form_body()


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
    form = await read_form(call.request)
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
    form = await read_form(call.request)
    token, postback = form.get("auth_token", ""), form.get("postBackURL", "")
    order = host.core.order_for_token(token, postback)
    action = form.get("action")
    if action is None:
        body = _CONFIRM.format(
            amount=html.escape(str(order.amount)),
            store=html.escape(host.core.settings.store_id),
            reference=html.escape(order.reference),
            hidden=hidden({"auth_token": token, "postBackURL": postback}),
        )
        back = urlsplit(postback)
        return bare_page("EasyPaisa", body, form_to=f"{back.scheme}://{back.netloc}")
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
    return bare_page("EasyPaisa", _PHONE.format(requests="".join(items) or "<p>None.</p>"))


@simulator_routes.post(
    SIM_PREFIX + "/phone/{order:[A-Za-z0-9_-]{1,40}}",
    status=303,
    auth="public",
    raw_body=choice_body("approve", "decline"),
)
async def easypaisa_sim_phone_answer(call: Call[None, None]) -> web.Response:
    """Simulator: approve or decline an MA request on the phone."""
    host = _sim(call)
    approved = await read_choice(call.request, "approve", "decline")
    order = host.core.settle(call.path("order"), approved, _now())
    _decided(host, order.reference)
    await _notify(call, host, order.reference)
    return web.Response(status=303, headers={"Location": f"{SIM_PREFIX}/phone"})


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
