"""The header fields of a SIP message: an ordered multi-map (RFC 3261 section 7.3).

Names are case-insensitive and the compact forms of section 7.3.3 (and of
the extensions that define one) mean their long names, so every name we
know is stored in its canonical spelling (``i`` and ``call-id`` become
``Call-ID``); a name we do not know is kept as the peer wrote it, with its
value, for whoever reads it next. Values are text with folding undone and
the white space at both ends dropped. :meth:`Headers.get_all` splits the
fields whose grammar is a comma-separated list (section 7.3.1), never inside
a quoted string or ``<...>``, and never those whose commas are their own
(the authentication fields, Date, Retry-After...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from sip.errors import SipBuildError, SipParseError
from sip.wire.grammar import LWS, has_control, is_token, shorten, split_outside

__all__ = ["MAX_HEADERS", "Headers", "canonical_name"]

#: The most header fields a message may have: a trunk sends twenty or
#: thirty, and each costs a lookup for every header the layers above read.
MAX_HEADERS = 128

_CANONICAL = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "History-Info",
    "Identity", "In-Reply-To", "Max-Forwards", "MIME-Version", "Min-Expires", "Min-SE",
    "Organization", "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Priority", "Privacy",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason",
    "Record-Route", "Refer-To", "Referred-By", "Reject-Contact", "Replaces", "Reply-To",
    "Request-Disposition", "Require", "Retry-After", "Route", "RSeq", "Security-Client",
    "Security-Server", "Security-Verify", "Server", "Service-Route", "Session-Expires",
    "Subject", "Subscription-State", "Supported", "Timestamp", "To", "Unsupported",
    "User-Agent", "Via", "Warning", "WWW-Authenticate",
)  # fmt: skip

# Compact forms: RFC 3261 section 7.3.3, then RFC 3841 (a, j, d), RFC 6665
# (o, u), RFC 3515 (r), RFC 3892 (b), RFC 4028 (x) and RFC 8224 (y).
_COMPACT = {
    "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
    "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To", "v": "Via",
    "a": "Accept-Contact", "j": "Reject-Contact", "d": "Request-Disposition", "o": "Event",
    "u": "Allow-Events", "r": "Refer-To", "b": "Referred-By", "x": "Session-Expires",
    "y": "Identity",
}  # fmt: skip

# Lower-case name or compact form -> (lookup key, canonical spelling).
_KNOWN = {name.lower(): (name.lower(), name) for name in _CANONICAL} | {
    letter: (name.lower(), name) for letter, name in _COMPACT.items()
}

# The fields whose grammar is ``x *(COMMA x)`` (RFC 3261 section 25.1 and
# the extensions' own), so that several fields and one comma-separated field
# mean the same (section 7.3.1). WWW-Authenticate and its kin are left out:
# their commas separate one challenge's parameters.
_LISTS = frozenset(
    name.lower()
    for name in (
        "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
        "Allow-Events", "Call-Info", "Contact", "Content-Encoding", "Content-Language",
        "Error-Info", "History-Info", "In-Reply-To", "P-Asserted-Identity",
        "P-Preferred-Identity", "Path", "Proxy-Require", "Reason", "Record-Route",
        "Reject-Contact", "Request-Disposition", "Require", "Route", "Security-Client",
        "Security-Server", "Security-Verify", "Service-Route", "Supported", "Unsupported", "Via",
        "Warning",
    )
)  # fmt: skip

# A CR or LF that is not part of a CRLF, or another control character: none
# belongs in a header block (RFC 3261 section 25.1), and a bare one is how
# a header is smuggled past a parser that splits lines differently.
_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")


def _key(name: str) -> tuple[str, str]:
    lower = name.lower()
    return _KNOWN.get(lower) or (lower, name)


def _unfold(lines: list[str]) -> list[str]:
    """Physical lines to logical ones: a line that starts with white space
    continues the one before, the CRLF and white space read as one SP
    (RFC 3261 section 7.3.1)."""
    logical: list[list[str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not logical:
                raise SipParseError("continuation line before any header field")
            # Gather the pieces and join once: a flood of continuation lines
            # must not copy the growing value each time.
            logical[-1].append(line.strip(LWS))
        elif len(logical) == MAX_HEADERS:
            raise SipParseError(f"more than {MAX_HEADERS} header fields")
        else:
            logical.append([line.rstrip(LWS)])
    return [" ".join(pieces) for pieces in logical]


def canonical_name(name: str) -> str:
    """``name``'s canonical spelling (``i`` -> ``Call-ID``), or ``name`` itself
    if it is not one we know."""
    return _key(name)[1]


class Headers:
    """An ordered multi-map of header fields (RFC 3261 section 7.3).

    ``Headers([("Via", "..."), ("v", "...")])`` takes (name, value) pairs;
    :meth:`parse` reads a header block off the wire. Equal when they hold
    the same fields in the same order.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        # (lookup key, name as stored, value): the key is the lower-case
        # canonical name, computed once per field rather than per lookup.
        self._fields: list[tuple[str, str, str]] = []
        for name, value in fields:
            self.add(name, value)

    @classmethod
    def parse(cls, text: str) -> Headers:
        """Read the header fields between the start line and the blank line
        (RFC 3261 section 7.3), lines separated by CRLF; a line that starts
        with white space continues the one before (section 7.3.1)."""
        headers = cls()
        if not text:
            return headers
        if _BAD.search(text):
            raise SipParseError("control character or bare CR/LF in the header")
        lines = text.split("\r\n")
        if lines[-1] == "":
            # The CRLF that ends the last field, as str(headers) writes it.
            lines.pop()
        if "\r\n " in text or "\r\n\t" in text or text[0] in LWS:
            lines = _unfold(lines)
        if len(lines) > MAX_HEADERS:
            raise SipParseError(f"more than {MAX_HEADERS} header fields")
        fields = headers._fields
        for line in lines:
            name, colon, value = line.partition(":")
            name = name.rstrip(LWS)
            if not colon or not is_token(name):
                raise SipParseError(f"bad header line {shorten(line)}")
            key, name = _key(name)
            fields.append((key, name, value.strip(LWS)))
        return headers

    def get(self, name: str) -> str | None:
        """The first value of ``name``, whole, or None."""
        key = _key(name)[0]
        for field_key, _, value in self._fields:
            if field_key == key:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order, a list field's comma-separated
        elements each on its own (RFC 3261 section 7.3.1)."""
        key = _key(name)[0]
        values = [value for field_key, _, value in self._fields if field_key == key]
        if key not in _LISTS:
            return values
        return [
            item
            for value in values
            for item in (part.strip(LWS) for part in split_outside(value, ","))
            if item
        ]

    def add(self, name: str, value: str) -> None:
        """Append a field. A name that is not a token or a value with a line
        break is refused: it would change what the message says on the wire."""
        if not is_token(name):
            raise SipBuildError(f"header name {name!r} is not a token")
        if has_control(value):
            raise SipBuildError(f"header value of {name} has a control character")
        key, canonical = _key(name)
        self._fields.append((key, canonical, value.strip(LWS)))

    def set(self, name: str, value: str) -> None:
        """Replace every field ``name`` with one, where the first one was
        (at the end if there was none)."""
        key = _key(name)[0]
        at = next((i for i, (k, _, _) in enumerate(self._fields) if k == key), None)
        self.add(name, value)
        if at is not None:
            new = self._fields.pop()
            self._fields = [f for f in self._fields if f[0] != key]
            self._fields.insert(at, new)

    def remove(self, name: str) -> None:
        """Drop every field ``name`` (nothing if there is none)."""
        key = _key(name)[0]
        self._fields = [f for f in self._fields if f[0] != key]

    def items(self) -> list[tuple[str, str]]:
        """Every (name, value) in order, names in their canonical spelling."""
        return [(name, value) for _, name, value in self._fields]

    def copy(self) -> Headers:
        copy = Headers()
        copy._fields = list(self._fields)
        return copy

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _key(name)[0]
        return any(field_key == key for field_key, _, _ in self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __iter__(self) -> Iterator[str]:
        """The names, in order and repeated as they are."""
        return (name for _, name, _ in self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._fields == other._fields

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"

    def __str__(self) -> str:
        """The header block as sent, each field on its own CRLF-ended line."""
        return "".join(f"{name}: {value}\r\n" for _, name, value in self._fields)
