"""The simulated-regions harness itself (tests/regions.py): delays, loss,
counters and services behind the userspace bridge, measured from inside the
namespaces. The wadud topology on top of it is tested in
tests/signalling/test_regions.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.polling import wait_until
from tests.regions import (
    Regions,
    start_postgres,
    start_redis,
    unavailable_reason,
    wait_tcp,
    where_tasks_are,
)
from wadud_client.network import widen_receive_buffer

ECHO_PORT = 7000


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Regions]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    r = Regions(tmp_path_factory.mktemp("regions"), ["pk", "ae", "sa", "db"], seed=7)
    r.start()
    try:
        yield r
    finally:
        r.close()
    assert not any(Path("/run/netns", ns).exists() for ns in r.namespaces)


async def _echo_server(address: str, port: int) -> None:
    loop = asyncio.get_running_loop()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(data, addr)  # type: ignore[attr-defined]

    # A blast's datagrams come at once after the pair's delay: a default
    # buffer held 762 of 787 on a starved run (ci169), the rest dropped.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    widen_receive_buffer(sock, 4 << 20)
    sock.bind((address, port))
    await loop.create_datagram_endpoint(Echo, sock=sock)


@pytest.fixture(scope="module")
def echo(regions: Regions) -> None:
    """A UDP echo server in ``ae`` and one in ``sa``."""
    for host in ("ae", "sa"):
        addr = regions[host].address
        regions.loop(host).call(lambda addr=addr: _echo_server(addr, ECHO_PORT))  # type: ignore[misc]


async def _udp_rtts(address: str, count: int, *, wait: float = 2.0) -> list[float | None]:
    """``count`` ping-pongs to an echo server, one at a time: each RTT, or None if lost."""
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            got.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(address, ECHO_PORT))
    out: list[float | None] = []
    try:
        for i in range(count):
            tag = i.to_bytes(4, "big") + os.urandom(60)
            t0 = time.monotonic()
            transport.sendto(tag)
            try:
                while (await asyncio.wait_for(got.get(), wait)) != tag:
                    pass
                out.append(time.monotonic() - t0)
            except TimeoutError:
                out.append(None)
    finally:
        transport.close()
    return out


@pytest.mark.usefixtures("echo")
async def test_round_trip_times_follow_the_configured_delays(regions: Regions) -> None:
    for dst, want in (("ae", 0.080), ("sa", 0.120)):
        rtts = await regions.run_in("pk", lambda dst=dst: _udp_rtts(regions[dst].address, 12))  # type: ignore[misc]
        got = [r for r in rtts[2:] if r is not None]  # the first pays for ARP
        median = statistics.median(got)
        print(f"\npk<->{dst} RTT median {median * 1000:.1f} ms, max {max(got) * 1000:.1f} ms")
        assert len(got) == 10
        assert want <= median < want + 0.040, (dst, median)
        assert 2 * regions.delay("pk", dst) == pytest.approx(want)


#: Seconds with no echo after which a lossy blast's echoes are all in.
QUIET = 1.0


async def _blast(address: str, count: int, port: int = ECHO_PORT, *, lossy: bool = False) -> int:
    """Send ``count`` datagrams (paced a little), then count the echoes back:
    all ``count`` of them, or (``lossy``) as many as come before ``QUIET``
    seconds pass without one; within 10 s either way. On a busy machine the
    echoes come back late, and a burst of them at once (its socket buffer
    holds one)."""
    loop = asyncio.get_running_loop()
    seen = 0
    last = loop.time()
    echo = asyncio.Event()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            nonlocal seen, last
            seen += 1
            last = loop.time()
            echo.set()

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # The bridge hands back a burst's echoes at once, after the pair's delay:
    # a default buffer holds 256 of them, and the kernel drops the rest.
    widen_receive_buffer(sock, 4 << 20)
    sock.connect((address, port))
    transport, _ = await loop.create_datagram_endpoint(Client, sock=sock)
    try:
        for i in range(count):
            transport.sendto(i.to_bytes(4, "big") + b"x" * 100)
            if i % 50 == 49:
                await asyncio.sleep(0.005)
        if not lossy:
            with contextlib.suppress(TimeoutError):
                await wait_until(lambda: seen >= count, within=10.0)
            return seen
        last = loop.time()
        deadline = last + 10.0
        while (now := loop.time()) < (until := min(deadline, last + QUIET)):
            echo.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(echo.wait(), until - now)
        return seen
    finally:
        transport.close()


@pytest.mark.usefixtures("echo")
async def test_loss_is_seeded_per_region_pair_and_counted(regions: Regions) -> None:
    bridge = regions.bridge
    await regions.run_in("pk", lambda: _udp_rtts(regions["ae"].address, 1))  # ARP first
    bridge.reset()
    bridge.set_loss("pk", "ae", 0.2)
    try:
        echoed = await regions.run_in("pk", lambda: _blast(regions["ae"].address, 1000, lossy=True))
        # pk->ae is counted at the bridge before the draw: all 1000 arrive
        # there, about a fifth are dropped, and the echoes meet the loss again.
        there = bridge.count("pk", "ae", "udp", dport=ECHO_PORT)
        back = bridge.count("ae", "pk", "udp", sport=ECHO_PORT)
        print(f"\n20% loss: {there.dropped}/{there.packets} dropped pk->ae,"
              f" {back.dropped}/{back.packets} ae->pk, {echoed} echoes")  # fmt: skip
        assert there.packets == 1000
        assert 140 < there.dropped < 260
        assert back.packets == 1000 - there.dropped
        assert echoed == back.packets - back.dropped
        # Other pairs keep no loss.
        sa = await regions.run_in("pk", lambda: _blast(regions["sa"].address, 200))
        assert sa == 200
    finally:
        bridge.set_loss("pk", "ae", 0.0)
    assert await regions.run_in("pk", lambda: _blast(regions["ae"].address, 300)) == 300


async def _tcp_sink(address: str, port: int, digests: asyncio.Queue[str]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h = hashlib.sha256()
        while chunk := await reader.read(1 << 16):
            h.update(chunk)
        digests.put_nowait(h.hexdigest())
        writer.close()

    return await asyncio.start_server(handle, address, port)


async def test_bulk_tcp_crosses_intact(regions: Regions) -> None:
    """A stack that leaves segmentation and checksums to the "hardware"
    (veth offloads, nothing here to turn them off) still gets its bytes
    across: the bridge keeps the virtio header with each frame."""
    digests: asyncio.Queue[str] = asyncio.Queue()
    server = await regions.run_in("ae", lambda: _tcp_sink(regions["ae"].address, 7100, digests))
    payload = os.urandom(4 << 20)

    async def send() -> float:
        t0 = time.monotonic()
        _, writer = await asyncio.open_connection(regions["ae"].address, 7100)
        writer.write(payload)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        return time.monotonic() - t0

    took = await regions.run_in("pk", send)

    async def digest() -> str:
        return await asyncio.wait_for(digests.get(), 30)

    got = await regions.run_in("ae", digest)
    await regions.run_in("ae", lambda: _close(server))
    print(f"\n4 MiB pk->ae over TCP in {took:.2f} s")
    assert got == hashlib.sha256(payload).hexdigest()


async def _timed(call: Callable[[], Awaitable[object]]) -> float:
    t0 = time.monotonic()
    await call()
    return time.monotonic() - t0


async def _close(server: asyncio.Server) -> None:
    server.close()
    with contextlib.suppress(Exception):
        await server.wait_closed()


async def test_redis_and_postgres_in_db_are_reached_from_pk_with_the_delay(
    regions: Regions,
) -> None:
    import asyncpg
    import redis.asyncio as aioredis

    db = regions["db"].address
    servers = [start_redis(regions, "db"), start_postgres(regions, "db")]

    async def probe() -> tuple[float, float]:
        await wait_tcp(db, 6379)
        await wait_tcp(db, 5432)
        client = aioredis.from_url(f"redis://{db}:6379/0")
        try:
            await client.ping()
            redis_rtt = statistics.median([await _timed(client.ping) for _ in range(10)])
        finally:
            await client.aclose()
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = await asyncpg.connect(f"postgresql://postgres@{db}:5432/postgres")
                break
            except (OSError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            pg_rtt = statistics.median(
                [await _timed(partial(conn.fetchval, "SELECT 1")) for _ in range(10)]
            )
        finally:
            await conn.close()
        return redis_rtt, pg_rtt

    try:
        redis_rtt, pg_rtt = await regions.run_in("pk", probe)
    finally:
        # A rerun in the same module (the regions are module-scoped) starts
        # its own servers on the same ports.
        for server in servers:
            await server.stop()
    # The median of ten round trips: each carries the path's delay both ways
    # (the bridge's timers may let one go a little early), and a loaded
    # machine (the suite runs four workers) adds to some of them, so the
    # bounds say "the delay is there", not how fast this machine is.
    want = 2 * regions.delay("pk", "db")
    print(f"\nfrom pk: Redis PING {redis_rtt * 1000:.1f} ms, SELECT 1 {pg_rtt * 1000:.1f} ms")
    assert 0.9 * want <= redis_rtt < want + 0.050
    assert 0.9 * want <= pg_rtt < want + 0.050
    assert regions.bridge.count("pk", "db", "tcp", dport=6379).packets >= 11


def test_a_call_past_its_timeout_is_cancelled_and_says_where_it_waited(regions: Regions) -> None:
    """A scenario left running beside the next try of its test (a rerun on
    the same world) would take that try's CPU and network."""
    cleaned: list[str] = []

    async def far() -> None:
        await asyncio.sleep(60)

    async def scenario() -> None:
        try:
            await regions.run_in("sa", far)
        finally:
            cleaned.append("scenario")

    with pytest.raises(TimeoutError) as raised:
        regions.loop("pk").call(scenario, timeout=0.5)
    assert cleaned == ["scenario"]
    said = str(raised.value)
    assert said.startswith("scenario on pk still running after"), said
    # The caller's coroutine on its host, and what it awaited on another.
    assert "\n  pk " in said and " scenario > " in said, said
    assert "\n  sa " in said and " far > " in said, said
    # What it awaited on the other host is cancelled with it: by that host's
    # loop, in its own turn (ci61 looked before the turn came).
    regions.loop("pk").call(
        lambda: wait_until(lambda: " far > " not in where_tasks_are("sa"), within=5)
    )
