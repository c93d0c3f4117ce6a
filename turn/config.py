"""Settings of the TURN relay.

Every knob lives in one frozen dataclass so the CLI, the config file and
``wadud serve`` all build the same object. Defaults are the RFC 8656 ones
(allocation 600 s default and 3600 s maximum, permission 300 s, channel 600 s)
and safe ones: relaying to loopback, private, link-local, multicast and other
special peers is refused unless ``allow_peers`` lists them (see
``turn.policy``).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from turn.errors import TurnConfigError
from wadud.errors import ConfigError

if TYPE_CHECKING:
    from wadud.config import Settings

Address = tuple[str, int]


def parse_hostport(text: str, default_port: int) -> Address:
    """``"1.2.3.4:3478"``, ``"[::1]:3478"``, ``"::"`` or ``"0.0.0.0"`` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, default_port
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise TurnConfigError(f"not an IP address: {host!r}") from exc
    if not 0 <= port <= 65535:
        raise TurnConfigError(f"port out of range: {port}")
    return host, port


def format_hostport(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """All settings of one relay. Times are seconds; rates are per second."""

    # Listeners (RFC 8656 section 3.1: 3478 for UDP/TCP, 5349 for TLS).
    listen_udp: tuple[Address, ...] = (("0.0.0.0", 3478),)
    listen_tcp: tuple[Address, ...] = (("0.0.0.0", 3478),)
    listen_tls: tuple[Address, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None

    # Relay addresses: the IPs relay sockets bind to (one per family at most),
    # and optionally the public IPs to advertise when behind 1:1 NAT.
    relay_ips: tuple[str, ...] = ()
    external_ips: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    min_port: int = 49152
    max_port: int = 65535

    # Authentication (RFC 8489 section 9.2).
    realm: str = "wadud"
    secrets: tuple[str, ...] = ()
    static_users: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    nonce_lifetime: float = 600.0
    software: str = "Wadud TURN"

    # Peers: CIDRs that override the default deny list (turn.policy).
    allow_peers: tuple[str, ...] = ()
    deny_peers: tuple[str, ...] = ()

    # Lifetimes (RFC 8656 sections 7, 9, 12).
    default_lifetime: int = 600
    max_lifetime: int = 3600
    permission_lifetime: int = 300
    channel_lifetime: int = 600
    reservation_lifetime: int = 30

    # Quotas, per user: the part after ``expiry:`` of a REST username, so
    # every credential of one user shares one count. Anonymous patient
    # sessions (``anon-<id>``, turn.credentials.ANONYMOUS_PREFIX) are cheap to
    # start, so they get a small quota: one call needs one allocation per
    # peer connection.
    user_quota: int = 10
    anonymous_quota: int = 2
    total_quota: int = 10000
    max_permissions: int = 64
    max_bps: int = 0  # bits per second per allocation, both ways; 0 means unlimited

    # Unauthenticated traffic (Binding, 401 challenges) per source IP, so the
    # server is no amplifier: a token bucket of this rate and burst. Generous
    # enough for a carrier-grade NAT with many patients behind one address;
    # 0 turns the limit off.
    unauth_rate: float = 100.0
    unauth_burst: float = 200.0

    # TCP: bytes queued towards one client before peer data is dropped.
    tcp_write_limit: int = 1 << 20
    # Kernel buffer size for every UDP socket (0 leaves the default).
    socket_buffer: int = 1 << 21
    # Where ``wadud turn`` serves Prometheus /metrics on its own (None: not served).
    metrics_listen: Address | None = None

    def validate(self) -> TurnConfig:
        """Raise :class:`TurnConfigError` for settings that cannot work; return self."""
        if not (self.listen_udp or self.listen_tcp or self.listen_tls):
            raise TurnConfigError("no listener configured")
        if self.listen_tls and not (self.tls_cert and self.tls_key):
            raise TurnConfigError("TLS listener needs tls_cert and tls_key")
        if not 1 <= self.min_port <= self.max_port <= 65535:
            raise TurnConfigError("need 1 <= min_port <= max_port <= 65535")
        if not self.secrets and not self.static_users:
            raise TurnConfigError("no credentials: give a shared secret or static users")
        families = set()
        for ip in self.relay_ips:
            try:
                version = ipaddress.ip_address(ip).version
            except ValueError as exc:
                raise TurnConfigError(f"relay ip {ip!r} is not an IP address") from exc
            if version in families:
                raise TurnConfigError("at most one relay ip per address family")
            if ipaddress.ip_address(ip).is_unspecified:
                raise TurnConfigError("relay ip must be a concrete address, not a wildcard")
            families.add(version)
        for cidr in (*self.allow_peers, *self.deny_peers):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise TurnConfigError(f"bad CIDR {cidr!r}") from exc
        if not 0 < self.default_lifetime <= self.max_lifetime:
            raise TurnConfigError("need 0 < default_lifetime <= max_lifetime")
        if self.permission_lifetime <= 0 or self.channel_lifetime <= 0:
            raise TurnConfigError("lifetimes must be positive")
        return self

    def effective_relay_ips(self) -> tuple[str, ...]:
        """Relay IPs, falling back to the concrete listen addresses."""
        if self.relay_ips:
            return self.relay_ips
        found: list[str] = []
        versions: set[int] = set()
        for host, _ in (*self.listen_udp, *self.listen_tcp, *self.listen_tls):
            ip = ipaddress.ip_address(host)
            if not ip.is_unspecified and ip.version not in versions:
                versions.add(ip.version)
                found.append(host)
        if not found:
            raise TurnConfigError("relay ip needed: listeners are wildcards, so give --relay-ip")
        return tuple(found)

    @classmethod
    def for_loopback(cls, secret: str | None = None, port: int = 0, **changes: Any) -> TurnConfig:
        """What ``wadud serve`` runs: UDP and TCP on 127.0.0.1 (port 0 = ephemeral).

        A secret is generated when none is given. Loopback peers are allowed,
        because in ``serve`` the media server is on 127.0.0.1 too.
        """
        base: dict[str, Any] = {
            "listen_udp": (("127.0.0.1", port),),
            "listen_tcp": (("127.0.0.1", port),),
            "relay_ips": ("127.0.0.1",),
            "secrets": (secret or secrets.token_urlsafe(32),),
            "allow_peers": ("127.0.0.0/8", "::1/128"),
        }
        base.update(changes)
        return cls(**base).validate()

    def with_changes(self, **changes: Any) -> TurnConfig:
        return replace(self, **changes)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TurnConfig:
        """Build from a config-file section (keys are the field names).

        ``listen_*`` entries may be ``"host:port"`` strings; unknown keys are an
        error so a typo does not silently keep a default.
        """
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise TurnConfigError(f"unknown turn settings: {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("listen_udp", "listen_tcp"):
                kwargs[key] = tuple(_addr(v, 3478) for v in value)
            elif key == "listen_tls":
                kwargs[key] = tuple(_addr(v, 5349) for v in value)
            elif key in ("external_ips", "static_users"):
                kwargs[key] = MappingProxyType(dict(value))
            elif key in ("relay_ips", "secrets", "allow_peers", "deny_peers"):
                kwargs[key] = (value,) if isinstance(value, str) else tuple(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)


def _addr(value: Any, default_port: int) -> Address:
    if isinstance(value, str):
        return parse_hostport(value, default_port)
    host, port = value
    return str(host), int(port)


def check_settings(settings: Settings) -> None:
    """Check the relay's keys of wadud's ``[turn]`` table (``settings.turn_relay``) as
    :meth:`TurnConfig.from_mapping` will read them, so a typo fails every command at
    start, not only ``wadud turn``. The assembly (:mod:`bin.assembly`) runs it."""
    if not settings.turn_relay:
        return
    try:
        TurnConfig.from_mapping(settings.turn_relay)
    except (TurnConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"[turn]: {exc}") from exc
