"""The forwarder's own cost per subscriber copy, in process: no sockets, no SRTP.

Routes 20,000 pre-built audio packets with three header extensions to ten
subscribers, best of five passes, once with subscribers that keep the
publisher's extension ids and once with subscribers whose ids differ (the
worker's usual case: the mid element is never forwarded, and Firefox numbers
extensions differently from Chromium). Then VP8 video at fan-out 10 three
ways: one single-layer track (6 packets a frame), a simulcast group whose
subscribers all get the top layer while only that layer arrives (what the
VP8 PictureID/TL0PICIDX rewrite adds), and the same group with all three
layers arriving (1 + 2 + 6 packets a frame, as benchmarks/sfu/peer.py's
Chromium-like publisher sends them: what the layers nobody receives add).
Prints microseconds per copy and writes benchmarks/results/sfu-route.json.

    .venv/bin/python -m benchmarks.sfu.route
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

from benchmarks.common import write_results
from benchmarks.sfu import peer
from rtc.sdp.attributes import ABS_SEND_TIME, MID, TRANSPORT_CC
from sfu.forward.forwarder import Forwarder

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


VIDEO_FRAMES = 300
GROUP = 999


def video_per_copy(layers: str) -> float:
    """Best microseconds per emitted VP8 copy: ``single`` (one track), ``top``
    (a simulcast group, only its top layer arriving) or ``all`` (all three)."""
    best = float("inf")
    subscriber = {ABS_SEND_TIME: 2, TRANSPORT_CC: 5}
    for n in range(PASSES):
        fwd = Forwarder()
        streams: list[tuple[list[bytes], int]] = []
        if layers == "single":
            fwd.add_track("p", 100, kind="video", codec="vp8", clock_rate=90000,
                          extensions=PUBLISHER)  # fmt: skip
            stream = peer.Stream(1, 100)
            streams.append((peer.build_frames(stream, VIDEO_FRAMES, 6, fps=30), 6))
        else:
            fwd.simulcast.add_group(
                "p", GROUP, 3, codec="vp8", clock_rate=90000, extensions=PUBLISHER
            )
            for i, (_, width, height, per_frame, size) in enumerate(peer.SIMULCAST_LAYERS):
                if layers == "top" and i < 2:
                    continue
                fwd.simulcast.add_layer(GROUP, i, 100 + i)
                per_frame, size = per_frame or 6, size or 1200
                stream = peer.Stream(1 + i, 100 + i)
                built = peer.build_frames(
                    stream, VIDEO_FRAMES, per_frame, fps=30, size=size, width=width, height=height
                )
                streams.append((built, per_frame))
        track = 100 if layers == "single" else GROUP
        for i in range(FANOUT):
            fwd.subscribe(i, track, 0.0, ssrc=5000 + i, extensions=subscriber)
            if layers != "single":
                fwd.simulcast.set_layer(i, GROUP, 2, 0.0)
        # Frame by frame, each layer's packets in turn, as a browser sends them.
        order = [
            p for k in range(VIDEO_FRAMES) for built, per in streams
            for p in built[k * per : (k + 1) * per]
        ]  # fmt: skip
        out: list[tuple[object, bytes]] = []
        base = n * 1000.0
        copies = 0
        start = time.perf_counter()
        for i, data in enumerate(order):
            out.clear()
            fwd.route_into(data, base + i * 0.0002, out)
            copies += len(out)
        elapsed = time.perf_counter() - start
        assert copies == VIDEO_FRAMES * 6 * FANOUT
        best = min(best, elapsed / copies)
    return best * 1e6


def main() -> None:
    same = per_copy(None)
    remapped = per_copy({ABS_SEND_TIME: 2, TRANSPORT_CC: 5})
    print(f"route_into at fan-out {FANOUT}, per copy (best of {PASSES}):")
    print(f"  publisher's extension ids kept: {same:.2f} us")
    print(f"  ids remapped per subscriber:    {remapped:.2f} us")
    video = {name: video_per_copy(name) for name in ("single", "top", "all")}
    print("VP8 at fan-out 10, per copy of the top layer:")
    print(f"  single-layer track:             {video['single']:.2f} us")
    print(f"  simulcast, only the top layer:  {video['top']:.2f} us")
    print(f"  simulcast, all three layers in: {video['all']:.2f} us")
    write_results(
        OUT,
        {
            "fanout": FANOUT,
            "same_ids_us": same,
            "remapped_us": remapped,
            "vp8_single_us": video["single"],
            "vp8_simulcast_top_only_us": video["top"],
            "vp8_simulcast_all_layers_us": video["all"],
        },
    )


if __name__ == "__main__":
    main()
