"""Tests for rtc.sdp: parsing browsers' offers and serialising them back.

The offers in tests/rtc/data/ are written by hand in the shape Chromium and
Firefox produce (attribute order, codec lists and extension ids as they send
them).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtc.errors import RtcError, SdpError, SdpNegotiationError, SdpParseError
from rtc.sdp.attributes import (
    AUDIO_LEVEL,
    MID,
    TRANSPORT_CC,
    Attribute,
    Codec,
    Direction,
    RtcpFeedback,
)
from rtc.sdp.media import MediaDescription
from rtc.sdp.session import SessionDescription
from rtc.sdp.transport import Setup

DATA = Path(__file__).parent / "data"
SAMPLES = sorted(p.name for p in DATA.glob("*.sdp"))


def sample(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


# --- parsing -------------------------------------------------------------------


def test_errors_are_typed() -> None:
    assert issubclass(SdpParseError, SdpError)
    assert issubclass(SdpParseError, ValueError)
    assert issubclass(SdpNegotiationError, RtcError)
    assert not issubclass(SdpNegotiationError, ValueError)


@pytest.mark.parametrize("name", SAMPLES)
def test_samples_round_trip(name: str) -> None:
    text = sample(name)
    desc = SessionDescription.parse(text)
    again = SessionDescription.parse(str(desc))
    assert again == desc
    assert str(again) == str(desc)
    assert SessionDescription.parse(bytes(desc)) == desc
    # LF-only line ends (as some signalling layers deliver them) parse the same.
    assert SessionDescription.parse(text.replace("\r\n", "\n")) == desc
    # Nothing is lost: every input line has an output line with the same content.
    assert sorted(text.splitlines()) == sorted(str(desc).splitlines())


def test_chromium_offer_facts() -> None:
    offer = SessionDescription.parse(sample("chromium_audio_video.sdp"))
    assert offer.bundle is not None and offer.bundle.mids == ["0", "1"]
    assert offer.extmap_allow_mixed
    assert Attribute("msid-semantic", f" WMS {offer.media[0].msids[0].stream_id}") in (
        offer.attributes
    )
    audio, video = offer.media
    assert (audio.kind, audio.mid, video.kind, video.mid) == ("audio", "0", "video", "1")
    assert audio.direction is video.direction is Direction.SENDRECV
    assert audio.rtcp_mux and audio.rtcp_rsize and video.rtcp_mux
    transport = offer.transport()
    assert transport.ice_ufrag == audio.ice_ufrag and len(transport.ice_ufrag or "") == 4
    assert transport.ice_pwd and len(transport.ice_pwd) == 24
    assert transport.ice_options == ["trickle"]
    assert transport.setup is Setup.ACTPASS
    assert [f.algorithm for f in transport.fingerprints] == ["sha-256"]
    assert audio.msids[0].track_id and audio.msids[0].stream_id == video.msids[0].stream_id
    # Codecs follow the m= line order; parameters are kept verbatim.
    assert [str(c.payload_type) for c in audio.codecs] == audio.formats
    opus = audio.codec(111)
    assert opus is not None and opus.is_named("opus")
    assert (opus.clock_rate, opus.channels) == (48000, 2)
    assert opus.parameters == {"minptime": "10", "useinbandfec": "1"}
    assert opus.feedback == [RtcpFeedback("transport-cc")]
    assert audio.codec(0) == Codec(0, "PCMU", 8000)
    assert video.rtx_for(96) == Codec(97, "rtx", 90000, fmtp="apt=96")
    assert audio.extmap_id(AUDIO_LEVEL) == 1 and video.extmap_id(TRANSPORT_CC) == 3
    assert video.extmap_id(MID) == audio.extmap_id(MID) == 4
    assert video.ssrc_groups[0].semantics == "FID" and len(video.ssrc_groups[0].ssrcs) == 2
    media_ssrc, rtx_ssrc = video.ssrc_groups[0].ssrcs
    assert video.fid_pairs() == {media_ssrc: rtx_ssrc} and audio.fid_pairs() == {}
    cnames = video.ssrc_values("cname")
    assert cnames[media_ssrc] == cnames[rtx_ssrc] == audio.ssrc_values("cname")[audio.ssrcs[0].ssrc]
    # a=rtcp is not typed: it is kept as an attribute.
    assert Attribute("rtcp", "9 IN IP4 0.0.0.0") in audio.attributes


def test_firefox_offer_facts() -> None:
    offer = SessionDescription.parse(sample("firefox_audio_video.sdp"))
    audio, video = offer.media
    # Firefox sends the fingerprint and ice-options at session level only.
    assert audio.fingerprints == [] and len(offer.fingerprints) == 1
    assert offer.ice_options == ["trickle"] and audio.ice_options == []
    transport = offer.transport(video)
    assert transport.fingerprints == offer.fingerprints
    assert transport.ice_ufrag == video.ice_ufrag and transport.ice_options == ["trickle"]
    assert transport.setup is Setup.ACTPASS
    # fmtp lines come before their rtpmap lines: codecs still line up.
    assert [c.payload_type for c in video.codecs] == [int(f) for f in video.formats]
    h264 = video.codec(126)
    assert h264 is not None and h264.is_named("H264")
    assert h264.parameters["packetization-mode"] == "1"
    csrc = next(e for e in audio.extmaps if e.id == 2)
    assert csrc.direction is Direction.RECVONLY
    assert video.ssrc_groups[0].ssrcs == [s.ssrc for s in video.ssrcs]
    assert offer.origin.username == "mozilla...THIS_IS_SDPARTA-128.0"


def test_simulcast_candidates_and_data_channel_kept() -> None:
    offer = SessionDescription.parse(sample("chromium_simulcast_datachannel.sdp"))
    audio, video, data = offer.media
    assert audio.direction is Direction.SENDONLY
    assert video.rids == ["q send", "h send", "f send"]
    assert video.simulcast == "send q;h;f"
    host, srflx, tcp = audio.candidates
    assert host.address.endswith(".local") and host.type == "host"
    assert host.extensions == [("generation", "0"), ("network-id", "1")]
    assert srflx.type == "srflx" and ("raddr", "0.0.0.0") in srflx.extensions
    assert tcp.transport == "tcp" and ("tcptype", "active") in tcp.extensions
    assert audio.end_of_candidates
    assert audio.connection is not None and audio.connection.address == "203.0.113.7"
    assert (data.kind, data.proto, data.formats) == (
        "application",
        "UDP/DTLS/SCTP",
        ["webrtc-datachannel"],
    )
    assert not data.is_rtp and data.codecs == []
    assert Attribute("sctp-port", "5000") in data.attributes


MINIMAL = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
AUDIO = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\r\n",
        "v=1\r\n",
        "o=- 1 1 IN IP4 0.0.0.0\r\nv=0\r\n",
        MINIMAL.replace("s=-\r\n", ""),
        MINIMAL.replace("t=0 0\r\n", ""),
        MINIMAL.replace("o=- 1 1", "o=- 1"),
        MINIMAL + "s=again\r\n",
        MINIMAL + "x=unknown\r\n",
        MINIMAL + "\r\n",
        MINIMAL + "a\r\n",
        MINIMAL + "a=bad name\r\n",
        MINIMAL + "a=ice-lite:yes\r\n",
        MINIMAL + "a=setup:sideways\r\n",
        MINIMAL + "a=fingerprint:sha-256 XY:ZZ\r\n",
        MINIMAL + "a=fingerprint:sha-256\r\n",
        MINIMAL + "a=ice-ufrag:a\r\na=ice-ufrag:b\r\n",
        MINIMAL + "a=group:\r\n",
        MINIMAL.replace("\r\ns=", "\rs="),
        MINIMAL + "a=x:\x00\r\n",
        MINIMAL + "m=audio 9 UDP/TLS/RTP/SAVPF\r\n",
        MINIMAL + "m=audio 70000 UDP/TLS/RTP/SAVPF 111\r\n",
        MINIMAL + "m=audio 9 UDP/TLS/RTP/SAVPF 128\r\n",
        MINIMAL + "m=audio 9 UDP/TLS/RTP/SAVPF 1²\r\n",
        MINIMAL + "m=audio 9 UDP/TLS/RTP/SAVPF  111\r\n",
        MINIMAL + AUDIO + "a=rtpmap:111 opus\r\n",
        MINIMAL + AUDIO + "a=rtpmap:111 opus/48000/2\r\n",
        MINIMAL + AUDIO + "a=rtpmap:x opus/48000\r\n",
        MINIMAL + AUDIO + "a=fmtp:111\r\n",
        MINIMAL + AUDIO + "a=rtcp-fb:111\r\n",
        MINIMAL + AUDIO + "a=mid:0\r\na=mid:1\r\n",
        MINIMAL + AUDIO + "a=mid:0\r\n" + AUDIO + "a=mid:0\r\n",
        MINIMAL + AUDIO + "a=sendonly\r\na=recvonly\r\n",
        MINIMAL + AUDIO + "a=extmap:0 urn:x\r\n",
        MINIMAL + AUDIO + "a=extmap:256 urn:x\r\n",
        MINIMAL + AUDIO + "a=extmap:1/sideways urn:x\r\n",
        MINIMAL + AUDIO + "a=extmap:1\r\n",
        MINIMAL + AUDIO + "a=extmap:1 urn:x\r\na=extmap:1 urn:y\r\n",
        MINIMAL + AUDIO + "a=ssrc:4294967296 cname:x\r\n",
        MINIMAL + AUDIO + "a=ssrc:1\r\n",
        MINIMAL + AUDIO + "a=ssrc-group:FID\r\n",
        MINIMAL + AUDIO + "a=msid:\r\n",
        MINIMAL + AUDIO + "a=candidate:1 1 udp 1 127.0.0.1 9 host\r\n",
        MINIMAL + AUDIO + "a=candidate:1 1 udp 1 127.0.0.1 9 typ host generation\r\n",
        MINIMAL + AUDIO + "a=candidate:1 0 udp 1 127.0.0.1 9 typ host\r\n",
        MINIMAL + AUDIO + "s=not here\r\n",
        MINIMAL + AUDIO + "c=IN IP4\r\n",
    ],
)
def test_malformed_raises_typed_error(text: str) -> None:
    with pytest.raises(SdpParseError):
        SessionDescription.parse(text)


def test_bytes_that_are_not_utf8_raise_typed_error() -> None:
    with pytest.raises(SdpParseError):
        SessionDescription.parse(b"v=0\r\ns=\xff\r\n")


def test_minimal_and_builder_round_trip() -> None:
    desc = SessionDescription.parse(MINIMAL + AUDIO + "a=rtcp-fb:* nack\r\n")
    assert desc.media[0].attributes == [Attribute("rtcp-fb", "* nack")]
    built = SessionDescription(media=[MediaDescription("audio", 9, "RTP/AVP", ["0"])])
    assert SessionDescription.parse(str(built)) == built


# --- hypothesis: parse never raises anything but the typed error -----------------

SAMPLE_TEXTS = [sample(n) for n in SAMPLES]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_typed_error(text: str | bytes) -> SessionDescription | None:
    try:
        desc = SessionDescription.parse(text)
    except SdpParseError:
        return None
    # Whatever parses round-trips, and its text is a fixed point.
    again = SessionDescription.parse(str(desc))
    assert again == desc
    assert str(again) == str(desc)
    return desc


@FAST
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    parse_or_typed_error(text)


@FAST
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    parse_or_typed_error(data)


@FAST
@given(
    st.sampled_from(SAMPLE_TEXTS),
    st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.sampled_from(["delete", "insert", "swap", "dup", "drop"]),
            st.text(alphabet=st.sampled_from(" :/=;\r\n0123456789amx-\x00é"), max_size=3),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_browser_offers(text: str, edits: list[tuple[int, str, str]]) -> None:
    lines = text.split("\r\n")
    for position, op, junk in edits:
        if op in ("swap", "dup", "drop"):
            i = position % len(lines)
            j = (position // 7) % len(lines)
            if op == "swap":
                lines[i], lines[j] = lines[j], lines[i]
            elif op == "dup":
                lines.insert(j, lines[i])
            elif len(lines) > 1:
                del lines[i]
            continue
        i = position % len(lines)
        line = lines[i]
        at = (position // 3) % (len(line) + 1)
        if op == "delete":
            lines[i] = line[:at] + line[at + len(junk) + 1 :]
        else:
            lines[i] = line[:at] + junk + line[at:]
    parse_or_typed_error("\r\n".join(lines))


ATTRIBUTE_LINES = st.sampled_from(
    [
        "a=mid:{n}x",
        "a=sendonly",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=extmap:{n} urn:x:{n}",
        "a=extmap:{n}/recvonly urn:y:{n} attr",
        "a=msid:s{n} t{n}",
        "a=msid:-",
        "a=ssrc:{n} cname:c{n}",
        "a=ssrc:{n} foo",
        "a=ssrc-group:FID {n} {n}",
        "a=rtpmap:{pt} codec{n}/90000",
        "a=rtpmap:{pt} opus/48000/2",
        "a=fmtp:{pt} apt={n};x=y",
        "a=rtcp-fb:{pt} nack pli",
        "a=rtcp-fb:* ccm fir",
        "a=rid:r{n} send max-width=640",
        "a=simulcast:send r{n}",
        "a=candidate:{n} 1 udp {n} 10.0.0.{n} {n} typ host generation 0",
        "a=end-of-candidates",
        "a=ice-options:trickle renomination",
        "a=fingerprint:sha-1 0A:{n:02X}",
        "a=setup:passive",
        "a=x-unknown:{n} with spaces ",
        "a=flag-{n}",
        "b=AS:{n}",
        "i=info {n}",
        "c=IN IP6 ::{n}",
    ]
)


@FAST
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["audio", "video", "application"]),
            st.lists(st.tuples(ATTRIBUTE_LINES, st.integers(1, 14)), max_size=12),
        ),
        max_size=3,
    )
)
def test_generated_descriptions_round_trip(
    sections: list[tuple[str, list[tuple[str, int]]]],
) -> None:
    text = MINIMAL
    for kind, lines in sections:
        proto = "UDP/DTLS/SCTP webrtc-datachannel" if kind == "application" else "RTP/AVP 96 97"
        text += f"m={kind} 9 {proto}\r\n"
        for template, n in lines:
            text += template.format(n=n, pt=95 + n % 4) + "\r\n"
    parse_or_typed_error(text)
