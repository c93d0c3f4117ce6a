"""The load tester's pure parts (wadud_client/load/): RTP layouts, the stamp,
the server's descriptions read, percentiles. What arrives off the network
is read without raising, however malformed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wadud_client.load import media
from wadud_client.load.stats import percentiles
from wadud_client.load.wire import rtp, sdp

SERVER_OFFER = "\r\n".join(
    [
        "v=0", "o=- 1 2 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=ice-lite", "a=group:BUNDLE 0 1",
        "m=audio 33583 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 127.0.0.1",
        "a=ice-ufrag:SlNh", "a=ice-pwd:duAdIOf8RBLAQseeNu5w6hii",
        "a=fingerprint:sha-256 3C:E0:0D", "a=setup:actpass", "a=mid:0",
        "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level", "a=sendonly",
        "a=msid:alice t-53754079", "a=rtcp-mux", "a=rtpmap:96 opus/48000/2",
        "a=ssrc:2852230267 cname:alice",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 33583 typ host",
        "m=video 33583 UDP/TLS/RTP/SAVPF 97 98", "c=IN IP4 127.0.0.1", "a=mid:1",
        "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=sendonly", "a=msid:alice t-dcf6d15c", "a=rtpmap:97 VP8/90000",
        "a=rtpmap:98 rtx/90000", "a=fmtp:98 apt=97",
        "a=ssrc-group:FID 2801294491 3981541546",
        "a=ssrc:2801294491 cname:alice", "a=ssrc:3981541546 cname:alice",
    ]
) + "\r\n"  # fmt: skip


def test_a_packet_reads_back_with_its_extensions_and_padding() -> None:
    data = rtp.packet(96, 65535, 2**32 + 5, 0xCAFE, b"opus", marker=True,
                      extensions=[(1, b"0"), (2, b"\x9e")])  # fmt: skip
    head = rtp.read_header(data)
    assert head is not None
    assert (head.ssrc, head.seq, head.timestamp, head.marker, head.payload_type) == (
        0xCAFE, 65535, 5, True, 96,
    )  # fmt: skip
    assert data[head.start : head.end] == b"opus"
    padded = bytearray(data[:-4] + b"opus" + b"\0\0\x03")
    padded[0] |= 0x20
    head = rtp.read_header(bytes(padded))
    assert head is not None and bytes(padded[head.start : head.end]) == b"opus"


@given(st.binary(max_size=64))
def test_any_bytes_read_as_a_header_or_none(data: bytes) -> None:
    head = rtp.read_header(data)
    assert head is None or 12 <= head.start <= head.end <= len(data)


@given(st.binary(max_size=64), st.booleans())
def test_any_payload_reads_as_a_stamp_or_none(payload: bytes, audio: bool) -> None:
    stamp = media.read_stamp(payload, audio)
    assert stamp is None or stamp.index >= 0


def test_an_opus_packet_keeps_its_frame_and_carries_the_stamp_as_padding() -> None:
    frame = bytes([0x78]) + b"\x01\x02\x03"  # TOC: a 20 ms CELT frame, code 0
    stamp = media.STAMP.pack(media.MAGIC, 7, 123456789)
    packet = media.opus_stamped(frame, stamp)
    # Code 3, one frame, padding of len(stamp) bytes (RFC 6716 §3.2.5).
    assert packet[0] == 0x7B and packet[1] == 0x41 and packet[2] == len(stamp)
    assert packet[3 : -len(stamp)] == frame[1:]
    assert media.read_stamp(packet, audio=True) == media.Stamp(7, 123456789)
    # A packet of another code is sent as it is, and carries no stamp.
    other = bytes([0x79]) + b"\x01"
    assert media.opus_stamped(other, stamp) == other
    assert media.read_stamp(other + stamp, audio=True) is None


def test_a_vp8_frame_is_split_with_one_picture_id_and_a_start_bit() -> None:
    frame = bytes(range(256)) * 10
    payloads = rtp.vp8_payloads(frame, 0x1234, keyframe=True)
    assert len(payloads) == 3
    assert [p[0] for p in payloads] == [0x90, 0x80, 0x80]
    assert all(p[2:4] == bytes([0x80 | 0x12, 0x34]) for p in payloads)
    assert b"".join(p[4:] for p in payloads) == frame


def test_the_servers_offer_is_read_and_answered() -> None:
    desc = sdp.read(SERVER_OFFER)
    assert desc.remote.host == "127.0.0.1" and desc.remote.port == 33583
    assert (desc.remote.ufrag, desc.remote.setup) == ("SlNh", "actpass")
    audio, video = desc.sections
    assert (audio.kind, audio.mid, audio.ssrcs, audio.track) == (
        "audio", "0", [2852230267], "t-53754079",
    )  # fmt: skip
    assert video.ssrcs == [2801294491, 3981541546] and video.payload_types["VP8"] == 97
    assert video.rtx_ssrcs == {3981541546} and audio.rtx_ssrcs == set()
    answer = sdp.answer_for(desc, SERVER_OFFER, "sha-256 AA:BB", ("abcd", "p" * 24))
    text = answer.sdp
    assert "a=setup:active" in text and "a=ice-ufrag:abcd" in text
    assert text.count("a=recvonly") == 2 and "m=video 9 UDP/TLS/RTP/SAVPF 97 98" in text
    assert "a=group:BUNDLE 0 1" in text


def test_a_description_without_ice_or_a_candidate_is_refused() -> None:
    with pytest.raises(ValueError, match="lacks"):
        sdp.read(SERVER_OFFER.replace("a=ice-pwd:", "a=x-pwd:"))
    with pytest.raises(ValueError, match="candidate"):
        sdp.read(SERVER_OFFER.replace("a=candidate:", "a=x-candidate:"))


def test_percentiles_by_nearest_rank() -> None:
    assert percentiles([]) is None
    assert percentiles([5.0]) == {"p50": 5.0, "p95": 5.0, "p99": 5.0}
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}


def test_a_run_crossing_a_limit_says_which() -> None:
    from wadud_client.load.findmax import Limits, crossed

    good = {"subscribers": 4, "subscribers_asked": 4, "latency_ms": {"p95": 20.0},
            "loss_pct": 0.5}  # fmt: skip
    limits = Limits(latency_p95_ms=150, loss_pct=2)
    assert crossed(good, limits) is None
    assert crossed({**good, "subscribers": 3}, limits) == "1 subscriber(s) received no media"
    assert crossed({**good, "latency_ms": {"p95": 151.0}}, limits).startswith("p95 latency 151.0")
    assert crossed({**good, "loss_pct": 2.5}, limits) == "loss 2.5% > 2%"
    assert crossed({**good, "latency_ms": None}, limits) is not None


def test_the_servers_cost_is_over_the_hold_and_memory_over_the_baseline() -> None:
    from wadud_client.load.cost import Scrape, cost

    url = "http://node/metrics"
    out = cost(
        {url: Scrape(cpu_s=1.0, rss_bytes=100e6, forwarded=0)},
        {url: Scrape(cpu_s=2.0, rss_bytes=110e6, forwarded=1000)},
        {url: Scrape(cpu_s=4.0, rss_bytes=120e6, forwarded=101_000)},
        held=10.0,
        subscribers=10,
    )
    assert out["processes"][url] == {"cpu_s": 2.0, "cpu_pct": 20.0, "rss_mb": 120.0,
                                     "rss_added_mb": 20.0, "forwarded": 100_000}  # fmt: skip
    assert out["us_per_forwarded_packet"] == 20.0 and out["mb_per_subscriber"] == 2.0
    # A process read at the end only (its first read failed) is left out.
    assert cost({}, {}, {url: Scrape(1, 1, 1)}, held=1, subscribers=1)["processes"] == {}


def _run(seed: int, label: str, latencies: list[float]) -> dict[str, object]:
    from wadud_client.load.run import generator_cost
    from wadud_client.load.stats import histogram

    track = {"kind": "audio", "packets": 10, "octets": 1000, "kbps": 40.0, "loss_pct": 0.0,
             "sampled": True, "expected": 10, "received": 9, "stamped": 9, "stamps_sent": 10,
             "nacked": 0, "repaired": 0, "plis": 0,
             "jitter_ms": 1.0, "latency_ms": None}  # fmt: skip
    generator = generator_cost(cpu_s=2.0, held=10.0, packets=200_000, drops=3, expected=300_000)
    return {
        "summary": {"errors": {"timeout": 1}, "server": None, "generator": generator},
        "run": {"shape": {"seed": seed}, "rooms": [label]},
        "subscribers": [{"label": label, "joined": True, "join_ms": 10.0, "tracks": [track]}],
        "reconnects": [{"label": label, "at_s": 1.0, "reason": "media-lost", "back_s": 0.1}],
        "intervals": [{"at": 1.0, "joined": 1, "receiving": 1, "kbps": 40.0, "errors": 0}],
        "latency_histogram": histogram(latencies),
    }


def test_shards_merge_into_one_summary() -> None:
    from wadud_client.load.report import merge

    merged = merge([_run(7, "a", [1.0] * 90), _run(7, "b", [100.0] * 10)])
    s = merged["summary"]
    assert (s["subscribers"], s["subscribers_asked"]) == (2, 2)
    assert s["loss_pct"] == 10.0  # 18 of 20 stamps
    assert s["errors"] == {"timeout": 2} and s["reconnects"] == 2
    assert s["latency_ms"]["p50"] == pytest.approx(1.0, rel=0.025)
    assert s["latency_ms"]["p95"] == pytest.approx(100.0, rel=0.025)
    assert merged["intervals"] == [{"at": 1.0, "joined": 2, "receiving": 2, "kbps": 80.0,
                                    "errors": 0}]  # fmt: skip
    assert sum(merged["latency_histogram"].values()) == 100
    # The generators' own cost, summed: 4 s of CPU over 10 s, 400,000 packets.
    gen = s["generator"]
    assert (gen["cpu_pct"], gen["us_per_packet"], gen["processes"]) == (40.0, 10.0, 2)
    assert (gen["socket_drops"], gen["drop_pct"]) == (6, 0.001)


def test_a_track_counts_loss_by_its_stamps_or_its_sequence_numbers() -> None:
    from wadud_client.load.tracks import TrackStats

    counted = TrackStats("video", 5, sampled=False)
    # Across the wrap, three missing and one reordered late.
    for i, seq in enumerate([65530, 65531, 65533, 65534, 0, 1, 65535, 4, 5, 6, 7, 8, 9]):
        counted.arrived(seq, 3000 * i, 10.0 + i / 30, 1000)
    assert (counted.expected, counted.received) == (16, 13)
    assert counted.loss_pct == pytest.approx(100 * 3 / 16)
    assert counted.octets == 13_000 and counted.jitter >= 0
    # A sampled track's loss is its stamps': the sequence numbers do not count.
    sampled = TrackStats("audio", 6, rate=48_000)
    sampled.arrived(100, 0, 10.0, 100)
    sampled.stamped, sampled.first_index, sampled.last_index = 9, 1, 10
    assert (sampled.expected, sampled.received) == (10, 9)
    assert sampled.loss_pct == pytest.approx(10.0)
    assert TrackStats("audio", 7, sampled=False).loss_pct == 0.0


def test_a_nack_names_each_missing_sequence_number_once() -> None:
    import struct

    packet = rtp.nack(1, 2, [65534, 65535, 0, 3, 20, 40])
    first, pt, length, sender, media = struct.unpack_from(">BBHII", packet)
    assert (first, pt, sender, media) == (0x81, 205, 1, 2) and (length + 1) * 4 == len(packet)
    fci = [struct.unpack_from(">HH", packet, 12 + 4 * i) for i in range((len(packet) - 12) // 4)]
    named = {(pid + d) & 0xFFFF for pid, blp in fci for d in [0] + [b + 1 for b in range(16)
             if blp >> b & 1]}  # fmt: skip
    assert named == {65534, 65535, 0, 3, 20, 40} and len(fci) == 3


def test_the_transport_sequence_number_is_read_from_either_extension_form() -> None:
    one_byte = rtp.packet(96, 1, 2, 3, b"vp8", extensions=[(2, b"\x01\x02\x03"), (5, b"\xab\xcd")])
    assert rtp.transport_sequence(one_byte, 5) == 0xABCD
    assert (
        rtp.transport_sequence(one_byte, 2) == 0x0102
        and rtp.transport_sequence(one_byte, 7) is None
    )
    # RFC 8285's two-byte form (0x100 profile), with padding between elements.
    block = bytes([1, 1, 0x9E, 0, 3, 2, 0x12, 0x34])
    two_byte = (
        bytes([0x90, 96]) + bytes(10) + b"\x10\x00" + (len(block) // 4).to_bytes(2, "big") + block
    )
    assert rtp.transport_sequence(two_byte, 3) == 0x1234
    assert rtp.transport_sequence(rtp.packet(96, 1, 2, 3, b"x"), 3) is None


@given(st.binary(max_size=48), st.integers(1, 14))
def test_any_bytes_read_as_a_transport_sequence_or_none(data: bytes, xid: int) -> None:
    seq = rtp.transport_sequence(data, xid)
    assert seq is None or 0 <= seq <= 0xFFFF


@given(
    st.lists(
        st.none() | st.integers(0, 255) | st.integers(-0x8000, 0x7FFF), min_size=1, max_size=80
    ),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFF),
)
def test_transport_feedback_reads_back_as_the_server_parses_it(
    deltas: list[int | None], base: int, reference: int
) -> None:
    from rtc.rtcp.compound import parse_compound
    from rtc.rtcp.transport_cc import TransportCc

    packet = rtp.transport_feedback(0xA, 0xB, base, reference, 300, deltas)
    assert len(packet) % 4 == 0
    (parsed,) = parse_compound(packet)
    assert isinstance(parsed, TransportCc)
    assert (parsed.sender_ssrc, parsed.media_ssrc, parsed.base_sequence) == (0xA, 0xB, base)
    assert (parsed.reference_time, parsed.fb_count, parsed.deltas) == (
        reference,
        300 & 0xFF,
        deltas,
    )
