"""Percentiles, as every figure of a load run is reported, and the latency
histogram that lets runs on several machines be merged."""

from __future__ import annotations

import math

__all__ = ["histogram", "merged_percentiles", "percentiles"]


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50, p95 and p99 (nearest rank), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 2)

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99)}


#: Latency histogram buckets: bucket k holds values up to 10^(k/100) ms
#: (2.3% apart), from 0.1 ms (k = -100) to 100 s (k = 500).
_LOW, _HIGH = -100, 500


def histogram(values: list[float]) -> dict[str, int]:
    """Values (ms) counted in :data:`_LOW`..:data:`_HIGH` log buckets, as
    ``{str(k): count}`` (JSON keys), for runs on several machines to merge."""
    out: dict[str, int] = {}
    for v in values:
        k = _LOW if v <= 0 else min(_HIGH, max(_LOW, math.ceil(100 * math.log10(v))))
        out[str(k)] = out.get(str(k), 0) + 1
    return out


def merged_percentiles(histograms: list[dict[str, int]]) -> dict[str, float] | None:
    """p50, p95, p99 of several :func:`histogram` s together, each the upper
    edge of the bucket it falls in (at most 2.3% high)."""
    counts: dict[int, int] = {}
    for h in histograms:
        for k, n in h.items():
            counts[int(k)] = counts.get(int(k), 0) + n
    total = sum(counts.values())
    if not total:
        return None
    ordered = sorted(counts.items())

    def rank(p: float) -> float:
        need = max(1, math.ceil(p / 100 * total))
        seen = 0
        for k, n in ordered:
            seen += n
            if seen >= need:
                return round(10 ** (k / 100), 2)
        return round(10 ** (ordered[-1][0] / 100), 2)

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99)}
