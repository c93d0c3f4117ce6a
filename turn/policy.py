"""Which peers the relay may reach (RFC 8656 section 21.3, "Unauthorized peers").

A relay that forwards to any address lets anyone on the internet reach hosts
behind it: the cloud metadata service at 169.254.169.254, services on
loopback, the operator's private network. coturn only refuses loopback and
0.0.0.0 by default; we refuse every special-purpose range below unless an
operator lists the peer in ``allow_peers`` (which wins over the defaults, but
not over an explicit ``deny_peers``).

IPv6 forms that embed an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by
the IPv4 address inside as well, so ``::ffff:127.0.0.1`` is loopback too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_DENY = (
    "0.0.0.0/8",  # "this network" (RFC 1122)
    "10.0.0.0/8",  # private (RFC 1918)
    "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, including cloud metadata 169.254.169.254
    "172.16.0.0/12",  # private (RFC 1918)
    "192.0.0.0/24",  # IETF protocol assignments (RFC 6890)
    "192.168.0.0/16",  # private (RFC 1918)
    "198.18.0.0/15",  # benchmarking (RFC 2544)
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
    "::/128",  # unspecified
    "::1/128",  # loopback
    "100::/64",  # discard (RFC 6666)
    "fc00::/7",  # unique local (RFC 4193)
    "fe80::/10",  # link-local
    "fec0::/10",  # deprecated site-local
    "ff00::/8",  # multicast
)


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
        forms: list[IPAddress] = [addr]
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is not None:
                forms.append(addr.ipv4_mapped)
            if addr.sixtofour is not None:
                forms.append(addr.sixtofour)
            if addr in _NAT64:
                forms.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
        if any(_within(a, self.deny) for a in forms):
            return False
        if any(_within(a, self.allow) for a in forms):
            return True
        return not any(_within(a, self.default_deny) for a in forms)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _within(addr: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(addr.version == n.version and addr in n for n in networks)
