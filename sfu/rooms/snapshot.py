"""What the metrics read of a worker and its rooms (:meth:`sfu.node.worker.MediaWorker.snapshot`).

Plain dicts, built from the records (:mod:`sfu.rooms.records`) and the worker's
report and bandwidth feedback cores when Prometheus scrapes, so the hot path
keeps only plain counters.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from sfu.feedback.bandwidth import BandwidthFeedback, RembEstimator, TransportCcRecorder
from sfu.feedback.reports import ReportScheduler
from sfu.rooms.records import MediaRoom, Peer, WorkerTables

__all__ = ["room_snapshot", "worker_snapshot"]


def room_snapshot(
    room: MediaRoom,
    reports: ReportScheduler,
    bandwidth: BandwidthFeedback,
    estimates: Mapping[Peer, float],
) -> dict[str, Any]:
    """A room's forwarder counters and each of its transports' counters and
    estimates; ``estimates``: bits per second each subscriber transport's
    path carries, as the layers core estimates it (absent or infinite: no
    estimate)."""
    stats = room.forwarder.stats.as_dict()
    peers = []
    for p in room.participants.values():
        for peer in p.legs:
            sent = octets = 0
            if peer.sends:
                for section in peer.sections:
                    sub = room.forwarder.subscription(peer, section.forwarded.ssrc)
                    if sub is not None:
                        sent += sub.packets_sent + sub.retransmitted
                        octets += sub.octets_sent
            estimator = bandwidth.get(peer)
            estimate = estimates.get(peer, math.inf)
            peers.append(
                {
                    "participant": p.id,
                    "direction": peer.direction,
                    "state": peer.transport.state.value,
                    "packets_in": peer.packets_in,
                    "octets_in": peer.octets_in,
                    "rtcp_in": peer.rtcp_in,
                    "rtcp_out": peer.rtcp_out,
                    "packets_out": sent,
                    "payload_octets_out": octets,
                    "srtp_errors": peer.srtp_errors,
                    # RFC 3550 A.3: expected less received, over its tracks.
                    "packets_lost": sum(s.cumulative_lost for s in peer.recv_stats.values()),
                    "rtt": reports.rtt(peer),
                    "remb_bitrate": (
                        estimator.estimate if isinstance(estimator, RembEstimator) else None
                    ),
                    # What the subscriber's own feedback says its path carries.
                    "estimate_bitrate": None if math.isinf(estimate) else estimate,
                    "twcc_feedback": (
                        estimator.sent if isinstance(estimator, TransportCcRecorder) else None
                    ),
                }
            )
    return {
        "room": room.name,
        "participants": len(room.participants),
        "tracks": len(room.tracks),
        "stats": stats,
        "peers": peers,
    }


def worker_snapshot(
    tables: WorkerTables,
    relays: dict[str, Any],
    native: Mapping[str, int] | None,
    port: int,
    estimates: Mapping[Peer, float],
) -> dict[str, Any]:
    """A worker's counters and gauges: its rooms', its relay links' (``relays``,
    :meth:`sfu.node.links.Links.snapshot`) and its native leaf's (``native``)."""
    rooms = []
    totals = Counter(tables.totals)
    for room in tables.rooms.values():
        entry = room_snapshot(room, tables.reports, tables.bandwidth, estimates)
        totals.update(entry["stats"])
        rooms.append(entry)
    # Packets from the worker's own publishers only: what came over relay
    # links is counted as relay "in" (sfu_relay_packets_total).
    totals["received"] -= relays["routed"]
    dropped = Counter(tables.counters)
    if native is not None:
        # The native leaf drops and counts what a full socket refuses itself.
        for ours, theirs in (("send_dropped", "dropped"), ("socket_error", "send_errors")):
            if native[theirs]:
                dropped[ours] += native[theirs]
    return {
        "port": port,
        "paths": dict(tables.paths),
        "dropped": dict(dropped),
        "totals": dict(totals),
        "timer_failures": tables.timer_failures,
        "transports": len(tables.peers),
        "rooms": rooms,
        "relays": relays,
    }
