"""Opus RED (RFC 2198) through the forwarder: as it is, or cut to its primary block.

Subscribers whose leg negotiated RED get the publisher's RED packets; the
others (aiortc, older Safari) get plain Opus: the RTP header and its
extensions, the primary block, its payload type. Both the Python loop and
the native leaf (sfu/forward/_fanout.c) must send the very same bytes.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.targets.fanout import drain
from rtc import red
from rtc.red import RedBlock, RedPayload
from rtc.rtp.extensions import build_extensions
from rtc.rtp.packet import RtpPacket
from rtc.rtp.view import RtpView
from rtc.sdp.attributes import ABS_SEND_TIME, AUDIO_LEVEL, TRANSPORT_CC
from rtc.sdp.session import SessionDescription
from sfu.feedback.estimator import SendSideEstimator
from sfu.forward import native
from sfu.forward.forwarder import Forwarder
from sfu.node.worker import MediaWorker
from tests.sfu.conftest import take_events
from tests.sfu.forward.test_native import (
    native_leaf,
    needs_native,
    route_native,
    twin_records,
)

SSRC = 0x3333
OPUS = 111
RED = 63
EXTS = {AUDIO_LEVEL: 1, ABS_SEND_TIME: 2, TRANSPORT_CC: 3}


def red_packet(
    seq: int,
    *,
    primary: bytes = b"primary-opus",
    redundant: tuple[bytes, ...] = (b"older",),
    padding: int = 0,
    pt: int = RED,
) -> bytes:
    payload = RedPayload(
        OPUS,
        primary,
        [RedBlock(OPUS, 960 * (len(redundant) - i), r) for i, r in enumerate(redundant)],
    )
    profile, body = build_extensions([(1, b"\x85"), (2, b"\x01\x02\x03"), (3, b"\x00\x07")])
    return bytes(
        RtpPacket(
            payload_type=pt,
            sequence_number=seq & 0xFFFF,
            timestamp=(960 * seq) & 0xFFFFFFFF,
            ssrc=SSRC,
            marker=seq == 0,
            extension_profile=profile,
            extension_body=body,
            payload=bytes(payload) if pt == RED else primary,
            padding=bytes([0] * (padding - 1) + [padding]) if padding else b"",
        )
    )


def forwarder(subscribers: list[Any], now: float = 0.0) -> Forwarder:
    """Subscriber 0 negotiated RED (other Opus and RED payload types, other ids),
    1 did not (aiortc), 2 did not either and has no transport-cc, 3 gets the
    publisher's own numbering (a relay link: no map)."""
    f = Forwarder()
    f.add_track(
        "pub", SSRC, kind="audio", codec="opus", clock_rate=48000, extensions=EXTS,
        red_payload_type=RED,
    )  # fmt: skip
    f.subscribe(
        subscribers[0], SSRC, now, ssrc=0xA0, payload_types={OPUS: OPUS, RED: 100},
        extensions={TRANSPORT_CC: 5, ABS_SEND_TIME: 6, AUDIO_LEVEL: 1},
    )  # fmt: skip
    f.set_send_rings(subscribers[0], [0.0] * 65536, [0] * 65536)
    f.subscribe(subscribers[1], SSRC, now, ssrc=0xB0, payload_types={OPUS: 109}, extensions=EXTS)
    f.set_send_rings(subscribers[1], [0.0] * 65536, [0] * 65536)
    f.subscribe(
        subscribers[2], SSRC, now, ssrc=0xC0, payload_types={OPUS: 96},
        extensions={AUDIO_LEVEL: 4},
    )  # fmt: skip
    if len(subscribers) > 3:
        f.subscribe(subscribers[3], SSRC, now, ssrc=0xD0)
    return f


def test_red_as_it_is_or_its_primary_block() -> None:
    f = forwarder(["red", "plain", "plain-no-tcc", "relay"])
    packet = red_packet(7, padding=4)
    out = dict(f.route(packet, 1.0))
    red = RtpPacket.parse(out["red"])
    assert red.payload_type == 100
    assert red.payload == RtpPacket.parse(packet).payload
    assert red.padding == RtpPacket.parse(packet).padding
    relay = RtpPacket.parse(out["relay"])
    assert (relay.payload_type, relay.payload) == (RED, RtpPacket.parse(packet).payload)
    for key, pt, ssrc in (("plain", 109, 0xB0), ("plain-no-tcc", 96, 0xC0)):
        plain = RtpPacket.parse(out[key])
        assert plain.payload_type == pt
        assert plain.payload == b"primary-opus"
        assert plain.padding == b""
        assert plain.ssrc == ssrc
        assert plain.timestamp == 960 * 7
    # The header extensions stay, each in the subscriber's numbering.
    plain = RtpPacket.parse(out["plain"])
    assert dict(plain.extensions)[1] == b"\x85"
    assert dict(plain.extensions)[3] == b"\x00\x00"  # its own transport-wide counter
    assert dict(RtpPacket.parse(out["plain-no-tcc"]).extensions) == {4: b"\x85"}
    assert f.stats.red_stripped == 2
    assert f.stats.forwarded == 4
    subs = {s.key: s for s in f.track(SSRC).subscriptions}
    assert subs["plain"].octets_sent == len(b"primary-opus")
    assert subs["red"].octets_sent == len(RtpPacket.parse(packet).payload)
    assert subs["plain"].transport.sizes[0] == len(out["plain"])  # type: ignore[index]
    assert subs["red"].transport.sizes[0] == len(out["red"])  # type: ignore[index]


def test_red_subscribers_get_the_frame_before_too() -> None:
    """Chromium sends one redundant frame; RED subscribers get two, the second
    from the packet before, so two losses in a row on their downlink cost nothing."""
    f = forwarder(["red", "plain", "plain-no-tcc"])
    frames = [f"frame-{i}".encode() for i in range(4)]
    out = []
    for seq, frame in enumerate(frames):
        packet = red_packet(seq, primary=frame, redundant=(frames[seq - 1],) if seq else ())
        out.append(dict(f.route(packet, 1.0 + seq / 50)))
    red = [RedPayload.parse(RtpPacket.parse(o["red"]).payload) for o in out]
    assert [r.data for r in red] == frames
    assert red[0].redundant == []
    assert red[1].redundant == [RedBlock(OPUS, 960, b"frame-0")]
    assert red[3].redundant == [RedBlock(OPUS, 1920, b"frame-1"), RedBlock(OPUS, 960, b"frame-2")]
    # The others still get each frame once.
    assert [RtpPacket.parse(o["plain"]).payload for o in out] == frames
    assert Forwarder(red_depth=1).red_depth == 1


def test_red_held_back_from_a_subscriber_that_negotiated_it() -> None:
    """On a path whose loss follows the rate the worker sends a RED
    subscriber plain Opus (sfu.layers.choice), and RED again once the loss is
    random: from the next packet, the sequence unbroken."""
    f = forwarder(["red", "plain", "plain-no-tcc"])
    first = RtpPacket.parse(dict(f.route(red_packet(1), 1.0))["red"])
    f.set_red("red", SSRC, None)
    plain = RtpPacket.parse(dict(f.route(red_packet(2), 1.02))["red"])
    assert (plain.payload_type, plain.payload) == (OPUS, b"primary-opus")
    assert plain.sequence_number == (first.sequence_number + 1) & 0xFFFF
    assert f.stats.red_stripped == 2 + 3
    f.set_red("red", SSRC, 100)
    again = RtpPacket.parse(dict(f.route(red_packet(3), 1.04))["red"])
    assert again.payload_type == 100
    assert RedPayload.parse(again.payload).data == b"primary-opus"
    assert again.sequence_number == (first.sequence_number + 2) & 0xFFFF


def test_plain_opus_from_a_red_publisher_goes_to_everyone() -> None:
    f = forwarder(["red", "plain", "plain-no-tcc"])
    out = dict(f.route(red_packet(1, pt=OPUS), 1.0))
    assert RtpPacket.parse(out["red"]).payload_type == OPUS
    assert RtpPacket.parse(out["plain"]).payload_type == 109
    assert f.stats.red_stripped == 0


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xef\x0f", b"\xef\x0f\x00\x03\x6fab", b"\x6f", b"\xef\x0f\x00\x03"],
)
def test_malformed_red_is_counted_and_dropped(payload: bytes) -> None:
    f = forwarder(["red", "plain", "plain-no-tcc"])
    packet = bytes(RtpPacket(payload_type=RED, sequence_number=5, ssrc=SSRC, payload=payload))
    assert f.route(packet, 1.0) == []
    assert f.stats.red_malformed == 1
    assert f.stats.received == 0
    # And the stream goes on.
    assert len(f.route(red_packet(6), 1.02)) == 3


def test_retransmissions_follow_the_same_rule() -> None:
    # What the publisher sent, as the history keeps it (no deeper redundancy).
    f = Forwarder(red_depth=1)
    f.add_track(
        "pub", SSRC, kind="audio", codec="opus", clock_rate=48000, extensions=EXTS,
        red_payload_type=RED, nack=True,
    )  # fmt: skip
    f.subscribe("red", SSRC, 0.0, ssrc=0xA0, payload_types={OPUS: OPUS, RED: RED})
    f.subscribe("plain", SSRC, 0.0, ssrc=0xB0, payload_types={OPUS: OPUS})
    f.subscribe(
        "plain-rtx", SSRC, 0.0, ssrc=0xC0, payload_types={OPUS: OPUS},
        rtx_ssrc=0xC1, rtx_payload_types={OPUS: 112},
    )  # fmt: skip
    first: dict[Any, list[bytes]] = {}
    for seq in range(3):
        for key, copy in f.route(red_packet(seq, padding=2 * (seq == 1)), 1.0 + seq / 50):
            first.setdefault(key, []).append(copy)
    f.stats.red_stripped = 0
    for key in ("red", "plain"):
        ssrc = RtpPacket.parse(first[key][1]).ssrc
        sent = RtpPacket.parse(first[key][1])
        (again,) = f.handle_nack(key, ssrc, [sent.sequence_number], 2.0)
        resent = RtpPacket.parse(again[1])
        # The same packet, but for its own transport-wide sequence number.
        assert resent.extension_body != sent.extension_body
        resent.extension_body = sent.extension_body
        assert resent == sent
    rtx_seq = RtpPacket.parse(first["plain-rtx"][1]).sequence_number
    (wrapped,) = f.handle_nack("plain-rtx", 0xC0, [rtx_seq], 2.0)
    rtx = RtpPacket.parse(wrapped[1])
    assert (rtx.payload_type, rtx.ssrc) == (112, 0xC1)
    assert rtx.payload == struct.pack("!H", rtx_seq) + b"primary-opus"
    assert f.stats.red_stripped == 2


# -- the native leaf sends what the Python loop does -----------------------------------

steps = st.lists(
    st.tuples(
        st.integers(-2, 4),  # sequence step
        st.sampled_from(["red", "red2", "opus", "bad", "pad"]),
        st.binary(min_size=1, max_size=60),  # primary
        st.sampled_from([None, "pause", "resume"]),
    ),
    min_size=1,
    max_size=30,
)


def _packet(seq: int, kind: str, primary: bytes) -> bytes:
    if kind == "bad":
        return bytes(RtpPacket(payload_type=RED, sequence_number=seq, ssrc=SSRC, payload=b"\xef"))
    return red_packet(
        seq,
        primary=primary,
        redundant=(b"r1", b"r22") if kind == "red2" else (b"r1",),
        padding=3 if kind == "pad" else 0,
        pt=OPUS if kind == "opus" else RED,
    )


@settings(max_examples=40, deadline=None)
@given(steps=steps)
@needs_native
def test_native_and_python_send_the_same_red_and_plain_copies(
    steps: list[tuple[int, str, bytes, str | None]],
) -> None:
    with native_leaf(count=4) as (fan, receivers):
        _compare(fan, receivers, steps)


def _compare(
    fan: native.Fanout,
    receivers: list[socket.socket],
    steps: list[tuple[int, str, bytes, str | None]],
) -> None:
    ours, theirs = twin_records(receivers)
    now = 10.0
    fast = forwarder(ours, now)
    fast.red_leaf = native.RED
    slow = forwarder(theirs, now)
    expected: list[list[bytes]] = [[] for _ in receivers]
    seq = 65533
    for dseq, kind, primary, event in steps:
        now += 0.02
        if event is not None:
            fast.set_paused(ours[1], SSRC, event == "pause", now)
            slow.set_paused(theirs[1], SSRC, event == "pause", now)
        seq = (seq + dseq) & 0xFFFF
        packet = _packet(seq, kind, primary)
        out: list[tuple[Any, bytes]] = []
        route_native(fast, fan, packet, now, out)
        fan.send(out)
        for key, copy in slow.route(packet, now):
            record = theirs[theirs.index(key)]  # type: ignore[arg-type]
            expected[theirs.index(record)].append(record.protect(copy))
        assert fast.stats.as_dict() == slow.stats.as_dict()
    assert drain(receivers) == expected
    pairs = zip(fast.track(SSRC).subscriptions, slow.track(SSRC).subscriptions, strict=True)
    for mine, ref in pairs:
        assert (mine.packets_sent, mine.octets_sent) == (ref.packets_sent, ref.octets_sent)
        assert mine.transport.sizes == ref.transport.sizes
        assert mine.transport.twcc_seq == ref.transport.twcc_seq


# -- negotiation: the publish answer keeps RED, subscribe offers carry it ---------------

CHROMIUM_OFFER = (
    Path(__file__).parents[2] / "rtc" / "data" / "chromium_audio_video.sdp"
).read_text()


async def _subscribe_with(worker: MediaWorker, keep_red: bool) -> Any:
    """Chromium's recorded offer published by alice; bob subscribes to its audio
    and answers (aiortc's answer, with or without RED as a browser keeps it)."""
    published = await worker.publish("room", "alice", CHROMIUM_OFFER, {})
    (audio,) = [t for t in published.added if t.kind == "audio"]
    offer = await worker.subscribe("room", "bob", [audio.track_id])
    assert offer is not None
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        theirs = SessionDescription.parse(pc.localDescription.sdp)
    finally:
        await pc.close()
    media = theirs.media[0]
    offered_red = SessionDescription.parse(offer).media[0].codecs[1]
    if keep_red:
        media.codecs.append(offered_red)
        media.formats.append(str(offered_red.payload_type))
    await worker.answer("room", "bob", str(theirs))
    return published, SessionDescription.parse(offer)


async def test_publish_answer_keeps_red_and_subscribers_are_offered_it(
    worker: MediaWorker,
) -> None:
    published, offer = await _subscribe_with(worker, keep_red=True)
    audio = SessionDescription.parse(published.answer).media[0]
    assert audio.formats == ["63", "111"]
    opus, red = offer.media[0].codecs
    assert (opus.name, opus.payload_type) == ("opus", 111)
    assert opus.parameters["useinbandfec"] == "1"
    assert (red.name, red.payload_type, red.fmtp) == ("red", 63, "111/111")
    room = worker.tables.rooms["room"]
    track = next(iter(room.tracks.values()))
    assert room.forwarder.track(track.ssrc).red_pt == 63
    (section,) = room.participants["bob"].subscribe.sections  # type: ignore[union-attr]
    assert section.pt_map == {111: 111, 63: 63}


async def test_an_answer_without_red_gets_plain_opus(worker: MediaWorker) -> None:
    await _subscribe_with(worker, keep_red=False)
    room = worker.tables.rooms["room"]
    (section,) = room.participants["bob"].subscribe.sections  # type: ignore[union-attr]
    assert section.pt_map == {111: 111}


async def test_red_turned_off(loopback_aiortc: None) -> None:
    async with MediaWorker(host="127.0.0.1", port=0, red=False) as worker:
        published = await worker.publish("room", "alice", CHROMIUM_OFFER, {})
        assert SessionDescription.parse(published.answer).media[0].formats == ["111"]
        offer = await worker.subscribe("room", "bob", [published.added[0].track_id])
        assert offer is not None
        assert [c.name for c in SessionDescription.parse(offer).media[0].codecs] == ["opus"]
        room = worker.tables.rooms["room"]
        track = next(iter(room.tracks.values()))
        assert room.forwarder.track(track.ssrc).red_pt == -1


def test_relayed_tracks_carry_their_red() -> None:
    """A track crossing to another worker keeps its RED, so that worker can
    offer it and cut it for its own subscribers (sfu.node.links)."""
    from sfu.control.messages import RelayCodec, RelayedTrack, TrackInfo

    red = RelayCodec(63, "red", 48000, 2, "111/111")
    relayed = RelayedTrack(
        info=TrackInfo("t-1", "doctor", "audio", "microphone", "0"),
        ssrc=5,
        codec=RelayCodec(111, "opus", 48000, 2, "minptime=10;useinbandfec=1"),
        red=red,
    )
    assert RelayedTrack.from_dict(json.loads(json.dumps(relayed.to_dict()))) == relayed
    legacy = relayed.to_dict()
    del legacy["red"]
    assert RelayedTrack.from_dict(legacy).red is None


async def test_red_counters_are_in_the_metrics(worker: MediaWorker) -> None:
    from prometheus_client import REGISTRY, generate_latest

    await worker.publish("room", "alice", CHROMIUM_OFFER, {})
    text = generate_latest(REGISTRY).decode()
    assert 'sfu_rtp_total{event="red_stripped"}' in text
    assert 'sfu_rtp_total{event="red_malformed"}' in text


# -- the native twins of rtc.red.primary and rtc.red.deepen -------------------------------


@pytest.fixture(scope="module")
def leaf() -> Any:
    if native.RED is None:
        pytest.skip("native fan-out not built or off")
    return native.RED


@settings(max_examples=300)
@given(data=st.binary(max_size=40), cut=st.integers(0, 6))
def test_native_primary_is_rtc_reds(leaf: Any, data: bytes, cut: int) -> None:
    start = min(cut, len(data))
    assert leaf.red_primary(data, start, len(data)) == red.primary(data, start, len(data))


@settings(max_examples=200)
@given(
    frames=st.lists(st.binary(min_size=1, max_size=30), min_size=3, max_size=3),
    older=st.integers(0, 2),
    own=st.integers(0, 2),
    delta=st.sampled_from([1, 960, 0x3000, 0x3FFF, 0x4000]),
    depth=st.integers(0, 3),
    head=st.binary(min_size=12, max_size=16),
)
def test_native_deepen_is_rtc_reds(
    leaf: Any, frames: list[bytes], older: int, own: int, delta: int, depth: int, head: bytes
) -> None:
    first, second, third = frames
    previous = head + bytes(
        RedPayload(OPUS, second, [RedBlock(OPUS, 960 * (older - i), first) for i in range(older)])
    )
    packet = head + bytes(
        RedPayload(OPUS, third, [RedBlock(OPUS, 960 * (own - i), second) for i in range(own)])
    )
    args = (previous, len(head), len(previous), delta, packet, len(head), len(packet), depth)
    got = leaf.red_deepen(*args)
    if got is not NotImplemented:
        assert got == red.deepen(*args)
    if (older, own, depth) == (1, 1, 2):
        assert got is not NotImplemented
    with pytest.raises(ValueError, match="out of the packet"):
        leaf.red_primary(b"abc", 2, 9)


async def test_red_is_held_back_where_loss_follows_the_rate(worker: MediaWorker) -> None:
    """A subscriber that negotiated RED gets plain Opus while its estimator
    says the path's loss follows the rate (a policer: redundancy would only
    take the video's room), and RED again once the loss is random."""
    await _subscribe_with(worker, keep_red=True)
    room: Any = worker.tables.rooms["room"]
    peer = room.participants["bob"].subscribe
    (section,) = peer.sections
    now = worker._now()
    if not section.subscribed:  # the transport connects (no ICE here)
        peer.pending_offer = False
        peer.reporting = True
        worker.tables.reports.add_leg(peer, now)
        worker.transports.apply_subscriptions(peer, now)
        take_events(worker.transports)
        take_events(worker.layers)
    state = worker.layers.subscribers.of(peer)
    state.estimator = estimator = SendSideEstimator()  # aiortc's answer has no transport-cc
    sub = room.forwarder.subscription(peer, section.forwarded.ssrc)

    def ticks(n: int) -> None:  # each decides for the next
        nonlocal now
        for _ in range(n):
            now += 0.5
            worker.layers.allocate(room, "bob", now)
            take_events(worker.layers)

    ticks(2)
    assert sub.pt_map == {111: 111, 63: 63}
    estimator.loss_follows_rate = True
    ticks(2)
    assert sub.pt_map == {111: 111}
    assert section.pt_map == {111: 111, 63: 63}  # what was negotiated stays
    # Random loss: RED again.
    estimator.loss_follows_rate = False
    estimator.loss = 0.2
    ticks(2)
    assert sub.pt_map == {111: 111, 63: 63}


class _PlainStats:
    """A stats object with an ordinary ``__dict__``: the leaf's generic path."""

    def __init__(self) -> None:
        self.red_stripped = 5
        self.forwarded = 0


@needs_native
def test_native_counts_stripped_copies_on_any_stats_object() -> None:
    # The leaf bumps ``red_stripped`` through a slot it resolved once for
    # ForwarderStats; another type of object (and ForwarderStats again after
    # it) must be counted as well, never written at a stale offset.
    with native_leaf() as (fan, receivers):
        subs, _ = twin_records(receivers)
        f = forwarder(subs)
        f.red_leaf = native.RED
        out: list[tuple[Any, bytes]] = []
        route_native(f, fan, red_packet(1), 0.02, out)  # a run's first copies: the Python loop
        assert f.stats.red_stripped == 2
        track = f.track(SSRC)
        view = RtpView()
        view.parse(red_packet(2))
        primary = red.primary(view.packet, view.start, view.end)
        plain = _PlainStats()
        rest: list[Any] = []
        # No transport-wide sequence number or abs-send-time: only the copies' counts matter here.
        sent = fan.forward(
            track.subscriptions, view, 0.04, rest, -1, -1, -1, primary, plain,  # type: ignore[arg-type]
        )  # fmt: skip
        assert (sent, rest, plain.red_stripped, plain.forwarded) == (3, [], 5 + 2, 3)
        route_native(f, fan, red_packet(3), 0.06, out)
        assert f.stats.red_stripped == 2 + 2
