"""TURN allocation requests (RFC 8656): Allocate (section 7.2), Refresh
(7.3), CreatePermission (9.2) and ChannelBind (11.2), and the state they
leave: allocations with their relayed ports, reserved ports (section 7.1,
RESERVATION-TOKEN), permissions and channels, each with its expiry timer.

:class:`turn.core.TurnCore` authenticates a request and hands it here; each
request returns its success response, to be signed and sent, or raises
:class:`~turn.errors.StunRequestError` with the error code. Binding a relayed
socket is the one thing that needs I/O: ``open_relay`` and ``reserve_port``
are injected (see :mod:`turn.core`). The relay lookup tables of each
:class:`~turn.allocation.Allocation` are kept filled here with exactly the
entries that may be relayed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from rtc.errors import StunParseError
from rtc.stun import (
    ADDITIONAL_ADDRESS_FAMILY,
    ADDRESS_ERROR_CODE,
    CHANNEL_NUMBER,
    DONT_FRAGMENT,
    EVEN_PORT,
    FAMILY_IPV4,
    FAMILY_IPV6,
    LIFETIME,
    REQUESTED_ADDRESS_FAMILY,
    REQUESTED_TRANSPORT,
    RESERVATION_TOKEN,
    SUCCESS,
    TRANSPORT_UDP,
    U32,
    XOR_MAPPED_ADDRESS,
    XOR_PEER_ADDRESS,
    XOR_RELAYED_ADDRESS,
    StunMessage,
    unpack_channel,
    unpack_even_port,
    unpack_u8_rffu,
    unpack_u32,
    unxor_address,
    xor_address,
)
from turn import metrics
from turn.allocation import (
    Address,
    Allocation,
    AllocationEvent,
    AllocationState,
    Binding,
    ChannelEvent,
    ChannelState,
    ClientSide,
    next_state,
)
from turn.config import TurnConfig
from turn.credentials import ANONYMOUS_PREFIX
from turn.datapath import DataPath
from turn.errors import StunRequestError
from turn.policy import PeerPolicy
from turn.timers import Timer, Timers

__all__ = [
    "CHANNEL_COOLDOWN",
    "CHANNEL_MAX",
    "CHANNEL_MIN",
    "Allocator",
    "PortReserver",
    "RelayEndpoint",
    "RelayOpener",
    "Reservation",
    "response_to",
]

# The allocations' log lines keep the logger operators already filter on.
logger = logging.getLogger("wadud.turn.core")

CHANNEL_MIN = 0x4000
# RFC 8656 section 12 gives clients 0x4000-0x4FFF, but RFC 5766 allowed up to
# 0x7FFF and deployed clients (coturn's own uclient among them) still pick from
# there; the ChannelData demultiplexing (first byte 0x40-0x7F) covers both.
CHANNEL_MAX = 0x7FFF
CHANNEL_COOLDOWN = 300.0  # RFC 8656 section 12: 5 minutes before reuse


class RelayEndpoint(Protocol):
    """What ``open_relay`` returns: a bound relayed transport address."""

    def sendto(self, data: bytes, addr: Address) -> None: ...

    def close(self) -> None: ...


class Reservation(Protocol):
    """What ``reserve_port`` returns: a port held for a RESERVATION-TOKEN."""

    def close(self) -> None: ...


RelayOpener = Callable[[Allocation, str, int, bool, Any], "RelayEndpoint | None"]
PortReserver = Callable[[str, int], "Reservation | None"]


def response_to(msg: StunMessage, cls: int) -> StunMessage:
    """An empty response of class ``cls`` to the request ``msg`` (RFC 8489 section 6.3)."""
    return StunMessage(msg.method, cls, msg.transaction_id)


class Allocator:
    """Every allocation of the core and the requests that make, refresh and
    extend them; see the module docstring."""

    def __init__(
        self,
        config: TurnConfig,
        open_relay: RelayOpener,
        reserve_port: PortReserver,
        random: Callable[[int], bytes],
        policy: PeerPolicy,
        datapath: DataPath,
        timers: Timers,
    ) -> None:
        self.config = config
        self._open_relay = open_relay
        self._reserve_port = reserve_port
        self._random = random
        self.policy = policy
        self.datapath = datapath
        self.timers = timers
        relay_ips = config.effective_relay_ips()
        self.relay_ips: dict[int, str] = {}
        for ip in relay_ips:
            self.relay_ips[FAMILY_IPV6 if ":" in ip else FAMILY_IPV4] = ip
        self.allocations: set[Allocation] = set()
        self.by_user: dict[str, int] = {}
        self.ports_in_use: set[tuple[int, int]] = set()
        # token -> (family, port, expiry, the held port)
        self.reservations: dict[bytes, tuple[int, int, float, Reservation]] = {}
        self.totals = {
            "to_peer_pkts": 0,
            "to_peer_bytes": 0,
            "from_peer_pkts": 0,
            "from_peer_bytes": 0,
        }

    def expire(self, kind: Timer, obj: Any, key: Any, now: float) -> None:
        """What is due at ``now`` of an allocation, permission, channel or
        reservation (RFC 8656 sections 6, 7.1, 9 and 12)."""
        if kind == Timer.RESERVATION:
            entry = self.reservations.get(key)
            if entry is not None and entry[2] <= now:
                del self.reservations[key]
                self.ports_in_use.discard((entry[0], entry[1]))
                entry[3].close()
            return
        alloc: Allocation = obj
        if alloc.state is not AllocationState.ACTIVE:
            return
        if kind == Timer.ALLOCATION:
            if alloc.expires <= now:
                self.delete(alloc, AllocationEvent.EXPIRE, now)
        elif kind == Timer.PERMISSION:
            expiry = alloc.permissions.get(key)
            if expiry is not None and expiry <= now:
                self._remove_permission(alloc, key)
        elif kind in (Timer.CHANNEL, Timer.COOLDOWN):
            # A timer armed for a state the binding has left since (a
            # refresh, a re-bind) finds it in another state or later.
            binding = alloc.bindings.get(key)
            due = ChannelState.BOUND if kind == Timer.CHANNEL else ChannelState.COOLDOWN
            if binding is None or binding.state is not due or binding.expires > now:
                return
            if kind == Timer.CHANNEL:
                self._expire_channel(alloc, key, binding, now)
            else:
                next_state(binding.state, ChannelEvent.COOLDOWN_OVER)
                del alloc.bindings[key]

    def close(self, now: float) -> None:
        """Delete every allocation and release every reserved port."""
        for alloc in list(self.allocations):
            self.delete(alloc, AllocationEvent.SHUTDOWN, now)
        for entry in self.reservations.values():
            entry[3].close()
        self.reservations.clear()

    def _lifetime(self, msg: StunMessage) -> int:
        raw = msg.get(LIFETIME)
        cfg = self.config
        if raw is None:
            return cfg.default_lifetime
        requested = int(self._decode(unpack_u32, raw))
        if requested == 0:
            return 0
        # RFC 8656 7.2: min(requested, max), but never below the default.
        return max(min(requested, cfg.max_lifetime), cfg.default_lifetime)

    @staticmethod
    def _decode(fn: Callable[[bytes], Any], raw: bytes) -> Any:
        try:
            return fn(raw)
        except StunParseError:
            raise StunRequestError(400, "Malformed attribute", metric="malformed") from None

    def allocate(
        self,
        side: ClientSide,
        client: Hashable,
        msg: StunMessage,
        addr: Address,
        username: str,
        user: str,
        key: bytes,
        now: float,
    ) -> StunMessage | None:
        """Allocate (RFC 8656 section 7.2); None for a retransmission of the
        Allocate that made the client's allocation, which the core answers
        with the response it sent then."""
        existing = side.allocations.get(client)
        if existing is not None:
            if existing.alloc_txid == msg.transaction_id:
                return None
            raise StunRequestError(437)
        if side.stream and side.allocations:
            raise StunRequestError(437)
        raw = msg.get(REQUESTED_TRANSPORT)
        if raw is None:
            raise StunRequestError(400, "REQUESTED-TRANSPORT missing")
        if self._decode(unpack_u8_rffu, raw) != TRANSPORT_UDP:
            raise StunRequestError(442)
        dont_fragment = msg.get(DONT_FRAGMENT) is not None
        token = msg.get(RESERVATION_TOKEN)
        even = msg.get(EVEN_PORT)
        raw_family = msg.get(REQUESTED_ADDRESS_FAMILY)
        raw_additional = msg.get(ADDITIONAL_ADDRESS_FAMILY)
        if token is not None and (even is not None or raw_family is not None):
            raise StunRequestError(400, "RESERVATION-TOKEN with EVEN-PORT or address family")
        if raw_family is not None and raw_additional is not None:
            raise StunRequestError(400, "both address family attributes")
        family = FAMILY_IPV4
        if raw_family is not None:
            family = self._decode(unpack_u8_rffu, raw_family)
            if family not in (FAMILY_IPV4, FAMILY_IPV6):
                raise StunRequestError(440)
        additional_error = False
        if raw_additional is not None:
            if self._decode(unpack_u8_rffu, raw_additional) != FAMILY_IPV6:
                raise StunRequestError(400, "ADDITIONAL-ADDRESS-FAMILY must be IPv6")
            # We do not make dual-stack allocations: IPv4 only, and say why
            # in ADDRESS-ERROR-CODE (RFC 8656 section 7.2).
            additional_error = True
        reservation = None
        if token is not None:
            if len(token) != 8 or token not in self.reservations:
                raise StunRequestError(508, "Unknown reservation", metric="reservation")
            reservation = self.reservations.pop(token)
            family = reservation[0]
        if family not in self.relay_ips:
            raise StunRequestError(440)
        cfg = self.config
        quota = cfg.anonymous_quota if user.startswith(ANONYMOUS_PREFIX) else cfg.user_quota
        if self.by_user.get(user, 0) >= quota:
            metrics.QUOTA_REFUSALS.labels("user").inc()
            raise StunRequestError(486)
        if len(self.allocations) >= cfg.total_quota:
            metrics.QUOTA_REFUSALS.labels("total").inc()
            raise StunRequestError(486)
        lifetime = self._lifetime(msg) or cfg.default_lifetime
        alloc = Allocation(side, client, username, user, key, family, now + lifetime)
        ip = self.relay_ips[family]
        held: Reservation | None = None
        if reservation is not None:
            port = reservation[1]
            self.ports_in_use.discard((family, port))
            # The very socket that held the port becomes the relay.
            endpoint = self._open_relay(alloc, ip, port, dont_fragment, reservation[3])
            if endpoint is None:
                reservation[3].close()
                raise StunRequestError(508, metric="ports")
        else:
            reserve_next = even is not None and self._decode(unpack_even_port, even)
            endpoint, port, held = self._bind_port(
                alloc, family, ip, even is not None, reserve_next, dont_fragment
            )
        self.ports_in_use.add((family, port))
        alloc.relay = endpoint
        alloc.port = port
        external = cfg.external_ips.get(ip, ip)
        alloc.relay_addr = (external, port)
        alloc.alloc_txid = msg.transaction_id
        alloc.data_txid = self._random(12)
        self.datapath.limit(alloc, now)
        side.allocations[client] = alloc
        self.allocations.add(alloc)
        self.by_user[user] = self.by_user.get(user, 0) + 1
        self.timers.at(alloc.expires, Timer.ALLOCATION, alloc)

        resp = response_to(msg, SUCCESS)
        resp.add(XOR_RELAYED_ADDRESS, xor_address(alloc.relay_addr, msg.transaction_id))
        resp.add(LIFETIME, U32.pack(lifetime))
        if held is not None:
            token = self._random(8)
            self.reservations[token] = (family, port + 1, now + cfg.reservation_lifetime, held)
            self.ports_in_use.add((family, port + 1))
            alloc.reserved_port = port + 1
            self.timers.at(now + cfg.reservation_lifetime, Timer.RESERVATION, None, token)
            resp.add(RESERVATION_TOKEN, token)
        resp.add(XOR_MAPPED_ADDRESS, xor_address(addr, msg.transaction_id))
        if additional_error:
            resp.add(
                ADDRESS_ERROR_CODE, bytes((FAMILY_IPV6, 0, 4, 40)) + b"Address Family not Supported"
            )
        logger.info(
            "allocation created",
            extra={
                "user": username,
                "client": addr,
                "relay": alloc.relay_addr,
                "lifetime": lifetime,
            },
        )
        return resp

    def _bind_port(
        self,
        alloc: Allocation,
        family: int,
        ip: str,
        even: bool,
        reserve_next: bool,
        dont_fragment: bool,
    ) -> tuple[RelayEndpoint, int, Reservation | None]:
        """A free port (even if asked), and the next one held too if ``reserve_next``."""
        cfg = self.config
        lo, hi = cfg.min_port, cfg.max_port
        span = hi - lo + 1
        start = int.from_bytes(self._random(4), "big") % span
        tries = 0
        for i in range(span):
            port = lo + (start + i) % span
            if even and port & 1:
                continue
            if (family, port) in self.ports_in_use:
                continue
            if reserve_next and (port + 1 > hi or (family, port + 1) in self.ports_in_use):
                continue
            endpoint = self._open_relay(alloc, ip, port, dont_fragment, None)
            if endpoint is not None:
                if not reserve_next:
                    return endpoint, port, None
                held = self._reserve_port(ip, port + 1)
                if held is not None:
                    return endpoint, port, held
                endpoint.close()
            tries += 1
            if tries >= 64:
                break
        metrics.QUOTA_REFUSALS.labels("ports").inc()
        raise StunRequestError(508, metric="ports")

    def delete(self, alloc: Allocation, event: AllocationEvent, now: float) -> None:
        alloc.transition(event)
        self.allocations.discard(alloc)
        if alloc.side.allocations.get(alloc.client) is alloc:
            del alloc.side.allocations[alloc.client]
        n = self.by_user.get(alloc.user, 1) - 1
        if n:
            self.by_user[alloc.user] = n
        else:
            self.by_user.pop(alloc.user, None)
        self.ports_in_use.discard((alloc.family, alloc.port))
        if alloc.relay is not None:
            alloc.relay.close()
        alloc.channels.clear()
        alloc.peer_channels.clear()
        alloc.permissions.clear()
        alloc.bindings.clear()
        alloc.data_xpa.clear()
        t = self.totals
        t["to_peer_pkts"] += alloc.to_peer_pkts
        t["to_peer_bytes"] += alloc.to_peer_bytes
        t["from_peer_pkts"] += alloc.from_peer_pkts
        t["from_peer_bytes"] += alloc.from_peer_bytes
        logger.info(
            "allocation deleted",
            extra={
                "user": alloc.username,
                "relay": alloc.relay_addr,
                "reason": event.value,
                "to_peer_bytes": alloc.to_peer_bytes,
                "to_client_bytes": alloc.from_peer_bytes,
            },
        )

    # ---------------------------------------------------------------- Refresh

    def _own_allocation(self, side: ClientSide, client: Hashable, username: str) -> Allocation:
        alloc = side.allocations.get(client)
        if alloc is None:
            raise StunRequestError(437)
        if alloc.username != username:
            # RFC 8656 section 5: same credentials as the Allocate.
            metrics.AUTH_FAILURES.labels("wrong_credentials").inc()
            raise StunRequestError(441)
        return alloc

    def refresh(
        self, side: ClientSide, client: Hashable, msg: StunMessage, username: str, now: float
    ) -> StunMessage:
        """Refresh (RFC 8656 section 7.3)."""
        alloc = self._own_allocation(side, client, username)
        raw_family = msg.get(REQUESTED_ADDRESS_FAMILY)
        if raw_family is not None and self._decode(unpack_u8_rffu, raw_family) != alloc.family:
            raise StunRequestError(443)
        lifetime = self._lifetime(msg)
        if lifetime == 0:
            self.delete(alloc, AllocationEvent.DELETE, now)
        else:
            alloc.transition(AllocationEvent.REFRESH)
            alloc.expires = now + lifetime
            self.timers.at(alloc.expires, Timer.ALLOCATION, alloc)
        resp = response_to(msg, SUCCESS)
        resp.add(LIFETIME, U32.pack(lifetime))
        return resp

    # ---------------------------------------------------- permissions, channels

    def _peer(self, msg: StunMessage, alloc: Allocation, raw: bytes, method: str) -> Address:
        try:
            peer = unxor_address(raw, msg.transaction_id)
        except StunParseError:
            raise StunRequestError(400, "Malformed XOR-PEER-ADDRESS") from None
        family = FAMILY_IPV6 if ":" in peer[0] else FAMILY_IPV4
        if family != alloc.family:
            raise StunRequestError(443)
        if not self.policy.allowed(peer[0]):
            metrics.PEER_DENIED.labels(method).inc()
            logger.info(
                "peer refused", extra={"user": alloc.username, "peer": peer, "method": method}
            )
            raise StunRequestError(403, "Peer address not allowed", metric="peer_denied")
        return peer

    def _install_permission(self, alloc: Allocation, ip: str, now: float) -> None:
        fresh = ip not in alloc.permissions
        alloc.permissions[ip] = now + self.config.permission_lifetime
        self.timers.at(now + self.config.permission_lifetime, Timer.PERMISSION, alloc, ip)
        if fresh:
            # Re-open the hot path for channels to this IP that are still bound.
            for number, b in alloc.bindings.items():
                if b.state is ChannelState.BOUND and b.peer[0] == ip:
                    self._open_channel(alloc, number, b.peer)

    def _remove_permission(self, alloc: Allocation, ip: str) -> None:
        del alloc.permissions[ip]
        for number, b in alloc.bindings.items():
            if b.peer[0] == ip:
                self._close_channel(alloc, number, b.peer)

    @staticmethod
    def _peer_keys(peer: Address) -> tuple[tuple[Any, ...], ...]:
        # An IPv6 socket reports (host, port, flowinfo, scope_id).
        return (peer, (peer[0], peer[1], 0, 0)) if ":" in peer[0] else (peer,)

    def _open_channel(self, alloc: Allocation, number: int, peer: Address) -> None:
        alloc.channels[number] = peer
        for k in self._peer_keys(peer):
            alloc.peer_channels[k] = number

    def _close_channel(self, alloc: Allocation, number: int, peer: Address) -> None:
        alloc.channels.pop(number, None)
        for k in self._peer_keys(peer):
            if alloc.peer_channels.get(k) == number:
                del alloc.peer_channels[k]

    def _expire_channel(self, alloc: Allocation, number: int, binding: Binding, now: float) -> None:
        binding.state = next_state(binding.state, ChannelEvent.EXPIRE)  # type: ignore[assignment]
        binding.expires = now + CHANNEL_COOLDOWN
        self._close_channel(alloc, number, binding.peer)
        self.timers.at(binding.expires, Timer.COOLDOWN, alloc, number)

    def create_permission(
        self, side: ClientSide, client: Hashable, msg: StunMessage, username: str, now: float
    ) -> StunMessage:
        """CreatePermission (RFC 8656 section 9.2): all addresses or none."""
        alloc = self._own_allocation(side, client, username)
        raws = [a.value for a in msg.attributes if a.type == XOR_PEER_ADDRESS]
        if not raws:
            raise StunRequestError(400, "XOR-PEER-ADDRESS missing")
        peers = [self._peer(msg, alloc, raw, "CreatePermission") for raw in raws]
        new = {p[0] for p in peers} - alloc.permissions.keys()
        if len(alloc.permissions) + len(new) > self.config.max_permissions:
            metrics.QUOTA_REFUSALS.labels("permissions").inc()
            raise StunRequestError(508, "Too many permissions", metric="permissions")
        for peer in peers:
            self._install_permission(alloc, peer[0], now)
        return response_to(msg, SUCCESS)

    def channel_bind(
        self, side: ClientSide, client: Hashable, msg: StunMessage, username: str, now: float
    ) -> StunMessage:
        """ChannelBind (RFC 8656 section 11.2)."""
        raw_number = msg.get(CHANNEL_NUMBER)
        raw_peer = msg.get(XOR_PEER_ADDRESS)
        if raw_number is None or raw_peer is None:
            raise StunRequestError(400, "CHANNEL-NUMBER or XOR-PEER-ADDRESS missing")
        number = self._decode(unpack_channel, raw_number)
        if not CHANNEL_MIN <= number <= CHANNEL_MAX:
            raise StunRequestError(400, "Channel number out of range")
        alloc = self._own_allocation(side, client, username)
        peer = self._peer(msg, alloc, raw_peer, "ChannelBind")
        binding = alloc.bindings.get(number)
        if binding is not None and binding.peer != peer:
            raise StunRequestError(400, "Channel bound to another peer")
        for other_number, other in alloc.bindings.items():
            if other.peer == peer and other_number != number:
                raise StunRequestError(400, "Peer bound to another channel")
        if (
            peer[0] not in alloc.permissions
            and len(alloc.permissions) >= self.config.max_permissions
        ):
            metrics.QUOTA_REFUSALS.labels("permissions").inc()
            raise StunRequestError(508, "Too many permissions", metric="permissions")
        expires = now + self.config.channel_lifetime
        if binding is None:
            binding = Binding(peer, ChannelState.UNBOUND, expires)
            alloc.bindings[number] = binding
        binding.state = next_state(binding.state, ChannelEvent.BIND)  # type: ignore[assignment]
        binding.expires = expires
        self.timers.at(expires, Timer.CHANNEL, alloc, number)
        self._install_permission(alloc, peer[0], now)
        self._open_channel(alloc, number, peer)
        return response_to(msg, SUCCESS)
