"""A Redis Sentinel group for tests: Debian's redis-server as a primary and a
replica, and three redis-sentinel processes, all on loopback.

tests/wadud/messaging/test_sentinel.py fails the primary over under the bus and the
clients; tests/signalling/cluster/test_sentinel_call.py under a call of real
processes and pages (its driver starts the group inside its namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import free_port

REDIS_SERVER = Path("/usr/bin/redis-server")
REDIS_SENTINEL = Path("/usr/bin/redis-sentinel")
SERVICE = "wadud"
#: Seconds the sentinels may take to see each other and the replica, and the
#: replica to sync, before a kill; and a failover itself after it.
SETTLE = 20.0
FAILOVER = 15.0


def available() -> bool:
    return REDIS_SERVER.exists() and REDIS_SENTINEL.exists()


@dataclass
class Group:
    primary_port: int
    replica_port: int
    sentinel_ports: list[int]
    work: Path
    #: Every process started, stopped by :func:`sentinels` at its end.
    procs: list[subprocess.Popen[bytes]]
    #: The redis-server processes by port.
    servers: dict[int, subprocess.Popen[bytes]]

    @property
    def primary(self) -> subprocess.Popen[bytes]:
        """The process the group started as its primary, or promoted since."""
        return self.servers[self.primary_port]

    def restore(self) -> None:
        """After a failover (the primary killed, the replica promoted): the
        killed one back as the new primary's replica, so the group can fail
        over again (a test run again on the same group)."""
        if self.primary.poll() is None:
            return
        killed, promoted = self.primary_port, self.replica_port
        self.servers[killed] = _redis(killed, self.work, promoted)
        self.procs.append(self.servers[killed])
        _until_synced(killed)
        self.primary_port, self.replica_port = promoted, killed

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def sentinels(work: Path) -> Iterator[Group]:
    """The group, its files and logs in ``work``; every process stopped after."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        primary_port, replica_port = free_port(), free_port()
        primary = _redis(primary_port, work)
        servers = {primary_port: primary, replica_port: _redis(replica_port, work, primary_port)}
        procs.extend(servers.values())
        # Sentinels learn of replicas from the primary's INFO, which they ask
        # for at once and then every 10 s: start them once the replica is in.
        _until_synced(replica_port)
        sentinel_ports = [free_port() for _ in range(3)]
        for i, port in enumerate(sentinel_ports):
            conf = work / f"sentinel{i}.conf"
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {work}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
            )
            procs.append(_start([str(REDIS_SENTINEL), str(conf)], work / f"sentinel{i}.log"))
        yield Group(primary_port, replica_port, sentinel_ports, work, procs, servers)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _redis(port: int, work: Path, replica_of: int | None = None) -> subprocess.Popen[bytes]:
    """A redis-server on ``port``, a replica of ``replica_of`` if given."""
    args = [str(REDIS_SERVER), "--port", str(port), "--dir", str(work)]
    args += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    if replica_of is not None:
        args += ["--replicaof", "127.0.0.1", str(replica_of)]
    return _start(args, work / f"redis-{port}.log")


def _until_synced(replica_port: int) -> None:
    import redis

    deadline = time.monotonic() + SETTLE
    with redis.Redis(port=replica_port, socket_timeout=2, decode_responses=True) as replica:
        while True:
            with contextlib.suppress(OSError, redis.RedisError):
                if replica.info("replication")["master_link_status"] == "up":
                    return
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.1)


async def settled(group: Group) -> None:
    """Until every sentinel knows the other two and the replica: a failover
    needs a quorum of sentinels that know their peers."""
    import redis.asyncio as aioredis

    deadline = time.monotonic() + SETTLE
    clients = [aioredis.Redis(port=p, socket_timeout=2) for p in group.sentinel_ports]
    try:
        while True:
            states: list[Any] = []
            with contextlib.suppress(OSError, aioredis.RedisError):
                states = [await c.sentinel_master(SERVICE) for c in clients]
            if states and all(
                s["num-other-sentinels"] == 2 and s["num-slaves"] == 1 for s in states
            ):
                return
            assert time.monotonic() < deadline, f"sentinels did not settle: {states}"
            await asyncio.sleep(0.2)
    finally:
        for c in clients:
            await c.aclose()


async def primary_port(group: Group) -> int | None:
    """The primary's port as the first sentinel that answers names it."""
    import redis.asyncio as aioredis

    for port in group.sentinel_ports:
        client = aioredis.Redis(port=port, socket_timeout=1)
        try:
            found: Any = await client.sentinel_get_master_addr_by_name(SERVICE)
            if found:
                return int(found[1])
        except (OSError, aioredis.RedisError):
            continue
        finally:
            await client.aclose()
    return None
