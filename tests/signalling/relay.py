"""A userspace UDP relay that puts loss and delay on one client's leg.

This kernel has no ``netem`` qdisc (TESTING.md), so a test that wants a lossy
or slow path between a client and the media worker puts this relay between
them: the client sends to the relay's port, the relay sends on to the server
from a socket of its own (so the server, being ICE-lite, learns the relay's
address from the client's ICE checks) and sends the server's datagrams back
to the last address the client used.

Loss and delay follow a :class:`Schedule` seeded per direction, so a run can
be repeated: the n-th datagram in a direction meets the same fate every time
(which datagram is n-th still depends on timing). Delayed datagrams are sent
from ``loop.call_at``; with jitter they can overtake each other, as on a real
path.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from wadud_client.load.drops import inode_of, udp_drops
from wadud_client.network import widen_receive_buffer

Address = tuple[str, int]
Direction = Literal["up", "down"]  # up: client to server; down: server to client

#: Each relay socket's receive buffer, as big as the media worker's: the
#: relay runs in the test's own loop, and a test process starved of the CPU
#: for a few hundred milliseconds on a busy machine must not overflow it, or
#: the path would lose what its schedule kept.
_BUFFER = 4 * 1024 * 1024


def _roomy(transport: asyncio.DatagramTransport) -> int:
    """Give ``transport``'s socket :data:`_BUFFER` to receive into (past
    net.core.rmem_max: CI runs as root); its inode."""
    sock = transport.get_extra_info("socket")
    widen_receive_buffer(sock, _BUFFER)
    return inode_of(sock)


def _kernel_drops(inodes: Iterable[int]) -> int:
    """What the kernel dropped on these sockets, their buffers full."""
    return sum(udp_drops(set(inodes)).values())


class Schedule:
    """The fate of each datagram in one direction: dropped (None) or sent after
    a delay in seconds. ``loss`` is a probability in [0, 1); ``delay`` and
    ``jitter`` (uniform, +/-) are seconds; ``burst`` > 1 drops that many
    datagrams in a row each time a loss starts (the mean loss rate stays
    ``loss``)."""

    def __init__(
        self,
        *,
        loss: float = 0.0,
        delay: float = 0.0,
        jitter: float = 0.0,
        burst: int = 1,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), not {loss}")
        if delay < 0 or not 0 <= jitter <= delay:
            # Jitter wider than the delay would need negative delays.
            raise ValueError("need delay >= 0 and 0 <= jitter <= delay")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.loss = loss
        self.delay = delay
        self.jitter = jitter
        self.burst = burst
        self._random = random.Random(seed)
        self._dropping = 0
        # A loss starts with probability loss/burst so the mean stays `loss`.
        self._start = loss / burst

    def next(self) -> float | None:
        """The next datagram's fate: None to drop it, else its delay."""
        draw = self._random.random()
        jitter = self._random.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        if self._dropping:
            self._dropping -= 1
            return None
        if draw < self._start:
            self._dropping = self.burst - 1
            return None
        return self.delay + jitter


@dataclass
class RelayStats:
    """What the relay did, per direction."""

    received: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    forwarded: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    dropped: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    #: Seconds each datagram really spent in the relay, from its arrival to
    #: its sending, by the relay's loop clock (:class:`NatRelay`): a relay
    #: starved of the CPU holds them longer than its schedule says.
    held: dict[str, list[float]] = field(default_factory=lambda: {"up": [], "down": []})


class _Side(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, direction: Direction) -> None:
        self.relay = relay
        self.direction = direction

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay._received(self.direction, data, (addr[0], addr[1]))


class UdpRelay:
    """Relays one client's datagrams to ``upstream`` and back.

    ``up`` and ``down`` are the schedules for client-to-server and
    server-to-client datagrams; ``lossy`` decides which datagrams the schedule
    applies to (all by default; e.g. :func:`is_rtp_or_rtcp`, so ICE and the
    DTLS handshake are spared); ``hold`` gives the seconds a datagram is held
    on top of its schedule (e.g. a slow handshake); ``enabled = False`` turns
    the schedules off."""

    def __init__(
        self,
        upstream: Address,
        *,
        up: Schedule | None = None,
        down: Schedule | None = None,
        lossy: Callable[[bytes], bool] | None = None,
        hold: Callable[[Direction, bytes], float] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.upstream = upstream
        self.schedules: dict[Direction, Schedule] = {
            "up": up or Schedule(),
            "down": down or Schedule(),
        }
        self.lossy = lossy
        self.hold = hold
        self.host = host
        self.stats = RelayStats()
        self.client: Address | None = None
        self.enabled = True
        self._front: asyncio.DatagramTransport | None = None
        self._back: asyncio.DatagramTransport | None = None
        self._pending: set[asyncio.TimerHandle] = set()
        self._inodes: list[int] = []

    @property
    def address(self) -> Address:
        """Where clients send: the relay's client-facing address."""
        assert self._front is not None, "relay not started"
        host, port = self._front.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    async def start(self) -> Address:
        loop = asyncio.get_running_loop()
        self._front, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self, "up"), local_addr=(self.host, 0)
        )
        self._back, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self, "down"), local_addr=(self.host, 0)
        )
        self._inodes += [_roomy(self._front), _roomy(self._back)]
        return self.address

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped on the relay's own sockets: the test
        process's loss, not the path's nor the server's."""
        return _kernel_drops(self._inodes)

    async def rebind(self) -> Address:
        """A NAT rebinding: the relay's upstream socket is replaced by one on a
        new port, and the old one is gone (what the server sent there is
        lost), as when a carrier's NAT gives the client a new mapping. The
        client notices nothing. Returns the new upstream-facing address."""
        loop = asyncio.get_running_loop()
        old = self._back
        self._back, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self, "down"), local_addr=(self.host, 0)
        )
        self._inodes.append(_roomy(self._back))
        if old is not None:
            old.close()
        host, port = self._back.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def close(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        for transport in (self._front, self._back):
            if transport is not None:
                transport.close()
        self._front = self._back = None

    async def __aenter__(self) -> UdpRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _received(self, direction: Direction, data: bytes, addr: Address) -> None:
        stats = self.stats
        stats.received[direction] += 1
        if direction == "up":
            # The client's address is whatever it last sent from (it may
            # change while ICE tries pairs).
            self.client = addr
            dest: Address | None = self.upstream
            out = self._back
        else:
            if addr != self.upstream:
                stats.dropped[direction] += 1
                return
            dest = self.client
            out = self._front
        if dest is None or out is None:
            stats.dropped[direction] += 1
            return
        schedule = self.schedules[direction]
        if not self.enabled:
            delay: float | None = 0.0
        elif self.lossy is None or self.lossy(data):
            delay = schedule.next()
        else:
            # Spared from loss (and jitter), not from the path's delay.
            delay = schedule.delay
        if delay is None:
            stats.dropped[direction] += 1
            return
        stats.forwarded[direction] += 1
        if self.hold is not None:
            delay += self.hold(direction, data)
        if delay <= 0:
            out.sendto(data, dest)
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def send() -> None:
            self._pending.discard(handle)
            if not out.is_closing():
                out.sendto(data, dest)

        handle = loop.call_later(delay, send)
        self._pending.add(handle)


def is_rtp_or_rtcp(data: bytes) -> bool:
    """RFC 7983 section 7: a first byte in 128..191 is RTP or RTCP."""
    return len(data) > 0 and 128 <= data[0] <= 191


_CANDIDATE = re.compile(
    r"^(a=candidate:\S+ \d+ (?:udp|UDP) \d+ )(\S+) (\d+)( typ host.*)$", re.MULTILINE
)


def rewrite_candidates(sdp: str, address: Address) -> str:
    """The server's SDP with its UDP host candidates pointing at ``address``
    (the relay), so the client's ICE checks and media go through the relay."""
    host, port = address
    out, n = _CANDIDATE.subn(lambda m: f"{m.group(1)}{host} {port}{m.group(4)}", sdp)
    if n == 0:
        raise ValueError("no UDP host candidate in the SDP")
    return out


def host_candidate(sdp: str) -> Address:
    """The first UDP host candidate's address in an SDP."""
    m = _CANDIDATE.search(sdp)
    if m is None:
        raise ValueError("no UDP host candidate in the SDP")
    return (m.group(2), int(m.group(3)))


class NatRelay:
    """Relays many clients' datagrams to ``upstream`` and back, each client
    from an upstream socket of its own (as a NAT maps each), so an ICE-lite
    server tells them apart. Clients reach it at ``front`` (give the server
    that address to announce); ``up`` and ``down`` schedule each direction
    for every client alike (one random stream each, seeded)."""

    def __init__(
        self,
        front: Address,
        upstream: Address,
        *,
        up: Schedule | None = None,
        down: Schedule | None = None,
    ) -> None:
        self.front_address = front
        self.upstream = upstream
        self.schedules: dict[Direction, Schedule] = {
            "up": up or Schedule(),
            "down": down or Schedule(),
        }
        self.stats = RelayStats()
        self._front: asyncio.DatagramTransport | None = None
        self._backs: dict[Address, asyncio.DatagramTransport] = {}
        self._pending: set[asyncio.TimerHandle] = set()
        self._inodes: list[int] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._front, _ = await loop.create_datagram_endpoint(
            lambda: _NatSide(self, None), local_addr=self.front_address
        )
        self._inodes.append(_roomy(self._front))

    def kernel_drops(self) -> int:
        """As :meth:`UdpRelay.kernel_drops`."""
        return _kernel_drops(self._inodes)

    async def _back_for(self, client: Address) -> asyncio.DatagramTransport:
        back = self._backs.get(client)
        if back is None:
            loop = asyncio.get_running_loop()
            back, _ = await loop.create_datagram_endpoint(
                lambda: _NatSide(self, client), local_addr=(self.upstream[0], 0)
            )
            self._inodes.append(_roomy(back))
            self._backs[client] = back
        return back

    def _received(self, client: Address | None, data: bytes, addr: Address) -> None:
        now = asyncio.get_running_loop().time()
        if client is None:  # from a client, up to the server
            self.stats.received["up"] += 1
            back = self._backs.get(addr)
            if back is None:
                task = asyncio.ensure_future(self._back_for(addr))
                task.add_done_callback(
                    lambda t: self._send("up", t.result(), data, self.upstream, now)
                )
                return
            self._send("up", back, data, self.upstream, now)
        else:  # from the server, down to ``client``
            self.stats.received["down"] += 1
            if self._front is not None:
                self._send("down", self._front, data, client, now)

    def _send(
        self,
        direction: Direction,
        out: asyncio.DatagramTransport,
        data: bytes,
        dest: Address,
        arrived: float,
    ) -> None:
        delay = self.schedules[direction].next()
        if delay is None:
            self.stats.dropped[direction] += 1
            return
        self.stats.forwarded[direction] += 1
        loop = asyncio.get_running_loop()
        if delay <= 0:
            out.sendto(data, dest)
            self.stats.held[direction].append(loop.time() - arrived)
            return
        handle: asyncio.TimerHandle

        def send() -> None:
            self._pending.discard(handle)
            if not out.is_closing():
                out.sendto(data, dest)
                self.stats.held[direction].append(loop.time() - arrived)

        handle = loop.call_later(delay, send)
        self._pending.add(handle)

    def close(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        for transport in [self._front, *self._backs.values()]:
            if transport is not None:
                transport.close()
        self._front = None
        self._backs.clear()


class _NatSide(asyncio.DatagramProtocol):
    def __init__(self, relay: NatRelay, client: Address | None) -> None:
        self.relay = relay
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay._received(self.client, data, (addr[0], addr[1]))
