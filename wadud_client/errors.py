"""The client's errors: one root, :class:`CallError`, and what went wrong
with a request or the signalling connection (docs/protocol.md, "Errors" and
the close codes)."""

from __future__ import annotations

from typing import Any

__all__ = ["CallError", "ConnectionClosed", "RequestFailed"]


class CallError(Exception):
    """Root of the client's errors."""


class RequestFailed(CallError):
    """The server answered a request with an ``error`` frame."""

    def __init__(self, code: str, message: str, *, fatal: bool = False, frame: Any = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fatal = fatal
        self.frame = frame


class ConnectionClosed(CallError, ConnectionError):
    """The signalling WebSocket closed; ``code`` is its close code (4401,
    4403, 4409, 4410, ... as in the protocol), or None if it never opened."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"signalling connection closed ({code}) {reason}".rstrip())
        self.code = code
        self.reason = reason
