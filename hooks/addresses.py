"""Which webhook endpoints may be reached: the TURN relay's peer rules
(:mod:`turn.policy`, docs/security.md "TURN peer rules") applied to a URL's
host, on save and again on every connection.

A name is resolved, every address it resolves to is judged, and the
connection goes to an address that was judged: :class:`CheckedResolver` is
the aiohttp resolver of the deliverer's connector, so a name that resolved
to a public address when the endpoint was saved and to 169.254.169.254 now
(DNS rebinding) is refused at connect time, and no second lookup happens
between the check and the connect. An IP literal never reaches a resolver in
aiohttp, so :func:`check_url` judges it before every request too.

Refused by default: loopback, private, link-local (cloud metadata),
multicast and every other special-purpose block, in every IPv6 form that
embeds one of them (``::ffff:10.0.0.1``). ``webhooks_allow_networks``
exempts networks (tests, private deployments); it is empty unless set.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from hooks.errors import RefusedAddress
from turn.policy import PeerPolicy

__all__ = ["CheckedResolver", "check_url", "policy", "resolve_checked"]

MAX_URL = 2048


def policy(allow: Sequence[str] = ()) -> PeerPolicy:
    return PeerPolicy(allow=allow)


def _host(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an endpoint URL, or RefusedAddress."""
    if len(url) > MAX_URL:
        raise RefusedAddress("the URL is too long")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedAddress(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise RefusedAddress("an endpoint URL is http or https")
    if parts.username is not None or parts.password is not None:
        raise RefusedAddress("an endpoint URL carries no user or password")
    if parts.fragment:
        raise RefusedAddress("an endpoint URL has no fragment")
    host = parts.hostname or ""
    if not host:
        raise RefusedAddress("the URL has no host")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_url(url: str, rules: PeerPolicy) -> str | None:
    """Judge ``url``'s form and, when its host is an IP address, the address
    itself; return the host name still to resolve (None for a literal).
    Raises :class:`RefusedAddress`."""
    _scheme, host, _port = _host(url)
    if _literal(host):
        if not rules.allowed(host):
            raise RefusedAddress(f"{host} is a private or reserved address")
        return None
    return host


async def resolve_checked(url: str, rules: PeerPolicy, resolver: AbstractResolver) -> list[str]:
    """Every address ``url`` would connect to, each allowed by ``rules``
    (the check on save). Raises :class:`RefusedAddress`."""
    host = check_url(url, rules)
    if host is None:
        return [_host(url)[1]]
    _scheme, _host_name, port = _host(url)
    results = await _lookup(resolver, host, port)
    refused = [r["host"] for r in results if not rules.allowed(r["host"])]
    if refused:
        raise RefusedAddress(f"{host} resolves to a private or reserved address ({refused[0]})")
    return [r["host"] for r in results]


async def _lookup(resolver: AbstractResolver, host: str, port: int) -> list[ResolveResult]:
    try:
        results = await resolver.resolve(host, port, socket.AF_UNSPEC)
    except RefusedAddress:
        raise
    except (OSError, UnicodeError, ValueError) as exc:
        # UnicodeError: a label IDNA cannot encode; ValueError: a NUL in the name.
        raise RefusedAddress(f"{host} does not resolve: {exc}") from None
    if not results:
        raise RefusedAddress(f"{host} does not resolve")
    return results


class CheckedResolver(AbstractResolver):
    """An aiohttp resolver that answers only with allowed addresses, and
    refuses a name if any address it resolves to is refused (a name that
    mixes a public and a private address is an attack, not a fallback)."""

    def __init__(self, rules: PeerPolicy, inner: AbstractResolver | None = None) -> None:
        self.rules = rules
        self.inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self.inner is None:
            self.inner = ThreadedResolver()
        results = await _lookup(self.inner, host, port)
        refused = [r["host"] for r in results if not self.rules.allowed(r["host"])]
        if refused:
            raise RefusedAddress(f"{host} resolves to a private or reserved address ({refused[0]})")
        return results

    async def close(self) -> None:
        if self.inner is not None:
            await self.inner.close()
