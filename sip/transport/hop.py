"""The hop between the bridge and its peer, as the Via header field records
it (RFC 3261 section 18, RFC 3581): where a request came from, where its
responses go, and what our own requests say about where we are.

* **Receiving a request** (section 18.2.1): the server transport adds
  ``received`` to the top Via when its sent-by is not the packet's source
  address, and fills ``rport`` with the source port when the client asked
  for it (RFC 3581 section 4, which also wants ``received`` then, even when
  it is the sent-by). :func:`stamp` does both, on the request the layers
  above then read, so that every response copies them back to the client.
* **Answering it** (section 18.2.2): over a stream, on the connection the
  request came on; over UDP to the ``received`` address (which is always
  the packet's source address here) at the port ``rport`` says, else the
  sent-by port, else 5060. With ``rport`` that is the source IP and port,
  the address a NAT opened for the client, which is what makes a phone
  behind one reachable. ``maddr`` (multicast responses) is not honoured:
  a trunk never asks for it and a server that sends where a peer's header
  says is a reflector.
* **Sending one** (section 18.1.1, 8.1.1.7): our Via names the transport
  and our sent-by, carries a fresh branch and asks for ``rport``.

Pure functions on messages and addresses; the endpoint does the I/O.
"""

from __future__ import annotations

import ipaddress

from sip.wire.fields import Via
from sip.wire.grammar import split_outside
from sip.wire.headers import Headers
from sip.wire.message import Request
from sip.wire.transactions import new_branch

__all__ = ["DEFAULT_PORT", "Address", "describe", "local_via", "stamp"]

Address = tuple[str, int]

#: The port a sent-by without one means (RFC 3261 section 18.2.2, 19.1.2).
DEFAULT_PORT = 5060


def _same_address(host: str, ip: str) -> bool:
    # A sent-by that is a name, or the same address spelt another way
    # ("::1" and "0:0::1"), is compared as an address when it is one.
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(ip)
    except ValueError:
        return False


def stamp(request: Request, source: Address, reliable: bool) -> Address:
    """Add ``received`` and ``rport`` to ``request``'s top Via in place
    (RFC 3261 section 18.2.1, RFC 3581 section 4) and return the address its
    responses go to (section 18.2.2, RFC 3581 section 4): ``source`` over a
    stream (the connection), the source IP and the Via's port over UDP.

    ``request`` came out of :func:`sip.wire.message.parse`, so it has a Via
    and every Via parses.
    """
    ip, port = source
    fields = request.headers.items()
    at = next(i for i, (name, _) in enumerate(fields) if name == "Via")
    hops = split_outside(fields[at][1], ",")
    top = Via.parse(hops[0])
    stamped = top
    if top.asks_rport:
        stamped = stamped.with_param("received", ip).with_param("rport", str(port))
    elif not _same_address(top.host, ip):
        stamped = stamped.with_param("received", ip)
    if stamped is not top:
        hops[0] = str(stamped)
        fields[at] = ("Via", ",".join(hops))
        request.headers = Headers(fields)
    if reliable or top.asks_rport:
        return source
    return ip, top.port or DEFAULT_PORT


def local_via(transport: str, host: str, port: int) -> str:
    """The Via of a request the bridge sends (RFC 3261 section 18.1.1,
    8.1.1.7; RFC 3581 section 3): our sent-by, ``transport`` (``UDP`` or
    ``TCP``), a fresh branch, and ``rport`` asked for."""
    return str(Via(transport, host, port, {"branch": new_branch(), "rport": None}))


def describe(data: bytes) -> tuple[bool, str]:
    """What a message's start line says, for counting: ``(True, method)``
    for a request, ``(False, "2xx")`` for a response. Read from the bytes
    alone (the endpoint counts what it sends as bytes, retransmissions and
    the user agent's raw 2xx repeats included); never raises."""
    if data[:4] == b"SIP/":
        status = data[8:9]
        return False, (status.decode("ascii", "replace") + "xx") if status.isdigit() else "other"
    method = data[: data.find(b" ", 0, 32)] if b" " in data[:32] else b""
    return True, method.decode("ascii", "replace") if method.isalpha() else "other"
