"""The middlewares every HTTP request goes through, outermost first:

1. ``observe``: request id (kept from ``X-Request-ID`` when sane), one JSON
   log line and the Prometheus counters per request.
2. ``problems``: turns every error into an RFC 9457 ``application/problem+json``
   body: our typed errors with their own status, validation errors as 422,
   aiohttp's own (404, 405, 413) with theirs, anything unexpected as a 500
   that names the request id and hides the rest.
3. ``authenticate``: reads a bearer token, if any, into the request's
   principal; a bad, expired or revoked token is a 401, never silently
   anonymous.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from typing import Any

import pydantic
from aiohttp import web
from aiohttp.typedefs import Handler

from wadud.errors import PayloadTooLarge, WadudError
from wadud.observe import logs, metrics
from wadud.state import keys
from wadud.web import api_keys, auth, ratelimit

log = logging.getLogger("wadud.http")
_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PROBLEM_TYPE = "https://wadud.dev/problems/"


class _RequestIds:
    """Request ids: unique, not secret (they appear in logs and problem
    bodies). A random prefix per process and a counter: the same 32 hex
    characters a UUID gives, without a getrandom call per request."""

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):016x}"


_ids = _RequestIds()


class _RouteMetrics:
    """The request counter and latency histogram children of one (method,
    route, status): prometheus_client's ``labels()`` looks them up under a
    lock on every call, so they are kept here once made (up to a bound: a
    client may send methods of its own invention)."""

    _MAX = 2048

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._latency: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, route: str, status: int, elapsed: float) -> None:
        counter = self._counters.get((method, route, status))
        if counter is None:
            counter = metrics.HTTP_REQUESTS.labels(method, route, str(status))
            if len(self._counters) < self._MAX:
                self._counters[(method, route, status)] = counter
        counter.inc()
        latency = self._latency.get((method, route))
        if latency is None:
            latency = metrics.HTTP_LATENCY.labels(method, route)
            if len(self._latency) < self._MAX:
                self._latency[(method, route)] = latency
        latency.observe(elapsed)


_route_metrics = _RouteMetrics()


def _route_name(request: web.Request) -> str:
    info = request.match_info
    if info.http_exception is not None:
        return "unmatched"
    resource = info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-ID", "")
    rid = incoming if incoming and _RID.match(incoming) else _ids.next()
    token = logs.request_id.set(rid)
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-ID"] = rid
        return response
    finally:
        elapsed = time.perf_counter() - start
        route = _route_name(request)
        _route_metrics.observe(request.method, route, status, elapsed)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "route": route,
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                    "remote": ratelimit.client_address(request),
                },
            )
        logs.request_id.reset(token)


def problem(
    status: int,
    code: str,
    title: str,
    detail: str = "",
    instance: str = "",
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + code,
        "title": title,
        "status": status,
        "code": code,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    rid = logs.request_id.get()
    if rid:
        body["request_id"] = rid
    body.update(extra)
    metrics.HTTP_ERRORS.labels(code).inc()
    return web.json_response(body, status=status, content_type="application/problem+json")


def _validation_errors(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except WadudError as exc:
        # Subclasses with their own __init__ may skip WadudError's; str(exc)
        # is then the detail.
        detail = getattr(exc, "detail", None) or str(exc)
        extra = getattr(exc, "extra", {})
        resp = problem(exc.http_status, exc.code, exc.title, detail, request.path, **extra)
        resp.headers.update(exc.headers)
        return resp
    except pydantic.ValidationError as exc:
        return problem(
            422,
            "validation-error",
            "Request values are invalid",
            f"{exc.error_count()} invalid value(s)",
            request.path,
            errors=_validation_errors(exc),
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {
            404: "not-found",
            405: "method-not-allowed",
            413: "payload-too-large",
        }.get(exc.status, f"http-{exc.status}")
        resp = problem(exc.status, code, exc.reason, exc.text or "", request.path)
        for name in ("Allow",):
            if name in exc.headers:
                resp.headers[name] = exc.headers[name]
        return resp
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return problem(
            500,
            "internal-error",
            "Internal server error",
            "the error was logged with this request id",
            request.path,
        )


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    header = request.headers.get("Authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "basic":
            # An API key (wadud.web.api_keys): what a clinic's server or a
            # load tester presents; routes with auth="api_key" take it. A
            # refused one counts against its address as a failed sign-in
            # does, so secrets cannot be guessed at speed.
            limiter = request.app[ratelimit.LIMITER]
            rule = ratelimit.guesses_by_address(request.app[keys.SETTINGS])
            address = await limiter.attempt(
                "login-address", ratelimit.client_address(request), rule,
                "refused credentials from this address", count=False,
            )  # fmt: skip
            try:
                key_id, secret = api_keys.basic_credentials(token)
                request[api_keys.API_KEY] = await api_keys.authenticate(
                    request.app[keys.DB], key_id, secret
                )
            except api_keys.InvalidApiKey:
                await limiter.fail(address, rule)
                raise
            return await handler(request)
        if scheme.lower() != "bearer" or not token.strip():
            raise auth.InvalidToken(
                "use an Authorization: Bearer <token> header (Basic for an API key)"
            )
        settings = request.app[keys.SETTINGS]
        principal = auth.decode_access_token(settings, token.strip())
        if not await auth.principal_is_live(request.app[keys.DB], principal):
            raise auth.InvalidToken("this session was revoked")
        request[keys.PRINCIPAL] = principal
    return await handler(request)


async def read_upload(request: web.Request, limit: int, what: str) -> bytes:
    """A raw upload body of at most ``limit`` bytes (413 beyond, naming
    ``what``). Read from the stream: ``request.read()`` stops at the app-wide
    body limit, which is smaller than a scanned document or a photo."""
    too_large = f"{what} is at most {limit} bytes"
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(too_large)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65_536):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(too_large)
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data and request.body_exists:
        # Already read (and capped) by the idempotency middleware; cached.
        data = await request.read()
        if len(data) > limit:
            raise PayloadTooLarge(too_large)
    return data
