"""The basic rules of SIP's grammar that every header value parser shares
(RFC 3261 section 25.1): tokens, linear white space, quoted strings, lists
and generic parameters.

Every pattern here is a character class or a chain of disjoint alternatives,
so matching is linear in the input: a trunk's hostile datagram cannot make
the parser backtrack.
"""

from __future__ import annotations

import re

from sip.errors import SipParseError

__all__ = [
    "LWS",
    "format_params",
    "has_control",
    "is_digits",
    "is_token",
    "parse_params",
    "quote_display",
    "read_quoted",
    "shorten",
    "split_outside",
]

#: Linear white space inside a header value once folding is undone (SP / HTAB).
LWS = " \t"

# token (RFC 3261 section 25.1): alphanum and -.!%*_+`'~
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# A generic parameter's value: a token or a host (RFC 3261 section 25.1,
# gen-value), whose IPv6 reference adds ':' and the brackets.
_GEN_VALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")
# A quoted-string (RFC 3261 section 25.1): qdtext or quoted-pair up to the
# closing quote. The two alternatives never match the same character.
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
# Control characters a header value never holds (HTAB is white space).
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

#: The longest stretch of peer text an error's reason quotes: reasons go in
#: a response's reason phrase and the logs, not the peer's whole datagram.
SHOWN = 40


def shorten(text: str) -> str:
    """``text`` quoted for an error reason, cut at :data:`SHOWN` characters."""
    if len(text) > SHOWN:
        return repr(text[:SHOWN]) + "..."
    return repr(text)


def is_token(text: str) -> bool:
    """Whether ``text`` is one RFC 3261 token (section 25.1)."""
    return _TOKEN.fullmatch(text) is not None


def is_digits(text: str, most: int) -> bool:
    """Whether ``text`` is 1 to ``most`` ASCII digits (``str.isdigit`` alone
    takes superscripts and other scripts' digits, which ``int`` refuses)."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character other than HTAB."""
    return _CTL.search(text) is not None


def read_quoted(text: str, start: int) -> tuple[str, int]:
    """The unescaped content of the quoted-string at ``text[start]`` (a
    ``"``) and the index just past its closing quote (RFC 3261 section 25.1)."""
    match = _QUOTED.match(text, start)
    if match is None:
        raise SipParseError(f"unterminated quoted string {shorten(text[start:])}")
    return _QUOTED_PAIR.sub(r"\1", match.group(1)), match.end()


def quote_display(text: str) -> str:
    """``text`` as a quoted-string, ``"`` and ``\\`` escaped (RFC 3261 section 25.1)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_outside(text: str, sep: str) -> list[str]:
    """``text`` split at each ``sep`` that is neither inside a quoted string
    nor inside ``<...>`` (RFC 3261 section 7.3.1: a comma in a display name
    or a URI does not separate list elements). Never raises: an unterminated
    quote or bracket runs to the end, and the element's own parser refuses it.
    """
    if '"' not in text and "<" not in text:
        return text.split(sep)
    items: list[str] = []
    start = 0
    quoted = angled = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif angled:
            # A URI holds no quotes, so none inside <...> opens a string.
            angled = ch != ">"
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angled = True
        elif ch == sep:
            items.append(text[start:i])
            start = i + 1
        i += 1
    items.append(text[start:])
    return items


def parse_params(text: str) -> dict[str, str | None]:
    """Header parameters after the first ``;`` (RFC 3261 section 25.1,
    generic-param): ``name`` or ``name = value``, white space allowed around
    ``;`` and ``=``. Names are case-insensitive and kept in lower case. A
    quoted value keeps its quotes (``+sip.instance="<urn:uuid:...>"``), so it
    is written back as it came; a later duplicate replaces an earlier one.
    """
    params: dict[str, str | None] = {}
    for item in split_outside(text, ";"):
        name, equals, value = item.partition("=")
        name = name.strip(LWS)
        if not is_token(name):
            raise SipParseError(f"bad parameter {shorten(item)}")
        if not equals:
            params[name.lower()] = None
            continue
        value = value.strip(LWS)
        if value.startswith('"'):
            _, end = read_quoted(value, 0)
            if end != len(value):
                raise SipParseError(f"text after a quoted parameter {shorten(item)}")
        elif _GEN_VALUE.fullmatch(value) is None:
            raise SipParseError(f"bad parameter value {shorten(item)}")
        params[name.lower()] = value
    return params


def format_params(params: dict[str, str | None]) -> str:
    """The inverse of :func:`parse_params`, each parameter led by its ``;``."""
    return "".join(
        f";{name}" if value is None else f";{name}={value}" for name, value in params.items()
    )
