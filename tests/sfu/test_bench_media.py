"""The SFU benchmark's ``--media`` mode: about a second of fan-out 10 through a
real ``wadud media`` node driven over Redis, and control round trips timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_media_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "sfu-media.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.sfu.run", "--media", "--quick",
            "--rpc-calls", "50", "--json", str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "control over Redis, ping" in proc.stdout
    result = json.loads(out.read_text())
    assert result["control_rpc_us"]["ping"]["count"] == 50
    assert result["control_rpc_us"]["subscribe"]["p50"] > 0
    (run,) = result["results"]
    assert run["scenario"] == "1x10"
    assert run["subscriber_transports"] == 10
    assert run["forwarded_window"] > 0
    assert run["loss_pct"] < 5
    assert run["worker_cpu_seconds"] > 0
    assert run["errors"] == []
