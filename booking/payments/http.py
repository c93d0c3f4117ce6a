"""Plugs payments into the app: the gateways, every folder's routes, the
background tasks they own, and the clinic's ledger, which belongs to all of
them.

The gateways are built here, once per app, in a cleanup context that opens
the one HTTP client session the remote gateways share and closes it on
shutdown. They are handed on from here: the handlers and rounds read them
from the app (:data:`booking.payments.keys.GATEWAYS`), and a booking's
cancellation is given a refunder bound to them
(:data:`booking.api.bookings.REFUNDER`), so the bookings code below never
imports payments.

This module is the one above payments' folders, which never import it.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Literal
from uuid import UUID

import aiohttp
from aiohttp import web
from pydantic import Field

import booking.payments.checkout.http
import booking.payments.checkout.pages
import booking.payments.easypaisa.http
import booking.payments.easypaisa.http_simulator
import booking.payments.payouts.http
import booking.payments.refunds.http
import booking.payments.transfers.http
from booking.api import bookings
from booking.payments.gateways.registry import build_registry
from booking.payments.keys import GATEWAYS
from booking.payments.paging import OffsetQuery
from booking.payments.postings import ledger_page
from booking.payments.refunds.service import refund_booking
from wadud.state import keys
from wadud.state.rows import from_row
from wadud.web.api import ApiModel, Call, Role, Routes

__all__ = ["gateways_context", "install", "routes"]

routes = Routes("payments", "The clinic's ledger.")


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
    for folder in (
        booking.payments.checkout.pages.routes,
        booking.payments.easypaisa.http.routes,
        booking.payments.easypaisa.http_simulator.simulator_routes,
        booking.payments.payouts.http.routes,
        booking.payments.transfers.http.routes,
        booking.payments.refunds.http.routes,
        booking.payments.checkout.http.routes,
        routes,
    ):
        folder.install(app)
    # Bank details stored in clear are sealed before anything else runs.
    app.cleanup_ctx.append(booking.payments.payouts.http.lifespan)
    app.cleanup_ctx.append(booking.payments.checkout.http.lifespan)
    # EasyPaisa's simulator and inquiry round need the gateways, so they
    # start after.
    app.cleanup_ctx.append(booking.payments.easypaisa.http.lifespan)


# --- the clinic's ledger ----------------------------------------------------------------


class LedgerQuery(OffsetQuery):
    kind: Literal["capture", "refund", "payout", "adjustment"] | None = None


class LedgerEntry(ApiModel):
    account: str
    amount_minor: int = Field(description="Debit positive, credit negative.")
    currency: str


class LedgerTransaction(ApiModel):
    id: UUID
    kind: str
    reference: str
    payment_id: UUID | None
    booking_id: UUID | None
    created_at: datetime
    entries: list[LedgerEntry]


class LedgerPage(ApiModel):
    items: list[LedgerTransaction]
    next_offset: int | None


@routes.get(
    "/api/v1/clinics/{clinic_id:uuid}/ledger",
    query=LedgerQuery,
    returns=LedgerPage,
    auth={Role.CLINIC_STAFF, Role.ADMIN},
)
async def clinic_ledger(call: Call[None, LedgerQuery]) -> LedgerPage:
    """A clinic's ledger transactions with their entries, newest first (staff
    of the clinic, admins). Page with ``offset``/``limit``."""
    q = call.query
    clinic_id = call.overseen_clinic()
    page, entries, more = await ledger_page(call.pool, clinic_id, q.kind, q.limit, q.offset)
    by_txn: dict[UUID, list[LedgerEntry]] = {}
    for e in entries:
        by_txn.setdefault(e["transaction_id"], []).append(from_row(LedgerEntry, e))
    return LedgerPage(
        items=[
            from_row(
                LedgerTransaction,
                h,
                payment_id=h["payment_intent_id"],
                entries=by_txn.get(h["id"], []),
            )
            for h in page
        ],
        next_offset=q.offset + q.limit if more else None,
    )
