"""Payments: intents and their state machine, gateway adapters, the ledger.

Phase 1 holds the pure cores (:mod:`.intent`, :mod:`.ledger`, the signature
recipes) and the gateway adapters (:mod:`.sandbox`, :mod:`.jazzcash`,
:mod:`.card`) behind one interface (:mod:`.gateway`). The HTTP endpoints and
SQL call into these; nothing here touches the database.
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
    PaymentSettings,
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
    "PaymentSettings",
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
