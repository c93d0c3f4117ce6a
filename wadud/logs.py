"""Structured logs: one JSON object per line, with the request id of the
request being served (a context variable, so tasks it spawns inherit it) and,
when tracing is on (:mod:`wadud.tracing`), the trace and span ids of the span
current where the line was written."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

#: Set by :func:`wadud.tracing.configure`: the current (trace id, span id), or
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
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = request_id.get()
        ids = trace_ids() if trace_ids is not None else None
        if ids is not None:
            rid = f"{rid or ''} trace={ids[0]}".strip()
        return f"{text} [{rid}]" if rid else text


def configure(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log repeats what our middleware logs as JSON.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
