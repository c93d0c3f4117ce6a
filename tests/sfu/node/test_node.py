"""``wadud media`` as real processes: a supervisor and two workers, a real Redis.

Each test starts the node in its own process group (``start_new_session``)
and stops it by that group, so nothing outlives the test. Heartbeats and the
registry TTL are shortened to keep the tests quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
import pytest
import redis.asyncio as aioredis

from sfu.control import registry
from sfu.control.rpc import EVENTS, MediaClient
from tests.conftest import free_port
from tests.wadud.stopping import media_role, peers, stop_with_peers_killed

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class MediaNode:
    node: str
    http: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def wids(self, count: int = 2) -> list[str]:
        return [f"{self.node}-{i}" for i in range(count)]

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """SIGKILL the node's process group (ours: it was started in a new session)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def start_media_node(
    redis_url: str,
    tmp: Path,
    *,
    workers: int = 2,
    env: dict[str, str] | None = None,
    udp_port: int = 0,
    http: int = 0,
) -> MediaNode:
    """``wadud media --region test --workers N`` logging JSON to a file, on free
    ports unless ``udp_port`` (worker 0's) or ``http`` say which."""
    node = "n" + secrets.token_hex(3)
    http = http or free_port()
    log = tmp / f"{node}.log"
    full_env = {
        # WADUD_NATIVE passes through: CI runs these again on the Python loops.
        **{
            k: v for k, v in os.environ.items() if not k.startswith("WADUD_") or k == "WADUD_NATIVE"
        },
        "WADUD_REDIS_URL": redis_url,
        "WADUD_DATA_DIR": str(tmp),
        "WADUD_MEDIA_HEARTBEAT": "0.3",
        "WADUD_MEDIA_WORKER_TTL": "1.5",
        "WADUD_MEDIA_DRAIN_TIMEOUT": "20",
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    argv = [
        str(Path(sys.executable).parent / "wadud"), "media", "--region", "test",
        "--workers", str(workers), "--http", f"127.0.0.1:{http}", "--udp-port", str(udp_port),
        "--node-id", node,
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, env=full_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return MediaNode(node, http, proc, log)


@pytest.fixture
async def redis(redis_server: Any) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def media_node(redis_server: Any, tmp_path: Path) -> Iterator[MediaNode]:
    node = start_media_node(redis_server.url, tmp_path)
    try:
        yield node
    finally:
        node.stop()


class Events:
    """The events channel, heard from before the node acts."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self.items: list[dict[str, Any]] = []

    async def start(self) -> None:
        await self.pubsub.subscribe(EVENTS)

    async def wait(
        self, limit: float = 10.0, *, unlike: dict[str, str] | None = None, **match: str
    ) -> dict[str, Any]:
        """The first message with ``match``'s values and none of ``unlike``'s."""
        async with asyncio.timeout(limit):
            while True:
                for item in self.items:
                    if all(item.get(k) == v for k, v in match.items()) and not any(
                        item.get(k) == v for k, v in (unlike or {}).items()
                    ):
                        return item
                msg = await self.pubsub.get_message(timeout=0.2)
                if msg is not None:
                    self.items.append(json.loads(msg["data"]))

    async def close(self) -> None:
        await self.pubsub.aclose()


@pytest.fixture
async def events(redis: aioredis.Redis) -> AsyncIterator[Events]:
    heard = Events(redis)
    await heard.start()
    yield heard
    await heard.close()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def wait_ready(node: MediaNode, limit: float = 30.0) -> None:
    body = ""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if node.proc.poll() is not None:
            raise AssertionError(f"wadud media exited {node.proc.returncode}: {node.tail()}")
        with contextlib.suppress(aiohttp.ClientError):
            status, body = await get(node.url + "/readyz")
            if status == 200:
                return
        await asyncio.sleep(0.1)
    # What the node said of its workers first: a rerun's summary keeps only
    # the start of the message (ci55 lost why two workers never registered).
    tail = node.tail()
    said = [ln for ln in tail.splitlines() if "worker" in ln or '"level": "error"' in ln]
    raise AssertionError(f"not ready in {limit:.0f} s: {body}; {said}\n{tail}")


async def mine(redis: aioredis.Redis, node: MediaNode) -> dict[str, registry.WorkerInfo]:
    return {w.worker: w for w in await registry.workers(redis, "test") if w.node == node.node}


async def wait_exit(
    proc: subprocess.Popen[bytes], limit: float, tail: Callable[[], str] = lambda: ""
) -> int:
    """``proc``'s exit code; AssertionError after ``limit`` seconds, with
    ``tail()`` (the end of the process's log): it says where a stop waits
    ("stop: cleanup waits past ...")."""
    end = time.monotonic() + limit
    while (code := proc.poll()) is None:
        if time.monotonic() > end:
            raise AssertionError(f"the process did not exit\n{tail()}")
        await asyncio.sleep(0.05)
    return code


def test_media_needs_redis(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "wadud"), "media", "--region", "test"],
        env={**env, "WADUD_DATA_DIR": str(tmp_path)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "WADUD_REDIS_URL" in proc.stderr


async def test_node_registers_serves_metrics_answers_and_drains(
    media_node: MediaNode, redis: aioredis.Redis, events: Events
) -> None:
    await wait_ready(media_node)
    workers = await mine(redis, media_node)
    assert sorted(workers) == media_node.wids()
    for i, wid in enumerate(media_node.wids()):
        w = workers[wid]
        assert (w.region, w.index, w.host, w.state) == ("test", i, "127.0.0.1", "ready")
        assert w.port > 0 and len(w.incarnation) == 16 and w.capacity > 0
    assert len({w.port for w in workers.values()}) == 2

    status, body = await get(media_node.url + "/healthz")
    assert status == 200
    assert set(json.loads(body)["workers"]) == set(media_node.wids())
    status, body = await get(media_node.url + "/metrics")
    assert status == 200
    for wid in media_node.wids():
        assert re.search(rf'^sfu_transports\{{worker="{wid}"\}} 0\.0$', body, re.M), body[:2000]
    assert "wadud_media_workers_running 2.0" in body
    # Tasks on each worker's loop and on the supervisor's (unlabelled), in one family.
    for wid in media_node.wids():
        assert re.search(rf'^wadud_asyncio_tasks\{{worker="{wid}"\}} [1-9]', body, re.M), body
    assert re.search(r"^wadud_asyncio_tasks [1-9]", body, re.M), body[-2000:]
    assert body.count("# TYPE wadud_asyncio_tasks ") == 1

    # Control through Redis reaches the worker process that registered.
    first = workers[media_node.wids()[0]]
    async with MediaClient(redis, "test-" + secrets.token_hex(4), timeout=5.0) as client:
        pong = await client.remote(first.worker, first.incarnation).ping()
        assert pong == {"worker": first.worker, "incarnation": first.incarnation, "transports": 0}

    # A room placed on worker 0 holds its drain until it moves away.
    held = registry.rooms_key(first.worker)
    await redis.sadd(held, "a-room")
    try:
        media_node.proc.send_signal(signal.SIGTERM)
        for wid in media_node.wids():
            await events.wait(worker=wid, lifecycle="draining")
        assert {w.state for w in (await mine(redis, media_node)).values()} == {"draining"}
        status, body = await get(media_node.url + "/readyz")
        assert status == 503 and json.loads(body)["status"] == "draining"
        await events.wait(worker=media_node.wids()[1], lifecycle="stopped")
        await asyncio.sleep(0.5)
        assert media_node.proc.poll() is None, "exited while a room was still placed on it"
    finally:
        await redis.delete(held)
    assert await wait_exit(media_node.proc, 10.0, media_node.tail) == 0
    await events.wait(worker=first.worker, incarnation=first.incarnation, lifecycle="stopped")
    assert await mine(redis, media_node) == {}


async def test_a_signal_to_the_whole_group_drains_through_the_supervisor(
    media_node: MediaNode, redis: aioredis.Redis, events: Events
) -> None:
    """Ctrl-C in a terminal (SIGINT to the process group), repeated: the workers
    ignore it and drain when the supervisor orders it, so none is taken for a
    crash and restarted, and the node exits 0."""
    await wait_ready(media_node)
    before = await mine(redis, media_node)
    for _ in range(3):
        os.killpg(media_node.proc.pid, signal.SIGINT)
        await asyncio.sleep(0.05)
    for wid in media_node.wids():
        await events.wait(worker=wid, incarnation=before[wid].incarnation, lifecycle="stopped")
    assert await wait_exit(media_node.proc, 10.0, media_node.tail) == 0, media_node.tail()
    log = media_node.log.read_text(errors="replace")
    assert "restarting" not in log and "failed to drain" not in log, media_node.tail()
    assert log.count('"media worker started"') == 2, media_node.tail()


async def test_a_killed_worker_is_restarted_as_a_new_incarnation(
    media_node: MediaNode, redis: aioredis.Redis, events: Events
) -> None:
    await wait_ready(media_node)
    before = await mine(redis, media_node)
    _, body = await get(media_node.url + "/healthz")
    pids = json.loads(body)["workers"]
    victim = media_node.wids()[0]
    killed_at = time.monotonic()
    os.kill(pids[victim], signal.SIGKILL)

    stopped = await events.wait(5.0, worker=victim, lifecycle="stopped")
    assert stopped["incarnation"] == before[victim].incarnation
    noticed = time.monotonic() - killed_at
    assert noticed < 2.0, f"'stopped' came {noticed:.1f} s after the kill"
    old = {"incarnation": before[victim].incarnation}
    ready = await events.wait(20.0, unlike=old, worker=victim, lifecycle="ready")
    await wait_ready(media_node)
    after = await mine(redis, media_node)
    assert after[victim].incarnation == ready["incarnation"]
    # The other worker was left alone.
    other = media_node.wids()[1]
    assert after[other].incarnation == before[other].incarnation
    _, text = await get(media_node.url + "/metrics")
    assert f'wadud_media_worker_restarts_total{{worker="{victim}"}} 1.0' in text


async def test_workers_die_with_a_killed_supervisor(media_node: MediaNode) -> None:
    await wait_ready(media_node)
    _, body = await get(media_node.url + "/healthz")
    pids = list(json.loads(body)["workers"].values())
    assert len(pids) == 2
    os.kill(media_node.proc.pid, signal.SIGKILL)
    media_node.proc.wait(5)

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    end = time.monotonic() + 2.0
    while not all(gone(p) for p in pids):
        assert time.monotonic() < end, "workers outlived their supervisor"
        await asyncio.sleep(0.05)


async def test_a_node_whose_redis_was_killed_stops_at_once(tmp_path: Path) -> None:
    """SIGTERM drains, but with Redis gone no owner can move a room and a
    worker with no transport has nothing to lose: the node exits 0 at once
    instead of waiting out media_drain_timeout, with no error line."""
    with peers(tmp_path, postgres=False) as found:
        node = media_role(tmp_path, found, WADUD_MEDIA_DRAIN_TIMEOUT="20")
        code = await stop_with_peers_killed(node, found, 10.0)
        print(f"wadud media stopped in {node.stop_seconds:.2f} s after SIGTERM")
        assert code == 0, node.text()[-3000:]
        assert node.bad_lines("media node draining") == [], node.text()[-3000:]
        assert "media node stopped" in node.text()
