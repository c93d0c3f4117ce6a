"""Web origins (RFC 6454): the sites a clinic lets embed its calls, and
that the deployment trusts (``call_allowed_origins``).

An origin is ``scheme://host[:port]`` and nothing more: no path, query,
fragment, user name or wildcard. :func:`normalise` writes one as browsers
serialise the ``Origin`` request header (RFC 6454 section 6.2; the HTML
standard's "ASCII serialization of an origin"): scheme and host in lower
case, the scheme's default port left out, an international host name in
its ASCII (``xn--``) form, an IPv6 address compressed and in brackets. So a
stored origin and a request's ``Origin`` are compared as plain strings, and
the answer's ``Access-Control-Allow-Origin`` repeats the request's exactly
(the Fetch standard's CORS check).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["MAX_ORIGINS", "normalise", "normalise_all"]

#: Most origins one clinic lists: its sites and their staging copies, not a
#: way around the rule that each site is named.
MAX_ORIGINS = 20
#: Longest origin taken, as sent (a host name is at most 253 characters).
MAX_LENGTH = 300

_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def _host(host: str) -> str:
    if ":" in host:
        # urlsplit took the brackets off; a zone (%eth0) means nothing to
        # another machine, and ipaddress refuses anything else odd.
        if "%" in host:
            raise ValueError(f"{host!r}: an origin's address has no zone")
        return f"[{ipaddress.IPv6Address(host).compressed}]"
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{host!r} is not a host name") from None
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{host!r} is not a host name")
    if labels[-1].isdigit():
        # 10.1 or 1.2.3.300: browsers read these as IPv4 addresses (or
        # refuse them); never a name to list.
        raise ValueError(f"{host!r} is not a host name")
    return host


def normalise(text: str) -> str:
    """``text`` (an origin such as ``https://Clinic.example:443``) as browsers
    send it (``https://clinic.example``); ValueError saying why when it is
    not an http or https origin."""
    text = text.strip()
    if len(text) > MAX_LENGTH:
        raise ValueError(f"an origin has at most {MAX_LENGTH} characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} is not an origin (scheme://host[:port])") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not text.lower().startswith(f"{scheme}://"):
        raise ValueError(f"{text!r} is not an http:// or https:// origin")
    if "@" in parts.netloc:
        raise ValueError(f"{text!r}: an origin names no user")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(f"{text!r}: an origin has no path, query or fragment")
    if not parts.hostname or "*" in parts.netloc:
        raise ValueError(f"{text!r}: an origin names one host, without wildcards")
    if port == 0:
        raise ValueError(f"{text!r}: port 0 is no port")
    host = _host(parts.hostname)
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def normalise_all(texts: Iterable[str]) -> list[str]:
    """Each of ``texts`` normalised, in order, each once; ValueError for a
    bad one or for more than :data:`MAX_ORIGINS`."""
    seen: dict[str, None] = {}
    for text in texts:
        seen[normalise(text)] = None
    if len(seen) > MAX_ORIGINS:
        raise ValueError(f"at most {MAX_ORIGINS} origins")
    return list(seen)
