"""SIP messages (RFC 3261) as a trunk's datagram or TCP stream reaches the
phone bridge (sip/wire/).

The bytes are read as a datagram; what parses must write bytes that parse
to the same message, and give that message back out of a stream framer
however the bytes are cut. Every header value a layer above reads is put
through its typed parser, and what parses must parse again from its own
text; digest credentials are read and checked. The raw bytes also go
through a framer in two pieces. A parser may
raise :class:`SipParseError` and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

from fuzz import Finding
from sip.errors import SipParseError
from sip.wire.digest import parse_credentials, verify
from sip.wire.fields import CSeq, NameAddr, Via
from sip.wire.framing import StreamFramer, is_keepalive
from sip.wire.message import Request, Response, parse
from sip.wire.uri import SipUri

# The header fields whose every element is an address (RFC 3261 section 20).
_ADDRESSES = (
    "To", "From", "Contact", "Route", "Record-Route", "Reply-To", "Refer-To", "Referred-By",
    "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Service-Route",
)  # fmt: skip
_TYPED: tuple[tuple[tuple[str, ...], Callable[[str], object]], ...] = (
    (_ADDRESSES, NameAddr.parse),
    (("Via",), Via.parse),
    (("CSeq",), CSeq.parse),
)


def check(data: bytes) -> None:
    is_keepalive(data)
    _frame(data, len(data) // 3)
    try:
        message = parse(data)
    except SipParseError:
        return
    wire = bytes(message)
    if parse(wire) != message:
        raise Finding("a message does not parse back from its own bytes")
    if isinstance(message, Request):
        _stable(SipUri.parse, message.uri)
    for names, parser in _TYPED:
        for name in names:
            for value in message.headers.get_all(name):
                _stable(parser, value)
    for name in ("Authorization", "Proxy-Authorization"):
        for value in message.headers.get_all(name):
            _credentials(value)
    if _frame(wire, len(data) % (len(wire) + 1)) != [message]:
        raise Finding("a stream framer reads a message's bytes otherwise than parse")


def _stable(parser: Callable[[str], object], text: str) -> None:
    try:
        value = parser(text)
    except SipParseError:
        return
    if parser(str(value)) != value:
        raise Finding(f"{parser.__qualname__} does not read back its own text")


def _credentials(text: str) -> None:
    """A digest credential either refused or checkable (no other error)."""
    try:
        credentials = parse_credentials(text)
    except SipParseError:
        return
    verify(credentials, "INVITE", "password")


def _frame(data: bytes, cut: int) -> list[Request | Response] | None:
    framer = StreamFramer()
    try:
        return framer.feed(data[:cut]) + framer.feed(data[cut:])
    except SipParseError:
        return None
