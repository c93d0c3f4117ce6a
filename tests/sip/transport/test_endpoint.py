"""The phone bridge's SIP endpoint (sip/transport/endpoint.py) on real sockets on
127.0.0.1: raw UDP and TCP clients written here, and SIPp as a peer no one
here wrote.

A small transaction user answers OPTIONS with 200 and INVITE with 486 (a
busy bridge), so every exchange is one transaction and the tests read what
the wire carries: Via's received and rport (RFC 3261 section 18.2.1, RFC
3581), where responses go (section 18.2.2), retransmissions absorbed
(section 17.2.3), malformed input answered or dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sip.transport.endpoint import SipEndpoint
from sip.wire.fields import Via
from sip.wire.message import Request, Response, parse, response_to
from sip.wire.transactions import Event, NewRequest, ResponseReceived
from tests.conftest import free_port, free_udp_port

HOST = "127.0.0.1"
WAIT = 5.0


class BusyUser:
    """OPTIONS: 200; INVITE: 486; records every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.responses: asyncio.Queue[ResponseReceived] = asyncio.Queue()

    def handle(self, event: Event, endpoint: SipEndpoint) -> None:
        self.events.append(event)
        if isinstance(event, ResponseReceived):
            self.responses.put_nowait(event)
        if isinstance(event, NewRequest) and event.request.method in ("OPTIONS", "INVITE"):
            status = 200 if event.request.method == "OPTIONS" else 486
            endpoint.respond(event.request, response_to(event.request, status, to_tag="bridge"))

    def requests(self, method: str) -> list[NewRequest]:
        return [e for e in self.events if isinstance(e, NewRequest) and e.request.method == method]


@pytest.fixture
def user() -> BusyUser:
    return BusyUser()


@pytest.fixture
async def endpoint(user: BusyUser) -> AsyncIterator[SipEndpoint]:
    # Port 0: the endpoint binds UDP and then TCP on the port the kernel gave
    # it, retrying until both are free. A drawn port is free for one kind
    # only, and another worker may have drawn the same number for the other.
    endpoint = SipEndpoint(user, HOST, 0, idle=0.3)
    await endpoint.start()
    yield endpoint
    await endpoint.close()


def request(
    method: str,
    *,
    via: str = "SIP/2.0/UDP 192.0.2.1:5099",
    branch: str = "z9hG4bKtest1",
    rport: bool = True,
    cseq: str | None = None,
    call_id: str = "call-1@test",
    to_tag: str = "",
) -> bytes:
    """A request as a trunk writes it; ``via`` is the sent-protocol and sent-by."""
    return (
        f"{method} sip:bridge@{HOST} SIP/2.0\r\n"
        f"Via: {via};branch={branch}{';rport' if rport else ''}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:trunk@192.0.2.1>;tag=trunk1\r\n"
        f"To: <sip:bridge@{HOST}>{to_tag}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq or '1 ' + method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(data)


@contextlib.asynccontextmanager
async def udp_client(port: int = 0) -> AsyncIterator[tuple[asyncio.DatagramTransport, Datagrams]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Datagrams, local_addr=(HOST, port))
    try:
        yield transport, protocol
    finally:
        transport.close()


async def next_response(protocol: Datagrams) -> Response:
    message = parse(await asyncio.wait_for(protocol.queue.get(), WAIT))
    assert isinstance(message, Response)
    return message


async def read_message(reader: asyncio.StreamReader) -> Request | Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    fields = head.split(b"\r\n")
    length = next(int(f.split(b":")[1]) for f in fields if f.startswith(b"Content-Length"))
    return parse(head + await asyncio.wait_for(reader.readexactly(length), WAIT))


async def read_response(reader: asyncio.StreamReader) -> Response:
    message = await read_message(reader)
    assert isinstance(message, Response)
    return message


def top_via(message: Response) -> Via:
    return Via.parse(message.headers.get_all("Via")[0])


# -- UDP and TCP clients of our own ---------------------------------------------------


async def test_udp_options_and_invite_with_rport(endpoint: SipEndpoint, user: BusyUser) -> None:
    async with udp_client() as (transport, client):
        port = transport.get_extra_info("sockname")[1]
        transport.sendto(request("OPTIONS"), endpoint.address)
        ok = await next_response(client)
        assert ok.status == 200
        # Sent-by 192.0.2.1 is not where it came from, and rport was asked:
        # both are filled, and the answer came to the source port (RFC 3581).
        assert top_via(ok).received == HOST
        assert top_via(ok).rport == port

        transport.sendto(request("INVITE", branch="z9hG4bKinv1"), endpoint.address)
        assert (await next_response(client)).status == 100
        busy = await next_response(client)
        assert busy.status == 486
        assert top_via(busy).rport == port
    assert [e.request.method for e in user.requests("OPTIONS") + user.requests("INVITE")] == [
        "OPTIONS",
        "INVITE",
    ]
    # NewRequest.addr is where responses go: the source, as rport asked.
    assert user.requests("OPTIONS")[0].addr == (HOST, port)
    assert endpoint.stats.requests_in == {"OPTIONS": 1, "INVITE": 1}
    assert endpoint.stats.responses_out == {"1xx": 1, "2xx": 1, "4xx": 1}


async def test_udp_without_rport_answers_to_the_sent_by_port(endpoint: SipEndpoint) -> None:
    """Section 18.2.2 without rport: the received address (the source IP) at
    the Via's port, not the port the request came from."""
    sent_by = free_udp_port()
    async with udp_client() as (sender, _), udp_client(sent_by) as (_, listener):
        via = f"SIP/2.0/UDP 127.0.0.1:{sent_by}"
        sender.sendto(request("OPTIONS", via=via, rport=False), endpoint.address)
        ok = await next_response(listener)
    assert ok.status == 200
    # The sent-by is the source address: nothing to add (section 18.2.1).
    assert top_via(ok).received is None
    assert "rport" not in top_via(ok).params


async def test_tcp_options_and_invite_on_the_same_connection(
    endpoint: SipEndpoint, user: BusyUser
) -> None:
    reader, writer = await asyncio.open_connection(*endpoint.address)
    port = writer.get_extra_info("sockname")[1]
    via = "SIP/2.0/TCP 192.0.2.1:5060"
    writer.write(request("OPTIONS", via=via))
    ok = await read_response(reader)
    assert ok.status == 200
    assert (top_via(ok).received, top_via(ok).rport) == (HOST, port)

    writer.write(request("INVITE", via=via, branch="z9hG4bKtcpinv"))
    assert [(await read_response(reader)).status for _ in range(2)] == [100, 486]
    # The ACK of the 486 is the transaction's (section 17.2.1): absorbed.
    ack = request("ACK", via=via, branch="z9hG4bKtcpinv", cseq="1 ACK", to_tag=";tag=bridge")
    writer.write(ack)
    writer.write(request("OPTIONS", via=via, branch="z9hG4bKtcp2", cseq="2 OPTIONS"))
    assert (await read_response(reader)).status == 200
    writer.close()
    await writer.wait_closed()
    assert user.requests("ACK") == []
    assert endpoint.stats.tcp_accepted == 1


async def test_a_fixed_port_taken_over_tcp_fails_to_start(user: BusyUser) -> None:
    """Section 18: one port for both transports, so a port that cannot have
    both is refused rather than silently split."""
    with socket.socket() as taken:
        taken.bind((HOST, free_port()))
        taken.listen()
        endpoint = SipEndpoint(user, HOST, taken.getsockname()[1])
        with pytest.raises(OSError, match="in use"):
            await endpoint.start()
    await endpoint.close()


# -- retransmissions --------------------------------------------------------------------


async def test_retransmitted_invite_gets_the_same_final_response(
    endpoint: SipEndpoint, user: BusyUser
) -> None:
    invite = request("INVITE", branch="z9hG4bKretx")
    async with udp_client() as (transport, client):
        transport.sendto(invite, endpoint.address)
        first = [await asyncio.wait_for(client.queue.get(), WAIT) for _ in range(2)]
        transport.sendto(invite, endpoint.address)
        again = await asyncio.wait_for(client.queue.get(), WAIT)
    assert first[1].startswith(b"SIP/2.0 486 ")
    assert again == first[1]
    assert len(user.requests("INVITE")) == 1
    assert endpoint.metrics()["retransmissions"] == 1


async def test_our_request_is_retransmitted_on_its_timer_until_answered(
    endpoint: SipEndpoint, user: BusyUser
) -> None:
    """A client transaction over UDP (section 17.1.2.2): timer E resends
    the request, which carries our Via with rport; the answer ends it."""
    async with udp_client() as (transport, peer):
        addr = transport.get_extra_info("sockname")[:2]
        endpoint.request(_options_to(addr), addr)
        first = await asyncio.wait_for(peer.queue.get(), WAIT)
        second = await asyncio.wait_for(peer.queue.get(), WAIT)
        assert first == second
        sent = parse(first)
        assert isinstance(sent, Request)
        via = Via.parse(sent.headers.get_all("Via")[0])
        assert (via.transport, via.host, via.port) == ("UDP", HOST, endpoint.port)
        assert via.asks_rport
        assert (via.branch or "").startswith("z9hG4bK")
        transport.sendto(bytes(response_to(sent, 200, to_tag="peer")), endpoint.address)
        answered = await asyncio.wait_for(user.responses.get(), WAIT)
    assert answered.response.status == 200
    assert endpoint.stats.requests_out["OPTIONS"] >= 2
    assert endpoint.transactions.open == 1  # lingering for timer K


async def test_a_response_whose_top_via_is_not_ours_is_dropped(
    endpoint: SipEndpoint, user: BusyUser
) -> None:
    """Section 18.1.2: a response that names another sent-by in its top Via,
    even with our transaction's branch, is not ours: dropped and counted,
    and the real answer still ends the transaction."""
    async with udp_client() as (transport, peer):
        addr = transport.get_extra_info("sockname")[:2]
        endpoint.request(_options_to(addr), addr)
        sent = parse(await asyncio.wait_for(peer.queue.get(), WAIT))
        assert isinstance(sent, Request)
        forged = response_to(sent, 486, to_tag="forger")
        ours = forged.headers.get_all("Via")[0]
        forged.headers.set("Via", ours.replace(f"{HOST}:{endpoint.port}", "192.0.2.99:5060"))
        transport.sendto(bytes(forged), endpoint.address)
        transport.sendto(bytes(response_to(sent, 200, to_tag="peer")), endpoint.address)
        answered = await asyncio.wait_for(user.responses.get(), WAIT)
    assert answered.response.status == 200
    assert endpoint.stats.malformed["not_ours"] == 1
    assert user.responses.empty()


async def test_our_request_over_tcp_opens_a_connection(
    endpoint: SipEndpoint, user: BusyUser
) -> None:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()
    done: asyncio.Future[None] = loop.create_future()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            message = await read_message(reader)
            got.set_result(bytes(message))
            assert isinstance(message, Request)
            writer.write(bytes(response_to(message, 200, to_tag="peer")))
            await writer.drain()
            await reader.read()  # until the endpoint closes
            writer.close()
            await writer.wait_closed()
        finally:
            done.set_result(None)

    server = await asyncio.start_server(peer, HOST, free_port())
    addr = server.sockets[0].getsockname()[:2]
    try:
        endpoint.request(_options_to(addr), addr, reliable=True)
        sent = parse(await asyncio.wait_for(got, WAIT))
        assert Via.parse(sent.headers.get_all("Via")[0]).transport == "TCP"
        answered = await asyncio.wait_for(user.responses.get(), WAIT)
        assert answered.response.status == 200
        assert endpoint.connections == 1
    finally:
        await endpoint.close()
        await asyncio.wait_for(done, WAIT)
        server.close()
        await server.wait_closed()


def _options_to(addr: tuple[str, int]) -> Request:
    text = (
        f"OPTIONS sip:peer@{addr[0]}:{addr[1]} SIP/2.0\r\n"
        f"From: <sip:bridge@{HOST}>;tag=ours\r\nTo: <sip:peer@{addr[0]}>\r\n"
        "Call-ID: ours-1@bridge\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        # parse() wants a Via; the endpoint's is put in its place below.
        "Via: SIP/2.0/UDP placeholder.invalid;branch=z9hG4bKx\r\n\r\n"
    )
    message = parse(text.encode())
    assert isinstance(message, Request)
    message.headers.remove("Via")
    return message


# -- malformed input --------------------------------------------------------------------


async def test_malformed_datagrams_answered_where_readable(
    endpoint: SipEndpoint, user: BusyUser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rng = random.Random(38)
    good = request("OPTIONS", branch="z9hG4bKbad")
    batch = [
        bytes(rng.getrandbits(8) for _ in range(300)),  # dropped
        good.replace(b"Content-Length: 0\r\n\r\n", b""),  # no blank line: 400
        good.replace(b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS"),  # 400
        good.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1),  # 505
        good.split(b"Call-ID")[0],  # cut before Call-ID and CSeq: dropped
        b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n",  # a response: dropped
        b"\r\n\r\n",  # a keepalive: dropped, not malformed
    ]
    async with udp_client() as (transport, client):
        port = transport.get_extra_info("sockname")[1]
        for data in batch:
            transport.sendto(data, endpoint.address)
        transport.sendto(request("OPTIONS", branch="z9hG4bKafter"), endpoint.address)
        # Read as text: a 400 copies the fields that made it, a bad CSeq too.
        answers: list[list[bytes]] = []
        # Loopback keeps the order: every answer to the batch comes before
        # the OPTIONS's 200.
        while not answers or answers[-1][0] != b"SIP/2.0 200 OK":
            data = await asyncio.wait_for(client.queue.get(), WAIT)
            answers.append(data.split(b"\r\n"))
    assert [lines[0].split(b" ", 2)[1] for lines in answers] == [b"400", b"400", b"505", b"200"]
    assert answers[1][0] == b"SIP/2.0 400 bad CSeq 'one OPTIONS'"
    assert b"CSeq: one OPTIONS" in answers[1]
    # Via stamped as for any response (RFC 3581), and a To tag (section 8.2.6.2).
    via = Via.parse(next(line for line in answers[0] if line.startswith(b"Via:"))[4:].decode())
    assert (via.received, via.rport) == (HOST, port)
    assert all(b";tag=" in next(li for li in lines if li.startswith(b"To:")) for lines in answers)
    assert endpoint.stats.malformed == {"unparseable": 5, "version": 1}
    assert endpoint.stats.rejected == 3
    assert endpoint.stats.keepalives == 1
    assert [e.request.method for e in user.requests("OPTIONS")] == ["OPTIONS"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_malformed_tcp_streams_are_answered_and_closed(
    endpoint: SipEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    via = "SIP/2.0/TCP 192.0.2.1:5060"
    # A head announcing a 70,000-byte body: refused before it is buffered.
    too_large = request("INVITE", via=via).replace(b"Content-Length: 0", b"Content-Length: 70000")
    bad_cseq = request("OPTIONS", via=via, cseq="x OPTIONS")
    for data, status in ((too_large, 413), (bad_cseq, 400)):
        reader, writer = await asyncio.open_connection(*endpoint.address)
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(f"SIP/2.0 {status} ".encode())
        assert b"Content-Length: 0\r\n" in head
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        writer.close()
        await writer.wait_closed()

    # 70,000 bytes with no end of a head: no answer, closed.
    reader, writer = await asyncio.open_connection(*endpoint.address)
    with contextlib.suppress(ConnectionResetError):
        writer.write(b"OPTIONS sip:a SIP/2.0\r\nX-Pad: " + b"a" * 70_000)
        await writer.drain()
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
    writer.close()
    with contextlib.suppress(ConnectionResetError):
        await writer.wait_closed()

    assert endpoint.stats.malformed == {"too_large": 2, "unparseable": 1}
    assert endpoint.stats.rejected == 2
    async with udp_client() as (transport, client):
        transport.sendto(request("OPTIONS", branch="z9hG4bKstill"), endpoint.address)
        assert (await next_response(client)).status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# -- TCP keepalives and idle connections -----------------------------------------------


async def test_tcp_ping_is_answered_and_idle_connection_closed(endpoint: SipEndpoint) -> None:
    reader, writer = await asyncio.open_connection(*endpoint.address)
    writer.write(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"
    # Then nothing: the endpoint closes it after its idle limit (0.3 s here).
    assert await asyncio.wait_for(reader.read(), WAIT) == b""
    writer.close()
    await writer.wait_closed()
    assert endpoint.stats.keepalives == 1
    assert endpoint.stats.tcp_idle_closed == 1
    assert endpoint.connections == 0


async def test_connections_over_the_cap_are_closed(user: BusyUser) -> None:
    endpoint = SipEndpoint(user, HOST, 0, max_connections=1)
    await endpoint.start()
    try:
        _, first = await asyncio.open_connection(*endpoint.address)
        reader, second = await asyncio.open_connection(*endpoint.address)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), WAIT) == b""
        assert endpoint.stats.tcp_refused == 1
        for writer in (first, second):
            writer.close()
            with contextlib.suppress(ConnectionResetError):
                await writer.wait_closed()
    finally:
        await endpoint.close()


# -- SIPp as the peer -------------------------------------------------------------------

OPTIONS_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options">
  <send retrans="500"><![CDATA[
OPTIONS sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 OPTIONS
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""

# A busy callee (RFC 3261 section 17.1.1.3): 100, 486, and the ACK on the
# INVITE's branch ([branch-3]: the INVITE is three messages back).
BUSY_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="busy">
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:sipp@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="100" optional="true"/>
  <recv response="486"/>
  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3];rport
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
</scenario>
"""


async def run_sipp(tmp_path: Path, scenario: str, endpoint: SipEndpoint, transport: str) -> None:
    xml = tmp_path / "scenario.xml"
    xml.write_text(scenario)
    port = free_udp_port() if transport == "u1" else free_port()
    process = await asyncio.create_subprocess_exec(
        *("sipp", "-sf", str(xml), "-s", "bridge", "-i", HOST, "-p", str(port)),
        *("-t", transport, "-m", "1", "-timeout", "20", "-trace_err", "-nostdin"),
        f"{HOST}:{endpoint.port}",
        cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    assert process.returncode == 0, (stderr.decode(errors="replace"), sipp_errors(tmp_path))


def sipp_errors(folder: Path) -> str:
    """What -trace_err wrote: the messages SIPp did not expect."""
    return "".join(p.read_text() for p in folder.glob("*_errors.log"))


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_sipp_options(
    tmp_path: Path, endpoint: SipEndpoint, user: BusyUser, transport: str
) -> None:
    await run_sipp(tmp_path, OPTIONS_XML, endpoint, transport)
    assert len(user.requests("OPTIONS")) == 1


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_sipp_busy_invite_and_its_ack(
    tmp_path: Path, endpoint: SipEndpoint, user: BusyUser, transport: str
) -> None:
    await run_sipp(tmp_path, BUSY_XML, endpoint, transport)
    assert len(user.requests("INVITE")) == 1
    # SIPp ends the call as it sends the ACK; the endpoint has it once it is
    # absorbed, which a later OPTIONS on the same path shows (loopback keeps
    # order), and an absorbed ACK never reaches the user.
    await run_sipp(tmp_path, OPTIONS_XML, endpoint, transport)
    assert user.requests("ACK") == []
    assert endpoint.stats.requests_in["ACK"] == 1
