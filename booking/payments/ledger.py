"""Pure double-entry ledger: accounts, balanced transactions, and their builders.

Sign convention: an entry's ``amount_minor`` is positive for a debit and
negative for a credit, so "balanced" is simply "sums to zero", per currency
(DESIGN.md: every ledger transaction balances to zero; the database enforces
it again, this catches it before a round trip).

Accounts (names are strings so the SQL layer stores them as they are)::

    gateway_clearing:<gateway>   asset: money the gateway holds for us
    platform_revenue             income: our commission
    doctor_payable:<doctor_id>   liability: what we owe a doctor
    payouts_clearing             asset in transit: payouts sent, not yet settled
    patient_refunds_due          liability: money received that goes back to a patient

Money in (capture): debit the gateway clearing account with the whole amount;
credit the doctor and the platform by the commission split. Money back
(refund): the exact reverse, proportional to that split. Money out (payout):
debit the doctor's payable, credit payouts clearing. A refund after a payout
may leave a doctor's payable negative: the doctor then owes the platform, which
the next payout nets; this module does not forbid it because it cannot see
balances.

Rounding (the only place money could leak), all in favour of the doctor and
never more than one minor unit per step:

* :func:`split`: platform = floor(amount * percent_bp / 10000) + fixed,
  capped at the amount; doctor = amount - platform. Sums exactly.
* :func:`refund`: *cumulative* allocation. After refunds totalling R of a
  capture of G whose platform share is P, the platform has given back
  ceil(P * R / G) and the doctor the rest. Each refund's platform part is the
  difference of two such values, so: parts never go negative (monotone),
  neither side ever gives back more than it received (ceil(P*R/G) <= P and
  R - ceil(P*R/G) = floor(D*R/G) <= D), and after the last refund (R == G)
  both have given back exactly what they got, leaving every account at zero.
  Rounding each refund independently instead would drift by a paisa per refund.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from booking.payments.errors import (
    CurrencyMismatch,
    InvalidAmount,
    RefundExceedsCapture,
    Unbalanced,
)
from booking.payments.intent import Currency, Money

__all__ = [
    "BASIS_POINTS",
    "PATIENT_REFUNDS_DUE",
    "PAYOUTS_CLEARING",
    "PLATFORM_REVENUE",
    "CapturedPayment",
    "Commission",
    "Leg",
    "Transaction",
    "balances",
    "capture",
    "doctor_payable",
    "gateway_clearing",
    "owed_back",
    "owed_back_sent",
    "payout",
    "refund",
    "refunded_total",
    "simple",
    "split",
]

BASIS_POINTS: Final = 10_000
PLATFORM_REVENUE: Final = "platform_revenue"
PAYOUTS_CLEARING: Final = "payouts_clearing"
#: The bank transfer's refund-due account (:data:`.transfers.core.REFUNDS_DUE`), for
#: every gateway: money that arrived and is owed back to whoever sent it.
PATIENT_REFUNDS_DUE: Final = "patient_refunds_due"
_GATEWAY_PREFIX: Final = "gateway_clearing:"
_DOCTOR_PREFIX: Final = "doctor_payable:"


def _check_id(kind: str, value: str) -> str:
    # ":" separates the account family from its owner; an id containing one
    # would make two different accounts print the same.
    if not value or ":" in value:
        raise ValueError(f"invalid {kind} id {value!r}")
    return value


def gateway_clearing(gateway: str) -> str:
    return _GATEWAY_PREFIX + _check_id("gateway", gateway)


def doctor_payable(doctor_id: str) -> str:
    return _DOCTOR_PREFIX + _check_id("doctor", doctor_id)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Commission:
    """The platform's cut for one clinic in one region.

    ``percent_bp`` in basis points (1 bp = 0.01 %, so 1250 is 12.5 %);
    ``fixed_minor`` in the minor units of the region's currency (a region has
    one currency, so the row needs no currency of its own).
    """

    percent_bp: int
    fixed_minor: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.percent_bp) or not 0 <= self.percent_bp <= BASIS_POINTS:
            raise InvalidAmount(f"percent_bp must be 0..{BASIS_POINTS}, got {self.percent_bp!r}")
        if not _is_int(self.fixed_minor) or self.fixed_minor < 0:
            raise InvalidAmount(f"fixed_minor must be a non-negative int, got {self.fixed_minor!r}")


def split(amount: int, commission: Commission) -> tuple[int, int]:
    """Return ``(platform, doctor)`` with ``platform + doctor == amount`` exactly.

    The percentage is floored (the fraction goes to the doctor) and the fixed
    fee never takes the platform's share above the whole amount.
    """
    if not _is_int(amount) or amount < 0:
        raise InvalidAmount(f"amount must be a non-negative int, got {amount!r}")
    platform = min(amount, amount * commission.percent_bp // BASIS_POINTS + commission.fixed_minor)
    return platform, amount - platform


@dataclass(frozen=True, slots=True)
class Leg:
    """One leg: positive debits, negative credits, never zero (a zero leg says nothing)."""

    account: str
    amount_minor: int
    currency: Currency

    def __post_init__(self) -> None:
        if not _is_int(self.amount_minor) or self.amount_minor == 0:
            raise InvalidAmount(f"entry amount must be a non-zero int, got {self.amount_minor!r}")
        if not self.account:
            raise ValueError("entry needs an account")
        object.__setattr__(self, "currency", Currency(self.currency))


@dataclass(frozen=True, slots=True)
class Transaction:
    """Entries that move money together; balanced per currency or not built at all.

    ``kind`` is ``capture``, ``refund`` or ``payout``; ``reference`` ties it to
    the payment (captures, refunds) or payout it records.
    """

    kind: str
    reference: str
    entries: tuple[Leg, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        if len(self.entries) < 2:
            raise Unbalanced(f"{self.kind} {self.reference}: a transaction needs two entries")
        totals: dict[Currency, int] = defaultdict(int)
        for entry in self.entries:
            totals[entry.currency] += entry.amount_minor
        off = {str(currency): total for currency, total in totals.items() if total}
        if off:
            raise Unbalanced(f"{self.kind} {self.reference} does not balance: {off}")

    def amount_of(self, account: str) -> int:
        """Net amount this transaction posts to ``account`` (0 if untouched)."""
        return sum(e.amount_minor for e in self.entries if e.account == account)


def _entries(currency: Currency, legs: Iterable[tuple[str, int]]) -> tuple[Leg, ...]:
    return tuple(Leg(account, amount, currency) for account, amount in legs if amount)


def simple(kind: str, reference: str, amount: Money, *, debit: str, credit: str) -> Transaction:
    """A simple (two-entry) transaction: ``amount`` debited to ``debit`` and
    credited to ``credit``."""
    return Transaction(
        kind,
        reference,
        (
            Leg(debit, amount.amount_minor, amount.currency),
            Leg(credit, -amount.amount_minor, amount.currency),
        ),
    )


def _positive(amount: Money, what: str) -> None:
    if amount.amount_minor <= 0:
        raise InvalidAmount(f"{what} must be positive, got {amount}")


@dataclass(frozen=True, slots=True)
class CapturedPayment:
    """A payment the gateway has confirmed, as the ledger needs it."""

    payment_id: str
    gateway: str
    doctor_id: str
    amount: Money


def capture(payment: CapturedPayment, commission: Commission) -> Transaction:
    """Money in: debit gateway clearing; credit doctor payable and platform revenue."""
    _positive(payment.amount, "a capture")
    gross = payment.amount.amount_minor
    platform, doctor = split(gross, commission)
    return Transaction(
        "capture",
        payment.payment_id,
        _entries(
            payment.amount.currency,
            [
                (gateway_clearing(payment.gateway), gross),
                (doctor_payable(payment.doctor_id), -doctor),
                (PLATFORM_REVENUE, -platform),
            ],
        ),
    )


@dataclass(frozen=True, slots=True)
class _Capture:
    clearing: str
    doctor: str
    currency: Currency
    gross: int
    platform: int


def _read_capture(txn: Transaction) -> _Capture:
    if txn.kind != "capture":
        raise ValueError(f"expected a capture, got a {txn.kind}")
    clearing = [e for e in txn.entries if e.account.startswith(_GATEWAY_PREFIX)]
    doctors = {e.account for e in txn.entries if e.account.startswith(_DOCTOR_PREFIX)}
    if len(clearing) != 1 or len(doctors) > 1:
        raise ValueError("not a capture built by ledger.capture()")
    entry = clearing[0]
    (doctor,) = doctors or {""}
    return _Capture(
        clearing=entry.account,
        doctor=doctor,
        currency=entry.currency,
        gross=entry.amount_minor,
        platform=-txn.amount_of(PLATFORM_REVENUE),
    )


def refunded_total(capture_txn: Transaction, refunds: Iterable[Transaction]) -> int:
    """Minor units already given back on ``capture_txn`` by ``refunds``."""
    cap = _read_capture(capture_txn)
    total = 0
    for txn in refunds:
        if txn.kind != "refund" or txn.reference != capture_txn.reference:
            raise ValueError(
                f"{txn.kind} {txn.reference} is not a refund of {capture_txn.reference}"
            )
        total -= txn.amount_of(cap.clearing)
    return total


def _platform_returned(cap: _Capture, refunded: int) -> int:
    # ceil(P * R / G) with integers only.
    return -(-cap.platform * refunded // cap.gross)


def refund(
    capture_txn: Transaction, amount: Money, previous: Sequence[Transaction] = ()
) -> Transaction:
    """Money back: reverse ``amount`` of a capture, proportionally to its split.

    ``previous`` are the refunds already posted against this capture; the
    cumulative rounding rule (module docstring) needs them, and they bound the
    total: refunding more than was captured raises :class:`RefundExceedsCapture`.
    """
    cap = _read_capture(capture_txn)
    if amount.currency is not cap.currency:
        raise CurrencyMismatch(f"refund in {amount.currency} of a capture in {cap.currency}")
    _positive(amount, "a refund")
    before = refunded_total(capture_txn, previous)
    after = before + amount.amount_minor
    if after > cap.gross:
        raise RefundExceedsCapture(
            f"refunding {amount.amount_minor} after {before} exceeds the capture of {cap.gross}"
        )
    platform = _platform_returned(cap, after) - _platform_returned(cap, before)
    doctor = amount.amount_minor - platform
    return Transaction(
        "refund",
        capture_txn.reference,
        _entries(
            cap.currency,
            [
                (cap.clearing, -amount.amount_minor),
                (cap.doctor, doctor),
                (PLATFORM_REVENUE, platform),
            ],
        ),
    )


def payout(doctor_id: str, amount: Money, payout_id: str) -> Transaction:
    """Money out: debit the doctor's payable, credit payouts clearing."""
    _positive(amount, "a payout")
    return simple(
        "payout", payout_id, amount, debit=doctor_payable(doctor_id), credit=PAYOUTS_CLEARING
    )


def owed_back(gateway: str, amount: Money, reference: str) -> Transaction:
    """Money in that is not ours to keep (paid after its booking lapsed, on a
    gateway that cannot send it back): debit the gateway's clearing account,
    credit what is owed to the patient. No revenue, nothing to the doctor."""
    _positive(amount, "money owed back")
    return simple(
        "adjustment",
        f"late_payment:{reference}",
        amount,
        debit=gateway_clearing(gateway),
        credit=PATIENT_REFUNDS_DUE,
    )


def owed_back_sent(gateway: str, amount: Money, reference: str) -> Transaction:
    """The money :func:`owed_back` parked left through the gateway's account:
    its exact reverse."""
    _positive(amount, "money sent back")
    return simple(
        "adjustment",
        f"late_payment_refund:{reference}",
        amount,
        debit=PATIENT_REFUNDS_DUE,
        credit=gateway_clearing(gateway),
    )


def balances(transactions: Iterable[Transaction]) -> dict[tuple[str, Currency], int]:
    """Net balance of every (account, currency) touched, zero balances included."""
    totals: dict[tuple[str, Currency], int] = defaultdict(int)
    for txn in transactions:
        for entry in txn.entries:
            totals[entry.account, entry.currency] += entry.amount_minor
    return dict(totals)
