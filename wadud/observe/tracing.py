"""OpenTelemetry traces: HTTP request -> SQL -> outbox -> bus -> consumers.

Off by default, and then nothing here runs: no SDK is imported, no span is
made, the hot paths test one module global (:func:`enabled`). With
``otel_endpoint`` set (an OTLP/HTTP collector, e.g. ``http://collector:4318``)
spans go there in batches, protobuf over HTTP (OTLP 1.x, ``/v1/traces``):

* ``HTTP <method> <route>`` (kind SERVER) for every request, continuing a
  W3C ``traceparent`` header when the caller sent one;
* one span per SQL statement a pool connection runs (asyncpg's query
  logger, so it costs nothing when off), named by its verb and table;
* ``outbox emit <topic>`` where a transaction records an event: the row keeps
  the W3C trace context of that moment (column ``outbox.trace``);
* ``outbox relay <topic>`` and ``bus publish <topic>`` (kind PRODUCER) when
  the relay publishes it, children of the emitting request's span; the event
  on the bus carries ``"trace": {"traceparent": ...}`` of the publish span.

A consumer of bus events (the notifier, anything reading the ``events``
stream) continues the trace with :func:`consume`::

    async for msg in subscription:
        with tracing.consume(msg.data, "notify send email"):
            await send(...)

which opens a CONSUMER span whose parent is the publish span, or does nothing
when tracing is off or the event carries no context. :func:`inject` puts the
current context in any dict you send onwards (a webhook's headers, a message).

Every log line written inside a span carries its ``trace_id`` and
``span_id`` (see :mod:`wadud.observe.logs`), so logs and traces join on the id.

One tracer per process: :func:`configure` replaces the one before it (the
OpenTelemetry global provider is left alone, so tests may configure again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from wadud.observe import logs

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("wadud.tracing")

_provider: TracerProvider | None = None
_tracer: Tracer | None = None

#: The key an event (and an outbox row's ``trace`` column) keeps its W3C
#: trace context under.
EVENT_KEY = "trace"


def enabled() -> bool:
    """Whether spans are being made; hot paths test this and nothing else."""
    return _tracer is not None


def tracer() -> Tracer:
    assert _tracer is not None, "tracing is off"
    return _tracer


def configure(
    endpoint: str, *, service: str = "wadud", sample_ratio: float = 1.0, role: str = ""
) -> None:
    """Start exporting spans to the OTLP/HTTP collector at ``endpoint``
    (its base URL; ``/v1/traces`` is added unless the URL already ends so).
    An empty ``endpoint`` turns tracing off."""
    shutdown()
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    attributes = {"service.name": service}
    if role:
        attributes["wadud.role"] = role
    provider = TracerProvider(
        resource=Resource.create(attributes),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=5), schedule_delay_millis=500)
    )
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer("wadud")
    logs.trace_ids = current_ids
    log.info("tracing to OTLP/HTTP", extra={"otlp_url": url, "sample_ratio": sample_ratio})


def _detach() -> TracerProvider | None:
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    logs.trace_ids = None
    return provider


def shutdown() -> None:
    """Flush what is pending and stop; tracing is off afterwards. Blocks
    while the exporter sends (from a thread): in a running event loop, await
    :func:`aclose` instead."""
    provider = _detach()
    if provider is not None:
        provider.shutdown()


async def aclose() -> None:
    """:func:`shutdown` without blocking the event loop (a collector in this
    same process, as in tests, must keep answering)."""
    provider = _detach()
    if provider is not None:
        await asyncio.get_running_loop().run_in_executor(None, provider.shutdown)


async def flush(seconds: float = 5.0) -> None:
    """Send the spans ended so far, without blocking the event loop."""
    provider = _provider
    if provider is not None:
        await asyncio.get_running_loop().run_in_executor(
            None, provider.force_flush, int(seconds * 1000)
        )


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the span current here, if any."""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


# -- propagation ------------------------------------------------------------


def inject(carrier: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The current context as W3C ``traceparent`` (and ``tracestate``) entries,
    added to ``carrier`` if given; ``{}`` when tracing is off."""
    out: dict[str, str] = {} if carrier is None else carrier  # type: ignore[assignment]
    if _tracer is None:
        return out
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    TraceContextTextMapPropagator().inject(out)
    return out


def extract(carrier: Mapping[str, Any] | None) -> Context | None:
    """The context a ``traceparent`` carrier names, or None."""
    if _tracer is None or not carrier or not isinstance(carrier, Mapping):
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    clean = {k: v for k, v in carrier.items() if isinstance(v, str)}
    if "traceparent" not in clean:
        return None
    return TraceContextTextMapPropagator().extract(clean)


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: str = "internal",
    parent: Context | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span | None]:
    """A span around a block, current inside it; None when tracing is off.
    ``kind`` is an OpenTelemetry SpanKind name (internal, server, client,
    producer, consumer)."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span(
        name,
        context=parent,
        kind=SpanKind[kind.upper()],
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
    ) as s:
        yield s


@contextlib.contextmanager
def consume(
    event: Mapping[str, Any], name: str, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span | None]:
    """Continue, in a consumer, the trace an event from the bus or the
    ``events`` stream carries (its ``"trace"`` member): a CONSUMER span, child
    of the span that published it. Does nothing when tracing is off; opens a
    new trace when the event carries none."""
    if _tracer is None:
        yield None
        return
    attrs = {"messaging.message.id": str(event.get("id", "")) or None, **(attributes or {})}
    with span(name, kind="consumer", parent=extract(event.get(EVENT_KEY)), attributes=attrs) as s:
        yield s


# -- SQL --------------------------------------------------------------------

_DML = re.compile(r"\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+([A-Za-z_][\w.]*)", re.IGNORECASE)
_FROM = re.compile(r"\bFROM\s+([A-Za-z_][\w.]*)", re.IGNORECASE)


def _statement_name(query: str) -> str:
    """A span name of low cardinality: the verb and its table
    (``INSERT outbox``, ``SELECT doctors``, ``COMMIT``)."""
    words = query.split(None, 1)
    if not words:
        return "SQL"
    verb = words[0].upper().rstrip(";")
    if verb in {"WITH", "INSERT", "UPDATE", "DELETE"}:
        m = _DML.search(query)
        if m:
            return f"{m.group(1).split()[0].upper()} {m.group(2)}"
    if verb in {"WITH", "SELECT"}:
        m = _FROM.search(query)
        return f"SELECT {m.group(1)}" if m else "SELECT"
    return verb


def query_logged(record: Any) -> None:
    """asyncpg query logger: one CLIENT span per statement, timed by asyncpg.
    Called back in the context the statement finished in, so the span's
    parent is the request's (or relay's) span."""
    if _tracer is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    if not trace.get_current_span().get_span_context().is_valid:
        return  # a statement outside any traced work (pool upkeep): no lone traces
    end = time.time_ns()
    start = end - int(record.elapsed * 1e9)
    s = _tracer.start_span(
        _statement_name(record.query),
        kind=SpanKind.CLIENT,
        start_time=start,
        attributes={"db.system.name": "postgresql", "db.query.text": record.query[:2000]},
    )
    if record.exception is not None:
        s.set_status(Status(StatusCode.ERROR, type(record.exception).__name__))
    s.end(end_time=end)


def instrument_connection(conn: Any) -> None:
    """Trace the statements of an asyncpg connection (a pool's ``init``)."""
    if _tracer is not None:
        conn.add_query_logger(query_logged)


# -- HTTP -------------------------------------------------------------------


def middleware() -> Any:
    """The aiohttp middleware that opens a SERVER span per request; the
    assembly puts it outermost, so the request's log line carries its ids."""
    from aiohttp import web

    @web.middleware
    async def trace_requests(request: web.Request, handler: Any) -> web.StreamResponse:
        if _tracer is None:
            return await handler(request)  # type: ignore[no-any-return]
        info = request.match_info
        resource = None if info.http_exception is not None else info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        attrs = {
            "http.request.method": request.method,
            "http.route": route,
            "url.path": request.path,
        }
        with span(
            f"HTTP {request.method} {route}",
            kind="server",
            parent=extract(request.headers),
            attributes=attrs,
        ) as s:
            try:
                response: web.StreamResponse = await handler(request)
            except web.HTTPException as exc:
                assert s is not None
                s.set_attribute("http.response.status_code", exc.status)
                raise
            assert s is not None
            s.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                from opentelemetry.trace import Status, StatusCode

                s.set_status(Status(StatusCode.ERROR))
            return response

    return trace_requests
