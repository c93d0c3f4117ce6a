"""The answer to a request the parser refused (RFC 3261 sections 8.2.2 and
21.4.1: a 400 whose reason phrase says what was wrong).

A request that does not parse cannot reach the transaction layer, yet its
sender retransmits it for 32 seconds and then reports a timeout rather
than the mistake. So where the bytes still read as a request line and the
five fields a response copies (Via, From, To, Call-ID, CSeq: section
8.2.6.2), they are read textually, without the strict parsers, and answered
with the parse error's status (400, 413 for a message too large, 505 for
another SIP version) and its short reason. Anything less (random bytes,
a response, a top Via that does not say where to answer) is dropped: a
response is never answered (section 8.1.3.1 drops malformed ones), and an
answer sent where an unreadable header points would make the bridge a
reflector.
"""

from __future__ import annotations

import re

from sip.errors import SipBuildError, SipError, SipParseError
from sip.transport.hop import Address, stamp
from sip.wire.fields import Via
from sip.wire.grammar import is_token, split_outside
from sip.wire.headers import Headers, canonical_name
from sip.wire.message import Request, response_to

__all__ = ["PEEK", "rejection"]

#: How much of the refused bytes is read for the answer: the request line
#: and the five fields sit in the head, and a head is read once per
#: refusal, so a flood of large garbage costs no more than this each.
PEEK = 8192
_LINE = re.compile(rb"\r?\n")
_COPIED = ("Via", "From", "To", "Call-ID", "CSeq")
_STATUSES = frozenset((400, 413, 505))


def rejection(
    data: bytes, error: SipParseError, source: Address, reliable: bool
) -> tuple[bytes, Address] | None:
    """The answer to the refused ``data`` from ``source`` and where it goes
    (section 18.2.2, as for any response), or None when there is none to
    give. Never raises."""
    # CRLFs before the start line are keepalives or slack (section 7.5).
    lines = _LINE.split(data[:PEEK].lstrip(b"\r\n").split(b"\r\n\r\n", 1)[0])
    try:
        start = lines[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = start.split(" ")
    if len(parts) != 3 or not is_token(parts[0]) or parts[0].upper().startswith("SIP/"):
        return None
    fields = _read_fields(lines[1:])
    if fields is None:
        return None
    try:
        # The top Via must parse: it is what says where the answer goes.
        Via.parse(split_outside(fields.get_all("Via")[0], ",")[0])
        request = Request(parts[0], "sip:refused.invalid", fields)
        address = stamp(request, source, reliable)
        status = error.status if error.status in _STATUSES else 400
        try:
            response = response_to(request, status, error.reason, to_tag="refused")
        except SipParseError:
            # A To that does not parse takes no tag; it goes back as it came.
            response = response_to(request, status, error.reason)
        return bytes(response), address
    except (SipError, IndexError):
        return None


def _read_fields(lines: list[bytes]) -> Headers | None:
    """The five copied fields, read line by line (a folded line joins the
    one before, section 7.3.1), or None when one is missing, repeated (but
    Via), or not text. Every other line, even one that is not a header
    field, is skipped: it is what the parser refused, and the answer says so."""
    found: list[tuple[str, str]] = []
    last: int | None = None
    for raw in lines:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            last = None
            continue
        if line[:1] in (" ", "\t"):
            if last is not None:
                name, value = found[last]
                found[last] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        name = canonical_name(name.strip())
        last = None
        if colon and name in _COPIED:
            last = len(found)
            found.append((name, value.strip()))
    names = [name for name, _ in found]
    if any(names.count(name) != 1 for name in _COPIED[1:]) or "Via" not in names:
        return None
    try:
        return Headers(found)
    except SipBuildError:
        return None
