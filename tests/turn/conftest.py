"""Fixtures for the TURN relay: a real server on loopback, a UDP echo peer,
and a small raw client that can send exactly the bytes a test wants.

Tests allow 127.0.0.0/8 and ::1 as peers explicitly (the default refuses them;
``test_turn_refusals.py`` proves that).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from rtc import stun
from turn.aio import TurnServer
from turn.config import TurnConfig
from turn.credentials import rest_credentials

SECRET = "test-secret"
REALM = "test.wadud"
LOOPBACK_PEERS = ("127.0.0.0/8", "::1/128")


def make_config(**changes: Any) -> TurnConfig:
    base: dict[str, Any] = {
        "listen_udp": (("127.0.0.1", 0),),
        "listen_tcp": (("127.0.0.1", 0),),
        "secrets": (SECRET,),
        "realm": REALM,
        "allow_peers": LOOPBACK_PEERS,
        "min_port": 40000,
        "max_port": 59999,
    }
    base.update(changes)
    return TurnConfig(**base)


@pytest.fixture
def turn_config() -> TurnConfig:
    return make_config()


@pytest.fixture
async def turn_server(turn_config: TurnConfig) -> AsyncIterator[TurnServer]:
    server = TurnServer(turn_config)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def server_factory() -> AsyncIterator[Callable[..., Any]]:
    """Start extra servers with custom settings; all closed at teardown."""
    started: list[TurnServer] = []

    async def start(**changes: Any) -> TurnServer:
        server = TurnServer(make_config(**changes))
        await server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.close()


class EchoPeer(asyncio.DatagramProtocol):
    """A UDP peer that echoes every datagram and remembers what it saw."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.seen: list[tuple[bytes, Any]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.seen.append((data, addr))
        assert self.transport is not None
        self.transport.sendto(data, addr)

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port


@pytest.fixture
async def echo_peer() -> AsyncIterator[EchoPeer]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(EchoPeer, local_addr=("127.0.0.1", 0))
    try:
        yield protocol
    finally:
        transport.close()


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))


class RawClient:
    """A TURN client over UDP that sends exactly what a test builds.

    It is ours, so tests that need a client nobody here wrote use aioice and
    coturn's tools; this one is for refusals and malformed input.
    """

    def __init__(self, transport: asyncio.DatagramTransport, inbox: _Inbox, server: Any) -> None:
        self.transport = transport
        self.inbox = inbox
        self.server = server
        self.username = ""
        self.password = ""
        self.realm = b""
        self.nonce = b""
        self.key = b""

    @classmethod
    async def open(cls, server: tuple[str, int], family_host: str = "127.0.0.1") -> RawClient:
        loop = asyncio.get_running_loop()
        transport, inbox = await loop.create_datagram_endpoint(_Inbox, local_addr=(family_host, 0))
        return cls(transport, inbox, server)

    def close(self) -> None:
        self.transport.close()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, data: bytes) -> None:
        self.transport.sendto(data, self.server)

    async def recv(self, wait: float = 2.0) -> bytes:
        data, _ = await asyncio.wait_for(self.inbox.queue.get(), wait)
        return data

    async def recv_nothing(self, wait: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            await self.recv(wait)

    async def transact(self, msg: stun.StunMessage, wait: float = 2.0) -> stun.StunMessage:
        """Send a request and wait for the response with its transaction id."""
        self.send(bytes(msg))
        end = time.monotonic() + wait
        while True:
            data = await self.recv(max(0.01, end - time.monotonic()))
            if data[0] < 0x40:
                reply = stun.StunMessage.parse(data)
                if reply.transaction_id == msg.transaction_id:
                    return reply

    def credentials(self, user: str = "alice", ttl: int = 600, secret: str = SECRET) -> None:
        self.username, self.password = rest_credentials(secret, user, ttl, time.time())

    def request(self, method: int, *attrs: tuple[int, Any]) -> stun.StunMessage:
        """A request; tuples whose value is a (host, port) are XOR-encoded."""
        m = stun.StunMessage(method, stun.REQUEST, os.urandom(12))
        for atype, value in attrs:
            if isinstance(value, tuple):
                m.set(atype, value)
            else:
                m.add(atype, value)
        return m

    def sign(self, m: stun.StunMessage, sha256: bool = False) -> stun.StunMessage:
        m.add(stun.USERNAME, self.username.encode())
        m.add(stun.REALM, self.realm)
        m.add(stun.NONCE, self.nonce)
        return m.add_integrity(self.key, sha256)

    async def authed(
        self, method: int, *attrs: tuple[int, Any], sha256: bool = False
    ) -> stun.StunMessage:
        """Send a signed request, learning REALM/NONCE from a 401 first if needed."""
        if not self.nonce:
            challenge = await self.transact(self.request(method, *attrs))
            assert error_code(challenge) == 401
            self.realm = challenge.get(stun.REALM) or b""
            self.nonce = challenge.get(stun.NONCE) or b""
            self.key = stun.long_term_key(self.username, self.realm.decode(), self.password)
        return await self.transact(self.sign(self.request(method, *attrs), sha256))

    async def allocate(self, *attrs: tuple[int, Any]) -> stun.StunMessage:
        transport = (stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(stun.TRANSPORT_UDP))
        return await self.authed(stun.ALLOCATE, transport, *attrs)

    async def channel_bind(self, channel: int, peer: tuple[str, int]) -> stun.StunMessage:
        return await self.authed(
            stun.CHANNEL_BIND,
            (stun.CHANNEL_NUMBER, stun.pack_channel(channel)),
            (stun.XOR_PEER_ADDRESS, peer),
        )

    async def permit(self, *peers: tuple[str, int]) -> stun.StunMessage:
        return await self.authed(
            stun.CREATE_PERMISSION, *((stun.XOR_PEER_ADDRESS, p) for p in peers)
        )


def error_code(msg: stun.StunMessage) -> int | None:
    raw = msg.get(stun.ERROR_CODE)
    return None if raw is None else stun.unpack_error(raw)[0]


@pytest.fixture
async def raw_client(turn_server: TurnServer) -> AsyncIterator[RawClient]:
    client = await RawClient.open(turn_server.udp_addresses[0])
    client.credentials()
    try:
        yield client
    finally:
        client.close()


def need_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install -y coturn chromium)")
    return path


@pytest.fixture
def ipv6_loopback() -> None:
    """Skips a test where this machine has no ``::1`` to bind."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this machine")
