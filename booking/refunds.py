"""Cancellation refund policy, as a pure function of times and amounts.

A policy is a list of tiers, each "cancelled at least ``min_notice`` before the
slot starts refunds ``basis_points`` / 10 000 of what was paid". The patient
gets the first tier their notice reaches; below every tier they get nothing.
Cancellations by the doctor (including a declined request) or by the clinic
always refund in full: the patient did nothing to lose money over.

Rounding: the refund is ``ceil(amount_paid * basis_points / 10_000)`` in
integer arithmetic (no floats), so it is never below the exact share: any
fraction of a minor unit goes to the patient, and the clinic gives up less
than one minor unit.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

from booking.errors import InvalidRefundPolicy, InvalidRefundRequest
from booking.lifecycle import BookingEvent

__all__ = [
    "CANCELLERS",
    "DEFAULT_REFUND_POLICY",
    "FULL",
    "Canceller",
    "RefundPolicy",
    "RefundTier",
    "refund_amount",
]

#: Basis points in a full refund.
FULL = 10_000


class Canceller(StrEnum):
    """Who cancelled a booking."""

    PATIENT = "patient"
    DOCTOR = "doctor"
    CLINIC = "clinic"


#: Who cancels, for each lifecycle event that ends in ``cancelled``.
CANCELLERS: Mapping[BookingEvent, Canceller] = MappingProxyType(
    {
        BookingEvent.CANCEL_BY_PATIENT: Canceller.PATIENT,
        BookingEvent.CANCEL_BY_DOCTOR: Canceller.DOCTOR,
        BookingEvent.DECLINE: Canceller.DOCTOR,
        BookingEvent.CANCEL_BY_CLINIC: Canceller.CLINIC,
    }
)


@dataclass(frozen=True, slots=True)
class RefundTier:
    """Cancelling at least ``min_notice`` before the start refunds ``basis_points``."""

    min_notice: timedelta
    basis_points: int

    def __post_init__(self) -> None:
        if not isinstance(self.min_notice, timedelta):
            raise InvalidRefundPolicy(f"min_notice must be a timedelta, got {self.min_notice!r}")
        bp = self.basis_points
        if not isinstance(bp, int) or isinstance(bp, bool) or not 0 <= bp <= FULL:
            raise InvalidRefundPolicy(f"basis_points must be an integer in [0, {FULL}], got {bp!r}")


@dataclass(frozen=True, slots=True)
class RefundPolicy:
    """Tiers ordered from the longest notice to the shortest.

    Notices must strictly decrease and refunds must not increase along the
    list, so cancelling earlier never refunds less.
    """

    tiers: tuple[RefundTier, ...]

    def __post_init__(self) -> None:
        tiers = tuple(self.tiers)
        for longer, shorter in itertools.pairwise(tiers):
            if shorter.min_notice >= longer.min_notice:
                raise InvalidRefundPolicy("tiers must be ordered by strictly decreasing notice")
            if shorter.basis_points > longer.basis_points:
                raise InvalidRefundPolicy("a shorter notice cannot refund more than a longer one")
        object.__setattr__(self, "tiers", tiers)

    def basis_points_for(self, notice: timedelta) -> int:
        """Share refunded to a patient who cancels ``notice`` before the start."""
        for tier in self.tiers:
            if notice >= tier.min_notice:
                return tier.basis_points
        return 0


#: Full refund at 24 h notice or more, half from 2 h, nothing later.
DEFAULT_REFUND_POLICY = RefundPolicy(
    (
        RefundTier(timedelta(hours=24), FULL),
        RefundTier(timedelta(hours=2), FULL // 2),
    )
)


def refund_amount(
    *,
    slot_start: datetime,
    cancelled_at: datetime,
    cancelled_by: Canceller,
    amount_paid: int,
    policy: RefundPolicy = DEFAULT_REFUND_POLICY,
) -> int:
    """Minor units refunded when a booking is cancelled.

    Doctor and clinic cancellations refund ``amount_paid``. A patient's notice
    is ``slot_start - cancelled_at`` (negative once the slot has started) and
    tier bounds are inclusive: exactly 24 h before is still a full refund under
    the default policy. The amount is rounded up (see the module docstring).

    Raises :class:`InvalidRefundRequest` for naive datetimes, an unknown
    canceller or an amount that is not a non-negative integer.
    """
    for name, value in (("slot_start", slot_start), ("cancelled_at", cancelled_at)):
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise InvalidRefundRequest(f"{name} must be a timezone-aware datetime, got {value!r}")
    if not isinstance(amount_paid, int) or isinstance(amount_paid, bool) or amount_paid < 0:
        raise InvalidRefundRequest(
            f"amount_paid must be a non-negative integer, got {amount_paid!r}"
        )
    try:
        who = Canceller(cancelled_by)
    except ValueError:
        raise InvalidRefundRequest(f"unknown canceller {cancelled_by!r}") from None
    if who is not Canceller.PATIENT:
        return amount_paid
    basis_points = policy.basis_points_for(slot_start - cancelled_at)
    # Ceiling division on integers: -(-a // b).
    return -(-amount_paid * basis_points // FULL)
