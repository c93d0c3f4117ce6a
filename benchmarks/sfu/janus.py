"""SFU side by side with Janus: forwarded packets per server CPU-second, same clients, same run.

Issue 13 asks for Wadud's fan-out against Janus 1.1.2's VideoRoom in its
fastest mode (``event_loops = 2``), measured the way ``benchmarks/sfu/run.py``
measures a media worker, with the very same client load: one load process
(benchmarks/sfu/load.py) owns every synthetic transport (ICE as the
controlling agent, DTLS-SRTP, pre-encoded VP8 at video rate, a keyframe
first), counts each subscriber's packets without decrypting them, and
unprotects a probe room's to time them. Servers under test, all on
127.0.0.1 and each in its own process group:

* ``wadud`` : ``wadud media --workers 1`` (one worker process), rooms set up
  over Redis as a ``wadud api`` replica does (``run.py --media``), with the
  native fan-out (``sfu/forward/_fanout.c``);
* ``wadud-py``: the same with ``WADUD_NATIVE=0``, the pure-Python loop
  ("today"), kept beside it so the gain and the latency are read in the
  same run (``--no-python`` leaves it out);
* ``janus``: Debian's ``janus`` with only the VideoRoom plugin and the HTTP
  transport, ``event_loops = 2``, ``ice_lite = true`` (the load's transports
  are controlling agents that never answer checks, which is all an ICE-lite
  server needs, as Wadud's worker is one), DTLS/SRTP as usual. Janus leaves
  loopback interfaces out of its candidates, so it runs with a small
  ``LD_PRELOAD`` shim, built here with gcc, whose ``getifaddrs`` clears
  ``IFF_LOOPBACK`` on ``lo``, and ``ice_enforce_list = "lo"``. Rooms are made
  over the Janus HTTP API: ``create``, the publisher's ``joinandconfigure``
  with our offer, each subscriber's ``join`` (Janus offers) and ``start``
  with our answer.

Each round runs every scenario (``1x20``, ``1x40``: one VP8 publisher,
N subscribers per room; rooms enough for ``--out-rate`` packets out per
second) on every server, the order of servers alternating round by round.
CPU is the server process's (all threads), user + system, over the measured
window only. Printed per run: the run.py table row; then per scenario the
median forwarded packets per CPU-second of each server, the ratio
wadud/janus (medians and per round) and loss. Then:

* latency at half load: ``1x20`` at half the load Wadud's worker carries per
  CPU-second (median of the ``1x20`` rounds / 2), every subscriber a probe,
  on each server; added one-way latency (minus the socket-to-socket
  baseline's median) p50/p99;
* RSS: one room of ``1x40`` on each server, resident set size of the
  forwarding process read in the middle of the window (and before the
  first room).

Results go to ``benchmarks/results/sfu-janus.json``.

    .venv/bin/python -m benchmarks.sfu.janus [--rounds 3] [--scenarios 1x20,1x40]
        [--out-rate 36000] [--seconds 8] [--no-python] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import psutil  # type: ignore[import-untyped]
import uvloop

from benchmarks.common import (
    ROOT,
    answers_ready,
    free_port,
    log_lines,
    log_tail,
    start_group,
    stop_group,
    write_results,
)
from benchmarks.sfu import load, peer
from benchmarks.sfu.bench import Bench
from benchmarks.sfu.report import code_identity, print_table
from benchmarks.sfu.scenarios import Scenario
from benchmarks.sfu.servers import MediaNode, media_control
from rtc import stun
from rtc.errors import StunParseError

HOST = "127.0.0.1"
JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")

SCENARIOS = {
    "1x20": Scenario("1x20", 1, 20),
    "1x40": Scenario("1x40", 1, 40),
}

# getifaddrs that reports ``lo`` as an ordinary interface, so Janus gathers
# 127.0.0.1 (src/ice.c skips IFF_LOOPBACK).
_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <string.h>

int getifaddrs(struct ifaddrs **ifap) {
    static int (*real)(struct ifaddrs **);
    if (real == NULL) real = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    int r = real(ifap);
    if (r == 0)
        for (struct ifaddrs *i = *ifap; i != NULL; i = i->ifa_next)
            if (i->ifa_name != NULL && strcmp(i->ifa_name, "lo") == 0)
                i->ifa_flags &= ~IFF_LOOPBACK;
    return r;
}
"""


def build_shim(work: Path) -> Path:
    source, lib = work / "loopback_shim.c", work / "loopback_shim.so"
    source.write_text(_SHIM)
    subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(source), "-ldl"], check=True
    )
    return lib


# -- the clients ---------------------------------------------------------------------------


def _answer_checks() -> None:
    """Make the load's transports answer ICE checks (RFC 8445 section 7.3).

    Janus's libnice sends its own checks even with ``ice_lite = true`` and
    nominates a pair only once one of them is answered; the load's transports,
    written for Wadud's ICE-lite worker, only send checks. Answering is inert
    against Wadud's worker (it never sends a check), so one load process with
    this serves every server alike.
    """
    original = peer.Transport._on_stun

    def on_stun(self: peer.Transport, data: bytes, now: float) -> None:
        try:
            msg = stun.StunMessage.parse(data)
        except StunParseError:
            return
        if msg.method == stun.BINDING and msg.cls == stun.REQUEST:
            if self.remote is None or not stun.check_integrity(data, self.pwd.encode()):
                return
            reply = stun.StunMessage(stun.BINDING, stun.SUCCESS, msg.transaction_id)
            reply.set(stun.XOR_MAPPED_ADDRESS, self.remote.address)
            reply.add_integrity(self.pwd.encode()).add_fingerprint()
            with contextlib.suppress(OSError):
                self.sock.send(bytes(reply))
            return
        original(self, data, now)

    peer.Transport._on_stun = on_stun  # type: ignore[method-assign]


def idle_load(conn: Any) -> None:
    """A load process that only waits to be told to quit (Bench starts one each)."""
    with contextlib.suppress(EOFError, OSError):
        while conn.recv()[0] != "quit":
            pass
        conn.send(("ok", None))


def serve_load(conn: Any) -> None:
    """The load process (benchmarks/sfu/load.py) with transports that answer checks."""
    _answer_checks()
    load.serve(conn)


# -- Janus ---------------------------------------------------------------------------------


class Janus:
    """``janus`` (VideoRoom, HTTP, event_loops=2, ICE-lite) with the loopback shim."""

    name = "janus"

    def __init__(self, work: Path, *, event_loops: int = 2, debug_level: int = 3) -> None:
        janus = shutil.which("janus")
        if janus is None:
            raise SystemExit("janus not found: apt-get install -y janus")
        conf = self.data = work / "janus"
        conf.mkdir()
        self.port = free_port()
        plugins = sorted(
            p.name for p in (JANUS_LIB / "plugins").glob("*.so") if "videoroom" not in p.name
        )
        transports = sorted(
            p.name for p in (JANUS_LIB / "transports").glob("*.so") if "http" not in p.name
        )
        loggers = sorted(p.name for p in (JANUS_LIB / "loggers").glob("*.so"))
        events = sorted(p.name for p in (JANUS_LIB / "events").glob("*.so"))
        lo, hi = 40000 + secrets.randbelow(10000), 0
        hi = lo + 4000
        (conf / "janus.jcfg").write_text(
            f"""general: {{
    configs_folder = "{conf}"
    plugins_folder = "{JANUS_LIB / "plugins"}"
    transports_folder = "{JANUS_LIB / "transports"}"
    events_folder = "{JANUS_LIB / "events"}"
    loggers_folder = "{JANUS_LIB / "loggers"}"
    debug_level = {debug_level}
    session_timeout = 300
    event_loops = {event_loops}
}}
media: {{
    rtp_port_range = "{lo}-{hi}"
}}
nat: {{
    ice_lite = true
    ice_enforce_list = "lo"
}}
plugins: {{
    disable = "{",".join(plugins)}"
}}
transports: {{
    disable = "{",".join(transports)}"
}}
loggers: {{
    disable = "{",".join(loggers)}"
}}
events: {{
    broadcast = false
    disable = "{",".join(events)}"
}}
"""
        )
        (conf / "janus.transport.http.jcfg").write_text(
            f"""general: {{
    json = "compact"
    base_path = "/janus"
    http = true
    port = {self.port}
    ip = "{HOST}"
    https = false
}}
admin: {{
    admin_http = false
}}
"""
        )
        (conf / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
        shim = build_shim(work)
        self.log_path = work / "janus.log"
        self.proc = start_group(
            [
                janus,
                "-C",
                str(conf / "janus.jcfg"),
                "-F",
                str(conf),
                "-o",
                *os.environ.get("JANUS_BENCH_ARGS", "").split(),
            ],
            self.log_path,
            env={**os.environ, "LD_PRELOAD": str(shim)},
        )
        self.ps = psutil.Process(self.proc.pid)
        self.base = f"http://{HOST}:{self.port}/janus"
        self.api: JanusApi | None = None

    async def ready(self, http: aiohttp.ClientSession, within: float = 30.0) -> None:
        if not await answers_ready(http, self.base, within, self.proc, path="/info"):
            if self.proc.poll() is not None:
                raise SystemExit(f"janus exited ({self.proc.returncode}):\n{self.tail()}")
            raise SystemExit(f"janus not ready after {within} s:\n{self.tail()}")
        async with http.get(self.base + "/info") as r:
            info = await r.json(content_type=None)
        self.version = str(info.get("version_string"))
        self.api = JanusApi(http, self.base)
        await self.api.start()

    def worker_pid(self) -> int:
        return int(self.proc.pid)

    async def rtp_totals(self, session: aiohttp.ClientSession) -> dict[str, int]:
        return {}  # Janus has no such counters; loss is the clients' count

    def tail(self) -> str:
        return log_tail(self.log_path)

    def problems(self, limit: int = 10) -> list[str]:
        found = [ln[:300] for ln in log_lines(self.log_path) if "[ERR]" in ln or "[WARN]" in ln]
        return found[:limit]

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        stop_group(self.proc)


class JanusError(RuntimeError):
    pass


class JanusApi:
    """One Janus session over HTTP: requests by transaction, events by long poll."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base = base_url
        self.session = 0
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.poller: asyncio.Task[None] | None = None

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        tx = secrets.token_hex(8)
        body = {**body, "transaction": tx}
        async with self.http.post(self.base + path, json=body) as r:
            reply: dict[str, Any] = await r.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(f"{body.get('janus')}: {reply.get('error')}")
        return reply

    async def start(self) -> None:
        reply = await self._post("", {"janus": "create"})
        self.session = int(reply["data"]["id"])
        self.poller = asyncio.create_task(self._poll())

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.cancel()

    async def _poll(self) -> None:
        url = f"{self.base}/{self.session}?maxev=20"
        while True:
            try:
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=60)) as r:
                    events = await r.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.1)
                continue
            for event in events if isinstance(events, list) else [events]:
                fut = self.waiting.pop(str(event.get("transaction")), None)
                if fut is not None and not fut.done():
                    fut.set_result(event)

    async def attach(self) -> int:
        reply = await self._post(
            f"/{self.session}", {"janus": "attach", "plugin": "janus.plugin.videoroom"}
        )
        return int(reply["data"]["id"])

    async def detach(self, handle: int) -> None:
        with contextlib.suppress(JanusError, aiohttp.ClientError):
            await self._post(f"/{self.session}/{handle}", {"janus": "detach"})

    async def message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """A VideoRoom request; an asynchronous one's event (with its jsep) once it comes."""
        tx = secrets.token_hex(8)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[tx] = fut
        request: dict[str, Any] = {"janus": "message", "body": body, "transaction": tx}
        if jsep is not None:
            request["jsep"] = jsep
        async with self.http.post(f"{self.base}/{self.session}/{handle}", json=request) as r:
            reply: dict[str, Any] = await r.json(content_type=None)
        if reply.get("janus") == "ack":
            reply = await asyncio.wait_for(fut, 30)
        else:
            self.waiting.pop(tx, None)
        if reply.get("janus") == "error":
            raise JanusError(f"{body.get('request')}: {reply.get('error')}")
        data = reply.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{body.get('request')}: {data['error']}")
        return reply


@dataclass
class JanusParticipant:
    """What Bench.run_scenario reads of a participant, for a Janus handle."""

    api: JanusApi
    room: str
    identity: str
    publish: bool
    handle: int = 0
    pid: str = ""
    number: int = 0
    ssrc: int = 0
    audio_number: int = 0
    audio_ssrc: int = 0
    pub_tid: int = 0
    sub_tid: int = 0
    feed: int = 0
    layers: list[Any] = field(default_factory=list)
    offered: list[dict[str, Any]] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def close(self) -> None:
        if self.handle:
            await self.api.detach(self.handle)


class JanusBench(Bench):
    """The SFU benchmark's Bench (bench.py) with rooms made over the Janus VideoRoom API."""

    janus_rooms = itertools.count(1000)

    async def room(self, scenario: Scenario) -> list[Any]:
        server: Janus = self.server  # type: ignore[assignment]
        api = server.api
        assert api is not None
        room_id = next(self.janus_rooms)
        room = f"janus-{scenario.name}-{room_id}"
        admin = await api.attach()
        await api.message(
            admin,
            {
                "request": "create",
                "room": room_id,
                "publishers": max(1, scenario.publishers),
                "videocodec": "vp8",
                "bitrate": 0,
                "fir_freq": 0,
                "transport_wide_cc_ext": True,
                "audiolevel_ext": False,
                "videoorient_ext": False,
                "playoutdelay_ext": False,
            },
        )
        await api.detach(admin)
        people: list[JanusParticipant] = []
        publishers = []
        for i in range(scenario.publishers):
            p = JanusParticipant(api, room, f"pub{i}", True)
            p.handle = await api.attach()
            p.pid = p.identity
            offer = await self.publisher(p, scenario)  # type: ignore[arg-type]
            p.feed = 1 + i
            reply = await api.message(
                p.handle,
                {
                    "request": "joinandconfigure",
                    "ptype": "publisher",
                    "room": room_id,
                    "id": p.feed,
                    "display": p.identity,
                },
                {"type": "offer", "sdp": offer},
            )
            await self.load.call("published", p.pub_tid, reply["jsep"]["sdp"])
            people.append(p)
            publishers.append(p)
        # Janus offers a feed to subscribers only once its PeerConnection is up.
        await self.load.call("connect", [p.pub_tid for p in publishers], 30.0, within=60)

        async def subscriber(i: int) -> JanusParticipant:
            s = JanusParticipant(api, room, f"sub{i}", False)
            s.pid = s.identity
            s.handle = await api.attach()
            for attempt in range(50):
                try:
                    reply = await api.message(
                        s.handle,
                        {
                            "request": "join",
                            "ptype": "subscriber",
                            "room": room_id,
                            "streams": [{"feed": p.feed} for p in publishers],
                        },
                    )
                    break
                except JanusError as exc:
                    # The publisher's "webrtcup" may lag its DTLS handshake a little.
                    if "No such feed" not in str(exc) or attempt == 49:
                        raise
                    await asyncio.sleep(0.1)
            s.sub_tid = await self.load.call("new")
            answer, _ = await self.load.call(
                "answer", s.sub_tid, reply["jsep"]["sdp"], self.transport_cc
            )
            await api.message(s.handle, {"request": "start"}, {"type": "answer", "sdp": answer})
            s.offered = [{"participant": p.pid} for p in publishers]
            return s

        people += await asyncio.gather(*(subscriber(i) for i in range(scenario.subscribers)))
        return people


# -- Wadud ---------------------------------------------------------------------------------


def media_node(work: Path, *, native: bool) -> MediaNode:
    """servers.py's ``wadud media`` node, its worker with or without the native fan-out.

    MediaNode passes no ``WADUD_*`` of ours to the node; ``WADUD_NATIVE`` is
    added to the environment of the processes it starts.
    """
    real = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> Any:
        env = dict(kwargs.get("env") or os.environ)
        env["WADUD_NATIVE"] = "1" if native else "0"
        kwargs["env"] = env
        return real(*args, **kwargs)

    with mock.patch.object(subprocess, "Popen", popen):
        node = MediaNode(work)
    node.name = "wadud" if native else "wadud-py"  # type: ignore[attr-defined]
    return node


# -- the run -------------------------------------------------------------------------------


def bench_args(args: argparse.Namespace) -> argparse.Namespace:
    """What Bench reads of run.py's command line, with its defaults."""
    return argparse.Namespace(
        pps=args.pps,
        fps=args.fps,
        warmup=args.warmup,
        seconds=args.seconds,
        rooms=0,
        quiet_wait=args.quiet_wait,
        simulcast=False,
        quick=False,
        no_latency=False,
        repeat=1,
        out_rate=args.out_rate,
        gc_log=False,
        media=True,
        profile=False,
        rpc_calls=0,
    )


@dataclass
class Row:
    server: str
    round: int
    result: dict[str, Any]


def rss_mb(pid: int) -> float:
    return round(float(psutil.Process(pid).memory_info().rss) / 2**20, 1)


async def rss_with_one_room(bench: Bench, bargs: argparse.Namespace) -> float | None:
    """RSS (MB) of the forwarding process in the middle of a one-room 1x40 run."""
    seen: list[float] = []
    pid = bench.server.worker_pid()

    async def sample(seconds: float) -> None:
        await asyncio.sleep(seconds / 2)
        seen.append(rss_mb(pid))
        await asyncio.sleep(seconds / 2)

    bargs.rooms = 1
    try:
        await bench.run_scenario(
            SCENARIOS["1x40"], out_rate=0, purpose="rss", probe_rooms=0, on_measure=sample
        )
    finally:
        bargs.rooms = 0
    return seen[0] if seen else None


async def main_async(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    names = args.scenarios.split(",")
    for name in names:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    out: dict[str, Any] = {"code": code_identity(), "args": vars(args)}
    servers: list[Any] = []
    benches: dict[str, Bench] = {}
    shared_load: load.LoadClient | None = None
    rows: list[Row] = []
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        try:
            (work / "wadud").mkdir()
            servers.append(media_node(work / "wadud", native=True))
            if not args.no_python:
                (work / "wadud-py").mkdir()
                servers.append(media_node(work / "wadud-py", native=False))
            (work / "janus-run").mkdir()
            servers.append(Janus(work / "janus-run", event_loops=args.event_loops))
            bargs = bench_args(args)
            for server in servers:
                await server.ready(http)
                # One load process for every server: the same clients.
                target = serve_load if shared_load is None else idle_load
                with mock.patch.object(load, "serve", target):
                    if isinstance(server, Janus):
                        bench: Bench = JanusBench(bargs, server, http)  # type: ignore[arg-type]
                    else:
                        bench = Bench(bargs, server, http)
                if isinstance(server, MediaNode):
                    bench.media = await media_control(server, stack)
                if shared_load is None:
                    shared_load = bench.load
                else:
                    bench.load.stop()
                    bench.load = shared_load
                benches[server.name] = bench
            idle = {s.name: rss_mb(s.worker_pid()) for s in servers}
            version = getattr(servers[-1], "version", "?")
            print(
                f"servers: {', '.join(f'{s.name} pid {s.worker_pid()}' for s in servers)};"
                f" janus {version}, event_loops={args.event_loops}; idle RSS MB {idle}",
                flush=True,
            )
            first = next(iter(benches.values()))
            direct = await first.direct(16)
            for b in benches.values():
                b.direct_p50 = first.direct_p50
            print(f"direct baseline (no server) one-way us: {direct}", flush=True)
            order = [s.name for s in servers]
            # RSS first, while every server is fresh: one room of 1x40 each.
            out["rss"] = {"idle_mb": idle}
            for who in order:
                seen = await rss_with_one_room(benches[who], bargs)
                out["rss"][who] = {"rss_mb_with_40_subscribers": seen}
                print(f"[{who}] RSS with one 1x40 room: {seen} MB (idle {idle[who]} MB)")
            for rnd in range(args.rounds):
                turn = order if rnd % 2 == 0 else order[::-1]
                for name in names:
                    for who in turn:
                        r = await benches[who].run_scenario(
                            SCENARIOS[name],
                            out_rate=args.out_rate,
                            purpose="throughput",
                            probe_rooms=1,
                        )
                        rows.append(Row(who, rnd, asdict(r)))
                        print(f"[{who}] ", end="")
                        print_table([r])
                        sys.stdout.flush()
            out["throughput"] = compare(rows, names, order)
            print_compare(out["throughput"])

            # Latency at half load: half of what today's worker (the Python
            # loop) carries per CPU-second on 1x20, the same rate for every
            # server; two rooms' subscribers are probes (unprotecting every
            # packet in the load process caps how many can be).
            today = [
                x.result["forwarded_per_cpu_second"]
                for x in rows
                if x.server in ("wadud-py", "wadud") and x.result["scenario"] == "1x20"
            ]
            preferred = [x for x in rows if x.server == "wadud-py"]
            if preferred:
                today = [
                    x.result["forwarded_per_cpu_second"]
                    for x in preferred
                    if x.result["scenario"] == "1x20"
                ]
            rate = args.latency_rate or (statistics.median(today) / 2 if today else 0)
            if rate and not args.no_latency:
                lat: dict[str, Any] = {"out_rate": round(rate), "probe_rooms": 2, "runs": {}}
                for rnd in range(args.latency_rounds):
                    turn = order if rnd % 2 == 0 else order[::-1]
                    for who in turn:
                        r = await benches[who].run_scenario(
                            SCENARIOS["1x20"], out_rate=rate, purpose="latency", probe_rooms=2
                        )
                        rows.append(Row(who, -1 - rnd, asdict(r)))
                        print(f"[{who}] ", end="")
                        print_table([r])
                        lat["runs"].setdefault(who, []).append(
                            {
                                "added_latency_us": r.added_latency_us,
                                "loss_pct": r.loss_pct,
                                "cpu_share": r.worker_cpu_share,
                                "others_share": round(r.others_cpu_seconds / r.window_seconds, 2),
                            }
                        )
                for who, runs in lat["runs"].items():
                    p99 = [x["added_latency_us"].get("p99") for x in runs]
                    p50 = [x["added_latency_us"].get("p50") for x in runs]
                    lat[who] = {
                        "added_p50_us_median": statistics.median(v for v in p50 if v is not None),
                        "added_p99_us_median": statistics.median(v for v in p99 if v is not None),
                        "added_p99_us_runs": p99,
                    }
                    print(
                        f"half load ({round(rate):,} pps out) {who:<9} added latency p50"
                        f" {lat[who]['added_p50_us_median']:,.0f} us, p99"
                        f" {lat[who]['added_p99_us_median']:,.0f} us (median of {len(runs)})"
                    )
                out["latency_half_load"] = lat

        finally:
            if shared_load is not None:
                shared_load.stop()
            for server in servers:
                server.stop()
            out["server_log_problems"] = {s.name: s.problems() for s in servers}
    out["direct_baseline_us"] = direct if "direct" in locals() else {}
    out["runs"] = [asdict(x) for x in rows]
    return out


def compare(rows: list[Row], names: list[str], order: list[str]) -> dict[str, Any]:
    """Per scenario: each server's median fwd/CPU-s and loss, and the ratios to Janus."""
    out: dict[str, Any] = {}
    for name in names:
        mine = [
            x for x in rows if x.result["scenario"] == name and x.result["purpose"] == "throughput"
        ]
        entry: dict[str, Any] = {}
        for who in order:
            runs = [x for x in mine if x.server == who]
            per = [x.result["forwarded_per_cpu_second"] for x in runs]
            # Runs with no loss: a run that lost packets had its server (or
            # the load) starved by the rest of the machine, not measured.
            clean = [x.result["forwarded_per_cpu_second"] for x in runs if not x.result["loss_pct"]]
            entry[who] = {
                "forwarded_per_cpu_second_median": round(statistics.median(per)) if per else 0,
                "lossless_median": round(statistics.median(clean)) if clean else 0,
                "lossless_runs": len(clean),
                "runs": per,
                "loss_pct": [x.result["loss_pct"] for x in runs],
                "cpu_share": [x.result["worker_cpu_share"] for x in runs],
                "others_share": [
                    round(x.result["others_cpu_seconds"] / x.result["window_seconds"], 2)
                    for x in runs
                ],
            }
        janus = entry.get("janus", {}).get("forwarded_per_cpu_second_median", 0)
        for who in order:
            if who == "janus" or not janus:
                continue
            rounds = sorted({x.round for x in mine})
            pairs, clean_pairs = [], []
            for rnd in rounds:
                a = [x for x in mine if x.server == who and x.round == rnd]
                j = [x for x in mine if x.server == "janus" and x.round == rnd]
                if a and j and j[0].result["forwarded_per_cpu_second"]:
                    ratio = round(
                        a[0].result["forwarded_per_cpu_second"]
                        / j[0].result["forwarded_per_cpu_second"],
                        3,
                    )
                    pairs.append(ratio)
                    if not a[0].result["loss_pct"] and not j[0].result["loss_pct"]:
                        clean_pairs.append(ratio)
            clean_janus = entry["janus"]["lossless_median"]
            entry[f"{who}/janus"] = {
                "ratio_of_medians": round(entry[who]["forwarded_per_cpu_second_median"] / janus, 3),
                "ratio_of_lossless_medians": (
                    round(entry[who]["lossless_median"] / clean_janus, 3) if clean_janus else None
                ),
                "per_round": pairs,
                "per_lossless_round": clean_pairs,
                "median_of_rounds": round(statistics.median(pairs), 3) if pairs else None,
            }
        out[name] = entry
    return out


def print_compare(cmp: dict[str, Any]) -> None:
    print()
    for name, entry in cmp.items():
        for who, v in entry.items():
            if "/" in who:
                print(
                    f"{name} {who}: {v['ratio_of_medians']:.2f}x (medians of all runs),"
                    f" {v['ratio_of_lossless_medians']}x (of lossless runs);"
                    f" per round {v['per_round']}, lossless rounds {v['per_lossless_round']}"
                )
            else:
                print(
                    f"{name} {who:<9} fwd/cpu-s median {v['forwarded_per_cpu_second_median']:>8,}"
                    f" (lossless {v['lossless_median']:,} of {v['lossless_runs']})"
                    f"  runs {v['runs']}  loss% {v['loss_pct']}  others {v['others_share']}"
                )
    print(flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", default="1x20,1x40")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; server order alternates")
    parser.add_argument("--out-rate", type=float, default=36000, help="packets/s out, in total")
    parser.add_argument("--pps", type=float, default=180, help="packets/s per publisher")
    parser.add_argument("--fps", type=float, default=30, help="frames/s per publisher")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window, seconds")
    parser.add_argument("--quiet-wait", type=float, default=0.0, help="wait up to this for quiet")
    parser.add_argument("--event-loops", type=int, default=2, help="Janus event_loops")
    parser.add_argument("--no-python", action="store_true", help="leave out WADUD_NATIVE=0")
    parser.add_argument("--no-latency", action="store_true", help="skip the half-load runs")
    parser.add_argument(
        "--latency-rate", type=float, default=0, help="half-load packets/s out (default: derived)"
    )
    parser.add_argument("--latency-rounds", type=int, default=3, help="half-load rounds")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "sfu-janus.json"
    )
    parser.add_argument(
        "--from-json", type=Path, help="print the comparison of an earlier run's JSON, run nothing"
    )
    args = parser.parse_args()
    if args.from_json is not None:
        old = json.loads(args.from_json.read_text())
        rows = [Row(**x) for x in old["runs"]]
        names = sorted({x.result["scenario"] for x in rows if x.result["purpose"] == "throughput"})
        order = list(dict.fromkeys(x.server for x in rows))
        print_compare(compare(rows, names, order))
        return 0
    with tempfile.TemporaryDirectory(prefix="sfu-janus-") as tmp:
        out = uvloop.run(main_async(args, Path(tmp)))
    write_results(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
