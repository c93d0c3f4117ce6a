"""Prometheus metrics of the media workers, on the default registry.

Everything here is read at scrape time from each live
:class:`sfu.node.worker.MediaWorker` (its :meth:`~sfu.node.worker.MediaWorker.snapshot`)
by one collector, as ``turn.metrics`` does for the relay: the forwarding path
only bumps plain integers on its own objects, because a labelled
``Counter.inc()`` takes a lock and costs more than forwarding the packet.

No label names a room, booking or participant (issue 12, finding 1): they
would tell anyone who reads /metrics which consultations are live, and a series
per room or peer grows without bound. Peers are summed by direction: packets
and bytes received, RTCP received and sent, packets and payload bytes sent,
SRTP failures, transport-cc feedback (counters that keep what departed peers
counted), how many are connected, and the mean, min and max of what RTCP tells
about their legs (loss from publishers, RFC 3550 A.3; round-trip time, RFC 3550
6.4.1; the REMB estimate). Per-room detail stays in each worker's
:meth:`~sfu.node.worker.MediaWorker.snapshot`.

Relay links between workers (:mod:`sfu.node.links`): how many are up
(``sfu_relay_links``), packets in and out over them
(``sfu_relay_packets_total{direction}``), datagrams from a link's address that
failed authentication, and each link's loss and round-trip time labelled by
the peer *worker* id (a bounded set, and no consultation's name).
``sfu_rtp_total{event="received"}`` counts packets from the workers' own
publishers only: what came over a link is relay ``in``.

Recordings (:mod:`sfu.recording.aio`): how many rooms are being
recorded (``sfu_recordings_active``), bytes of sealed segments stored
(``sfu_recording_bytes_stored_total``) and recordings that failed by reason
(``sfu_recordings_failed_total{reason}``: ``queue``, ``timeout``,
``storage``, ``internal``).

Worker-wide: datagrams dropped by reason (garbage, strangers, refused STUN,
...) and forwarder totals that include rooms already closed, so they never go
down.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["WorkerCounts", "register_worker"]


class WorkerCounts(Protocol):
    """What the collector reads from a started worker: the plain-data
    snapshot (rooms, peers, relays, drops, totals) its admins see too."""

    def snapshot(self) -> dict[str, Any]: ...


_WORKERS: weakref.WeakSet[WorkerCounts] = weakref.WeakSet()

_PEER_COUNTERS = (
    ("packets_in", "sfu_peer_packets_received", "SRTP packets received from the peer."),
    ("octets_in", "sfu_peer_bytes_received", "SRTP bytes received from the peer."),
    ("rtcp_in", "sfu_peer_rtcp_received", "SRTCP compound packets received from the peer."),
    ("rtcp_out", "sfu_peer_rtcp_sent", "SRTCP compound packets sent to the peer."),
    (
        "packets_out",
        "sfu_peer_packets_sent",
        "RTP packets forwarded to the peer, resends included.",
    ),
    (
        "payload_octets_out",
        "sfu_peer_payload_bytes_sent",
        "RTP payload bytes forwarded to the peer.",
    ),
    ("srtp_errors", "sfu_peer_srtp_errors", "SRTP/SRTCP packets that failed protect or unprotect."),
    (
        "twcc_feedback",
        "sfu_peer_transport_cc_feedback",
        "transport-cc feedback packets sent to the publisher (absent without transport-cc).",
    ),
)


# Gauges of a peer, left out while the peer has no value (no RTT sample yet, no REMB).
_PEER_GAUGES = (
    (
        "packets_lost",
        "sfu_peer_packets_lost",
        "Packets expected from the peer but not received, over its tracks (RFC 3550 A.3).",
    ),
    (
        "rtt",
        "sfu_peer_rtt_seconds",
        "Smoothed round-trip time of the peer's leg, from its receiver reports.",
    ),
    (
        "remb_bitrate",
        "sfu_peer_remb_bitrate",
        "Bitrate cap (bits/s) the worker tells the publisher with REMB.",
    ),
    (
        "estimate_bitrate",
        "sfu_peer_estimate_bitrate",
        "Bits/s the worker estimates a subscriber's path carries, from its transport-cc "
        "feedback or REMB.",
    ),
)


def register_worker(worker: WorkerCounts) -> None:
    """Expose a started worker's counters (forgotten when the worker is collected)."""
    _WORKERS.add(worker)


class _WorkerCollector(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Peer counters at the last scrape, by (worker, port, room, participant, direction).
        self._last: dict[tuple[Any, ...], dict[str, int]] = {}
        #: What peers that are gone had counted, by (counter, direction).
        self._gone: Counter[tuple[str, str]] = Counter()

    def collect(self) -> Iterator[Metric]:
        snapshots: list[dict[str, Any]] = [w.snapshot() for w in list(_WORKERS)]
        workers = GaugeMetricFamily("sfu_workers", "Media workers running in this process.")
        workers.add_metric([], len(snapshots))
        rooms = GaugeMetricFamily("sfu_rooms", "Rooms with media on this process's workers.")
        rooms.add_metric([], sum(len(s["rooms"]) for s in snapshots))
        transports = GaugeMetricFamily("sfu_transports", "Peer transports not yet closed.")
        transports.add_metric([], sum(s["transports"] for s in snapshots))
        dropped = CounterMetricFamily(
            "sfu_dropped_datagrams",
            "Datagrams the workers dropped before any peer took them, by reason.",
            labels=["reason"],
        )
        totals = CounterMetricFamily(
            "sfu_rtp",
            "Forwarder counters summed over every room, closed ones included, by event.",
            labels=["event"],
        )
        paths = CounterMetricFamily(
            "sfu_path_changes",
            "Path changes of peer transports, by event: ice_restart (a client restarted"
            " ICE), ice_restart_completed, moved (a connected transport's path moved),"
            " rebinding (authenticated media from a new address moved it), pair_change"
            " (authenticated media from another validated address moved it), forged"
            " (media from a new address that no key authenticated: refused).",
            labels=["event"],
        )
        merged_paths: dict[str, int] = {}
        for s in snapshots:
            for key, value in s.get("paths", {}).items():
                merged_paths[key] = merged_paths.get(key, 0) + value
        for key in (
            "ice_restart",
            "ice_restart_completed",
            "moved",
            "rebinding",
            "pair_change",
            "forged",
        ):
            paths.add_metric([key], merged_paths.get(key, 0))
        merged_dropped: dict[str, int] = {}
        merged_totals: dict[str, int] = {}
        for s in snapshots:
            for key, value in s["dropped"].items():
                merged_dropped[key] = merged_dropped.get(key, 0) + value
            for key, value in s["totals"].items():
                merged_totals[key] = merged_totals.get(key, 0) + value
        for key, value in sorted(merged_dropped.items()):
            dropped.add_metric([key], value)
        for key, value in sorted(merged_totals.items()):
            totals.add_metric([key], value)
        failed = CounterMetricFamily(
            "sfu_timer_rounds_failed",
            "Rounds of a worker's RTCP timer (reports, feedback, layer choices) that"
            " raised; each is logged with its traceback, and the timer goes on.",
        )
        failed.add_metric([], sum(s.get("timer_failures", 0) for s in snapshots))

        # No room, booking or participant names as label values: they name
        # live consultations to whoever can read /metrics, and a series per
        # room or peer grows without bound. Per-room detail is in each
        # worker's snapshot(), for admins; here everything is summed.
        participants = GaugeMetricFamily(
            "sfu_participants", "Participants with media state on this process's workers."
        )
        tracks = GaugeMetricFamily("sfu_tracks", "Published tracks on this process's workers.")
        peers = GaugeMetricFamily(
            "sfu_peers",
            "Peer transports by direction and whether they are connected.",
            labels=["direction", "state"],
        )
        live: dict[tuple[Any, ...], dict[str, int]] = {}
        peer_counts: dict[tuple[str, str], int] = {}
        gauges: dict[tuple[str, str], list[float]] = {}
        n_participants = n_tracks = 0
        for index, s in enumerate(snapshots):
            for room in s["rooms"]:
                n_participants += room["participants"]
                n_tracks += room["tracks"]
                for peer in room["peers"]:
                    direction = peer["direction"]
                    state = "connected" if peer["state"] == "connected" else "other"
                    peer_counts[(direction, state)] = peer_counts.get((direction, state), 0) + 1
                    ident = (index, s.get("port"), room["room"], peer["participant"], direction)
                    live[ident] = {
                        key: int(peer[key])
                        for key, _, _ in _PEER_COUNTERS
                        if peer.get(key) is not None
                    }
                    for key, _, _ in _PEER_GAUGES:
                        if peer.get(key) is not None:
                            gauges.setdefault((key, direction), []).append(float(peer[key]))
        participants.add_metric([], n_participants)
        tracks.add_metric([], n_tracks)
        for direction in ("publish", "subscribe", "single"):
            for state in ("connected", "other"):
                peers.add_metric([direction, state], peer_counts.get((direction, state), 0))
        totals_by = self._peer_totals(live)
        counters = []
        for key, name, text in _PEER_COUNTERS:
            family = CounterMetricFamily(
                name, text + " Summed over peers, gone ones included.", labels=["direction"]
            )
            for direction in ("publish", "subscribe", "single"):
                family.add_metric([direction], totals_by.get((key, direction), 0))
            counters.append(family)
        summaries = []
        for key, name, text in _PEER_GAUGES:
            summary = GaugeMetricFamily(
                name, text + " Over the peers that have one.", labels=["direction", "stat"]
            )
            for direction in ("publish", "subscribe", "single"):
                values = gauges.get((key, direction))
                if values:
                    summary.add_metric([direction, "mean"], sum(values) / len(values))
                    summary.add_metric([direction, "max"], max(values))
                    summary.add_metric([direction, "min"], min(values))
            summaries.append(summary)
        yield from self._relays(snapshots)
        yield from _recordings(snapshots)
        yield workers
        yield rooms
        yield transports
        yield dropped
        yield paths
        yield totals
        yield failed
        yield participants
        yield tracks
        yield peers
        yield from counters
        yield from summaries

    def _relays(self, snapshots: list[dict[str, Any]]) -> Iterator[Metric]:
        links = GaugeMetricFamily(
            "sfu_relay_links", "Relay links to other workers, by state.", labels=["state"]
        )
        packets = CounterMetricFamily(
            "sfu_relay_packets",
            "RTP packets over relay links: in (authenticated, from peer workers) and out.",
            labels=["direction"],
        )
        forged = CounterMetricFamily(
            "sfu_relay_forged_datagrams",
            "Datagrams from a relay link's peer address that failed SRTP authentication.",
        )
        loss = GaugeMetricFamily(
            "sfu_relay_loss_ratio",
            "Share of the packets a peer worker sent over the link that never arrived "
            "(RFC 3550 A.3), before repair.",
            labels=["peer_worker"],
        )
        rtt = GaugeMetricFamily(
            "sfu_relay_rtt_seconds",
            "Round-trip time of a relay link, from the peer worker's receiver reports.",
            labels=["peer_worker"],
        )
        relays = _sections(snapshots, "relays")
        states: Counter[str] = Counter()
        for relay in relays:
            for link in relay.get("links", ()):
                states[link["state"]] += 1
                if link.get("loss") is not None:
                    loss.add_metric([link["peer_worker"]], float(link["loss"]))
                if link.get("rtt") is not None:
                    rtt.add_metric([link["peer_worker"]], float(link["rtt"]))
        for state in ("connected", "connecting", "failed"):
            links.add_metric([state], states.get(state, 0))
        packets.add_metric(["in"], _total(relays, "in"))
        packets.add_metric(["out"], _total(relays, "out"))
        forged.add_metric([], _total(relays, "forged"))
        yield links
        yield packets
        yield forged
        yield loss
        yield rtt

    def _peer_totals(
        self, live: dict[tuple[Any, ...], dict[str, int]]
    ) -> dict[tuple[str, str], int]:
        """Per-direction sums of peer counters that never go down: a peer that
        left (or whose counters restarted) keeps what it had at the last scrape."""
        with self._lock:
            for ident, values in self._last.items():
                now = live.get(ident)
                if now is None or any(now.get(k, 0) < v for k, v in values.items()):
                    for key, value in values.items():
                        self._gone[(key, ident[-1])] += value
            self._last = live
            out: dict[tuple[str, str], int] = dict(self._gone)
            for ident, values in live.items():
                for key, value in values.items():
                    out[(key, ident[-1])] = out.get((key, ident[-1]), 0) + value
            return out


def _sections(snapshots: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Each worker's ``name`` section of its snapshot (empty where it has none)."""
    return [s.get(name) or {} for s in snapshots]


def _total(sections: list[dict[str, Any]], key: str) -> int:
    """``key`` of the workers' sections, summed (0 where a section lacks it)."""
    return sum(int(section.get(key, 0)) for section in sections)


_RECORDING_FAILURES = ("queue", "timeout", "storage", "internal")


def _recordings(snapshots: list[dict[str, Any]]) -> Iterator[Metric]:
    active = GaugeMetricFamily("sfu_recordings_active", "Rooms being recorded on these workers.")
    stored = CounterMetricFamily(
        "sfu_recording_bytes_stored", "Bytes of sealed recording segments put in the file store."
    )
    segments = CounterMetricFamily(
        "sfu_recording_segments_stored", "Sealed recording segments put in the file store."
    )
    failed = CounterMetricFamily(
        "sfu_recordings_failed",
        "Recordings stopped because the file store could not keep up or refused a segment,"
        " by reason: queue (the backlog passed recording_queue_bytes), timeout (a segment"
        " took over recording_write_timeout), storage (the store raised), internal (a bug).",
        labels=["reason"],
    )
    recordings = _sections(snapshots, "recordings")
    reasons: Counter[str] = Counter()
    for rec in recordings:
        reasons.update(rec.get("failed", {}))
    active.add_metric([], _total(recordings, "active"))
    stored.add_metric([], _total(recordings, "bytes_stored"))
    segments.add_metric([], _total(recordings, "segments_stored"))
    for reason in _RECORDING_FAILURES:
        failed.add_metric([reason], reasons.get(reason, 0))
    yield active
    yield stored
    yield segments
    yield failed


COLLECTOR = _WorkerCollector()
REGISTRY.register(COLLECTOR)
