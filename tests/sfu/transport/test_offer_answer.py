"""Tests for sfu.transport.offer_answer: answering browsers' offers, offering to
subscribers, and aiortc as an independent peer on both sides of the exchange.

The offers in tests/rtc/data/ are written by hand in the shape Chromium and
Firefox produce (attribute order, codec lists and extension ids as they send
them). aiortc is used only as a reference peer: it parses our answers and
offers with its own code, and no ICE or DTLS runs (no network).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from rtc.errors import SdpNegotiationError
from rtc.sdp.attributes import (
    ABS_SEND_TIME,
    AUDIO_LEVEL,
    MID,
    TRANSPORT_CC,
    Codec,
    Direction,
    Extmap,
    RtcpFeedback,
)
from rtc.sdp.session import SessionDescription
from rtc.sdp.transport import Fingerprint, Setup
from sfu.transport.offer_answer import ForwardedTrack, LocalParameters, answer, offer_for_subscriber

DATA = Path(__file__).parents[2] / "rtc" / "data"
SAMPLES = sorted(p.name for p in DATA.glob("*.sdp"))
FOUR = {MID, ABS_SEND_TIME, TRANSPORT_CC, AUDIO_LEVEL}
ALLOWED_FB = {
    ("transport-cc", None),
    ("nack", None),
    ("nack", "pli"),
    ("ccm", "fir"),
    ("goog-remb", None),
}
SERVER_FP = Fingerprint("sha-256", ":".join(f"{i * 7 % 256:02X}" for i in range(32)))


def sample(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def local(**kwargs: object) -> LocalParameters:
    base = LocalParameters(
        ice_ufrag="Wd5u",
        ice_pwd="sfuPasswordOf24Chars0123",
        fingerprints=[SERVER_FP],
        addresses=[("127.0.0.1", 9), ("::1", 9)],
        session_id="1234567890",
    )
    return replace(base, **kwargs)  # type: ignore[arg-type]


# --- answering a publisher -----------------------------------------------------


def check_answer(
    offer: SessionDescription, ans: SessionDescription, params: LocalParameters
) -> None:
    """Every rule of the SFU's answer, for any offer."""
    assert ans.ice_lite
    assert len(ans.media) == len(offer.media)
    assert SessionDescription.parse(str(ans)) == ans
    offer_transport = offer.transport()
    expected_setup = {Setup.ACTPASS: Setup.ACTIVE, Setup.ACTIVE: Setup.PASSIVE}.get(
        offer_transport.setup or Setup.ACTPASS, Setup.ACTIVE
    )
    accepted: list[str] = []
    for offered, ours in zip(offer.media, ans.media, strict=True):
        assert ours.mid == offered.mid and ours.kind == offered.kind
        if ours.port == 0:
            assert ours.candidates == [] and ours.ice_ufrag is None
            continue
        accepted.append(ours.mid or "")
        assert ours.kind in ("audio", "video")
        assert ours.direction is Direction.RECVONLY
        assert ours.rtcp_mux
        assert ours.port == params.addresses[0][1]
        assert ours.connection is not None and ours.connection.address == params.addresses[0][0]
        assert (ours.ice_ufrag, ours.ice_pwd) == (params.ice_ufrag, params.ice_pwd)
        assert ours.fingerprints == params.fingerprints
        assert ours.setup is expected_setup
        assert {(c.address, c.port) for c in ours.candidates} == set(params.addresses)
        assert {c.type for c in ours.candidates} == {"host"} and ours.end_of_candidates
        # Payload types, parameters and extension ids exactly as offered.
        for codec in ours.codecs:
            theirs = offered.codec(codec.payload_type)
            assert theirs is not None
            assert (codec.name, codec.clock_rate, codec.channels) == (
                theirs.name,
                theirs.clock_rate,
                theirs.channels,
            )
            assert {(f.type, f.parameter) for f in codec.feedback} <= ALLOWED_FB
            assert {(f.type, f.parameter) for f in codec.feedback} == {
                (f.type, f.parameter) for f in theirs.feedback
            } & ALLOWED_FB
        for ext in ours.extmaps:
            assert ext.uri in FOUR
            assert offered.extmap_id(ext.uri) == ext.id
        assert {e.uri for e in ours.extmaps} == {e.uri for e in offered.extmaps} & FOUR
        names = [(c.name or "").lower() for c in ours.codecs]
        if ours.kind == "audio":
            # RED (RFC 2198) over the Opus payload type, first, when offered.
            assert names in (["opus"], ["red", "opus"])
            opus = ours.codecs[-1]
            assert (opus.clock_rate, opus.channels) == (48000, 2)
            assert opus.parameters["useinbandfec"] == "1"
            if names[0] == "red":
                pt = opus.payload_type
                assert ours.codecs[0].fmtp == f"{pt}/{pt}"
        else:
            assert set(names) <= {"vp8", "h264", "rtx"}
            assert names.count("h264") <= 1 and names.count("vp8") <= 1
            for codec in ours.codecs:
                if codec.is_named("rtx"):
                    assert codec.apt in {c.payload_type for c in ours.codecs}
                    assert codec.apt == ours.codecs[ours.codecs.index(codec) - 1].payload_type
                if codec.is_named("h264"):
                    assert codec.parameters["packetization-mode"] == "1"
                    # Each kept codec that had RTX in the offer keeps it.
                if not codec.is_named("rtx") and offered.rtx_for(codec.payload_type):
                    assert ours.rtx_for(codec.payload_type) == offered.rtx_for(codec.payload_type)
    group = offer.bundle
    if group is not None:
        assert ans.bundle is not None
        assert ans.bundle.mids == [m for m in group.mids if m in accepted]


@pytest.mark.parametrize("name", SAMPLES)
def test_answer_browser_offers(name: str) -> None:
    offer = SessionDescription.parse(sample(name))
    params = local()
    ans = answer(offer, params)
    check_answer(offer, ans, params)
    assert ans.extmap_allow_mixed == offer.extmap_allow_mixed


def test_answer_chromium_chooses_42e01f_and_drops_the_rest() -> None:
    offer = SessionDescription.parse(sample("chromium_audio_video.sdp"))
    ans = answer(offer, local())
    audio, video = ans.media
    assert audio.formats == ["63", "111"]
    assert audio.codecs[1].fmtp == "minptime=10;useinbandfec=1"
    assert audio.codecs[1].feedback == [RtcpFeedback("transport-cc")]
    assert [e.id for e in audio.extmaps] == [1, 2, 3, 4]
    # VP8 + RTX first (local preference), then H.264 42e01f pm=1 (106) + RTX.
    assert video.formats == ["96", "97", "106", "107"]
    h264 = video.codec(106)
    assert h264 is not None and "profile-level-id=42e01f" in (h264.fmtp or "")
    assert [(e.id, e.uri) for e in video.extmaps] == [
        (2, ABS_SEND_TIME),
        (3, TRANSPORT_CC),
        (4, MID),
    ]
    assert video.rids == [] and video.simulcast is None
    # Older Chromium put extmap-allow-mixed per m= section: mirrored there too.
    offer.extmap_allow_mixed = False
    offer.media[1].extmap_allow_mixed = True
    ans = answer(offer, local())
    assert not ans.extmap_allow_mixed
    assert [m.extmap_allow_mixed for m in ans.media] == [False, True]


def test_answer_firefox_keeps_its_numbers() -> None:
    offer = SessionDescription.parse(sample("firefox_audio_video.sdp"))
    ans = answer(offer, local())
    audio, video = ans.media
    assert audio.formats == ["109"]
    assert audio.codecs[0].fmtp == "maxplaybackrate=48000;stereo=1;useinbandfec=1"
    assert [(e.id, e.uri) for e in audio.extmaps] == [(1, AUDIO_LEVEL), (3, MID)]
    assert video.formats == ["120", "124", "126", "127"]
    assert [(e.id, e.uri) for e in video.extmaps] == [
        (3, MID),
        (4, ABS_SEND_TIME),
        (7, TRANSPORT_CC),
    ]
    assert ans.bundle is not None and ans.bundle.mids == ["0", "1"]


def test_answer_rejects_data_channel_and_unbundled() -> None:
    offer = SessionDescription.parse(sample("chromium_simulcast_datachannel.sdp"))
    ans = answer(offer, local())
    data = ans.media[2]
    assert (data.port, data.mid, data.formats) == (0, "2", ["webrtc-datachannel"])
    assert ans.bundle is not None and ans.bundle.mids == ["0", "1"]
    assert SessionDescription.parse(str(ans)) == ans


def test_answer_picks_next_tag_when_first_is_rejected() -> None:
    # RFC 8843 section 7.3.1: the offerer's tag (the data channel) is rejected,
    # so the next accepted mid becomes the answerer's tag.
    offer = SessionDescription.parse(sample("chromium_simulcast_datachannel.sdp"))
    assert offer.bundle is not None
    offer.bundle.mids = ["2", "0", "1"]
    ans = answer(offer, local())
    assert ans.bundle is not None and ans.bundle.mids == ["0", "1"]
    check_answer(offer, ans, local())


def test_answer_rejects_m_line_outside_bundle_and_disabled() -> None:
    offer = SessionDescription.parse(sample("chromium_audio_video.sdp"))
    assert offer.bundle is not None
    offer.bundle.mids = ["0"]
    ans = answer(offer, local())
    assert ans.media[1].port == 0 and ans.bundle is not None and ans.bundle.mids == ["0"]
    offer = SessionDescription.parse(sample("chromium_audio_video.sdp"))
    offer.media[0].port = 0
    ans = answer(offer, local())
    assert ans.media[0].port == 0 and ans.bundle is not None and ans.bundle.mids == ["1"]
    check_answer(offer, ans, local())


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (Setup.ACTPASS, Setup.ACTIVE),
        (Setup.ACTIVE, Setup.PASSIVE),
        (Setup.PASSIVE, Setup.ACTIVE),
        (None, Setup.ACTIVE),
    ],
)
def test_answer_takes_the_dtls_role_left(offered: Setup | None, expected: Setup) -> None:
    offer = SessionDescription.parse(sample("chromium_audio_video.sdp"))
    for media in offer.media:
        media.setup = offered
    ans = answer(offer, local())
    assert {m.setup for m in ans.media} == {expected}


def test_answer_refuses_unusable_offers() -> None:
    base = sample("chromium_audio_video.sdp")
    offer = SessionDescription.parse(base)
    for media in offer.media:
        media.setup = Setup.HOLDCONN
    with pytest.raises(SdpNegotiationError):
        answer(offer, local())
    offer = SessionDescription.parse(base)
    for media in offer.media:
        media.fingerprints = []
    with pytest.raises(SdpNegotiationError, match="fingerprint"):
        answer(offer, local())
    offer = SessionDescription.parse(base)
    for media in offer.media:
        media.ice_pwd = None
    with pytest.raises(SdpNegotiationError, match="ICE"):
        answer(offer, local())
    offer = SessionDescription.parse(base)
    offer.groups = []
    with pytest.raises(SdpNegotiationError, match="BUNDLE"):
        answer(offer, local())
    offer = SessionDescription.parse(base)
    with pytest.raises(SdpNegotiationError, match="address"):
        answer(offer, local(addresses=[]))
    offer = SessionDescription.parse(base)
    for media in offer.media:
        media.codecs = [c for c in media.codecs if c.is_named("PCMU")]
    with pytest.raises(SdpNegotiationError, match="nothing"):
        answer(offer, local())


def test_answer_single_section_without_bundle() -> None:
    offer = SessionDescription.parse(sample("firefox_audio_video.sdp"))
    offer.groups = []
    offer.media = offer.media[:1]
    ans = answer(offer, local())
    assert ans.groups == [] and ans.media[0].port == 9


def test_answer_h264_family_choice() -> None:
    offer = SessionDescription.parse(sample("chromium_audio_video.sdp"))
    video = offer.media[1]
    # No 42e01f and no VP8: the constrained-baseline family (42c01f) wins over
    # High and over packetization-mode 0.
    video.codecs = [
        Codec(100, "H264", 90000, fmtp="packetization-mode=1;profile-level-id=64001f"),
        Codec(101, "rtx", 90000, fmtp="apt=100"),
        Codec(102, "H264", 90000, fmtp="packetization-mode=0;profile-level-id=42e01f"),
        Codec(104, "H264", 90000, fmtp="profile-level-id=42C01F;packetization-mode=1"),
        Codec(105, "rtx", 90000, fmtp="apt=104"),
    ]
    video.formats = [str(c.payload_type) for c in video.codecs]
    ans = answer(offer, local())
    assert ans.media[1].formats == ["104", "105"]
    # Only packetization-mode=0 H.264: the video section is rejected.
    video.codecs = video.codecs[2:3]
    video.formats = ["102"]
    ans = answer(offer, local())
    assert ans.media[1].port == 0 and ans.bundle is not None and ans.bundle.mids == ["0"]


def test_answer_extension_direction_and_preferences() -> None:
    offer = SessionDescription.parse(sample("chromium_audio_video.sdp"))
    offer.media[0].extmaps[0] = Extmap(1, AUDIO_LEVEL, Direction.SENDONLY)
    ans = answer(offer, local(header_extensions=(AUDIO_LEVEL, MID)))
    assert ans.media[0].extmaps == [Extmap(1, AUDIO_LEVEL, Direction.RECVONLY), Extmap(4, MID)]
    assert [e.uri for e in ans.media[1].extmaps] == [MID]
    ans = answer(offer, local(video_codecs=("H264", "VP8"), rtcp_feedback=(("nack", None),)))
    assert ans.media[1].formats == ["106", "107", "96", "97"]
    assert ans.media[1].codecs[0].feedback == [RtcpFeedback("nack")]
    assert ans.media[0].codecs[0].feedback == []


def test_answer_adds_useinbandfec_when_missing() -> None:
    offer = SessionDescription.parse(sample("chromium_audio_video.sdp"))
    opus = offer.media[0].codec(111)
    assert opus is not None
    opus.fmtp = "minptime=10"
    assert answer(offer, local()).media[0].codecs[1].fmtp == "minptime=10;useinbandfec=1"
    opus.fmtp = None
    assert answer(offer, local()).media[0].codecs[1].fmtp == "useinbandfec=1"


def test_answer_keeps_red_first_unless_turned_off() -> None:
    offer = SessionDescription.parse(sample("chromium_audio_video.sdp"))
    audio = answer(offer, local()).media[0]
    red, opus = audio.codecs
    assert opus.is_named("opus")
    assert (red.name, red.clock_rate, red.channels, red.fmtp) == ("red", 48000, 2, "111/111")
    assert red.feedback == []
    # DTX and in-band FEC stay as the publisher asked (RFC 7587 section 6.1).
    opus_offered = offer.media[0].codec(111)
    assert opus_offered is not None
    opus_offered.fmtp = "minptime=10;useinbandfec=1;usedtx=1"
    assert answer(offer, local()).media[0].codecs[1].parameters == {
        "minptime": "10",
        "useinbandfec": "1",
        "usedtx": "1",
    }
    assert answer(offer, local(red=False)).media[0].formats == ["111"]


@pytest.mark.parametrize(
    ("rtpmap", "fmtp"),
    [
        ("red/48000/2", "109/109"),  # another codec's blocks
        ("red/48000/2", "111/0"),  # two codecs
        ("red/48000/2", None),  # unknown blocks
        ("red/8000/1", "111/111"),  # not Opus's clock
    ],
)
def test_answer_leaves_red_that_does_not_carry_opus(rtpmap: str, fmtp: str | None) -> None:
    offer = SessionDescription.parse(sample("chromium_audio_video.sdp"))
    red = offer.media[0].codec(63)
    assert red is not None
    _, clock, *channels = rtpmap.split("/")
    red.clock_rate, red.channels = int(clock), int(channels[0]) if channels else None
    red.fmtp = fmtp
    assert answer(offer, local()).media[0].formats == ["111"]


def test_answer_simulcast_when_enabled() -> None:
    offer = SessionDescription.parse(sample("chromium_simulcast_datachannel.sdp"))
    video = answer(offer, local(simulcast=True)).media[1]
    assert video.rids == ["q recv", "h recv", "f recv"]
    assert video.simulcast == "recv q;h;f"
    assert video.extmap_id("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id") == 10
    assert video.extmap_id("urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id") == 11


def test_host_candidate_priority() -> None:
    first, second = local().candidates()
    # RFC 8445 section 5.1.2.1: type preference 126, local preference 65535, component 1.
    assert first.priority == (126 << 24) + (65535 << 8) + 255
    assert second.priority < first.priority
    assert (second.address, second.port, second.type) == ("::1", 9, "host")


# --- offering to subscribers -----------------------------------------------------


def forwarded_from(ans: SessionDescription, stream_id: str, base_ssrc: int) -> list[ForwardedTrack]:
    """What the SFU would forward from a publisher whose offer it answered."""
    tracks = []
    for index, media in enumerate(ans.media):
        if media.port == 0:
            continue
        codec = next(c for c in media.codecs if not c.is_named("red"))
        red = next((c for c in media.codecs if c.is_named("red")), None)
        rtx = media.rtx_for(codec.payload_type)
        tracks.append(
            ForwardedTrack(
                kind=media.kind,
                mid=f"{stream_id}-{index}",
                stream_id=stream_id,
                track_id=f"{stream_id}-{media.kind}",
                ssrc=base_ssrc + index,
                codec=codec,
                rtx_ssrc=base_ssrc + 100 + index if rtx else None,
                rtx=rtx,
                extensions=list(media.extmaps),
                red=red,
            )
        )
    return tracks


def test_offer_for_subscriber_structure() -> None:
    ans = answer(SessionDescription.parse(sample("chromium_audio_video.sdp")), local())
    tracks = forwarded_from(ans, "alice", 1000)
    offer = offer_for_subscriber(tracks, local(session_version=3))
    assert SessionDescription.parse(str(offer)) == offer
    assert offer.ice_lite and offer.origin.session_version == "3"
    assert offer.bundle is not None and offer.bundle.mids == ["alice-0", "alice-1"]
    for track, media in zip(tracks, offer.media, strict=True):
        assert media.mid == track.mid and media.kind == track.kind
        assert media.direction is Direction.SENDONLY
        assert media.rtcp_mux and media.setup is Setup.ACTPASS
        assert media.ice_ufrag == "Wd5u" and media.fingerprints == [SERVER_FP]
        assert [c.type for c in media.candidates] == ["host", "host"]
        assert media.msids[0].stream_id == "alice" and media.msids[0].track_id == track.track_id
        assert media.codecs[0] == track.codec
        if track.red is not None:
            assert media.codecs[1] == track.red
            assert media.formats == [str(track.codec.payload_type), str(track.red.payload_type)]
        assert [e.id for e in media.extmaps] == [e.id for e in track.extensions]
        ssrcs = {s.ssrc for s in media.ssrcs}
        if track.rtx is not None:
            assert media.ssrc_groups[0].semantics == "FID"
            assert media.ssrc_groups[0].ssrcs == [track.ssrc, track.rtx_ssrc]
            assert media.codecs[1] == replace(track.rtx, feedback=[])
            assert ssrcs == {track.ssrc, track.rtx_ssrc}
        else:
            assert ssrcs == {track.ssrc}
        assert set(media.ssrc_values("cname").values()) == {"alice"}


def test_offer_for_subscriber_stopped_track_and_errors() -> None:
    ans = answer(SessionDescription.parse(sample("chromium_audio_video.sdp")), local())
    tracks = forwarded_from(ans, "alice", 1000)
    tracks[0] = replace(tracks[0], stopped=True)
    offer = offer_for_subscriber(tracks, local())
    assert offer.media[0].port == 0 and offer.media[0].direction is Direction.INACTIVE
    assert offer.media[0].ssrcs == [] and offer.media[0].ice_ufrag is None
    assert offer.bundle is not None and offer.bundle.mids == ["alice-1"]

    with pytest.raises(SdpNegotiationError):
        offer_for_subscriber([], local())
    with pytest.raises(SdpNegotiationError, match="stopped"):
        offer_for_subscriber([replace(t, stopped=True) for t in tracks], local())
    with pytest.raises(SdpNegotiationError, match="mid"):
        offer_for_subscriber([tracks[1], tracks[1]], local())
    with pytest.raises(SdpNegotiationError, match="token"):
        offer_for_subscriber([replace(tracks[1], mid="a b")], local())
    with pytest.raises(SdpNegotiationError, match="forward"):
        offer_for_subscriber([replace(tracks[1], kind="application")], local())
    video = tracks[1]
    with pytest.raises(SdpNegotiationError, match="RTX"):
        offer_for_subscriber([replace(video, rtx=None)], local())
    assert video.rtx is not None
    with pytest.raises(SdpNegotiationError, match="repair"):
        offer_for_subscriber([replace(video, rtx=replace(video.rtx, fmtp="apt=1"))], local())
    # RFC 8843 section 9.1: one payload type, one meaning across the bundle.
    h264 = replace(video.codec, name="H264", fmtp="packetization-mode=1")
    clash = replace(video, mid="other", codec=h264, rtx=None, rtx_ssrc=None)
    with pytest.raises(SdpNegotiationError, match="payload type"):
        offer_for_subscriber([video, clash], local())
    ext_clash = replace(video, mid="other", extensions=[Extmap(2, AUDIO_LEVEL)])
    with pytest.raises(SdpNegotiationError, match="extension id"):
        offer_for_subscriber([video, ext_clash], local())
    audio = tracks[0]
    assert audio.red is not None
    with pytest.raises(SdpNegotiationError, match="RED"):
        offer_for_subscriber([replace(audio, red=replace(audio.red, fmtp="109/109"))], local())
    red_clash = replace(video, mid="other", codec=replace(video.codec, payload_type=63))
    with pytest.raises(SdpNegotiationError, match="payload type"):
        offer_for_subscriber([replace(audio, stopped=False), red_clash], local())


# --- aiortc as an independent peer -------------------------------------------------


def aiortc_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def aiortc_answer(
    offer: SessionDescription, kinds: list[str] | None = None
) -> SessionDescription:
    """aiortc's answer to our ``offer``; the kinds of the tracks it saw go to ``kinds``."""
    pc = aiortc_pc()
    if kinds is not None:
        pc.on("track", lambda track: kinds.append(track.kind))
    try:
        await pc.setRemoteDescription(RTCSessionDescription(str(offer), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return SessionDescription.parse(pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_aiortc_accepts_our_answer() -> None:
    pc = aiortc_pc()
    try:
        pc.addTransceiver("audio")
        pc.addTransceiver("video")
        await pc.setLocalDescription(await pc.createOffer())
        offer = SessionDescription.parse(pc.localDescription.sdp)
        params = local(addresses=[("127.0.0.1", 9)])
        ans = answer(offer, params)
        check_answer(offer, ans, params)
        await pc.setRemoteDescription(RTCSessionDescription(str(ans), "answer"))
        assert pc.signalingState == "stable"
        audio, video = pc.getTransceivers()
        assert (audio.currentDirection, video.currentDirection) == ("sendonly", "sendonly")
        assert [c.mimeType for c in audio._codecs] == ["audio/opus"]
        assert [c.mimeType for c in video._codecs] == [
            "video/VP8",
            "video/rtx",
            "video/H264",
            "video/rtx",
        ]
        assert video._codecs[2].parameters["profile-level-id"] == "42e01f"
        # aiortc keeps its own payload types: the ones it offered.
        assert [c.payloadType for c in video._codecs] == [int(f) for f in ans.media[1].formats]
    finally:
        await pc.close()


async def test_aiortc_answers_our_subscriber_offer() -> None:
    publisher_answer = answer(SessionDescription.parse(sample("firefox_audio_video.sdp")), local())
    tracks = forwarded_from(publisher_answer, "bob", 5000)
    second = answer(SessionDescription.parse(sample("chromium_audio_video.sdp")), local())
    carol = next(t for t in forwarded_from(second, "carol", 7000) if t.kind == "video")
    # Chromium numbers its extensions differently from Firefox: one bundle
    # needs one numbering, so the forwarder maps carol's ids to bob's.
    ids = {e.uri: e.id for t in tracks for e in t.extensions}
    carol.extensions = [Extmap(ids[e.uri], e.uri) for e in carol.extensions if e.uri in ids]
    with pytest.raises(SdpNegotiationError, match="extension id"):
        offer_for_subscriber([*tracks, forwarded_from(second, "carol", 7000)[1]], local())
    tracks.append(carol)
    offer = offer_for_subscriber(tracks, local(addresses=[("127.0.0.1", 9)]))
    kinds: list[str] = []
    theirs = await aiortc_answer(offer, kinds)
    assert kinds == ["audio", "video", "video"]
    assert theirs.bundle is not None and theirs.bundle.mids == [t.mid for t in tracks]
    assert theirs.transport().setup in (Setup.ACTIVE, Setup.PASSIVE)
    assert theirs.transport().ice_ufrag and theirs.transport().fingerprints
    for track, media in zip(tracks, theirs.media, strict=True):
        assert media.mid == track.mid
        assert media.direction is Direction.RECVONLY
        assert media.rtcp_mux
        # The answerer keeps the offered payload types (RFC 3264 section 6.1).
        assert media.codecs[0].payload_type == track.codec.payload_type
        assert media.codecs[0].name == track.codec.name


async def test_aiortc_answers_red_with_plain_opus() -> None:
    """aiortc has no RED: its answer keeps Opus only, so the SFU strips RED for it."""
    published = answer(SessionDescription.parse(sample("chromium_audio_video.sdp")), local())
    audio = forwarded_from(published, "dana", 9000)[0]
    assert audio.red is not None
    offer = offer_for_subscriber([audio], local(addresses=[("127.0.0.1", 9)]))
    theirs = await aiortc_answer(offer)
    assert [c.name for c in theirs.media[0].codecs] == ["opus"]
