"""SIP and SIPS URIs (RFC 3261 section 19.1), tel URIs (RFC 3966) minimally,
and any other scheme carried opaque.

A :class:`SipUri` holds its user, password, parameters and headers
unescaped (``sip:I%20have%20spaces@host`` has the user ``"I have spaces"``),
which is what comparing them wants (RFC 3261 section 19.1.4), and
:meth:`SipUri.__str__` escapes again whatever each part may not carry bare
(section 25.1). An escape that is not UTF-8 survives as a surrogate
(Python's ``surrogateescape``), so writing the URI gives back its bytes.
Parameter names are case-insensitive and kept in lower case; the host is
kept as written, and an IPv6 reference without its brackets.

A tel URI (RFC 3966 section 3) puts its number in ``user`` and leaves
``host`` empty. Any other scheme (``http:``, ``urn:``, RFC 4475 section
3.3.4's unknown ones) keeps everything after the colon in ``user``, as
written: the bridge routes on SIP URIs only, but must read and answer a
message that names others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from sip.errors import SipParseError
from sip.wire.grammar import is_digits, shorten

__all__ = ["SipUri"]

_UNRESERVED = "-_.!~*'()"


def _component(extra: str, *, empty: bool = False) -> re.Pattern[str]:
    # unreserved / escaped / the component's own extra characters (RFC 3261
    # section 25.1). The class has no "%", so the two alternatives are disjoint.
    chars = re.escape(_UNRESERVED + extra)
    return re.compile(rf"(?:[A-Za-z0-9{chars}]|%[0-9A-Fa-f]{{2}})" + ("*" if empty else "+"))


# What each part may carry unescaped, beyond alphanumerics and "_.-~"
# (which urllib.parse.quote never escapes): RFC 3261 section 25.1.
_USER_SAFE = "!*'()&=+$,;?/"
_PASSWORD_SAFE = "!*'()&=+$,"
_PARAM_SAFE = "!*'()[]/:&+$"
_HEADER_SAFE = "!*'()[]/?:+$"
# A tel number's visual separators and '+' (RFC 3966 section 3), never ';'
# or '?', which would start its parameters.
_TEL_SAFE = "!*'()&=+$,/:"

_USER = _component("&=+$,;?/")
_PASSWORD = _component("&=+$,")
_PARAM = _component("[]/:&+$")
_HEADER_NAME = _component("[]/?:+$")
_HEADER_VALUE = _component("[]/?:+$", empty=True)
_TEL = _component("&=+$,/:")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# RFC 3261 allows only letters, digits, '-' and '.' in a hostname; real
# equipment puts '_' in them too, which costs nothing to accept.
_HOST = re.compile(r"[A-Za-z0-9\-._]+")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")
# uric (RFC 2396 section 2): what an opaque URI of another scheme may hold.
_OPAQUE = re.compile(r"[A-Za-z0-9\-_.!~*'()%;/?:@&=+$,\[\]#]+")


def _unescape(raw: str, pattern: re.Pattern[str], what: str) -> str:
    if pattern.fullmatch(raw) is None:
        raise SipParseError(f"bad URI {what} {shorten(raw)}")
    if "%" not in raw:
        return raw
    return unquote(raw, encoding="utf-8", errors="surrogateescape")


def _escape(value: str, safe: str) -> str:
    return quote(value, safe=safe, encoding="utf-8", errors="surrogateescape")


def format_host(host: str) -> str:
    """``host`` as a URI or Via writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def parse_hostport(text: str) -> tuple[str, int | None]:
    """``host [":" port]`` (RFC 3261 section 25.1, hostport), the host of an
    IPv6 reference without its brackets."""
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[1:end], text[end + 1 :]
        if end < 0 or _IPV6.fullmatch(host) is None:
            raise SipParseError(f"bad IPv6 reference {shorten(text)}")
    else:
        colon = text.find(":")
        host, rest = (text, "") if colon < 0 else (text[:colon], text[colon:])
        if _HOST.fullmatch(host) is None:
            raise SipParseError(f"bad host {shorten(text)}")
    if not rest:
        return host, None
    port = rest[1:]
    if rest[0] != ":" or not is_digits(port, 5) or int(port) > 65535:
        raise SipParseError(f"bad port {shorten(text)}")
    return host, int(port)


def _parse_uri_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in text.split(";"):
        name, equals, value = item.partition("=")
        key = _unescape(name, _PARAM, "parameter").lower()
        params[key] = _unescape(value, _PARAM, "parameter") if equals else None
    return params


def _parse_uri_headers(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in text.split("&"):
        name, equals, value = item.partition("=")
        if not equals:
            raise SipParseError(f"URI header without a value {shorten(item)}")
        headers[_unescape(name, _HEADER_NAME, "header")] = _unescape(value, _HEADER_VALUE, "header")
    return headers


@dataclass(frozen=True, slots=True)
class SipUri:
    """A SIP, SIPS or tel URI (RFC 3261 section 19.1.1, RFC 3966 section 3).

    ``user`` is None when the URI has no user part; ``params`` maps each
    parameter to its value, or to None for a flag such as ``lr``.
    """

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict, hash=False)
    headers: dict[str, str] = field(default_factory=dict, hash=False)
    password: str | None = None

    @classmethod
    def parse(cls, text: str) -> SipUri:
        """Read one URI (RFC 3261 section 25.1, SIP-URI / SIPS-URI;
        RFC 3966 section 3, telephone-uri; anything else as absoluteURI)."""
        colon = text.find(":")
        if colon <= 0 or _SCHEME.fullmatch(text, 0, colon) is None:
            raise SipParseError(f"URI without a scheme {shorten(text)}")
        scheme, rest = text[:colon].lower(), text[colon + 1 :]
        if scheme in ("sip", "sips"):
            return cls._parse_sip(scheme, rest)
        if scheme == "tel":
            number, semi, params = rest.partition(";")
            return cls(
                scheme,
                _unescape(number, _TEL, "number"),
                "",
                params=_parse_uri_params(params) if semi else {},
            )
        if _OPAQUE.fullmatch(rest) is None:
            raise SipParseError(f"bad URI {shorten(text)}")
        return cls(scheme, rest, "")

    @classmethod
    def _parse_sip(cls, scheme: str, rest: str) -> SipUri:
        user = password = None
        # The user part holds no bare '@' (it is escaped as %40), while ';'
        # and '?' may appear in it (RFC 4475 section 3.1.1.9): split it off first.
        at = rest.find("@")
        if at >= 0:
            user, colon, secret = rest[:at].partition(":")
            user = _unescape(user, _USER, "user")
            if colon:
                password = _unescape(secret, _PASSWORD, "password") if secret else ""
            rest = rest[at + 1 :]
        rest, question, headers = rest.partition("?")
        hostport, semi, params = rest.partition(";")
        host, port = parse_hostport(hostport)
        return cls(
            scheme,
            user,
            host,
            port,
            _parse_uri_params(params) if semi else {},
            _parse_uri_headers(headers) if question else {},
            password,
        )

    def __str__(self) -> str:
        if self.scheme == "tel":
            head = "tel:" + _escape(self.user or "", _TEL_SAFE)
        elif self.scheme not in ("sip", "sips"):
            return f"{self.scheme}:{self.user or ''}"
        else:
            userinfo = ""
            if self.user is not None:
                userinfo = _escape(self.user, _USER_SAFE)
                if self.password is not None:
                    userinfo += ":" + _escape(self.password, _PASSWORD_SAFE)
                userinfo += "@"
            port = "" if self.port is None else f":{self.port}"
            head = f"{self.scheme}:{userinfo}{format_host(self.host)}{port}"
        params = "".join(
            f";{_escape(name, _PARAM_SAFE)}"
            + ("" if value is None else "=" + _escape(value, _PARAM_SAFE))
            for name, value in self.params.items()
        )
        if not self.headers:
            return head + params
        headers = "&".join(
            f"{_escape(name, _HEADER_SAFE)}={_escape(value, _HEADER_SAFE)}"
            for name, value in self.headers.items()
        )
        return f"{head}{params}?{headers}"
