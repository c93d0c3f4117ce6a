"""The relay's UDP hot path on both implementations, and the C leaf on its own.

``turn._relay`` (C) and the pure-Python loop of turn/aio.py must relay the
same bytes, in the same order per route, count the same, and leave every
unusual datagram to the same Python code. The server tests here run on both
paths (``path`` fixture); the leaf tests drive ``client_to_peer`` and
``peer_to_client`` on real loopback sockets against a model of what must be
relayed, with Hypothesis choosing the datagrams. The rest of tests/turn runs
on whichever path ``WADUD_NATIVE`` selects (CI runs it both ways).
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from fuzz.targets.relay import ClientToPeer, Relay, drain, relay_all
from rtc import stun
from tests.turn.conftest import EchoPeer, RawClient, make_config
from turn.aio import TurnServer
from turn.allocation import Allocation
from wadud.config import sources

try:
    from turn import _relay  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - CI checks the module was built
    _relay = None

needs_native = pytest.mark.skipif(_relay is None, reason="turn._relay is not built")
PATHS = [pytest.param("native", marks=needs_native), "python"]


@pytest.fixture(params=PATHS)
async def server(request: pytest.FixtureRequest) -> AsyncIterator[TurnServer]:
    srv = TurnServer(make_config(), native=request.param == "native")
    await srv.start()
    assert (srv.native is not None) == (request.param == "native")
    try:
        yield srv
    finally:
        await srv.close()


def malformed(reason: str) -> float:
    return REGISTRY.get_sample_value("turn_malformed_dropped_total", {"reason": reason}) or 0.0


async def bound_client(
    server: TurnServer, peer: tuple[str, int], channel: int = 0x4000
) -> RawClient:
    client = await RawClient.open(server.udp_addresses[0])
    client.credentials()
    assert (await client.allocate()).cls == stun.SUCCESS
    assert (await client.channel_bind(channel, peer)).cls == stun.SUCCESS
    return client


def channel_data(channel: int, payload: bytes) -> bytes:
    return struct.pack("!HH", channel, len(payload)) + payload


async def gather(client: RawClient, n: int, wait: float = 3.0) -> list[bytes]:
    out: list[bytes] = []
    end = time.monotonic() + wait
    while len(out) < n:
        out.append(await client.recv(max(0.01, end - time.monotonic())))
    return out


async def test_bursts_of_channel_data_are_relayed_in_order_both_ways(
    server: TurnServer, echo_peer: EchoPeer
) -> None:
    """Interleaved bursts from three clients, sizes chosen so that the native
    path groups some datagrams into one GSO message and breaks others apart."""
    clients = [await bound_client(server, echo_peer.address, 0x4000 + i) for i in range(3)]
    # (asyncio will not send an empty datagram, so the echo peer cannot echo one.)
    sizes = [100] * 5 + [1200] * 4 + [80, 1200, 1200, 7, 1, 300, 300, 299, 300]
    sent: list[list[bytes]] = [[] for _ in clients]
    for k, size in enumerate(sizes):
        for i, client in enumerate(clients):
            payload = bytes([i, k % 256]) * (size // 2) + bytes(size % 2)
            sent[i].append(payload)
            client.send(channel_data(0x4000 + i, payload))
    try:
        for i, client in enumerate(clients):
            got = await gather(client, len(sizes))
            assert got == [channel_data(0x4000 + i, p) for p in sent[i]]
        for alloc in server.core.allocator.allocations:
            assert alloc.to_peer_pkts == alloc.from_peer_pkts == len(sizes)
            assert alloc.to_peer_bytes == alloc.from_peer_bytes == sum(sizes)
        relayed = [a.relay_addr for a in server.core.allocator.allocations]
        seen_by_peer: dict[Any, list[bytes]] = {}
        for data, addr in echo_peer.seen:
            seen_by_peer.setdefault(addr[:2], []).append(data)
        assert sorted(map(len, seen_by_peer.values())) == [len(sizes)] * 3
        assert set(seen_by_peer) == set(relayed)
    finally:
        for client in clients:
            client.close()


async def test_data_indications_match_the_core_byte_for_byte(
    server: TurnServer, echo_peer: EchoPeer
) -> None:
    """A permitted peer without a channel: the first Data indication is built by
    the core (which caches the peer's TLV), the rest by whichever path runs."""
    client = await RawClient.open(server.udp_addresses[0])
    client.credentials()
    try:
        assert (await client.allocate()).cls == stun.SUCCESS
        assert (await client.permit(echo_peer.address)).cls == stun.SUCCESS
        (alloc,) = server.core.allocator.allocations
        payloads = [os.urandom(n) for n in (1, 2, 3, 4, 100, 1200, 1201, 5)]
        for p in payloads:
            ind = client.request(stun.SEND, (stun.XOR_PEER_ADDRESS, echo_peer.address))
            ind.cls = stun.INDICATION
            ind.add(stun.DATA_ATTR, p)
            client.send(bytes(ind))
        got = await gather(client, len(payloads))
        peer = (echo_peer.address[0], echo_peer.address[1])
        assert got == [server.datapath.data_indication(alloc, peer, p) for p in payloads]
        assert alloc.from_peer_pkts == len(payloads)
        assert alloc.from_peer_bytes == sum(map(len, payloads))
    finally:
        client.close()


async def test_junk_in_a_batch_is_counted_and_the_rest_relayed(
    server: TurnServer, echo_peer: EchoPeer
) -> None:
    client = await bound_client(server, echo_peer.address)
    stranger = await RawClient.open(server.udp_addresses[0])
    before = {r: malformed(r) for r in ("not_stun", "unbound_channel", "channel_data")}
    no_alloc = malformed("no_allocation")
    try:
        binding = stun.StunMessage(stun.BINDING, stun.REQUEST, os.urandom(12))
        batch = [
            channel_data(0x4000, b"one"),
            b"\xc0\x00\x00\x00",  # neither STUN nor ChannelData
            b"\x40",  # too short
            channel_data(0x4001, b"unbound"),
            b"\x40\x00\x00\x09abc",  # length past the end
            bytes(binding),
            channel_data(0x4000, b"two"),
        ]
        for data in batch:
            client.send(data)
        stranger.send(channel_data(0x4000, b"no allocation"))
        got = await gather(client, 3)
        assert channel_data(0x4000, b"one") in got
        assert channel_data(0x4000, b"two") in got
        reply = next(stun.StunMessage.parse(d) for d in got if d[0] < 0x40)
        assert reply.transaction_id == binding.transaction_id
        assert got.index(channel_data(0x4000, b"one")) < got.index(channel_data(0x4000, b"two"))
        await asyncio.sleep(0.05)
        assert malformed("not_stun") - before["not_stun"] == 2
        assert malformed("unbound_channel") - before["unbound_channel"] == 1
        assert malformed("channel_data") - before["channel_data"] == 1
        assert malformed("no_allocation") - no_alloc == 1
    finally:
        client.close()
        stranger.close()


async def test_peer_without_permission_is_dropped_and_counted(
    server: TurnServer, echo_peer: EchoPeer
) -> None:
    client = await bound_client(server, echo_peer.address)
    loop = asyncio.get_running_loop()
    (alloc,) = server.core.allocator.allocations
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.2", 0))
    before = malformed("no_permission")
    try:
        for _ in range(3):
            await loop.sock_sendto(other, b"let me in", alloc.relay_addr)
        client.send(channel_data(0x4000, b"ping"))
        assert await client.recv() == channel_data(0x4000, b"ping")
        await client.recv_nothing(0.1)
        assert malformed("no_permission") - before == 3
        assert alloc.from_peer_pkts == 1
    finally:
        other.close()
        client.close()


@pytest.mark.parametrize("path", PATHS)
async def test_a_capped_allocation_is_held_to_its_budget(path: str, echo_peer: EchoPeer) -> None:
    """max_bps allocations take the Python path whichever path runs."""
    server = TurnServer(make_config(max_bps=8 * 1000), native=path == "native")
    await server.start()
    client = await bound_client(server, echo_peer.address)
    try:
        for _ in range(30):
            client.send(channel_data(0x4000, bytes(100)))
        got: list[bytes] = []
        while True:
            try:
                got.append(await client.recv(0.3))
            except TimeoutError:
                break
        (alloc,) = server.core.allocator.allocations
        # 1,000 bytes a second each way: at most 10 go out, and back.
        assert 1 <= alloc.to_peer_pkts <= 10
        assert len(got) <= alloc.to_peer_pkts
    finally:
        client.close()
        await server.close()


async def test_ipv6_channel_data(echo_peer: EchoPeer) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    for native in [False] + ([True] if _relay is not None else []):
        server = TurnServer(make_config(listen_udp=(("::1", 0),), listen_tcp=()), native=native)
        try:
            await server.start()
        except OSError:
            pytest.skip("no ::1 here")
        loop = asyncio.get_running_loop()
        transport, peer = await loop.create_datagram_endpoint(EchoPeer, local_addr=("::1", 0))
        client = await RawClient.open(server.udp_addresses[0], "::1")
        client.credentials()
        try:
            assert (
                await client.allocate(
                    (stun.REQUESTED_ADDRESS_FAMILY, stun.pack_u8_rffu(stun.FAMILY_IPV6))
                )
            ).cls == stun.SUCCESS
            assert (await client.channel_bind(0x4000, peer.address)).cls == stun.SUCCESS
            for i in range(5):
                client.send(channel_data(0x4000, b"v6 %d" % i))
            got = await gather(client, 5)
            assert got == [channel_data(0x4000, b"v6 %d" % i) for i in range(5)]
        finally:
            client.close()
            transport.close()
            await server.close()


def test_wadud_native_is_not_a_setting() -> None:
    """The settings loader refuses unknown WADUD_* variables, but not this one."""
    settings_ = sources.load(env={"WADUD_NATIVE": "0"})
    assert settings_ is not None


# --- the C leaf on its own ------------------------------------------------------------


def _udp(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


def _wait_readable(sock: socket.socket) -> None:
    """Until a datagram is queued (loopback delivers within sendto, but be sure)."""
    select.select([sock], [], [], 1.0)


@pytest.fixture
def leaf_world() -> Iterator[dict[str, Any]]:
    """A listener, two clients with allocations (one capped), three peers."""
    listener = _udp()
    clients = [_udp() for _ in range(3)]
    peers = [_udp() for _ in range(3)]
    relays = [_udp() for _ in range(2)]
    allocations: dict[Any, Allocation] = {}
    for i in range(2):
        alloc = Allocation(None, clients[i].getsockname(), "u", "u", b"k", 1, 0.0)
        alloc.relay = Relay(relays[i])
        alloc.channels = {0x4000: peers[0].getsockname(), 0x4001 + i: peers[1 + i].getsockname()}
        allocations[clients[i].getsockname()] = alloc
    allocations[clients[1].getsockname()].limited = True
    world = {
        "listener": listener,
        "clients": clients,
        "peers": peers,
        "relays": relays,
        "allocations": allocations,
    }
    try:
        yield world
    finally:
        for s in [listener, *clients, *peers, *relays]:
            s.close()


_datagram = st.one_of(
    # (client index, channel, payload, declared-length change)
    st.tuples(
        st.integers(0, 2),
        st.sampled_from([0x4000, 0x4001, 0x4002, 0x7FFF]),
        st.sampled_from([b"", b"x", b"abc", bytes(100), bytes(1199), bytes(1200)]),
        st.sampled_from([0, 0, 0, 1, -1]),
    ),
    st.tuples(st.integers(0, 2), st.binary(min_size=0, max_size=24)),
)


@needs_native
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(_datagram, min_size=1, max_size=40))
def test_client_to_peer_relays_what_the_model_says(
    leaf_world: dict[str, Any], batch: list[tuple[Any, ...]]
) -> None:
    w = leaf_world
    listener, clients, peers, allocations = (
        w["listener"], w["clients"], w["peers"], w["allocations"],
    )  # fmt: skip
    for a in allocations.values():
        a.to_peer_pkts = a.to_peer_bytes = 0
    model = ClientToPeer(allocations)
    dest = listener.getsockname()
    for item in batch:
        ci = item[0]
        src = clients[ci].getsockname()
        if len(item) == 4:
            _, ch, payload, delta = item
            declared = max(0, len(payload) + delta)
            data = struct.pack("!HH", ch, declared) + payload
        else:
            data = item[1]
        clients[ci].sendto(data, dest)
        model.sent(src, data)
    _wait_readable(listener)
    got_relayed, got_rest = relay_all(
        lambda slow: _relay.client_to_peer(listener.fileno(), allocations, 64, slow)
    )
    assert got_relayed == model.relayed
    assert got_rest == model.rest
    for peer_sock in peers:
        got = [d for d, _ in drain(peer_sock)]
        assert got == model.at.get(peer_sock.getsockname(), [])
    for src, alloc in allocations.items():
        assert [alloc.to_peer_pkts, alloc.to_peer_bytes] == model.counted[src]


@needs_native
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sends=st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from([0, 1, 2, 3, 99, 100, 1200, 1201, 1500])),
        min_size=1,
        max_size=40,
    )
)
def test_peer_to_client_frames_what_the_core_would(
    leaf_world: dict[str, Any], sends: list[tuple[int, int]]
) -> None:
    """Peer 0 has a channel, peer 1 a permission and a cached TLV, peer 2 a
    permission only (the core builds its first indication): handed back."""
    from turn.core import TurnCore

    w = leaf_world
    peers, relays, clients = w["peers"], w["relays"], w["clients"]
    alloc = w["allocations"][clients[0].getsockname()]
    alloc.from_peer_pkts = alloc.from_peer_bytes = 0
    p0, p1, p2 = (p.getsockname() for p in peers)
    alloc.peer_channels = {p0: 0x4000}
    alloc.permissions = {p0[0]: 1e18}
    alloc.data_txid = bytes(range(12))
    core = TurnCore(make_config(), lambda *a: None, lambda *a: None)
    alloc.data_xpa = {}
    core.datapath.data_indication(alloc, p1, b"")  # fills the cache for p1 only
    # p2 shares p0/p1's IP on loopback, so it is permitted but uncached.
    expected_client: list[bytes] = []
    expected_rest: list[tuple[bytes, Any]] = []
    for who, size in sends:
        payload = bytes([who]) * size
        peers[who].sendto(payload, relays[0].getsockname())
        addr = (p0, p1, p2)[who]
        if who == 0:
            expected_client.append(struct.pack("!HH", 0x4000, size) + payload)
        elif who == 1:
            expected_client.append(core.datapath.data_indication(alloc, p1, payload))
        else:
            expected_rest.append((payload, addr))
    _wait_readable(relays[0])
    got_relayed, got_rest = relay_all(
        lambda slow: _relay.peer_to_client(
            relays[0].fileno(), w["listener"].fileno(), alloc, 64, slow
        )
    )
    assert got_relayed == len(expected_client)
    assert got_rest == expected_rest
    got = [(d, a) for d, a in drain(clients[0])]
    assert [d for d, _ in got] == expected_client
    assert all(a == w["listener"].getsockname() for _, a in got)
    assert alloc.from_peer_pkts == len(expected_client)
