"""The phone bridge's SIP endpoint: one UDP socket and one TCP listener on
one host and port (RFC 3261 section 18), hosting the transaction layer
(:class:`sip.wire.transactions.Transactions`, section 17) for a
transaction user above it.

What comes in: a response whose top Via is not ours (section 18.1.2) is
dropped and counted (``not_ours``); a UDP datagram that is only CRLFs is a
keepalive and is dropped (RFC 5626 section 4.4.2 answers only STUN ones); anything else is
read with :func:`sip.wire.message.parse`. A TCP connection is cut into
messages by its own framer (:mod:`sip.transport.stream`). A request's top Via gets
``received`` and ``rport`` (section 18.2.1, RFC 3581 section 4, in
:mod:`sip.transport.hop`) before the layer sees it, and the address its
responses go to (section 18.2.2) is the ``addr`` of its
:class:`~sip.wire.transactions.NewRequest`. Malformed input is counted by
reason, answered 400/413/505 where it still reads as a request
(:mod:`sip.transport.rejects`), else dropped; it never raises out of a socket
callback and is never logged with a traceback: it is the peer's fault, not
ours, and a flood of it must not fill the logs.

What goes out: whatever the layer hands back after each call into it, over
the transport the call was about (section 18.2.2: a response over the
transport its request's Via names), and then the layer's events, in
order, to the transaction user. After every call the one ``loop.call_at``
timer is moved to the layer's ``get_timer()``, as aioquic's adapter does.

The transaction user (:class:`TransactionUser`) is a plain callback,
``handle(event, endpoint)``, called in the loop as each event happens,
rather than an ``asyncio.Queue`` that a task of its own reads: the order of
events and sends is then the order on the wire, with nothing buffered
between them, no task to supervise, and a transaction user that is itself
a sans-I/O core (:mod:`sip.calls.agent`) needs only a few lines of glue.
What it wants to send it sends through :meth:`SipEndpoint.respond`,
:meth:`SipEndpoint.request` and :meth:`SipEndpoint.send_raw`, from the
callback or later; work that has to wait (a PIN lookup) runs in a task of
the user's own, which responds when it is done.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, cast

from sip.errors import SipParseError
from sip.transport.hop import Address, local_via, stamp
from sip.transport.rejects import rejection
from sip.transport.stats import EndpointStats, malformed_reason
from sip.transport.stream import StreamTable
from sip.wire.fields import Via
from sip.wire.framing import is_keepalive
from sip.wire.headers import Headers
from sip.wire.message import Request, Response, parse
from sip.wire.transactions import Event, Transactions

__all__ = ["IDLE", "MAX_CONNECTIONS", "SipEndpoint", "TransactionUser"]

log = logging.getLogger(__name__)

#: Seconds a TCP connection may carry no message or ping before it is
#: closed: a trunk pings or re-registers well within it, and reconnects.
IDLE = 120.0
#: The most TCP connections at once: a clinic's trunks and PBXs are a
#: handful each, so this is a bound on a flood, not on real use.
MAX_CONNECTIONS = 1024
# Attempts at one port free for both UDP and TCP when asked for port 0.
_BIND_TRIES = 20
# The transports whose responses go back on the request's connection
# (section 18.2.2); the endpoint speaks only UDP and TCP of them.
_UNRELIABLE = frozenset(("UDP",))


class TransactionUser(Protocol):
    """What sits above the endpoint (the transaction user of RFC 3261
    section 5): told each event of the transaction layer, in order."""

    def handle(self, event: Event, endpoint: SipEndpoint) -> None:
        """A :class:`~sip.wire.transactions.NewRequest` (answer it with
        ``endpoint.respond``; its ``addr`` is where responses go),
        :class:`~sip.wire.transactions.ResponseReceived`,
        :class:`~sip.wire.transactions.ClientTimedOut` or
        :class:`~sip.wire.transactions.Answered` (repeat the 2xx with
        ``endpoint.send_raw`` until its ACK, section 13.3.1.4)."""


class _Datagrams(asyncio.DatagramProtocol):
    """The UDP socket's protocol: hands each datagram to the endpoint."""

    def __init__(self, endpoint: SipEndpoint) -> None:
        self._endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._endpoint.receive_datagram(data, cast(Address, addr[:2]))

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an earlier datagram (a phone gone away): the
        # transaction's own timers deal with the silence.
        self._endpoint.stats.unsent += 1


class SipEndpoint:
    """A SIP endpoint over UDP and TCP on ``host``:``port`` (RFC 3261
    section 18); ``port=0`` takes one free for both, which :attr:`port`
    then tells. ``sent_by`` is the host our Via names, when ``host`` is a
    wildcard or behind a NAT; ``idle`` and ``max_connections`` bound TCP.
    """

    def __init__(
        self,
        user: TransactionUser,
        host: str = "127.0.0.1",
        port: int = 5060,
        *,
        sent_by: str | None = None,
        idle: float = IDLE,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.user = user
        self.host = host
        self.port = port
        self.sent_by = sent_by or host
        self.stats = EndpointStats()
        self.transactions = Transactions()
        self._streams = StreamTable(
            self._receive_stream, self.stats, idle=idle, max_connections=max_connections
        )
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._when: float | None = None

    # -- life -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the UDP socket and the TCP listener to the same port."""
        self._loop = loop = asyncio.get_running_loop()
        for _ in range(_BIND_TRIES):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self), local_addr=(self.host, self.port)
            )
            port = cast(int, udp.get_extra_info("sockname")[1])
            try:
                self._server = await loop.create_server(
                    self._streams.protocol, self.host, port, reuse_address=True
                )
            except OSError:
                udp.close()
                if self.port:
                    raise
                continue  # the free UDP port is a TCP one in use: draw again
            self._udp, self.port = udp, port
            return
        raise OSError(f"no port free for both UDP and TCP on {self.host}")

    async def close(self) -> None:
        """Stop listening, close every connection and the socket."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._when = None
        if self._server is not None:
            self._server.close()
        await self._streams.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    @property
    def address(self) -> Address:
        return self.host, self.port

    @property
    def connections(self) -> int:
        """TCP connections open or opening."""
        return len(self._streams)

    def metrics(self) -> dict[str, int]:
        """Every counter flat (:meth:`EndpointStats.as_dict`), with the
        transaction layer's absorbed retransmissions and open transactions."""
        return {
            **self.stats.as_dict(),
            "retransmissions": self.transactions.retransmissions,
            "transactions": self.transactions.open,
            "tcp_connections": len(self._streams),
        }

    # -- what the transaction user sends ------------------------------------------------

    def respond(self, request: Request, response: Response) -> None:
        """Send ``response`` to ``request`` (a NewRequest's) through its server
        transaction (RFC 3261 section 17.2), over the transport its top Via
        names (section 18.2.2). Raises
        :class:`~sip.wire.transactions.TransactionError` when it has none open."""
        self.transactions.respond(request, response, self._now())
        self._after(reliable=_reliable(request))

    def request(self, request: Request, addr: Address, reliable: bool = False) -> None:
        """Send ``request`` to ``addr`` through a new client transaction
        (section 17.1), over TCP if ``reliable`` (opening a connection if
        there is none). A request without a Via gets ours (section 18.1.1:
        our sent-by, the transport, a fresh branch, ``rport``); one with a
        Via is sent as the user wrote it, branch included."""
        if "Via" not in request.headers:
            transport = "TCP" if reliable else "UDP"
            via = local_via(transport, self.sent_by, self.port)
            request.headers = Headers([("Via", via), *request.headers.items()])
        self.transactions.request(request, addr, reliable, self._now())
        self._after(reliable=reliable, connect=True)

    def send_raw(self, data: bytes, addr: Address, reliable: bool = False) -> None:
        """Send bytes outside any transaction: the transaction user's own 2xx
        repeats and the ACK of a 2xx (section 13.3.1.4, 17.1.1.3)."""
        self._send(data, addr, reliable, connect=True)

    # -- what arrives -------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address) -> None:
        """One UDP datagram from ``addr`` (section 18.3's datagram framing)."""
        if is_keepalive(data):
            self.stats.keepalives += 1
            return
        try:
            message = parse(data)
        except SipParseError as error:
            self.stats.malformed[malformed_reason(error)] += 1
            answer = rejection(data, error, addr, reliable=False)
            if answer is not None:
                self.stats.rejected += 1
                self._send(*answer, reliable=False, connect=False)
            return
        self._receive(message, addr, reliable=False)

    def _receive_stream(self, message: Request | Response, addr: Address) -> None:
        self._receive(message, addr, reliable=True)

    def _receive(self, message: Request | Response, source: Address, reliable: bool) -> None:
        self.stats.count_in(message)
        if isinstance(message, Response) and not self._ours(message):
            # Section 18.1.2: a response whose top Via is not ours was not
            # meant for us (or forges a transaction of ours): dropped unread.
            self.stats.malformed["not_ours"] += 1
            return
        addr = stamp(message, source, reliable) if isinstance(message, Request) else source
        try:
            self.transactions.receive(message, addr, reliable, self._now())
        except SipParseError:
            # parse() already insists on what matching reads; kept so that a
            # gap between the two never escapes a socket callback.
            self.stats.malformed["unmatchable"] += 1
            return
        self._after(reliable=reliable)

    def _ours(self, response: Response) -> bool:
        """Whether the response's top Via names the sent-by our requests carry."""
        try:
            top = Via.parse((response.headers.get_all("Via") or [""])[0])
        except SipParseError:
            return False
        return top.host.lower() == self.sent_by.lower() and (top.port or 5060) == self.port

    # -- the layer's output -------------------------------------------------------------

    def _after(self, *, reliable: bool, connect: bool = False) -> None:
        """After a call into the layer: send what it gave, hand its events
        to the transaction user, and move the timer."""
        for data, addr in self.transactions.datagrams_to_send():
            self._send(data, addr, reliable, connect=connect)
        # A handler that responds calls back in here and reads the events
        # its response made from the same queue, so order is kept.
        while (event := self.transactions.next_event()) is not None:
            try:
                self.user.handle(event, self)
            except Exception:
                # A bug of the transaction user's, not the peer's: logged in
                # full, and the endpoint carries on with the next event.
                log.exception("SIP transaction user failed on %s", type(event).__name__)
        self._arm()

    def _send(self, data: bytes, addr: Address, reliable: bool, *, connect: bool) -> None:
        self.stats.count_out(data)
        if reliable:
            self._streams.send(data, addr, connect=connect)
        elif self._udp is not None:
            self._udp.sendto(data, addr)
        else:
            self.stats.unsent += 1

    # -- the timer ----------------------------------------------------------------------

    def _now(self) -> float:
        return (self._loop or asyncio.get_running_loop()).time()

    def _arm(self) -> None:
        when = self.transactions.get_timer()
        if when == self._when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._when = when
        if when is None:
            self._timer = None
        else:
            loop = self._loop or asyncio.get_running_loop()
            self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        due = self._when
        self._timer = self._when = None
        # The loop may run a timer a clock tick early; the layer is told it
        # is due, so it never finds nothing to do and asks for the same time.
        now = self._now() if due is None else max(self._now(), due)
        self.transactions.handle_timer(now)
        # Only UDP retransmits (sections 17.1.1.2, 17.2.1): timers send on UDP.
        self._after(reliable=False)


def _reliable(request: Request) -> bool:
    """Whether the transport ``request``'s top Via names is a stream
    (section 18.2.2 decides by it where the response goes)."""
    top = (request.headers.get_all("Via") or [""])[0]
    try:
        return Via.parse(top).transport not in _UNRELIABLE
    except SipParseError:
        return False
