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
error. It is read with :mod:`wadud.jsonin`'s depth limit and no more than
:data:`ANSWER_MAX` bytes of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import aiohttp

from booking.payments.errors import GatewayError, GatewayUnreachable
from wadud import jsonin

__all__ = ["ANSWER_MAX", "request_json"]

#: The largest answer read: a gateway's answers are a few hundred bytes, and a
#: gateway (or whoever answers in its name) is outside us like any client.
ANSWER_MAX = 1_048_576


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
            raw = bytearray()
            async for chunk in response.content.iter_chunked(65_536):
                raw += chunk
                if len(raw) > ANSWER_MAX:
                    raise GatewayError(f"{what} answer is over {ANSWER_MAX} bytes")
            body: Any = jsonin.loads(bytes(raw), f"the {what} answer")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise GatewayUnreachable(f"{what} request failed: {exc!r}") from exc
    except jsonin.NotJson as exc:
        raise GatewayError(f"{what} answer: {exc.detail}") from exc
    if not isinstance(body, dict):
        raise GatewayError(f"{what} answer is not a JSON object")
    return status, body
