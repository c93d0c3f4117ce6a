"""One request to a gateway's JSON API, with the wire's failures typed.

Every adapter that calls its processor (card, JazzCash, EasyPaisa) reads the
answer the same way, so a failure means the same thing whichever gateway it
came from:

* no answer (refused, reset, timed out) or an HTTP 5xx is
  :class:`GatewayUnreachable`: the processor may yet have acted, so the caller
  inquires before retrying;
* an answer that is not a JSON object, or (unless the caller reads error
  bodies itself) any status but 200, is :class:`GatewayError`.

Gateways label their JSON loosely (EasyPaisa sends ``text/html``), so the
content type is not checked: the body either parses as an object or it is an
error.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import aiohttp

from booking.payments.errors import GatewayError, GatewayUnreachable

__all__ = ["request_json"]


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    limit: timedelta,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    data: Mapping[str, str] | None = None,
    allow_redirects: bool = True,
    only_ok: bool = True,
) -> tuple[int, dict[str, Any]]:
    """Send one request and return its status and JSON object.

    ``limit`` bounds the whole exchange; ``what`` names the call in error
    messages ("JazzCash", "card API GET /v1/..."). With ``only_ok`` false a 4xx
    answer is returned, not raised, for gateways whose error bodies say why
    (Stripe-style ``{"error": ...}``).
    """
    try:
        async with session.request(
            method,
            url,
            headers=headers,
            json=json,
            data=data,
            allow_redirects=allow_redirects,
            timeout=aiohttp.ClientTimeout(total=limit.total_seconds()),
        ) as response:
            status = response.status
            if status >= 500:
                raise GatewayUnreachable(f"{what} answered HTTP {status}")
            if only_ok and status != 200:
                raise GatewayError(f"{what} answered HTTP {status}")
            body: Any = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise GatewayUnreachable(f"{what} request failed: {exc!r}") from exc
    except ValueError as exc:
        raise GatewayError(f"{what} answer is not JSON: {exc!r}") from exc
    if not isinstance(body, dict):
        raise GatewayError(f"{what} answer is not a JSON object")
    return status, body
