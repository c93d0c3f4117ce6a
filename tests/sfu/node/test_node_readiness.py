"""A media node that cannot work says so (issue 24): real ``wadud media``
processes on one host, a real Redis.

A worker whose UDP port is taken never registers, the node answers
``/readyz`` 503 naming the port, and once every worker has failed its start
retries the node exits non-zero for its supervisor to see. Retries and
backoff are shortened (``WADUD_MEDIA_START_RETRIES``,
``WADUD_MEDIA_RESTART_BACKOFF*``) to keep the tests quick; every port is
taken from 24000-24999, a quarter of it per xdist worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.conftest import worker_slot
from tests.sfu.node.test_node import MediaNode, get, mine, start_media_node, wait_exit, wait_ready

FIRST = 24000 + 250 * (worker_slot() % 4)
LAST = FIRST + 249

QUICK = {
    "WADUD_MEDIA_START_RETRIES": "3",
    "WADUD_MEDIA_RESTART_BACKOFF": "0.2",
    "WADUD_MEDIA_RESTART_BACKOFF_MAX": "0.5",
}


@pytest.fixture
async def registry(redis_server: Any) -> AsyncIterator[aioredis.Redis]:
    """The Redis the media registry lives in, as placement reads it."""
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


def _free(kind: socket.SocketKind, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(udp: int, tcp: int) -> tuple[int, list[int]]:
    """``udp`` consecutive free UDP ports (the first) and ``tcp`` free TCP ones."""
    first = next(
        p
        for p in range(FIRST + 125, LAST - udp)
        if all(_free(socket.SOCK_DGRAM, p + i) for i in range(udp))
    )
    tcps = [p for p in range(FIRST, FIRST + 125) if _free(socket.SOCK_STREAM, p)][:tcp]
    return first, tcps


@contextlib.contextmanager
def _nodes() -> Iterator[list[MediaNode]]:
    started: list[MediaNode] = []
    try:
        yield started
    finally:
        for node in started:
            node.stop()


def _lines(node: MediaNode) -> list[dict[str, Any]]:
    out = []
    for line in node.log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def _at(line: dict[str, Any]) -> float:
    """A node's log line's time (its ``ts``), in seconds."""
    return dt.datetime.fromisoformat(line["ts"]).timestamp()


async def _readyz(node: MediaNode) -> tuple[int, dict[str, Any]]:
    try:
        status, body = await get(node.url + "/readyz")
    except aiohttp.ClientError:
        return 0, {}
    return status, json.loads(body)


async def _wait_unready(
    node: MediaNode, naming: str, status: tuple[str, ...] = ("failing",), limit: float = 60.0
) -> dict[str, Any]:
    """The node's /readyz body once it is 503 with one of ``status`` and a reason
    naming ``naming``. The limit is generous: on a loaded machine each
    worker start (a fresh interpreter) can take seconds."""
    body: dict[str, Any] = {}
    end = time.monotonic() + limit
    while time.monotonic() < end:
        code, body = await _readyz(node)
        if code == 503 and body.get("status") in status and naming in body.get("reason", ""):
            return body
        assert node.proc.poll() is None, node.tail()
        await asyncio.sleep(0.1)
    raise AssertionError(f"never {status} naming {naming}: {body}\n{node.tail()}")


async def test_a_second_node_on_taken_ports_says_not_ready_then_exits_non_zero(
    redis_server: Any, registry: aioredis.Redis, tmp_path: Path
) -> None:
    port, (http_a, http_b) = _ports(2, 2)
    with _nodes() as nodes:
        first = start_media_node(redis_server.url, tmp_path, udp_port=port, http=http_a)
        nodes.append(first)
        await wait_ready(first, 60.0)
        second = start_media_node(redis_server.url, tmp_path, udp_port=port, http=http_b, env=QUICK)
        nodes.append(second)

        # Not ready, the port named in the reason; and never in the registry
        # placement reads meanwhile. How soon is the node's own clock's (a
        # loaded machine took more than 10 s to start the process at all,
        # ci172): the supervisor tries the port itself before each worker's
        # interpreter starts, so it says so within 10 s of its first line.
        body: dict[str, Any] = {}
        end = time.monotonic() + 60.0
        while time.monotonic() < end:
            assert await mine(registry, second) == {}, "a worker that cannot bind registered"
            status, body = await _readyz(second)
            if status == 503 and str(port) in body.get("reason", ""):
                break
            assert status != 200, body
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"no reason naming port {port}: {body}\n{second.tail()}")
        lines = _lines(second)
        said = next(x for x in lines if x["msg"].startswith("media worker cannot start"))
        assert said.get("port") in (port, port + 1), said
        assert _at(said) - _at(lines[0]) <= 10.0, (lines[0], said)
        assert "Address already in use" in body["reason"], body
        named = {w["port"]: w for w in body["workers"]}
        assert set(named) == {port, port + 1}, body

        # Every worker past its retries: the node exits non-zero, on its own.
        code = await wait_exit(second.proc, 60.0, second.tail)
        assert code == 1, second.tail()
        assert await mine(registry, second) == {}

        lines = _lines(second)
        errors = [line for line in lines if line.get("level") == "error"]
        for p in (port, port + 1):
            assert any(
                f"UDP port {p} cannot start" in line["msg"] and line.get("port") == p
                for line in errors
            ), second.tail()
        assert any(line["msg"].startswith("media node stopping") for line in errors)
        assert not [line for line in lines if "Traceback" in line.get("exc", "")], second.tail()

        # The first node never noticed.
        status, _ = await _readyz(first)
        assert status == 200 and first.proc.poll() is None
        assert sorted(await mine(registry, first)) == first.wids()


async def test_one_worker_that_cannot_bind_makes_the_node_unready_until_its_port_frees(
    redis_server: Any, registry: aioredis.Redis, tmp_path: Path
) -> None:
    """The other worker serves meanwhile; the node does not exit, and heals
    on its own when the port is free again."""
    port, (http,) = _ports(2, 1)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", port + 1))
    with _nodes() as nodes:
        try:
            node = start_media_node(redis_server.url, tmp_path, udp_port=port, http=http, env=QUICK)
            nodes.append(node)
            body = await _wait_unready(node, f"UDP port {port + 1}")
            # The failures are counted as the port is tried, with no
            # interpreter started, so they may all come before the other
            # worker is ready ("not ready yet: ..."); once it is, the reason
            # names only the one that cannot bind.
            end = time.monotonic() + 60.0
            while node.wids()[0] in body["reason"]:
                assert time.monotonic() < end, body
                await asyncio.sleep(0.1)
                body = await _wait_unready(node, f"UDP port {port + 1}")
            assert node.wids()[1] in body["reason"], body
            _, text = await get(node.url + "/metrics")
            failed = 'wadud_media_workers_failed{{port="{}",worker="{}"}} {}'
            assert failed.format(port + 1, node.wids()[1], "1.0") in text, text[-2000:]
            assert failed.format(port, node.wids()[0], "0.0") in text
            # Only the worker that works is placeable.
            assert sorted(await mine(registry, node)) == node.wids()[:1]
            await asyncio.sleep(1.0)
            assert node.proc.poll() is None, node.tail()
        finally:
            squatter.close()
        await wait_ready(node, 60.0)
        assert sorted(await mine(registry, node)) == node.wids()
        _, text = await get(node.url + "/metrics")
        assert failed.format(port + 1, node.wids()[1], "0.0") in text, text[-2000:]


async def test_a_node_with_a_worker_that_cannot_start_still_drains_cleanly(
    redis_server: Any, tmp_path: Path
) -> None:
    """SIGTERM stops it with 0: the worker that never started had nothing to drain."""
    port, (http,) = _ports(2, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter, _nodes() as nodes:
        squatter.bind(("127.0.0.1", port + 1))
        node = start_media_node(redis_server.url, tmp_path, udp_port=port, http=http, env=QUICK)
        nodes.append(node)
        # One failed start is enough: it is the worker's last exit either way.
        await _wait_unready(node, f"UDP port {port + 1}", status=("degraded", "failing"))
        node.proc.send_signal(signal.SIGTERM)
        assert await wait_exit(node.proc, 60.0, node.tail) == 0, node.tail()


async def test_workers_waiting_for_redis_are_not_counted_as_failed(tmp_path: Path) -> None:
    """Redis unreachable is the whole deployment's trouble, not this host's:
    the node says so on /readyz and keeps restarting its workers, and does
    not exit however many starts fail (systemd's start limit would otherwise
    leave it stopped after an outage)."""
    port, (http, closed) = _ports(1, 2)
    node = start_media_node(
        f"redis://127.0.0.1:{closed}/0", tmp_path, workers=1, udp_port=port, http=http,
        env={**QUICK, "WADUD_MEDIA_START_RETRIES": "2"},
    )  # fmt: skip
    with _nodes() as nodes:
        nodes.append(node)
        end = time.monotonic() + 60.0
        while len([x for x in _lines(node) if x["msg"].startswith("media worker cannot")]) < 4:
            assert time.monotonic() < end, node.tail()
            assert node.proc.poll() is None, node.tail()
            await asyncio.sleep(0.2)
        status, body = await _readyz(node)
        assert status == 503 and body["status"] == "degraded", body
        assert node.proc.poll() is None, node.tail()
        assert not [x for x in _lines(node) if x["level"] == "error"], node.tail()
