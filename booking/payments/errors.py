"""Typed errors of the payments package.

One root, :class:`PaymentError`; every child carries the HTTP status and the
problem ``code`` slug the API middleware puts in its JSON problem response, so
handlers never build error bodies by hand. Following h11, errors where *the
peer* (a gateway, a forged callback) broke the protocol are kept apart from
errors where *we* were asked to do something invalid (a transition the state
machine forbids, an over-refund). Malformed input is also a ``ValueError`` so
generic parsing code can catch it without importing this module.
"""

from __future__ import annotations

from typing import ClassVar

from wadud.errors import Conflict, WadudError


class PaymentError(WadudError):
    """Root of every payments error."""

    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "payment_error"
    title: ClassVar[str] = "Payment error"


# --- the peer broke the protocol -------------------------------------------


class InvalidSignature(PaymentError, ValueError):
    """A callback, webhook or gateway response failed its HMAC check."""

    http_status = 400
    code = "invalid_signature"


class StaleWebhook(InvalidSignature):
    """A correctly signed message whose timestamp is outside the tolerance.

    A child of :class:`InvalidSignature` because a replayed signature is no
    proof of origin *now*; callers that only care "trust it or not" catch the
    parent.
    """

    http_status = 400
    code = "stale_webhook"


class MalformedPayload(PaymentError, ValueError):
    """A callback, webhook or gateway answer that does not have the documented shape."""

    http_status = 400
    code = "malformed_payload"


class GatewayError(PaymentError):
    """The gateway could not be reached or answered something unusable."""

    http_status = 502
    code = "gateway_error"


class GatewayUnreachable(GatewayError):
    """The gateway did not answer at all: refused, timed out, or a 5xx (its
    own outage). An inquiry round backs off from it (:mod:`.reach`)."""

    code = "gateway_unreachable"


# --- we were asked to do something invalid ---------------------------------


class InvalidPaymentTransition(PaymentError):
    """The payment intent state machine forbids this event in this state."""

    http_status = 409
    code = "invalid_transition"

    def __init__(self, state: str, event: str) -> None:
        super().__init__(f"event {event!r} is not allowed in state {state!r}")
        self.state = state
        self.event = event


class BookingNotPayable(PaymentError, Conflict):
    """The booking is not held for payment (paid, expired, cancelled, or free)."""

    http_status = 409
    code = "booking_not_payable"


class LivePaymentExists(PaymentError, Conflict):
    """The booking has a live payment on another gateway."""

    http_status = 409
    code = "live_payment_exists"


class PayoutExceedsPayable(PaymentError, Conflict):
    """A payout larger than what the platform owes the doctor."""

    http_status = 409
    code = "payout_exceeds_payable"


class AmountMismatch(PaymentError):
    """A verified gateway result names another amount or currency than the intent."""

    http_status = 409
    code = "amount_mismatch"


class RefundExceedsCapture(PaymentError, ValueError):
    """A refund would take the total refunded above the captured amount."""

    http_status = 409
    code = "refund_exceeds_capture"


class InvalidAmount(PaymentError, ValueError):
    """An amount that is not a positive integer number of minor units."""

    http_status = 422
    code = "invalid_amount"


class CurrencyMismatch(InvalidAmount):
    """Arithmetic or a comparison between two currencies."""

    code = "currency_mismatch"


class UnsupportedCurrency(PaymentError, ValueError):
    """A currency we do not trade in, or that this gateway does not accept."""

    http_status = 422
    code = "unsupported_currency"


class UnknownGateway(PaymentError, LookupError):
    """No gateway of that name is configured."""

    http_status = 422
    code = "unknown_gateway"


class UnknownReference(PaymentError, LookupError):
    """The gateway has no payment under that reference."""

    http_status = 404
    code = "unknown_reference"


class Unbalanced(PaymentError, ValueError):
    """A ledger transaction whose entries do not sum to zero in every currency.

    Always a bug on our side, hence 500: the database constraint would refuse
    it anyway, this catches it before a round trip.
    """

    http_status = 500
    code = "ledger_unbalanced"
