"""The native fan-out forwards simulcast layers byte for byte as the Python loop does.

A simulcast subscription's copies carry its own VP8 PictureID and TL0PICIDX
(sfu.forward.simulcast.Vp8Rewriter); the native leaf writes them past a run's first
packet and leaves the first (the offsets being chosen) to Python. Here two
forwarders, one with the leaf and one without, route the same packets of a
three-layer group to three subscribers while Hypothesis switches their
layers and pauses one; what reaches each socket, the counters and every
rewriter's state must be the same.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.targets.fanout import Record, drain
from tests.sfu.forward.test_native import (
    PUB_EXTS,
    native_leaf,
    needs_native,
    route_native,
    twin_records,
)

GROUP = 9000
LAYER_SSRCS = (1001, 1002, 1003)


def vp8(ssrc: int, seq: int, ts: int, pid: int, tl0: int, *, wide: bool, key: bool) -> bytes:
    """A VP8 packet with abs-send-time, transport-cc and mid, and a descriptor
    with a PictureID (7 or 15 bits) and TL0PICIDX; a keyframe's start if ``key``."""
    block = bytes([0x22, 1, 2, 3, 0x31, 0, 7, 0x40, ord("v"), 0, 0, 0])
    header = struct.pack("!BBHII", 0x90, 96, seq, ts, ssrc)
    header += struct.pack("!HH", 0xBEDE, len(block) // 4) + block
    picture = bytes([0x80 | pid >> 8, pid & 0xFF]) if wide else bytes([pid & 0x7F])
    descriptor = bytes([0x90, 0xC0]) + picture + bytes([tl0])
    payload = bytes([0x10 if key else 0x11, 0, 0, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xB4, 0])
    return header + descriptor + payload + bytes(200)


def forwarder(records: list[Record], now: float) -> Any:
    from rtc.sdp.attributes import ABS_SEND_TIME, MID, TRANSPORT_CC
    from sfu.forward.forwarder import Forwarder

    f = Forwarder()
    f.simulcast.add_group("pub", GROUP, 3, codec="vp8", clock_rate=90000, extensions=PUB_EXTS)
    for i, ssrc in enumerate(LAYER_SSRCS):
        f.simulcast.add_layer(GROUP, i, ssrc)
    f.subscribe(
        records[0], GROUP, now, ssrc=0xA0, payload_types={96: 100},
        extensions={TRANSPORT_CC: 5, ABS_SEND_TIME: 6, MID: 1},
    )  # fmt: skip
    f.set_send_rings(records[0], [0.0] * 65536, [0] * 65536)
    f.subscribe(records[1], GROUP, now, ssrc=0xB0)
    f.subscribe(records[2], GROUP, now, ssrc=0xC0, extensions={TRANSPORT_CC: 3})
    for r in records:
        f.simulcast.set_layer(r, GROUP, 0, now)
    return f


@settings(max_examples=30, deadline=None)
@given(
    wide=st.booleans(),
    steps=st.lists(
        st.tuples(
            st.sampled_from([None, (0, 0), (0, 2), (1, 1), (2, 2), (1, 0), ("pause", 2)]),
            st.booleans(),  # whether this frame is a keyframe on every layer
        ),
        min_size=1,
        max_size=25,
    ),
)
@needs_native
def test_native_forwards_simulcast_layers_as_python_does(
    wide: bool, steps: list[tuple[Any, bool]]
) -> None:
    with native_leaf(rcvbuf=1 << 21) as (fan, receivers):
        ours, theirs = twin_records(receivers)
        now = 100.0
        fast, slow = forwarder(ours, now), forwarder(theirs, now)
        expected: list[list[bytes]] = [[], [], []]
        by_python = 0
        paused = False
        # Each layer numbers its own pictures and sequence; all start on a keyframe.
        seqs, pids, tl0s = [100, 30000, 65500], [5, 300, 32760], [1, 200, 255]
        for frame, (event, key) in enumerate(steps):
            now += 0.033
            if event is not None:
                who, layer = event
                if who == "pause":
                    paused = not paused
                    fast.set_paused(ours[layer], GROUP, paused, now)
                    slow.set_paused(theirs[layer], GROUP, paused, now)
                else:
                    fast.simulcast.set_layer(ours[who], GROUP, layer, now)
                    slow.simulcast.set_layer(theirs[who], GROUP, layer, now)
            for i, ssrc in enumerate(LAYER_SSRCS):
                for part in range(2):
                    seqs[i] = (seqs[i] + 1) & 0xFFFF
                    packet = vp8(
                        ssrc, seqs[i], frame * 3000, pids[i], tl0s[i], wide=wide,
                        key=(key or frame == 0) and part == 0,
                    )  # fmt: skip
                    out: list[tuple[Any, bytes]] = []
                    route_native(fast, fan, packet, now, out)
                    by_python += fan.send(out)
                    for k, copy in slow.route(packet, now):
                        expected[theirs.index(k)].append(k.protect(copy))
                pids[i] = (pids[i] + 1) & (0x7FFF if wide else 0x7F)
                tl0s[i] = (tl0s[i] + 1) & 0xFF
            assert fast.stats.as_dict() == slow.stats.as_dict(), frame
        assert drain(receivers) == expected
        assert expected[1]
        # Past each run's first packet the copies went native, VP8 rewrite and all.
        assert fan.counters()["sent"] > by_python
        mine = fast.simulcast.group(GROUP).subscriptions
        ref = slow.simulcast.group(GROUP).subscriptions
        for a, b in zip(mine, ref, strict=True):
            assert a.vp8 is not None and b.vp8 is not None
            assert [getattr(a.vp8, n) for n in a.vp8.__slots__] == [
                getattr(b.vp8, n) for n in b.vp8.__slots__
            ]
            assert (a.packets_sent, a.octets_sent) == (b.packets_sent, b.octets_sent)
