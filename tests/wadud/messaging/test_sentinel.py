"""Redis through Sentinel: the URL, and a real failover.

The failover test runs Debian's redis-server as a primary and a replica and
three redis-sentinel processes on loopback, kills the primary with SIGKILL,
and checks that the bus, a subscription made before the kill and a
rate-limit-style client all carry on against the promoted replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sentinel import FAILOVER, SERVICE, Group, available, sentinels, settled
from wadud.errors import ConfigError
from wadud.messaging.bus import (
    REDIS_CONNECTIONS,
    REDIS_POOL_WAIT,
    Message,
    RedisBus,
    SentinelURL,
    redis_client,
)

# --- the URL -------------------------------------------------------------------------------


def test_sentinel_url_names_sentinels_service_db_and_credentials() -> None:
    where = SentinelURL.parse("redis+sentinel://:p%40ss@a:26380,b,[::1]:26381/mymaster/2")
    assert where.sentinels == (("a", 26380), ("b", 26379), ("::1", 26381))
    assert where.service == "mymaster"
    assert where.db == 2
    assert (where.username, where.password) == (None, "p@ss")
    assert "p@ss" not in repr(where)
    assert SentinelURL.parse("redis+sentinel://u:pw@h:1/svc") == SentinelURL(
        (("h", 1),), "svc", 0, "u", "pw"
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel:///svc", "no sentinel host"),
        ("redis+sentinel://,/svc", "no sentinel host"),
        ("redis+sentinel://h:1", "no service name"),
        ("redis+sentinel://h:1/", "no service name"),
        ("redis+sentinel://h:x/svc", "bad port"),
        ("redis+sentinel://h:0/svc", "bad port"),
        ("redis+sentinel://h:65536/svc", "bad port"),
        ("redis+sentinel://h:/svc", "bad port"),
        ("redis+sentinel://a:1,b:x/svc", "bad port"),
        ("redis+sentinel://::1:5/svc", "bad sentinel address"),
        ("redis+sentinel://[::1/svc", "redis url"),
        ("redis+sentinel://h:1/svc/x", "not a number"),
        ("redis+sentinel://h:1/svc?db=1", "no ?options"),
    ],
)
def test_a_malformed_sentinel_url_is_a_config_error(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("?", r"\?")):
        SentinelURL.parse(url)
    with pytest.raises(ConfigError):
        redis_client(url)


async def test_a_sentinel_client_keeps_the_blocking_pool() -> None:
    from redis.asyncio import BlockingConnectionPool
    from redis.asyncio.sentinel import SentinelConnectionPool

    client = redis_client("redis+sentinel://127.0.0.1:1/svc/3", decode_responses=False)
    pool = client.connection_pool
    try:
        assert isinstance(pool, SentinelConnectionPool)
        assert isinstance(pool, BlockingConnectionPool)
        assert (pool.max_connections, pool.timeout) == (REDIS_CONNECTIONS, REDIS_POOL_WAIT)
        assert pool.connection_kwargs["db"] == 3
        assert pool.connection_kwargs["decode_responses"] is False
    finally:
        await client.aclose()


# --- a real failover -----------------------------------------------------------------------


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[Group]:
    if not available():
        pytest.skip("needs Debian's redis-server and redis-sentinel (apt-get install redis)")
    with sentinels(tmp_path) as group:
        yield group


async def _until(what: str, attempt: Any, bound: float) -> Any:
    """``await attempt()`` until it returns something other than None without
    a Redis error, for at most ``bound`` seconds."""
    from redis.exceptions import RedisError

    deadline = time.monotonic() + bound
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                found = await attempt()
            if found is not None:
                return found
        except (RedisError, OSError, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {bound} s (last error: {last!r})")


async def _receive(queue: asyncio.Queue[Message], within: float) -> Message | None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            return await queue.get()
    return None


async def test_bus_and_clients_follow_a_failover(sentinel_group: Group) -> None:
    group = sentinel_group
    await settled(group)

    bus = RedisBus(group.url)
    limits: Any = redis_client(group.url, decode_responses=False, socket_timeout=2)
    counter = limits.register_script("return redis.call('INCR', KEYS[1])")
    sub = await bus.subscribe("visits")
    received: asyncio.Queue[Message] = asyncio.Queue()

    async def listen() -> None:
        async for msg in sub:
            received.put_nowait(msg)

    listener = asyncio.create_task(listen())
    try:
        # Before: all of it against the primary.
        await bus.publish("visits", {"n": 0})
        assert await _receive(received, 10.0) == Message("visits", {"n": 0})
        await bus.redis.set("wadud:test:before", "kept")
        first = await bus.append("wadud:test:stream", {"n": 0})
        assert await counter(keys=["wadud:test:hits"]) == 1
        assert await limits.get(b"wadud:test:before") == b"kept"
        # What the primary holds is on the replica before the kill.
        assert await bus.redis.wait(1, 5000) == 1

        group.primary.send_signal(signal.SIGKILL)
        group.primary.wait(timeout=5)
        killed = time.monotonic()

        async def write_and_read() -> str | None:
            await bus.redis.set("wadud:test:after", "written")
            return await bus.redis.get("wadud:test:after")  # type: ignore[no-any-return]

        assert await _until("the bus writes again", write_and_read, FAILOVER) == "written"
        failed_over = time.monotonic() - killed
        master = await bus.redis.connection_pool.sentinel_manager.discover_master(SERVICE)
        assert master == ("127.0.0.1", group.replica_port)
        assert await bus.redis.get("wadud:test:before") == "kept"
        second = await bus.append("wadud:test:stream", {"n": 1})
        assert [e for e, _ in await bus.read("wadud:test:stream")] == [first, second]

        # The subscription made before the kill hears what is published now;
        # it comes back on its own schedule, so publish until it does.
        async def heard() -> Message | None:
            await bus.publish("visits", {"n": 1})
            return await _receive(received, 0.5)

        remaining = FAILOVER - (time.monotonic() - killed)
        assert await _until("the subscription hears", heard, max(remaining, 5.0)) == Message(
            "visits", {"n": 1}
        )

        # The rate limiter's kind of client: bytes, and a script the new
        # primary has never seen (redis-py loads it again).
        assert await _until("the limits client", lambda: limits.get(b"wadud:test:before"), 5.0)
        assert await counter(keys=["wadud:test:hits"]) == 2
        assert failed_over < FAILOVER
    finally:
        await sub.close()
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await bus.close()
        await limits.aclose()
