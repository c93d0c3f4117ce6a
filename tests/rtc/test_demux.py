"""RFC 7983 demultiplexing, checked against the RFC's ranges and real peers' bytes."""

from __future__ import annotations

import aioice.stun
import pytest
from aiortc.rtp import RtcpPsfbPacket, RtcpRrPacket, RtcpSenderInfo, RtcpSrPacket, RtpPacket
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL

from rtc import demux

# RFC 7983 section 7, written out as the RFC's figure gives it.
RFC7983 = [
    (range(0, 4), demux.STUN),
    (range(16, 20), demux.ZRTP),
    (range(20, 64), demux.DTLS),
    (range(64, 80), demux.TURN_CHANNEL),
    (range(128, 192), demux.RTP),
]


def expected_first(b: int) -> int:
    for r, kind in RFC7983:
        if b in r:
            return kind
    return demux.UNKNOWN


def test_every_first_byte_follows_rfc7983() -> None:
    for b in range(256):
        # A second byte that is no RTCP type, so the RTP range stays RTP.
        got = demux.classify(bytes([b, 96]) + bytes(30))
        assert got == expected_first(b), b
        assert demux.is_stun(bytes([b])) == (expected_first(b) == demux.STUN)
        assert demux.is_dtls(bytes([b])) == (expected_first(b) == demux.DTLS)


def test_rtcp_is_told_from_rtp_by_packet_type_rfc5761() -> None:
    for second in range(256):
        data = bytes([0x80, second]) + bytes(10)
        want = demux.RTCP if 192 <= second <= 223 else demux.RTP
        assert demux.classify(data) == want
        assert demux.is_rtcp(data) == (want == demux.RTCP)
        assert demux.is_rtp(data) == (want == demux.RTP)
        assert demux.is_rtp_or_rtcp(data)


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xbf"])
def test_too_short_is_unknown(data: bytes) -> None:
    assert demux.classify(data) == demux.UNKNOWN
    assert not demux.is_rtp(data)
    assert not demux.is_rtcp(data)


@given(st.binary(max_size=64))
def test_random_bytes_classify_without_raising(data: bytes) -> None:
    assert demux.classify(data) in set(demux.Kind)


def test_kind_names_the_same_values() -> None:
    assert demux.Kind.RTP == demux.RTP
    assert demux.Kind(demux.classify(b"\x16\xfe\xfd")).name == "DTLS"


def test_aioice_stun_messages_are_stun() -> None:
    request = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.REQUEST
    )
    request.attributes["USERNAME"] = "a:b"
    assert demux.classify(bytes(request)) == demux.STUN


def test_pyopenssl_dtls_client_hello_is_dtls() -> None:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    hello = conn.bio_read(4096)
    assert demux.classify(hello) == demux.DTLS


def test_aiortc_rtp_and_rtcp_packets() -> None:
    # aiortc's own is_rtcp looks at 192-208 only; we follow RFC 5761's 192-223.
    rtp = RtpPacket(payload_type=111, marker=1, sequence_number=1, timestamp=2, ssrc=3)
    assert demux.classify(rtp.serialize()) == demux.RTP
    video = RtpPacket(payload_type=127, marker=1, payload=b"x" * 100)
    assert demux.classify(video.serialize()) == demux.RTP
    sr = RtcpSrPacket(ssrc=1, sender_info=RtcpSenderInfo(1, 2, 3, 4))
    assert demux.classify(bytes(sr)) == demux.RTCP
    assert demux.classify(bytes(RtcpRrPacket(ssrc=5))) == demux.RTCP
    assert demux.classify(bytes(RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=2))) == demux.RTCP
