"""The TURN relay's native UDP loops (turn/_relay.c) on real loopback sockets.

The input is cut into datagrams (see :func:`datagrams`) that clients send to
the listener, or peers to a relayed socket, before one call of
``client_to_peer`` or ``peer_to_client`` drains them with recvmmsg: the C
code then parses ChannelData headers, looks channels and permissions up and
frames Data indications for a whole batch. What it relays and what it hands
back to Python must be what the pure-Python loop would do, datagram by
datagram (the model of :class:`ClientToPeer`, which
tests/turn/test_turn_native.py holds the leaf to as well); a difference is
a finding, as is a sanitizer report.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fuzz import Finding
from turn.allocation import Allocation
from turn.config import TurnConfig
from turn.core import TurnCore

try:
    from turn import _relay  # type: ignore[attr-defined]
except ImportError:  # built by setup.py unless the compiler is missing
    _relay = None

AVAILABLE = _relay is not None
CHANNELS = (0x4000, 0x4001, 0x4002, 0x7FFF)


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


class Relay:
    """What the leaf reads of an allocation's relay endpoint (also used by
    tests/turn/test_turn_native.py)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()


class World:
    """A listener, three clients (two with allocations, one capped), three peers, two relays.

    Client 0's channels 0x4000 and 0x4001 go to peers 0 and 1; client 1's
    0x4000 and 0x4002 to peers 0 and 2, but its allocation is bandwidth
    capped, so the leaf hands all of it back; client 2 has no allocation.
    """

    def __init__(self) -> None:
        self.listener = _udp()
        self.clients = [_udp() for _ in range(3)]
        self.peers = [_udp() for _ in range(3)]
        self.relays = [_udp() for _ in range(2)]
        self.core = TurnCore(
            TurnConfig(listen_udp=(("127.0.0.1", 3478),)), lambda *a: None, lambda *a: None
        )
        self.allocations: dict[Any, Allocation] = {}
        peer = [p.getsockname() for p in self.peers]
        for i in range(2):
            alloc = Allocation(None, self.clients[i].getsockname(), "u", "u", b"k", 1, 0.0)
            alloc.relay = Relay(self.relays[i])
            alloc.channels = {0x4000: peer[0], 0x4001 + i: peer[1 + i]}
            self.allocations[self.clients[i].getsockname()] = alloc
        self.allocations[self.clients[1].getsockname()].limited = True
        self.reset()

    def reset(self) -> None:
        """Client 0's allocation as peer_to_client finds it: peer 0 bound to a
        channel, peer 1 permitted with its Data indication header cached, peer 2
        permitted (same IP) but not cached."""
        alloc = self.allocations[self.clients[0].getsockname()]
        p0, p1, _ = (p.getsockname() for p in self.peers)
        alloc.peer_channels = {p0: 0x4000}
        alloc.permissions = {p0[0]: 1e18}
        alloc.data_txid = bytes(range(12))
        alloc.data_xpa = {}
        self.core.datapath.data_indication(alloc, p1, b"")
        for a in self.allocations.values():
            a.to_peer_pkts = a.to_peer_bytes = a.from_peer_pkts = a.from_peer_bytes = 0


_world: World | None = None


def world() -> World:
    global _world
    if _world is None:
        _world = World()
    return _world


def datagrams(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(sender, datagram)`` pairs: a byte whose low two bits pick the
    sender (3 means 0) and whose high six a length, then that many bytes; a
    length of 63 takes the next two bytes as the length (so up to 65535)."""
    pos, n = 0, len(data)
    while pos < n:
        head = data[pos]
        pos += 1
        size = head >> 2
        if size == 63:
            size = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        yield head & 3 if head & 3 != 3 else 0, data[pos : pos + size]
        pos += size


def drain(sock: socket.socket) -> list[tuple[bytes, Any]]:
    """Every datagram queued on ``sock`` now."""
    out = []
    while True:
        try:
            out.append(sock.recvfrom(70000))
        except BlockingIOError:
            return out


def relay_all(
    relay: Callable[[Callable[[bytes, Any], None]], int],
) -> tuple[int, list[tuple[bytes, Any]]]:
    """Call one of the native loops (``relay(slow)``) until a call relays
    nothing and hands nothing to ``slow``: how many it relayed, and the
    (datagram, address) pairs it left to the slow path."""
    relayed = 0
    rest: list[tuple[bytes, Any]] = []

    def slow(data: bytes, addr: Any) -> None:
        rest.append((data, addr))

    while True:
        before = len(rest)
        n = relay(slow)
        relayed += n
        if not n and len(rest) == before:
            return relayed, rest


class ClientToPeer:
    """The model of ``client_to_peer``: what it must make of the datagrams
    clients send, told to :meth:`sent` in the order they were sent."""

    def __init__(self, allocations: Mapping[Any, Allocation]) -> None:
        self.allocations = allocations
        self.relayed = 0
        self.at: dict[Any, list[bytes]] = {}
        """The payloads each peer address gets, in order."""
        self.rest: list[tuple[bytes, Any]] = []
        """The (datagram, client) pairs handed to Python, in order."""
        self.counted: dict[Any, list[int]] = {src: [0, 0] for src in allocations}
        """Packets and payload bytes relayed, by client (an allocation's to_peer counters)."""

    def sent(self, src: Any, data: bytes) -> None:
        """``src`` sent ``data`` to the listener. The leaf relays ChannelData
        (RFC 8656 section 12.4) that the datagram holds whole, on a channel
        bound to a peer, from an allocation with no bandwidth cap; it hands
        everything else to Python."""
        alloc = self.allocations.get(src)
        ok = len(data) >= 4 and 0x40 <= data[0] < 0x80
        n = (data[2] << 8 | data[3]) if ok else 0
        peer = alloc.channels.get(data[0] << 8 | data[1]) if ok and alloc else None
        if ok and alloc is not None and not alloc.limited and peer and n + 4 <= len(data):
            self.at.setdefault(peer, []).append(data[4 : 4 + n])
            self.relayed += 1
            self.counted[src][0] += 1
            self.counted[src][1] += n
        else:
            self.rest.append((data, src))


def _client_to_peer(w: World, batch: list[tuple[int, bytes]]) -> None:
    assert _relay is not None
    model = ClientToPeer(w.allocations)
    dest = w.listener.getsockname()
    for who, data in batch:
        w.clients[who].sendto(data, dest)
        model.sent(w.clients[who].getsockname(), data)
    got, rest = relay_all(
        lambda slow: _relay.client_to_peer(w.listener.fileno(), w.allocations, 64, slow)
    )
    if got != model.relayed or rest != model.rest:
        raise Finding("client_to_peer relayed or handed back other datagrams than the model")
    for peer_sock in w.peers:
        arrived = [d for d, _ in drain(peer_sock)]
        if arrived != model.at.get(peer_sock.getsockname(), []):
            raise Finding("client_to_peer sent a peer other bytes than the model")


def _peer_to_client(w: World, batch: list[tuple[int, bytes]]) -> None:
    assert _relay is not None
    alloc = w.allocations[w.clients[0].getsockname()]
    addrs = [p.getsockname() for p in w.peers]
    expected_client: list[bytes] = []
    expected_rest: list[tuple[bytes, Any]] = []
    for who, payload in batch:
        w.peers[who].sendto(payload, w.relays[0].getsockname())
        if who == 0:
            expected_client.append(struct.pack("!HH", 0x4000, len(payload)) + payload)
        elif who == 1:
            expected_client.append(w.core.datapath.data_indication(alloc, addrs[1], payload))
        else:
            expected_rest.append((payload, addrs[2]))
    got, rest = relay_all(
        lambda slow: _relay.peer_to_client(
            w.relays[0].fileno(), w.listener.fileno(), alloc, 64, slow
        )
    )
    if got != len(expected_client) or rest != expected_rest:
        raise Finding("peer_to_client relayed or handed back other datagrams than the model")
    arrived = [d for d, _ in drain(w.clients[0])]
    if arrived != expected_client:
        raise Finding("peer_to_client sent the client other bytes than the model")


def check(data: bytes) -> None:
    if _relay is None or not data:
        return
    w = world()
    w.reset()
    # At most one recvmmsg batch's worth each way: more would only repeat it.
    batch = list(datagrams(data[1:]))[:64]
    if data[0] & 1:
        _peer_to_client(w, batch)
    else:
        _client_to_peer(w, batch)
    for sock in (w.listener, *w.clients, *w.peers, *w.relays):
        drain(sock)
