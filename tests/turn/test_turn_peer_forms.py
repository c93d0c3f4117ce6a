"""Issue 12, finding 9: the relay's deny rules judge the IPv4 address inside
every IPv6 form that embeds one, and every IANA special-purpose block.

The review reached loopback and the metadata service through
IPv4-compatible (``::7f00:1``, ``::a9fe:a9fe``), IPv4-translated
(``::ffff:0:7f00:1``), local-use NAT64 (``64:ff9b:1::/48``) and Teredo peers."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtc import stun
from tests.turn.conftest import RawClient, error_code
from turn.policy import IPV4_SPECIAL, PeerPolicy

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def _v6(high: int, v4: V4, shift: int = 0) -> V6:
    return V6(high | (int(v4) << shift))


def _rfc6052(prefix: V6, length: int, v4: V4) -> V6:
    """RFC 6052 section 2.2: the IPv4 address after a prefix of ``length``
    bits, skipping bits 64 to 71."""
    raw = bytearray(prefix.packed)
    octets = list(v4.packed)
    spots = [i for i in range(length // 8, 16) if i != 8][:4]
    for i, octet in zip(spots, octets, strict=True):
        raw[i] = octet
    return V6(bytes(raw))


def _teredo(server: V4, client: V4, port: int = 40000) -> V6:
    # RFC 4380 section 4: 2001:0000:server:flags:port:client, the last two inverted.
    return V6(
        (0x20010000 << 96)
        | (int(server) << 64)
        | ((port ^ 0xFFFF) << 32)
        | (int(client) ^ 0xFFFFFFFF)
    )


PUBLIC_SERVER = V4("8.8.4.4")

#: Every form that carries an IPv4 address a relay or a translator might reach.
FORMS: dict[str, Callable[[V4], V6]] = {
    "ipv4-mapped": lambda a: _v6(0xFFFF << 32, a),
    "ipv4-compatible": lambda a: _v6(0, a),
    "ipv4-translated": lambda a: _v6(0xFFFF << 48, a),
    "nat64-well-known": lambda a: _v6(0x64FF9B << 96, a),
    **{
        f"nat64-local-use/{n}": functools.partial(_rfc6052, V6("64:ff9b:1::"), n)
        for n in (48, 56, 64, 96)
    },
    "6to4": lambda a: _v6(0x2002 << 112, a, 80),
    "teredo-client": lambda a: _teredo(PUBLIC_SERVER, a),
    "teredo-server": lambda a: _teredo(a, PUBLIC_SERVER),
}

#: Forms that route to the address inside, so a public one is a fair peer;
#: the rest are never a peer on the wire and are refused whatever they hold.
ROUTED = {"nat64-well-known", "6to4", "teredo-client", "teredo-server"}

special_v4 = st.sampled_from(IPV4_SPECIAL).flatmap(
    lambda cidr: st.integers(0, ipaddress.ip_network(cidr).num_addresses - 1).map(
        lambda i: ipaddress.ip_network(cidr).network_address + i
    )
)


@given(special_v4, st.sampled_from(sorted(FORMS)))
def test_a_special_ipv4_address_is_refused_in_every_form(v4: V4, form: str) -> None:
    policy = PeerPolicy()
    assert not policy.allowed(str(v4))
    assert not policy.allowed(str(FORMS[form](v4))), f"{form} of {v4}: {FORMS[form](v4)}"


@given(st.ip_addresses(v=4), st.sampled_from(sorted(FORMS)))
def test_every_form_is_judged_by_the_address_inside(v4: V4, form: str) -> None:
    policy = PeerPolicy()
    embedded = FORMS[form](v4)
    if not policy.allowed(str(v4)):
        assert not policy.allowed(str(embedded))
    elif form in ROUTED:
        assert policy.allowed(str(embedded))
    else:
        assert not policy.allowed(str(embedded))


def test_an_allow_listed_network_is_allowed_in_its_embedded_forms() -> None:
    policy = PeerPolicy(allow=("10.1.0.0/16",))
    assert policy.allowed("10.1.2.3")
    assert policy.allowed("::ffff:10.1.2.3")
    assert policy.allowed(str(FORMS["6to4"](V4("10.1.2.3"))))
    assert not policy.allowed("::ffff:10.2.0.1")
    # Teredo holds two addresses; both must be allowed.
    assert not policy.allowed(str(_teredo(V4("10.1.0.1"), V4("127.0.0.1"))))


@pytest.mark.parametrize(
    "ip",
    [
        "192.0.2.1", "198.51.100.7", "203.0.113.9", "192.88.99.1", "192.0.0.9",
        "192.31.196.1", "192.52.193.1", "192.175.48.6", "198.19.255.255", "255.255.255.255",
        "100::1", "2001:db8::1", "2001:2::1", "2001:1::2", "2001:10::1", "2001:20::1",
        "3fff::1", "5f00::1", "fec0::1", "ff0e::1", "fe80::1%1", "64:ff9b:1::1",
    ],
)  # fmt: skip
def test_iana_special_purpose_blocks_are_refused(ip: str) -> None:
    assert not PeerPolicy().allowed(ip)


ATTACK_PEERS = [
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
    "::ffff:0:7f00:1",  # IPv4-translated 127.0.0.1
    "::ffff:0:a9fe:a9fe",  # IPv4-translated 169.254.169.254
    "::ffff:7f00:1",  # IPv4-mapped 127.0.0.1
    "64:ff9b::7f00:1",  # NAT64 well-known prefix
    "64:ff9b:1::7f00:1",  # NAT64 local-use, /96 layout
    str(_rfc6052(V6("64:ff9b:1::"), 48, V4("169.254.169.254"))),  # local-use, /48 layout
    str(_rfc6052(V6("64:ff9b:1::"), 64, V4("10.0.0.1"))),  # local-use, /64 layout
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    str(_teredo(PUBLIC_SERVER, V4("127.0.0.1"))),  # Teredo client 127.0.0.1
    str(_teredo(PUBLIC_SERVER, V4("169.254.169.254"))),
    str(_teredo(V4("10.0.0.1"), PUBLIC_SERVER)),  # Teredo server 10.0.0.1
]


@pytest.mark.usefixtures("ipv6_loopback")
async def test_create_permission_to_each_embedded_form_is_403(server_factory: Any) -> None:
    """The review's probe: an IPv6 allocation on a relay with default rules,
    then CreatePermission (and ChannelBind) to each form."""
    server = await server_factory(
        listen_udp=(("::1", 0),), listen_tcp=(), relay_ips=("127.0.0.1", "::1"), allow_peers=()
    )
    client = await RawClient.open(server.udp_addresses[0], "::1")
    client.credentials()
    try:
        fam = stun.pack_u8_rffu(stun.FAMILY_IPV6)
        assert (await client.allocate((stun.REQUESTED_ADDRESS_FAMILY, fam))).cls == stun.SUCCESS
        granted = [p for p in ATTACK_PEERS if error_code(await client.permit((p, 80))) != 403]
        assert granted == []
        bound = [
            p
            for i, p in enumerate(ATTACK_PEERS)
            if error_code(await client.channel_bind(0x4000 + i, (p, 80))) != 403
        ]
        assert bound == []
        # A public IPv6 peer is still fine.
        assert (await client.permit(("2001:4860:4860::8888", 53))).cls == stun.SUCCESS
    finally:
        client.close()
