"""Plugs the booking API into the app: every resource module's routes, and
the background tasks they own (``lifespan``, a cleanup context). Payments
plug in beside it (:mod:`booking.payments.http`)."""

from __future__ import annotations

from types import ModuleType

from aiohttp import web

from booking.api import (
    bookings,
    call_reports,
    clinics,
    doctors,
    phone_calls,
    queue,
    reviews,
    search,
    visits,
)

MODULES: tuple[ModuleType, ...] = (
    clinics,
    doctors,
    search,
    bookings,
    call_reports,
    phone_calls,
    queue,
    reviews,
    visits,
)


def install(app: web.Application) -> None:
    for module in MODULES:
        module.routes.install(app)
        lifespan = getattr(module, "lifespan", None)
        if lifespan is not None:
            app.cleanup_ctx.append(lifespan)
