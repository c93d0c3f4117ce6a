"""Side-by-side TURN relay benchmark: coturn against Wadud's relay.

Both servers run at once on loopback (coturn from the Debian package with
``--relay-threads=1``, ours as ``python -m turn.cli`` on uvloop, with the
native hot loop ``turn._relay`` when it is built), behind the same
``turnutils_peer`` echo peer, and are driven in turn by identical
``turnutils_uclient`` loads, ``--runs`` times, the order of the servers
alternating run by run so drift in machine load hits both alike:

* ``channel-100``: ChannelData, 100-byte payloads
* ``channel-1200``: ChannelData, 1200-byte payloads
* ``send-100``: Send/Data indications, 100-byte payloads

``--sizes 100,1200`` runs ChannelData at other payload sizes (``channel-N``
and ``send-N`` scenarios take their size from the name).

For each it reports relayed packets per CPU-second of the server, counting
two relayed packets (client to peer, peer to client) per echo the load client
got back, so lost datagrams earn nothing: user + system time of every thread of the server
process and of any process it started (coturn and ours are each one process
today; a forked worker would count too), read just before and just after the
same load client run, so both servers are measured over exactly their own
load and nothing else. It prints the offered rate and loss of every run, then
per server the median, the spread (lowest to highest of the runs) and the
total loss, and the ratio of medians ours/coturn with each run's ratio.

A run's CPU includes the load client's allocation set-up (about 14 STUN
requests per session, which our Python core answers with about twice
coturn's CPU): ``--count`` messages per session make the relaying dominate
it. The default, 2000, keeps the set-up near a sixth of our CPU in a run;
longer runs lost datagrams on a busy 2-core machine, for both servers
(kernel receive-buffer drops; likely ``turnutils_peer``'s one socket while
it is descheduled). To show
the relaying alone, each server first serves ``--setup-runs`` loads of one
message per session; the median CPU of those is the set-up estimate, and
the summary also gives relayed per CPU-second with it taken off each run
(an estimate: labelled "less set-up"). ``--servers`` adds
``wadud-py``, our relay with ``WADUD_NATIVE=0`` (the pure-Python loop). Added round-trip time comes
from a separate probe: sequential 100-byte ChannelData pings through each
relay, minus the p50 of the same pings sent straight to the echo peer.

Everything stays on 127.0.0.1; every load is bounded in count and time.

    .venv/bin/python -m benchmarks.turn.run [--quick] [--runs N] [--json PATH]
        [--servers coturn,wadud,wadud-py] [--scenarios channel-100,channel-1200]
        [--sizes 100,1200] [--sessions N] [--count N]
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from benchmarks.common import (
    ROOT,
    command_line,
    commit_of,
    start_group,
    stop_group,
    udp_rcvbuf_errors,
    write_results,
)
from rtc import stun
from turn.credentials import rest_credentials

SECRET = "bench-secret"
REALM = "bench.wadud"
HOST = "127.0.0.1"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP on loopback."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.bind((HOST, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


@dataclass
class LoadResult:
    server: str
    scenario: str
    sent: int
    received: int
    lost: int
    loss_pct: float
    cpu_seconds: float
    cpu_user: float
    cpu_system: float
    wall_seconds: float
    offered_pps: float
    relayed_per_cpu_second: float
    # Kernel-wide UDP receive-buffer overflows during the run (any socket:
    # server, uclient or peer), to tell scheduling stalls from relay drops.
    udp_rcvbuf_errors: int


@dataclass
class RttResult:
    server: str
    p50_us: float
    p90_us: float
    p99_us: float
    added_p50_us: float


class Server:
    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None):
        self.name = name
        self.port = port
        self.proc = start_group(argv, None, env=env, cwd=ROOT)
        self.ps = psutil.Process(self.proc.pid)
        wait_stun(port)

    def cpu(self) -> tuple[float, float]:
        """(user, system) CPU seconds so far of the server: every thread of
        its process, every live descendant, and the children it has reaped."""
        t = self.ps.cpu_times()
        user = t.user + t.children_user
        system = t.system + t.children_system
        for child in self.ps.children(recursive=True):
            try:
                c = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            user += c.user
            system += c.system
        return float(user), float(system)

    def stop(self) -> None:
        stop_group(self.proc, grace=10)


def wait_stun(port: int, deadline: float = 15.0) -> None:
    """Block until a Binding request to ``port`` is answered."""
    end = time.monotonic() + deadline
    req = bytes(stun.StunMessage(stun.BINDING, stun.REQUEST, os.urandom(12)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < end:
            s.sendto(req, (HOST, port))
            try:
                s.recvfrom(2048)
                return
            except OSError:
                continue
    raise RuntimeError(f"server on {port} did not answer")


def start_coturn(port: int, min_port: int, max_port: int, tmp: Path) -> Server:
    argv = [
        "turnserver",
        "-n",
        "--listening-ip", HOST,
        "--listening-port", str(port),
        "--relay-ip", HOST,
        "--min-port", str(min_port),
        "--max-port", str(max_port),
        "--use-auth-secret",
        "--static-auth-secret", SECRET,
        "--realm", REALM,
        "--relay-threads=1",
        "--allow-loopback-peers",
        "--no-tls", "--no-dtls", "--no-cli",
        "--no-stdout-log",
        "--log-file", str(tmp / "coturn.log"),
        "--pidfile", str(tmp / "coturn.pid"),
    ]  # fmt: skip
    return Server("coturn", argv, port)


def start_ours(port: int, min_port: int, max_port: int, native: bool = True) -> Server:
    argv = [
        sys.executable, "-m", "turn.cli",
        "--listen", f"{HOST}:{port}",
        "--relay-ip", HOST,
        "--min-port", str(min_port),
        "--max-port", str(max_port),
        "--secret", SECRET,
        "--realm", REALM,
        "--allow-peer", "127.0.0.0/8",
        # uclient's sessions are all one user, and every run leaves its
        # allocations behind until they expire: no quota may bite.
        "--user-quota", "100000",
        "--total-quota", "100000",
        "--unauth-rate", "0",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), WADUD_NATIVE="1" if native else "0")
    return Server("wadud" if native else "wadud-py", argv, port, env)


# Each load client run gets its own loopback source address: uclient leaves
# its allocations behind, and a later run reusing one of those 5-tuples would
# be refused (437) by either server.
_SOURCES = itertools.count()
_UCLIENT_TOTALS = re.compile(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)")
_UCLIENT_LOST = re.compile(r"Total lost packets (\d+)")
_UCLIENT_TIME = re.compile(r"Total transmit time is (\d+)")


def payload_size(scenario: str) -> int:
    """``channel-1200`` -> 1200: a scenario names its payload size."""
    return int(scenario.rsplit("-", 1)[1])


def run_uclient(
    server: Server, peer_port: int, scenario: str, sessions: int, count: int
) -> LoadResult:
    size = payload_size(scenario)
    argv = [
        "turnutils_uclient",
        "-c",  # no RTCP twin allocations
        "-W", SECRET,
        "-e", HOST, "-r", str(peer_port),
        "-p", str(server.port),
        "-m", str(sessions),
        "-n", str(count),
        "-z", "1",
        "-l", str(size),
        "-L", f"127.0.0.{next(_SOURCES) % 240 + 10}",
    ]  # fmt: skip
    if scenario.startswith("send"):
        argv.append("-s")
    argv.append(HOST)
    # uclient's set-up takes ~10 s here; then it offers ~15-20k datagrams/s.
    timeout = 60 + sessions * count / 2000
    user0, sys0 = server.cpu()
    drops0 = udp_rcvbuf_errors()
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False).stdout
    wall = time.monotonic() - t0
    user1, sys1 = server.cpu()
    user, system = user1 - user0, sys1 - sys0
    cpu = user + system
    drops = udp_rcvbuf_errors() - drops0
    totals = _UCLIENT_TOTALS.findall(out)
    if not totals:
        raise RuntimeError(f"uclient against {server.name} printed no totals:\n{out[-2000:]}")
    sent, received = (int(x) for x in totals[-1])
    lost_match = _UCLIENT_LOST.search(out)
    lost = int(lost_match.group(1)) if lost_match else sent - received
    # uclient's "transmit time" is whole seconds, so the rate is approximate.
    time_match = _UCLIENT_TIME.findall(out)
    transmit = max(1, int(time_match[-1])) if time_match else max(1.0, wall)
    # Each echo that came back crossed the relay twice (client to peer, peer
    # to client). A lost datagram is not counted: it may never have reached
    # the server, and counting it (as sent + received did) made the runs
    # with the most loss look the most efficient.
    relayed = 2 * received
    return LoadResult(
        server=server.name,
        scenario=scenario,
        sent=sent,
        received=received,
        lost=lost,
        loss_pct=round(100.0 * lost / sent, 3) if sent else 0.0,
        cpu_seconds=round(cpu, 3),
        cpu_user=round(user, 3),
        cpu_system=round(system, 3),
        wall_seconds=round(wall, 2),
        offered_pps=round(sent / transmit),
        relayed_per_cpu_second=round(relayed / cpu) if cpu > 0 else 0,
        udp_rcvbuf_errors=drops,
    )


# --- round-trip probe: a tiny blocking TURN client -------------------------------------


def _request(
    sock: socket.socket, server: tuple[str, int], msg: stun.StunMessage
) -> stun.StunMessage:
    data = bytes(msg)
    for _ in range(10):
        sock.sendto(data, server)
        try:
            while True:
                reply, _ = sock.recvfrom(4096)
                if reply[0] < 0x40:
                    parsed = stun.StunMessage.parse(reply)
                    if parsed.transaction_id == msg.transaction_id:
                        return parsed
        except TimeoutError:
            continue
    raise RuntimeError("no answer")


def open_channel(server: tuple[str, int], peer: tuple[str, int]) -> tuple[socket.socket, bytes]:
    """Allocate and bind channel 0x4000 to ``peer``; returns the connected socket
    and a signed Refresh with lifetime 0 that deletes the allocation."""
    username, password = rest_credentials(SECRET, "probe", 600, time.time())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.5)
    req = stun.StunMessage(stun.ALLOCATE, stun.REQUEST, os.urandom(12))
    req.add(stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(stun.TRANSPORT_UDP))
    challenge = _request(sock, server, req)
    nonce = challenge.get(stun.NONCE)
    realm = challenge.get(stun.REALM)
    assert nonce is not None
    assert realm is not None
    key = stun.long_term_key(username, realm.decode(), password)

    def signed(method: int, *attrs: tuple[int, Any]) -> stun.StunMessage:
        m = stun.StunMessage(method, stun.REQUEST, os.urandom(12))
        for t, v in attrs:
            # Address values are XORed with this message's transaction id.
            m.set(t, v) if t == stun.XOR_PEER_ADDRESS else m.add(t, v)
        m.add(stun.USERNAME, username.encode()).add(stun.REALM, realm).add(stun.NONCE, nonce)
        return m.add_integrity(key)

    tr = stun.pack_u8_rffu(stun.TRANSPORT_UDP)
    ok = _request(sock, server, signed(stun.ALLOCATE, (stun.REQUESTED_TRANSPORT, tr)))
    assert ok.cls == stun.SUCCESS, ok
    ch = stun.pack_channel(0x4000)
    bind = signed(stun.CHANNEL_BIND, (stun.CHANNEL_NUMBER, ch), (stun.XOR_PEER_ADDRESS, peer))
    ok = _request(sock, server, bind)
    assert ok.cls == stun.SUCCESS, ok
    sock.connect(server)
    # Delete it when done, so a later load client that happens to get the
    # same source port does not find it still there.
    delete = bytes(signed(stun.REFRESH, (stun.LIFETIME, stun.U32.pack(0))))
    return sock, delete


def ping(sock: socket.socket, payload: bytes, count: int) -> list[float]:
    """Sequential round trips in microseconds; each waits for its echo."""
    out: list[float] = []
    sock.settimeout(1.0)
    for _ in range(count):
        t0 = time.perf_counter_ns()
        sock.send(payload)
        try:
            sock.recv(4096)
        except TimeoutError:
            continue
        out.append((time.perf_counter_ns() - t0) / 1000.0)
    return out


def rtt_probe(servers: list[Server], peer_port: int, count: int) -> list[RttResult]:
    payload = bytes(100)
    direct = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    direct.connect((HOST, peer_port))
    framed = struct.pack("!HH", 0x4000, len(payload)) + payload
    opened = {s.name: open_channel((HOST, s.port), (HOST, peer_port)) for s in servers}
    socks = {name: sock for name, (sock, _) in opened.items()}
    samples: dict[str, list[float]] = {"direct": [], **{name: [] for name in socks}}
    # Interleave rounds so drift in machine load hits every path alike.
    rounds = 10
    for _ in range(rounds):
        samples["direct"] += ping(direct, payload, count // rounds)
        for name, sock in socks.items():
            samples[name] += ping(sock, framed, count // rounds)
    base = statistics.median(samples["direct"])
    results = [RttResult("direct", round(base, 1), *_pcts(samples["direct"])[1:], 0.0)]
    for name in socks:
        p50, p90, p99 = _pcts(samples[name])
        results.append(RttResult(name, p50, p90, p99, round(p50 - base, 1)))
    for sock, delete in opened.values():
        sock.send(delete)
        sock.close()
    direct.close()
    return results


def _pcts(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    n = len(xs)
    return (
        round(xs[n // 2], 1),
        round(xs[min(n - 1, int(n * 0.9))], 1),
        round(xs[min(n - 1, int(n * 0.99))], 1),
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small loads, for a smoke test")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "turn.json"))
    parser.add_argument("--sessions", type=int, default=None, help="uclient sessions (-m)")
    parser.add_argument("--count", type=int, default=None, help="messages per session (-n)")
    parser.add_argument("--scenarios", default=None, help="comma-separated subset to run")
    parser.add_argument(
        "--sizes", default=None, help="ChannelData payload sizes, e.g. 100,1200 (channel-N)"
    )
    parser.add_argument("--runs", type=int, default=None, help="runs per scenario and server")
    parser.add_argument(
        "--setup-runs", type=int, default=None, help="one-message loads to estimate set-up CPU"
    )
    parser.add_argument(
        "--servers", default="coturn,wadud", help="coturn, wadud and/or wadud-py (pure Python)"
    )
    args = parser.parse_args()
    for tool in ("turnserver", "turnutils_uclient", "turnutils_peer"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install -y coturn", file=sys.stderr)
            return 2
    sessions = args.sessions or (10 if args.quick else 110)
    count = args.count or (300 if args.quick else 2000)
    runs = args.runs or (1 if args.quick else 7)
    scenarios = ["channel-100"] if args.quick else ["channel-100", "channel-1200", "send-100"]
    if args.sizes:
        scenarios = [f"channel-{int(n)}" for n in args.sizes.split(",")]
    if args.scenarios:
        scenarios = args.scenarios.split(",")
    for scenario in scenarios:
        kind, _, size = scenario.partition("-")
        if kind not in ("channel", "send") or not size.isdigit():
            parser.error(f"unknown scenario {scenario!r}: channel-N or send-N")
    names = args.servers.split(",")
    if "coturn" not in names or not set(names) <= {"coturn", "wadud", "wadud-py"}:
        parser.error("--servers: coturn and at least one of wadud, wadud-py")
    rtt_count = 500 if args.quick else 4000
    setup_runs = args.setup_runs if args.setup_runs is not None else (0 if args.quick else 3)

    tmp = Path(tempfile.mkdtemp(prefix="turn-bench-"))
    peer_port = free_port()
    peer = start_group(["turnutils_peer", "-L", HOST, "-p", str(peer_port)], None)
    servers: list[Server] = []
    loads: list[LoadResult] = []
    try:
        for i, name in enumerate(names):
            lo = 40000 + 5000 * i
            if name == "coturn":
                servers.append(start_coturn(free_port(), lo, lo + 4999, tmp))
            else:
                servers.append(start_ours(free_port(), lo, lo + 4999, name == "wadud"))
        time.sleep(0.3)
        rtts = rtt_probe(servers, peer_port, rtt_count)
        setups: dict[str, list[float]] = {s.name: [] for s in servers}
        for run in range(setup_runs):
            for server in servers if run % 2 == 0 else servers[::-1]:
                r = run_uclient(server, peer_port, "channel-100", sessions, 1)
                setups[server.name].append(r.cpu_seconds)
        setup_cpu = {n: statistics.median(v) if v else 0.0 for n, v in setups.items()}
        if setup_runs:
            listed = ", ".join(f"{n} {v:.3f} s" for n, v in setup_cpu.items())
            print(f"set-up CPU per run ({sessions} sessions, median of {setup_runs}): {listed}")
        for scenario in scenarios:
            for run in range(runs):
                # Alternate the order run by run.
                order = servers if run % 2 == 0 else servers[::-1]
                for server in order:
                    try:
                        r = run_uclient(server, peer_port, scenario, sessions, count)
                    except RuntimeError as exc:
                        # Rarely a uclient session finds a channel it cannot
                        # bind (both servers have done it): run again, from a
                        # fresh source address, and say so.
                        print(f"retrying: {str(exc)[:200]}", flush=True)
                        r = run_uclient(server, peer_port, scenario, sessions, count)
                    loads.append(r)
                    print(
                        f"run {run + 1}/{runs} {scenario} {r.server}: "
                        f"{r.relayed_per_cpu_second:,.0f} relayed/cpu-s, lost {r.lost}",
                        flush=True,
                    )
    finally:
        for server in servers:
            server.stop()
        stop_group(peer, grace=10)
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\nTURN relay benchmark ({sessions} uclient sessions x {count} messages, -z 1, "
        f"{runs} run(s) per server, order alternating)\n"
    )
    header = (
        f"{'scenario':<14}{'server':<10}{'sent':>8}{'lost':>7}{'loss%':>7}{'pps':>8}"
        f"{'cpu s':>8}{'user':>7}{'sys':>7}{'relayed/cpu-s':>15}{'rcvbuf drops':>14}"
    )
    print(header)
    print("-" * len(header))
    ratios: dict[str, float] = {}
    run_ratios: dict[str, list[float]] = {}
    medians: dict[str, dict[str, float]] = {}
    spreads: dict[str, dict[str, list[float]]] = {}
    less_setup: dict[str, dict[str, float]] = {}
    lost: dict[str, dict[str, int]] = {}
    for scenario in scenarios:
        med: dict[str, float] = {}
        spreads[scenario] = {}
        lost[scenario] = {}
        for name in names:
            mine = [r for r in loads if r.server == name and r.scenario == scenario]
            for r in mine:
                print(
                    f"{scenario:<14}{name:<10}{r.sent:>8}{r.lost:>7}{r.loss_pct:>7.2f}"
                    f"{r.offered_pps:>8.0f}{r.cpu_seconds:>8.2f}{r.cpu_user:>7.2f}"
                    f"{r.cpu_system:>7.2f}{r.relayed_per_cpu_second:>15,.0f}"
                    f"{r.udp_rcvbuf_errors:>14}"
                )
            rates = [r.relayed_per_cpu_second for r in mine]
            med[name] = statistics.median(rates)
            if setup_runs:
                relay_only = [
                    2 * r.received / (r.cpu_seconds - setup_cpu[name])
                    for r in mine
                    if r.cpu_seconds > setup_cpu[name]
                ]
                less_setup.setdefault(scenario, {})[name] = round(statistics.median(relay_only))
            spreads[scenario][name] = [min(rates), max(rates)]
            lost[scenario][name] = sum(r.lost for r in mine)
        medians[scenario] = med
        for name in names:
            low, high = spreads[scenario][name]
            print(
                f"{'':<14}{name}: median {med[name]:,.0f} relayed/cpu-s "
                f"(runs {low:,.0f} to {high:,.0f}), lost {lost[scenario][name]}"
            )
        for name in names:
            if name == "coturn" or not med["coturn"]:
                continue
            key = scenario if name == "wadud" else f"{scenario}/{name}"
            ratios[key] = round(med[name] / med["coturn"], 3)
            pairs = zip(
                (r for r in loads if r.server == name and r.scenario == scenario),
                (r for r in loads if r.server == "coturn" and r.scenario == scenario),
                strict=True,
            )
            run_ratios[key] = [
                round(w.relayed_per_cpu_second / c.relayed_per_cpu_second, 2)
                for w, c in pairs
                if c.relayed_per_cpu_second
            ]
            label = "ours" if name == "wadud" else name
            each = run_ratios[key]
            if scenario in less_setup:
                ls = less_setup[scenario]
                print(
                    f"{'':<14}less set-up: {name} {ls[name]:,.0f}, coturn {ls['coturn']:,.0f}"
                    f" relayed/cpu-s, {label}/coturn {ls[name] / ls['coturn']:.2f}x"
                )
            print(
                f"{'':<14}{label}/coturn per CPU-second: {ratios[key]:.2f}x"
                f" (ratio of medians; run by run {min(each):.2f} to {max(each):.2f}:"
                f" {', '.join(f'{x:.2f}' for x in each)})"
            )
    print(f"\nround trip, 100-byte ChannelData, {rtt_count} sequential pings")
    print(f"{'path':<10}{'p50 us':>10}{'p90 us':>10}{'p99 us':>10}{'added p50':>12}")
    for q in rtts:
        print(
            f"{q.server:<10}{q.p50_us:>10.1f}{q.p90_us:>10.1f}{q.p99_us:>10.1f}{q.added_p50_us:>12.1f}"
        )
    rtt = {q.server: q for q in rtts}
    ours = "wadud" if "wadud" in rtt else "wadud-py"
    diff = round(rtt[ours].added_p50_us - rtt["coturn"].added_p50_us, 1)
    print(f"added p50, ours minus coturn: {diff:+.1f} us")

    result: dict[str, Any] = {
        "quick": args.quick,
        "sessions": sessions,
        "count": count,
        "runs": runs,
        "loads": [asdict(r) for r in loads],
        "command": command_line("benchmarks.turn.run"),
        "commit": commit_of(ROOT),
        "median_relayed_per_cpu_second": medians,
        "spread_relayed_per_cpu_second": spreads,
        "lost": lost,
        "setup_cpu_seconds": setup_cpu,
        "median_relayed_per_cpu_second_less_setup": less_setup,
        "ratio_per_cpu_second": ratios,
        "run_ratios": run_ratios,
        "rtt": [asdict(r) for r in rtts],
        "added_p50_diff_us": diff,
        "time": time.time(),
    }
    print()
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
