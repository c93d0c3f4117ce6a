"""asyncio adapter of the TURN core: sockets, timers, and the relay hot path.

UDP sockets (listeners and relays) are plain non-blocking sockets watched with
``loop.add_reader``: binding a relay must be synchronous so an Allocate is
answered in one call, and a reader callback that drains the socket in a
bounded loop costs the same as a uvloop ``DatagramProtocol`` (measured: both
~145k relayed packets per CPU-second on a bare forwarder).

The hot path (ChannelData from clients, anything from peers) runs right in
the reader callback: one dictionary lookup on tables the core maintains, one
``sendto``; no coroutine, no task, no object beyond the bytes and the header.
What it needs of the core (Send and Data indications, the bandwidth budget)
is the core's :class:`turn.datapath.DataPath`, which the server holds beside
the core. Everything else goes to :meth:`turn.core.TurnCore.handle`.

Over UDP the hot path has two implementations with one behaviour. When the
optional C extension ``turn._relay`` is built (``pip install`` builds it) and
``WADUD_NATIVE`` is not ``0``, its functions are the UDP sockets' reader
callbacks: each drains its socket with one ``recvmmsg``, relays the common
case from the same tables (ChannelData both ways, Data indications whose peer
TLV the core has cached; a route's datagrams leave as one UDP GSO message)
and passes every other datagram to the same per-datagram method the
pure-Python loop calls (:meth:`TurnServer._from_client`,
:meth:`TurnServer._from_peer`). Measured with ``benchmarks/turn/run.py``,
side by side with coturn.

``now`` given to the core is Unix time, because REST usernames carry a Unix
expiry; core deadlines are turned into ``loop.call_at`` times here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Hashable
from types import ModuleType
from typing import Any, cast

from turn import metrics
from turn.allocation import Allocation, ClientSide
from turn.config import Address, TurnConfig
from turn.core import TurnCore
from turn.credentials import rest_credentials
from turn.datapath import SEND_INDICATION_TYPE

logger = logging.getLogger("wadud.turn.server")

BATCH = 64  # datagrams per reader wake-up, so one busy socket cannot starve the rest
MAX_DATAGRAM = 65536
STREAM_IDLE_TIMEOUT = 60.0  # seconds a TCP/TLS client may stay connected without an allocation
_CHAN = struct.Struct("!HH")
_PADS = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")

_MALFORMED_CHANNELDATA = metrics.MALFORMED.labels("channel_data")
_NO_CHANNEL = metrics.MALFORMED.labels("unbound_channel")
_NO_ALLOCATION = metrics.MALFORMED.labels("no_allocation")
_NO_PERMISSION = metrics.MALFORMED.labels("no_permission")
_NOT_TURN = metrics.MALFORMED.labels("not_stun")
_BANDWIDTH = metrics.QUOTA_REFUSALS.labels("bandwidth")


def load_native() -> ModuleType | None:
    """``turn._relay`` if it was built and ``WADUD_NATIVE`` is not ``0``, else None."""
    if os.environ.get("WADUD_NATIVE", "1") == "0":
        return None
    try:
        from turn import _relay  # type: ignore[attr-defined]
    except ImportError:
        return None
    return cast(ModuleType, _relay)


NATIVE = load_native()


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


class _Relay:
    """A relayed transport address: the endpoint the core's ``open_relay`` returns."""

    __slots__ = ("fd", "loop", "sock")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop

    def sendto(self, data: bytes, addr: Address) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(data, addr)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        self.sock.close()


class _Reserved:
    """A port held for a RESERVATION-TOKEN: a bound socket nobody reads yet.

    RFC 8656 section 7.1: the server reserves the port, so it is bound here
    and the allocation that redeems the token takes this very socket.
    """

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock

    def take(self) -> socket.socket | None:
        sock, self.sock = self.sock, None
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _UdpListener:
    __slots__ = ("address", "fd", "side", "sock")

    def __init__(self, sock: socket.socket, side: ClientSide) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.side = side
        self.address: Address = sock.getsockname()[:2]


class _StreamClient(asyncio.Protocol):
    """One TCP or TLS client connection (RFC 8656 section 3.1; framing per RFC 8489 6.2.2)."""

    def __init__(self, server: TurnServer, transport_name: str) -> None:
        self.server = server
        self.name = transport_name
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.side: ClientSide | None = None
        self.peer: Hashable = ("", 0)
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.side = ClientSide(self.name, (local[0], local[1]), self)
        self.server._streams.add(self)
        # A connection that never allocates only holds a socket: close it after
        # a while, as coturn does, so idle connections cannot pile up.
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(STREAM_IDLE_TIMEOUT, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if self.side is not None and not self.side.allocations and self.transport is not None:
            logger.info("closing idle turn connection", extra={"client": self.peer})
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._streams.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self.side is not None:
            self.server.core.close_side(self.side, time.time())
            self.server._rearm()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        server = self.server
        side = self.side
        assert side is not None
        assert self.transport is not None
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            b0 = buf[pos]
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            if b0 < 0x40:
                end = pos + 20 + length
                if end > n:
                    break
                msg = bytes(buf[pos:end])
                if msg[:2] == SEND_INDICATION_TYPE and server.datapath.send_indication(
                    side, self.peer, msg
                ):
                    pos = end
                    continue
                resp = server.core.handle(side, self.peer, msg, time.time())
                if resp:
                    self.transport.write(resp)
                server._rearm()
            elif b0 < 0x80:
                # ChannelData over a stream is padded to 4 bytes (RFC 8656 section 12.5).
                end = pos + 4 + length
                padded = end + (-length & 3)
                if padded > n:
                    break
                alloc = side.allocations.get(self.peer)
                peer = None
                if alloc is not None:
                    peer = alloc.channels.get((b0 << 8) | buf[pos + 1])
                if alloc is None or peer is None:
                    _NO_CHANNEL.inc()
                elif not alloc.limited or server.datapath.spend(alloc, length):
                    alloc.to_peer_pkts += 1
                    alloc.to_peer_bytes += length
                    alloc.relay.sendto(bytes(buf[pos + 4 : end]), peer)
                else:
                    _BANDWIDTH.inc()
                end = padded
            else:
                # A stream cannot resynchronise after garbage: drop the client.
                _NOT_TURN.inc()
                self.transport.close()
                buf.clear()
                return
            pos = end
        if pos:
            del buf[:pos]

    def send_to_client(self, packet: bytes, channel: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > self.server.config.tcp_write_limit:
            # The client reads slower than its peers send: drop, as UDP would.
            metrics.MALFORMED.labels("tcp_backlog").inc()
            return
        if channel:
            transport.write(packet + _PADS[len(packet) & 3])
        else:
            transport.write(packet)


class TurnServer:
    """A running TURN relay (RFC 8656) on the event loop.

    After :meth:`start`, ``udp_addresses``, ``tcp_addresses`` and
    ``tls_addresses`` hold the bound (host, port) of every listener (port 0 in
    the config means ephemeral; a TCP listener with port 0 takes the port of
    the UDP listener on the same host when it can, so one port serves both).

    ``native`` picks the UDP hot path: True needs ``turn._relay`` (ImportError
    if it is not built), False is the pure-Python loop, None (the default) is
    :data:`NATIVE`: the extension unless it is missing or ``WADUD_NATIVE=0``.
    """

    def __init__(self, config: TurnConfig, *, native: bool | None = None) -> None:
        self.native: Any = NATIVE
        if native is not None:
            self.native = None
            if native:
                from turn import _relay  # type: ignore[attr-defined]

                self.native = _relay
        self.config = config.validate()
        self.core = TurnCore(config, self._open_relay, self._reserve_port)
        # The part of the core the relay hot path calls, held here so that a
        # datagram costs no more attribute lookups than one core call did.
        self.datapath = self.core.datapath
        self.udp_addresses: list[Address] = []
        self.tcp_addresses: list[Address] = []
        self.tls_addresses: list[Address] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[_UdpListener] = []
        self._servers: list[asyncio.Server] = []
        self._streams: set[_StreamClient] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when: float | None = None
        self._closed = False

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind every listener; raises OSError if an address is taken."""
        loop = self._loop = asyncio.get_running_loop()
        cfg = self.config
        try:
            for host, port in cfg.listen_udp:
                sock = self._udp_socket(host, port)
                lst = _UdpListener(sock, ClientSide("udp", (host, port)))
                lst.side.local = lst.address
                lst.side.link = lst
                if self.native is not None:
                    slow = functools.partial(self._from_client, lst)
                    args = (lst.fd, lst.side.allocations, BATCH, slow)
                    loop.add_reader(lst.fd, self.native.client_to_peer, *args)
                else:
                    loop.add_reader(lst.fd, self._client_readable, lst)
                self._listeners.append(lst)
                self.udp_addresses.append(lst.address)
            for host, port in cfg.listen_tcp:
                shared = next((p for h, p in self.udp_addresses if h == host), 0)
                if port == 0 and shared:
                    try:
                        addr = await self._stream_server(host, shared, "tcp", None)
                    except OSError:
                        # Someone holds that TCP port: any ephemeral one will do.
                        addr = await self._stream_server(host, 0, "tcp", None)
                else:
                    addr = await self._stream_server(host, port, "tcp", None)
                self.tcp_addresses.append(addr)
            if cfg.listen_tls:
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                assert cfg.tls_cert is not None
                ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                for host, port in cfg.listen_tls:
                    self.tls_addresses.append(await self._stream_server(host, port, "tls", ctx))
        except BaseException:
            await self.close()
            raise
        logger.info(
            "turn relay started",
            extra={
                "udp": self.udp_addresses,
                "tcp": self.tcp_addresses,
                "tls": self.tls_addresses,
                "relay_ips": list(self.core.allocator.relay_ips.values()),
            },
        )

    async def close(self) -> None:
        """Stop listening, delete every allocation, close every connection."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        for lst in self._listeners:
            if loop is not None:
                loop.remove_reader(lst.fd)
            lst.sock.close()
        self._listeners.clear()
        for srv in self._servers:
            srv.close()
        self.core.close(time.time())
        for stream in list(self._streams):
            if stream.transport is not None:
                stream.transport.close()
        for srv in self._servers:
            await srv.wait_closed()
        self._servers.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        logger.info("turn relay stopped")

    async def __aenter__(self) -> TurnServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -------------------------------------------------------------- helpers

    def credentials(self, user: str, ttl: int = 3600) -> tuple[str, str]:
        """REST credentials signed with the first shared secret."""
        return rest_credentials(self.config.secrets[0], user, ttl, time.time())

    def urls(self, host: str | None = None) -> list[str]:
        """``turn:``/``turns:`` URLs (RFC 7065) for every listener, for ICE servers lists."""
        out: list[str] = []

        def fmt(h: str, p: int) -> str:
            h = host or h
            return f"[{h}]:{p}" if ":" in h else f"{h}:{p}"

        out += [f"turn:{fmt(h, p)}?transport=udp" for h, p in self.udp_addresses]
        out += [f"turn:{fmt(h, p)}?transport=tcp" for h, p in self.tcp_addresses]
        out += [f"turns:{fmt(h, p)}?transport=tcp" for h, p in self.tls_addresses]
        return out

    def _udp_socket(self, host: str, port: int) -> socket.socket:
        sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        try:
            if ":" in host:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            self._tune(sock)
            sock.bind((host, port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _tune(self, sock: socket.socket) -> None:
        size = self.config.socket_buffer
        if size:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    async def _stream_server(
        self, host: str, port: int, name: str, ctx: ssl.SSLContext | None
    ) -> Address:
        assert self._loop is not None
        server = await self._loop.create_server(
            lambda: _StreamClient(self, name),
            host=host,
            port=port,
            ssl=ctx,
            reuse_address=True,
            ssl_handshake_timeout=10.0 if ctx else None,
        )
        self._servers.append(server)
        addr = server.sockets[0].getsockname()
        return addr[0], addr[1]

    # ------------------------------------------------------------------ timers

    def _rearm(self) -> None:
        when = self.core.get_timer()
        if when == self._timer_when:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_when = when
        if when is not None and self._loop is not None and not self._closed:
            delay = max(0.0, when - time.time())
            self._timer = self._loop.call_at(self._loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = None
        self.core.handle_timer(time.time())
        self._rearm()

    # ------------------------------------------------------------------ relays

    def _bind_relay_socket(self, ip: str, port: int) -> socket.socket | None:
        try:
            return self._udp_socket(ip, port)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                logger.warning(
                    "relay bind failed", extra={"ip": ip, "port": port, "error": str(exc)}
                )
            return None

    def _reserve_port(self, ip: str, port: int) -> _Reserved | None:
        """Hold ``port`` for a RESERVATION-TOKEN (the core's ``reserve_port``)."""
        sock = self._bind_relay_socket(ip, port)
        return None if sock is None else _Reserved(sock)

    def _open_relay(
        self, alloc: Allocation, ip: str, port: int, dont_fragment: bool, reserved: Any
    ) -> _Relay | None:
        """Bind a relayed transport address (the core's ``open_relay``).

        ``reserved`` is the :class:`_Reserved` of a redeemed RESERVATION-TOKEN:
        its socket becomes the relay, so the port is never free in between.
        """
        loop = self._loop
        assert loop is not None
        if reserved is not None:
            sock = cast(_Reserved, reserved).take()
        else:
            sock = self._bind_relay_socket(ip, port)
        if sock is None:
            return None
        if dont_fragment:
            # RFC 8656 section 7.2: honour DONT-FRAGMENT with path MTU discovery on.
            try:
                if ":" in ip:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DONTFRAG, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
            except OSError:
                sock.close()
                return None
        relay = _Relay(sock, loop)
        link = alloc.side.link
        if isinstance(link, _UdpListener) and self.native is not None:
            slow = functools.partial(self._from_peer, alloc, link.sock)
            args = (relay.fd, link.fd, alloc, BATCH, slow)
            loop.add_reader(relay.fd, self.native.peer_to_client, *args)
        elif isinstance(link, _UdpListener):
            loop.add_reader(relay.fd, self._peer_to_udp, alloc, relay, link)
        else:
            loop.add_reader(relay.fd, self._peer_to_stream, alloc, sock, link)
        return relay

    def _client_readable(self, lst: _UdpListener) -> None:
        """Datagrams from clients (pure Python; ``turn._relay.client_to_peer`` otherwise)."""
        recvfrom = lst.sock.recvfrom
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:
                continue
            self._from_client(lst, data, addr)

    def _from_client(self, lst: _UdpListener, data: bytes, addr: Any) -> None:
        """One datagram from a UDP client (the whole of what ``turn._relay`` leaves over)."""
        if len(data) < 4:
            _NOT_TURN.inc()
            return
        b0 = data[0]
        datapath = self.datapath
        if 0x40 <= b0 < 0x80:
            # ChannelData (RFC 8656 section 12.4): relay to the bound peer.
            alloc = lst.side.allocations.get(addr)
            if alloc is None:
                _NO_ALLOCATION.inc()
                return
            peer = alloc.channels.get((b0 << 8) | data[1])
            if peer is None:
                _NO_CHANNEL.inc()
                return
            n = (data[2] << 8) | data[3]
            if n + 4 > len(data):
                _MALFORMED_CHANNELDATA.inc()
                return
            if alloc.limited and not datapath.spend(alloc, n):
                _BANDWIDTH.inc()
                return
            alloc.to_peer_pkts += 1
            alloc.to_peer_bytes += n
            # A full send buffer or an unreachable peer loses this datagram
            # only, as UDP would; contextlib.suppress costs a call per packet.
            try:  # noqa: SIM105
                alloc.relay.sock.sendto(data[4 : 4 + n], peer)
            except OSError:
                pass
        elif b0 < 0x40:
            if data[:2] == SEND_INDICATION_TYPE and datapath.send_indication(lst.side, addr, data):
                return
            resp = self.core.handle(lst.side, addr, data, time.time())
            if resp:
                with contextlib.suppress(OSError):
                    lst.sock.sendto(resp, addr)
            self._rearm()
        else:
            _NOT_TURN.inc()

    def _peer_to_udp(self, alloc: Allocation, relay: _Relay, lst: _UdpListener) -> None:
        """Datagrams from peers to a UDP client (pure Python; else ``peer_to_client``)."""
        recvfrom = relay.sock.recvfrom
        client_sock = lst.sock
        for _ in range(BATCH):
            try:
                data, peer = recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:
                continue
            self._from_peer(alloc, client_sock, data, peer)

    def _from_peer(
        self, alloc: Allocation, client_sock: socket.socket, data: bytes, peer: Any
    ) -> None:
        """One datagram from a peer to a UDP client: ChannelData if bound, else Data indication."""
        n = len(data)
        channel = alloc.peer_channels.get(peer)
        if channel is not None:
            packet = _CHAN.pack(channel, n) + data
        elif peer[0] in alloc.permissions:
            packet = self.datapath.data_indication(alloc, peer, data)
        else:
            _NO_PERMISSION.inc()
            return
        if alloc.limited and not self.datapath.spend(alloc, n):
            _BANDWIDTH.inc()
            return
        alloc.from_peer_pkts += 1
        alloc.from_peer_bytes += n
        try:  # noqa: SIM105 - see _from_client
            client_sock.sendto(packet, alloc.client)
        except OSError:
            pass

    def _peer_to_stream(
        self, alloc: Allocation, relay_sock: socket.socket, stream: _StreamClient
    ) -> None:
        """Datagrams from peers to a TCP/TLS client."""
        datapath = self.datapath
        for _ in range(BATCH):
            try:
                data, peer = relay_sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:
                continue
            n = len(data)
            channel = alloc.peer_channels.get(peer)
            if channel is not None:
                packet = _CHAN.pack(channel, n) + data
            elif peer[0] in alloc.permissions:
                packet = datapath.data_indication(alloc, peer, data)
            else:
                _NO_PERMISSION.inc()
                continue
            if alloc.limited and not datapath.spend(alloc, n):
                _BANDWIDTH.inc()
                continue
            alloc.from_peer_pkts += 1
            alloc.from_peer_bytes += n
            stream.send_to_client(packet, channel is not None)
