"""OpenTelemetry traces, received by a real OTLP/HTTP endpoint.

The receiver is a small aiohttp server that accepts what the OpenTelemetry
exporter POSTs to ``/v1/traces`` (an ``ExportTraceServiceRequest`` in
protobuf) and keeps the spans. One request that changes data must give one
trace: the HTTP span, its SQL, the outbox emit, the relay and the bus publish,
and a consumer continuing it from the event; its log lines carry the id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import Api, free_port, served
from wadud.config import Settings
from wadud.observe import logs, tracing
from wadud.state import keys
from wadud.web.api import Role


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent: str
    name: str
    kind: int
    attributes: dict[str, Any]


@dataclass
class Receiver:
    port: int
    spans: list[Span] = field(default_factory=list)
    posts: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        assert request.headers["Content-Type"] == "application/x-protobuf"
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            import gzip

            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        self.posts += 1
        for rs in export.resource_spans:
            service = {a.key: a.value.string_value for a in rs.resource.attributes}
            assert service["service.name"] == "wadud-test"
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        Span(
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            s.name,
                            s.kind,
                            {
                                a.key: a.value.string_value or a.value.int_value
                                for a in s.attributes
                            },
                        )
                    )
        self.arrived.set()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver(free_port())
    app = web.Application()
    app.router.add_post("/v1/traces", rx.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", rx.port)
    await site.start()
    try:
        yield rx
    finally:
        await runner.cleanup()


@pytest.fixture
def settings(settings: Settings, receiver: Receiver) -> Settings:
    return dataclasses.replace(
        settings, otel_endpoint=receiver.endpoint, otel_service_name="wadud-test"
    )


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_one_trace_from_request_through_sql_outbox_bus_to_consumer(
    api: Api, receiver: Receiver
) -> None:
    assert tracing.enabled()
    admin = await api.user(Role.ADMIN)
    events = await api.app[keys.BUS].subscribe("clinic.created")
    lines = Lines()
    wadud_log = logging.getLogger("wadud")
    level = wadud_log.level
    wadud_log.setLevel(logging.INFO)
    wadud_log.addHandler(lines)
    try:
        clinic = await api.post(
            "/api/v1/clinics", {"name": "Traced Clinic", "region": "PK"}, token=admin, expect=201
        )
    finally:
        wadud_log.removeHandler(lines)
        wadud_log.setLevel(level)

    # The relay publishes the event with the publish span's context; a
    # consumer continues the trace from it.
    msg = await asyncio.wait_for(anext(aiter(events)), 10)
    await events.close()
    assert msg.data["data"]["clinic_id"] == clinic["id"]
    assert msg.data["trace"]["traceparent"].startswith("00-")
    with tracing.consume(msg.data, "test consume clinic.created"):
        pass
    await tracing.flush()

    def named(name: str) -> Span:
        found = [s for s in receiver.spans if s.name == name]
        assert len(found) == 1, (name, sorted({s.name for s in receiver.spans}))
        return found[0]

    request = named("HTTP POST /api/v1/clinics")
    trace = [s for s in receiver.spans if s.trace_id == request.trace_id]
    by_id = {s.span_id: s for s in trace}

    def ancestors(s: Span) -> list[str]:
        out = []
        while s.parent in by_id:
            s = by_id[s.parent]
            out.append(s.name)
        return out

    assert request.parent == ""  # a new trace: the client sent no traceparent
    assert request.kind == 2  # SERVER
    assert request.attributes["http.response.status_code"] == 201
    insert = next(s for s in trace if s.name == "INSERT clinics")
    assert insert.kind == 3  # CLIENT
    assert "INSERT INTO clinics" in insert.attributes["db.query.text"]
    assert ancestors(insert) == ["HTTP POST /api/v1/clinics"]
    emit = named("outbox emit clinic.created")
    assert emit.trace_id == request.trace_id
    assert ancestors(emit) == ["HTTP POST /api/v1/clinics"]
    emit_sql = [s for s in trace if s.parent == emit.span_id and s.kind == 3]
    assert [s.name for s in emit_sql] == ["INSERT outbox"]
    relay = named("outbox relay clinic.created")
    publish = named("bus publish clinic.created")
    consume = named("test consume clinic.created")
    assert relay.parent == emit.span_id
    assert publish.parent == relay.span_id and publish.kind == 4  # PRODUCER
    assert consume.parent == publish.span_id and consume.kind == 5  # CONSUMER
    assert msg.data["trace"]["traceparent"].split("-")[1:3] == [
        request.trace_id,
        publish.span_id,
    ]
    # The relay claims and marks rows in batches, for many traces at once: those
    # statements run outside any span and make no trace of their own.
    assert not any(s.name.startswith("UPDATE outbox") for s in receiver.spans)

    # Every log line of the request carries its trace id.
    request_lines = [ln for ln in lines.lines if ln.get("msg") == "request"]
    assert request_lines and all(ln["trace_id"] == request.trace_id for ln in request_lines)


async def test_a_caller_traceparent_is_continued(api: Api, receiver: Receiver) -> None:
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    await api.get("/readyz", headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"})
    await tracing.flush()
    ready = [s for s in receiver.spans if s.name == "HTTP GET /readyz"]
    assert [(s.trace_id, s.parent) for s in ready] == [(caller_trace, caller_span)]


async def test_off_by_default_events_and_rows_carry_nothing(settings: Settings) -> None:
    from bin.assembly import build_app

    app = build_app(dataclasses.replace(settings, otel_endpoint=""))
    async with served(app) as api:
        assert not tracing.enabled()
        assert logs.trace_ids is None
        admin = await api.user(Role.ADMIN)
        events = await app[keys.BUS].subscribe("clinic.created")
        await api.post(
            "/api/v1/clinics", {"name": "Plain", "region": "AE"}, token=admin, expect=201
        )
        msg = await asyncio.wait_for(anext(aiter(events)), 10)
        await events.close()
        assert "trace" not in msg.data
        assert (
            await app[keys.DB].fetchval("SELECT count(*) FROM outbox WHERE trace IS NOT NULL") == 0
        )
