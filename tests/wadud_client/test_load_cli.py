"""``wadud load`` against ``wadud serve``, each a process of its own: the
load tester knows the server only by its URL and a load API key.

The key is made by ``wadud key create`` on the server's database; the load
run's JSON is read back. Its figures are the tool's own (stamps in the
payload, this machine's monotonic clock, shared by the tool's publishers and
subscribers), so the test's own pace does not enter them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from subprocess import PIPE
from typing import Any

import aiohttp
import pytest

from benchmarks.common import answers_ready
from sfu.layers.subscribers import START_ESTIMATE
from tests.conftest import free_port
from tests.prometheus import metric_sum, parse_metrics
from tests.signalling.relay import NatRelay, Schedule
from tests.wadud.processes import serve_on_free_ports

ROOT = Path(__file__).resolve().parents[2]
WADUD = str(Path(sys.executable).parent / "wadud")


#: The private /metrics of the ``server`` fixture's process.
METRICS: dict[str, str] = {}


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """``wadud serve`` as a process of its own, ready; its private /metrics
    at ``METRICS[url]``."""
    metrics = f"127.0.0.1:{free_port()}"
    url, proc = serve_on_free_ports(database_url, tmp_path, WADUD_METRICS_LISTEN=metrics)
    METRICS[url] = f"http://{metrics}/metrics"
    try:
        async with aiohttp.ClientSession() as s:
            assert await answers_ready(s, url, 30), "server did not become ready"
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture
def load_key(database_url: str, tmp_path: Path) -> dict[str, str]:
    """A load key's WADUD_API_KEY and WADUD_API_SECRET, from the real command."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
    made = subprocess.run(
        [WADUD, "key", "create", "--name", "load test", "--scope", "load",
         "--data-dir", str(tmp_path / "keys")],
        env={**clean, "WADUD_DATABASE_URL": database_url},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return dict(line.split("=", 1) for line in made.stdout.split())


def load(*argv: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
    return subprocess.run(
        [WADUD, "load", *argv],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def test_two_rooms_of_five_subscribers_on_loopback(
    server: str, load_key: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "run.json"
    done = load(
        "--url", server, "--rooms", "2", "--publishers", "1", "--subscribers", "5",
        "--duration", "15", "--seed", "7", "--sampled", "2", "--json", str(out),
        "--plot", str(tmp_path / "run.png"), "--metrics-url", METRICS[server], env=load_key,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    body = json.loads(out.read_text())
    summary = body["summary"]
    # Every subscriber received media, lost none, and the table says so.
    assert summary["subscribers"] == summary["subscribers_asked"] == 10, summary
    assert summary["loss_pct"] == 0.0, summary
    assert summary["latency_ms"]["p50"] < 20, summary
    assert summary["join_ms"]["p50"] > 0 and summary["join_ms"]["p99"] < 10_000, summary
    assert summary["errors"] == {}, summary
    assert "subscribers receiving: 10 of 10" in done.stdout, done.stdout
    # Beside the summary: each subscriber's tracks, and one record a second.
    # Two in each room read every packet's stamp; the other three its header.
    assert len(body["subscribers"]) == 10
    sampled = [sub for sub in body["subscribers"] if sub["tracks"][0]["sampled"]]
    assert len(sampled) == 4, body["subscribers"]
    for sub in body["subscribers"]:
        kinds = sorted(t["kind"] for t in sub["tracks"])
        assert kinds == ["audio", "video"], sub
        for t in sub["tracks"]:
            assert t["packets"] > 0 and t["received"] == t["expected"] > 0, t
            assert t["sampled"] == (t["stamped"] == t["stamps_sent"] > 0), t
    # The generator's own cost, and what its sockets dropped: nothing.
    gen = summary["generator"]
    assert 0 < gen["cpu_pct"] < 100 and gen["us_per_packet"] > 0, gen
    assert gen["packets"] > 10 * 15 * 50 and gen["socket_drops"] == 0, gen
    assert "dropped by its own sockets" in done.stdout
    assert len(body["intervals"]) >= 15 and body["intervals"][-1]["receiving"] == 10
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The server's own cost, from its private metrics, over the hold.
    cost = summary["server"]
    (process,) = cost["processes"].values()
    assert process["cpu_s"] > 0 and process["rss_mb"] > 0, cost
    # What it forwarded over the 15 s: 10 subscribers' audio and video.
    assert 10 * 15 * (50 + 60) * 0.8 < process["forwarded"] == cost["forwarded"], cost
    assert cost["us_per_forwarded_packet"] > 0 and cost["mb_per_subscriber"] is not None
    assert "µs of CPU per forwarded packet" in done.stdout
    # Two rooms, named by the seed under the load prefix; never a secret in the output.
    assert [r.startswith("load-") for r in body["run"]["rooms"]] == [True, True]
    assert load_key["WADUD_API_SECRET"] not in done.stdout + done.stderr + out.read_text()


async def test_simulcast_publishers_send_every_layer_and_subscribers_get_one(
    server: str, load_key: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "simulcast.json"
    done = load(
        "--url", server, "--rooms", "1", "--subscribers", "3", "--duration", "6",
        "--simulcast", "--video-resolution", "medium", "--seed", "5", "--json", str(out),
        "--quiet", env=load_key,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    body = json.loads(out.read_text())
    # The publisher sent both layers (180p as q, 360p as h), each its own SSRC.
    (publisher,) = body["publishers"]
    assert publisher["layers"].get("q", 0) > 100 and publisher["layers"].get("h", 0) > 100
    # Each subscriber got one video track, whole, whatever layer it was on.
    summary = body["summary"]
    assert summary["subscribers"] == 3 and summary["loss_pct"] == 0.0, summary
    for sub in body["subscribers"]:
        (video,) = [t for t in sub["tracks"] if t["kind"] == "video"]
        assert video["received"] == video["expected"] > 100, video
    done = load("--url", server, "--simulcast", "--video-resolution", "low", env=load_key)
    assert done.returncode == 2 and "--simulcast" in done.stderr


async def test_its_peers_number_packets_and_feed_back_as_browsers_do(
    server: str, load_key: dict[str, str], tmp_path: Path
) -> None:
    """Publishers number every packet transport-wide and subscribers send
    transport-cc feedback: the server's estimate of each subscriber's path
    moves from where it starts, and publishers get the server's feedback."""
    out = tmp_path / "feedback.json"
    argv = (
        "--url", server, "--rooms", "1", "--subscribers", "2", "--duration", "10",
        "--seed", "11", "--json", str(out), "--quiet",
    )  # fmt: skip
    run = asyncio.create_task(asyncio.to_thread(load, *argv, env=load_key))
    estimates: list[float] = []
    fed_back = 0.0
    async with aiohttp.ClientSession() as http:
        while not run.done() and (len(estimates) < 2 or not fed_back):
            async with http.get(METRICS[server]) as r:
                metrics = parse_metrics(await r.text())
            estimates = [
                metric_sum(metrics, "sfu_peer_estimate_bitrate", direction="subscribe", stat=stat)
                for stat in ("min", "max")
            ]
            # Only what moved from the estimator's start counts as heard.
            estimates = [e for e in estimates if e and e != START_ESTIMATE]
            fed_back = metric_sum(
                metrics, "sfu_peer_transport_cc_feedback_total", direction="publish"
            )
            await asyncio.sleep(0.2)
    done = await run
    assert done.returncode == 0, done.stderr
    assert len(estimates) == 2 and fed_back > 0, (estimates, fed_back)
    body = json.loads(out.read_text())
    # libwebrtc's spacing: every 50 to 250 ms while media flows.
    for sub in body["subscribers"]:
        assert 10 * 4 <= sub["feedback"] <= 10 * 20 + 5, sub
    assert body["summary"]["feedback"] == sum(s["feedback"] for s in body["subscribers"])


async def test_bad_credentials_and_an_unreachable_url_end_with_their_exit_codes(
    server: str, load_key: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "wrong.json"
    wrong = {**load_key, "WADUD_API_SECRET": load_key["WADUD_API_SECRET"] + "x"}
    done = load("--url", server, "--duration", "2", "--json", str(out), env=wrong)
    assert done.returncode == 4, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("wadud load: the API key")
    assert "Traceback" not in done.stderr
    assert json.loads(out.read_text())["run"]["ended"].startswith("failed:")

    closed = f"http://127.0.0.1:{free_port()}"
    done = load("--url", closed, "--duration", "2", "--json", str(out), env=load_key)
    assert done.returncode == 3, done.stderr
    assert "cannot reach" in done.stderr and "Traceback" not in done.stderr
    assert json.loads(out.read_text())["summary"]["subscribers"] == 0

    done = load("--url", "calls.example", env=load_key)
    assert done.returncode == 2 and "--url" in done.stderr
    done = load("--url", server, env={})
    assert done.returncode == 2 and "wadud key create" in done.stderr


async def test_ctrl_c_keeps_what_was_measured(
    server: str, load_key: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "cut.json"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
    proc = await asyncio.create_subprocess_exec(
        WADUD, "load", "--url", server, "--subscribers", "2", "--duration", "120",
        "--json", str(out),
        env={**clean, **load_key}, cwd=ROOT, stdout=PIPE, stderr=PIPE,
    )  # fmt: skip
    try:
        # Interrupted once media flows, by the run's own progress lines.
        assert proc.stderr is not None
        seen: list[str] = []
        async with asyncio.timeout(60):
            while not any("receiving 2" in line for line in seen):
                line = (await proc.stderr.readline()).decode()
                assert line, seen
                seen.append(line)
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, stderr.decode()
    body = json.loads(out.read_text())
    assert body["run"]["ended"] == "interrupted"
    assert body["summary"]["subscribers"] == 2, body["summary"]
    assert "subscribers receiving: 2 of 2" in stdout.decode()


async def test_a_server_that_dies_mid_run_ends_it_with_one_line_and_what_was_measured(
    database_url: str, tmp_path: Path, load_key: dict[str, str]
) -> None:
    url, proc = serve_on_free_ports(database_url, tmp_path)
    out = tmp_path / "died.json"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
    try:
        async with aiohttp.ClientSession() as s:
            assert await answers_ready(s, url, 30), "server did not become ready"
        run = await asyncio.create_subprocess_exec(
            WADUD, "load", "--url", url, "--subscribers", "3", "--duration", "120",
            "--json", str(out),
            env={**clean, **load_key}, cwd=ROOT, stdout=PIPE, stderr=PIPE,
        )  # fmt: skip
        assert run.stderr is not None
        async with asyncio.timeout(60):
            while b"receiving 3" not in (line := await run.stderr.readline()):
                assert line, "the run ended before everyone received media"
        proc.kill()
        proc.wait(20)
        # It ends on its own, well before its 120 s: the next second's check.
        async with asyncio.timeout(30):
            stdout, stderr = await run.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(20)
    assert run.returncode == 5, stderr.decode()
    last = stderr.decode().strip().splitlines()[-1]
    assert last.startswith("wadud load: the server closed every participant's connection"), last
    assert "Traceback" not in stderr.decode()
    body = json.loads(out.read_text())
    assert body["run"]["ended"].startswith("failed: the server closed every"), body["run"]
    assert body["summary"]["subscribers"] == 3 and body["run"]["held_s"] < 60, body["run"]
    # Each subscriber's and the publisher's connection, counted.
    assert body["summary"]["errors"]["signalling:closed"] == 4, body["summary"]
    assert "subscribers receiving: 3 of 3" in stdout.decode()


async def _through_a_path(
    database_url: str, tmp_path: Path, key: dict[str, str], up: Schedule, down: Schedule
) -> dict[str, Any]:
    """A run whose media crosses :class:`NatRelay` with ``up`` and ``down``:
    the server announces the relay's address (127.0.0.2, the worker's port),
    as a deployment behind NAT announces its public one."""
    port = free_port()
    relay = NatRelay(("127.0.0.2", port), ("127.0.0.1", port), up=up, down=down)
    await relay.start()
    url, proc = serve_on_free_ports(
        database_url,
        tmp_path,
        WADUD_MEDIA_PORT=str(port),
        WADUD_MEDIA_ANNOUNCED_ADDRESSES="127.0.0.2",
    )
    try:
        async with aiohttp.ClientSession() as s:
            assert await answers_ready(s, url, 30), "server did not become ready"
        out = tmp_path / "path.json"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
        run = await asyncio.create_subprocess_exec(
            WADUD, "load", "--url", url, "--rooms", "2", "--subscribers", "5",
            "--duration", "6", "--seed", "3", "--sampled", "2", "--json", str(out), "--quiet",
            env={**clean, **key}, cwd=ROOT, stdout=PIPE, stderr=PIPE,
        )  # fmt: skip
        async with asyncio.timeout(120):
            _, stderr = await run.communicate()
        assert run.returncode == 0, stderr.decode()
        body = json.loads(out.read_text())
        summary: dict[str, Any] = body["summary"]
        # The loss the subscribers that read headers only counted by sequence
        # number, beside the summary's over them all.
        counted = [t for sub in body["subscribers"] for t in sub["tracks"] if not t["sampled"]]
        expected = sum(t["expected"] for t in counted)
        summary["counted_loss_pct"] = 100 * (1 - sum(t["received"] for t in counted) / expected)
        path = f"{up.loss:.0%}/{down.loss:.0%} loss, {up.delay + down.delay:.3f} s"
        print(f"\nTHROUGH THE PATH ({path}): {json.dumps(summary)}")
        assert summary["subscribers"] == 10, summary
        # Every media datagram went through the relay, none around it.
        assert relay.stats.forwarded["down"] > 10 * 6 * 50, relay.stats
        # The path as it was, by the relay's own clock: a relay starved of
        # the CPU on a busy machine holds datagrams longer than scheduled.
        held = relay.stats.held
        both_ways = statistics.median(held["up"]) + statistics.median(held["down"])
        summary["path_ms"] = 1000 * both_ways
        # What the relay's own sockets overflowed with is this process's
        # loss, not the path's nor the server's: its buffers are sized so a
        # starved test process loses nothing (tests/signalling/relay.py).
        summary["relay_kernel_drops"] = relay.kernel_drops()
        assert summary["relay_kernel_drops"] == 0, summary
        return summary
    finally:
        relay.close()
        proc.terminate()
        proc.wait(20)


async def test_five_percent_loss_on_the_path_is_reported_as_such(
    database_url: str, tmp_path: Path, load_key: dict[str, str]
) -> None:
    summary = await _through_a_path(
        database_url, tmp_path, load_key, Schedule(), Schedule(loss=0.05, seed=5)
    )
    assert 4.0 <= summary["loss_pct"] <= 6.0, summary
    assert 4.0 <= summary["counted_loss_pct"] <= 6.0, summary
    # The subscribers asked for the lost video again, as browsers do, and
    # the server sent it again (the loss above is before repair).
    assert summary["nacked"] > 0 and summary["repaired"] > 0, summary


async def test_a_300_ms_path_is_reported_as_300_ms(
    database_url: str, tmp_path: Path, load_key: dict[str, str]
) -> None:
    summary = await _through_a_path(
        database_url, tmp_path, load_key, Schedule(delay=0.15), Schedule(delay=0.15)
    )
    # The path is 300 ms or more (the relay never sends early): the tool
    # reports what it really was, within 30 ms.
    assert summary["path_ms"] >= 300, summary
    assert abs(summary["latency_ms"]["p50"] - summary["path_ms"]) <= 30, summary
    assert summary["loss_pct"] == summary["counted_loss_pct"] == 0.0, summary


async def test_find_max_steps_up_until_a_limit_is_crossed(
    server: str, load_key: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "max.json"
    common = ["--url", server, "--subscribers", "2", "--step", "2", "--duration", "3",
              "--find-max", "--json", str(out), "--quiet"]  # fmt: skip
    # Limits nothing on loopback crosses: it steps to the ceiling.
    done = load(*common, "--max-subscribers", "4", env=load_key)
    assert done.returncode == 0, done.stderr
    found = json.loads(out.read_text())["find_max"]
    assert [s["subscribers_per_room"] for s in found["steps"]] == [2, 4], found
    assert [s["crossed"] for s in found["steps"]] == [None, None], found
    assert found["room_held"] == 4 and found["stopped"] == "reached --max-subscribers 4"
    assert "a room held 4 subscriber(s)" in done.stdout
    # A latency limit no path meets: the first step crosses it, nothing held.
    done = load(*common, "--max-subscribers", "8", "--max-latency", "0.001", env=load_key)
    assert done.returncode == 0, done.stderr
    found = json.loads(out.read_text())["find_max"]
    assert len(found["steps"]) == 1 and found["room_held"] == 0, found
    assert found["stopped"].startswith("p95 latency"), found


async def test_two_shards_of_one_load_merge_into_one_run(
    server: str, load_key: dict[str, str], tmp_path: Path
) -> None:
    """Two generators (here two processes), each its half of the rooms. The
    second writes its JSON to standard output, as the Kubernetes Job's pods
    do (deploy/k8s/load.yaml): nothing else is there."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WADUD_")}
    outs = [tmp_path / f"shard-{i}.json" for i in (1, 2)]
    shards = [
        await asyncio.create_subprocess_exec(
            WADUD,
            "load",
            "--url",
            server,
            "--rooms",
            "2",
            "--subscribers",
            "3",
            "--duration",
            "4",
            "--seed",
            "11",
            "--shard",
            f"{i}/2",
            "--json",
            str(out) if i == 1 else "-",
            "--quiet",
            env={**clean, **load_key},
            cwd=ROOT,
            stdout=PIPE,
            stderr=PIPE,
        )
        for i, out in zip((1, 2), outs, strict=True)
    ]
    async with asyncio.timeout(120):
        for i, shard in enumerate(shards):
            stdout, stderr = await shard.communicate()
            assert shard.returncode == 0, stderr.decode()
            if i == 1:
                outs[1].write_bytes(stdout)  # json.loads below reads it whole
    rooms = [json.loads(out.read_text())["run"]["rooms"] for out in outs]
    assert len(rooms[0]) == len(rooms[1]) == 1 and rooms[0] != rooms[1], rooms
    merged_path = tmp_path / "merged.json"
    done = load("merge", *map(str, outs), "--json", str(merged_path), env={})
    assert done.returncode == 0, done.stderr
    merged = json.loads(merged_path.read_text())
    summary = merged["summary"]
    assert summary["subscribers"] == summary["subscribers_asked"] == 6, summary
    assert summary["loss_pct"] == 0.0 and summary["latency_ms"]["p50"] < 20, summary
    assert sorted(r["rooms"][0] for r in merged["runs"]) == sorted(r[0] for r in rooms)
    assert sum(merged["latency_histogram"].values()) == sum(
        sum(json.loads(out.read_text())["latency_histogram"].values()) for out in outs
    )
    # Runs of two loads (other seeds) are not shards of one.
    other = tmp_path / "other.json"
    body = json.loads(outs[1].read_text())
    body["run"]["shape"]["seed"] = 12
    other.write_text(json.dumps(body))
    done = load("merge", str(outs[0]), str(other), "--json", str(merged_path), env={})
    assert done.returncode == 2 and "seed" in done.stderr
    # A shard needs the seed that names the rooms alike.
    done = load("--url", server, "--rooms", "2", "--shard", "1/2", env=load_key)
    assert done.returncode == 2 and "--seed" in done.stderr


async def test_processes_split_one_run_over_cores_and_merge_it(
    server: str, load_key: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "split.json"
    done = load(
        "--url", server, "--rooms", "2", "--subscribers", "3", "--duration", "4",
        "--processes", "2", "--metrics-url", METRICS[server], "--json", str(out), env=load_key,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    merged = json.loads(out.read_text())
    assert [r["shape"]["shard"] for r in merged["runs"]] == [[1, 2], [2, 2]], merged["runs"]
    rooms = [room for r in merged["runs"] for room in r["rooms"]]
    assert len(set(rooms)) == 2, rooms
    summary = merged["summary"]
    assert summary["subscribers"] == summary["subscribers_asked"] == 6, summary
    assert summary["loss_pct"] == 0.0, summary
    # The server's cost read once (by the first process), not twice.
    assert len(summary["server"]["processes"]) == 1, summary["server"]
    assert "in 2 processes" in done.stdout and "subscribers receiving: 6 of 6" in done.stdout
