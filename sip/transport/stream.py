"""The SIP endpoint's TCP connections (RFC 3261 section 18.3, RFC 5626
section 4.4.1): one :class:`~sip.wire.framing.StreamFramer` each, keyed by
the peer's address so that what goes back to that peer goes on its
connection (section 18.2.2).

* **Inbound.** At most ``max_connections`` at once: one more is closed as it
  opens, so a flood of connections costs a socket for a moment, not memory.
  A connection that sends no message and no ping for ``idle`` seconds is
  closed (a trunk reconnects on its next request). Keepalive pings are
  answered with the framer's pongs. Bytes the framer refuses are answered
  400, 413 or 505 where they still read as a request
  (:func:`sip.transport.rejects.rejection`), and the connection is closed, as
  nothing after them can be framed.
* **Outbound.** A request (or the user agent's raw ACK) to an address with
  no connection opens one, and what is sent meanwhile waits for it: dial-out
  to a trunk that takes TCP needs it. A response never opens one: a
  response goes back on its request's connection or, once that has gone,
  nowhere (section 18.2.2 allows a new connection to the sent-by, which
  would let a header point the bridge at any host); the client's
  transaction times out as it would over a lost connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import cast

from sip.errors import SipParseError
from sip.transport.hop import Address
from sip.transport.rejects import PEEK, rejection
from sip.transport.stats import EndpointStats, malformed_reason
from sip.wire.framing import StreamFramer
from sip.wire.message import Request, Response

__all__ = ["StreamConnection", "StreamTable"]

log = logging.getLogger(__name__)

#: A message read off a connection, with the peer's address.
Deliver = Callable[[Request | Response, Address], None]


class StreamConnection(asyncio.Protocol):
    """One TCP connection, inbound or outbound, in its :class:`StreamTable`."""

    def __init__(self, table: StreamTable, peer: Address | None = None) -> None:
        self._table = table
        self.peer = peer
        self._transport: asyncio.Transport | None = None
        self._framer = StreamFramer()
        # What was sent before an outbound connection opened.
        self._waiting: list[bytes] = []
        # The bytes fed since the framer last gave a message, kept up to
        # PEEK: if the framer refuses them, the answer reads their head. A
        # refused message that began in the same read as the last good one
        # has lost its start here, and goes unanswered (the framer keeps its
        # buffer to itself); a trunk writes one message per write.
        self._unframed = bytearray()
        self._last = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self.peer is None:
            peer = cast(Address, self._transport.get_extra_info("peername")[:2])
            if not self._table.accepted(self, peer):
                self._transport.abort()
                return
        self._touch()
        for data in self._waiting:
            self._transport.write(data)
        self._waiting.clear()

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            messages = self._framer.feed(data)
        except SipParseError as error:
            self._refuse(bytes(self._unframed) + data, error)
            return
        if messages:
            self._unframed.clear()
        elif len(self._unframed) < PEEK:
            self._unframed += data[: PEEK - len(self._unframed)]
        pongs = self._framer.data_to_send()
        if pongs:
            self._table.stats.keepalives += len(pongs) // 2
            self._transport.write(pongs)
        if pongs or messages:
            self._touch()
        assert self.peer is not None
        for message in messages:
            if self._transport.is_closing():
                break
            self._table.deliver(message, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._table.lost(self)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- used by the table ------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._transport is None:
            self._waiting.append(data)
        elif not self._transport.is_closing():
            self._transport.write(data)
        else:
            self._table.stats.unsent += 1

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        elif not self.closed.done():
            self.closed.set_result(None)

    # -- own ----------------------------------------------------------------------

    def _refuse(self, data: bytes, error: SipParseError) -> None:
        assert self._transport is not None
        assert self.peer is not None
        stats = self._table.stats
        stats.malformed[malformed_reason(error)] += 1
        answer = rejection(data, error, self.peer, reliable=True)
        if answer is not None:
            stats.rejected += 1
            stats.count_out(answer[0])
            self._transport.write(answer[0])
        # close() sends what is buffered first, the answer included.
        self._transport.close()

    def _touch(self) -> None:
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        # One timer per connection, moved lazily: it fires at the old
        # deadline and re-arms from the last activity, so a busy connection
        # costs one float store per message rather than a new timer.
        if self._idle_timer is None:
            self._idle_timer = loop.call_at(self._last + self._table.idle, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self._transport is None or self._transport.is_closing():
            return
        loop = asyncio.get_running_loop()
        deadline = self._last + self._table.idle
        if loop.time() >= deadline:
            self._table.stats.tcp_idle_closed += 1
            self._transport.close()
        else:
            self._idle_timer = loop.call_at(deadline, self._check_idle)


class StreamTable:
    """Every TCP connection of one endpoint, by peer address."""

    def __init__(
        self, deliver: Deliver, stats: EndpointStats, *, idle: float, max_connections: int
    ) -> None:
        self.deliver = deliver
        self.stats = stats
        self.idle = idle
        self.max_connections = max_connections
        self._by_peer: dict[Address, StreamConnection] = {}
        self._all: set[StreamConnection] = set()
        self._dialling: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._all)

    def protocol(self) -> StreamConnection:
        """The protocol factory of the listener (``loop.create_server``)."""
        return StreamConnection(self)

    def accepted(self, connection: StreamConnection, peer: Address) -> bool:
        """Register an inbound connection from ``peer``; False when it is
        over the cap."""
        if len(self._all) >= self.max_connections:
            self.stats.tcp_refused += 1
            return False
        connection.peer = peer
        self.stats.tcp_accepted += 1
        self._add(connection, peer)
        return True

    def lost(self, connection: StreamConnection) -> None:
        self._all.discard(connection)
        if connection.peer is not None and self._by_peer.get(connection.peer) is connection:
            del self._by_peer[connection.peer]

    def send(self, data: bytes, addr: Address, *, connect: bool) -> None:
        """Write ``data`` on ``addr``'s connection; without one, open one if
        ``connect`` (a request) or count it unsent (a response)."""
        connection = self._by_peer.get(addr)
        if connection is not None:
            connection.write(data)
            return
        if not connect or len(self._all) >= self.max_connections:
            self.stats.unsent += 1
            return
        connection = StreamConnection(self, addr)
        connection.write(data)
        self._add(connection, addr)
        task = asyncio.get_running_loop().create_task(self._dial(connection, addr))
        self._dialling.add(task)
        task.add_done_callback(self._dialling.discard)

    async def close(self) -> None:
        """Close every connection and wait until each is closed."""
        for task in list(self._dialling):
            task.cancel()
        for connection in list(self._all):
            connection.close()
        await asyncio.gather(
            *self._dialling, *(c.closed for c in self._all), return_exceptions=True
        )

    def _add(self, connection: StreamConnection, peer: Address) -> None:
        # A newer connection from the same address (a trunk that reconnected
        # before the old one timed out) takes the address over.
        self._all.add(connection)
        self._by_peer[peer] = connection

    async def _dial(self, connection: StreamConnection, addr: Address) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: connection, addr[0], addr[1])
        except OSError as exc:
            # The peer is down or refuses: what waited is lost, and the
            # transaction times out (timer B or F) as over any dead path.
            self.stats.tcp_connect_failed += 1
            log.info("SIP over TCP to %s:%d failed: %s", addr[0], addr[1], exc)
            self.lost(connection)
            with contextlib.suppress(asyncio.InvalidStateError):
                connection.closed.set_result(None)
