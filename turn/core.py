"""Sans-I/O TURN server core (RFC 8656 over RFC 8489).

Shape (aioquic's): the adapter hands every STUN message from a client to
:meth:`TurnCore.handle` with the current time and sends back whatever bytes it
returns; it asks :meth:`TurnCore.get_timer` when to wake the core and then
calls :meth:`TurnCore.handle_timer`. Expiry of allocations, permissions,
channels and reservations are all timer outputs (:mod:`turn.timers`); no
clock is read here.

The core is the STUN-level server: it parses, rate-limits what it answers
before authentication, checks long-term credentials (RFC 8489 section 9.2),
answers Binding and signs every response, errors included. It holds the two
parts that do the rest, and hands them the timers they share:

* :class:`turn.allocator.Allocator`, the allocation requests (Allocate,
  Refresh, CreatePermission, ChannelBind) and the state they leave;
* :class:`turn.datapath.DataPath`, Send and Data indications and the
  bandwidth budget.

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
lookup per packet), which the allocator keeps filled with exactly the
entries that may be relayed, and asks the data path for what it cannot do
from a table (a Send indication, a Data indication, the budget).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable

from rtc.errors import StunParseError
from rtc.stun import (
    ALLOCATE,
    BINDING,
    CHANGE_REQUEST,
    CHANNEL_BIND,
    CREATE_PERMISSION,
    ERROR,
    ERROR_CODE,
    FINGERPRINT,
    INDICATION,
    KNOWN_TYPES,
    MESSAGE_INTEGRITY,
    MESSAGE_INTEGRITY_SHA256,
    METHOD_NAMES,
    NONCE,
    REALM,
    REFRESH,
    REQUEST,
    SEND,
    SOFTWARE,
    SUCCESS,
    UNKNOWN_ATTRIBUTES,
    USERNAME,
    XOR_MAPPED_ADDRESS,
    StunMessage,
    check_fingerprint,
    check_integrity,
    pack_error,
    pack_unknown,
    unpack_u32,
    xor_address,
)
from turn import metrics
from turn.allocation import Address, AllocationEvent, ChannelState, ClientSide
from turn.allocator import Allocator, PortReserver, RelayOpener, response_to
from turn.config import TurnConfig
from turn.credentials import CredentialVerifier, NonceFactory
from turn.datapath import DataPath
from turn.errors import StunRequestError
from turn.policy import PeerPolicy
from turn.timers import Timer, Timers

__all__ = ["TurnCore"]

logger = logging.getLogger("wadud.turn.core")

PRUNE_EVERY = 30.0


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
        self.verifier = CredentialVerifier(config.realm, config.secrets, config.static_users)
        self.nonces = NonceFactory(random(32), config.nonce_lifetime)
        self.policy = PeerPolicy(config.allow_peers, config.deny_peers)
        self.realm_bytes = config.realm.encode()
        self.software = config.software.encode()
        self.timers = Timers()
        self.datapath = DataPath(self.policy, config.max_bps, self.timers)
        self.allocator = Allocator(
            config, open_relay, reserve_port, random, self.policy, self.datapath, self.timers
        )
        self._prune_armed = False
        self._buckets: dict[str, list[float]] = {}
        metrics.register_core(self)

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next wants to run, or None."""
        return self.timers.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Expire whatever is due at ``now`` (RFC 8656 sections 6, 9, 12)."""
        timers = self.timers
        while (due := timers.pop_due(now)) is not None:
            kind, obj, key = due
            if kind == Timer.TICK:
                self.datapath.tick(now, bool(self.allocator.allocations))
            elif kind == Timer.PRUNE:
                self._prune_buckets(now)
            else:
                self.allocator.expire(kind, obj, key, now)

    # --------------------------------------------------------------- lifecycle

    def close_side(self, side: ClientSide, now: float) -> None:
        """The client's TCP/TLS connection closed: its allocation goes (RFC 8656 section 3.1)."""
        for alloc in list(side.allocations.values()):
            self.allocator.delete(alloc, AllocationEvent.TRANSPORT_CLOSED, now)

    def close(self, now: float) -> None:
        """Delete every allocation and forget every timer."""
        self.allocator.close(now)
        self.timers.clear()

    def snapshot(self) -> dict[str, int]:
        """Counts and relayed totals, read by the metrics collector at scrape time."""
        allocations = self.allocator.allocations
        out = dict(self.allocator.totals)
        perms = chans = 0
        for a in allocations:
            perms += len(a.permissions)
            chans += sum(1 for b in a.bindings.values() if b.state is ChannelState.BOUND)
            out["to_peer_pkts"] += a.to_peer_pkts
            out["to_peer_bytes"] += a.to_peer_bytes
            out["from_peer_pkts"] += a.from_peer_pkts
            out["from_peer_bytes"] += a.from_peer_bytes
        out["allocations"] = len(allocations)
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
            msg = StunMessage.parse(data)
        except StunParseError:
            metrics.MALFORMED.labels("stun_framing").inc()
            return None
        if check_fingerprint(data) is False:
            metrics.MALFORMED.labels("fingerprint").inc()
            return None
        addr: Address = (client[0], client[1])  # type: ignore[index]
        if msg.cls == INDICATION:
            if msg.method == SEND:
                self.datapath.handle_send_indication(side, client, msg, now)
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
        response: StunMessage | None
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
                    response = self.allocator.allocate(
                        side, client, msg, addr, username, user, key, now
                    )
                    if response is None:
                        # Retransmitted Allocate: the cached response, as first sent.
                        alloc = side.allocations[client]
                        metrics.REQUESTS.labels(method_name, "0").inc()
                        return alloc.alloc_response
                elif msg.method == REFRESH:
                    response = self.allocator.refresh(side, client, msg, username, now)
                elif msg.method == CREATE_PERMISSION:
                    response = self.allocator.create_permission(side, client, msg, username, now)
                else:
                    response = self.allocator.channel_bind(side, client, msg, username, now)
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
                self.timers.at(now + PRUNE_EVERY, Timer.PRUNE)
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
            self.timers.at(now + PRUNE_EVERY, Timer.PRUNE)

    def _authenticate(
        self, msg: StunMessage, data: bytes, addr: Address, now: float
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
    def _check_unknown(msg: StunMessage) -> None:
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

    def _finish(
        self, resp: StunMessage, key: bytes | None, sha256: bool, fingerprint: bool
    ) -> bytes:
        if self.software:
            resp.add(SOFTWARE, self.software)
        if key is not None:
            resp.add_integrity(key, sha256)
        if fingerprint:
            resp.add_fingerprint()
        return bytes(resp)

    def _error(
        self,
        msg: StunMessage,
        exc: StunRequestError,
        addr: Address,
        key: bytes | None,
        sha256: bool,
        fingerprint: bool,
        now: float,
    ) -> bytes:
        resp = response_to(msg, ERROR)
        resp.add(ERROR_CODE, pack_error((exc.code, exc.reason)))
        if exc.unknown:
            resp.add(UNKNOWN_ATTRIBUTES, pack_unknown(exc.unknown))
        if exc.code in (401, 438):
            resp.add(REALM, self.realm_bytes)
            resp.add(NONCE, self.nonces.issue(addr[0], now))
            if exc.code == 401:
                key = None  # RFC 8489 9.2.4: no integrity on a 401 challenge
        return self._finish(resp, key, sha256, fingerprint)

    def _binding(self, msg: StunMessage, addr: Address) -> StunMessage:
        """Binding (RFC 8489 section 6.3.1): echo the reflexive address."""
        change = msg.get(CHANGE_REQUEST)
        if change is not None and (len(change) != 4 or unpack_u32(change) & 0x6):
            # RFC 5780 section 7.2: we have no alternate address to answer from.
            raise StunRequestError(420, unknown=(CHANGE_REQUEST,))
        resp = response_to(msg, SUCCESS)
        resp.add(XOR_MAPPED_ADDRESS, xor_address(addr, msg.transaction_id))
        return resp
