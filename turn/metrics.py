"""Prometheus metrics of the TURN relay, on the default registry.

Relayed packet and byte counts and the allocation/permission/channel gauges are
read at scrape time from every live relay core (a collector; :class:`RelayCounts`
says what the collector reads, so this module knows no core's class),
because a ``Counter.inc()`` per relayed packet takes a lock and would cost
more than relaying the packet. Rare events (auth failures, refusals, malformed
input) use ordinary labelled counters.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

AUTH_FAILURES = Counter(
    "turn_auth_failures",
    "Requests refused by long-term credential checks (RFC 8489 9.2), by reason.",
    ["reason"],
)
QUOTA_REFUSALS = Counter(
    "turn_quota_refusals",
    "Requests refused by a quota: user, total, ports, permissions, bandwidth.",
    ["quota"],
)
PEER_DENIED = Counter(
    "turn_peer_denied",
    "CreatePermission, ChannelBind or Send refused by the peer address policy.",
    ["method"],
)
MALFORMED = Counter(
    "turn_malformed_dropped",
    "Packets dropped because they were malformed or not allowed, by reason.",
    ["reason"],
)
RATE_LIMITED = Counter(
    "turn_rate_limited",
    "Unauthenticated requests dropped by the per-source rate limit.",
)
REQUESTS = Counter(
    "turn_requests",
    "STUN/TURN requests answered, by method and result code (0 for success).",
    ["method", "code"],
)


class RelayCounts(Protocol):
    """What the collector reads from a live core: allocations, permissions,
    channels, and the packets and bytes relayed each way (``to_peer_pkts``,
    ``to_peer_bytes``, ``from_peer_pkts``, ``from_peer_bytes``)."""

    def snapshot(self) -> Mapping[str, int]: ...


_CORES: weakref.WeakSet[RelayCounts] = weakref.WeakSet()


def register_core(core: RelayCounts) -> None:
    _CORES.add(core)


class _RelayCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        allocations = GaugeMetricFamily("turn_allocations", "Active TURN allocations.")
        permissions = GaugeMetricFamily("turn_permissions", "Installed permissions.")
        channels = GaugeMetricFamily("turn_channels", "Bound channels.")
        packets = CounterMetricFamily(
            "turn_relayed_packets", "Packets relayed, by direction.", labels=["direction"]
        )
        octets = CounterMetricFamily(
            "turn_relayed_bytes", "Payload bytes relayed, by direction.", labels=["direction"]
        )
        n_alloc = n_perm = n_chan = 0
        tp = tb = fp = fb = 0
        for core in list(_CORES):
            s = core.snapshot()
            n_alloc += s["allocations"]
            n_perm += s["permissions"]
            n_chan += s["channels"]
            tp += s["to_peer_pkts"]
            tb += s["to_peer_bytes"]
            fp += s["from_peer_pkts"]
            fb += s["from_peer_bytes"]
        allocations.add_metric([], n_alloc)
        permissions.add_metric([], n_perm)
        channels.add_metric([], n_chan)
        packets.add_metric(["to_peer"], tp)
        packets.add_metric(["to_client"], fp)
        octets.add_metric(["to_peer"], tb)
        octets.add_metric(["to_client"], fb)
        yield allocations
        yield permissions
        yield channels
        yield packets
        yield octets


COLLECTOR = _RelayCollector()
REGISTRY.register(COLLECTOR)
