"""Plugs payments into the app: the gateways, the payments API's routes, and
the background tasks they own.

The gateways are built here, once per app, in a cleanup context that opens
the one HTTP client session the remote gateways share and closes it on
shutdown. They are handed on from here: the handlers and rounds read them
from the app (:data:`booking.payments.keys.GATEWAYS`), and a booking's
cancellation is given a refunder bound to them
(:data:`booking.api.bookings.REFUNDER`), so the bookings code below never
imports payments.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

import booking.payments.checkout.http
import booking.payments.easypaisa.http
from booking.api import bookings
from booking.payments.gateways.registry import build_registry
from booking.payments.keys import GATEWAYS
from booking.payments.refunds.service import refund_booking
from wadud import keys

__all__ = ["gateways_context", "install"]


async def gateways_context(app: web.Application) -> AsyncIterator[None]:
    """Build the configured gateways and hand them to the app's parts."""
    # Server to server: no gateway's API sets a cookie we should send back,
    # and a jar would carry one gateway's answers into the next call.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        registry = build_registry(app[keys.SETTINGS], session)
        app[GATEWAYS] = registry
        app[bookings.REFUNDER] = functools.partial(refund_booking, registry=registry)
        yield


def install(app: web.Application) -> None:
    app.cleanup_ctx.append(gateways_context)
    booking.payments.checkout.http.routes.install(app)
    app.cleanup_ctx.append(booking.payments.checkout.http.lifespan)
    # EasyPaisa's routes are the payments module's; its simulator and inquiry
    # round need the gateways, so they start after.
    app.cleanup_ctx.append(booking.payments.easypaisa.http.lifespan)
