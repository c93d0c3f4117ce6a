"""Plugs the booking and payments API into the app: every resource module's
routes, and the background tasks they own (``lifespan``, a cleanup context)."""

from __future__ import annotations

from types import ModuleType

from aiohttp import web

from booking.api import bookings, call_reports, clinics, doctors, queue, reviews, search
from booking.payments import api as payments
from booking.payments import easypaisa_http

MODULES: tuple[ModuleType, ...] = (
    clinics,
    doctors,
    search,
    bookings,
    call_reports,
    queue,
    reviews,
    payments,
)


def install(app: web.Application) -> None:
    for module in MODULES:
        module.routes.install(app)
        lifespan = getattr(module, "lifespan", None)
        if lifespan is not None:
            app.cleanup_ctx.append(lifespan)
    # EasyPaisa's routes are the payments module's; its simulator and inquiry
    # round need the gateways that module's lifespan builds, so they start after.
    app.cleanup_ctx.append(easypaisa_http.lifespan)
