"""Two API replicas in this process sharing one Redis: a room behaves as one
whichever replica each participant reached, removals hold across them, and a
replica that goes away hands its rooms to the other (signalling.cluster.link,
signalling.cluster.replicas). Fast and without media; the same with real processes,
media nodes and browsers is tests/signalling/cluster/test_cluster.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from redis.exceptions import RedisError

from bin.assembly import build_app
from signalling.cluster import opening
from signalling.cluster.link import HOLD, OWNER_KEY, STATE_KEY, Cluster
from signalling.edge.http import CALLS
from tests.conftest import Api
from tests.polling import wait_until
from tests.signalling.service.test_ws import connect, joined, token
from wadud.config import Settings
from wadud.messaging.bus import redis_client
from wadud.web import auth
from wadud.web.auth import RoomGrant


@pytest.fixture
async def replicas(settings: Settings, redis_server: Any) -> AsyncIterator[list[Api]]:
    shared = dataclasses.replace(settings, redis_url=redis_server.url, call_owner_lease=1.0)
    out: list[Api] = []
    clients: list[TestClient[Any, Any]] = []
    for _ in range(2):
        client: TestClient[Any, Any] = TestClient(TestServer(build_app(shared)))
        await client.start_server()
        clients.append(client)
        out.append(Api(client, client.server.app))
    try:
        yield out
    finally:
        for client in clients:
            await client.close()


def room() -> str:
    return "room-" + uuid.uuid4().hex[:10]


async def test_participants_on_two_replicas_share_one_room(replicas: list[Api]) -> None:
    a, b = replicas
    name = room()
    async with joined(a, token(a, "dr-amina", "doctor", room=name)) as (doc, dj):
        assert dj["type"] == "joined"
        async with joined(b, token(b, "pt-bilal", room=name)) as (pat, pj):
            assert pj["type"] == "joined"
            assert [p["identity"] for p in pj["participants"]] == ["dr-amina"]
            arrived = await doc.type("participant_joined")
            assert arrived["participant"]["id"] == pj["participant"]["id"]
            # Pings are answered where the socket is; requests reach the owner.
            assert (await pat.request({"type": "ping"}, "p1"))["type"] == "pong"
            answer = await pat.request({"type": "mute", "track_id": "nope", "muted": True}, "m")
            assert answer["code"] == "not-found"


async def test_a_join_token_is_decoded_once_wherever_the_room_is(
    replicas: list[Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replica the client reached decodes the token and checks it; the
    owner takes the grant that comes with the frame."""
    a, b = replicas
    decoded: list[str] = []

    def decode(settings: Settings, tok: str) -> RoomGrant:
        grant = auth.decode_room_token(settings, tok)
        decoded.append(grant.identity)
        return grant

    monkeypatch.setattr(opening, "decode_room_token", decode)
    name = room()
    async with (
        joined(a, token(a, "dr-amina", "doctor", room=name)) as (_doc, dj),
        joined(b, token(b, "pt-bilal", room=name)) as (_pat, pj),
    ):
        assert (dj["type"], pj["type"]) == ("joined", "joined")
        assert decoded == ["dr-amina", "pt-bilal"]


async def test_removal_on_one_replica_holds_on_the_other(replicas: list[Api]) -> None:
    a, b = replicas
    name = room()
    async with joined(a, token(a, "dr-amina", "doctor", room=name)) as (doc, _dj):
        async with joined(b, token(b, "pt-bilal", room=name)) as (pat, pj):
            ok = await doc.request(
                {"type": "remove", "participant_id": pj["participant"]["id"]}, "r"
            )
            assert ok["type"] == "ok"
            await pat.type("removed")
            assert await pat.closed_with() == 4403
        # The same link through the other replica: the waiting room.
        async with joined(b, token(b, "pt-bilal", room=name)) as (_again, aj):
            assert aj["type"] == "waiting"
            waiting = await doc.type("waiting")
            assert [w["identity"] for w in waiting["waiting"]] == ["pt-bilal"]


async def test_a_replica_going_away_hands_its_rooms_over(replicas: list[Api]) -> None:
    a, b = replicas
    name = room()
    async with connect(a) as doc:
        dj = await doc.request(
            {"type": "join", "token": token(a, "dr-amina", "doctor", room=name)}, "j"
        )
        async with joined(b, token(b, "pt-bilal", room=name)) as (pat, pj):
            # A owns the room (the doctor came first); it shuts down.
            await a.client.close()
            assert await doc.closed_with() == 1001
            # The doctor resumes through B: the same participant.
            async with connect(b) as again:
                frame = {"type": "join", "token": token(b, "dr-amina", "doctor", room=name),
                         "resume": dj["session"]}  # fmt: skip
                back = await again.request(frame, "j2")
                assert back["type"] == "joined"
                assert back["participant"]["id"] == dj["participant"]["id"]
                assert [p["id"] for p in back["participants"]] == [pj["participant"]["id"]]
                # The patient, on B all along, saw nobody leave.
                assert not [f for f in pat.frames if f.get("type") == "participant_left"]


async def test_messages_to_a_replica_not_listening_are_held_in_order(redis_server: Any) -> None:
    """As after a Redis failover, when a replica's subscription is still
    coming back: what is sent to it meanwhile arrives once it listens, in
    the order sent; what is sent to a replica that never listens again is
    dropped after HOLD seconds, and later messages are not held behind it."""
    redis = aioredis.from_url(redis_server.url)
    sender = Cluster(redis, lease=3.0, replica_id="api-sender")
    receiver = Cluster(redis, lease=3.0, replica_id="api-late")
    heard: list[dict[str, Any]] = []
    await sender.start(lambda _m: None)
    try:
        for i in range(5):
            sender.send("api-late", {"k": "out", "n": i})
            sender.send("api-gone", {"k": "out", "n": i})
        await asyncio.sleep(1.0)
        await receiver.start(heard.append)
        for i in range(5, 8):
            sender.send("api-late", {"k": "out", "n": i})
        await wait_until(lambda: len(heard) == 8, 5.0)
        assert [m["n"] for m in heard] == list(range(8))
        # The gone replica's messages are given up on, not held forever.
        await wait_until(lambda: "wadud:call:replica:api-gone" not in sender._held, HOLD + 2.0)
    finally:
        await receiver.close()
        await sender.close()
        await redis.aclose()


async def test_a_lease_lost_in_a_failover_does_not_take_the_room_from_its_live_owner(
    replicas: list[Api], redis_server: Any
) -> None:
    """After a Redis failover the promoted replica may lack a room's lease
    while its owner lives and has not renewed it yet. A join through the
    other replica then goes to the owner the room's snapshot names, instead
    of claiming the room (a takeover every page in the call would feel)."""
    a, b = replicas
    name = room()
    calls_a, calls_b = a.app[CALLS], b.app[CALLS]
    assert calls_a.rooms.replicas is not None and calls_b.rooms.replicas is not None
    async with joined(a, token(a, "dr-amina", "doctor", room=name)) as (doc, _):
        owner = calls_a.rooms.replicas.cluster.replica
        redis = aioredis.from_url(redis_server.url, decode_responses=True)
        try:
            assert await redis.get(OWNER_KEY.format(room=name)) == owner
            # The room's snapshot is written (a moment after the change).
            for _ in range(50):
                state = await redis.get(STATE_KEY.format(room=name))
                if state and json.loads(state).get("owner") == owner:
                    break
                await asyncio.sleep(0.05)
            # The failover: the lease is gone, and B has seen Redis fail.
            await redis.delete(OWNER_KEY.format(room=name))
            calls_b.rooms.replicas._redis_failed = True
            async with joined(b, token(b, "pt-bilal", room=name)) as (_, pj):
                assert pj["type"] == "joined", pj
                arrived = await doc.type("participant_joined")
                assert arrived["participant"]["id"] == pj["participant"]["id"]
                # A still runs the room, and claims its lease again itself.
                assert name in calls_a.rooms and name not in calls_b.rooms
                for _ in range(50):
                    if await redis.get(OWNER_KEY.format(room=name)) == owner:
                        break
                    await asyncio.sleep(0.1)
                assert await redis.get(OWNER_KEY.format(room=name)) == owner
        finally:
            await redis.aclose()


async def test_another_redis_answering_is_noticed_between_two_rounds(redis_server: Any) -> None:
    """A Sentinel failover or a Redis restart between two watcher rounds may
    raise nothing (the client retries on a new connection), yet the server
    answering knows none of the subscriptions: its run id tells, and the
    watcher settles before it takes a missing subscriber for a dead worker."""
    redis = redis_client(redis_server.url, decode_responses=True)
    cluster = Cluster(redis, lease=1.0)
    try:
        assert not await cluster.server_changed()  # the first answer is the mark
        assert not await cluster.server_changed()
        redis_server.stop()
        redis_server.start()

        async def answer() -> str | None:
            try:
                return "changed" if await cluster.server_changed() else "same"
            except RedisError:
                return None  # a connection to the old server, dropped

        assert await wait_until(answer, within=10) == "changed"
        assert not await cluster.server_changed()
    finally:
        await redis.aclose()


async def test_a_room_joined_again_as_it_ends_starts_afresh(replicas: list[Api]) -> None:
    """A room that ended here is deleted from Redis a moment later (the
    snapshot writer's batch). A join in that moment must start a new call:
    restored from the ended one's snapshot, it held the participants who had
    left and their unanswered subscribe offers, and the new subscriber's
    answer went to that restored room (the cluster soak: every patient of a
    room that had just ended heard nothing)."""
    a, _b = replicas
    name = room()
    calls = a.app[CALLS]
    assert calls.rooms.replicas is not None
    async with joined(a, token(a, "dr-amina", "doctor", room=name)):
        redis = calls.rooms.replicas.cluster.redis
        await wait_until(lambda: redis.get(STATE_KEY.format(room=name)), within=5)
        # The room ends (as when its last participant leaves), and a join
        # for it comes before the writer has deleted its snapshot.
        calls.rooms.drop_room(calls.rooms[name])
        assert await redis.get(STATE_KEY.format(room=name)) is not None
        assert await calls.rooms.replicas.own(name)
        assert name not in calls.rooms

        # The ended room's snapshot goes; the lease stays with the new call
        # (let go, the other replica would have claimed the room for the
        # next patient: "no participant" when the doctor admitted them).
        async def deleted() -> bool:
            return await redis.get(STATE_KEY.format(room=name)) is None

        await wait_until(deleted, within=5)
        assert await redis.get(OWNER_KEY.format(room=name)) == calls.rooms.replicas.cluster.replica
