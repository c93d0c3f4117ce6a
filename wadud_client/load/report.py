"""What a load run says: the JSON summary, the final table, the progress line."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from wadud_client.load.run import Interval, Result, generator_cost
from wadud_client.load.stats import histogram, merged_percentiles, percentiles

__all__ = ["merge", "progress_line", "summary", "table", "table_of", "to_json"]


def summary(result: Result) -> dict[str, Any]:
    s = _summary(
        result.subscribers,
        percentiles(result.latencies_ms),
        result.errors,
        result.server,
        result.reconnects,
        result.generator,
    )
    for region, figures in (s["by_region"] or {}).items():
        figures["latency_ms"] = percentiles(result.region_latencies_ms.get(region, []))
    return s


def _by_region(subs: list[dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    """Join times and loss of the subscribers of each region (``--region``);
    a single run adds each region's latency (:func:`summary`)."""
    regions: dict[str, list[dict[str, Any]]] = {}
    for sub in subs:
        if sub.get("region"):
            regions.setdefault(sub["region"], []).append(sub)
    out = {
        region: {**_reached(members), "latency_ms": None}
        for region, members in sorted(regions.items())
    }
    return out or None


def _reached(subs: list[dict[str, Any]]) -> dict[str, Any]:
    """How many of ``subs`` received media, how soon, and the loss over their tracks."""
    tracks = [t for s in subs for t in s["tracks"]]
    received = sum(t["received"] for t in tracks)
    expected = sum(t["expected"] for t in tracks)
    return {
        "subscribers": sum(1 for s in subs if s["join_ms"] is not None),
        "subscribers_asked": len(subs),
        "join_ms": percentiles([s["join_ms"] for s in subs if s["join_ms"] is not None]),
        "loss_pct": round(max(0.0, 100 * (1 - received / expected)), 3) if expected else None,
    }


def _summary(
    subs: list[dict[str, Any]],
    latency: dict[str, float] | None,
    errors: Mapping[str, int],
    server: dict[str, Any] | None,
    reconnects: list[dict[str, Any]],
    generator: dict[str, Any] | None = None,
) -> dict[str, Any]:
    tracks = [t for s in subs for t in s["tracks"]]
    reached = _reached(subs)
    return {
        "subscribers": reached["subscribers"],
        "subscribers_asked": reached["subscribers_asked"],
        "join_ms": reached["join_ms"],
        "latency_ms": latency,
        "jitter_ms": percentiles([t["jitter_ms"] for t in tracks]),
        "loss_pct": reached["loss_pct"],
        "kbps_per_subscriber": percentiles(
            [sum(t["kbps"] for t in s["tracks"]) for s in subs if s["tracks"]]
        ),
        # What the subscribers asked again, got again, and asked keyframes for.
        "nacked": sum(t["nacked"] for t in tracks),
        "repaired": sum(t["repaired"] for t in tracks),
        "plis": sum(t["plis"] for t in tracks),
        # Transport-wide CC feedback the subscribers sent (a browser's
        # bandwidth feedback, which the server's estimate is made of).
        "feedback": sum(s.get("feedback", 0) for s in subs),
        "reconnects": len(reconnects),
        "reconnect_back_s": percentiles(
            [r["back_s"] for r in reconnects if r["back_s"] is not None]
        ),
        "errors": dict(errors),
        "server": server,
        "generator": generator,
        "by_region": _by_region(subs),
    }


def to_json(result: Result) -> dict[str, Any]:
    """What ``--json`` writes: the summary, the run, each subscriber, each second."""
    return {
        "summary": summary(result),
        "run": {
            "url": result.url,
            "shape": asdict(result.shape),
            "started_at": result.started_at,
            "held_s": round(result.held, 2),
            "ended": result.ended,
            "rooms": result.rooms,
        },
        "publishers": result.publishers,
        "subscribers": result.subscribers,
        "reconnects": result.reconnects,
        "intervals": [asdict(i) for i in result.intervals],
        # For `wadud load merge`: percentiles of several runs cannot be
        # merged, their histograms can.
        "latency_histogram": histogram(result.latencies_ms),
    }


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several generators' ``--json`` of one load (``--shard i/n`` with one
    seed) as one: every subscriber's record, the summary over them all
    (latency from the merged histograms, so each percentile is at most 2.3%
    high), the errors summed, and each second's records summed by index."""
    subs = [s for r in runs for s in r["subscribers"]]
    errors: Counter[str] = Counter()
    for r in runs:
        errors.update(r["summary"]["errors"])
    server = next((r["summary"].get("server") for r in runs if r["summary"].get("server")), None)
    latency = merged_percentiles([r.get("latency_histogram", {}) for r in runs])
    seconds: dict[int, dict[str, float]] = {}
    for r in runs:
        for i, interval in enumerate(r["intervals"]):
            into = seconds.setdefault(i, {"at": interval["at"], "joined": 0, "receiving": 0,
                                          "kbps": 0.0, "errors": 0})  # fmt: skip
            for key in ("joined", "receiving", "kbps", "errors"):
                into[key] += interval[key]
    reconnects = [e for r in runs for e in r.get("reconnects", [])]
    generators = [g for r in runs if (g := r["summary"].get("generator"))]
    generator = None
    if generators:
        generator = generator_cost(
            sum(g["cpu_s"] for g in generators),
            max(g["held_s"] for g in generators),
            sum(g["packets"] for g in generators),
            sum(g["socket_drops"] for g in generators),
            sum(g["expected"] for g in generators),
        )
        generator["processes"] = len(generators)
    return {
        "summary": _summary(subs, latency, errors, server, reconnects, generator),
        "runs": [r["run"] for r in runs],
        "subscribers": subs,
        "reconnects": reconnects,
        "intervals": [seconds[i] for i in sorted(seconds)],
        "latency_histogram": _summed([r.get("latency_histogram", {}) for r in runs]),
    }


def _summed(histograms: list[dict[str, int]]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for h in histograms:
        out.update(h)
    return dict(out)


def _cell(p: dict[str, float] | None, key: str) -> str:
    return "-" if p is None else f"{p[key]:g}"


def table(result: Result) -> str:
    """The final table, in the style of ``lk load-test``."""
    shape = result.shape
    return table_of(
        summary(result),
        f"{result.url}: {len(result.rooms)} room(s) x {shape.publishers} publisher(s) x"
        f" {shape.subscribers} subscriber(s), {result.held:.0f} s held ({result.ended})",
    )


def table_of(s: dict[str, Any], header: str) -> str:
    """The table of a summary (one run's, or several merged) under ``header``."""
    lines = [header, "", f"{'':<22}{'p50':>10}{'p95':>10}{'p99':>10}"]
    for name, key in (
        ("join (ms)", "join_ms"),
        ("latency (ms)", "latency_ms"),
        ("jitter (ms)", "jitter_ms"),
        ("kbit/s per subscriber", "kbps_per_subscriber"),
    ):
        p = s[key]
        lines.append(f"{name:<22}{_cell(p, 'p50'):>10}{_cell(p, 'p95'):>10}{_cell(p, 'p99'):>10}")
    loss = "-" if s["loss_pct"] is None else f"{s['loss_pct']:.2f}%"
    errors = ", ".join(f"{k} {v}" for k, v in sorted(s["errors"].items())) or "none"
    server = s["server"]
    if server:
        for url, p in server["processes"].items():
            lines.append(
                f"{url}: {p['cpu_pct']}% of a core, {p['rss_mb']} MB"
                f" (+{p['rss_added_mb']}), {p['forwarded']} packets forwarded"
            )
        lines.append(
            f"server: {server['us_per_forwarded_packet']} µs of CPU per forwarded packet,"
            f" {server['mb_per_subscriber']} MB per subscriber"
        )
    for region, r in (s.get("by_region") or {}).items():
        lat = r["latency_ms"]
        lines.append(
            f"region {region}: {r['subscribers']} of {r['subscribers_asked']} receiving,"
            f" join p50 {_cell(r['join_ms'], 'p50')} ms,"
            f" latency p50 {_cell(lat, 'p50')} / p95 {_cell(lat, 'p95')} ms,"
            f" loss {'-' if r['loss_pct'] is None else format(r['loss_pct'], '.2f')}%"
        )
    gen = s.get("generator")
    if gen and gen["packets"]:
        lines.append(
            f"generator: {gen['cpu_pct']}% of a core, {gen['us_per_packet']} µs per packet"
            f" received, {gen['socket_drops']} dropped by its own sockets"
            f" ({gen['drop_pct']}% of those expected)"
        )
    lines += [
        "",
        f"subscribers receiving: {s['subscribers']} of {s['subscribers_asked']}",
        f"loss: {loss}   reconnects: {s['reconnects']}   errors: {errors}",
        f"asked again (NACK): {s['nacked']}   retransmissions: {s['repaired']}"
        f"   keyframes asked (PLI): {s['plis']}"
        f"   bandwidth feedback (transport-cc): {s.get('feedback', 0)}",
    ]
    return "\n".join(lines)


def progress_line(interval: Interval, total: int, redraw: bool = True) -> str:
    line = (
        f"{interval.at:6.0f} s  joined {interval.joined}/{total}  receiving"
        f" {interval.receiving}  {interval.kbps / 1000:.1f} Mbit/s  errors {interval.errors}"
    )
    return f"\r{line}   " if redraw else line
