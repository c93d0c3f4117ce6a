"""CORS on the endpoints a clinic's site calls from the browser: ``POST
/api/v1/check`` (``checkConnection({base})``, docs/calls.md) and
``/api/v1/calls/*``.

The Fetch standard's CORS protocol: a browser asks first (a preflight,
``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) before a
request a plain form could not send (JSON), and lets the page read an
answer only when it names the page's origin in
``Access-Control-Allow-Origin``. Which origins are allowed is the policy's
business (signalling/edge/origins.py); this module only answers:

* a preflight from an allowed origin: 204 with the origin, ``Vary:
  Origin``, the methods and headers allowed and how long to keep that;
* a preflight from any other: 403 ``origin-not-allowed`` (a problem body;
  the browser refuses the request either way);
* every answer on these paths (errors too, so a page can read a 429's
  ``Retry-After``): the same headers when its origin is allowed, else none
  but ``Vary: Origin``.

No credentials (cookies) are ever allowed: these endpoints take a room
token in the body or the query, never an ambient credential.
"""

from __future__ import annotations

import logging

from aiohttp import web

from signalling.edge.origins import POLICY
from wadud.errors import Forbidden
from wadud.state import keys

__all__ = ["MAX_AGE", "PATHS", "OriginNotAllowed", "covers", "install"]

log = logging.getLogger("wadud.cors")

#: The paths served with CORS: one exactly, the others by prefix.
PATHS = ("/api/v1/check", "/api/v1/calls/")
#: What a preflight allows: what the endpoints and the browser modules send.
ALLOW_METHODS = "GET, POST"
ALLOW_HEADERS = "Content-Type, Authorization, Idempotency-Key, X-Request-ID"
#: Headers a page may read besides the CORS-safelisted ones.
EXPOSE_HEADERS = "Retry-After, X-Request-ID"
#: Seconds a browser keeps a preflight's answer (Chromium keeps at most 7200).
MAX_AGE = 600


class OriginNotAllowed(Forbidden):
    code = "origin-not-allowed"
    title = "This site may not call this endpoint from a browser"


def covers(path: str) -> bool:
    return path == PATHS[0] or path.startswith(PATHS[1])


def _same_origin(request: web.Request, origin: str) -> bool:
    # The call page's own requests carry an Origin too; they need nothing.
    public = request.app[keys.SETTINGS].public_url.rstrip("/")
    return origin in (f"{request.scheme}://{request.host}", public)


def _vary(response: web.StreamResponse) -> None:
    said = response.headers.get("Vary", "")
    if "origin" not in (v.strip().lower() for v in said.split(",")):
        response.headers["Vary"] = f"{said}, Origin" if said else "Origin"


async def _allowed(request: web.Request) -> str | None:
    """The request's origin when the policy allows it; else None."""
    origin = request.headers.get("Origin")
    if not origin or _same_origin(request, origin):
        return None
    ok = await request.app[POLICY].allows(request.app[keys.DB], origin)
    return origin if ok else None


async def preflight(request: web.Request) -> web.Response:
    origin = await _allowed(request)
    if origin is None:
        said = request.headers.get("Origin", "")
        raise OriginNotAllowed(
            f"{said} may not call this endpoint from a browser"
            " (a clinic's allowed_origins, or call_allowed_origins)"
            if said
            else "a CORS preflight names its Origin"
        )
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": str(MAX_AGE),
        },
    )


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    if not covers(request.path) or isinstance(response, web.WebSocketResponse):
        return
    _vary(response)
    try:
        origin = await _allowed(request)
    except Exception:
        # The answer is on its way (often the database's 500 itself): send
        # it without CORS rather than break the connection mid-prepare.
        log.exception("could not look up the origin of %s", request.path)
        return
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS


def install(app: web.Application) -> None:
    app.router.add_route("OPTIONS", PATHS[0], preflight, name="cors-check")
    app.router.add_route("OPTIONS", PATHS[1] + "{rest:.+}", preflight, name="cors-calls")
    app.on_response_prepare.append(_on_prepare)
