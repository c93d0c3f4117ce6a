"""Prometheus metrics of the media workers, on the default registry.

Everything here is read at scrape time from each live
:class:`sfu.worker.MediaWorker` (its :meth:`~sfu.worker.MediaWorker.snapshot`)
by one collector, as ``turn.metrics`` does for the relay: the forwarding path
only bumps plain integers on its own objects, because a labelled
``Counter.inc()`` takes a lock and costs more than forwarding the packet.

Per room: participants, tracks and the forwarder's counters (received,
forwarded, duplicates, NACKs, keyframe requests, ...). Per peer (room,
participant, direction): packets and bytes received, RTCP received and sent,
packets and payload bytes sent, SRTP failures, whether its transport is up,
and what RTCP tells about its leg: packets lost from a publisher (RFC 3550
A.3), a subscriber leg's round-trip time (RFC 3550 6.4.1), the REMB estimate
sent to a publisher.
Worker-wide: datagrams dropped by reason (garbage, strangers, refused STUN,
...) and forwarder totals that include rooms already closed, so they never go
down.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sfu.worker import MediaWorker

__all__ = ["register_worker"]

_WORKERS: weakref.WeakSet[MediaWorker] = weakref.WeakSet()

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
)


def register_worker(worker: MediaWorker) -> None:
    """Expose a started worker's counters (forgotten when the worker is collected)."""
    _WORKERS.add(worker)


class _WorkerCollector(Collector):
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

        participants = GaugeMetricFamily(
            "sfu_room_participants", "Participants with media state in a room.", labels=["room"]
        )
        tracks = GaugeMetricFamily(
            "sfu_room_tracks", "Published tracks in a room.", labels=["room"]
        )
        room_rtp = CounterMetricFamily(
            "sfu_room_rtp", "A room's forwarder counters, by event.", labels=["room", "event"]
        )
        peer_labels = ["room", "participant", "direction"]
        connected = GaugeMetricFamily(
            "sfu_peer_connected", "1 when the peer's transport is connected.", labels=peer_labels
        )
        peer_families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            key: CounterMetricFamily(name, text, labels=peer_labels)
            for key, name, text in _PEER_COUNTERS
        }
        peer_families.update(
            (key, GaugeMetricFamily(name, text, labels=peer_labels))
            for key, name, text in _PEER_GAUGES
        )
        for s in snapshots:
            for room in s["rooms"]:
                name = room["room"]
                participants.add_metric([name], room["participants"])
                tracks.add_metric([name], room["tracks"])
                for event, value in sorted(room["stats"].items()):
                    room_rtp.add_metric([name, event], value)
                for peer in room["peers"]:
                    labels = [name, peer["participant"], peer["direction"]]
                    connected.add_metric(labels, 1 if peer["state"] == "connected" else 0)
                    for key, family in peer_families.items():
                        value = peer.get(key)
                        if value is not None:
                            family.add_metric(labels, value)
        yield workers
        yield rooms
        yield transports
        yield dropped
        yield totals
        yield participants
        yield tracks
        yield room_rtp
        yield connected
        yield from peer_families.values()


COLLECTOR = _WorkerCollector()
REGISTRY.register(COLLECTOR)
