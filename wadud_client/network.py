"""Where a Wadud server is and how this client reaches it: the WebSocket URL
of a server or join link, the TURN relays of a transport, loopback host
candidates for a server on the same machine, and receive buffers for a
process that runs many clients."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

__all__ = [
    "allow_loopback_candidates",
    "relay_servers",
    "widen_receive_buffer",
    "widen_receive_buffers",
    "ws_url",
]

#: Linux's SO_RCVBUFFORCE (not in Python's socket module): a receive buffer
#: past net.core.rmem_max, for a process with CAP_NET_ADMIN.
SO_RCVBUFFORCE = 33


def ws_url(url: str) -> tuple[str, str | None, str | None]:
    """The WebSocket URL of a server, and the token and room if ``url`` is a
    join link (``https://host/call/ROOM?token=...``). ``url`` may also be
    the server's base URL or its ``/ws`` URL, over http(s) or ws(s)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"not an http(s) or ws(s) URL: {url}")
    query = parse_qs(parts.query)
    token = query.get("token", [None])[0]
    room = query.get("room", [None])[0]
    path = parts.path.rstrip("/")
    if path.startswith("/call/"):
        room = room or path[len("/call/") :].split("/")[0] or None
        path = ""
    if not path.endswith("/ws"):
        path += "/ws"
    return urlunsplit((scheme, parts.netloc, path, "", "")), token, room


def allow_loopback_candidates() -> None:
    """Make aioice offer 127.0.0.1 as a host candidate (it leaves loopback out,
    so a client cannot otherwise reach a server on the same machine). This
    changes aioice for the whole process; tests prefer ``monkeypatch``."""
    import aioice.ice

    original = aioice.ice.get_host_addresses

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        found = list(original(use_ipv4=use_ipv4, use_ipv6=use_ipv6))
        if use_ipv4 and "127.0.0.1" not in found:
            found.append("127.0.0.1")
        return found

    aioice.ice.get_host_addresses = with_loopback


def widen_receive_buffer(sock: socket.socket, size: int) -> None:
    """Give ``sock`` a receive buffer of ``size`` bytes: past
    net.core.rmem_max where the process may (SO_RCVBUFFORCE, with
    CAP_NET_ADMIN), else as far as that allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def widen_receive_buffers(size: int = 8 << 20) -> Callable[[], None]:
    """Give each UDP socket aioice gathers from now on a receive buffer of
    ``size`` bytes (aioice asks for 256 KB; :func:`widen_receive_buffer`);
    returns what undoes it.

    For a process that runs many clients (a test, a benchmark): where each
    stands for a phone with a CPU of its own, one process here reads all
    their sockets, and a busy one reads none for a second or more. A socket
    whose buffer fills drops what arrives, which its client reads as the
    server losing media (NACKs, keyframe requests, failed connections).
    This changes aioice for the whole process."""
    import aioice.ice

    gather = aioice.ice.Connection.gather_candidates

    async def gather_wide(self: aioice.ice.Connection) -> None:
        await gather(self)
        for protocol in self._protocols:
            sock = protocol.transport.get_extra_info("socket")
            if sock is not None:
                widen_receive_buffer(sock, size)

    def undo() -> None:
        aioice.ice.Connection.gather_candidates = gather  # type: ignore[method-assign]

    aioice.ice.Connection.gather_candidates = gather_wide  # type: ignore[method-assign]
    return undo


def relay_servers(
    servers: Sequence[Mapping[str, Any]], transport: Literal["udp", "tcp", "tls"]
) -> list[dict[str, Any]]:
    """The ICE servers with only their TURN URLs over ``transport`` (RFC 7065:
    ``turns:`` is TLS, ``turn:`` is UDP unless ``?transport=tcp``)."""

    def keep(url: str) -> bool:
        if url.startswith("turns:"):
            return transport == "tls"
        if not url.startswith("turn:"):
            return False
        named = parse_qs(urlsplit(url).query).get("transport", ["udp"])[0]
        return named == transport

    out = []
    for s in servers:
        urls = [u for u in ([s["urls"]] if isinstance(s["urls"], str) else s["urls"]) if keep(u)]
        if urls:
            out.append({**s, "urls": urls})
    return out
