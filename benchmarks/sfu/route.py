"""The forwarder's own cost per subscriber copy, in process: no sockets, no SRTP.

Routes 20,000 pre-built audio packets with three header extensions to ten
subscribers, best of five passes, once with subscribers that keep the
publisher's extension ids and once with subscribers whose ids differ (the
worker's usual case: the mid element is never forwarded, and Firefox numbers
extensions differently from Chromium). Prints microseconds per copy and
writes benchmarks/results/sfu-route.json.

    .venv/bin/python benchmarks/sfu/route.py
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from rtc.sdp import ABS_SEND_TIME, MID, TRANSPORT_CC
from sfu.forward import Forwarder

PUBLISHER = {MID: 4, ABS_SEND_TIME: 2, TRANSPORT_CC: 3}
FANOUT = 10
PACKETS = 20_000
PASSES = 5
OUT = Path(__file__).resolve().parents[1] / "results" / "sfu-route.json"


def packet(seq: int) -> bytes:
    # One-byte elements (RFC 8285): abs-send-time (id 2, 3 bytes),
    # transport-cc (id 3, 2 bytes), mid (id 4, "0"), one byte of padding.
    ext = bytes([0x22, 1, 2, 3, 0x31, 0, 7, 0x40, ord("0"), 0, 0, 0])
    header = struct.pack("!BBHII", 0x90, 111, seq & 0xFFFF, seq * 960, 1111)
    return header + struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext + bytes(100)


def per_copy(subscriber_extensions: dict[str, int] | None) -> float:
    """Best microseconds per emitted copy over the passes."""
    packets = [packet(i) for i in range(PACKETS)]
    best = float("inf")
    for n in range(PASSES):
        fwd = Forwarder()
        fwd.add_track("p", 1111, kind="audio", codec="opus", clock_rate=48000, extensions=PUBLISHER)
        for i in range(FANOUT):
            fwd.subscribe(i, 1111, 0.0, ssrc=5000 + i, extensions=subscriber_extensions)
        out: list[tuple[object, bytes]] = []
        base = n * 1000.0
        start = time.perf_counter()
        for i, data in enumerate(packets):
            out.clear()
            fwd.route_into(data, base + i * 0.02, out)
        elapsed = time.perf_counter() - start
        assert len(out) == FANOUT
        best = min(best, elapsed)
    return best / (PACKETS * FANOUT) * 1e6


def main() -> None:
    same = per_copy(None)
    remapped = per_copy({ABS_SEND_TIME: 2, TRANSPORT_CC: 5})
    print(f"route_into at fan-out {FANOUT}, per copy (best of {PASSES}):")
    print(f"  publisher's extension ids kept: {same:.2f} us")
    print(f"  ids remapped per subscriber:    {remapped:.2f} us")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps({"fanout": FANOUT, "same_ids_us": same, "remapped_us": remapped}, indent=1)
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
