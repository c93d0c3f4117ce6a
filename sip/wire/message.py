"""SIP requests and responses as bytes (RFC 3261 section 7).

:func:`parse` reads one datagram; :class:`sip.wire.framing.StreamFramer`
cuts a TCP or TLS stream into heads and bodies and reads each with
:func:`parse_head`. Whatever comes back has passed the checks every layer
above relies on, so they need not repeat them: a SIP/2.0 start line, a
Request-URI that parses, one To, From, Call-ID and CSeq each, at least one
Via, every Via and both addresses readable with the typed parsers
(:class:`sip.wire.fields.Via`, :class:`sip.wire.fields.NameAddr`), and a
request's CSeq naming its method (section 8.1.1). Anything else raises
:class:`sip.errors.SipParseError` carrying the status a request that broke
it is answered with, and no other exception ever comes out.

Content-Length describes the framing, not the message: it is read and
dropped, and :meth:`Request.__bytes__` writes it from the body. So a
message built here survives a trip to bytes and back unchanged.

Only the head is decoded (as UTF-8, section 7.3.1's TEXT-UTF8); the body is
bytes for whoever understands its Content-Type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sip.errors import SipBuildError, SipParseError
from sip.wire.fields import CSeq, NameAddr, Via, parse_via
from sip.wire.grammar import has_control, is_digits, is_token, shorten
from sip.wire.headers import MAX_HEADERS, Headers, canonical_name
from sip.wire.uri import SipUri

__all__ = [
    "MAX_HEADERS",
    "MAX_MESSAGE",
    "REASONS",
    "CSeq",
    "Headers",
    "NameAddr",
    "Request",
    "Response",
    "SipUri",
    "Via",
    "canonical_name",
    "parse",
    "parse_head",
    "parse_via",
    "response_to",
]

#: The largest message read, head and body (the IPv4 limit of a UDP
#: datagram's payload, and far past any SIP over TCP a trunk sends): more is
#: answered 413 (RFC 3261 section 21.4.11) or, on a stream, ends the connection.
MAX_MESSAGE = 65535

#: Reason phrases of the codes the bridge sends (RFC 3261 section 21,
#: RFC 3262 and RFC 3265/6665 for 183 and 202).
REASONS = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
    513: "Message Too Large",
    603: "Decline",
}
# For a code not in the table, the name of its class (RFC 3261 section 21).
_CLASS_REASONS = {
    1: "Provisional",
    2: "Success",
    3: "Redirection",
    4: "Client Error",
    5: "Server Error",
    6: "Global Failure",
}

VERSION = "SIP/2.0"
_VERSION = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
# The fields a message may carry at most once (RFC 3261 section 7.3.1:
# only list fields may repeat), of those this layer reads.
_SINGLE = frozenset(("To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Length"))
# The fields every message must have (RFC 3261 section 8.1.1), Via aside:
# Max-Forwards is only a SHOULD for a UAS to insist on.
_MANDATORY = ("To", "From", "Call-ID", "CSeq")
_HEAD_END = b"\r\n\r\n"


@dataclass
class Request:
    """A SIP request (RFC 3261 section 7.1). ``headers`` never holds
    Content-Length: the body's length is written in its place."""

    method: str
    uri: str
    headers: Headers
    body: bytes = b""

    def __bytes__(self) -> bytes:
        if not is_token(self.method):
            raise SipBuildError(f"method {self.method!r} is not a token")
        if not self.uri or has_control(self.uri) or " " in self.uri or "\t" in self.uri:
            raise SipBuildError(f"Request-URI {self.uri!r} has white space or a control character")
        return _serialise(f"{self.method} {self.uri} {VERSION}", self.headers, self.body)


@dataclass
class Response:
    """A SIP response (RFC 3261 section 7.2); ``headers`` as for :class:`Request`."""

    status: int
    reason: str
    headers: Headers
    body: bytes = b""

    def __bytes__(self) -> bytes:
        if not 100 <= self.status <= 699:
            raise SipBuildError(f"status {self.status} is not 100 to 699")
        if has_control(self.reason):
            raise SipBuildError("reason phrase has a control character")
        return _serialise(f"{VERSION} {self.status} {self.reason}", self.headers, self.body)


def _serialise(start: str, headers: Headers, body: bytes) -> bytes:
    if "Content-Length" in headers:
        headers = headers.copy()
        headers.remove("Content-Length")
    head = f"{start}\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
    return head.encode("utf-8") + body


def parse(data: bytes) -> Request | Response:
    """Read one message from a datagram (RFC 3261 section 7, 18.3).

    Without Content-Length the body runs to the end of the datagram; with
    it, octets past it are dropped and a body shorter than it is an error
    (section 18.3).
    """
    if len(data) > MAX_MESSAGE:
        raise SipParseError("message too large", 413)
    end = data.find(_HEAD_END)
    if end < 0:
        raise SipParseError("no blank line after the header fields")
    message, length = parse_head(data[:end])
    body = data[end + 4 :]
    if length is not None:
        if len(body) < length:
            raise SipParseError("body shorter than Content-Length")
        body = body[:length]
    message.body = bytes(body)
    return message


def parse_head(head: bytes) -> tuple[Request | Response, int | None]:
    """Read a start line and header fields (``head`` ends before the blank
    line) into a message with no body yet, and its Content-Length, or None
    when it has none (RFC 3261 section 7, 20.14)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("header is not UTF-8") from None
    start, crlf, rest = text.partition("\r\n")
    if has_control(start):
        raise SipParseError("control character in the start line")
    headers = Headers.parse(rest) if crlf else Headers()
    message: Request | Response
    if start[:4].upper() == "SIP/":
        message = _status_line(start, headers)
    else:
        message = _request_line(start, headers)
    length = _check_headers(message)
    headers.remove("Content-Length")
    return message, length


def _check_version(version: str) -> None:
    # The version is case-insensitive (RFC 3261 section 7.1); another one
    # that is well formed is answered 505 (section 8.2.2, RFC 4475 3.1.2.16).
    if version.upper() != VERSION:
        if _VERSION.fullmatch(version):
            raise SipParseError(f"SIP version {shorten(version)}", 505)
        raise SipParseError(f"bad SIP version {shorten(version)}")


def _request_line(line: str, headers: Headers) -> Request:
    # Request-Line = Method SP Request-URI SP SIP-Version: one SP each, none
    # at the end (RFC 4475 sections 3.1.2.8 to 3.1.2.10).
    parts = line.split(" ")
    if len(parts) != 3:
        raise SipParseError(f"bad request line {shorten(line)}")
    method, uri, version = parts
    _check_version(version)
    if not is_token(method):
        raise SipParseError(f"bad method {shorten(method)}")
    # A SIP Request-URI may not carry headers (RFC 3261 section 19.1.1's
    # table, RFC 4475 section 3.1.2.11); <...> around it fails the scheme.
    if SipUri.parse(uri).headers:
        raise SipParseError("headers in the Request-URI")
    return Request(method, uri, headers)


def _status_line(line: str, headers: Headers) -> Response:
    # Status-Line = SIP-Version SP Status-Code SP Reason-Phrase; a missing
    # reason (and its SP) is taken, as it costs nothing to read.
    version, _, rest = line.partition(" ")
    _check_version(version)
    code, _, reason = rest.partition(" ")
    if not is_digits(code, 3) or len(code) != 3 or not "100" <= code <= "699":
        raise SipParseError(f"bad status code {shorten(code)}")
    return Response(int(code), reason, headers)


def _check_headers(message: Request | Response) -> int | None:
    """The header checks of the module's docstring; the Content-Length."""
    headers = message.headers
    # One pass for the fields that may appear once, rather than one per name.
    found: dict[str, str] = {}
    for name, value in headers.items():
        if name in _SINGLE:
            if name in found:
                raise SipParseError(f"more than one {name}")
            found[name] = value
    for name in _MANDATORY:
        if name not in found:
            raise SipParseError(f"no {name}")
    NameAddr.parse(found["To"])
    NameAddr.parse(found["From"])
    call_id = found["Call-ID"]
    if not call_id or " " in call_id or "\t" in call_id:
        raise SipParseError("bad Call-ID")
    cseq = CSeq.parse(found["CSeq"])
    if isinstance(message, Request) and cseq.method != message.method:
        # RFC 4475 sections 3.1.2.17 and 3.1.2.18.
        raise SipParseError("CSeq method differs from the request's")
    vias = headers.get_all("Via")
    if not vias:
        raise SipParseError("no Via")
    for via in vias:
        Via.parse(via)
    hops = found.get("Max-Forwards")
    if hops is not None and (not is_digits(hops, 10) or int(hops) > 255):
        raise SipParseError("bad Max-Forwards")
    length = found.get("Content-Length")
    if length is None:
        return None
    # Ten digits is past MAX_MESSAGE already, and keeps int() off a huge
    # number (RFC 4475 section 3.1.2.4).
    if not is_digits(length, 10):
        raise SipParseError(f"bad Content-Length {shorten(length)}")
    return int(length)


def response_to(
    request: Request, status: int, reason: str | None = None, *, to_tag: str | None = None
) -> Response:
    """The response a UAS sends to ``request`` (RFC 3261 section 8.2.6):
    every Via in order, From, To, Call-ID and CSeq copied, ``to_tag`` added
    to a To that has no tag yet (section 8.2.6.2), and the Timestamp copied
    into a 100 (section 8.2.6.1). ``reason`` defaults to :data:`REASONS`."""
    if not 100 <= status <= 699:
        raise SipBuildError(f"status {status} is not 100 to 699")
    if to_tag is not None and not is_token(to_tag):
        raise SipBuildError(f"to_tag {to_tag!r} is not a token")
    if reason is None:
        reason = REASONS.get(status) or _CLASS_REASONS[status // 100]
    headers = Headers()
    for name, value in request.headers.items():
        if name in ("Via", "From", "Call-ID", "CSeq") or (name == "Timestamp" and status == 100):
            headers.add(name, value)
        elif name == "To":
            # The tag goes on the text as received, which the UAC compares
            # with what it sent; only its parameters grow.
            if to_tag is not None and NameAddr.parse(value).tag is None:
                value = f"{value};tag={to_tag}"
            headers.add(name, value)
    return Response(status, reason, headers)
