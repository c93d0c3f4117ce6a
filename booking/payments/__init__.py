"""Payments: intents and their state machine, the gateway interface, the ledger.

This package's names are the pure cores (:mod:`.intent`, the errors, the
gateway interface :mod:`.gateway`); nothing they hold touches the database.
The adapters live in :mod:`.gateways` (the sandbox, JazzCash, card,
EasyPaisa), above the interface they implement; only
:mod:`.gateways.registry` builds them, in the app's assembly
(:mod:`.http`), and the rest of payments knows a gateway by the interface.
The service modules (:mod:`.service`, :mod:`.settle`,
:mod:`.transfer_service`, ...) keep intents, the ledger and refunds in
PostgreSQL. The bookings code never imports this package: a cancellation's
refund is handed to it (``booking.service.Refunder``).
"""

from __future__ import annotations

from booking.payments.errors import (
    AmountMismatch,
    CurrencyMismatch,
    GatewayError,
    InvalidAmount,
    InvalidSignature,
    InvalidTransition,
    MalformedPayload,
    PaymentError,
    RefundExceedsCapture,
    StaleWebhook,
    Unbalanced,
    UnknownGateway,
    UnknownReference,
    UnsupportedCurrency,
)
from booking.payments.gateway import (
    CheckoutSession,
    Gateway,
    GatewayRegistry,
    InquiryResult,
    PaymentStatus,
    RefundResult,
    VerifiedResult,
    WebhookEvent,
)
from booking.payments.intent import (
    Currency,
    IntentEvent,
    IntentState,
    Money,
    PaymentIntent,
    refund_event,
    transition,
)

__all__ = [
    "AmountMismatch",
    "CheckoutSession",
    "Currency",
    "CurrencyMismatch",
    "Gateway",
    "GatewayError",
    "GatewayRegistry",
    "InquiryResult",
    "IntentEvent",
    "IntentState",
    "InvalidAmount",
    "InvalidSignature",
    "InvalidTransition",
    "MalformedPayload",
    "Money",
    "PaymentError",
    "PaymentIntent",
    "PaymentStatus",
    "RefundExceedsCapture",
    "RefundResult",
    "StaleWebhook",
    "Unbalanced",
    "UnknownGateway",
    "UnknownReference",
    "UnsupportedCurrency",
    "VerifiedResult",
    "WebhookEvent",
    "refund_event",
    "transition",
]
