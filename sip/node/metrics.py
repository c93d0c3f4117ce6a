"""The phone bridge's metrics (docs/phone.md, "Watching it").

Counters the bridge moves as calls happen, and one collector that reads the
live bridges at each scrape: the user agent's refusals, the endpoint's
messages and malformed input, and the phones' audio counted by each call's
leg (a call's counts would otherwise show only once it ended).
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class Observed(Protocol):
    """What the collector reads of a bridge (:class:`sip.node.bridge.Bridge`)."""

    @property
    def agent(self) -> Any: ...

    @property
    def endpoint(self) -> Any: ...

    @property
    def frames(self) -> collections.Counter[str]: ...

    @property
    def calls(self) -> Mapping[str, Any]: ...


__all__ = ["ACTIVE", "CALLS", "COLLECTOR", "DELAY", "IN_ROOMS", "PIN_FAILURES", "SETUP"]

CALLS = Counter(
    "wadud_sip_calls_total",
    "Phone calls the bridge ended, by how: joined (was in a visit), wrong_pin,"
    " blocked, no_key, refused, failed, hung_up (before joining).",
    ["outcome"],
)
ACTIVE = Gauge("wadud_sip_calls_active", "Phone calls up now, in a visit or in the IVR.")
IN_ROOMS = Gauge("wadud_sip_calls_in_rooms", "Phone calls in a visit's room now.")
SETUP = Histogram(
    "wadud_sip_join_seconds",
    "From the INVITE to the caller in the room (PIN keying included).",
    buckets=(5, 10, 15, 20, 30, 45, 60, 90, 120, 300),
)
PIN_FAILURES = Counter(
    "wadud_sip_pin_failures_total", "PINs keyed that opened no visit, and callers blocked.",
    ["kind"],
)  # fmt: skip
DELAY = Histogram(
    "wadud_sip_jitter_delay_seconds",
    "What each 20 ms frame of the phones' voice waited in the jitter buffer (the"
    " delay the bridge adds on the phone's way into the room, besides a tick).",
    buckets=(0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3),
)


class BridgeCollector(Collector):
    """The SIP side's counters, read from the live bridges at each scrape:
    INVITEs refused by the user agent, and the endpoint's messages and
    malformed input by reason."""

    def __init__(self) -> None:
        self.bridges: weakref.WeakSet[Observed] = weakref.WeakSet()

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        refused = CounterMetricFamily(
            "wadud_sip_invites_refused",
            "INVITEs refused: unauthenticated (403, from no trunk), over_limit (503).",
            labels=["reason"],
        )
        messages = CounterMetricFamily(
            "wadud_sip_messages",
            "SIP messages by direction and method or status class.",
            labels=["direction", "kind"],
        )
        malformed = CounterMetricFamily(
            "wadud_sip_malformed",
            "SIP input refused (answered 400/413/505 or dropped), by reason.",
            labels=["reason"],
        )
        frames = CounterMetricFamily(
            "wadud_sip_frames",
            "The phones' audio: packets received, 20 ms frames concealed (lost or"
            " late, made up) and packets late (came after their turn).",
            labels=["kind"],
        )
        tcp = GaugeMetricFamily("wadud_sip_tcp_connections", "TCP connections open.")
        bridges = list(self.bridges)
        tcp.add_metric([], sum(b.endpoint.connections for b in bridges))
        sums: collections.Counter[tuple[str, ...]] = collections.Counter()
        for bridge in bridges:
            stats = bridge.endpoint.stats
            sums["unauthenticated",] += bridge.agent.unauthenticated
            sums["over_limit",] += bridge.agent.over_limit
            for kind, count in (stats.requests_in + stats.responses_in).items():
                sums["in", kind] += count
            for kind, count in (stats.requests_out + stats.responses_out).items():
                sums["out", kind] += count
            for reason, count in stats.malformed.items():
                sums["malformed", reason] += count
        heard: collections.Counter[str] = collections.Counter()
        for bridge in bridges:
            heard.update(bridge.frames)
            for call in list(bridge.calls.values()):
                if call.leg is not None:
                    leg = call.leg.stats
                    heard.update(received=leg.packets_in, concealed=leg.concealed, late=leg.late)
        for kind in ("received", "concealed", "late"):
            frames.add_metric([kind], heard[kind])
        for key, value in sorted(sums.items()):
            if len(key) == 1:
                refused.add_metric(list(key), value)
            elif key[0] == "malformed":
                malformed.add_metric([key[1]], value)
            else:
                messages.add_metric(list(key), value)
        if bridges:
            yield from (refused, messages, malformed, frames, tcp)


COLLECTOR = BridgeCollector()
REGISTRY.register(COLLECTOR)
