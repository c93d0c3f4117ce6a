"""The sans-I/O core with a fake clock: every request, error code and expiry.

No sockets: ``open_relay`` hands back an in-memory endpoint that records what
would be sent, as aioquic's tests do with ``transfer()``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc import stun
from turn.allocation import (
    TRANSITIONS,
    Allocation,
    AllocationEvent,
    AllocationState,
    ChannelEvent,
    ChannelState,
    ClientSide,
    MissingTransition,
    PermissionEvent,
    PermissionState,
    next_state,
)
from turn.config import TurnConfig
from turn.core import TurnCore
from turn.credentials import rest_credentials

SECRET = "core-secret"
REALM = "core.test"
T0 = 1_800_000_000.0
CLIENT = ("198.51.100.7", 40000)
PEER = ("203.0.113.5", 5000)


class MemoryRelay:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sent: list[tuple[bytes, Any]] = []
        self.closed = False

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        self.closed = True


class Harness:
    """A core, one UDP side, and a client that signs its requests."""

    def __init__(self, **changes: Any) -> None:
        settings_: dict[str, Any] = {
            "listen_udp": (("192.0.2.1", 3478),),
            "secrets": (SECRET,),
            "realm": REALM,
            "min_port": 50000,
            "max_port": 50009,
        }
        settings_.update(changes)
        self.config = TurnConfig(**settings_).validate()
        self.taken: set[int] = set()
        self.relays: list[MemoryRelay] = []
        self.held: dict[int, MemoryRelay] = {}
        self.core = TurnCore(self.config, self.open_relay, self.reserve_port)
        self.side = ClientSide("udp", ("192.0.2.1", 3478))
        self.now = T0
        self.username, self.password = rest_credentials(SECRET, "alice", 3600, T0)
        self.nonce = b""
        self.nonce_ip = ""
        self.retry_stale = True
        self.key = stun.long_term_key(self.username, REALM, self.password)

    def open_relay(
        self, alloc: Allocation, ip: str, port: int, df: bool, reserved: Any
    ) -> MemoryRelay | None:
        if reserved is not None:
            # The held port itself becomes the relay.
            assert reserved is self.held.pop(port)
            assert not reserved.closed
            self.relays.append(reserved)
            return reserved  # type: ignore[no-any-return]
        if port in self.taken or self._holding(port):
            return None
        relay = MemoryRelay(port)
        self.relays.append(relay)
        return relay

    def _holding(self, port: int) -> bool:
        return port in self.held and not self.held[port].closed

    def reserve_port(self, ip: str, port: int) -> MemoryRelay | None:
        if port in self.taken or self._holding(port):
            return None
        self.held[port] = MemoryRelay(port)
        return self.held[port]

    def send(self, data: bytes, client: Any = CLIENT) -> stun.StunMessage | None:
        out = self.core.handle(self.side, client, data, self.now)
        return None if out is None else stun.StunMessage.parse(out)

    def request(self, method: int, *attrs: tuple[int, Any]) -> stun.StunMessage:
        m = stun.StunMessage(method, stun.REQUEST, os.urandom(12))
        for atype, value in attrs:
            m.set(atype, value) if isinstance(value, tuple) else m.add(atype, value)
        return m

    def signed(
        self, method: int, *attrs: tuple[int, Any], sha256: bool = False, client: Any = CLIENT
    ) -> bytes:
        # Nonces are bound to the client's IP: learn one per IP.
        if not self.nonce or self.nonce_ip != client[0]:
            challenge = self.send(bytes(self.request(method)), client)
            assert challenge is not None
            assert code(challenge) == 401
            self.nonce = challenge.get(stun.NONCE) or b""
            self.nonce_ip = client[0]
        m = self.request(method, *attrs)
        m.add(stun.USERNAME, self.username.encode()).add(stun.REALM, REALM.encode())
        m.add(stun.NONCE, self.nonce).add_integrity(self.key, sha256)
        return bytes(m)

    def call(self, method: int, *attrs: tuple[int, Any], client: Any = CLIENT) -> stun.StunMessage:
        reply = self.send(self.signed(method, *attrs, client=client), client)
        assert reply is not None
        if code(reply) == 438 and self.retry_stale:
            # What real clients do (RFC 8489 9.2.5): retry with the new nonce.
            self.nonce = reply.get(stun.NONCE) or b""
            reply = self.send(self.signed(method, *attrs, client=client), client)
            assert reply is not None
        return reply

    def allocate(self, *attrs: tuple[int, Any], client: Any = CLIENT) -> stun.StunMessage:
        transport = (stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(stun.TRANSPORT_UDP))
        return self.call(stun.ALLOCATE, transport, *attrs, client=client)

    def channel_bind(self, channel: int, peer: tuple[str, int] = PEER) -> stun.StunMessage:
        return self.call(
            stun.CHANNEL_BIND,
            (stun.CHANNEL_NUMBER, stun.pack_channel(channel)),
            (stun.XOR_PEER_ADDRESS, peer),
        )

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.core.handle_timer(self.now)

    @property
    def alloc(self) -> Allocation:
        return self.side.allocations[CLIENT]


def code(msg: stun.StunMessage) -> int | None:
    raw = msg.get(stun.ERROR_CODE)
    return None if raw is None else stun.unpack_error(raw)[0]


@pytest.fixture
def h() -> Harness:
    return Harness(allow_peers=("203.0.113.0/24",))


def test_binding_reflects_the_source_address(h: Harness) -> None:
    reply = h.send(bytes(h.request(stun.BINDING)))
    assert reply is not None
    assert reply.cls == stun.SUCCESS
    assert reply.decoded("XOR-MAPPED-ADDRESS") == CLIENT


def test_allocate_challenge_then_success(h: Harness) -> None:
    challenge = h.send(bytes(h.request(stun.ALLOCATE)))
    assert challenge is not None
    assert code(challenge) == 401
    assert challenge.decoded("REALM") == REALM
    assert challenge.get(stun.MESSAGE_INTEGRITY) is None
    reply = h.allocate()
    assert reply.cls == stun.SUCCESS, reply
    relay = reply.decoded("XOR-RELAYED-ADDRESS")
    assert relay[0] == "192.0.2.1"
    assert 50000 <= relay[1] <= 50009
    assert reply.decoded("LIFETIME") == 600
    assert reply.decoded("XOR-MAPPED-ADDRESS") == CLIENT
    assert stun.check_integrity(bytes(reply), h.key)


def test_sha256_integrity_is_accepted_and_answered_in_kind(h: Harness) -> None:
    h.signed(stun.ALLOCATE)  # learn the nonce
    transport = (stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(stun.TRANSPORT_UDP))
    reply = h.send(h.signed(stun.ALLOCATE, transport, sha256=True))
    assert reply is not None
    assert reply.cls == stun.SUCCESS
    assert stun.check_integrity(bytes(reply), h.key, sha256=True)


def test_allocate_retransmission_gets_the_same_answer_and_a_new_one_437(h: Harness) -> None:
    transport = (stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(stun.TRANSPORT_UDP))
    h.signed(stun.ALLOCATE)
    data = h.signed(stun.ALLOCATE, transport)
    first = h.core.handle(h.side, CLIENT, data, h.now)
    again = h.core.handle(h.side, CLIENT, data, h.now)
    assert first == again
    assert code(h.allocate()) == 437


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ((), 400),  # no REQUESTED-TRANSPORT
        (((stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(6)),), 442),
        (((stun.REQUESTED_TRANSPORT, b"\x11\x00"),), 400),  # malformed
        (
            (
                (stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(17)),
                (stun.REQUESTED_ADDRESS_FAMILY, stun.pack_u8_rffu(7)),
            ),
            440,
        ),
        (
            (
                (stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(17)),
                (stun.REQUESTED_ADDRESS_FAMILY, stun.pack_u8_rffu(stun.FAMILY_IPV6)),
            ),
            440,  # no IPv6 relay address configured
        ),
        (
            (
                (stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(17)),
                (stun.EVEN_PORT, b"\x00"),
                (stun.RESERVATION_TOKEN, bytes(8)),
            ),
            400,
        ),
        (
            (
                (stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(17)),
                (stun.RESERVATION_TOKEN, bytes(8)),
            ),
            508,  # unknown token
        ),
        (
            (
                (stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(17)),
                (0x0030, b"what"),  # unknown comprehension-required
            ),
            420,
        ),
    ],
)
def test_allocate_errors(h: Harness, attrs: tuple[tuple[int, bytes], ...], expected: int) -> None:
    reply = h.call(stun.ALLOCATE, *attrs)
    assert code(reply) == expected
    if expected == 420:
        assert stun.unpack_unknown(reply.get(stun.UNKNOWN_ATTRIBUTES) or b"") == (0x0030,)
    # Errors to an authenticated request are signed too (RFC 8489 9.2.4).
    assert stun.check_integrity(bytes(reply), h.key)


def test_unknown_comprehension_optional_attribute_is_ignored(h: Harness) -> None:
    assert h.allocate((0xC0DE, b"ignored")).cls == stun.SUCCESS


def test_additional_address_family_gets_an_address_error(h: Harness) -> None:
    reply = h.allocate((stun.ADDITIONAL_ADDRESS_FAMILY, stun.pack_u8_rffu(stun.FAMILY_IPV6)))
    assert reply.cls == stun.SUCCESS
    assert (reply.get(stun.ADDRESS_ERROR_CODE) or b"")[:4] == bytes((2, 0, 4, 40))


def test_even_port_with_reservation(h: Harness) -> None:
    reply = h.allocate((stun.EVEN_PORT, b"\x80"))
    port = reply.decoded("XOR-RELAYED-ADDRESS")[1]
    assert port % 2 == 0
    token = reply.get(stun.RESERVATION_TOKEN)
    assert token is not None
    other = ("198.51.100.7", 40001)
    held = h.held[port + 1]
    reply2 = h.allocate((stun.RESERVATION_TOKEN, token), client=other)
    assert reply2.decoded("XOR-RELAYED-ADDRESS")[1] == port + 1
    assert h.relays[-1] is held
    assert not held.closed
    # A token is good once.
    third = h.allocate((stun.RESERVATION_TOKEN, token), client=("198.51.100.7", 40002))
    assert code(third) == 508


def test_reservation_expires(h: Harness) -> None:
    token = h.allocate((stun.EVEN_PORT, b"\x80")).get(stun.RESERVATION_TOKEN)
    (held,) = h.held.values()
    h.advance(29)
    assert not held.closed
    h.advance(2)
    assert held.closed
    reply = h.allocate((stun.RESERVATION_TOKEN, token), client=("198.51.100.7", 40001))
    assert code(reply) == 508


def test_even_port_skips_ports_whose_next_cannot_be_held() -> None:
    """RFC 8656 section 7.1: the next port is held for real, or another pair is chosen."""
    h = Harness()
    h.taken = {50001, 50003, 50005, 50007}  # bound by someone else
    reply = h.allocate((stun.EVEN_PORT, b"\x80"))
    assert reply.decoded("XOR-RELAYED-ADDRESS")[1] == 50008
    assert list(h.held) == [50009]
    # Relays opened on a port whose neighbour was taken were closed again.
    assert [r.port for r in h.relays if not r.closed] == [50008]


def test_shutdown_releases_reserved_ports(h: Harness) -> None:
    h.allocate((stun.EVEN_PORT, b"\x80"))
    (held,) = h.held.values()
    h.core.close(h.now)
    assert held.closed


def test_ports_exhausted_gives_508() -> None:
    h = Harness(min_port=50000, max_port=50001, user_quota=10)
    assert h.allocate(client=("198.51.100.7", 1)).cls == stun.SUCCESS
    assert h.allocate(client=("198.51.100.7", 2)).cls == stun.SUCCESS
    assert code(h.allocate(client=("198.51.100.7", 3))) == 508


def test_user_and_total_quota_give_486() -> None:
    h = Harness(user_quota=2, total_quota=3, max_port=50100)
    for i in range(2):
        assert h.allocate(client=("198.51.100.7", i)).cls == stun.SUCCESS
    assert code(h.allocate(client=("198.51.100.7", 9))) == 486
    h.username, h.password = rest_credentials(SECRET, "bob", 3600, T0)
    h.key = stun.long_term_key(h.username, REALM, h.password)
    assert h.allocate(client=("198.51.100.8", 1)).cls == stun.SUCCESS
    assert code(h.allocate(client=("198.51.100.8", 2))) == 486  # total
    # Deleting one frees quota.
    refresh = h.call(stun.REFRESH, (stun.LIFETIME, stun.pack_u32(0)), client=("198.51.100.8", 1))
    assert refresh.cls == stun.SUCCESS
    assert h.allocate(client=("198.51.100.8", 2)).cls == stun.SUCCESS


def test_lifetime_is_clamped_and_expiry_deletes(h: Harness) -> None:
    reply = h.allocate((stun.LIFETIME, stun.pack_u32(99999)))
    assert reply.decoded("LIFETIME") == 3600
    relay = h.relays[-1]
    h.advance(3599)
    assert CLIENT in h.side.allocations
    h.advance(2)
    assert CLIENT not in h.side.allocations
    assert relay.closed
    assert h.core.snapshot()["allocations"] == 0


def test_short_lifetime_is_raised_to_the_default(h: Harness) -> None:
    assert h.allocate((stun.LIFETIME, stun.pack_u32(10))).decoded("LIFETIME") == 600


def test_refresh_extends_and_zero_deletes(h: Harness) -> None:
    h.allocate()
    h.advance(500)
    reply = h.call(stun.REFRESH, (stun.LIFETIME, stun.pack_u32(600)))
    assert reply.decoded("LIFETIME") == 600
    h.advance(500)
    assert CLIENT in h.side.allocations
    h.call(stun.REFRESH, (stun.LIFETIME, stun.pack_u32(0)))
    assert CLIENT not in h.side.allocations
    assert code(h.call(stun.REFRESH)) == 437


def test_refresh_family_mismatch_443(h: Harness) -> None:
    h.allocate()
    fam = stun.pack_u8_rffu(stun.FAMILY_IPV6)
    assert code(h.call(stun.REFRESH, (stun.REQUESTED_ADDRESS_FAMILY, fam))) == 443


def test_other_user_on_the_allocation_gets_441(h: Harness) -> None:
    h.allocate()
    h.username, h.password = rest_credentials(SECRET, "mallory", 3600, T0)
    h.key = stun.long_term_key(h.username, REALM, h.password)
    assert code(h.call(stun.REFRESH)) == 441


def test_no_allocation_437(h: Harness) -> None:
    assert code(h.call(stun.CREATE_PERMISSION, (stun.XOR_PEER_ADDRESS, PEER))) == 437


def test_stale_nonce_438_then_recovers(h: Harness) -> None:
    h.allocate()
    h.retry_stale = False
    h.now += 602  # nonce lifetime 600 s; no timers run, the allocation lives on
    reply = h.call(stun.REFRESH)
    assert code(reply) == 438
    fresh = reply.get(stun.NONCE)
    assert fresh is not None
    assert fresh != h.nonce
    h.nonce = fresh
    assert h.call(stun.REFRESH).cls == stun.SUCCESS


def test_nonce_from_another_address_is_refused(h: Harness) -> None:
    h.signed(stun.ALLOCATE)
    transport = (stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(stun.TRANSPORT_UDP))
    reply = h.send(h.signed(stun.ALLOCATE, transport), client=("198.51.100.99", 1))
    assert reply is not None
    assert code(reply) == 438


def test_expired_rest_username_401() -> None:
    h = Harness()
    h.username, h.password = rest_credentials(SECRET, "alice", 60, T0 - 120)
    h.key = stun.long_term_key(h.username, REALM, h.password)
    reply = h.allocate()
    assert code(reply) == 401
    assert reply.get(stun.MESSAGE_INTEGRITY) is None


@pytest.mark.parametrize("what", ["password", "realm", "username"])
def test_bad_credentials_401(what: str) -> None:
    h = Harness()
    if what == "password":
        h.key = stun.long_term_key(h.username, REALM, "nope")
    elif what == "username":
        h.username = "not-a-rest-user"
    h.signed(stun.ALLOCATE)
    m = h.request(stun.ALLOCATE, (stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(17)))
    m.add(stun.USERNAME, h.username.encode())
    m.add(stun.REALM, b"elsewhere" if what == "realm" else REALM.encode())
    m.add(stun.NONCE, h.nonce).add_integrity(h.key)
    reply = h.send(bytes(m))
    assert reply is not None
    assert code(reply) == 401


def test_missing_nonce_is_400(h: Harness) -> None:
    m = h.request(stun.ALLOCATE).add(stun.USERNAME, h.username.encode())
    reply = h.send(bytes(m.add_integrity(h.key)))
    assert reply is not None
    assert code(reply) == 400


def test_secret_rotation_old_and_new_both_verify() -> None:
    h = Harness(secrets=("new", SECRET))
    assert h.allocate().cls == stun.SUCCESS


def test_static_user() -> None:
    h = Harness(secrets=(), static_users={"carol": "pw"})
    h.username, h.password = "carol", "pw"
    h.key = stun.long_term_key("carol", REALM, "pw")
    assert h.allocate().cls == stun.SUCCESS


def test_permissions_and_channels_fill_the_hot_path_tables(h: Harness) -> None:
    h.allocate((stun.LIFETIME, stun.pack_u32(3600)))
    assert h.call(stun.CREATE_PERMISSION, (stun.XOR_PEER_ADDRESS, PEER)).cls == stun.SUCCESS
    assert PEER[0] in h.alloc.permissions
    assert h.channel_bind(0x4001).cls == stun.SUCCESS
    assert h.alloc.channels == {0x4001: PEER}
    assert h.alloc.peer_channels == {PEER: 0x4001}
    # Permission lapses at 300 s: the channel leaves the hot path until renewed.
    h.advance(301)
    assert h.alloc.channels == {}
    assert PEER[0] not in h.alloc.permissions
    h.call(stun.CREATE_PERMISSION, (stun.XOR_PEER_ADDRESS, PEER))
    assert h.alloc.channels == {0x4001: PEER}
    # Channel lapses at 600 s, then is held for 5 minutes for the same peer only.
    h.call(stun.CREATE_PERMISSION, (stun.XOR_PEER_ADDRESS, PEER))
    h.advance(300)
    assert h.alloc.channels == {}
    other = ("203.0.113.6", 5000)
    assert code(h.channel_bind(0x4001, other)) == 400
    h.advance(301)
    assert h.channel_bind(0x4001, other).cls == stun.SUCCESS


@pytest.mark.parametrize(
    ("number", "expected"), [(0x3FFF, 400), (0x8000, 400), (0x4000, None), (0x7FFF, None)]
)
def test_channel_number_range(h: Harness, number: int, expected: int | None) -> None:
    h.allocate()
    assert code(h.channel_bind(number)) == expected


def test_peer_bound_to_another_channel_400(h: Harness) -> None:
    h.allocate()
    h.channel_bind(0x4000)
    assert code(h.channel_bind(0x4002)) == 400


def test_peer_family_mismatch_443(h: Harness) -> None:
    h.allocate()
    assert code(h.call(stun.CREATE_PERMISSION, (stun.XOR_PEER_ADDRESS, ("2001:db8::1", 5)))) == 443


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
    ],
)
def test_special_peers_403_for_every_method(ip: str) -> None:
    h = Harness()
    h.allocate()
    peer = (ip, 80)
    assert code(h.call(stun.CREATE_PERMISSION, (stun.XOR_PEER_ADDRESS, peer))) == 403
    assert code(h.channel_bind(0x4000, peer)) == 403
    # A Send to it is dropped, even with a forged permission entry.
    h.alloc.permissions[ip] = h.now + 100
    send = stun.StunMessage(stun.SEND, stun.INDICATION, os.urandom(12))
    send.set("XOR-PEER-ADDRESS", peer).add(stun.DATA_ATTR, b"x")
    assert h.send(bytes(send)) is None
    assert h.relays[-1].sent == []


def test_create_permission_all_or_nothing(h: Harness) -> None:
    h.allocate()
    reply = h.call(
        stun.CREATE_PERMISSION,
        (stun.XOR_PEER_ADDRESS, PEER),
        (stun.XOR_PEER_ADDRESS, ("10.0.0.1", 1)),
    )
    assert code(reply) == 403
    assert h.alloc.permissions == {}


def test_permission_quota_508() -> None:
    h = Harness(allow_peers=("203.0.113.0/24",), max_permissions=2)
    h.allocate()
    for i in range(2):
        h.call(stun.CREATE_PERMISSION, (stun.XOR_PEER_ADDRESS, (f"203.0.113.{i}", 1)))
    assert code(h.call(stun.CREATE_PERMISSION, (stun.XOR_PEER_ADDRESS, ("203.0.113.9", 1)))) == 508


def test_send_indication_relays_only_with_permission(h: Harness) -> None:
    h.allocate()
    send = stun.StunMessage(stun.SEND, stun.INDICATION, os.urandom(12))
    send.set("XOR-PEER-ADDRESS", PEER).add(stun.DATA_ATTR, b"hello")
    data = bytes(send)
    assert h.send(data) is None
    assert h.relays[-1].sent == []
    h.call(stun.CREATE_PERMISSION, (stun.XOR_PEER_ADDRESS, PEER))
    assert h.core.datapath.send_indication(h.side, CLIENT, data)
    assert h.send(bytes(send.add_fingerprint())) is None  # slow path, with FINGERPRINT
    assert h.relays[-1].sent == [(b"hello", PEER), (b"hello", PEER)]


def test_data_indication_encodes_the_peer(h: Harness) -> None:
    h.allocate()
    data = h.core.datapath.data_indication(h.alloc, PEER, b"abcde")
    msg = stun.StunMessage.parse(data)
    assert (msg.method, msg.cls) == (stun.DATA, stun.INDICATION)
    assert msg.decoded("XOR-PEER-ADDRESS") == PEER
    assert msg.get(stun.DATA_ATTR) == b"abcde"


def test_bandwidth_budget() -> None:
    h = Harness(max_bps=8000)  # 1000 bytes per second
    h.allocate()
    assert h.core.datapath.spend(h.alloc, 600)
    assert not h.core.datapath.spend(h.alloc, 600)
    h.advance(1.0)
    assert h.core.datapath.spend(h.alloc, 600)


def test_unauthenticated_rate_limit() -> None:
    h = Harness(unauth_rate=1.0, unauth_burst=3.0)
    answered = sum(h.send(bytes(h.request(stun.BINDING))) is not None for _ in range(10))
    assert answered == 3
    h.now += 2.0
    assert h.send(bytes(h.request(stun.BINDING))) is not None


def test_responses_and_unknown_methods(h: Harness) -> None:
    success = stun.StunMessage(stun.BINDING, stun.SUCCESS, os.urandom(12))
    assert h.send(bytes(success)) is None
    reply = h.send(bytes(stun.StunMessage(0x0FF, stun.REQUEST, os.urandom(12))))
    assert reply is not None
    assert code(reply) == 400


def test_change_request_is_refused_with_420(h: Harness) -> None:
    reply = h.send(bytes(h.request(stun.BINDING, (stun.CHANGE_REQUEST, stun.pack_u32(6)))))
    assert reply is not None
    assert code(reply) == 420


def test_close_deletes_everything(h: Harness) -> None:
    h.allocate()
    h.core.close(h.now)
    assert h.relays[-1].closed
    assert h.core.get_timer() is None


# --- the transition table --------------------------------------------------------------

STATE_EVENTS = [
    (AllocationState, AllocationEvent),
    (ChannelState, ChannelEvent),
    (PermissionState, PermissionEvent),
]


@given(
    st.sampled_from(STATE_EVENTS).flatmap(
        lambda se: st.tuples(st.just(se), st.lists(st.sampled_from(list(se[1])), max_size=20))
    )
)
@settings(max_examples=200)
def test_transition_table_walks(case: tuple[Any, list[Any]]) -> None:
    (states, _), events = case
    state = next(iter(states))
    for event in events:
        if (state, event) in TRANSITIONS:
            state = next_state(state, event)
            assert isinstance(state, states)
        else:
            with pytest.raises(MissingTransition):
                next_state(state, event)
    # Deleted allocations stay deleted: nothing leaves DELETED.
    assert not any(s is AllocationState.DELETED for s, _ in TRANSITIONS)


def test_every_state_is_reachable_and_table_is_closed() -> None:
    for states, events in STATE_EVENTS:
        targets = {v for (s, e), v in TRANSITIONS.items() if isinstance(s, states)}
        assert targets <= set(states)
        for s, e in TRANSITIONS:
            if isinstance(s, states):
                assert isinstance(e, events)
        start = next(iter(states))
        assert set(states) - {start} <= targets


# --- malformed input at the core ---------------------------------------------------------


def _dropped_total() -> float:
    from prometheus_client import REGISTRY

    return sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "turn_malformed_dropped"
        for s in m.samples
        if s.name.endswith("_total")
    )


@given(st.binary(max_size=150))
@settings(max_examples=300)
def test_random_bytes_are_answered_or_dropped_and_counted(data: bytes) -> None:
    h = Harness(unauth_rate=0)
    before = _dropped_total()
    out = h.core.handle(h.side, CLIENT, data, h.now)
    if out is None:
        assert _dropped_total() == before + 1
    else:
        reply = stun.StunMessage.parse(out)
        assert reply.cls in (stun.SUCCESS, stun.ERROR)


@given(
    st.lists(
        st.integers(0x0030, 0x7FFF).filter(lambda t: t not in stun.KNOWN_TYPES),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)
@settings(max_examples=50)
def test_unknown_attributes_get_420_listing_them(unknown: list[int], duplicate: bool) -> None:
    h = Harness()
    attrs: list[tuple[int, Any]] = [(stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(17))]
    if duplicate:
        attrs.append((stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(6)))  # first one counts
    attrs += [(t, b"\x00") for t in unknown]
    reply = h.call(stun.ALLOCATE, *attrs)
    assert code(reply) == 420
    assert list(stun.unpack_unknown(reply.get(stun.UNKNOWN_ATTRIBUTES) or b"")) == list(
        dict.fromkeys(unknown)
    )


@given(st.data())
@settings(max_examples=100)
def test_mutilated_signed_requests_never_succeed_wrongly(data: st.DataObject) -> None:
    h = Harness(unauth_rate=0)
    h.signed(stun.ALLOCATE)
    wire = bytearray(h.signed(stun.ALLOCATE, (stun.REQUESTED_TRANSPORT, stun.pack_u8_rffu(17))))
    i = data.draw(st.integers(0, len(wire) - 1))
    wire[i] ^= data.draw(st.integers(1, 255))
    out = h.core.handle(h.side, CLIENT, bytes(wire), h.now)
    if out is not None:
        reply = stun.StunMessage.parse(out)
        if reply.method == stun.BINDING:
            # The flip turned the method into Binding (0x003 ^ 0x002), which
            # a TURN server answers to anyone, signed or not (RFC 8656
            # section 5): its answer is the mapped address, nothing the
            # credentials guard.
            assert i == 1 and reply.get(stun.XOR_RELAYED_ADDRESS) is None
            return
        # Flipping a byte either breaks framing (dropped), integrity (401), or a
        # field the integrity covers; only the transaction id region can change
        # and keep a valid MAC, and it is covered too.
        assert reply.cls == stun.ERROR
