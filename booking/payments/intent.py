"""Payment intents: money, and the state machine every payment goes through.

The machine (one table, h11 style; read it before touching anything)::

    REQUIRES_PAYMENT --redirect--> PROCESSING --verified_success--> SUCCEEDED
        |                           |  ^   |                             |   |
        | cancel, expire            +--+   | verified_failure            |   |
        v                       redirect   v                             |   |
    CANCELLED <------- expire ------   FAILED           refund_partial   |   | refund_full
                 (from PROCESSING)                                       v   |
                                        PARTIALLY_REFUNDED (refund_partial   |
                                          |                 loops here)      |
                                          +--refund_full--> REFUNDED <-------+

    Not drawn: the idempotent self-loops for a duplicate verdict or cancel
    (SUCCEEDED/PARTIALLY_REFUNDED/REFUNDED + verified_success, FAILED +
    verified_failure, CANCELLED + cancel/expire). The table below is the truth.

* ``redirect``: we handed the patient a checkout session (URL or form). Asking
  again while PROCESSING (the patient reloads or reopens the page) is allowed.
* ``verified_success`` / ``verified_failure``: a gateway result *after* its
  signature or an inquiry proved it. A browser redirect alone is never an
  event. The callback and the webhook both report the same outcome, so the
  second arrival is an idempotent self-loop, never an error; a *conflicting*
  verdict (failure after success) is an :class:`InvalidPaymentTransition` to
  investigate.
* ``cancel``: the patient or the booking gave up before paying. It is refused
  while PROCESSING because money may already be moving at the gateway.
* ``expire``: the checkout window closed. Allowed while PROCESSING, but the
  caller must inquire the gateway first and only expire on a non-success
  answer; expiry lands in CANCELLED (nobody paid), the reason is recorded by
  the caller.
* ``refund_partial`` / ``refund_full``: which one is decided by
  :func:`refund_event` from the amounts, never guessed by the caller.

FAILED, CANCELLED and REFUNDED are terminal: a retry after failure is a new
intent with a new gateway reference (gateways such as JazzCash require a fresh
transaction reference per attempt).

This module is pure: no I/O, no clock (times are fields or parameters).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType
from typing import Final

from booking.payments.errors import (
    CurrencyMismatch,
    InvalidAmount,
    InvalidPaymentTransition,
    RefundExceedsCapture,
    UnsupportedCurrency,
)

__all__ = [
    "LIVE_STATES",
    "MINOR_UNIT_EXPONENT",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Currency",
    "IntentEvent",
    "IntentState",
    "Money",
    "PaymentIntent",
    "refund_event",
    "transition",
]


class Currency(enum.StrEnum):
    """ISO 4217 codes we trade in (the launch regions)."""

    PKR = "PKR"
    AED = "AED"
    QAR = "QAR"
    SAR = "SAR"


#: ISO 4217 minor-unit exponent: 1 PKR = 100 paisa, 1 AED = 100 fils,
#: 1 QAR = 100 dirham, 1 SAR = 100 halala.
MINOR_UNIT_EXPONENT: Final = MappingProxyType(
    {Currency.PKR: 2, Currency.AED: 2, Currency.QAR: 2, Currency.SAR: 2}
)


def _currency(value: str) -> Currency:
    try:
        return Currency(value)
    except ValueError:
        raise UnsupportedCurrency(f"unsupported currency {value!r}") from None


@dataclass(frozen=True, slots=True)
class Money:
    """An integer number of minor units in one currency.

    Never a float: float paisa drift, and gateways (JazzCash ``pp_Amount``,
    Stripe ``amount``) speak integer minor units anyway. The amount may be
    negative (ledger arithmetic); intents and refunds check positivity.
    """

    amount_minor: int
    currency: Currency

    def __post_init__(self) -> None:
        # bool is an int subclass; True paisa is a bug, not an amount.
        if not isinstance(self.amount_minor, int) or isinstance(self.amount_minor, bool):
            raise InvalidAmount(f"amount must be integer minor units, got {self.amount_minor!r}")
        object.__setattr__(self, "currency", _currency(self.currency))

    @classmethod
    def parse_minor(cls, text: str, currency: Currency | str) -> Money:
        """Parse a gateway's decimal digit string of minor units (``"150000"``)."""
        # str.isdigit accepts other scripts' digits ("١٢"); gateways send ASCII.
        if not text or not text.isascii() or not text.isdigit():
            raise InvalidAmount(f"not an integer amount of minor units: {text!r}")
        return cls(int(text), _currency(currency))

    def _same(self, other: Money) -> None:
        if self.currency is not other.currency:
            raise CurrencyMismatch(f"{self.currency} and {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_minor, self.currency)

    def __str__(self) -> str:
        exp = MINOR_UNIT_EXPONENT[self.currency]
        sign = "-" if self.amount_minor < 0 else ""
        major, minor = divmod(abs(self.amount_minor), 10**exp)
        return f"{self.currency} {sign}{major}.{minor:0{exp}d}"


class IntentState(enum.StrEnum):
    REQUIRES_PAYMENT = "requires_payment"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


class IntentEvent(enum.StrEnum):
    REDIRECT = "redirect"
    VERIFIED_SUCCESS = "verified_success"
    VERIFIED_FAILURE = "verified_failure"
    CANCEL = "cancel"
    EXPIRE = "expire"
    REFUND_PARTIAL = "refund_partial"
    REFUND_FULL = "refund_full"


_S = IntentState
_E = IntentEvent

#: The one transition table. Anything absent is an InvalidTransition.
TRANSITIONS: Final = MappingProxyType(
    {
        _S.REQUIRES_PAYMENT: MappingProxyType(
            {
                _E.REDIRECT: _S.PROCESSING,
                _E.CANCEL: _S.CANCELLED,
                _E.EXPIRE: _S.CANCELLED,
            }
        ),
        _S.PROCESSING: MappingProxyType(
            {
                _E.REDIRECT: _S.PROCESSING,
                _E.VERIFIED_SUCCESS: _S.SUCCEEDED,
                _E.VERIFIED_FAILURE: _S.FAILED,
                _E.EXPIRE: _S.CANCELLED,
            }
        ),
        _S.SUCCEEDED: MappingProxyType(
            {
                _E.VERIFIED_SUCCESS: _S.SUCCEEDED,
                _E.REFUND_PARTIAL: _S.PARTIALLY_REFUNDED,
                _E.REFUND_FULL: _S.REFUNDED,
            }
        ),
        _S.PARTIALLY_REFUNDED: MappingProxyType(
            {
                _E.VERIFIED_SUCCESS: _S.PARTIALLY_REFUNDED,
                _E.REFUND_PARTIAL: _S.PARTIALLY_REFUNDED,
                _E.REFUND_FULL: _S.REFUNDED,
            }
        ),
        _S.FAILED: MappingProxyType({_E.VERIFIED_FAILURE: _S.FAILED}),
        _S.CANCELLED: MappingProxyType({_E.CANCEL: _S.CANCELLED, _E.EXPIRE: _S.CANCELLED}),
        _S.REFUNDED: MappingProxyType({_E.VERIFIED_SUCCESS: _S.REFUNDED}),
    }
)

#: States no event leaves (self-loops for duplicate deliveries aside).
TERMINAL_STATES: Final = frozenset({_S.FAILED, _S.CANCELLED, _S.REFUNDED})
#: States of an intent waiting for money: its checkout may still be paid.
LIVE_STATES: Final = frozenset({_S.REQUIRES_PAYMENT, _S.PROCESSING})


def transition(state: IntentState, event: IntentEvent) -> IntentState:
    """Return the state after ``event``; raise :class:`InvalidPaymentTransition` if forbidden."""
    try:
        return TRANSITIONS[IntentState(state)][IntentEvent(event)]
    except (KeyError, ValueError):
        raise InvalidPaymentTransition(str(state), str(event)) from None


def refund_event(captured: Money, already_refunded: Money, amount: Money) -> IntentEvent:
    """Classify a refund of ``amount`` given what was captured and refunded so far.

    Raises :class:`InvalidAmount` for a non-positive refund and
    :class:`RefundExceedsCapture` when the running total would pass the capture.
    """
    total = already_refunded + amount  # also rejects a currency mix
    captured._same(amount)
    if amount.amount_minor <= 0:
        raise InvalidAmount(f"refund must be positive, got {amount}")
    if total.amount_minor > captured.amount_minor:
        raise RefundExceedsCapture(
            f"refunding {amount} after {already_refunded} exceeds {captured}"
        )
    return _E.REFUND_FULL if total.amount_minor == captured.amount_minor else _E.REFUND_PARTIAL


def _require_aware(name: str, value: datetime) -> None:
    # A naive datetime's .timestamp() silently uses the host's zone.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


@dataclass(frozen=True, slots=True)
class PaymentIntent:
    """What a booking asks a gateway to collect.

    ``return_url`` is our callback endpoint the gateway sends the browser back
    to; ``created_at``/``expires_at`` bound the checkout window (JazzCash's
    ``pp_TxnDateTime``/``pp_TxnExpiryDateTime`` come from them, so creating a
    checkout never reads the clock). ``gateway``/``reference`` are filled once
    a checkout session exists.
    """

    id: str
    amount: Money
    description: str
    return_url: str
    created_at: datetime
    expires_at: datetime
    state: IntentState = IntentState.REQUIRES_PAYMENT
    gateway: str | None = None
    reference: str | None = None

    def __post_init__(self) -> None:
        if self.amount.amount_minor <= 0:
            raise InvalidAmount(f"an intent must ask for a positive amount, got {self.amount}")
        _require_aware("created_at", self.created_at)
        _require_aware("expires_at", self.expires_at)
        if self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")

    def apply(self, event: IntentEvent) -> PaymentIntent:
        """Return a copy in the state ``event`` leads to (see :func:`transition`)."""
        return replace(self, state=transition(self.state, event))
