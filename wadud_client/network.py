"""Where a Wadud server is and how this client reaches it: the WebSocket URL
of a server or join link, the TURN relays of a transport, loopback host
candidates for a server on the same machine, and, for a process that runs
many clients, receive buffers and consent freshness that a late loop keeps.

Consent (:func:`keep_consent`): aioice checks consent every
``CONSENT_INTERVAL`` (5 s) with one STUN request that fails unless its
answer is read within 0.5 s, and closes the connection after
``CONSENT_FAILURES`` (6) such failures in a row. A client whose event loop
runs more than half a second late for half a minute (many participants in
one process, a busy phone bridge) so drops a path that answers every
check: beside eight CPU burners, every aiortc connection of
tests/signalling/test_region_cut.py's client host closed 33 to 35 s after
it connected, and its media started over. RFC 7675 (section 5.1) has
consent expire 30 s after the last answer to any check. Here each check
waits for its answer (retransmitted as STUN does, RFC 8489 section 6.2.1)
while the next ones go out, and the connection closes once nothing answered
for ``CONSENT_INTERVAL * CONSENT_FAILURES``: aioice's own figures, read each
time, so a dead path is still noticed within the same 30 s (and a test that
shortens them still shortens this).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

__all__ = [
    "allow_loopback_candidates",
    "keep_consent",
    "relay_servers",
    "widen_receive_buffer",
    "widen_receive_buffers",
    "ws_url",
]

log = logging.getLogger(__name__)

#: STUN retransmissions of a consent check (aioice's RTO of 0.5 s, doubled
#: each time): an answer read up to 7.5 s after the check still counts.
CONSENT_RETRANSMISSIONS = 3

#: The aioice connections whose consent is :func:`keep_consent`'s already.
_kept: weakref.WeakSet[Any] = weakref.WeakSet()

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


def keep_consent(pc: Any) -> None:
    """Take consent over on each of ``pc``'s ICE connections that started
    aioice's own (its ICE completed); the others are left as they are."""
    for connection in _connections(pc):
        task = getattr(connection, "_query_consent_task", None)
        if task is None or task.done() or connection in _kept:
            continue
        task.cancel()
        _kept.add(connection)
        # Where aioice keeps its own: its close() cancels and awaits ours.
        connection._query_consent_task = asyncio.create_task(_consent(connection), name="consent")


def _connections(pc: Any) -> list[Any]:
    """The aioice connections under ``pc``'s transceivers (one when bundled)."""
    found: list[Any] = []
    for transceiver in pc.getTransceivers():
        for end in (transceiver.sender, transceiver.receiver):
            ice = getattr(getattr(end, "transport", None), "transport", None)
            connection = getattr(ice, "_connection", None)
            if connection is not None and connection not in found:
                found.append(connection)
    return found


async def _consent(connection: Any) -> None:
    import aioice.ice
    from aioice import stun

    loop = asyncio.get_running_loop()
    # ICE has just completed: its last check was answered now.
    answered = loop.time()
    checks: set[asyncio.Task[None]] = set()
    #: How the checks since the last answer ended, for the log at expiry.
    missed: Counter[str] = Counter()

    async def check(pair: Any) -> None:
        nonlocal answered
        request = connection.build_request(pair, nominate=False)
        try:
            await pair.protocol.request(
                request,
                pair.remote_addr,
                integrity_key=connection.remote_password.encode("utf8"),
                retransmissions=CONSENT_RETRANSMISSIONS,
            )
        except stun.TransactionFailed as exc:
            # An error answer is no consent (RFC 7675 section 5.1).
            missed[f"error {exc.response.error_code}"] += 1
            return
        except (stun.TransactionError, ConnectionError, OSError) as exc:
            missed[type(exc).__name__] += 1
            return
        answered = max(answered, loop.time())
        missed.clear()

    try:
        while True:
            interval = aioice.ice.CONSENT_INTERVAL
            # Randomized as aioice does (and RFC 7675 section 5.1 asks).
            await asyncio.sleep(interval * (0.8 + 0.4 * random.random()))
            silent = loop.time() - answered
            if silent >= interval * aioice.ice.CONSENT_FAILURES:
                log.info(
                    "consent to send expired: no answer for %.1f s from %s (%s)",
                    silent,
                    [pair.remote_addr for pair in connection._nominated.values()],
                    ", ".join(f"{n} {why}" for why, n in missed.items()) or "no check ended",
                )
                connection._query_consent_task = None
                await connection.close()
                return
            for pair in list(connection._nominated.values()):
                task = asyncio.create_task(check(pair))
                checks.add(task)
                task.add_done_callback(checks.discard)
    finally:
        for task in list(checks):
            task.cancel()
