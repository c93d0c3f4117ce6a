"""Structured logs: one JSON object per line, with the request id of the
request being served (a context variable, so tasks it spawns inherit it) and,
when tracing is on (:mod:`wadud.observe.tracing`), the trace and span ids of the span
current where the line was written."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp.http_exceptions import HttpProcessingError

#: Set by :func:`wadud.observe.tracing.configure`: the current (trace id, span id), or
#: None outside any span. None while tracing is off, so logging pays nothing.
trace_ids: Callable[[], tuple[str, str] | None] | None = None

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else was passed in ``extra=`` and
# belongs in the JSON object.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            out["request_id"] = rid
        ids = trace_ids() if trace_ids is not None else None
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """What was passed in ``extra=``: the line's own fields."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """One line for a terminal: the message, then its fields as
    ``key=value`` (which room, which worker, why: what the JSON object
    carries), then the request and trace ids in brackets."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        if fields:
            head, newline, rest = text.partition("\n")
            text = f"{head} {fields}{newline}{rest}"
        rid = request_id.get()
        ids = trace_ids() if trace_ids is not None else None
        if ids is not None:
            rid = f"{rid or ''} trace={ids[0]}".strip()
        return f"{text} [{rid}]" if rid else text


class RefusedRequests(logging.Filter):
    """On aiohttp's server logger: a request its HTTP parser refused (an
    over-long URL, Content-Length with Transfer-Encoding, a negative
    Content-Length, ...) is the client's fault, answered 400, and anyone can
    send thousands. aiohttp logs each at ``error`` with a traceback
    (``RequestHandler.handle_error``); this makes it one ``warning`` line,
    at most ``per_minute`` of them a minute, and says how many it left out.
    Anything else the logger says passes unchanged.

    The line carries ``client``, ``status`` and ``reason`` (cut short), and
    ``method`` and ``path`` (cut short) when they are known: aiohttp hands
    its error handler a placeholder request, not the refused one, so they
    come from what the parser's error quotes (the start of an over-long
    request line), else they are ``-``."""

    def __init__(self, per_minute: int = 10) -> None:
        super().__init__()
        self.per_minute = per_minute
        self._minute = -1
        self._logged = 0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # Only a process that loaded aiohttp's parser can have its errors
        # (a media worker never loads aiohttp: this module must not either).
        errors = sys.modules.get("aiohttp.http_exceptions")
        # Below error, aiohttp already chose to be quiet (a TLS hello on the
        # port is a debug line); a 5xx is ours to see in full.
        if (
            record.levelno < logging.ERROR
            or errors is None
            or not isinstance(exc, errors.HttpProcessingError)
            or exc.code >= 500
        ):
            return True
        minute = int(record.created // 60)
        if minute != self._minute:
            dropped, self._dropped = self._dropped, 0
            self._minute, self._logged = minute, 0
        else:
            dropped = 0
        if self._logged >= self.per_minute:
            self._dropped += 1
            return False
        self._logged += 1
        client = record.args[0] if isinstance(record.args, tuple) and record.args else None
        too_long = isinstance(exc, errors.LineTooLong)
        method, path = _refused_target(exc, too_long)
        reason = str(exc.message or exc)
        if too_long:
            # The quoted line is in ``path``.
            reason = reason.partition(": ")[0]
        reason = " ".join(reason.split())[:160]
        target = f"{method} {path}" if (method, path) != ("-", "-") else "method and path unknown"
        more = f" ({dropped} more in the minute before not logged)" if dropped else ""
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "refused a malformed HTTP request from %s (%s): %s %s%s"
        record.args = (client, target, exc.code, reason, more)
        record.exc_info = record.exc_text = None
        record.client, record.status, record.reason = str(client), exc.code, reason
        record.method, record.path = method, path
        return True


_TARGET_CUT = 60


def _refused_target(exc: HttpProcessingError, too_long: bool) -> tuple[str, str]:
    """(method, path) of a refused request, as far as its error quotes them
    (only a ``LineTooLong``, ``too_long``, quotes the line)."""
    line = exc.args[0] if too_long and exc.args else b""
    text = (
        bytes(line).decode("latin-1") if isinstance(line, bytes | bytearray) else str(line)
    ).removesuffix("...")
    first, _, rest = text.partition(" ")
    if first.isalpha() and first.isupper() and rest:
        method, target = first, rest
    else:
        method, target = "-", text
    if not target.startswith(("/", "http://", "https://")):
        return method, "-"
    target = target.split(" ", 1)[0]
    cut = target[:_TARGET_CUT] + ("..." if len(target) > _TARGET_CUT else "")
    return method, cut.encode("ascii", "backslashreplace").decode()


def configure(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log repeats what our middleware logs as JSON.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, RefusedRequests) for f in server.filters):
        server.addFilter(RefusedRequests())
