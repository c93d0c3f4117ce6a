"""The SFU benchmark's simulcast publisher, and a short ``--simulcast`` run.

The synthetic publisher must look like Chromium to the worker: one m=
section with ``a=rid``/``a=simulcast`` and no ``a=ssrc``, MID and RID on a
layer's first packets only, keyframes that announce each layer's size, and
a keyframe version of every frame's first packet for when the worker asks.
The run itself (slow) checks that the worker learnt the layers, forwarded
the top one and switched layers on ``track_view``.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.sfu import peer
from rtc.dtls import DtlsCertificate
from rtc.rtp.extensions import extension_elements
from rtc.rtp.header import payload_range
from rtc.sdp.attributes import REPAIRED_RTP_STREAM_ID, RTP_STREAM_ID
from rtc.sdp.session import SessionDescription
from sfu.forward.keyframes import vp8_keyframe_start, vp8_size

ROOT = Path(__file__).resolve().parents[2]


def test_simulcast_offer_is_chromium_shaped() -> None:
    t = peer.Transport(DtlsCertificate.generate(dt.datetime.now(dt.UTC)))
    try:
        desc = SessionDescription.parse(peer.publish_offer(t, 0, 0, rids=("q", "h", "f")))
    finally:
        t.close()
    (media,) = desc.media
    assert media.rids == ["q send", "h send", "f send"]
    assert media.simulcast == "send q;h;f"
    assert not media.ssrcs and not media.ssrc_groups
    uris = {e.uri: e.id for e in media.extmaps}
    assert uris[RTP_STREAM_ID] == peer.EXT_RID
    assert uris[REPAIRED_RTP_STREAM_ID] == peer.EXT_REPAIRED_RID


def test_layer_packets_carry_rid_first_and_keyframes_on_request() -> None:
    keyframes: dict[int, bytes] = {}
    stream = peer.Stream(7, 0x1234)
    packets = peer.build_frames(
        stream, 4, 2, fps=30, size=600, rid="h", rid_packets=3, width=640, height=360,
        keyframes=keyframes,
    )  # fmt: skip
    rids = []
    for p in packets:
        values = {x: p[h + 1 : h + 1 + n] for h, x, n in extension_elements(p)[3]}
        rids.append(values.get(peer.EXT_RID))
        assert values[peer.EXT_MID] == b"0"
        assert p[peer.transport_cc_offset(p) - 1] >> 4 == peer.EXT_TRANSPORT_CC
        assert peer.read_tag(p)[0] == 7
    assert rids == [b"h", b"h", b"h", None, None, None, None, None]
    start, end = payload_range(packets[0])
    assert vp8_keyframe_start(packets[0], start, end)
    assert vp8_size(packets[0], start, end) == (640, 360)
    # Frames 1-3 are delta frames, each with a keyframe version of its first packet.
    assert sorted(keyframes) == [2, 4, 6]
    for i, key in keyframes.items():
        start, end = payload_range(packets[i])
        assert not vp8_keyframe_start(packets[i], start, end)
        start, end = payload_range(key)
        assert vp8_keyframe_start(key, start, end)
        assert len(key) == len(packets[i])


@pytest.mark.slow
def test_simulcast_run_learns_layers_forwards_the_top_and_switches(tmp_path: Path) -> None:
    out = tmp_path / "sfu-simulcast.json"
    subprocess.run(
        [
            sys.executable, "-m", "benchmarks.sfu.run", "--quick", "--simulcast",
            "--repeat", "1", "--switch-rooms", "2", "--switch-seconds", "4",
            "--json", str(out),
        ],
        cwd=ROOT, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    result = json.loads(out.read_text())
    by = {(r["scenario"], r["purpose"]): r for r in result["results"]}
    assert by[("1x10s", "throughput")]["probe_packets_by_layer"].keys() == {"f"}
    assert by[("1x10sd", "throughput")]["probe_packets_by_layer"].keys() == {"f"}
    simulcast = result["simulcast"]
    assert simulcast["ratio"] > 0
    switches = simulcast["switch_ms"]["one_tile_per_room"]
    assert switches["count"] > 0 and switches["not_switched"] == 0
    assert simulcast["keyframes_on_request_in_switch_runs"]["one_tile_per_room"] > 0
