"""Sans-I/O TURN server core (RFC 8656 over RFC 8489).

Shape (aioquic's): the adapter hands every STUN message from a client to
:meth:`TurnCore.handle` with the current time and sends back whatever bytes it
returns; it asks :meth:`TurnCore.get_timer` when to wake the core and then
calls :meth:`TurnCore.handle_timer`. Expiry of allocations, permissions,
channels and reservations are all timer outputs; no clock is read here.

Three things the core cannot do without I/O are injected:

* ``open_relay(allocation, ip, port, dont_fragment, reserved)`` binds a
  relayed UDP socket and returns an endpoint with ``sendto(data, addr)``,
  ``close()`` (or None if the port is taken). Binding is synchronous, so an
  Allocate is answered in the same call. ``reserved`` is None, or what
  ``reserve_port`` returned for that port: the endpoint is made of it.
* ``reserve_port(ip, port)`` holds a port for a RESERVATION-TOKEN (RFC 8656
  section 7.1: the server reserves it, so nobody else can take it) and
  returns something with ``close()``, or None if the port is taken.
* Send indications are relayed by calling ``allocation.relay.sendto``.

ChannelData and peer-to-client data never come here: the adapter relays
them from the lookup tables of :class:`turn.allocation.Allocation` (one dict
lookup per packet), which this core keeps filled with exactly the entries
that may be relayed.
"""

from __future__ import annotations

import binascii
import heapq
import logging
import os
import struct
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from rtc.errors import StunParseError
from rtc.stun import (
    ADDITIONAL_ADDRESS_FAMILY,
    ADDRESS_ERROR_CODE,
    ALLOCATE,
    BINDING,
    CHANGE_REQUEST,
    CHANNEL_BIND,
    CHANNEL_NUMBER,
    COOKIE,
    COOKIE_BYTES,
    CREATE_PERMISSION,
    DATA,
    DATA_ATTR,
    DONT_FRAGMENT,
    ERROR,
    ERROR_CODE,
    EVEN_PORT,
    FAMILY_IPV4,
    FAMILY_IPV6,
    FINGERPRINT,
    FINGERPRINT_XOR,
    INDICATION,
    KNOWN_TYPES,
    LIFETIME,
    MESSAGE_INTEGRITY,
    MESSAGE_INTEGRITY_SHA256,
    METHOD_NAMES,
    NONCE,
    REALM,
    REFRESH,
    REQUEST,
    REQUESTED_ADDRESS_FAMILY,
    REQUESTED_TRANSPORT,
    RESERVATION_TOKEN,
    SEND,
    SOFTWARE,
    SUCCESS,
    TRANSPORT_UDP,
    U32,
    UNKNOWN_ATTRIBUTES,
    USERNAME,
    XOR_MAPPED_ADDRESS,
    XOR_PEER_ADDRESS,
    XOR_RELAYED_ADDRESS,
    Message,
    check_fingerprint,
    check_integrity,
    message_type,
    pack_error,
    pack_unknown,
    unpack_channel,
    unpack_even_port,
    unpack_family,
    unpack_transport,
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
    next_state,
)
from turn.config import TurnConfig
from turn.credentials import ANONYMOUS_PREFIX, CredentialVerifier, NonceFactory
from turn.errors import StunRequestError
from turn.policy import PeerPolicy

logger = logging.getLogger("wadud.turn.core")

CHANNEL_MIN = 0x4000
# RFC 8656 section 12 gives clients 0x4000-0x4FFF, but RFC 5766 allowed up to
# 0x7FFF and deployed clients (coturn's own uclient among them) still pick from
# there; the ChannelData demultiplexing (first byte 0x40-0x7F) covers both.
CHANNEL_MAX = 0x7FFF
CHANNEL_COOLDOWN = 300.0  # RFC 8656 section 12: 5 minutes before reuse
TICK = 1.0  # bandwidth budget period
PRUNE_EVERY = 30.0

_DATA_IND_TYPE = message_type(DATA, INDICATION)
_DATA_HDR = struct.Struct("!HHI12s")
_PADS = (b"", b"\x00", b"\x00\x00", b"\x00\x00\x00")
_NO_PERMISSION = metrics.MALFORMED.labels("no_permission")
SEND_INDICATION_TYPE = message_type(SEND, INDICATION).to_bytes(2, "big")
_TLV = struct.Struct("!HH")

# Timer kinds.
_T_ALLOC, _T_PERM, _T_CHAN, _T_COOLDOWN, _T_RESERVATION, _T_TICK, _T_PRUNE = range(7)


class RelayEndpoint(Protocol):
    """What ``open_relay`` returns: a bound relayed transport address."""

    def sendto(self, data: bytes, addr: Address) -> None: ...

    def close(self) -> None: ...


class Reservation(Protocol):
    """What ``reserve_port`` returns: a port held for a RESERVATION-TOKEN."""

    def close(self) -> None: ...


RelayOpener = Callable[[Allocation, str, int, bool, Any], "RelayEndpoint | None"]
PortReserver = Callable[[str, int], "Reservation | None"]


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


class TurnCore:
    """All TURN server state; see the module docstring for the I/O contract."""

    def __init__(
        self,
        config: TurnConfig,
        open_relay: RelayOpener,
        reserve_port: PortReserver,
        *,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self._open_relay = open_relay
        self._reserve_port = reserve_port
        self._random = random
        self.verifier = CredentialVerifier(config.realm, config.secrets, config.static_users)
        self.nonces = NonceFactory(random(32), config.nonce_lifetime)
        self.policy = PeerPolicy(config.allow_peers, config.deny_peers)
        relay_ips = config.effective_relay_ips()
        self.relay_ips: dict[int, str] = {}
        for ip in relay_ips:
            self.relay_ips[FAMILY_IPV6 if ":" in ip else FAMILY_IPV4] = ip
        self.realm_bytes = config.realm.encode()
        self.software = config.software.encode()
        self.allocations: set[Allocation] = set()
        self.by_user: dict[str, int] = {}
        self.ports_in_use: set[tuple[int, int]] = set()
        # token -> (family, port, expiry, the held port)
        self.reservations: dict[bytes, tuple[int, int, float, Reservation]] = {}
        self.epoch = 0
        self.epoch_budget = config.max_bps // 8 if config.max_bps else 0
        self._timers: list[tuple[float, int, int, Any, Any]] = []
        self._seq = 0
        self._tick_armed = False
        self._prune_armed = False
        self._buckets: dict[str, list[float]] = {}
        self.totals = {
            "to_peer_pkts": 0,
            "to_peer_bytes": 0,
            "from_peer_pkts": 0,
            "from_peer_bytes": 0,
        }
        self.dropped = 0
        self._xpa_cache: dict[bytes, Address] = {}
        metrics.register_core(self)

    # ------------------------------------------------------------------ timers

    def _at(self, when: float, kind: int, obj: Any = None, key: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, kind, obj, key))

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next wants to run, or None."""
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> None:
        """Expire whatever is due at ``now`` (RFC 8656 sections 6, 9, 12)."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, obj, key = heapq.heappop(timers)
            if kind == _T_TICK:
                self._tick_armed = False
                self.epoch += 1
                if self.allocations and self.epoch_budget:
                    self._tick_armed = True
                    self._at(now + TICK, _T_TICK)
                continue
            if kind == _T_PRUNE:
                self._prune_buckets(now)
                continue
            if kind == _T_RESERVATION:
                entry = self.reservations.get(key)
                if entry is not None and entry[2] <= now:
                    del self.reservations[key]
                    self.ports_in_use.discard((entry[0], entry[1]))
                    entry[3].close()
                continue
            alloc: Allocation = obj
            if alloc.state is not AllocationState.ACTIVE:
                continue
            if kind == _T_ALLOC:
                if alloc.expires <= now:
                    self._delete(alloc, AllocationEvent.EXPIRE, now)
            elif kind == _T_PERM:
                expiry = alloc.permissions.get(key)
                if expiry is not None and expiry <= now:
                    self._remove_permission(alloc, key)
            elif kind in (_T_CHAN, _T_COOLDOWN):
                # A timer armed for a state the binding has left since (a
                # refresh, a re-bind) finds it in another state or later.
                binding = alloc.bindings.get(key)
                due = ChannelState.BOUND if kind == _T_CHAN else ChannelState.COOLDOWN
                if binding is None or binding.state is not due or binding.expires > now:
                    continue
                if kind == _T_CHAN:
                    self._expire_channel(alloc, key, binding, now)
                else:
                    next_state(binding.state, ChannelEvent.COOLDOWN_OVER)
                    del alloc.bindings[key]

    # --------------------------------------------------------------- lifecycle

    def close_side(self, side: ClientSide, now: float) -> None:
        """The client's TCP/TLS connection closed: its allocation goes (RFC 8656 section 3.1)."""
        for alloc in list(side.allocations.values()):
            self._delete(alloc, AllocationEvent.TRANSPORT_CLOSED, now)

    def close(self, now: float) -> None:
        """Delete every allocation and forget every timer."""
        for alloc in list(self.allocations):
            self._delete(alloc, AllocationEvent.SHUTDOWN, now)
        self._timers.clear()
        for entry in self.reservations.values():
            entry[3].close()
        self.reservations.clear()

    def snapshot(self) -> dict[str, int]:
        """Counts and relayed totals, read by the metrics collector at scrape time."""
        out = dict(self.totals)
        perms = chans = 0
        for a in self.allocations:
            perms += len(a.permissions)
            chans += sum(1 for b in a.bindings.values() if b.state is ChannelState.BOUND)
            out["to_peer_pkts"] += a.to_peer_pkts
            out["to_peer_bytes"] += a.to_peer_bytes
            out["from_peer_pkts"] += a.from_peer_pkts
            out["from_peer_bytes"] += a.from_peer_bytes
        out["allocations"] = len(self.allocations)
        out["permissions"] = perms
        out["channels"] = chans
        return out

    # ------------------------------------------------------------- entry point

    def handle(self, side: ClientSide, client: Hashable, data: bytes, now: float) -> bytes | None:
        """Process one STUN message from ``client`` on ``side``; return the bytes to send back.

        Malformed messages are counted and dropped (RFC 8489 section 6.3); a
        request we refuse gets its error response (RFC 8489 section 6.3.1.1).
        """
        try:
            msg = Message.parse(data)
        except StunParseError:
            metrics.MALFORMED.labels("stun_framing").inc()
            return None
        if check_fingerprint(data) is False:
            metrics.MALFORMED.labels("fingerprint").inc()
            return None
        addr: Address = (client[0], client[1])  # type: ignore[index]
        if msg.cls == INDICATION:
            if msg.method == SEND:
                self._send_indication(side, client, msg, now)
            else:
                metrics.MALFORMED.labels("unexpected_indication").inc()
            return None
        if msg.cls != REQUEST:
            metrics.MALFORMED.labels("unexpected_response").inc()
            return None
        fingerprint = msg.attributes[-1].type == FINGERPRINT if msg.attributes else False
        method_name = METHOD_NAMES.get(msg.method, "unknown")
        key: bytes | None = None
        sha256 = False
        response: Message | None
        try:
            if msg.method == BINDING:
                if not self._admit_unauthenticated(addr[0], now):
                    return None
                self._check_unknown(msg)
                response = self._binding(msg, addr)
            elif msg.method in (ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND):
                sha256 = msg.get(MESSAGE_INTEGRITY_SHA256) is not None
                identity = self._authenticate(msg, data, addr, now)
                if identity is None:
                    return None  # rate limited
                username, user, key = identity
                self._check_unknown(msg)
                if msg.method == ALLOCATE:
                    response = self._allocate(side, client, msg, addr, username, user, key, now)
                    if response is None:
                        # Retransmitted Allocate: the cached response, as first sent.
                        alloc = side.allocations[client]
                        metrics.REQUESTS.labels(method_name, "0").inc()
                        return alloc.alloc_response
                elif msg.method == REFRESH:
                    response = self._refresh(side, client, msg, username, now)
                elif msg.method == CREATE_PERMISSION:
                    response = self._create_permission(side, client, msg, username, now)
                else:
                    response = self._channel_bind(side, client, msg, username, now)
            else:
                if not self._admit_unauthenticated(addr[0], now):
                    return None
                raise StunRequestError(400, "Unknown method")
        except StunRequestError as exc:
            metrics.REQUESTS.labels(method_name, str(exc.code)).inc()
            return self._error(msg, exc, addr, key, sha256, fingerprint, now)
        metrics.REQUESTS.labels(method_name, "0").inc()
        out = self._finish(response, key, sha256, fingerprint)
        if msg.method == ALLOCATE:
            side.allocations[client].alloc_response = out
        return out

    # ------------------------------------------------------------------- auth

    def _admit_unauthenticated(self, ip: str, now: float) -> bool:
        """Token bucket per source IP for answers sent before authentication."""
        rate, burst = self.config.unauth_rate, self.config.unauth_burst
        if rate <= 0:
            return True
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = self._buckets[ip] = [burst, now]
            if not self._prune_armed:
                self._prune_armed = True
                self._at(now + PRUNE_EVERY, _T_PRUNE)
        tokens = min(burst, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            metrics.RATE_LIMITED.inc()
            return False
        bucket[0] = tokens - 1.0
        return True

    def _prune_buckets(self, now: float) -> None:
        self._prune_armed = False
        full_after = self.config.unauth_burst / self.config.unauth_rate
        stale = [ip for ip, (_, last) in self._buckets.items() if now - last > full_after]
        for ip in stale:
            del self._buckets[ip]
        if self._buckets:
            self._prune_armed = True
            self._at(now + PRUNE_EVERY, _T_PRUNE)

    def _authenticate(
        self, msg: Message, data: bytes, addr: Address, now: float
    ) -> tuple[str, str, bytes] | None:
        """Long-term credential checks in the order of RFC 8489 section 9.2.4."""
        sha256 = msg.get(MESSAGE_INTEGRITY_SHA256) is not None
        if not sha256 and msg.get(MESSAGE_INTEGRITY) is None:
            if not self._admit_unauthenticated(addr[0], now):
                return None
            metrics.AUTH_FAILURES.labels("challenge").inc()
            raise StunRequestError(401, metric="challenge")
        raw_user, realm, nonce = msg.get(USERNAME), msg.get(REALM), msg.get(NONCE)
        if raw_user is None or realm is None or nonce is None:
            if not self._admit_unauthenticated(addr[0], now):
                return None
            metrics.AUTH_FAILURES.labels("missing_attribute").inc()
            raise StunRequestError(400, metric="missing_attribute")
        try:
            username = raw_user.decode("utf-8")
            keys = self.verifier.keys_for(username, now)
            if realm != self.realm_bytes:
                raise StunRequestError(401, metric="wrong_realm")
            key = next((k for k in keys if check_integrity(data, k, sha256)), None)
            if key is None:
                raise StunRequestError(401, metric="bad_integrity")
        except (StunRequestError, UnicodeDecodeError) as exc:
            reason = exc.metric if isinstance(exc, StunRequestError) else "bad_username"
            metrics.AUTH_FAILURES.labels(reason or "unknown").inc()
            if not self._admit_unauthenticated(addr[0], now):
                return None
            logger.info("auth refused", extra={"client": addr, "reason": reason})
            raise StunRequestError(401, metric=reason) from None
        valid = self.nonces.check(nonce, addr[0], now)
        if not valid:
            reason = "stale_nonce" if valid is False else "bad_nonce"
            metrics.AUTH_FAILURES.labels(reason).inc()
            # 438 carries a fresh NONCE; signed with the key that just checked
            # out so the client can trust it (RFC 8489 section 9.2.4).
            raise StunRequestError(438, metric=reason)
        return username, CredentialVerifier.user_of(username), key

    @staticmethod
    def _check_unknown(msg: Message) -> None:
        """420 for comprehension-required attributes we do not know (RFC 8489 6.3.1)."""
        unknown = tuple(
            dict.fromkeys(
                a.type for a in msg.attributes if a.type < 0x8000 and a.type not in KNOWN_TYPES
            )
        )
        if unknown:
            metrics.MALFORMED.labels("unknown_attribute").inc()
            raise StunRequestError(420, unknown=unknown)

    # -------------------------------------------------------------- responses

    def _response(self, msg: Message, cls: int) -> Message:
        return Message(msg.method, cls, msg.transaction_id)

    def _finish(self, resp: Message, key: bytes | None, sha256: bool, fingerprint: bool) -> bytes:
        if self.software:
            resp.add(SOFTWARE, self.software)
        if key is not None:
            resp.add_integrity(key, sha256)
        if fingerprint:
            resp.add_fingerprint()
        return bytes(resp)

    def _error(
        self,
        msg: Message,
        exc: StunRequestError,
        addr: Address,
        key: bytes | None,
        sha256: bool,
        fingerprint: bool,
        now: float,
    ) -> bytes:
        resp = self._response(msg, ERROR)
        resp.add(ERROR_CODE, pack_error((exc.code, exc.reason)))
        if exc.unknown:
            resp.add(UNKNOWN_ATTRIBUTES, pack_unknown(exc.unknown))
        if exc.code in (401, 438):
            resp.add(REALM, self.realm_bytes)
            resp.add(NONCE, self.nonces.issue(addr[0], now))
            if exc.code == 401:
                key = None  # RFC 8489 9.2.4: no integrity on a 401 challenge
        return self._finish(resp, key, sha256, fingerprint)

    def _binding(self, msg: Message, addr: Address) -> Message:
        """Binding (RFC 8489 section 6.3.1): echo the reflexive address."""
        change = msg.get(CHANGE_REQUEST)
        if change is not None and (len(change) != 4 or unpack_u32(change) & 0x6):
            # RFC 5780 section 7.2: we have no alternate address to answer from.
            raise StunRequestError(420, unknown=(CHANGE_REQUEST,))
        resp = self._response(msg, SUCCESS)
        resp.add(XOR_MAPPED_ADDRESS, xor_address(addr, msg.transaction_id))
        return resp

    # --------------------------------------------------------------- Allocate

    def _lifetime(self, msg: Message) -> int:
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

    def _allocate(
        self,
        side: ClientSide,
        client: Hashable,
        msg: Message,
        addr: Address,
        username: str,
        user: str,
        key: bytes,
        now: float,
    ) -> Message | None:
        """Allocate (RFC 8656 section 7.2)."""
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
        if self._decode(unpack_transport, raw) != TRANSPORT_UDP:
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
            family = self._decode(unpack_family, raw_family)
            if family not in (FAMILY_IPV4, FAMILY_IPV6):
                raise StunRequestError(440)
        additional_error = False
        if raw_additional is not None:
            if self._decode(unpack_family, raw_additional) != FAMILY_IPV6:
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
        if self.epoch_budget:
            alloc.limited = True
            if not self._tick_armed:
                self._tick_armed = True
                self._at(now + TICK, _T_TICK)
        side.allocations[client] = alloc
        self.allocations.add(alloc)
        self.by_user[user] = self.by_user.get(user, 0) + 1
        self._at(alloc.expires, _T_ALLOC, alloc)

        resp = self._response(msg, SUCCESS)
        resp.add(XOR_RELAYED_ADDRESS, xor_address(alloc.relay_addr, msg.transaction_id))
        resp.add(LIFETIME, U32.pack(lifetime))
        if held is not None:
            token = self._random(8)
            self.reservations[token] = (family, port + 1, now + cfg.reservation_lifetime, held)
            self.ports_in_use.add((family, port + 1))
            alloc.reserved_port = port + 1
            self._at(now + cfg.reservation_lifetime, _T_RESERVATION, None, token)
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

    def _delete(self, alloc: Allocation, event: AllocationEvent, now: float) -> None:
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

    def _refresh(
        self, side: ClientSide, client: Hashable, msg: Message, username: str, now: float
    ) -> Message:
        """Refresh (RFC 8656 section 7.3)."""
        alloc = self._own_allocation(side, client, username)
        raw_family = msg.get(REQUESTED_ADDRESS_FAMILY)
        if raw_family is not None and self._decode(unpack_family, raw_family) != alloc.family:
            raise StunRequestError(443)
        lifetime = self._lifetime(msg)
        if lifetime == 0:
            self._delete(alloc, AllocationEvent.DELETE, now)
        else:
            alloc.transition(AllocationEvent.REFRESH)
            alloc.expires = now + lifetime
            self._at(alloc.expires, _T_ALLOC, alloc)
        resp = self._response(msg, SUCCESS)
        resp.add(LIFETIME, U32.pack(lifetime))
        return resp

    # ---------------------------------------------------- permissions, channels

    def _peer(self, msg: Message, alloc: Allocation, raw: bytes, method: str) -> Address:
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
        self._at(now + self.config.permission_lifetime, _T_PERM, alloc, ip)
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
        self._at(binding.expires, _T_COOLDOWN, alloc, number)

    def _create_permission(
        self, side: ClientSide, client: Hashable, msg: Message, username: str, now: float
    ) -> Message:
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
        return self._response(msg, SUCCESS)

    def _channel_bind(
        self, side: ClientSide, client: Hashable, msg: Message, username: str, now: float
    ) -> Message:
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
        self._at(expires, _T_CHAN, alloc, number)
        self._install_permission(alloc, peer[0], now)
        self._open_channel(alloc, number, peer)
        return self._response(msg, SUCCESS)

    # ------------------------------------------------------------------ Send

    def _send_indication(
        self, side: ClientSide, client: Hashable, msg: Message, now: float
    ) -> None:
        """Send indication (RFC 8656 section 10.2): relay DATA to the peer, or drop silently."""
        alloc = side.allocations.get(client)
        raw_peer = msg.get(XOR_PEER_ADDRESS)
        payload = msg.get(DATA_ATTR)
        if any(a.type < 0x8000 and a.type not in KNOWN_TYPES for a in msg.attributes):
            # RFC 8489 section 6.3.2: indications with unknown
            # comprehension-required attributes are dropped.
            metrics.MALFORMED.labels("unknown_attribute").inc()
            return
        if alloc is None or raw_peer is None or payload is None:
            metrics.MALFORMED.labels("send_indication").inc()
            return
        try:
            peer = unxor_address(raw_peer, msg.transaction_id)
        except StunParseError:
            metrics.MALFORMED.labels("send_indication").inc()
            return
        if peer[0] not in alloc.permissions:
            _NO_PERMISSION.inc()
            return
        if not self.policy.allowed(peer[0]):
            metrics.PEER_DENIED.labels("Send").inc()
            return
        if alloc.limited and not self.spend(alloc, len(payload)):
            return
        alloc.to_peer_pkts += 1
        alloc.to_peer_bytes += len(payload)
        alloc.relay.sendto(payload, peer)

    def spend(self, alloc: Allocation, n: int) -> bool:
        """Charge ``n`` bytes to the allocation's bandwidth budget; False means drop."""
        if alloc.epoch != self.epoch:
            alloc.epoch = self.epoch
            alloc.budget = self.epoch_budget
        alloc.budget -= n
        if alloc.budget < 0:
            self.dropped += 1
            return False
        return True

    def data_indication(self, alloc: Allocation, peer: tuple[Any, ...], payload: bytes) -> bytes:
        """A Data indication (RFC 8656 section 10.3) for a peer without a channel.

        The XOR-PEER-ADDRESS TLV is cached per peer: encoding an address
        through ``ipaddress`` costs more than the rest of the packet.
        """
        cache = alloc.data_xpa
        xpa = cache.get(peer)
        if xpa is None:
            raw = xor_address((peer[0], peer[1]), alloc.data_txid)
            if len(cache) >= 1024:
                cache.clear()
            xpa = cache[peer] = _TLV.pack(XOR_PEER_ADDRESS, len(raw)) + raw
        n = len(payload)
        pad = -n & 3
        return b"".join(
            (
                _DATA_HDR.pack(_DATA_IND_TYPE, len(xpa) + 4 + n + pad, COOKIE, alloc.data_txid),
                xpa,
                _TLV.pack(DATA_ATTR, n),
                payload,
                _PADS[pad],
            )
        )

    def send_indication(self, side: ClientSide, client: Hashable, data: bytes) -> bool:
        """Relay a well-formed Send indication without building a :class:`Message`.

        The common case of RFC 8656 section 10.2 on the hot path: returns False
        for anything unusual (FINGERPRINT, unknown attributes, bad framing, no
        allocation) so :meth:`handle` does the full checks and counts the drop.
        """
        n = len(data)
        if n < 20 or data[4:8] != COOKIE_BYTES or ((data[2] << 8) | data[3]) + 20 != n:
            return False
        alloc = side.allocations.get(client)
        if alloc is None:
            return False
        pos = 20
        xpa = payload = None
        while pos + 4 <= n:
            atype, alen = _TLV.unpack_from(data, pos)
            start = pos + 4
            end = start + alen
            if end > n:
                return False
            if atype == XOR_PEER_ADDRESS:
                if xpa is None:
                    xpa = data[start:end]
            elif atype == DATA_ATTR:
                if payload is None:
                    payload = data[start:end]
            elif atype == FINGERPRINT:
                # Must be last and right (RFC 8489 section 14.7); CRC32 is C-fast.
                if end != n or alen != 4:
                    return False
                crc = (binascii.crc32(data[:pos]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
                if crc != U32.unpack_from(data, start)[0]:
                    return False
            elif atype < 0x8000 and atype not in KNOWN_TYPES:
                return False
            pos = end + (-alen & 3)
        if pos != n or xpa is None or payload is None:
            return False
        peer = self._xpa_cache.get(xpa) if len(xpa) == 8 else None
        if peer is None:
            try:
                peer = unxor_address(xpa, data[8:20])
            except StunParseError:
                return False
            if len(xpa) == 8:
                # IPv4 XOR addresses do not depend on the transaction id.
                if len(self._xpa_cache) >= 65536:
                    self._xpa_cache.clear()
                self._xpa_cache[xpa] = peer
        if peer[0] not in alloc.permissions:
            _NO_PERMISSION.inc()
            return True
        if not self.policy.allowed(peer[0]):
            metrics.PEER_DENIED.labels("Send").inc()
            return True
        if alloc.limited and not self.spend(alloc, len(payload)):
            return True
        alloc.to_peer_pkts += 1
        alloc.to_peer_bytes += len(payload)
        alloc.relay.sendto(payload, peer)
        return True


__all__ = ["ClientSide", "RelayEndpoint", "TurnCore"]
