"""Typed values of the header fields the transaction and dialog layers read:
addresses (From, To, Contact, Route: RFC 3261 section 20.10 and 25.1),
Via (section 20.42) and CSeq (section 20.16).

Each is a frozen dataclass with ``parse(text)`` and ``__str__``, and
``parse(str(value)) == value``. Their text is one header value as
:class:`sip.wire.headers.Headers` hands it out, folding already undone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from sip.errors import SipParseError
from sip.wire.grammar import (
    LWS,
    format_params,
    has_control,
    is_digits,
    is_token,
    parse_params,
    quote_display,
    read_quoted,
    shorten,
    split_outside,
)
from sip.wire.uri import SipUri, format_host, parse_hostport

__all__ = ["CSeq", "NameAddr", "Via", "parse_via"]

_LWS_RUN = re.compile(r"[ \t]+")
_TRANSPORT = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def _check_text(text: str, what: str) -> str:
    text = text.strip(LWS)
    if not text:
        raise SipParseError(f"empty {what}")
    if has_control(text):
        raise SipParseError(f"control character in {what}")
    return text


@dataclass(frozen=True, slots=True)
class NameAddr:
    """An address with its header parameters: From, To, Contact, Route,
    Record-Route, Reply-To (RFC 3261 section 20.10, name-addr / addr-spec).

    Both ``"Name" <sip:a@b>;tag=x`` and the bare ``sip:a@b;tag=x`` are read;
    in the bare form every parameter after the URI belongs to the header
    (section 20.10), so the URI itself has none. ``display`` is the display
    name unquoted and unescaped, ``""`` when there is none. Written back, the
    URI always goes in angle brackets and a display name in quotes.
    A Contact of ``*`` (RFC 3261 section 10.2.2) is no address: the
    registrar checks for it before reading the others.
    """

    display: str
    uri: SipUri
    params: dict[str, str | None] = field(default_factory=dict, hash=False)

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter of From and To (RFC 3261 section 19.3)."""
        return self.params.get("tag")

    def with_tag(self, tag: str) -> NameAddr:
        """A copy with ``tag`` set, as a UAS's To gets one (RFC 3261 section 8.2.6.2)."""
        return replace(self, params={**self.params, "tag": tag})

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        """Read one address (RFC 3261 section 25.1, from-spec / to-param /
        contact-param / route-param)."""
        text = _check_text(text, "address")
        if text.startswith('"'):
            display, end = read_quoted(text, 0)
            rest = text[end:].lstrip(LWS)
            if not rest.startswith("<"):
                raise SipParseError(f"display name without <URI> {shorten(text)}")
            return cls._angled(display, rest)
        angle, semi = text.find("<"), text.find(";")
        if angle >= 0 and (semi < 0 or angle < semi):
            display = text[:angle].strip(LWS)
            # An unquoted display name is tokens and white space (RFC 3261
            # section 25.1): "Bell, Alexander <...>" is refused (RFC 4475 3.1.2.15).
            if display and not all(is_token(word) for word in _LWS_RUN.split(display)):
                raise SipParseError(f"display name needs quotes {shorten(display)}")
            return cls._angled(display, text[angle:])
        spec, semi_found, params = text.partition(";")
        spec = spec.rstrip(LWS)
        # A URI with ',', '?' or ';' must be in angle brackets (RFC 3261
        # section 20.10); a bare one with them is malformed (RFC 4475 3.1.2.13).
        if any(ch in spec for ch in ",? \t"):
            raise SipParseError(f"address needs <...> {shorten(text)}")
        return cls("", SipUri.parse(spec), parse_params(params) if semi_found else {})

    @classmethod
    def _angled(cls, display: str, text: str) -> NameAddr:
        close = text.find(">")
        if close < 0:
            raise SipParseError(f"unclosed < in address {shorten(text)}")
        spec = text[1:close]
        # No white space inside the brackets (RFC 3261 section 25.1, LAQUOT
        # and RAQUOT; RFC 4475 section 3.1.2.14).
        if " " in spec or "\t" in spec:
            raise SipParseError(f"white space inside <...> {shorten(spec)}")
        uri = SipUri.parse(spec)
        rest = text[close + 1 :].lstrip(LWS)
        if not rest:
            return cls(display, uri)
        if not rest.startswith(";"):
            raise SipParseError(f"text after <URI> {shorten(rest)}")
        return cls(display, uri, parse_params(rest[1:]))

    def __str__(self) -> str:
        display = quote_display(self.display) + " " if self.display else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"


@dataclass(frozen=True, slots=True)
class Via:
    """One hop of a Via header field (RFC 3261 section 20.42, via-parm).

    The protocol is always SIP/2.0; ``transport`` is kept in upper case
    (``UDP``, ``TCP``, ``TLS``, ``WS``...), ``host`` as written, an IPv6
    address without brackets.
    """

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict, hash=False)

    @property
    def branch(self) -> str | None:
        """The transaction's branch (RFC 3261 section 8.1.1.7)."""
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        """The address the hop's request came from (RFC 3261 section 18.2.1)."""
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The port the hop's request came from, once a server filled it in
        (RFC 3581 section 4); None while it is absent or only asked for."""
        value = self.params.get("rport")
        return None if value is None else int(value)

    @property
    def asks_rport(self) -> bool:
        """Whether the client asked for ``rport`` (RFC 3581 section 3)."""
        return "rport" in self.params

    def with_param(self, name: str, value: str | None) -> Via:
        """A copy with one parameter set, as a server adds ``received`` and
        ``rport`` (RFC 3261 section 18.2.1, RFC 3581 section 4)."""
        return replace(self, params={**self.params, name.lower(): value})

    @classmethod
    def parse(cls, text: str) -> Via:
        """Read one via-parm (RFC 3261 section 25.1): ``SIP / 2.0 / UDP
        host:port;params``, white space allowed around ``/``, ``:`` and ``;``
        (RFC 4475 section 3.1.1.1)."""
        text = _check_text(text, "Via")
        head, semi, params = text.partition(";")
        parts = head.split("/", 2)
        if len(parts) != 3 or parts[0].strip(LWS).upper() != "SIP" or parts[1].strip(LWS) != "2.0":
            raise SipParseError(f"Via is not SIP/2.0 {shorten(text)}")
        rest = parts[2].lstrip(LWS)
        match = _TRANSPORT.match(rest)
        if match is None or match.end() == len(rest) or rest[match.end()] not in LWS:
            raise SipParseError(f"bad Via transport or sent-by {shorten(text)}")
        host, port = _sent_by(rest[match.end() :].strip(LWS))
        parsed = parse_params(params) if semi else {}
        rport = parsed.get("rport")
        if rport is not None and (not is_digits(rport, 5) or int(rport) > 65535):
            raise SipParseError(f"bad Via rport {shorten(rport)}")
        return cls(match.group().upper(), host, port, parsed)

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        params = format_params(self.params)
        return f"SIP/2.0/{self.transport} {format_host(self.host)}{port}{params}"


def _sent_by(text: str) -> tuple[str, int | None]:
    # sent-by = host [ COLON port ], and COLON = SWS ":" SWS: the white
    # space goes before the host and port are read.
    colon = text.rfind(":") if not text.startswith("[") else text.find(":", text.find("]"))
    if colon >= 0:
        text = text[:colon].rstrip(LWS) + ":" + text[colon + 1 :].lstrip(LWS)
    return parse_hostport(text)


def parse_via(text: str) -> list[Via]:
    """Every hop of one Via header value, in order: several may share one
    field, comma-separated (RFC 3261 section 7.3.1, 20.42)."""
    return [Via.parse(item) for item in split_outside(text, ",")]


@dataclass(frozen=True, slots=True)
class CSeq:
    """The CSeq header field (RFC 3261 section 20.16): a sequence number
    below 2**31 (section 8.1.1.5) and the request's method."""

    seq: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = _LWS_RUN.split(text.strip(LWS))
        if len(parts) != 2 or not is_digits(parts[0], 10) or not is_token(parts[1]):
            raise SipParseError(f"bad CSeq {shorten(text)}")
        seq = int(parts[0])
        if seq >= 2**31:
            raise SipParseError("CSeq number is 2**31 or more")
        return cls(seq, parts[1])

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"
