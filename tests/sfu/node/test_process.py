"""What a ``wadud media`` worker process loads (issue 41: its resident size)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: Packages a worker has no use for: the HTTP server and client, the
#: database driver, tracing, and every feature above the SFU.
NEVER = (
    "aiohttp",
    "asyncpg",
    "opentelemetry",
    "psutil",
    "signalling",
    "booking",
    "chat",
    "notify",
    "privacy",
    "recording",
    "sip",
    "hooks",
)

# As multiprocessing's spawn starts a worker: the entry script run again as
# __mp_main__, the spec's module unpickled, then what the worker imports as
# it starts (sfu.node.process.worker_process and _worker_main, _start).
_WORKER = """
import json, runpy, sys
runpy.run_path(sys.argv[1], run_name="__mp_main__")
from sfu.node import process
process.shed_unused()
import uvloop
import redis.exceptions
from wadud.observe import logs, metrics
from sfu.control import registry, rpc
from sfu.node import settings, worker
loaded = {name.split(".")[0] for name, module in sys.modules.items() if module is not None}
print(json.dumps(sorted(loaded)))
"""


def test_a_worker_process_imports_only_what_it_uses() -> None:
    entry = Path(sys.executable).parent / "wadud"
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, str(entry)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = set(json.loads(out.stdout))
    assert "sfu" in loaded and "redis" in loaded
    assert loaded.isdisjoint(NEVER), sorted(loaded & set(NEVER))
