"""The lexical rules of a session description (RFC 8866 section 9): tokens,
numbers, space-separated fields and ``a=`` lines split at their colon; and
how an optional or repeated field is written back as lines.

Each reader names what it was reading (``what``) and raises
:class:`~rtc.errors.SdpParseError` for anything that breaks the rule; the
typed attributes (:mod:`rtc.sdp.attributes`, :mod:`rtc.sdp.transport`), the
media sections (:mod:`rtc.sdp.media`) and the session
(:mod:`rtc.sdp.session`) are all read with them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from rtc.errors import SdpParseError

__all__ = [
    "field_lines",
    "is_token",
    "is_uint",
    "parse_flag",
    "parse_token",
    "parse_uint",
    "require_value",
    "split_attribute",
    "split_fields",
    "split_words",
]

# RFC 8866 section 9 token characters; attribute names and encodings use them.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")


def is_token(text: str) -> bool:
    """Whether ``text`` is an RFC 8866 section 9 token, as a mid must be."""
    return _TOKEN.fullmatch(text) is not None


def is_uint(text: str, max_digits: int) -> bool:
    """Whether ``text`` is an ASCII decimal number of 1 to ``max_digits`` digits."""
    # str.isdigit() accepts non-ASCII digits such as '²'; SDP numbers are ASCII.
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def parse_uint(text: str, what: str, low: int, high: int) -> int:
    """``text`` as a number in ``low..high``."""
    if not is_uint(text, len(str(high)) + 2):
        raise SdpParseError(f"{what}: not a number: {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise SdpParseError(f"{what}: {value} not in {low}..{high}")
    return value


def parse_token(text: str, what: str) -> str:
    """``text``, if it is a token."""
    if not _TOKEN.fullmatch(text):
        raise SdpParseError(f"{what}: not a token: {text!r}")
    return text


def split_fields(text: str, what: str, count: int) -> list[str]:
    """``text`` as exactly ``count`` fields separated by single spaces."""
    parts = text.split(" ")
    if len(parts) != count or not all(parts):
        raise SdpParseError(f"{what}: expected {count} space-separated fields: {text!r}")
    return parts


def require_value(value: str | None, what: str) -> str:
    """``value``, if there is one and it is not empty."""
    if not value:
        raise SdpParseError(f"{what}: value missing")
    return value


def parse_flag(value: str | None, what: str) -> bool:
    """``True`` for a property attribute, which takes no value (RFC 8866 section 5.13)."""
    if value is not None:
        raise SdpParseError(f"{what}: takes no value")
    return True


def split_words(text: str) -> list[str]:
    """``text`` as one or more fields separated by single spaces."""
    parts = text.split(" ")
    if not all(parts):
        raise SdpParseError(f"stray spaces in {text!r}")
    return parts


def split_attribute(value: str) -> tuple[str, str | None]:
    """An ``a=`` line's value as its name and what follows the colon, if any."""
    name, colon, rest = value.partition(":")
    parse_token(name, "a= attribute name")
    return name, (rest if colon else None)


def field_lines(prefix: str, value: object) -> Iterator[str]:
    """``prefix`` then ``value`` as a line: none when ``value`` is None, one
    line an item when it is a list (an optional or a repeated field)."""
    if value is None:
        return
    for item in value if isinstance(value, list) else [value]:
        yield f"{prefix}{item}"
