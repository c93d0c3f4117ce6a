"""Requests aiohttp's HTTP parser refuses (issue 21): each gets a 400, none
is logged as an error with a traceback, and the warnings they leave are
bounded however many come. A real aiohttp server on loopback, raw sockets as
the clients, and the logging that ``wadud.logs.configure`` sets up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from aiohttp import web

from tests.conftest import free_port
from wadud import logs

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
    """What reaches the root logger once wadud.logs configured logging."""
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
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        statuses: list[bytes] = []
        for start in range(0, 1000, 50):
            statuses += await asyncio.gather(
                *(_status(port, MALFORMED[i % len(MALFORMED)]) for i in range(start, start + 50))
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
    assert line.startswith("refused a malformed HTTP request (400 ") and "127.0.0.1" in line, line
