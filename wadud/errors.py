"""The root of every error Wadud raises on purpose.

Each error carries its wire code (``http_status``) and a short ``code`` slug;
one middleware (``wadud.web.http``) turns them into RFC 9457 problem documents, so
handlers never build error bodies by hand. Packages hang their own root under
``WadudError`` and typed children under that, inheriting a status class too
where it helps (``class SlotTaken(BookingError, Conflict)``).

As in h11, "the peer broke the protocol" (``BadRequest`` and kin: 4xx) is kept
apart from "we were asked to do something the state does not allow"
(``Conflict``), and both apart from our own faults (anything else: 500).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar


class WadudError(Exception):
    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra

    @property
    def headers(self) -> Mapping[str, str]:
        """HTTP headers the problem response carries besides its body."""
        return {}


class ConfigError(WadudError):
    code = "configuration-error"
    title = "Invalid configuration"


class BadRequest(WadudError, ValueError):
    http_status = 400
    code = "bad-request"
    title = "Bad request"


class Unauthorized(WadudError):
    http_status = 401
    code = "unauthorized"
    title = "Authentication required"


class Forbidden(WadudError):
    http_status = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(WadudError):
    http_status = 404
    code = "not-found"
    title = "Not found"


class Conflict(WadudError):
    http_status = 409
    code = "conflict"
    title = "Conflict"


class Gone(WadudError):
    http_status = 410
    code = "gone"
    title = "Gone"


class PayloadTooLarge(WadudError):
    http_status = 413
    code = "payload-too-large"
    title = "Request body too large"


class UnsupportedMediaType(WadudError):
    http_status = 415
    code = "unsupported-media-type"
    title = "Unsupported media type"


class Unprocessable(WadudError, ValueError):
    http_status = 422
    code = "unprocessable"
    title = "Request is well-formed but cannot be processed"


class _RetryLater(WadudError):
    """An error that may say when to come back (``Retry-After``, RFC 9110
    section 10.2.3, in whole seconds rounded up)."""

    def __init__(self, detail: str = "", *, retry_after: float | None = None, **extra: Any) -> None:
        self.retry_after = None if retry_after is None else max(1, math.ceil(retry_after))
        if self.retry_after is not None:
            extra.setdefault("retry_after", self.retry_after)
        super().__init__(detail, **extra)

    @property
    def headers(self) -> Mapping[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class TooManyRequests(_RetryLater):
    http_status = 429
    code = "too-many-requests"
    title = "Too many requests"


class Unavailable(_RetryLater):
    http_status = 503
    code = "unavailable"
    title = "Service unavailable"


class UpstreamError(WadudError):
    http_status = 502
    code = "upstream-error"
    title = "Upstream service failed"
