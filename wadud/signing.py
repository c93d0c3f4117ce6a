"""Stripe-style HMAC-SHA256 signatures of HTTP bodies, for webhooks we send.

The header value is ``t=<unix seconds>,v1=<hex>[,v1=<hex>...]``; the signed
payload is the ASCII timestamp, a ``.``, then the raw body bytes; ``v1`` is
the lowercase hex HMAC-SHA256 of that payload keyed with the endpoint's
secret. A receiver accepts the body when any ``v1`` matches its secret
(compared in constant time) and the timestamp is within a tolerance of its
clock. The one implementation: room webhooks (hooks/), notification
webhooks (notify/) and the payment gateways' callbacks (booking.payments.gateway)
all sign and check with it.

Pure: times are parameters, never read here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["SCHEME", "BadSignature", "matches", "parse", "sign", "signature", "verify"]

SCHEME = "v1"
#: Unix seconds have 10 digits until 2286.
_TIMESTAMP_DIGITS = 10


class BadSignature(ValueError):
    """The header is malformed, no signature matches, or the timestamp is stale."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``<timestamp>.<body>`` under ``secret``."""
    payload = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), payload, hashlib.sha256).hexdigest()


def sign(body: bytes, secrets: str | Sequence[str], timestamp: int) -> str:
    """The header value for ``body``: one ``v1`` per secret (several while a
    secret is being rotated)."""
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    if not keys:
        raise ValueError("at least one secret is needed to sign")
    signed = [f"{SCHEME}={signature(k, timestamp, body)}" for k in keys]
    return ",".join([f"t={timestamp}", *signed])


def parse(value: str, *, digits: int = _TIMESTAMP_DIGITS) -> tuple[int, list[bytes]]:
    """The header's timestamp and its ``v1`` signatures (as bytes: non-ASCII
    junk stays comparable, where hmac.compare_digest would raise TypeError on
    a non-ASCII str). A timestamp of more than ``digits`` digits, a sign or
    non-ASCII digits (which int() accepts and the recipe does not) is none."""
    timestamp: int | None = None
    found: list[bytes] = []
    for item in value.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if not val.isascii() or not val.isdigit() or len(val) > digits:
                raise BadSignature("the signature's timestamp is not Unix seconds")
            timestamp = int(val)
        elif key == SCHEME:
            found.append(val.encode("utf-8", "surrogateescape"))
    if timestamp is None:
        raise BadSignature("the signature has no timestamp")
    if not found:
        raise BadSignature(f"the signature has no {SCHEME}")
    return timestamp, found


def matches(
    body: bytes, timestamp: int, candidates: Sequence[bytes], secrets: Sequence[str]
) -> bool:
    """Whether any candidate signature is ``body``'s under any secret. No
    early exit: every pair is compared, so timing does not tell which."""
    matched = False
    for key in secrets:
        want = signature(key, timestamp, body).encode("ascii")
        for got in candidates:
            matched |= hmac.compare_digest(want, got)
    return matched


def verify(
    body: bytes, header: str, secrets: str | Sequence[str], now: float, tolerance: float = 300.0
) -> int:
    """Check ``header`` against ``body``; return the signed timestamp or
    raise :class:`BadSignature`. The signature is checked before the time,
    and a timestamp too far ahead is refused as one too far behind."""
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    if not keys:
        raise BadSignature("no secret to check against")
    timestamp, candidates = parse(header)
    if not matches(body, timestamp, candidates, keys):
        raise BadSignature("no v1 signature matches")
    if abs(now - timestamp) > tolerance:
        raise BadSignature(f"the signature is {now - timestamp:.0f} s from now")
    return timestamp
