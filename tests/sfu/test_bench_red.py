"""The SFU benchmark's RED mode: Chromium-shaped audio offers and packets, and a quick run."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.sfu import peer
from rtc.dtls import DtlsCertificate
from rtc.red import RedBlock, RedPayload
from rtc.rtp.packet import RtpPacket
from rtc.sdp.session import SessionDescription
from sfu.transport import offer_answer

ROOT = Path(__file__).resolve().parents[2]


def test_audio_offer_is_chromium_shaped_and_red_is_answered_first() -> None:
    transport = peer.Transport(DtlsCertificate.generate(dt.datetime.now(dt.UTC)))
    try:
        offer = SessionDescription.parse(
            peer.publish_offer(transport, 10, 11, audio="red", audio_ssrc=12)
        )
        video, audio = offer.media
        assert offer.bundle is not None and offer.bundle.mids == ["0", peer.AUDIO_MID]
        assert [c.name for c in audio.codecs] == ["opus", "red"]
        assert audio.codecs[1].fmtp == f"{peer.OPUS_PT}/{peer.OPUS_PT}"
        local = offer_answer.LocalParameters(
            "abcd", "p" * 24, video.fingerprints, [("127.0.0.1", 9)]
        )
        answered = offer_answer.answer(offer, local).media[1]
        assert answered.formats == [str(peer.RED_PT), str(peer.OPUS_PT)]
        plain = SessionDescription.parse(peer.publish_offer(transport, 10, 11, audio="opus"))
        assert [c.name for c in plain.media[1].codecs] == ["opus"]
    finally:
        transport.close()


def test_audio_packets_carry_the_frame_before_and_the_tag() -> None:
    red = peer.build_audio(peer.Stream(7, 0x55, mid=peer.AUDIO_MID), 3, red=True)
    plain = peer.build_audio(peer.Stream(8, 0x56, mid=peer.AUDIO_MID), 3, red=False)
    payloads = [RedPayload.parse(RtpPacket.parse(p).payload) for p in red]
    assert payloads[0].redundant == []
    assert payloads[2].redundant == [RedBlock(peer.OPUS_PT, 960, payloads[1].data)]
    assert [peer.read_tag(p) for p in red] == [(7, 0), (7, 1), (7, 2)]
    assert [RtpPacket.parse(p).payload_type for p in plain] == [peer.OPUS_PT] * 3
    assert [peer.read_tag(p) for p in plain] == [(8, 0), (8, 1), (8, 2)]
    assert all(peer.transport_cc_offset(p) for p in red)


def test_red_run_strips_for_half_and_compares(tmp_path: Path) -> None:
    out = tmp_path / "sfu-red.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.sfu.run", "--quick", "--red",
            "--repeat", "1", "--json", str(out),
        ],
        cwd=ROOT, timeout=200, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    by = {r["scenario"]: r for r in result["results"]}
    assert by.keys() == {"1x10a", "1x10r"}
    for run in by.values():
        assert run["loss_pct"] < 5, run
        assert run["auth_failures"] == 0 and run["errors"] == []
    # Five of the ten subscribers refused RED: each of their audio copies was cut.
    assert by["1x10r"]["worker_counters"]["red_stripped"] > 0
    assert "red_stripped" not in by["1x10a"]["worker_counters"]
    red = result["red"]
    assert red["ratio"] > 0 and red["pair_ratios"]
