"""Recording (issue 23, the media worker's half): a real worker with aiortc
peers records a call into a real LocalStorage; every stored segment opens with
the recording's key and holds the track's RTP as the worker received it. A
store too slow ends the recording, never the call."""

from __future__ import annotations

import asyncio
import base64
import fractions
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import av
import pytest
from prometheus_client import REGISTRY, generate_latest

from recording import remux
from rtc.rtpdump import open_segment
from sfu.control.messages import (
    LayersWanted,
    RecordingOrder,
    RecordingSegment,
    RecordingStopped,
    TrackInfo,
    event_from_dict,
    event_to_dict,
)
from sfu.errors import SfuStateError
from sfu.layers.choice import DYNACAST_DELAY
from sfu.node.worker import MediaWorker
from sfu.recording.core import LAYER_WAIT
from sfu.rooms.records import MediaRoom, Peer
from tests.polling import wait_until
from tests.recording import media
from tests.sfu.conftest import (
    Events,
    MovingVideo,
    Publisher,
    Subscriber,
    Tone,
    take_events,
)
from tests.sfu.layers import test_layers
from tests.sfu.node import test_relay
from wadud.state.storage import LocalStorage

ROOM = "consult-rec"
KEY = os.urandom(32)
ORDER = RecordingOrder(
    "6f1c1d0e-3c1a-4a57-9d3e-2b1b3f0a9c11", base64.urlsafe_b64encode(KEY).decode()
)


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


@pytest.fixture
async def worker(loopback_aiortc: None, store: LocalStorage) -> AsyncIterator[MediaWorker]:
    recording = {"storage": store, "segment_seconds": 1.0}
    async with MediaWorker(host="127.0.0.1", port=0, recording=recording) as w:
        yield w


async def call(peers: Any, events: Events, *, video: bool = True) -> tuple[Publisher, Subscriber]:
    publisher: Publisher = peers(Publisher, ROOM, "doctor")
    publisher.add(Tone())
    if video:
        publisher.add(MovingVideo())
    await publisher.negotiate()
    await events.wait_state("doctor", "publish", "connected")
    sub: Subscriber = peers(Subscriber, ROOM, "patient")
    await sub.update(list(publisher.tracks.values()))
    kinds = ("audio", "video") if video else ("audio",)
    await wait_until(lambda: all(sub.frames[k] >= 5 for k in kinds))
    return publisher, sub


def received(worker: MediaWorker, track_id: str) -> int:
    """Packets of the track's media SSRC the worker received (RFC 3550 A.3 count)."""
    track = worker.tables.rooms[ROOM].tracks[track_id]
    return track.publisher.recv_stats[track.ssrc].received


def of(events: Events, kind: type[Any]) -> list[Any]:
    return [e for e in events.items if isinstance(e, kind)]


async def stopped(events: Events, limit: float = 10.0) -> RecordingStopped:
    await wait_until(lambda: bool(of(events, RecordingStopped)), limit)
    (event,) = of(events, RecordingStopped)
    assert isinstance(event, RecordingStopped)
    return event


async def test_a_recorded_call_is_stored_in_sealed_segments(
    worker: MediaWorker, events: Events, peers: Any, store: LocalStorage
) -> None:
    publisher, sub = await call(peers, events)
    track_ids = list(publisher.tracks.values())
    before = {t: received(worker, t) for t in track_ids}
    await worker.record(ROOM, ORDER)
    await worker.record(ROOM, ORDER)  # the same recording again: nothing changes
    await asyncio.sleep(3.0)
    await worker.record(ROOM, None)
    during = {t: received(worker, t) - before[t] for t in track_ids}
    end = await stopped(events)
    assert (end.room, end.recording, end.reason) == (ROOM, ORDER.recording, "stopped")
    # Every segment was stored and said so before the recording said it stopped.
    segments: list[RecordingSegment] = of(events, RecordingSegment)
    assert events.items.index(end) > max(events.items.index(s) for s in segments)

    room = worker.tables.rooms[ROOM]
    for track_id in track_ids:
        track = room.tracks[track_id]
        mine = sorted((s for s in segments if s.track_id == track_id), key=lambda s: s.index)
        assert [s.index for s in mine] == list(range(len(mine)))
        assert len(mine) >= 3, "1 s segments over 3 s"
        assert {(s.room, s.recording, s.participant, s.kind) for s in mine} == {
            (ROOM, ORDER.recording, "doctor", track.info.kind)
        }
        packets = 0
        last = 0.0
        for event in mine:
            blob = await store.get(event.key)
            assert len(blob) == event.size
            segment = open_segment(blob, KEY)
            header = segment.header
            assert (header.recording, header.track, header.index) == (
                ORDER.recording,
                track_id,
                event.index,
            )
            assert (header.codec, header.clock_rate, header.payload_type) == (
                track.codec.name,
                track.codec.clock_rate,
                track.codec.payload_type,
            )
            assert len(segment.packets) == event.packets > 0
            assert header.started == event.started == segment.packets[0][0]
            assert abs(segment.packets[-1][0] - event.ended) < 1e-5
            for at, packet in segment.packets:
                assert packet[0] >> 6 == 2  # RTP version 2
                assert packet[1] & 0x7F == track.codec.payload_type
                assert struct.unpack_from("!I", packet, 8)[0] == track.ssrc
                assert at >= last - 1e-6
                last = at
            packets += event.packets
        # What the worker received of the track while recording is what was stored.
        assert abs(packets - during[track_id]) <= 2, (packets, during[track_id])
    counts = worker.snapshot()["recordings"]
    assert counts["active"] == 0
    # Nothing is queued any more.
    assert room.recording is None
    assert all(p.publish is None or p.publish.recording is None for p in room.participants.values())
    assert counts["segments_stored"] == len(segments)
    assert counts["bytes_stored"] == sum(s.size for s in segments)
    # The call went on meanwhile.
    frames = sub.frames["video"]
    await wait_until(lambda: sub.frames["video"] >= frames + 5)


class BrowserCamera(MovingVideo):
    """30 frames a second stamped with their capture time, as a browser
    stamps its RTP: every 7th frame is handed over 25 ms late and the next
    on time, 8 ms after it."""

    def __init__(self) -> None:
        super().__init__()
        self._frame = 0
        self._start: float | None = None

    @staticmethod
    def captured(i: int) -> float:
        return i / 30 + (0.025 if i % 7 == 3 else 0.0)

    async def next_timestamp(self) -> tuple[int, fractions.Fraction]:
        if self._start is None:
            self._start = time.time()
        at = self.captured(self._frame)
        self._frame += 1
        await asyncio.sleep(max(0.0, self._start + at - time.time()))
        return round(at * 90_000), fractions.Fraction(1, 90_000)


class LossyUplink:
    """The publisher's path to the worker losing one video packet in 10
    and repeating one in 15 (after SRTP's sender, as a network does); a
    repair the worker's NACK gets back on the RTX SSRC passes."""

    def __init__(self, publisher: Publisher) -> None:
        (video,) = (s for s in publisher.pc.getSenders() if s.track and s.track.kind == "video")
        self.ssrc = video._ssrc
        self.dropped: set[int] = set()
        self.repeated = 0
        self._count = 0
        transport = video.transport
        send: Callable[[bytes], Awaitable[None]] = transport._send_rtp

        async def lossy(data: bytes) -> None:
            if len(data) >= 12 and struct.unpack_from("!I", data, 8)[0] == self.ssrc:
                self._count += 1
                if self._count % 10 == 0:
                    self.dropped.add(struct.unpack_from("!H", data, 2)[0])
                    return
                if self._count % 15 == 0:
                    self.repeated += 1
                    await send(data)
            await send(data)

        transport._send_rtp = lossy


async def test_a_recording_over_a_lossy_uplink_decodes_without_a_complaint(
    worker: MediaWorker, events: Events, peers: Any, store: LocalStorage, tmp_path: Path
) -> None:
    """Real peers: a browser-like camera, packets lost (the worker NACKs,
    the publisher repairs them on RTX) and repeated, keyframes asked for by
    the recording; the participant's file decodes with ``ffmpeg -v error``
    silent."""
    publisher: Publisher = peers(Publisher, ROOM, "doctor")
    publisher.add(Tone())
    publisher.add(BrowserCamera())
    await publisher.negotiate()
    await events.wait_state("doctor", "publish", "connected")
    uplink = LossyUplink(publisher)
    await worker.record(ROOM, ORDER)
    await asyncio.sleep(4.0)
    await worker.record(ROOM, None)
    await stopped(events)
    assert len(uplink.dropped) >= 5 and uplink.repeated >= 3

    room = worker.tables.rooms[ROOM]
    tracks: list[remux.TrackMedia] = []
    video_seqs: set[int] = set()
    for track_id in publisher.tracks.values():
        track = room.tracks[track_id]
        mine = sorted(
            (s for s in of(events, RecordingSegment) if s.track_id == track_id),
            key=lambda s: s.index,
        )
        packets: list[tuple[float, bytes]] = []
        for event in mine:
            packets += open_segment(await store.get(event.key), KEY).packets
        codec = track.codec
        tracks.append(
            remux.TrackMedia(
                track.info.kind, codec.name or "", codec.clock_rate, codec.payload_type, packets
            )
        )
        if track.info.kind == "video":
            video_seqs = {struct.unpack_from("!H", p, 2)[0] for _, p in packets}
    # Lost packets were recorded all the same: their repairs, sent on RTX.
    assert len(uplink.dropped & video_seqs) >= 3
    out = tmp_path / "doctor.webm"
    made = remux.remux(tracks, out)
    assert (made.audio, made.video) == (True, True)
    assert media.ffmpeg_errors(out) == ""
    with av.open(str(out)) as f:
        assert sum(1 for _ in f.decode(video=0)) > 60


class SlowStorage(LocalStorage):
    """A real local store whose puts take ``delay`` seconds (a disk or bucket far too slow)."""

    def __init__(self, root: Path, delay: float) -> None:
        super().__init__(root)
        self.delay = delay

    async def put(self, data: bytes) -> str:
        await asyncio.sleep(self.delay)
        return await super().put(data)


@pytest.mark.parametrize("how", ["timeout", "queue"])
async def test_a_slow_store_fails_the_recording_not_the_call(
    worker: MediaWorker, events: Events, peers: Any, tmp_path: Path, how: str
) -> None:
    _, sub = await call(peers, events)
    recordings = worker.recordings
    if how == "timeout":
        recordings.storage = SlowStorage(tmp_path / "slow", delay=30.0)
        recordings.write_timeout = 0.5
    else:
        recordings.queue_bytes = 4096
    frames = sub.frames["video"]
    await worker.record(ROOM, ORDER)
    end = await stopped(events)
    assert (end.recording, end.reason) == (ORDER.recording, "failed")
    if how == "timeout":
        assert end.detail == "storage too slow: a segment took over 0.5 s to store"
    else:
        assert end.detail == "storage too slow: queue over 0.00390625 MiB"
    assert not of(events, RecordingSegment)
    room = worker.tables.rooms[ROOM]
    assert room.recording is None
    assert all(p.publish is None or p.publish.recording is None for p in room.participants.values())
    assert worker.snapshot()["recordings"] == {
        "active": 0,
        "bytes_stored": 0,
        "segments_stored": 0,
        "failed": {how: 1},
    }
    scraped = generate_latest(REGISTRY).decode()
    assert f'sfu_recordings_failed_total{{reason="{how}"}}' in scraped
    assert "sfu_recordings_active 0.0" in scraped
    # The subscriber decoded frames while the recording failed and goes on after.
    assert sub.frames["video"] > frames
    frames = sub.frames["video"]
    await wait_until(lambda: sub.frames["video"] >= frames + 10)
    # The same recording does not start again (its segment indexes would).
    with pytest.raises(SfuStateError, match="has ended"):
        await worker.record(ROOM, ORDER)


async def test_a_recording_asked_for_before_anyone_published_starts_with_the_media(
    worker: MediaWorker, events: Events, peers: Any, store: LocalStorage
) -> None:
    """Everyone agreed before the first camera was on: the worker has no
    room yet, so the order waits, and the first publish starts it; every
    track is recorded from its first packets."""
    assert ROOM not in worker.tables.rooms
    await worker.record(ROOM, ORDER)
    assert set(worker.recordings.waiting) == {ROOM}
    publisher, _ = await call(peers, events)
    assert not worker.recordings.waiting
    assert worker.snapshot()["recordings"]["active"] == 1
    track_ids = set(publisher.tracks.values())
    await wait_until(lambda: {s.track_id for s in of(events, RecordingSegment)} == track_ids, 10.0)
    await worker.record(ROOM, None)
    end = await stopped(events)
    assert (end.room, end.recording, end.reason) == (ROOM, ORDER.recording, "stopped")
    segments = of(events, RecordingSegment)
    assert all(min(s.index for s in segments if s.track_id == t) == 0 for t in track_ids)


async def test_a_track_published_later_is_recorded_and_bad_orders_are_refused(
    worker: MediaWorker, events: Events, peers: Any, store: LocalStorage
) -> None:
    publisher, _ = await call(peers, events, video=False)
    # An order for a room with no media here yet waits for it; stopped
    # first, it ends at once (its row must end), having stored nothing.
    early = RecordingOrder("9d1c1d0e-3c1a-4a57-9d3e-2b1b3f0a9c12", ORDER.key)
    await worker.record("no-media-yet", early)
    assert set(worker.recordings.waiting) == {"no-media-yet"}
    await worker.record("no-media-yet", None)
    assert not worker.recordings.waiting
    (end,) = of(events, RecordingStopped)
    assert (end.room, end.recording, end.reason) == ("no-media-yet", early.recording, "stopped")
    events.items.remove(end)
    with pytest.raises(SfuStateError, match="no room"):
        await worker.record("no-such-room", None)
    with pytest.raises(SfuStateError, match="32 bytes"):
        await worker.record(ROOM, RecordingOrder("r-short", "c2hvcnQ="))
    await worker.record(ROOM, ORDER)
    with pytest.raises(SfuStateError, match="already being recorded"):
        await worker.record(ROOM, RecordingOrder("another", ORDER.key))

    # The same connection now sends video too: it is recorded from its first packets.
    publisher.add(MovingVideo())
    result = await publisher.negotiate({"1": "camera"})
    (video,) = result.added
    await wait_until(
        lambda: any(s.track_id == video.track_id for s in of(events, RecordingSegment))
    )
    await worker.record(ROOM, None)
    got = received(worker, video.track_id)
    await worker.record(ROOM, None)  # stopping twice is no error
    end = await stopped(events)
    assert end.reason == "stopped"
    mine = [s for s in of(events, RecordingSegment) if s.track_id == video.track_id]
    first = open_segment(await store.get(mine[0].key), KEY)
    # Nothing of the new track was lost: every packet the worker got of it is stored.
    assert abs(sum(s.packets for s in mine) - got) <= 2
    assert first.header.kind == "video" and first.header.codec == "VP8"
    # After a stop, a new recording (another id) may start.
    await worker.record(ROOM, RecordingOrder("second", ORDER.key))
    await worker.record(ROOM, None)


async def test_closing_the_room_stops_its_recording(
    worker: MediaWorker, events: Events, peers: Any
) -> None:
    await call(peers, events, video=False)
    await worker.record(ROOM, ORDER)
    await asyncio.sleep(0.6)
    await worker.close_room(ROOM)
    end = await stopped(events)
    assert (end.reason, end.detail) == ("stopped", "room closed")
    assert of(events, RecordingSegment)


def test_recording_events_round_trip_through_dicts() -> None:
    for event in (
        RecordingSegment(
            ROOM, "r1", "doctor", "t-1", "video", 3, "ab" * 32, 120, 96_000, 1.7e9, 1.7e9 + 4
        ),
        RecordingStopped(ROOM, "r1", "stopped", ""),
        RecordingStopped(ROOM, "r1", "failed", "storage error: disk full"),
    ):
        data = event_to_dict(event)
        assert event_from_dict(data) == event
        assert event_from_dict(dict(data)) == event


@pytest.fixture
async def relayed(
    loopback_aiortc: None,
) -> AsyncIterator[tuple[MediaWorker, MediaWorker, test_relay.Middle]]:
    """Two workers and the UDP relay between them, as tests/sfu/node/test_relay.py has them."""
    async with test_relay.two_workers() as workers:
        yield workers


async def test_tracks_relayed_in_from_another_worker_are_recorded(
    relayed: tuple[MediaWorker, MediaWorker, test_relay.Middle], tmp_path: Path
) -> None:
    a, b, middle = relayed
    made: list[Any] = []
    store = LocalStorage(tmp_path / "b-store")
    b.recordings.storage = store
    events = Events()
    b.add_listener(events)
    try:
        track_ids = await test_relay.publish(a, made)
        sent = await test_relay.relay(a, b, middle, track_ids)
        sub = await test_relay.subscribe(b, made, "patient", track_ids)
        await wait_until(lambda: sub.frames["video"] >= 5 and sub.frames["audio"] >= 5, within=20)
        await b.record(test_relay.ROOM, ORDER)
        await asyncio.sleep(1.0)
        await b.record(test_relay.ROOM, None)
    finally:
        for peer in made:
            await peer.close()
    end = await stopped(events)
    assert end.reason == "stopped"
    segments: list[RecordingSegment] = of(events, RecordingSegment)
    assert {s.track_id for s in segments} == set(track_ids)
    for crossed in sent:
        mine = [s for s in segments if s.track_id == crossed.info.track_id]
        assert {s.participant for s in mine} == {"doctor"}
        segment = open_segment(await store.get(mine[0].key), KEY)
        # As it arrived on the link: the link's SSRC and payload type.
        assert segment.header.payload_type == crossed.codec.payload_type
        assert {struct.unpack_from("!I", p, 8)[0] for _, p in segment.packets} == {crossed.ssrc}


async def simulcast_publisher(worker: MediaWorker, now: float) -> tuple[TrackInfo, MediaRoom, Peer]:
    """Alice publishes a three-layer simulcast camera; one keyframe of each
    layer (q, h, f) arrives at ``now`` so the worker learns their SSRCs."""
    fp = worker.relay_identity()[1].split(" ", 1)[1]
    offer = test_layers.CHROME_RID_OFFER.format(fp=fp).replace("\n", "\r\n")
    (info,) = (await worker.publish(ROOM, "alice", offer, {})).added
    room = worker.tables.rooms[ROOM]
    peer = room.participants["alice"].publish
    assert peer is not None
    for index, rid in enumerate("qhf"):
        first = test_layers.vp8_packet(
            test_layers.LAYERS[index], 1, 0, 1, key=True, ext=test_layers.rid_ext(rid)
        )
        worker._route(peer, first, now)
    return info, room, peer


async def test_a_simulcast_track_is_recorded_at_its_top_layer_which_dynacast_keeps(
    worker: MediaWorker, events: Events, store: LocalStorage
) -> None:
    now = worker._now()
    info, room, peer = await simulcast_publisher(worker, now)
    worker.layers.tick(now + 0.5)  # every layer measured: all three flow
    await worker.record(ROOM, ORDER)
    for seq in range(2, 12):
        for index in range(3):
            packet = test_layers.vp8_packet(test_layers.LAYERS[index], seq, seq, seq, key=False)
            worker._route(peer, packet, now)
    await asyncio.sleep(0.3)  # a tick: the recording wants the top layer
    marked = room.tracks[info.track_id].layers[2].wanted_at
    assert marked > now
    # Nobody subscribes: the middle layer goes off after the dynacast delay,
    # the top one stays on while the recording wants it (each tick).
    worker.layers.tick(marked + DYNACAST_DELAY - 0.01)
    take_events(worker.layers, events)
    wanted = [e for e in events.items if isinstance(e, LayersWanted)]
    assert wanted[-1].active_rids == ["q", "f"]
    await worker.record(ROOM, None)
    await stopped(events)
    (segment,) = [s for s in of(events, RecordingSegment) if s.track_id == info.track_id]
    packets = open_segment(await store.get(segment.key), KEY).packets
    ssrcs = {struct.unpack_from("!I", p, 8)[0] for _, p in packets}
    assert ssrcs == {test_layers.LAYERS[2]} and len(packets) == 10


async def test_a_simulcast_layer_the_publisher_stopped_sending_is_not_the_one_recorded(
    worker: MediaWorker, events: Events, store: LocalStorage
) -> None:
    # A browser offers three layers but sends two when its camera is small:
    # the top layer was learnt from one early packet and then nothing came.
    now = worker._now() - 10.0
    info, _room, peer = await simulcast_publisher(worker, now)
    worker.layers.tick(now + 0.5)
    later = worker._now()
    for seq in range(2, 6):
        for index in range(2):
            packet = test_layers.vp8_packet(test_layers.LAYERS[index], seq, seq, seq, key=False)
            worker._route(peer, packet, later)
    worker.layers.tick(later)
    await worker.record(ROOM, ORDER)
    # Two of three layers flow: after LAYER_WAIT the higher of them is taken.
    await asyncio.sleep(LAYER_WAIT + 0.3)
    worker.layers.tick(worker._now())
    for seq in range(6, 16):
        for index in range(2):
            packet = test_layers.vp8_packet(test_layers.LAYERS[index], seq, seq, seq, key=False)
            worker._route(peer, packet, worker._now())
    await asyncio.sleep(0.3)
    await worker.record(ROOM, None)
    await stopped(events)
    (segment,) = [s for s in of(events, RecordingSegment) if s.track_id == info.track_id]
    packets = open_segment(await store.get(segment.key), KEY).packets
    ssrcs = {struct.unpack_from("!I", p, 8)[0] for _, p in packets}
    assert ssrcs == {test_layers.LAYERS[1]}


async def test_when_the_recorded_layer_goes_quiet_the_next_one_down_is_recorded(
    worker: MediaWorker, events: Events, store: LocalStorage
) -> None:
    # The publisher's link (or CPU) made it drop its top layer mid-recording.
    now = worker._now()
    info, _room, peer = await simulcast_publisher(worker, now)
    worker.layers.tick(now)
    await worker.record(ROOM, ORDER)

    async def send(layers: range, seqs: range) -> None:
        for seq in seqs:
            for index in layers:
                packet = test_layers.vp8_packet(test_layers.LAYERS[index], seq, seq, seq, key=False)
                worker._route(peer, packet, worker._now())
            worker.layers.tick(worker._now())
            await asyncio.sleep(0.1)

    await send(range(3), range(2, 6))  # all three: the top one is recorded
    asked = worker.tables.rooms[ROOM].forwarder.stats.keyframe_requests
    await send(range(2), range(6, 36))  # three seconds without the top one
    await worker.record(ROOM, None)
    await stopped(events)
    segments = [s for s in of(events, RecordingSegment) if s.track_id == info.track_id]
    ssrcs = [
        struct.unpack_from("!I", p, 8)[0]
        for s in segments
        for _, p in open_segment(await store.get(s.key), KEY).packets
    ]
    # The top layer first, then (once it was QUIET) the middle one.
    top, middle = test_layers.LAYERS[2], test_layers.LAYERS[1]
    assert ssrcs[0] == top and ssrcs[-1] == middle
    assert ssrcs == sorted(ssrcs, key=lambda x: x == middle)
    # And it moved within QUIET and a measurement (1.5 s; sent every 0.1 s
    # from sequence 6 on), well before the layers' STALE (2 s) would have:
    # taking layers fresh by STALE re-took the quiet one until then (25).
    seqs = [
        struct.unpack_from("!H", p, 2)[0]
        for s in segments
        for _, p in open_segment(await store.get(s.key), KEY).packets
        if struct.unpack_from("!I", p, 8)[0] == middle
    ]
    assert min(seqs) <= 21, seqs
    # The middle layer was asked for a keyframe when it was taken on.
    assert worker.tables.rooms[ROOM].forwarder.stats.keyframe_requests > asked
