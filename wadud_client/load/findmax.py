"""``--find-max``: the most subscribers a room holds before the call gets worse
than its limits.

Runs one load after another on the same shape, each with ``step`` more
subscribers per room, each held for the run's duration, until one crosses a
limit: p95 one-way latency above ``latency_p95_ms``, loss above
``loss_pct``, or a subscriber that received no media. The last run within
the limits is what a room held; with every room on one media worker (one
room, or a deployment of one worker), times the rooms, what that worker held.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wadud_client.load.report import summary
from wadud_client.load.run import Result, Shape, run

__all__ = ["Limits", "crossed", "find_max", "outcome"]


@dataclass(frozen=True)
class Limits:
    latency_p95_ms: float = 150.0
    loss_pct: float = 2.0


def crossed(s: dict[str, Any], limits: Limits) -> str | None:
    """Which limit a run's summary crossed, or None."""
    if s["subscribers"] < s["subscribers_asked"]:
        return f"{s['subscribers_asked'] - s['subscribers']} subscriber(s) received no media"
    latency = s["latency_ms"]
    if latency is None or latency["p95"] > limits.latency_p95_ms:
        return f"p95 latency {latency and latency['p95']} ms > {limits.latency_p95_ms:g} ms"
    if s["loss_pct"] is None or s["loss_pct"] > limits.loss_pct:
        return f"loss {s['loss_pct']}% > {limits.loss_pct:g}%"
    return None


async def find_max(
    url: str,
    key: str,
    secret: str,
    shape: Shape,
    limits: Limits,
    *,
    step: int,
    ceiling: int,
    steps: list[dict[str, Any]],
    on_step: Callable[[dict[str, Any]], None] = lambda s: None,
    **options: Any,
) -> dict[str, Any]:
    """Step up from ``shape.subscribers``; ``steps`` gets each run's record
    as it ends (the caller keeps them if the search is interrupted)."""
    subscribers = shape.subscribers
    stopped = f"reached --max-subscribers {ceiling}"
    while subscribers <= ceiling:
        seed = None if shape.seed is None else shape.seed + len(steps)
        result: Result = await run(
            url, key, secret, dataclasses.replace(shape, subscribers=subscribers, seed=seed),
            **options,
        )  # fmt: skip
        s = summary(result)
        why = crossed(s, limits)
        step_record = {"subscribers_per_room": subscribers, "summary": s, "crossed": why}
        steps.append(step_record)
        on_step(step_record)
        if why is not None:
            stopped = why
            break
        subscribers += step
    return outcome(steps, limits, shape, stopped)


def outcome(
    steps: list[dict[str, Any]], limits: Limits, shape: Shape, stopped: str
) -> dict[str, Any]:
    """What ``--json`` writes of a search: its steps and what held."""
    passed = [s["subscribers_per_room"] for s in steps if s["crossed"] is None]
    return {
        "limits": dataclasses.asdict(limits),
        "steps": steps,
        "room_held": max(passed, default=0),
        "rooms": shape.rooms,
        "stopped": stopped,
    }
