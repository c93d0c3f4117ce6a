"""The worker's negotiator and its transports core: no socket, no event loop, a made-up clock.

Each input goes in through its core's one verb, ``receive``
(:mod:`sfu.rooms.inputs`); what each core wants done comes back from it as
:mod:`sfu.rooms.actions` for the test to read, as the worker would take and
carry them out.
"""

from __future__ import annotations

import pytest

from rtc.dtls import DtlsCertificate
from rtc.errors import SdpNegotiationError
from rtc.ice import random_credentials
from rtc.sdp.attributes import Direction
from rtc.sdp.session import SessionDescription
from sfu.control.messages import TransportState
from sfu.errors import SfuStateError
from sfu.feedback.bandwidth import BandwidthFeedback
from sfu.feedback.reports import ReportScheduler
from sfu.layers.choice import Layers
from sfu.negotiation.negotiator import Negotiator
from sfu.negotiation.transports import Transports
from sfu.rooms.actions import Action, Emit, FlushRtcp, Rearm, SendDatagram
from sfu.rooms.inputs import LeaveRoom, PublishOffer, SetSubscriptions
from sfu.rooms.records import WorkerTables
from sfu.rooms.settings import WorkerSettings

NOW = 1000.0

OFFER = """v=0
o=- 1 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
m=audio 9 UDP/TLS/RTP/SAVPF 111
c=IN IP4 0.0.0.0
a=ice-ufrag:{ufrag}
a=ice-pwd:{pwd}
a=fingerprint:sha-256 {fingerprint}
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=sendonly
a=msid:a a-audio
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=ssrc:1234 cname:a
"""


def negotiator(
    certificate: DtlsCertificate,
    address: tuple[str, int] = ("127.0.0.1", 40000),
    worker_id: str = "worker-test",
) -> Negotiator:
    """A negotiator over a transports core on tables of its own, its one host
    candidate at ``address``."""
    settings = WorkerSettings(
        worker_id=worker_id,
        certificate=certificate,
        feedback_ssrc=1,
        consent_timeout=30.0,
        connect_timeout=10.0,
    )
    tables = WorkerTables(
        ReportScheduler(ssrc=1, cname="wadud", wall_offset=0.0), BandwidthFeedback()
    )
    transports = Transports(settings, tables, Layers(tables), lambda: [address])
    return Negotiator(settings, transports)


def offer(certificate: DtlsCertificate) -> str:
    ufrag, pwd = random_credentials()
    return OFFER.format(
        ufrag=ufrag, pwd=pwd, fingerprint=certificate.fingerprint("sha-256")
    ).replace("\n", "\r\n")


def states(actions: list[Action]) -> list[tuple[str, str, str]]:
    return [
        (a.event.participant, a.event.direction, a.event.state)
        for a in actions
        if isinstance(a, Emit) and isinstance(a.event, TransportState)
    ]


def test_a_publish_is_answered_and_queues_its_rtcp_flush_and_timer(
    certificate: DtlsCertificate,
) -> None:
    core = negotiator(certificate)
    result = core.receive(PublishOffer("room", "alice", offer(certificate), {}), NOW)
    (track,) = result.added
    assert track.kind == "audio" and track.participant == "alice"
    (peer,) = core.tables.peers
    answer = SessionDescription.parse(result.answer)
    assert answer.transport().ice_ufrag == peer.transport.local_ufrag
    assert answer.media[0].direction is Direction.RECVONLY
    assert core.tables.by_ufrag[peer.transport.local_ufrag] is peer
    assert core.tables.rooms["room"].tracks[track.track_id].ssrc == 1234
    # Nothing goes out before the client's ICE checks; the worker is asked
    # to flush the room's RTCP and re-arm its timer.
    assert core.take_actions() == [FlushRtcp(core.tables.rooms["room"]), Rearm()]
    assert core.take_actions() == []


def test_leaving_closes_the_transports_and_forgets_the_room(
    certificate: DtlsCertificate,
) -> None:
    core = negotiator(certificate)
    track = core.receive(PublishOffer("room", "alice", offer(certificate), {}), NOW).added[0]
    sdp = core.receive(SetSubscriptions("room", "bob", [track.track_id]), NOW)
    assert sdp is not None and "a=sendonly" in sdp
    core.take_actions()
    transports = core.transports
    transports.receive(LeaveRoom("room", "alice"), NOW + 1)
    actions = transports.take_actions()
    assert states(actions) == [("alice", "publish", "closed")]
    assert not any(isinstance(a, SendDatagram) for a in actions)  # never connected: no close_notify
    assert actions[-1] == Rearm()
    assert track.track_id not in core.tables.rooms["room"].tracks
    transports.receive(LeaveRoom("room", "bob"), NOW + 2)
    assert states(transports.take_actions()) == [("bob", "subscribe", "closed")]
    assert core.tables.rooms == {} and core.tables.peers == set()
    assert core.tables.by_ufrag == {}
    assert core.tables.totals["received"] == 0


def test_what_the_transports_core_queues_is_its_own_to_take(
    certificate: DtlsCertificate,
) -> None:
    """The negotiator closes a transport through the transports core: the
    event that says so stays in that core's queue, for the worker to take
    (sfu.rooms.actions), and the negotiator's holds only its own."""
    core = negotiator(certificate)
    track = core.receive(PublishOffer("room", "alice", offer(certificate), {}), NOW).added[0]
    core.receive(SetSubscriptions("room", "bob", [track.track_id]), NOW)
    core.take_actions()
    core.transports.take_actions()
    sdp = core.receive(SetSubscriptions("room", "bob", [track.track_id], "transport"), NOW + 1)
    assert sdp is not None
    room = core.tables.rooms["room"]
    assert core.take_actions() == [FlushRtcp(room), Rearm()]
    assert states(core.transports.take_actions()) == [("bob", "subscribe", "closed")]
    assert core.transports.layers.take_actions() == []


def test_a_refused_verb_still_leaves_its_actions_to_take(certificate: DtlsCertificate) -> None:
    core = negotiator(certificate)
    with pytest.raises(SfuStateError):
        core.receive(SetSubscriptions("room", "bob", ["t-missing"]), NOW)
    # The room made for the call is forgotten again, and the worker is
    # still asked to re-arm (as it takes actions in a finally).
    assert core.tables.rooms == {}
    assert core.take_actions()[-1] == Rearm()


def test_an_ssrc_another_publisher_sends_on_is_refused(certificate: DtlsCertificate) -> None:
    """RFC 3550 8.2: two sources of a room on one SSRC would be one stream to
    every subscriber; a publisher's own tracks, offered again, do not collide."""
    core = negotiator(certificate)
    core.receive(PublishOffer("room", "alice", offer(certificate), {}), NOW)
    room = core.tables.rooms["room"]
    (alice,) = core.tables.peers
    assert room.ssrcs_in_use() == {1234}
    assert room.ssrcs_in_use(but=alice) == set()
    core.receive(PublishOffer("room", "alice", offer(certificate), {}), NOW)  # a renegotiation
    with pytest.raises(SdpNegotiationError, match="SSRC 1234"):
        core.receive(PublishOffer("room", "bob", offer(certificate), {}), NOW)
    assert [t.info.participant for t in room.tracks.values()] == ["alice"]


def test_a_transport_that_never_connects_fails_on_the_transports_timer(
    certificate: DtlsCertificate,
) -> None:
    """The transports' timers are their core's pair, due() and handle_timer()."""
    core = negotiator(certificate)
    core.receive(PublishOffer("room", "alice", offer(certificate), {}), NOW)
    core.take_actions()
    transports = core.transports
    due = transports.due()
    assert due is not None and NOW < due <= NOW + 10.0
    transports.handle_timer(due - 0.001)
    assert transports.take_actions() == []
    transports.handle_timer(NOW + 10.0)
    assert states(transports.take_actions()) == [("alice", "publish", "failed")]
    assert core.tables.peers == set() and transports.due() is None
