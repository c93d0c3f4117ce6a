"""Errors of the TURN package.

One root, :class:`TurnError`. As in h11, "the peer broke the protocol" is kept
apart from "a request we refuse" (:class:`StunRequestError`, which carries the
STUN error code of RFC 8489 section 14.8 and RFC 8656 section 19 that goes on
the wire) and from "we were configured wrongly" (:class:`TurnConfigError`).
Bytes that are not STUN raise :class:`rtc.errors.StunParseError` from the
codec, :mod:`rtc.stun`, which ICE shares: counted and dropped.
"""

from __future__ import annotations


class TurnError(Exception):
    """Root of every error raised by ``turn``."""


class StunRequestError(TurnError):
    """A request refused with a STUN error code (RFC 8489 section 14.8)."""

    def __init__(
        self,
        code: int,
        reason: str | None = None,
        *,
        unknown: tuple[int, ...] = (),
        metric: str | None = None,
    ) -> None:
        self.code = code
        self.reason = reason or REASONS.get(code, "Error")
        self.unknown = unknown
        # Label for the auth-failure / quota / denial counters, if the refusal is one.
        self.metric = metric
        super().__init__(f"{code} {self.reason}")


class TurnConfigError(TurnError, ValueError):
    """A setting that cannot work (for example no relay address)."""


# Reason phrases from RFC 8489 section 14.8 and RFC 8656 section 19.
REASONS = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    486: "Allocation Quota Reached",
    500: "Server Error",
    508: "Insufficient Capacity",
}
