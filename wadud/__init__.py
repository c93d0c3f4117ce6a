"""Shared plumbing of every Wadud role: configuration, errors, logging,
metrics, the database pool and migrations, the bus and outbox, tokens, and the
aiohttp application assembly."""

from __future__ import annotations

import sys

__version__ = "0.1.0"

# redis-py loads OpenTelemetry's metrics SDK whenever it is installed (ours
# is, for traces: wadud.observe.tracing), to offer metrics of its own that
# nothing here turns on: our metrics are Prometheus'. That is 60 modules and
# about 2.6 MB in every process that imports redis. None in sys.modules
# makes the import fail, which redis-py takes for "not installed"; tracing
# uses the trace SDK alone. First here, before any of ours imports redis.
sys.modules.setdefault("opentelemetry.sdk.metrics", None)  # type: ignore[arg-type]
