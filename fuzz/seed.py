"""Write the starting corpora: ``python -m fuzz.seed`` (files named ``seed-*``).

Real shapes of every input a target reads, built with the codecs' own
builders, the RFC 5769 STUN vectors and the browsers' SDP offers of
tests/rtc/data. The fuzz runs grow the corpora from these; rerunning this
rewrites only the seeds.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fuzz import CORPUS
from rtc import stun
from rtc.rtcp import compound, feedback, reports, transport_cc
from rtc.rtp.packet import RtpPacket

REPO = Path(__file__).resolve().parent.parent
CID = "6f1c2a8e-3b4d-4c5e-9f60-718293a4b5c6"


def _rtp(**fields: object) -> bytes:
    return bytes(RtpPacket(**fields))  # type: ignore[arg-type]


def rtp_packets() -> Iterator[tuple[str, bytes]]:
    yield "plain", _rtp(payload_type=96, sequence_number=1000, timestamp=90000, ssrc=1111,
                        payload=bytes(range(40)))  # fmt: skip
    one = RtpPacket(payload_type=96, sequence_number=7, timestamp=3000, ssrc=1111, marker=True,
                    payload=b"\x90\x80\x05" + bytes(30))  # fmt: skip
    one.set_extensions([(2, b"\x01\x02\x03"), (3, b"\x00\x07"), (4, b"v")])
    yield "one-byte-ext", bytes(one)
    two = RtpPacket(payload_type=96, sequence_number=8, timestamp=3000, ssrc=1111,
                    payload=bytes(20))  # fmt: skip
    two.set_extensions([(3, b"\x00\x08"), (20, bytes(18))], two_byte=True)
    yield "two-byte-ext", bytes(two)
    yield "csrc-padding", _rtp(payload_type=0, sequence_number=9, timestamp=160, ssrc=2222,
                               csrc=[1, 2], payload=bytes(16), padding=b"\x00\x00\x03")  # fmt: skip
    # RED (RFC 2198): one redundant Opus frame 960 units old, then the primary.
    red = struct.pack("!IB", 0x80000000 | 111 << 24 | 960 << 10 | 10, 111) + bytes(10) + bytes(25)
    level = RtpPacket(payload_type=63, sequence_number=10, timestamp=48000, ssrc=2222, payload=red)
    level.set_extensions([(1, b"\x85"), (4, b"a")])
    yield "red-opus", bytes(level)
    yield "rtx", _rtp(payload_type=97, sequence_number=5, timestamp=3000, ssrc=3333,
                      payload=b"\x03\xe8" + bytes(30))  # fmt: skip


def rtcp_packets() -> Iterator[tuple[str, bytes]]:
    block = reports.ReportBlock(ssrc=1111, fraction_lost=3, packets_lost=7, highest_sequence=70000,
                             jitter=12, lsr=0x1234, dlsr=0x55)  # fmt: skip
    sr = reports.SenderReport(ssrc=2, ntp_timestamp=1 << 40, rtp_timestamp=9000, packet_count=10,
                           octet_count=1000, reports=[block])  # fmt: skip
    yield (
        "sr-sdes",
        compound.build_compound([sr, reports.SourceDescription.for_cname(2, "cname-x")]),
    )
    yield (
        "rr-bye",
        compound.build_compound(
            [
                reports.ReceiverReport(ssrc=2, reports=[block]),
                reports.Bye(sources=[2], reason=b"gone"),
            ]
        ),
    )
    yield "nack", bytes(feedback.Nack.from_lost(2, 1111, [10, 11, 13, 40]))
    yield (
        "pli-fir",
        compound.build_compound(
            [
                feedback.Pli(sender_ssrc=2, media_ssrc=1111),
                feedback.Fir(sender_ssrc=2, entries=[(1111, 4)]),
            ]
        ),
    )
    yield "remb", bytes(feedback.Remb(sender_ssrc=2, bitrate=1_500_000, ssrcs=[1111, 1112]))
    tcc = transport_cc.TransportCc.from_arrivals(
        2, 1111, [(100, 1.0), (101, 1.002), (103, 1.010), (104, 1.3)], fb_count=1
    )  # fmt: skip
    yield "transport-cc", bytes(tcc)


def stun_messages() -> Iterator[tuple[str, bytes]]:
    from tests.rtc import test_stun

    for name in ("SAMPLE_REQUEST", "SAMPLE_V4_RESPONSE", "SAMPLE_V6_RESPONSE", "SAMPLE_LONG_TERM"):
        yield "rfc5769-" + name.lower().replace("_", "-"), getattr(test_stun, name)
    check = stun.StunMessage(stun.BINDING, stun.REQUEST, bytes(range(12)))
    check.add(stun.USERNAME, b"fzLo:fzRe").set(stun.PRIORITY, 0x6E7F00FF)
    check.add(stun.USE_CANDIDATE, b"").set(stun.ICE_CONTROLLING, 0x1122334455667788)
    yield "ice-check", bytes(check.add_integrity(b"fuzz-local-password-0123").add_fingerprint())


def turn_messages() -> Iterator[tuple[str, bytes]]:
    txid = bytes(range(12))
    peer = ("203.0.113.5", 5000)
    for name, method, attrs in (
        ("allocate", stun.ALLOCATE, ((stun.REQUESTED_TRANSPORT, 17), (stun.LIFETIME, 600))),
        ("refresh", stun.REFRESH, ((stun.LIFETIME, 0),)),
        ("permission", stun.CREATE_PERMISSION, ((stun.XOR_PEER_ADDRESS, peer),)),
        ("channel-bind", stun.CHANNEL_BIND,
         ((stun.CHANNEL_NUMBER, 0x4001), (stun.XOR_PEER_ADDRESS, peer))),
        ("binding", stun.BINDING, ()),
    ):  # fmt: skip
        msg = stun.StunMessage(method, stun.REQUEST, txid)
        for atype, value in attrs:
            msg.set(atype, value)
        yield name, bytes(msg)
    send = stun.StunMessage(stun.SEND, stun.INDICATION, txid)
    send.set(stun.XOR_PEER_ADDRESS, peer).add(stun.DATA_ATTR, b"hello peer")
    yield "send", bytes(send)
    yield "send-fingerprint", bytes(send.add_fingerprint())


def relay_batches() -> Iterator[tuple[str, bytes]]:
    def item(who: int, data: bytes) -> bytes:
        if len(data) < 63:
            return bytes([len(data) << 2 | who]) + data
        return bytes([63 << 2 | who]) + len(data).to_bytes(2, "big") + data

    channel = [struct.pack("!HH", ch, n) + bytes(n) for ch, n in ((0x4000, 8), (0x4001, 100))]
    yield "to-peers", b"\x00" + item(0, channel[0]) + item(0, channel[1]) + item(1, channel[0])
    yield "to-peers-junk", b"\x00" + item(0, b"\x40\x00\x00\x09abc") + item(2, channel[0])
    yield "from-peers", b"\x01" + item(0, bytes(100)) + item(1, bytes(7)) + item(2, b"x")


def fanout_packets() -> Iterator[tuple[str, bytes]]:
    for name, packet in rtp_packets():
        if name in ("one-byte-ext", "plain"):
            yield "video-" + name, b"\x00" + packet
        elif name == "red-opus":
            yield "audio-" + name, b"\x01" + packet


def sdp_offers() -> Iterator[tuple[str, bytes]]:
    for path in sorted((REPO / "tests" / "rtc" / "data").glob("*.sdp")):
        yield path.stem, path.read_bytes()


def dtls_flights() -> Iterator[tuple[str, bytes]]:
    from fuzz.targets import dtls
    from rtc.dtls import DtlsRole

    client = dtls.endpoint(DtlsRole.CLIENT)
    client.start(dtls.NOW)
    for i, datagram in enumerate(client.datagrams_to_send()):
        yield f"client-hello-{i}", datagram


def signalling_frames() -> Iterator[tuple[str, bytes]]:
    offer = (REPO / "tests" / "rtc" / "data" / "chromium_audio_video.sdp").read_text()
    frames: list[dict[str, Any]] = [
        {"type": "join", "token": "t.o.k", "id": "1", "name": "بلال احمد"},
        {"type": "publish", "sdp": offer, "sources": {"0": "microphone", "1": "camera"}},
        {"type": "candidate", "transport": "publish", "candidate": {
            "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host",
            "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"}},
        {"type": "track_view", "track_id": "t-1", "width": 640, "height": 360, "visible": True},
        {"type": "mute", "track_id": "t-1", "muted": True},
        {"type": "ping", "id": "x"},
    ]  # fmt: skip
    for frame in frames:
        yield str(frame["type"]), json.dumps(frame, ensure_ascii=False).encode()


def chat_inputs() -> Iterator[tuple[str, bytes]]:
    frames: list[dict[str, Any]] = [
        {"type": "auth", "token": "t.o.k"},
        {"type": "subscribe", "conversation_id": CID, "after": 0},
        {"type": "send", "conversation_id": CID, "client_id": "c1", "body": "سلام", "id": "s"},
        {"type": "edit", "conversation_id": CID, "client_id": "c2", "target_seq": 3, "body": "x"},
        {"type": "history", "conversation_id": CID, "before": 9, "limit": 50},
    ]
    for frame in frames:
        yield str(frame["type"]), json.dumps(frame, ensure_ascii=False).encode()
    heads = {
        "jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
        "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "gif": b"GIF89a\x01\x00\x01\x00",
        "webp": b"RIFF\x24\x00\x00\x00WEBPVP8 ",
        "pdf": b"%PDF-1.7\n",
    }
    for name, head in heads.items():
        yield "upload-" + name, head


def sip_messages() -> Iterator[tuple[str, bytes]]:
    from tests.sip.wire import samples

    yield from samples.ALL.items()
    # A ping between two messages, as on a trunk's TCP connection.
    yield "stream-ping", samples.OPTIONS + b"\r\n\r\n" + samples.OPTIONS


SEEDS = {
    "rtp": rtp_packets,
    "rtcp": rtcp_packets,
    "stun": stun_messages,
    "turn": turn_messages,
    "relay": relay_batches,
    "fanout": fanout_packets,
    "sdp": sdp_offers,
    "dtls": dtls_flights,
    "signalling": signalling_frames,
    "chat": chat_inputs,
    "sip": sip_messages,
}


def main() -> None:
    for target, make in SEEDS.items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in make():
            (folder / f"seed-{name}").write_bytes(data)


if __name__ == "__main__":
    main()
