"""A media node's /metrics page (Prometheus text exposition) as a test reads it."""

from __future__ import annotations

import re

#: One sample line: ``name{labels} value`` (comments and blank lines do not match).
_SAMPLE = re.compile(r"^([a-z_]+(?:\{[^}]*\})?) ([-+0-9.eE]+|NaN)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Every sample of ``text`` as ``{"name{labels}": value}``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s series (any labels, e.g. each worker's) that
    carry ``labels``."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total
