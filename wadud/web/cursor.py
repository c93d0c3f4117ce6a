"""Signed page cursors for keyset pagination.

A cursor names where the previous page ended, e.g. ``(starts_at, id)``. It
used to be plain base64 of those values, so anyone could hand back values the
API never produced (year 1 with an offset, a price of 2**70) and reach the
database with them. Now a cursor is the values as JSON plus an HMAC-SHA256 tag
(RFC 2104) under a key derived from ``secret_key`` and bound to the kind of
list it pages: only cursors this deployment handed out for that list decode,
everything else is one :class:`InvalidCursor` (422). Callers still check the
types of what they get back; the tag only says the values are ours.

Cursors are not secret (the values are visible in base64), only unforgeable.
Most lists are ordered by an instant and an id (a booking's start, a
review's creation): :func:`encode_instant_id` and :func:`decode_instant_id`
are their cursors, with the types checked.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
from typing import Any
from uuid import UUID

from wadud.errors import Unprocessable
from wadud.web.api import in_sane_range

__all__ = ["InvalidCursor", "decode", "decode_instant_id", "encode", "encode_instant_id"]

#: Tag length in bytes: 128 bits is plenty against forgery and keeps URLs short.
_TAG = 16
#: Longest cursor accepted, before any decoding work.
MAX_LENGTH = 400


class InvalidCursor(Unprocessable):
    code = "invalid-cursor"
    title = "The cursor is not one this API handed out"


def _key(secret: str) -> bytes:
    # A key of its own, so a cursor tag can never double as a token signature.
    return hmac.new(secret.encode(), b"wadud page cursor v1", hashlib.sha256).digest()


def _tag(secret: str, kind: str, payload: bytes) -> bytes:
    mac = hmac.new(_key(secret), kind.encode() + b"\x00" + payload, hashlib.sha256)
    return mac.digest()[:_TAG]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(secret: str, kind: str, *parts: Any) -> str:
    """A cursor for ``parts`` (JSON values) of a list named ``kind``."""
    payload = json.dumps(parts, separators=(",", ":"), default=str).encode()
    return _b64(payload) + "." + _b64(_tag(secret, kind, payload))


def decode(secret: str, kind: str, cursor: str, arity: int) -> list[Any]:
    """The ``arity`` parts of a cursor :func:`encode` made for ``kind``;
    :class:`InvalidCursor` for anything else."""
    if len(cursor) > MAX_LENGTH or not cursor.isascii():
        raise InvalidCursor("the cursor is not one this API handed out")
    body, dot, tag = cursor.partition(".")
    try:
        payload, got = _unb64(body), _unb64(tag)
    except (binascii.Error, ValueError):
        raise InvalidCursor("the cursor is not one this API handed out") from None
    if not dot or not hmac.compare_digest(got, _tag(secret, kind, payload)):
        raise InvalidCursor("the cursor is not one this API handed out")
    try:
        parts = json.loads(payload)
    except ValueError:
        raise InvalidCursor("the cursor is not one this API handed out") from None
    if not isinstance(parts, list) or len(parts) != arity:
        raise InvalidCursor("the cursor is not one this API handed out")
    return parts


def encode_instant_id(secret: str, kind: str, at: dt.datetime, ident: UUID) -> str:
    """A cursor for a list ordered by (an instant, an id), after ``(at, ident)``."""
    return encode(secret, kind, at.isoformat(), str(ident))


def decode_instant_id(secret: str, kind: str, cursor: str) -> tuple[dt.datetime, UUID]:
    """The (instant, id) of a cursor :func:`encode_instant_id` made for
    ``kind``; :class:`InvalidCursor` for anything else."""
    at, ident = decode(secret, kind, cursor, 2)
    try:
        when = dt.datetime.fromisoformat(str(at))
        if when.utcoffset() is None or not in_sane_range(when):
            raise ValueError("not an instant we hand out")
        return when, UUID(str(ident))
    except ValueError:
        raise InvalidCursor("the cursor is not one this API handed out") from None
