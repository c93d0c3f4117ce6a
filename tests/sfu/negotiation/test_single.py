"""A single connection's offers, as the worker's negotiator answers them:
which receiving section carries which track, in the client's payload types,
and what happens to a section whose track went (docs/protocol.md, "Media:
one peer connection"). Real browsers and aiortc over the same code:
tests/signalling/test_client_*.py, test_browser_restart.py."""

from __future__ import annotations

import pytest

from rtc.dtls import DtlsCertificate
from rtc.ice import random_credentials
from rtc.sdp.attributes import Direction
from rtc.sdp.session import SessionDescription
from sfu.errors import SfuStateError
from sfu.rooms.inputs import LeaveRoom, PublishOffer, SetSubscriptions
from tests.sfu.negotiation.test_negotiation import NOW, negotiator, offer, states

# Bob sends a microphone (Opus as 109) and has room for an audio track and
# a video one; the video section is bundle-only (port 0), as Firefox offers
# every section but the first.
BOB = """v=0
o=- 7 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1 2
m=audio 9 UDP/TLS/RTP/SAVPF 109
c=IN IP4 0.0.0.0
a=ice-ufrag:{ufrag}
a=ice-pwd:{pwd}
a=fingerprint:sha-256 {fingerprint}
a=setup:actpass
a=mid:0
a=sendonly
a=msid:b b-audio
a=rtcp-mux
a=rtpmap:109 opus/48000/2
a=ssrc:5678 cname:b
m=audio 9 UDP/TLS/RTP/SAVPF 109
c=IN IP4 0.0.0.0
a=mid:1
a=extmap:3 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=recvonly
a=rtcp-mux
a=rtpmap:109 opus/48000/2
m=video 0 UDP/TLS/RTP/SAVPF 120 124
c=IN IP4 0.0.0.0
a=bundle-only
a=mid:2
a=recvonly
a=rtcp-mux
a=rtpmap:120 VP8/90000
a=rtpmap:124 rtx/90000
a=fmtp:124 apt=120
a=rtcp-fb:120 nack
a=rtcp-fb:120 nack pli
"""


def bob_offer(certificate: DtlsCertificate, ufrag: str, pwd: str) -> str:
    return BOB.format(ufrag=ufrag, pwd=pwd, fingerprint=certificate.fingerprint("sha-256")).replace(
        "\n", "\r\n"
    )


def test_a_receiving_section_carries_a_track_in_the_clients_payload_type(
    certificate: DtlsCertificate,
) -> None:
    core = negotiator(certificate)
    (alice_audio,) = core.receive(PublishOffer("room", "alice", offer(certificate), {}), NOW).added
    ufrag, pwd = random_credentials()
    result = core.receive(
        PublishOffer(
            "room", "bob", bob_offer(certificate, ufrag, pwd), {}, (alice_audio.track_id,)
        ),
        NOW,
    )
    # Bob's microphone is published as on a publish connection.
    assert [t.kind for t in result.added] == ["audio"]
    assert result.receiving == {"1": alice_audio.track_id}
    assert result.free == {"video": 1}  # the bundle-only section is room, not refused
    answer = SessionDescription.parse(result.answer)
    sent = answer.media_by_mid("1")
    assert sent is not None and sent.direction is Direction.SENDONLY
    assert [c.payload_type for c in sent.codecs] == [109]  # Bob's, not Alice's 111
    assert [m.track_id for m in sent.msids] == [alice_audio.track_id]
    ssrcs = {s.ssrc for s in sent.ssrcs}
    assert ssrcs and not ssrcs & {1234, 5678}  # neither Alice's nor Bob's own
    assert [e.id for e in sent.extmaps] == [3]  # the offer's id for the audio level
    empty = answer.media_by_mid("2")
    assert empty is not None and empty.direction is Direction.INACTIVE and empty.port != 0
    # One transport, both legs.
    room = core.tables.rooms["room"]
    bob = room.participants["bob"]
    assert bob.publish is bob.subscribe and bob.publish is not None
    assert bob.publish.direction == "single"
    assert [p.direction for p in bob.legs] == ["single"]
    # Subscriptions come with its offers, never from a subscribe offer.
    with pytest.raises(SfuStateError, match="single connection"):
        core.receive(SetSubscriptions("room", "bob", [alice_audio.track_id]), NOW)


def test_a_section_whose_track_went_never_carries_another(certificate: DtlsCertificate) -> None:
    core = negotiator(certificate)
    (first,) = core.receive(PublishOffer("room", "alice", offer(certificate), {}), NOW).added
    ufrag, pwd = random_credentials()
    sdp = bob_offer(certificate, ufrag, pwd)
    core.receive(PublishOffer("room", "bob", sdp, {}, (first.track_id,)), NOW)
    # Alice's microphone comes back on another SSRC (a new track): Bob
    # should receive the new one, but its section stays empty, and the old
    # one's stays spent, answered inactive.
    again = offer(certificate).replace("1234", "4321")
    (second,) = core.receive(PublishOffer("room", "alice", again, {}), NOW + 1).added
    assert second.track_id != first.track_id
    result = core.receive(PublishOffer("room", "bob", sdp, {}, (second.track_id,)), NOW + 2)
    assert result.receiving == {}
    assert result.free == {"video": 1}  # the spent audio section is not room any more
    answer = SessionDescription.parse(result.answer)
    spent = answer.media_by_mid("1")
    assert spent is not None and spent.direction is Direction.INACTIVE and not spent.msids


def test_leaving_closes_the_one_transport_once(certificate: DtlsCertificate) -> None:
    core = negotiator(certificate)
    (track,) = core.receive(PublishOffer("room", "alice", offer(certificate), {}), NOW).added
    ufrag, pwd = random_credentials()
    core.receive(
        PublishOffer("room", "bob", bob_offer(certificate, ufrag, pwd), {}, (track.track_id,)),
        NOW,
    )
    core.take_actions()
    core.transports.take_actions()
    core.transports.receive(LeaveRoom("room", "bob"), NOW + 1)
    assert states(core.transports.take_actions()) == [("bob", "single", "closed")]
    assert [p.participant for p in core.tables.peers] == ["alice"]
