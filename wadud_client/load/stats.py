"""Percentiles, as every figure of a load run is reported."""

from __future__ import annotations

import math

__all__ = ["percentiles"]


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50, p95 and p99 (nearest rank), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 2)

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99)}
