"""Issue 12, finding 4 under load: 20 concurrent wrong passwords took the
server from 124 MB to 517 MB (argon2id's 64 MiB each) and slowed unrelated
requests to 1.5 s.

Here 200 concurrent wrong passwords hit a real ``wadud serve`` process with
the guessing limits turned off (the worst case: guesses from as many
addresses at as many accounts), so every one of them reaches the hashing
pool; its resident memory stays under 300 MB and a doctor search meanwhile
answers in under 100 ms. The pool holds two hashes at a time, so the
burst would take some twenty seconds to drain; the test watches its first
few seconds, with all 200 in the server, and then stops the server.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from benchmarks.common import answers_ready
from tests.wadud.processes import serve_on_free_ports

BIN = Path(sys.executable).parent
RSS_LIMIT = 300 * 1024 * 1024
SEARCH_LIMIT = 0.100


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[tuple[str, int]]:
    url, proc = serve_on_free_ports(
        database_url,
        tmp_path,
        # Every guess reaches the hashing pool: what the pool alone must hold.
        WADUD_LIMITS_LOGIN_ACCOUNT_FREE="0",
        WADUD_LIMITS_LOGIN_ADDRESS_FREE="0",
        WADUD_LIMITS_REGISTER_BURST="0",
        # 200 guesses queue behind two slots; none should be turned away here.
        WADUD_AUTH_HASH_WAIT="60",
    )
    try:
        yield url, proc.pid
    finally:
        proc.kill()  # the rest of the queued guesses need not drain
        proc.wait(20)


async def test_200_concurrent_wrong_passwords_keep_memory_and_latency(
    server: tuple[str, int],
) -> None:
    base, pid = server
    proc = psutil.Process(pid)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:
        assert await answers_ready(s, base, 20), "server did not become ready"
        email = "target@example.test"
        async with s.post(
            base + "/api/v1/auth/register", json={"email": email, "password": "the real one!"}
        ) as r:
            assert r.status == 201
        for _ in range(3):  # warm: routes, pools, the first search plan
            async with s.get(base + "/api/v1/doctors") as r:
                assert r.status == 200
        before = proc.memory_info().rss

        peak = before
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, proc.memory_info().rss)
                await asyncio.sleep(0.01)

        statuses: list[int] = []

        async def guess(i: int) -> None:
            body = {"email": email, "password": f"wrong guess {i}"}
            async with s.post(base + "/api/v1/auth/login", json=body) as r:
                await r.read()
                statuses.append(r.status)

        async def search() -> float:
            start = time.perf_counter()
            async with s.get(base + "/api/v1/doctors") as r:
                await r.read()
                assert r.status == 200
            return time.perf_counter() - start

        sampler = asyncio.create_task(sample())
        guesses = [asyncio.create_task(guess(i)) for i in range(200)]
        await asyncio.sleep(0.5)  # the burst is in: the pool is full, the queue long
        searches = []
        for _ in range(20):
            searches.append(await search())
            await asyncio.sleep(0.2)
        done.set()
        await sampler
        answered = len(statuses)
        for task in guesses:
            task.cancel()
        await asyncio.gather(*guesses, return_exceptions=True)

    print(
        f"\n{answered} of 200 guesses answered in the window;"
        f" RSS before {before / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB;"
        f" search during the burst: median {statistics.median(searches) * 1000:.1f} ms,"
        f" max {max(searches) * 1000:.1f} ms"
    )
    assert answered >= 2 and set(statuses) == {401}  # each a real check, none turned away
    assert peak < RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
    # Two shared CPUs: one search may meet a scheduling hiccup; nine in ten may not.
    assert statistics.median(searches) < SEARCH_LIMIT, searches
    assert sum(t < SEARCH_LIMIT for t in searches) >= 18, searches
