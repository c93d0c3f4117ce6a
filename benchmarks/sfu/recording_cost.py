"""What recording costs the media worker, in CPU, in one process (issue 23).

``python -m benchmarks.sfu.run --media --record 2`` measures the figure issue 23 asks
for (forwarded packets per CPU-second with two of ten tracks recorded, against
the same run without) across processes, which a shared machine's other work
easily spoils. This measures the same two costs in process, where only this
process's CPU time counts: one synthetic publisher (benchmarks/sfu/peer.py,
a Chromium-like VP8 offer) and ten synthetic subscribers do real ICE and
DTLS-SRTP with a MediaWorker; pre-protected packets go straight into
``datagram_received`` and the copies out through the real socket, as in
tests/sfu/node/test_worker.py's fan-out test. Each round feeds the same packets
twice, the room once not recorded and once recorded (the order alternating),
and counts the process's CPU time until every segment is sealed and stored
in a LocalStorage (fsync included), so the recording's whole cost is in it.

From the two costs per packet in, ``ratio_at`` gives forwarded packets per
CPU-second with ``k`` of ten tracks recorded against none: each track costs
its forwarding, and ``k`` of them the recording on top.

    .venv/bin/python -m benchmarks.sfu.recording_cost [--rounds 5] [--packets 6000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from benchmarks.common import ROOT, command_line, write_results
from benchmarks.sfu import peer
from sfu.control.messages import MediaEvent, RecordingOrder, RecordingStopped
from sfu.node.worker import MediaWorker
from wadud.state.storage import LocalStorage

ROOM = "cost"


async def measure(args: argparse.Namespace, store: Path) -> dict[str, Any]:
    events: list[MediaEvent] = []
    stopped = asyncio.Event()

    def heard(event: MediaEvent) -> None:
        events.append(event)
        if isinstance(event, RecordingStopped):
            stopped.set()

    # Packets go in far faster than real time: a backlog bound that fits the
    # whole run keeps the store's pace out of it (the CPU is what is measured).
    recording = {"storage": LocalStorage(store), "queue_bytes": 1 << 30}
    # The synthetic peers send no consent checks (RFC 7675) after the handshake.
    async with MediaWorker(
        host="127.0.0.1", port=0, recording=recording, consent_timeout=3600.0
    ) as worker:
        worker.add_listener(heard)
        ssrc = 0x1234
        async with peer.fan_out_in_process(worker, ROOM, ssrc, 0x5678) as publisher:
            await asyncio.sleep(0.5)
            assert publisher.srtp is not None
            frames = (args.packets * (2 * args.rounds + 1)) // 6 + 1
            packets = peer.protect_all(
                publisher.srtp, peer.build_frames(peer.Stream(0, ssrc), frames, 6, fps=30)
            )
            address = ("127.0.0.1", publisher.port)
            feed = iter(packets)
            for _ in range(args.packets):  # warm-up
                worker.datagram_received(next(feed), address)
            costs: dict[bool, list[float]] = {False: [], True: []}
            for round_ in range(args.rounds):
                for recorded in (False, True)[:: 1 if round_ % 2 == 0 else -1]:
                    stopped.clear()
                    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
                    forwarder = worker.room_forwarder(ROOM)
                    assert forwarder is not None
                    forwarded = forwarder.stats.forwarded
                    begin = time.process_time()
                    if recorded:
                        await worker.record(ROOM, RecordingOrder(f"r{round_}", key))
                    # Paced in bursts as the socket would hand them over, so
                    # the recording's tick runs between them as it would.
                    for burst in range(args.packets // 100):
                        for _ in range(100):
                            worker.datagram_received(next(feed), address)
                        if burst % 10 == 9:
                            await asyncio.sleep(0)
                    if recorded:
                        await worker.record(ROOM, None)
                        await stopped.wait()
                    costs[recorded].append((time.process_time() - begin) / args.packets)
                    assert forwarder.stats.forwarded - forwarded == 10 * args.packets
            failed = [
                e for e in events if isinstance(e, RecordingStopped) and e.reason != "stopped"
            ]
            assert not failed, failed
    plain = statistics.median(costs[False])
    recorded_cost = statistics.median(costs[True])
    extra = recorded_cost - plain

    def ratio_at(k: int) -> float:
        # Ten tracks forwarded alike, k of them recorded too.
        return round(10 * plain / (10 * plain + k * extra), 4)

    return {
        "packets_per_run": args.packets,
        "rounds": args.rounds,
        "fanout": 10,
        "us_per_packet_in_not_recorded": [round(c * 1e6, 2) for c in costs[False]],
        "us_per_packet_in_recorded": [round(c * 1e6, 2) for c in costs[True]],
        "median_us_not_recorded": round(plain * 1e6, 2),
        "median_us_recorded": round(recorded_cost * 1e6, 2),
        "recording_us_per_packet": round(extra * 1e6, 2),
        "ratio_two_of_ten_recorded": ratio_at(2),
        "ratio_all_recorded": ratio_at(10),
        "packet_bytes": len(packets[0]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--packets", type=int, default=6000, help="packets in per run")
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/sfu-recording-cost.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wadud-rec-cost-") as tmp:
        out = uvloop.run(measure(args, Path(tmp) / "store"))
    out["command"] = command_line("benchmarks.sfu.recording_cost")
    out["wadud_native"] = os.environ.get("WADUD_NATIVE", "1")
    print(json.dumps(out, indent=1))
    write_results(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
