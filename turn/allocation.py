"""TURN allocation, permission and channel state (RFC 8656 sections 6, 9, 12).

The machine, in one table as h11 keeps its connection states:

* An allocation is born ACTIVE by a successful Allocate. Refresh with a
  non-zero lifetime keeps it ACTIVE; Refresh with lifetime 0, expiry, the
  client's TCP connection closing or server shutdown make it DELETED, which
  is terminal: nothing else happens to a deleted allocation.
* A channel is UNBOUND until ChannelBind makes it BOUND; a repeated
  ChannelBind refreshes it. When its 600 s run out it goes to COOLDOWN for
  five minutes (RFC 8656 section 12: the number and the peer may not be
  rebound to anything else meanwhile, so stray packets cannot reach a new
  peer), then back to UNBOUND. A ChannelBind of the same (number, peer) in
  COOLDOWN binds it again.
* A permission is NONE or INSTALLED; CreatePermission and ChannelBind install
  or refresh it, expiry removes it.

The hot path never consults this table: the core keeps the relay lookup
dictionaries of :class:`Allocation` filled with exactly the entries these
states allow, so a packet costs one dictionary lookup. A client's
allocation is found through the :class:`ClientSide` it reached us on.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from turn.errors import TurnError

Address = tuple[str, int]


class MissingTransition(TurnError, AssertionError):
    """The core asked for a transition the table does not have (a bug, not a peer fault)."""


class AllocationState(enum.Enum):
    ACTIVE = "active"
    DELETED = "deleted"


class AllocationEvent(enum.Enum):
    REFRESH = "refresh"
    DELETE = "delete"  # Refresh with lifetime 0
    EXPIRE = "expire"
    TRANSPORT_CLOSED = "transport_closed"
    SHUTDOWN = "shutdown"


class ChannelState(enum.Enum):
    UNBOUND = "unbound"
    BOUND = "bound"
    COOLDOWN = "cooldown"


class ChannelEvent(enum.Enum):
    BIND = "bind"
    EXPIRE = "expire"
    COOLDOWN_OVER = "cooldown_over"


class PermissionState(enum.Enum):
    NONE = "none"
    INSTALLED = "installed"


class PermissionEvent(enum.Enum):
    INSTALL = "install"
    EXPIRE = "expire"


A, AE = AllocationState, AllocationEvent
C, CE = ChannelState, ChannelEvent
P, PE = PermissionState, PermissionEvent

TRANSITIONS: dict[tuple[enum.Enum, enum.Enum], enum.Enum] = {
    (A.ACTIVE, AE.REFRESH): A.ACTIVE,
    (A.ACTIVE, AE.DELETE): A.DELETED,
    (A.ACTIVE, AE.EXPIRE): A.DELETED,
    (A.ACTIVE, AE.TRANSPORT_CLOSED): A.DELETED,
    (A.ACTIVE, AE.SHUTDOWN): A.DELETED,
    (C.UNBOUND, CE.BIND): C.BOUND,
    (C.BOUND, CE.BIND): C.BOUND,
    (C.BOUND, CE.EXPIRE): C.COOLDOWN,
    (C.COOLDOWN, CE.BIND): C.BOUND,
    (C.COOLDOWN, CE.COOLDOWN_OVER): C.UNBOUND,
    (P.NONE, PE.INSTALL): P.INSTALLED,
    (P.INSTALLED, PE.INSTALL): P.INSTALLED,
    (P.INSTALLED, PE.EXPIRE): P.NONE,
}


def next_state(state: enum.Enum, event: enum.Enum) -> enum.Enum:
    """The state after ``event``; raises :class:`MissingTransition` if not in the table."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise MissingTransition(f"{event.value} in state {state.value}") from None


@dataclass(slots=True)
class Binding:
    """One channel (RFC 8656 section 12): its peer, state and deadline."""

    peer: Address
    state: ChannelState
    expires: float


class Allocation:
    """One allocation (RFC 8656 section 6).

    ``channels``, ``peer_channels`` and ``permissions`` are the hot-path
    tables the adapter reads when relaying; the core alone writes them.
    """

    __slots__ = (
        "alloc_response",
        "alloc_txid",
        "bindings",
        "budget",
        "channels",
        "client",
        "data_txid",
        "data_xpa",
        "epoch",
        "expires",
        "family",
        "from_peer_bytes",
        "from_peer_pkts",
        "key",
        "limited",
        "peer_channels",
        "permissions",
        "port",
        "relay",
        "relay_addr",
        "reserved_port",
        "side",
        "state",
        "to_peer_bytes",
        "to_peer_pkts",
        "user",
        "username",
    )

    def __init__(
        self,
        side: Any,
        client: Any,
        username: str,
        user: str,
        key: bytes,
        family: int,
        expires: float,
    ) -> None:
        self.side = side
        # The client's source address as the adapter reports it (a dict key).
        self.client: Any = client
        self.username = username
        self.user = user
        self.key = key
        self.family = family
        self.expires = expires
        self.state = AllocationState.ACTIVE
        self.relay: Any = None
        self.relay_addr: Address = ("", 0)
        self.port = 0
        self.reserved_port: int | None = None
        self.alloc_txid = b""
        self.alloc_response = b""
        self.data_txid = b""
        # Peer -> encoded XOR-PEER-ADDRESS TLV for Data indications.
        self.data_xpa: dict[Any, bytes] = {}
        # Hot path: channel number -> peer address (client to peer).
        self.channels: dict[int, Address] = {}
        # Hot path: peer address as the relay socket reports it -> channel number.
        self.peer_channels: dict[tuple[Any, ...], int] = {}
        # Peer IP -> expiry; membership is the permission check (RFC 8656 9).
        self.permissions: dict[str, float] = {}
        self.bindings: dict[int, Binding] = {}
        self.to_peer_pkts = 0
        self.to_peer_bytes = 0
        self.from_peer_pkts = 0
        self.from_peer_bytes = 0
        self.limited = False
        self.epoch = -1
        self.budget = 0

    def transition(self, event: AllocationEvent) -> None:
        self.state = next_state(self.state, event)  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Allocation({self.username!r} {self.client} relay={self.relay_addr} "
            f"{self.state.value})"
        )


class ClientSide:
    """One way clients reach us: a UDP listener, or one TCP/TLS connection.

    ``allocations`` maps the client's source address (as the adapter reports
    it) to its allocation; with the side's local address and transport that
    is the RFC 8656 5-tuple. ``link`` belongs to the adapter (its socket or
    transport) and is never touched here.
    """

    __slots__ = ("allocations", "link", "local", "transport")

    def __init__(self, transport: str, local: Address, link: Any = None) -> None:
        self.transport = transport
        self.local = local
        self.allocations: dict[Hashable, Allocation] = {}
        self.link = link

    @property
    def stream(self) -> bool:
        return self.transport != "udp"
