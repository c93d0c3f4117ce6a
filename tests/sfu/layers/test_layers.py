"""Simulcast on the worker: layer switching in the forwarder, and the worker's
side (RID layers learnt from the first packets, allocation by view and
bandwidth, TrackPaused and LayersWanted events).

Packets carry VP8 payload descriptors built by aiortc's codec (an encoder no
one here wrote); the worker-level tests feed plain RTP to the worker's hot
path (what SRTP unprotect would hand it) and a Chrome-shaped rid offer to
``publish``.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from typing import Any

import pytest
from aiortc.codecs.vpx import VpxPayloadDescriptor

from rtc.sdp.attributes import REPAIRED_RTP_STREAM_ID, RTP_STREAM_ID, TRANSPORT_CC
from rtc.sdp.session import SessionDescription
from sfu.control.messages import (
    LayersWanted,
    TrackDisplay,
    TrackPaused,
    event_from_dict,
    event_to_dict,
)
from sfu.errors import SfuStateError
from sfu.forward.forwarder import Forwarder
from sfu.layers.choice import DYNACAST_DELAY
from sfu.layers.published import QUIET, STALE, TICK
from sfu.node.worker import MediaWorker
from tests.sfu.conftest import Events, take_events

PUB = "publisher"
SUB = "subscriber"
GID = 0xABCDEF
LAYERS = (0x1000, 0x2000, 0x3000)


def vp8_packet(
    ssrc: int, seq: int, ts: int, picture_id: int, *, key: bool, ext: bytes = b""
) -> bytes:
    desc = VpxPayloadDescriptor(partition_start=1, partition_id=0, picture_id=picture_id)
    payload = bytes(desc) + (b"\x10\x00\x00\x9d\x01\x2a" if key else b"\x11\x00\x00") + bytes(40)
    b0 = 0x90 if ext else 0x80
    header = struct.pack("!BBHII", b0, 0x80 | 96, seq, ts, ssrc)
    if ext:
        ext += bytes(-len(ext) % 4)
        header += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    return header + payload


def picture_id(packet: bytes) -> int:
    start = 12
    if packet[0] & 0x10:
        start += 4 + 4 * struct.unpack_from("!H", packet, 14)[0]
    desc, _ = VpxPayloadDescriptor.parse(packet[start:])
    assert desc.picture_id is not None
    return int(desc.picture_id)


def simulcast_forwarder() -> Forwarder:
    f = Forwarder(keyframe_interval=0.0)
    f.simulcast.add_group(PUB, GID, 3, codec="VP8", clock_rate=90_000)
    for index, ssrc in enumerate(LAYERS):
        f.simulcast.add_layer(GID, index, ssrc)
    f.subscribe(SUB, GID, 0.0, ssrc=0x5555)
    return f


class Layered:
    """Three layers sending in step: each its own sequence, timestamp and PictureID bases."""

    def __init__(self) -> None:
        self.seq = [100, 30_000, 65_000]
        self.ts = [1_000, 2_000_000_000, 4_000_000_000]
        self.pid = [5, 20_000, 32_760]

    def frame(self, index: int, key: bool = False) -> bytes:
        packet = vp8_packet(
            LAYERS[index],
            self.seq[index] & 0xFFFF,
            self.ts[index] & 0xFFFFFFFF,
            self.pid[index] & 0x7FFF,
            key=key,
        )
        self.seq[index] += 1
        self.ts[index] += 3000
        self.pid[index] += 1
        return packet


def test_a_switch_waits_for_the_new_layers_keyframe_and_keeps_one_stream() -> None:
    f = simulcast_forwarder()
    src = Layered()
    now = 1.0
    assert f.simulcast.set_layer(SUB, GID, 0, now)
    # Nothing before layer 0's keyframe; a keyframe was asked for on it.
    assert f.route(src.frame(0), now) == []
    assert any(getattr(p, "media_ssrc", None) == LAYERS[0] for _, p in f.rtcp_to_send())
    out: list[bytes] = []
    for i in range(10):
        now += 1 / 30
        for layer in range(3):
            routed = f.route(src.frame(layer, key=i == 0), now)
            out += [packet for _, packet in routed]
    assert len(out) == 10
    f.simulcast.set_layer(SUB, GID, 2, now)
    # Layer 0 keeps flowing until layer 2's keyframe.
    for i in range(5):
        now += 1 / 30
        for layer in range(3):
            routed = f.route(src.frame(layer, key=layer == 2 and i == 3), now)
            out += [packet for _, packet in routed]
    sub = f.subscription(SUB, 0x5555)
    assert sub is not None and sub.layer == 2
    assert len(f.switch_times) == 1 and 0 < f.switch_times[0] < 0.2
    seqs = [struct.unpack_from("!H", p, 2)[0] for p in out]
    stamps = [struct.unpack_from("!I", p, 4)[0] for p in out]
    pids = [picture_id(p) for p in out]
    ssrcs = {struct.unpack_from("!I", p, 8)[0] for p in out}
    assert ssrcs == {0x5555}
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert all(0 < (b - a) & 0xFFFFFFFF < 90_000 for a, b in itertools.pairwise(stamps))
    assert all((b - a) & 0x7FFF == 1 for a, b in itertools.pairwise(pids))
    # Layer 2 from its keyframe on: 10 + 4 packets of layer 0, then 2 of layer 2.
    assert len(out) == 16


def test_no_layer_sends_nothing_and_resuming_waits_for_a_keyframe() -> None:
    f = simulcast_forwarder()
    src = Layered()
    f.simulcast.set_layer(SUB, GID, 1, 0.0)
    assert f.route(src.frame(1, key=True), 0.1)
    f.simulcast.set_layer(SUB, GID, None, 0.2)
    assert all(f.route(src.frame(i, key=True), 0.3) == [] for i in range(3))
    f.simulcast.set_layer(SUB, GID, 0, 0.4)
    assert f.route(src.frame(0), 0.5) == []
    assert f.route(src.frame(0, key=True), 0.6)


def test_removing_the_group_forgets_its_layers_and_subscriptions() -> None:
    f = simulcast_forwarder()
    f.simulcast.set_layer(SUB, GID, 0, 0.0)
    f.remove_track(GID)
    assert f.tracks == []
    assert f.subscription(SUB, 0x5555) is None
    assert f.route(Layered().frame(0, key=True), 1.0) == []


def test_set_layer_refuses_what_is_not_a_subscription_to_a_group() -> None:
    f = simulcast_forwarder()
    f.add_track(PUB, 0x7777, kind="video", codec="VP8", clock_rate=90_000)
    f.subscribe(SUB, 0x7777, 0.0, ssrc=0x6666)
    with pytest.raises(SfuStateError, match="no simulcast group"):
        f.simulcast.set_layer(SUB, 0x7777, 0, 0.0)
    with pytest.raises(SfuStateError, match="does not receive"):
        f.simulcast.set_layer("someone else", GID, 0, 0.0)


def test_unsubscribing_during_a_switch_leaves_no_one_waiting() -> None:
    f = simulcast_forwarder()
    src = Layered()
    f.simulcast.set_layer(SUB, GID, 0, 0.0)
    assert f.route(src.frame(0, key=True), 0.1)
    f.simulcast.set_layer(SUB, GID, 2, 0.2)
    layer = f.track(LAYERS[2])
    assert layer.waiting == 1
    f.unsubscribe(SUB, GID)
    assert layer.waiting == 0 and layer.pending == []
    group = f.simulcast.group(GID)
    assert group is not None and group.subscriptions == []
    assert f.route(src.frame(2, key=True), 0.3) == []


def test_events_round_trip() -> None:
    for event in (
        TrackPaused("r", "p", "t-1", True, "bandwidth"),
        LayersWanted("r", "t-1", "p", ["q", "h", "f"], ["q"]),
    ):
        assert event_from_dict(event_to_dict(event)) == event


# -- the worker -------------------------------------------------------------------------

CHROME_RID_OFFER = """v=0
o=- 1 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
a=extmap-allow-mixed
a=msid-semantic: WMS s
m=video 9 UDP/TLS/RTP/SAVPF 96 97
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 {fp}
a=setup:actpass
a=mid:0
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
a=sendonly
a=msid:s v
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 transport-cc
a=rtcp-fb:96 ccm fir
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rid:q send
a=rid:h send
a=rid:f send
a=simulcast:send q;h;f
"""


def rid_ext(rid: str, *, repaired: bool = False) -> bytes:
    mid = b"0"
    ext_id = 11 if repaired else 10
    return (
        bytes([(4 << 4) | (len(mid) - 1)])
        + mid
        + bytes([(ext_id << 4) | (len(rid) - 1)])
        + rid.encode()
    )


async def test_rid_layers_are_learnt_and_announced(worker: MediaWorker, events: Events) -> None:
    fp = worker.relay_identity()[1].split(" ", 1)[1]
    result = await worker.publish(
        "room", "alice", CHROME_RID_OFFER.format(fp=fp).replace("\n", "\r\n"), {}
    )
    (info,) = result.added
    assert info.rids == ("q", "h", "f")
    answer = SessionDescription.parse(result.answer).media[0]
    assert answer.simulcast == "recv q;h;f"
    assert {e.uri for e in answer.extmaps} >= {RTP_STREAM_ID, REPAIRED_RTP_STREAM_ID}
    room: Any = worker.tables.rooms["room"]
    peer = room.participants["alice"].publish
    now = worker._now()
    for index, rid in enumerate("qhf"):
        worker._route(peer, vp8_packet(LAYERS[index], 1, 0, 1, key=True, ext=rid_ext(rid)), now)
        rtx = vp8_packet(LAYERS[index] + 1, 1, 0, 1, key=False, ext=rid_ext(rid, repaired=True))
        worker._route(peer, rtx, now)
    group = room.forwarder.simulcast.group(room.tracks[info.track_id].ssrc)
    assert [t.ssrc for t in group.layers] == list(LAYERS)
    assert [t.rtx_ssrc for t in group.layers] == [s + 1 for s in LAYERS]
    assert group.layers[0].width == 1280 or group.layers[0].width == 0
    assert not peer.rid_tracks
    # Nobody subscribes: after the dynacast delay only the lowest layer stays wanted.
    later = now + DYNACAST_DELAY + TICK
    worker.layers.tick(later)
    take_events(worker.layers, events)
    wanted = [e for e in events.items if isinstance(e, LayersWanted)]
    assert wanted and wanted[-1].active_rids == ["q"] and wanted[-1].rids == ["q", "h", "f"]
    assert wanted[-1].participant == "alice"


async def test_dynacast_never_stops_a_layer_it_has_not_seen(
    worker: MediaWorker, events: Events
) -> None:
    """A browser starts its upper layers when its own uplink estimate allows,
    often seconds in. Stopped before the worker ever saw them, they could
    never be offered to a subscriber, so never wanted, so never started
    again (the capped visit sent its viewers 640x360 for good that way)."""
    fp = worker.relay_identity()[1].split(" ", 1)[1]
    await worker.publish("room", "alice", CHROME_RID_OFFER.format(fp=fp).replace("\n", "\r\n"), {})
    room: Any = worker.tables.rooms["room"]
    peer = room.participants["alice"].publish
    now = worker._now()
    worker._route(peer, vp8_packet(LAYERS[0], 1, 0, 1, key=True, ext=rid_ext("q")), now)
    worker.layers.tick(now + DYNACAST_DELAY + TICK)
    take_events(worker.layers, events)
    wanted = [e for e in events.items if isinstance(e, LayersWanted)]
    assert not wanted or wanted[-1].active_rids == ["q", "h", "f"], wanted
    # The middle layer comes and nobody wants it: it stops; the top one,
    # still unseen, stays on.
    later = now + DYNACAST_DELAY + 2 * TICK
    worker._route(peer, vp8_packet(LAYERS[1], 1, 0, 1, key=True, ext=rid_ext("h")), later)
    worker.layers.tick(later + DYNACAST_DELAY + TICK)
    take_events(worker.layers, events)
    wanted = [e for e in events.items if isinstance(e, LayersWanted)]
    assert wanted and wanted[-1].active_rids == ["q", "f"], wanted


def top_layer_stopped(worker: MediaWorker, pub: Any, start: float, sub: Any) -> dict[float, Any]:
    """From ``start``, 1.5 s of the lower two layers only (10 frames a
    second; the top one stopped), the layers ticked every half second:
    ``sub``'s target at each tick, by seconds after ``start``."""
    targets = {}
    for frame in range(1, 16):
        t = start + frame * 0.1
        for index, rid in ((0, "q"), (1, "h")):
            packet = vp8_packet(LAYERS[index], 1 + frame, 3000 * frame, 1 + frame, key=False,
                                ext=rid_ext(rid))  # fmt: skip
            worker._route(pub, packet, t)
        if frame % 5 == 0:
            worker.layers.tick(t)
            targets[round(t - start, 1)] = sub.target
    return targets


@dataclass
class Watched:
    """A Chrome-shaped simulcast publisher whose three layers have each sent
    a keyframe, and a subscriber to its video, connected enough for the
    worker to allocate layers to it (no real client)."""

    pub: Any
    sub_peer: Any
    fsub: Any
    track_id: str
    now: float


async def watched(
    worker: MediaWorker, events: Events | None = None, *, transport_cc: bool = True
) -> Watched:
    fp = worker.relay_identity()[1].split(" ", 1)[1]
    result = await worker.publish(
        "room", "alice", CHROME_RID_OFFER.format(fp=fp).replace("\n", "\r\n"), {}
    )
    track_id = result.added[0].track_id
    room: Any = worker.tables.rooms["room"]
    pub = room.participants["alice"].publish
    now = worker._now()
    for index, rid in enumerate("qhf"):
        worker._route(pub, vp8_packet(LAYERS[index], 1, 0, 1, key=True, ext=rid_ext(rid)), now)
    await worker.subscribe("room", "bob", [track_id])
    sub_peer = room.participants["bob"].subscribe
    section = sub_peer.sections[0]
    section.negotiated = True
    # As a browser's answer would: every extension offered (transport-cc too,
    # unless refused).
    section.sub_extensions = {
        e.uri: e.id for e in section.forwarded.extensions if transport_cc or e.uri != TRANSPORT_CC
    }
    sub_peer.pending_offer = False
    sub_peer.reporting = True
    worker.tables.reports.add_leg(sub_peer, now)
    worker.transports.apply_subscriptions(sub_peer, now)
    take_events(worker.transports, events)
    take_events(worker.layers, events)
    fsub = room.forwarder.subscription(sub_peer, section.forwarded.ssrc)
    return Watched(pub, sub_peer, fsub, track_id, now)


async def test_a_subscriber_without_transport_cc_is_not_held_at_the_start_estimate(
    worker: MediaWorker,
) -> None:
    """A subscriber that refused transport-cc never sends its feedback: no
    estimator for it (nor REMB here), so nothing caps it and the top layer
    comes, where an estimator that never heard would hold it at 1 Mbit/s."""
    w = await watched(worker, transport_cc=False)
    assert worker.layers.subscribers.by_peer[w.sub_peer].estimator is None
    assert w.fsub.target == 2


async def test_views_pick_layers_and_hide(worker: MediaWorker, events: Events) -> None:
    w = await watched(worker, events)
    fsub, track_id = w.fsub, w.track_id
    # No view yet: the best layer the start estimate (1 Mbit/s) carries.
    assert fsub.target == 1
    await worker.set_view("room", "bob", track_id, TrackDisplay(160, 90, True))
    assert fsub.target == 0
    await worker.set_view("room", "bob", track_id, TrackDisplay(640, 360, True))
    assert fsub.target == 1
    await worker.set_view("room", "bob", track_id, TrackDisplay(640, 360, False))
    assert fsub.target is None
    paused = [e for e in events.items if isinstance(e, TrackPaused)]
    assert paused[-1] == TrackPaused("room", "bob", track_id, True, "hidden")
    await worker.set_view("room", "bob", track_id, TrackDisplay(1280, 720, True))
    assert fsub.target == 1  # the top layer does not fit the estimate
    assert [e for e in events.items if isinstance(e, TrackPaused)][-1].paused is False
    await worker.set_audio_only("room", "bob", True)
    assert fsub.target is None
    assert [e for e in events.items if isinstance(e, TrackPaused)][-1].reason == "audio_only"


async def test_a_camera_turned_off_is_off_not_a_weak_link(
    worker: MediaWorker, events: Events
) -> None:
    """A video whose publisher sends nothing (muted, or its layers stopped
    with no mute, as a camera turned off) is paused for subscribers as
    ``off``, never ``bandwidth`` (which the page shows as a weak link), and
    resumes when its packets come back."""
    w = await watched(worker, events)
    fsub, track_id, now = w.fsub, w.track_id, w.now

    def send(seq: int) -> None:
        for index, rid in enumerate("qhf"):
            packet = vp8_packet(LAYERS[index], seq, seq * 3000, seq, key=True, ext=rid_ext(rid))
            worker._route(w.pub, packet, now)

    assert fsub.target == 1

    def paused() -> list[tuple[bool, str]]:
        return [(e.paused, e.reason) for e in events.items if isinstance(e, TrackPaused)]

    now += TICK
    worker.layers.tick(now)
    take_events(worker.layers, events)
    assert fsub.target == 1 and paused() == []
    # Muted by its publisher: off at the next tick.
    await worker.set_muted("room", track_id, True)
    now += TICK
    worker.layers.tick(now)
    take_events(worker.layers, events)
    assert fsub.target is None
    assert paused() == [(True, "off")]
    # Unmuted, and its packets come again: resumed, on a layer.
    await worker.set_muted("room", track_id, False)
    send(2)
    now += TICK
    worker.layers.tick(now)
    take_events(worker.layers, events)
    assert paused() == [(True, "off"), (False, "off")]
    assert fsub.target is not None
    # Its layers stop with no mute (a camera stopped): off once nothing has
    # arrived for STALE, however long it lasts, and never "bandwidth".
    for _ in range(int(10 / TICK)):
        now += TICK
        worker.layers.tick(now)
        take_events(worker.layers, events)
    assert fsub.target is None
    assert paused() == [(True, "off"), (False, "off"), (True, "off")]
    send(3)
    now += TICK
    worker.layers.tick(now)
    take_events(worker.layers, events)
    assert paused()[-1] == (False, "off") and fsub.target is not None


async def test_a_layer_its_publisher_stops_alone_is_left_within_quiet(
    worker: MediaWorker,
) -> None:
    """A publisher short of CPU stops its top layer while the lower two go on
    (Chrome's quality scaling): the subscriber on it moves down once that
    layer is QUIET behind the others, where waiting for STALE froze its
    picture for two seconds (a page that joined a loaded call saw a few
    frames, then none)."""
    w = await watched(worker, transport_cc=False)
    fsub, now = w.fsub, w.now
    assert fsub.target == 2
    start = now + TICK
    worker.layers.tick(start)  # every layer measured, seen sending
    targets = top_layer_stopped(worker, w.pub, start, fsub)
    # Its last packet came just before the first tick: by the first tick
    # after it is QUIET behind the others' (a 100 ms frame gap is a dip,
    # half a second a stop), the subscriber moves down.
    assert targets == {0.5: 1, 1.0: 1, 1.5: 1}, targets
    assert QUIET == 0.5 and STALE > 1.5


async def test_a_layer_a_moment_behind_the_others_is_kept(worker: MediaWorker) -> None:
    """A top layer up to 0.47 s behind the others when the layers are
    measured (a few frames late, a keyframe of another layer in the way) is
    a dip, not a stop: the subscriber stays on it."""
    w = await watched(worker, transport_cc=False)
    fsub, now = w.fsub, w.now
    assert fsub.target == 2
    start = now + TICK
    worker.layers.tick(start)
    targets = []
    for frame in range(1, 61):  # 30 frames a second for two seconds
        t = start + frame / 30
        for index, rid in enumerate("qhf"):
            if rid == "f" and (17 <= frame <= 30 or 32 <= frame <= 45):
                # The top layer's last frames before the measurements at
                # 1.0 s and 1.5 s came 0.47 s before each.
                continue
            packet = vp8_packet(LAYERS[index], 1 + frame, 3000 * frame, 1 + frame, key=False,
                                ext=rid_ext(rid))  # fmt: skip
            worker._route(w.pub, packet, t)
        worker.layers.tick(t)
        targets.append(fsub.target)
    assert set(targets) == {2}, targets


async def test_a_held_layer_its_publisher_stopped_is_let_go(worker: MediaWorker) -> None:
    """After congestion a subscriber is held on its layer for HOLD; when the
    publisher stops sending that very layer meanwhile (a loaded encoder, or
    packets late for STALE), the allocation takes a layer that is sent, and
    the worker's timer round goes on (it raised StopIteration once, which
    stopped the worker's RTCP for every call on it)."""
    w = await watched(worker)
    fsub, track_id, now = w.fsub, w.track_id, w.now
    await worker.set_view("room", "bob", track_id, TrackDisplay(160, 90, True))
    assert fsub.target == 0
    worker.layers.tick(now + TICK)  # every layer measured, seen sending
    # Then only the upper layers keep coming, and congestion was just now.
    later = now + 2 * TICK + STALE
    for index, rid in ((1, "h"), (2, "f")):
        packet = vp8_packet(LAYERS[index], 2, 3000, 2, key=True, ext=rid_ext(rid))
        worker._route(w.pub, packet, later)
    worker.layers.subscribers.by_peer[w.sub_peer].downgraded_at = later
    await worker.set_view("room", "bob", track_id, TrackDisplay(640, 360, True))
    worker.layers.tick(later)
    assert fsub.target == 1
