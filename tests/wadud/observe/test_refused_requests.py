"""Requests aiohttp's HTTP parser refuses (issue 21): each gets a 400, none
is logged as an error with a traceback, and the warnings they leave are
bounded however many come. A real aiohttp server on loopback, raw sockets as
the clients, and the logging that ``wadud.observe.logs.configure`` sets up."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError

from tests.conftest import free_port_in
from tests.sfu.node.test_node import get, start_media_node, wait_ready
from wadud.observe import logs

MALFORMED = (
    # A request line longer than the parser takes (8,190 bytes).
    b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    # Content-Length and Transfer-Encoding together (RFC 9112 section 6.3).
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    # A negative Content-Length.
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[_Records]:
    """What reaches the root logger once wadud.observe.logs configured logging."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    server = logging.getLogger("aiohttp.server")
    logs.configure("info", "text")
    handler = _Records()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        server.filters[:] = [f for f in server.filters if not isinstance(f, logs.RefusedRequests)]


async def _status(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 5)).strip()
    finally:
        writer.close()


async def test_a_thousand_malformed_requests_get_400_and_no_error_lines(
    records: _Records,
) -> None:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port_in(24600, 24799)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        # One of each kind first, so each is among the lines logged.
        statuses = [await _status(port, data) for data in MALFORMED]
        for start in range(len(MALFORMED), 1000, 50):
            statuses += await asyncio.gather(
                *(
                    _status(port, MALFORMED[i % len(MALFORMED)])
                    for i in range(start, min(start + 50, 1000))
                )
            )
        # The server still serves everyone else.
        ok = await _status(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        await runner.cleanup()
    assert len(statuses) == 1000
    assert all(s.split()[1:2] == [b"400"] for s in statuses), set(statuses)
    assert ok.startswith(b"HTTP/1.1 200")
    mine = [r for r in records.records if r.name.startswith("aiohttp")]
    assert not [r for r in mine if r.levelno >= logging.ERROR or r.exc_info], [
        r.getMessage() for r in mine if r.levelno >= logging.ERROR
    ][:3]
    warnings = [r for r in mine if r.levelno == logging.WARNING]
    # At most 10 a minute: the run may straddle one minute's end.
    assert 1 <= len(warnings) <= 20, len(warnings)
    line = warnings[0].getMessage()
    assert line.startswith("refused a malformed HTTP request from 127.0.0.1 (") and ": 400 " in line
    # Each names what aiohttp lets it know of the request: the client, and
    # the path cut short when the parser's error quotes it.
    by_reason = {w.reason.split(":")[0]: w for w in warnings}  # type: ignore[attr-defined]
    long = by_reason["Got more than 8190 bytes when reading"]
    assert long.path.startswith("/aaa") and len(long.path) <= 64  # type: ignore[attr-defined]
    assert long.client == "127.0.0.1" and long.status == 400  # type: ignore[attr-defined]
    assert "a" * 100 not in long.getMessage()
    negative = by_reason["Invalid character in Content-Length"]
    assert "method and path unknown" in negative.getMessage()


def test_quiet_lines_stay_quiet_and_server_errors_stay_whole() -> None:
    """What aiohttp logs below error (a TLS hello on the port, at debug) and
    a 5xx pass through the filter unchanged."""
    quiet = logs.RefusedRequests()
    hello = BadHttpMethod(b"\x16\x03", error="Received HTTPS traffic on an HTTP port")
    debug = logging.LogRecord(
        "aiohttp.server", logging.DEBUG, "", 0, "Error handling request from %s",
        ("127.0.0.1",), (BadHttpMethod, hello, None),
    )  # fmt: skip
    assert quiet.filter(debug) and debug.levelno == logging.DEBUG and debug.exc_info
    broken = HttpProcessingError(code=500, message="boom")
    error = logging.LogRecord(
        "aiohttp.server", logging.ERROR, "", 0, "Error handling request from %s",
        ("127.0.0.1",), (HttpProcessingError, broken, None),
    )  # fmt: skip
    assert quiet.filter(error) and error.levelno == logging.ERROR and error.exc_info


async def test_a_running_role_logs_no_error_for_a_thousand_malformed_requests(
    redis_server: Any, tmp_path: Path
) -> None:
    """The same through a role as it runs (``wadud media``'s /healthz port,
    logging set up by ``wadud`` itself, JSON lines on its output)."""
    node = start_media_node(redis_server.url, tmp_path, workers=1, http=free_port_in(24600, 24799))
    try:
        await wait_ready(node)
        port = node.http
        statuses: list[bytes] = []
        for start in range(0, 1000, 50):
            statuses += await asyncio.gather(
                *(_status(port, MALFORMED[i % len(MALFORMED)]) for i in range(start, start + 50))
            )
        assert all(s.split()[1:2] == [b"400"] for s in statuses), set(statuses)
        assert (await get(node.url + "/healthz"))[0] == 200
        await asyncio.sleep(0.2)
    finally:
        node.stop()
    lines = []
    for text in node.log.read_text(errors="replace").splitlines():
        if text.startswith("{"):
            lines.append(json.loads(text))
    assert not [x for x in lines if x["level"] == "error" or "exc" in x], node.tail()
    refused = [x for x in lines if x["logger"] == "aiohttp.server"]
    assert 1 <= len(refused) <= 20, len(refused)
    assert {x["level"] for x in refused} == {"warning"}
    assert {x["client"] for x in refused} == {"127.0.0.1"} and {x["status"] for x in refused} == {
        400
    }
