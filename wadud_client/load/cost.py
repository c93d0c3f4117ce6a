"""The server's cost of a run, from its private metrics (``--metrics-url``).

Each URL is one process's Prometheus ``/metrics`` (``metrics_listen`` of
``wadud serve`` or ``wadud api``, ``--http`` of ``wadud media``). It is read
three times: before the subscribers join (the memory baseline), when the
hold begins, and when it ends. Over the hold: CPU seconds
(``process_cpu_seconds_total``) and RTP packets forwarded to subscribers
(``sfu_peer_packets_sent_total{direction="subscribe"}``, resends included);
at its end, resident memory (``process_resident_memory_bytes``) above the
baseline. From those, per run: microseconds of server CPU per forwarded
packet, and memory per subscriber.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["MetricsUnreadable", "Scrape", "cost", "scrape"]


@dataclass(frozen=True)
class Scrape:
    cpu_s: float
    rss_bytes: float
    forwarded: float


class MetricsUnreadable(Exception):
    pass


async def scrape(http: aiohttp.ClientSession, url: str, token: str | None) -> Scrape:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with http.get(url, headers=headers) as resp:
            if resp.status != 200:
                raise MetricsUnreadable(f"{url}: HTTP {resp.status}")
            text = await resp.text()
    except aiohttp.ClientError as exc:
        raise MetricsUnreadable(f"{url}: {exc}") from None
    values = {"cpu": 0.0, "rss": 0.0, "forwarded": 0.0}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "process_cpu_seconds_total":
                    values["cpu"] += sample.value
                elif sample.name == "process_resident_memory_bytes":
                    values["rss"] += sample.value
                elif (
                    sample.name == "sfu_peer_packets_sent_total"
                    and sample.labels.get("direction") == "subscribe"
                ):
                    values["forwarded"] += sample.value
    except ValueError as exc:
        raise MetricsUnreadable(f"{url}: not Prometheus text ({exc})") from None
    return Scrape(values["cpu"], values["rss"], values["forwarded"])


def cost(
    baseline: dict[str, Scrape],
    start: dict[str, Scrape],
    end: dict[str, Scrape],
    *,
    held: float,
    subscribers: int,
) -> dict[str, Any]:
    """Per process and in all: CPU over the hold, memory above the baseline,
    packets forwarded; µs of CPU per forwarded packet, MB per subscriber."""
    processes: dict[str, dict[str, Any]] = {}
    for url, last in end.items():
        first, base = start.get(url), baseline.get(url)
        if first is None or base is None:
            continue
        processes[url] = {
            "cpu_s": round(last.cpu_s - first.cpu_s, 3),
            "cpu_pct": round(100 * (last.cpu_s - first.cpu_s) / held, 1) if held > 0 else None,
            "rss_mb": round(last.rss_bytes / 1e6, 1),
            "rss_added_mb": round((last.rss_bytes - base.rss_bytes) / 1e6, 1),
            "forwarded": int(last.forwarded - first.forwarded),
        }
    cpu = sum(p["cpu_s"] for p in processes.values())
    forwarded = sum(p["forwarded"] for p in processes.values())
    added = sum(p["rss_added_mb"] for p in processes.values())
    return {
        "processes": processes,
        "cpu_s": round(cpu, 3),
        "forwarded": forwarded,
        "us_per_forwarded_packet": round(cpu * 1e6 / forwarded, 2) if forwarded else None,
        "mb_per_subscriber": round(added / subscribers, 3) if subscribers else None,
    }
