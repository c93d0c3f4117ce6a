"""Which peers the relay may reach (RFC 8656 section 21.3, "Unauthorized peers").

A relay that forwards to any address lets anyone on the internet reach hosts
behind it: the cloud metadata service at 169.254.169.254, services on
loopback, the operator's private network. coturn only refuses loopback and
0.0.0.0 by default; we refuse every block of the IANA special-purpose address
registries (IPv4 and IPv6, RFC 6890) plus multicast unless an operator lists
the peer in ``allow_peers`` (which wins over the defaults, but not over an
explicit ``deny_peers``).

An IPv6 address that embeds an IPv4 address is judged by the IPv4 address
inside as well as by itself, in every form a host or a translator on the path
may read it in: IPv4-mapped ``::ffff:a.b.c.d`` (RFC 4291 section 2.5.5.2),
IPv4-compatible ``::a.b.c.d`` (section 2.5.5.1, deprecated but still routed by
some stacks: ``::7f00:1`` is 127.0.0.1), IPv4-translated ``::ffff:0:a.b.c.d``
(RFC 2765 section 2.1), NAT64's well-known prefix ``64:ff9b::/96`` and
local-use prefix ``64:ff9b:1::/48`` (RFC 6052, RFC 8215; every RFC 6052 layout
the local-use prefix allows), 6to4 ``2002::/16`` (RFC 3056) and Teredo
``2001::/32`` (RFC 4380: the server address and the client address, stored
inverted). So ``::ffff:127.0.0.1`` is loopback, and a translator cannot carry
us to the private network either.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: IANA IPv4 Special-Purpose Address Registry (every entry), plus multicast.
IPV4_SPECIAL = (
    "0.0.0.0/8",  # "this network" (RFC 791)
    "10.0.0.0/8",  # private (RFC 1918)
    "100.64.0.0/10",  # shared address space, carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",  # loopback (RFC 1122)
    "169.254.0.0/16",  # link-local, including cloud metadata 169.254.169.254 (RFC 3927)
    "172.16.0.0/12",  # private (RFC 1918)
    "192.0.0.0/24",  # IETF protocol assignments (RFC 6890), DS-Lite, NAT64 discovery, ...
    "192.0.2.0/24",  # documentation TEST-NET-1 (RFC 5737)
    "192.31.196.0/24",  # AS112-v4 (RFC 7535)
    "192.52.193.0/24",  # AMT (RFC 7450)
    "192.88.99.0/24",  # deprecated 6to4 relay anycast (RFC 7526)
    "192.168.0.0/16",  # private (RFC 1918)
    "192.175.48.0/24",  # direct delegation AS112 service (RFC 7534)
    "198.18.0.0/15",  # benchmarking (RFC 2544)
    "198.51.100.0/24",  # documentation TEST-NET-2 (RFC 5737)
    "203.0.113.0/24",  # documentation TEST-NET-3 (RFC 5737)
    "224.0.0.0/4",  # multicast (RFC 5771)
    "240.0.0.0/4",  # reserved (RFC 1112), including 255.255.255.255 broadcast (RFC 919)
)

#: IANA IPv6 Special-Purpose Address Registry, plus multicast and the
#: deprecated site-local block. The translation prefixes that carry a public
#: IPv4 address somewhere reachable (64:ff9b::/96, 2002::/16, 2001::/32) are
#: not listed: those are judged by the address inside.
IPV6_SPECIAL = (
    "::/128",  # unspecified (RFC 4291)
    "::1/128",  # loopback (RFC 4291)
    "::/96",  # IPv4-compatible, deprecated (RFC 4291 section 2.5.5.1)
    "::ffff:0:0/96",  # IPv4-mapped (RFC 4291): never a peer on the wire
    "::ffff:0:0:0/96",  # IPv4-translated (RFC 2765)
    "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation (RFC 8215)
    "100::/64",  # discard-only (RFC 6666)
    "100:0:0:1::/64",  # dummy IPv6 prefix (RFC 9780)
    "2001:1::1/128",  # port control protocol anycast (RFC 7723)
    "2001:1::2/128",  # TURN anycast (RFC 8155)
    "2001:1::3/128",  # DNS-SD service registration protocol anycast (RFC 9665)
    "2001:2::/48",  # benchmarking (RFC 5180)
    "2001:3::/32",  # AMT (RFC 7450)
    "2001:4:112::/48",  # AS112-v6 (RFC 7535)
    "2001:10::/28",  # deprecated ORCHID (RFC 4843)
    "2001:20::/28",  # ORCHIDv2 (RFC 7343)
    "2001:30::/28",  # drone remote ID DETs (RFC 9374)
    "2001:db8::/32",  # documentation (RFC 3849)
    "2620:4f:8000::/48",  # direct delegation AS112 service (RFC 7534)
    "3fff::/20",  # documentation (RFC 9637)
    "5f00::/16",  # segment routing SIDs (RFC 9602)
    "fc00::/7",  # unique local (RFC 4193)
    "fe80::/10",  # link-local (RFC 4291)
    "fec0::/10",  # deprecated site-local (RFC 3879)
    "ff00::/8",  # multicast (RFC 4291)
)

DEFAULT_DENY = IPV4_SPECIAL + IPV6_SPECIAL

_V4_IN_V6 = ipaddress.IPv6Network("::/96")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
# Where the IPv4 address sits for each RFC 6052 prefix length (section 2.2):
# bits 64 to 71 (byte 8) are always zero and skipped.
_RFC6052 = {
    32: (slice(4, 8),),
    40: (slice(5, 8), slice(9, 10)),
    48: (slice(6, 8), slice(9, 11)),
    56: (slice(7, 8), slice(9, 12)),
    64: (slice(9, 13),),
    96: (slice(12, 16),),
}


def embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address ``addr`` may stand for (see the module doc)."""
    packed = addr.packed
    found: list[ipaddress.IPv4Address] = []
    if addr in _V4_IN_V6 or addr in _MAPPED or addr in _TRANSLATED or addr in _NAT64:
        found.append(ipaddress.IPv4Address(packed[12:]))
    if addr in _NAT64_LOCAL:
        for length in (48, 56, 64, 96):
            found.append(ipaddress.IPv4Address(b"".join(packed[s] for s in _RFC6052[length])))
    if addr.sixtofour is not None:
        found.append(addr.sixtofour)
    if addr.teredo is not None:
        found.extend(addr.teredo)  # (server, client), the client already un-inverted
    return found


class PeerPolicy:
    """Decides whether a peer IP may be relayed to; decisions are cached per IP."""

    def __init__(
        self,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        default_deny: Iterable[str] = DEFAULT_DENY,
        cache_size: int = 65536,
    ) -> None:
        self.allow = tuple(ipaddress.ip_network(c, strict=False) for c in allow)
        self.deny = tuple(ipaddress.ip_network(c, strict=False) for c in deny)
        self.default_deny = tuple(ipaddress.ip_network(c, strict=False) for c in default_deny)
        self._cache: dict[str, bool] = {}
        self._cache_size = cache_size

    def allowed(self, ip: str) -> bool:
        """True if relaying to ``ip`` is permitted."""
        verdict = self._cache.get(ip)
        if verdict is None:
            verdict = self._decide(ip)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[ip] = verdict
        return verdict

    def _decide(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
            return False  # "fe80::1%eth0": a zone is a local interface
        inner: list[IPAddress] = []
        if isinstance(addr, ipaddress.IPv6Address):
            inner.extend(embedded_ipv4(addr))
        forms: list[IPAddress] = [addr, *inner]
        if any(_within(a, self.deny) for a in forms):
            return False
        # An allow-listed IPv4 address is allowed in any form that embeds it,
        # but only when every address inside is allowed (Teredo holds two).
        if _within(addr, self.allow) or (inner and all(_within(a, self.allow) for a in inner)):
            return True
        return not any(_within(a, self.default_deny) for a in forms)


def _within(addr: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(addr.version == n.version and addr in n for n in networks)
