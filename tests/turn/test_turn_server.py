"""The real server on loopback: aioice's TURN client (a client we did not
write) over UDP, TCP and TLS, refusals, and malformed traffic while others relay."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from aioice import turn as aioice_turn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from rtc import stun
from tests.conftest import udp_ports_free
from tests.turn.conftest import SECRET, EchoPeer, RawClient, error_code, make_config
from turn import aio as turn_aio
from turn.aio import TurnServer
from turn.credentials import rest_credentials
from wadud import certs


class Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))


async def echoed(
    transport: asyncio.DatagramTransport, proto: Collect, peer: Any, payload: bytes
) -> bytes:
    """Send ``payload`` through an aioice TURN client's ``transport`` to the
    echo ``peer``; the first datagram back. The transport is closed after."""
    try:
        transport.sendto(payload, peer)
        data, _ = await asyncio.wait_for(proto.queue.get(), 2)
        return data
    finally:
        transport.close()


async def relay_round_trips(
    server_addr: tuple[str, int], peer: EchoPeer, transport: str, n: int = 20, **kw: Any
) -> tuple[str, int]:
    username, password = rest_credentials(SECRET, "aioice", 600, time.time())
    turn_transport, proto = await aioice_turn.create_turn_endpoint(
        Collect, server_addr, username, password, transport=transport, **kw
    )
    try:
        relayed: tuple[str, int] = turn_transport.get_extra_info("sockname")
        for i in range(n):
            payload = f"ping {i} {transport}".encode() * (1 + i % 40)
            turn_transport.sendto(payload, peer.address)
            data, addr = await asyncio.wait_for(proto.queue.get(), 2)
            assert data == payload
            assert addr == peer.address
        # The peer saw the relayed address, not the client's.
        assert peer.seen[-1][1] == relayed
        return relayed
    finally:
        turn_transport.close()


async def test_aioice_udp_relays_to_echo_peer(turn_server: TurnServer, echo_peer: EchoPeer) -> None:
    relayed = await relay_round_trips(turn_server.udp_addresses[0], echo_peer, "udp")
    assert relayed[0] == "127.0.0.1"
    assert turn_server.core.snapshot()["from_peer_pkts"] >= 20


async def test_aioice_tcp_relays_to_echo_peer(turn_server: TurnServer, echo_peer: EchoPeer) -> None:
    await relay_round_trips(turn_server.tcp_addresses[0], echo_peer, "tcp")
    # The TCP connection closing deletes the allocation (RFC 8656 section 3.1).
    for _ in range(50):
        if not turn_server.core.allocator.allocations:
            break
        await asyncio.sleep(0.02)
    assert not turn_server.core.allocator.allocations


def _self_signed(tmp: Path) -> tuple[str, str]:
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    key, cert = certs.self_signed(
        "localhost",
        now - datetime.timedelta(minutes=1),
        now + datetime.timedelta(days=1),
        [(san, False)],
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


async def test_aioice_tls_relays_to_echo_peer(
    tmp_path: Path, server_factory: Any, echo_peer: EchoPeer
) -> None:
    cert, key = _self_signed(tmp_path)
    server = await server_factory(
        listen_tls=(("127.0.0.1", 0),), tls_cert=cert, tls_key=key, listen_tcp=()
    )
    ctx = ssl.create_default_context(cafile=cert)
    await relay_round_trips(server.tls_addresses[0], echo_peer, "tcp", ssl=ctx)
    assert any(u.startswith("turns:") for u in server.urls())


@pytest.mark.usefixtures("ipv6_loopback")
async def test_ipv6_allocation_and_relay(server_factory: Any) -> None:
    server = await server_factory(
        listen_udp=(("::1", 0),), listen_tcp=(), relay_ips=("127.0.0.1", "::1")
    )
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(EchoPeer, local_addr=("::1", 0))
    client = await RawClient.open(server.udp_addresses[0], "::1")
    client.credentials()
    try:
        fam = stun.pack_u8_rffu(stun.FAMILY_IPV6)
        reply = await client.allocate((stun.REQUESTED_ADDRESS_FAMILY, fam))
        assert reply.cls == stun.SUCCESS, reply
        assert reply.decoded("XOR-RELAYED-ADDRESS")[0] == "::1"
        assert (await client.channel_bind(0x4000, peer.address)).cls == stun.SUCCESS
        client.send(b"\x40\x00\x00\x04abcd")
        data = await client.recv()
        assert data[:8] == b"\x40\x00\x00\x04abcd"
        # An IPv4 peer on an IPv6 allocation: 443.
        assert error_code(await client.permit(("127.0.0.1", 9))) == 443
    finally:
        client.close()
        transport.close()


async def test_data_indication_for_peer_without_channel(
    raw_client: RawClient, echo_peer: EchoPeer
) -> None:
    assert (await raw_client.allocate()).cls == stun.SUCCESS
    assert (await raw_client.permit(echo_peer.address)).cls == stun.SUCCESS
    send = stun.StunMessage(stun.SEND, stun.INDICATION, os.urandom(12))
    send.set("XOR-PEER-ADDRESS", echo_peer.address).add(stun.DATA_ATTR, b"via send")
    raw_client.send(bytes(send))
    data = stun.StunMessage.parse(await raw_client.recv())
    assert (data.method, data.cls) == (stun.DATA, stun.INDICATION)
    assert data.decoded("XOR-PEER-ADDRESS") == echo_peer.address
    assert data.get(stun.DATA_ATTR) == b"via send"


async def test_dont_fragment_and_even_port_allocations(raw_client: RawClient) -> None:
    reply = await raw_client.allocate((stun.DONT_FRAGMENT, b""), (stun.EVEN_PORT, b"\x80"))
    assert reply.cls == stun.SUCCESS, reply
    assert reply.decoded("XOR-RELAYED-ADDRESS")[1] % 2 == 0
    assert reply.get(stun.RESERVATION_TOKEN) is not None


async def test_reserved_port_is_held_and_handed_over(
    server_factory: Any, echo_peer: EchoPeer
) -> None:
    """RFC 8656 section 7.1: the port a RESERVATION-TOKEN names is bound by the
    server until redeemed (nobody else can take it), the allocation that
    redeems it gets exactly that port, and an unredeemed one is freed when it
    expires or the server stops."""
    server = await server_factory(reservation_lifetime=1)
    first = await RawClient.open(server.udp_addresses[0])
    second = await RawClient.open(server.udp_addresses[0])
    third = await RawClient.open(server.udp_addresses[0])
    try:
        for c in (first, second, third):
            c.credentials()
        reply = await first.allocate((stun.EVEN_PORT, b"\x80"))
        port = reply.decoded("XOR-RELAYED-ADDRESS")[1]
        token = reply.get(stun.RESERVATION_TOKEN)
        assert token is not None
        assert not udp_ports_free(port + 1)
        redeemed = await second.allocate((stun.RESERVATION_TOKEN, token))
        assert redeemed.cls == stun.SUCCESS, redeemed
        assert redeemed.decoded("XOR-RELAYED-ADDRESS") == ("127.0.0.1", port + 1)
        # The handed-over socket relays.
        assert (await second.channel_bind(0x4001, echo_peer.address)).cls == stun.SUCCESS
        second.send(struct.pack("!HH", 0x4001, 5) + b"hello")
        assert await second.recv() == struct.pack("!HH", 0x4001, 5) + b"hello"
        assert echo_peer.seen[-1] == (b"hello", ("127.0.0.1", port + 1))

        # Unredeemed: held until it expires (1 s here, 30 s by default).
        reply = await third.allocate((stun.EVEN_PORT, b"\x80"))
        other = reply.decoded("XOR-RELAYED-ADDRESS")[1] + 1
        assert not udp_ports_free(other)
        deadline = time.monotonic() + 5
        while not udp_ports_free(other):
            assert time.monotonic() < deadline, "reservation never expired"
            await asyncio.sleep(0.1)
    finally:
        for c in (first, second, third):
            c.close()


async def test_shutdown_frees_reserved_port(server_factory: Any) -> None:
    server = await server_factory()
    client = await RawClient.open(server.udp_addresses[0])
    try:
        client.credentials()
        reply = await client.allocate((stun.EVEN_PORT, b"\x80"))
        port = reply.decoded("XOR-RELAYED-ADDRESS")[1]
        assert not udp_ports_free(port + 1)
        await server.close()
        assert udp_ports_free(port + 1)
        assert udp_ports_free(port)
    finally:
        client.close()


async def test_idle_tcp_connection_is_closed(
    turn_server: TurnServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turn_aio, "STREAM_IDLE_TIMEOUT", 0.2)
    reader, writer = await asyncio.open_connection(*turn_server.tcp_addresses[0])
    try:
        assert await asyncio.wait_for(reader.read(), 3) == b""
    finally:
        writer.close()


# --- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "peer",
    [
        ("127.0.0.1", 9),
        ("10.0.0.1", 9),
        ("192.168.0.10", 9),
        ("172.20.0.1", 9),
        ("100.64.1.1", 9),
        ("169.254.169.254", 80),
        ("224.0.0.251", 5353),
        ("0.0.0.0", 9),
    ],
)
async def test_default_refuses_special_peers(server_factory: Any, peer: tuple[str, int]) -> None:
    server = await server_factory(allow_peers=())
    client = await RawClient.open(server.udp_addresses[0])
    client.credentials()
    try:
        assert (await client.allocate()).cls == stun.SUCCESS
        assert error_code(await client.permit(peer)) == 403
        assert error_code(await client.channel_bind(0x4000, peer)) == 403
    finally:
        client.close()


async def test_default_refuses_loopback_send_too(server_factory: Any, echo_peer: EchoPeer) -> None:
    server = await server_factory(allow_peers=())
    client = await RawClient.open(server.udp_addresses[0])
    client.credentials()
    try:
        await client.allocate()
        send = stun.StunMessage(stun.SEND, stun.INDICATION, os.urandom(12))
        send.set("XOR-PEER-ADDRESS", echo_peer.address).add(stun.DATA_ATTR, b"x")
        client.send(bytes(send))
        await client.recv_nothing()
        assert echo_peer.seen == []
    finally:
        client.close()


async def test_listed_peer_is_allowed(server_factory: Any, echo_peer: EchoPeer) -> None:
    server = await server_factory(allow_peers=("127.0.0.1/32",))
    client = await RawClient.open(server.udp_addresses[0])
    client.credentials()
    try:
        await client.allocate()
        assert (await client.permit(echo_peer.address)).cls == stun.SUCCESS
        assert error_code(await client.permit(("127.0.0.2", 9))) == 403
        assert error_code(await client.permit(("169.254.169.254", 80))) == 403
    finally:
        client.close()


async def test_expired_rest_credentials_401(raw_client: RawClient) -> None:
    raw_client.username, raw_client.password = rest_credentials(
        SECRET, "late", 10, time.time() - 60
    )
    reply = await raw_client.allocate()
    assert error_code(reply) == 401


async def test_replayed_stale_nonce_438(server_factory: Any) -> None:
    server = await server_factory(nonce_lifetime=0.5)
    client = await RawClient.open(server.udp_addresses[0])
    client.credentials()
    try:
        assert (await client.allocate()).cls == stun.SUCCESS
        await asyncio.sleep(2.1)  # nonce expiry has one-second resolution
        reply = await client.authed(stun.REFRESH)
        assert error_code(reply) == 438
        assert reply.get(stun.NONCE) not in (None, client.nonce)
        client.nonce = reply.get(stun.NONCE) or b""
        assert (await client.authed(stun.REFRESH)).cls == stun.SUCCESS
    finally:
        client.close()


async def test_allocation_over_quota_486(server_factory: Any) -> None:
    server = await server_factory(user_quota=2)
    clients = [await RawClient.open(server.udp_addresses[0]) for _ in range(3)]
    try:
        results = []
        for c in clients:
            c.credentials(user="quota-user")
            results.append(error_code(await c.allocate()))
        assert results == [None, None, 486]
        samples = {
            s.labels.get("quota"): s.value
            for m in REGISTRY.collect()
            if m.name == "turn_quota_refusals"
            for s in m.samples
            if s.name.endswith("_total")
        }
        assert samples.get("user", 0) >= 1
    finally:
        for c in clients:
            c.close()


# --- malformed input at the real server, while another client relays ---------------------

garbage = st.one_of(
    st.binary(max_size=120),
    # STUN-looking headers with random bodies and lengths.
    st.builds(
        lambda t, n, body: (
            t.to_bytes(2, "big") + n.to_bytes(2, "big") + stun.COOKIE_BYTES + bytes(12) + body
        ),
        st.integers(0, 0x3FFF),
        st.integers(0, 0xFFFF),
        st.binary(max_size=80),
    ),
    # ChannelData with lying lengths and unbound numbers.
    st.builds(
        lambda c, n, body: c.to_bytes(2, "big") + n.to_bytes(2, "big") + body,
        st.integers(0x4000, 0x7FFF),
        st.integers(0, 0xFFFF),
        st.binary(max_size=40),
    ),
)


@given(st.lists(garbage, min_size=1, max_size=30))
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_garbage_never_stops_relaying(packets: list[bytes]) -> None:
    async def scenario() -> None:
        server = TurnServer(make_config())
        await server.start()
        loop = asyncio.get_running_loop()
        peer_t, peer = await loop.create_datagram_endpoint(EchoPeer, local_addr=("127.0.0.1", 0))
        good = await RawClient.open(server.udp_addresses[0])
        bad = await RawClient.open(server.udp_addresses[0])
        good.credentials()
        try:
            await good.allocate()
            await good.channel_bind(0x4000, peer.address)
            # The attacker has an allocation too, so its ChannelData reaches the hot path.
            bad.credentials(user="mallory")
            await bad.allocate()
            for p in packets:
                bad.send(p)
                good.send(b"\x40\x00\x00\x03abc")
            got = 0
            while got < len(packets):
                data = await good.recv(2.0)
                if data.startswith(b"\x40\x00\x00\x03abc"):
                    got += 1
            await good.recv_nothing(0.1)
            # Whatever the server sent the attacker parses as STUN error/success responses.
            while not bad.inbox.queue.empty():
                data, _ = bad.inbox.queue.get_nowait()
                reply = stun.StunMessage.parse(data)
                assert reply.cls in (stun.SUCCESS, stun.ERROR)
        finally:
            good.close()
            bad.close()
            peer_t.close()
            await server.close()

    asyncio.run(scenario())


async def test_loopback_config_for_serve_and_ice_server_entry(echo_peer: EchoPeer) -> None:
    from turn.config import TurnConfig
    from turn.credentials import ice_server

    config = TurnConfig.for_loopback()
    server = TurnServer(config)
    for _ in range(5):
        await server.start()
        if server.udp_addresses[0][1] == server.tcp_addresses[0][1]:
            break
        # Another process (a parallel test worker) held that TCP port, and the
        # listener took any other, as it should; try for a pair again.
        await server.close()
        server = TurnServer(config)
    else:
        raise AssertionError("never got one port for UDP and TCP in five tries")
    try:
        entry = ice_server(config.secrets[0], "patient-1", 600, time.time(), server.urls())
        assert entry["urls"] == [
            f"turn:127.0.0.1:{server.udp_addresses[0][1]}?transport=udp",
            f"turn:127.0.0.1:{server.tcp_addresses[0][1]}?transport=tcp",
        ]
        username, password = str(entry["username"]), str(entry["credential"])
        turn_transport, proto = await aioice_turn.create_turn_endpoint(
            Collect, server.udp_addresses[0], username, password
        )
        assert await echoed(turn_transport, proto, echo_peer.address, b"hi") == b"hi"
    finally:
        await server.close()
