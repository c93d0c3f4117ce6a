from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bin.assembly import build_app
from tests.conftest import RedisServer
from tests.polling import wait_until
from wadud.config import Settings
from wadud.messaging import bus, outbox
from wadud.state import keys


async def _exercise(b: bus.Bus) -> None:
    sub = await b.subscribe("t1", "t2")
    await b.publish("t1", {"n": 1, "text": "سلام"})
    await b.publish("other", {"n": 0})
    await b.publish("t2", {"n": 2})
    got = []
    async for msg in sub:
        got.append((msg.topic, msg.data["n"]))
        if len(got) == 2:
            break
    assert got == [("t1", 1), ("t2", 2)]
    await sub.close()
    first = await b.append("s", {"i": 1})
    await b.append("s", {"i": 2})
    entries = await b.read("s", "0")
    assert [e[1]["i"] for e in entries] == [1, 2]
    assert [e[1]["i"] for e in await b.read("s", first)] == [2]
    waiter = asyncio.create_task(b.read("s", entries[-1][0], block=2.0))
    await asyncio.sleep(0.1)
    await b.append("s", {"i": 3})
    assert [e[1]["i"] for e in await waiter] == [3]
    # Each read is the reader's own: changing what one got changes nothing
    # for the next (a stream holds encoded entries, as Redis does).
    mine = await b.read("s", "0")
    mine[0][1]["i"] = 99
    assert [e[1]["i"] for e in await b.read("s", "0")] == [1, 2, 3]
    # What is published to a topic nobody listens to reaches no later
    # subscriber either.
    await b.publish("t3", {"n": 3})
    late = await b.subscribe("t3")
    await b.publish("t3", {"n": 4})
    msg = await asyncio.wait_for(anext(aiter(late)), 2)
    assert msg.data == {"n": 4}
    await late.close()
    # A batch: published and appended in order, in one call.
    sub = await b.subscribe("b1", "b2")
    await b.publish_all([("b1", {"k": 1}), ("b2", {"k": 2}), ("b1", {"k": 3})], stream="sb")
    got = []
    async for msg in sub:
        got.append((msg.topic, msg.data["k"]))
        if len(got) == 3:
            break
    assert got == [("b1", 1), ("b2", 2), ("b1", 3)]
    assert [e[1]["k"] for e in await b.read("sb", "0")] == [1, 2, 3]
    await sub.close()


async def test_local_bus() -> None:
    b = bus.LocalBus()
    await _exercise(b)
    await b.close()


async def test_redis_bus(redis_server: RedisServer) -> None:
    b = bus.RedisBus(redis_server.url)
    await b.redis.flushdb()
    await _exercise(b)
    await b.close()


@pytest.mark.parametrize("use_redis", [False, True])
async def test_outbox_publishes_only_committed(
    settings: Settings, redis_server: RedisServer, use_redis: bool
) -> None:
    if use_redis:
        settings = dataclasses.replace(settings, redis_url=redis_server.url)
    app = build_app(settings)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        b = app[keys.BUS]
        assert isinstance(b, bus.RedisBus if use_redis else bus.LocalBus)
        sub = await b.subscribe("test.event")
        pool = app[keys.DB]
        async with pool.acquire() as conn:
            tr = conn.transaction()
            await tr.start()
            await outbox.emit(conn, "test.event", {"n": "rolled back"})
            await tr.rollback()
            async with conn.transaction():
                await outbox.emit(conn, "test.event", {"n": "committed"})
        it = aiter(sub)
        msg = await asyncio.wait_for(anext(it), 5)
        assert msg.data["data"] == {"n": "committed"}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(it), 0.5)
        pending = await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        assert pending == 0
        # The session's Redis holds the stream of every test before this one
        # on the worker: read all of it, not the first page.
        replay = await b.read(outbox.STREAM, "0", count=bus.STREAM_MAXLEN)
        assert [e[1]["data"] for e in replay if e[1]["topic"] == "test.event"][-1] == {
            "n": "committed"
        }
        await sub.close()
    finally:
        await client.close()


async def test_an_event_is_relayed_when_its_transaction_ends_not_at_the_poll(
    settings: Settings,
) -> None:
    """No NOTIFY from writers: the process's relay learns of the event from
    outbox.written and publishes it once the transaction committed, long
    before its poll (60 s here); inside the transaction nothing goes out."""
    app = build_app(dataclasses.replace(settings, outbox_poll_interval=60.0))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        sub = await app[keys.BUS].subscribe("test.prompt")
        it = aiter(sub)
        async with app[keys.DB].acquire() as conn:
            first = asyncio.ensure_future(anext(it))
            async with conn.transaction():
                await outbox.emit(conn, "test.prompt", {"n": 1})
                await asyncio.sleep(0.3)
                assert not first.done()
            msg = await asyncio.wait_for(first, 2.0)
            assert msg.data["data"] == {"n": 1}
            # A statement outside any transaction is relayed at once too.
            await outbox.emit(conn, "test.prompt", {"n": 2})
            msg = await asyncio.wait_for(anext(it), 2.0)
            assert msg.data["data"] == {"n": 2}
        await sub.close()
    finally:
        await client.close()


async def test_a_renewed_subscription_loses_and_repeats_nothing(redis_server: RedisServer) -> None:
    """renew() swaps the connection while messages wait unread on the old
    one (a reader busy elsewhere, a replica's answers after a failover):
    every message comes once, in order, and another subscriber of the topic
    sees only the messages."""
    b = bus.RedisBus(redis_server.url)
    sub = await b.subscribe("renewed", "renewed-2")
    other = await b.subscribe("renewed")
    it, seen = aiter(sub), aiter(other)
    await b.publish("renewed", {"n": 0})
    assert (await asyncio.wait_for(anext(it), 5)).data == {"n": 0}
    for n in range(1, 51):
        await b.publish("renewed" if n % 2 else "renewed-2", {"n": n})
    renewing = asyncio.create_task(sub.renew(5))
    await asyncio.sleep(0)  # the renewal is asked for before the next read
    got = [(await asyncio.wait_for(anext(it), 5)).data["n"] for _ in range(50)]
    assert await renewing
    assert got == list(range(1, 51))
    # Nothing of the old connection's comes twice through the new one.
    await b.publish("renewed", {"n": 51})
    assert (await asyncio.wait_for(anext(it), 5)).data == {"n": 51}
    # The other subscriber had every message on the topic, and no marker.
    odd = [(await asyncio.wait_for(anext(seen), 5)).data["n"] for _ in range(27)]
    assert odd == [0, *range(1, 51, 2), 51]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(seen), 0.3)
    await sub.close()
    await other.close()
    await b.close()


async def test_a_process_with_no_relay_wakes_the_others_once_its_writer_committed(
    settings: Settings,
) -> None:
    """A worker role (no relay of its own) announces what it wrote: one
    NOTIFY on the outbox channel after the commit, none inside the
    transaction, so another process's relay publishes it at once rather
    than at its poll."""
    from wadud.state import db

    heard: list[str] = []
    async with db.pool(settings, settings.database_url) as pool:
        assert not outbox._RELAYS, "a relay in this process would take the event itself"
        listener = outbox.Listener(pool, heard.append)
        await listener.ensure()
        try:
            async with outbox.announcing(pool) as announcer, pool.acquire() as conn:
                async with conn.transaction():
                    await outbox.emit(conn, "test.announced", {"n": 1})
                    # The writer's transaction holds it: nothing is sent yet.
                    await outbox.emit(conn, "test.announced", {"n": 2})
                    assert announcer.sent == 0
                await wait_until(lambda: outbox.WRITTEN in heard, within=5)
                assert announcer.sent == 1
        finally:
            await listener.close()
        await pool.execute("DELETE FROM outbox WHERE topic = 'test.announced'")


async def test_a_bus_away_is_said_once_and_its_events_wait_in_the_outbox(
    settings: Settings, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stopped: the relay says so once, as a warning with no traceback,
    however many commits wake it meanwhile (a chat test's node logged a
    traceback at ERROR for each of 107 in 5 s); the events wait in the
    outbox, and go out once Redis is back, which it says too."""
    caplog.set_level(logging.INFO, logger="wadud.outbox")
    app = build_app(
        dataclasses.replace(settings, redis_url=redis_server.url, outbox_poll_interval=0.3)
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    pool = app[keys.DB]

    def said() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "wadud.outbox"]

    try:
        redis_server.stop()
        try:
            async with pool.acquire() as conn:
                for n in range(20):
                    # Outside a transaction: each commits, and wakes the relay.
                    await outbox.emit(conn, "test.away", {"n": n})
                    await asyncio.sleep(0.05)
            await wait_until(said, within=10)
            pending = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            assert await pool.fetchval(pending) >= 20
        finally:
            redis_server.start()
        await wait_until(lambda: len(said()) == 2, within=15)
        assert await pool.fetchval(pending) == 0
        records = said()
        assert [r.levelname for r in records] == ["WARNING", "INFO"], records
        assert "cannot be reached" in records[0].getMessage()
        assert all(r.exc_info is None for r in records)
    finally:
        await client.close()
