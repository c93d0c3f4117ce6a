"""What every Wadud process leaves out of what its libraries would load."""

from __future__ import annotations

import json
import subprocess
import sys

# A process of ours imports the ground package first, then redis (every
# role but the worker shares the database and Redis), and with tracing on
# the trace SDK and its OTLP exporter (wadud.observe.tracing).
_PROCESS = """
import json, sys
import wadud
import redis.asyncio
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
TracerProvider().add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
print(json.dumps(sorted(name for name, module in sys.modules.items() if module is not None)))
"""


def _loaded(script: str) -> list[str]:
    """The modules a fresh interpreter holds after ``script`` (which prints them)."""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return list(json.loads(out.stdout))


def test_redis_does_not_load_opentelemetry_s_metrics_sdk_and_tracing_still_works() -> None:
    loaded = _loaded(_PROCESS)
    assert "redis.asyncio" in loaded and "opentelemetry.sdk.trace" in loaded
    assert not [m for m in loaded if m.startswith("opentelemetry.sdk.metrics")]


# `wadud serve` built as bin.main builds it, on its embedded defaults (no
# redis_url): every module its app imports, and the modules it loaded.
_SERVE = """
import json, sys
from bin import assembly
from wadud.config import Settings
assembly.role_app("serve", Settings())
print(json.dumps(sorted(name for name, module in sys.modules.items() if module is not None)))
"""


def test_wadud_serve_with_no_redis_loads_no_redis_py() -> None:
    """redis-py (about 8 MB resident: its package imports every client) is
    for the processes that talk to Redis; `wadud serve` on its defaults has
    none, and the modules that catch its errors import them where they do."""
    loaded = _loaded(_SERVE)
    assert "signalling.edge.http" in loaded and "sfu.control.rpc" in loaded
    assert not [m for m in loaded if m == "redis" or m.startswith("redis.")]


# The same, and the notifier's channels opened and closed as serve's notifier
# does on its defaults (no channel configured).
_SERVE_NOTIFIER = """
import asyncio, json, sys
from bin import assembly
from notify import channels
from wadud.config import Settings
assembly.role_app("serve", Settings())
async def main():
    opened = await channels.open_channels(Settings())
    assert opened.senders == {}, opened.senders
    await opened.close()
asyncio.run(main())
print(json.dumps(sorted(name for name, module in sys.modules.items() if module is not None)))
"""


def test_a_notifier_with_no_channel_loads_no_http_client() -> None:
    """httpx (with its command line, rich and click, where they are
    installed: about 7 MB) is for FCM, APNs and the SMS and WhatsApp
    webhooks; a notifier with none of them configured never imports it."""
    loaded = _loaded(_SERVE_NOTIFIER)
    assert "notify.channels" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("httpx", "httpcore", "rich", "click")]
