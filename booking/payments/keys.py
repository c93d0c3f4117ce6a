"""What payments keeps in the app's state, under typed keys (as
:mod:`wadud.state.keys` is the ground's)."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from booking.payments.gateway import GatewayRegistry

__all__ = ["GATEWAYS"]

#: The app's gateways, built once in :func:`booking.payments.http.gateways_context`.
GATEWAYS: Final = web.AppKey("payments_gateways", GatewayRegistry)
