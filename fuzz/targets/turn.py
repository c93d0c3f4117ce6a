"""The TURN server core (RFC 8656 over RFC 8489) on one client datagram.

Each input meets a fresh core in which the client already holds an
allocation with a permission and a channel for one peer, so that Refresh,
CreatePermission, ChannelBind and Send indications reach their own code.
The input goes in as sent, and again re-signed with valid long-term
credentials (USERNAME, REALM, a fresh NONCE, MESSAGE-INTEGRITY): otherwise
almost every fuzzed request would stop at the 401. The Send indication fast
path (:meth:`turn.datapath.DataPath.send_indication`) must never relay what
the full checks of :meth:`TurnCore.handle` would not.
"""

from __future__ import annotations

import copy
from typing import Any

from fuzz import Finding
from fuzz.targets.stun import resign
from rtc import stun
from rtc.errors import StunParseError
from turn.allocation import Allocation, ClientSide
from turn.config import TurnConfig
from turn.core import TurnCore
from turn.credentials import rest_credentials
from turn.datapath import SEND_INDICATION_TYPE

SECRET, REALM = "fuzz-secret", "fuzz.test"
NOW = 1_800_000_000.0
CLIENT = ("198.51.100.7", 40000)
PEER = ("203.0.113.5", 5000)


CONFIG = TurnConfig(
    listen_udp=(("192.0.2.1", 3478),),
    secrets=(SECRET,),
    realm=REALM,
    min_port=50000,
    max_port=50003,
    allow_peers=("203.0.113.0/24",),
).validate()
USERNAME, PASSWORD = rest_credentials(SECRET, "alice", 3600, NOW)
KEY = stun.long_term_key(USERNAME, REALM, PASSWORD)


class MemoryRelay:
    """A relayed socket that keeps what it would send."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        pass


def _open_relay(alloc: Allocation, ip: str, port: int, df: bool, reserved: Any) -> MemoryRelay:
    return reserved if isinstance(reserved, MemoryRelay) else MemoryRelay()


def _reserve(ip: str, port: int) -> MemoryRelay:
    return MemoryRelay()


class World:
    """A core whose client holds an allocation, a permission and channel 0x4000 to PEER."""

    def __init__(self) -> None:
        self.core = TurnCore(CONFIG, _open_relay, _reserve, random=bytes)
        self.side = ClientSide("udp", ("192.0.2.1", 3478))
        self.nonce = self.core.nonces.issue(CLIENT[0], NOW)
        for method, attrs in (
            (stun.ALLOCATE, ((stun.REQUESTED_TRANSPORT, 17),)),
            (stun.CREATE_PERMISSION, ((stun.XOR_PEER_ADDRESS, PEER),)),
            (stun.CHANNEL_BIND, ((stun.CHANNEL_NUMBER, 0x4000), (stun.XOR_PEER_ADDRESS, PEER))),
        ):
            msg = stun.StunMessage(method, stun.REQUEST, bytes(range(12)))
            for atype, value in attrs:
                msg.set(atype, value)
            reply = self.core.handle(self.side, CLIENT, self.signed(msg), NOW)
            if reply is None or stun.StunMessage.parse(reply).cls != stun.SUCCESS:
                raise RuntimeError(f"the fuzz world's setup failed at method {method:#x}")
        (self.alloc,) = self.side.allocations.values()

    def signed(self, msg: stun.StunMessage) -> bytes:
        extra = ((stun.REALM, REALM.encode()), (stun.NONCE, self.nonce))
        return resign(msg, USERNAME, KEY, extra=extra)

    def sent(self) -> list[tuple[bytes, Any]]:
        relay: MemoryRelay = self.alloc.relay
        return relay.sent


_template: World | None = None


def fresh_world() -> World:
    """A copy of one World built once: building it (the peer policy's
    networks, three signed requests) costs twenty times a copy. The parts
    that never change are shared, not copied."""
    global _template
    if _template is None:
        _template = World()
    core = _template.core
    shared: dict[int, Any] = {
        id(x): x for x in (core.policy, core.verifier, core.nonces, core.config)
    }
    return copy.deepcopy(_template, shared)


def _handle(world: World, data: bytes) -> None:
    reply = world.core.handle(world.side, CLIENT, data, NOW)
    if reply is not None:
        answer = stun.StunMessage.parse(reply)
        if answer.transaction_id != data[8:20]:
            raise Finding("the core answered with another transaction id")


def check(data: bytes) -> None:
    world = fresh_world()
    _handle(world, data)
    if data[:2] == SEND_INDICATION_TYPE:
        fast = fresh_world()
        if fast.core.datapath.send_indication(fast.side, CLIENT, data):
            full = fresh_world()
            _handle(full, data)
            if fast.sent() != full.sent():
                raise Finding("the Send indication fast path relayed what handle() would not")
    try:
        msg = stun.StunMessage.parse(data)
    except StunParseError:
        return
    _handle(world, world.signed(msg))
    # Expiry of whatever the input created, in timer order.
    for later in (NOW + 301, NOW + 601, NOW + 3601):
        while (when := world.core.get_timer()) is not None and when <= later:
            world.core.handle_timer(when)
    world.core.close(NOW + 3601)
