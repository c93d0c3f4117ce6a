"""``wadud load`` against a cluster of real processes (tests/cluster.py): two
``wadud api`` replicas and two ``wadud media`` nodes of one worker each, on
one PostgreSQL and one Redis.

The load tester reaches replica A by its URL and reads every process's
private /metrics; the test reads the rooms' placement from Redis and kills a
media node by its process group.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest

from tests.cluster import WADUD, Cluster, running
from tests.conftest import RedisServer, free_port

pytestmark = pytest.mark.timeout(240)

SECRET = "load-cluster-secret-" + "l" * 40
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def world(
    tmp_path: Path, database_url: str, redis_server: RedisServer
) -> AsyncIterator[Cluster]:
    cluster = Cluster(tmp_path / "cluster", database_url, redis_server.url, SECRET)
    for name in ("A", "B"):
        cluster.add_api(name, env={"WADUD_METRICS_LISTEN": f"127.0.0.1:{free_port()}"})
    for node in ("n1", "n2"):
        cluster.add_media(node, workers=1)
    async with running(cluster):
        yield cluster


def _key(database_url: str, data_dir: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
    made = subprocess.run(
        [WADUD, "key", "create", "--name", "load", "--scope", "load", "--data-dir", str(data_dir)],
        env={**clean, "WADUD_DATABASE_URL": database_url},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return dict(line.split("=", 1) for line in made.stdout.split())


def _rooms(seed: int, count: int) -> list[str]:
    """The rooms a run with ``seed`` names (wadud_client/load/run.py)."""
    run_id = f"{random.Random(seed).getrandbits(32):08x}"
    return [f"load-{run_id}-{r}" for r in range(count)]


def _metrics(world: Cluster) -> list[str]:
    urls = []
    for api in world.apis.values():
        listen = api.proc.env["WADUD_METRICS_LISTEN"]
        urls.append(f"http://{listen}/metrics")
    urls += [f"{node.url}/metrics" for node in world.media.values()]
    return urls


async def _start_load(world: Cluster, key: dict[str, str], out: Path, *argv: str) -> Any:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
    metrics = [arg for url in _metrics(world) for arg in ("--metrics-url", url)]
    return await asyncio.create_subprocess_exec(
        WADUD, "load", "--url", world.apis["A"].url, *argv, *metrics, "--json", str(out),
        env={**clean, **key}, cwd=ROOT, stdout=PIPE, stderr=PIPE,
    )  # fmt: skip


async def _placed(world: Cluster, rooms: list[str], within: float = 60) -> dict[str, str]:
    """Each room's media node, once every room is placed."""
    async with asyncio.timeout(within):
        while True:
            placed = {room: await world.worker_of(room) for room in rooms}
            if all(placed.values()):
                return {room: world.node_of_worker(w[0]).node_id for room, w in placed.items()}
            await asyncio.sleep(0.1)


async def test_rooms_spread_over_both_nodes_and_each_process_says_its_cost(
    world: Cluster, database_url: str, tmp_path: Path
) -> None:
    key = _key(database_url, tmp_path / "keys")
    out = tmp_path / "run.json"
    run = await _start_load(world, key, out, "--rooms", "4", "--subscribers", "2",
                            "--duration", "6", "--seed", "21", "--quiet")  # fmt: skip
    try:
        nodes = await _placed(world, _rooms(21, 4))
        async with asyncio.timeout(120):
            _, stderr = await run.communicate()
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
    assert run.returncode == 0, stderr.decode()
    # Least-loaded placement: the four rooms on both nodes.
    assert set(nodes.values()) == {"n1", "n2"}, nodes
    summary = json.loads(out.read_text())["summary"]
    print(f"\nROOMS ON {nodes}; SERVER COST {json.dumps(summary['server'])}")
    assert summary["subscribers"] == 8 and summary["loss_pct"] == 0.0, summary
    processes = summary["server"]["processes"]
    assert set(processes) == set(_metrics(world)), processes
    for url, p in processes.items():
        assert p["cpu_s"] > 0 and p["rss_mb"] > 0, (url, p)
    # Each media node forwarded its rooms' media; the API replicas none.
    for node in world.media.values():
        assert processes[f"{node.url}/metrics"]["forwarded"] > 0, processes
    for listen in (api.proc.env["WADUD_METRICS_LISTEN"] for api in world.apis.values()):
        assert processes[f"http://{listen}/metrics"]["forwarded"] == 0, processes


async def test_a_media_node_killed_mid_run_is_counted_and_the_run_goes_on(
    world: Cluster, database_url: str, tmp_path: Path
) -> None:
    key = _key(database_url, tmp_path / "keys")
    out = tmp_path / "run.json"
    rooms = _rooms(33, 2)
    run = await _start_load(world, key, out, "--rooms", "2", "--subscribers", "2",
                            "--duration", "20", "--seed", "33")  # fmt: skip
    try:
        nodes = await _placed(world, rooms)
        # Killed once every subscriber receives media, by the run's own progress.
        assert run.stderr is not None
        async with asyncio.timeout(60):
            while b"receiving 4" not in (line := await run.stderr.readline()):
                assert line, "the run ended before everyone received media"
        victim = world.media[nodes[rooms[0]]]
        victim.proc.signal(signal.SIGKILL)
        async with asyncio.timeout(120):
            _, stderr = await run.communicate()
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
    assert run.returncode == 0, stderr.decode()
    body = json.loads(out.read_text())
    summary = body["summary"]
    moved = [r for r in body["reconnects"] if r["label"].startswith(rooms[0])]
    print(f"\nRECONNECTS {json.dumps(body['reconnects'])}")
    # The killed node's room: its publisher and both subscribers set their
    # media up anew on the other node, each back within 10 s, and the JSON
    # says when; the other room's participants were not disturbed unless
    # they shared the node.
    assert {r["label"].split("/")[1] for r in moved} >= {"pub-0", "sub-0", "sub-1"}, body[
        "reconnects"
    ]
    assert all(r["reason"] == "media-lost" for r in moved), moved
    assert all(r["back_s"] is not None and r["back_s"] < 10 for r in moved), moved
    assert summary["reconnects"] == len(body["reconnects"]) >= 3
    # The run went on: every subscriber receives media at its end.
    assert body["intervals"][-1]["receiving"] == 4, body["intervals"][-3:]
    assert body["run"]["ended"] == "completed" and summary["subscribers"] == 4


async def test_each_regions_subscribers_join_through_its_own_replicas(
    tmp_path: Path, database_url: str, redis_server: RedisServer
) -> None:
    """Two regions of one replica and one media node each: ``--region``
    sends each room's publisher and subscribers through the regions in turn,
    so each room's media crosses between the regions' nodes, and the run
    says what each region's subscribers saw."""
    cluster = Cluster(tmp_path / "cluster", database_url, redis_server.url, SECRET)
    for region in ("pk", "ae"):
        cluster.add_api(region, region=region)
        cluster.add_media(f"{region}1", workers=1, region=region)
    async with running(cluster):
        key = _key(database_url, tmp_path / "keys")
        out = tmp_path / "regions.json"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
        nodes = [f"--metrics-url={node.url}/metrics" for node in cluster.media.values()]
        pk, ae = cluster.apis["pk"].url, cluster.apis["ae"].url
        run = await asyncio.create_subprocess_exec(
            WADUD, "load", "--url", pk, "--region", f"pk={pk}", "--region", f"ae={ae}",
            "--rooms", "2", "--subscribers", "4", "--duration", "5", "--seed", "17",
            "--json", str(out), "--quiet", *nodes,
            env={**clean, **key}, cwd=ROOT, stdout=PIPE, stderr=PIPE,
        )  # fmt: skip
        async with asyncio.timeout(120):
            stdout, stderr = await run.communicate()
    assert run.returncode == 0, stderr.decode()
    body = json.loads(out.read_text())
    assert [s["region"] for s in body["subscribers"]] == ["pk", "ae"] * 4
    by_region = body["summary"]["by_region"]
    assert set(by_region) == {"pk", "ae"}, by_region
    for region, figures in by_region.items():
        assert figures["subscribers"] == figures["subscribers_asked"] == 4, (region, figures)
        assert figures["loss_pct"] == 0.0 and figures["latency_ms"]["p50"] < 50, figures
    assert "region ae: 4 of 4 receiving" in stdout.decode()
    # Both regions' nodes forwarded: every room had subscribers on each.
    processes = body["summary"]["server"]["processes"]
    for node in cluster.media.values():
        assert processes[f"{node.url}/metrics"]["forwarded"] > 0, processes
