"""Prometheus metrics shared by every role.

Metrics live on the process-wide default registry: a process serves one
application in production, and tests that build several apps in one process
share the counters harmlessly. Values that belong to a live object (a pool) are
read at scrape time by a collector, never pushed from the hot path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

if TYPE_CHECKING:
    import asyncpg

__all__ = ["CONTENT_TYPE_LATEST", "TASKS", "generate_latest"]

HTTP_REQUESTS = Counter(
    "wadud_http_requests_total",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "wadud_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
HTTP_ERRORS = Counter(
    "wadud_http_problems_total",
    "Problem responses sent, by problem code.",
    ["code"],
)
OUTBOX_PENDING = Gauge("wadud_outbox_pending", "Outbox events not yet relayed to the bus.")
OUTBOX_LAG = Gauge(
    "wadud_outbox_lag_seconds", "Age of the oldest outbox event not yet relayed to the bus."
)
OUTBOX_RELAYED = Counter("wadud_outbox_relayed_total", "Outbox events relayed to the bus.")


class _PoolCollector(Collector):
    def __init__(self) -> None:
        # asyncpg pools take no weak references; db.pool() adds and removes.
        self.pools: set[asyncpg.Pool] = set()

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("wadud_db_pool_connections", "Open database connections.")
        idle = GaugeMetricFamily("wadud_db_pool_idle", "Idle database connections.")
        maxsize = GaugeMetricFamily("wadud_db_pool_max", "Most database connections allowed.")
        total = [0, 0, 0]
        for pool in list(self.pools):
            total[0] += pool.get_size()
            total[1] += pool.get_idle_size()
            total[2] += pool.get_max_size()
        size.add_metric([], total[0])
        idle.add_metric([], total[1])
        maxsize.add_metric([], total[2])
        yield size
        yield idle
        yield maxsize


POOLS = _PoolCollector()
REGISTRY.register(POOLS)


class _TaskCollector(Collector):
    """How many asyncio tasks are not done on the loop that scrapes: a count
    that climbs with calls served is a task someone forgot to end
    (benchmarks/soak reads it). Read on the loop's own thread, as every
    role's /metrics handler does; a scrape from anywhere else says nothing
    rather than 0."""

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        family = self._family()
        family.add_metric([], len(asyncio.all_tasks(loop)))
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "wadud_asyncio_tasks", "Asyncio tasks not yet done on this process's event loop."
        )


TASKS = _TaskCollector()
REGISTRY.register(TASKS)
