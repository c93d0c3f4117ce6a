"""benchmarks/sfu/janus.py end to end: a tiny side-by-side run against a real Janus.

Slow (three servers, two scenarios' worth of setup) and needs Debian's
``janus`` and gcc (the loopback shim is built by the benchmark): run with
``make test PYTEST_ARGS="-m slow tests/sfu/test_bench_janus.py"``. It keeps
the benchmark working as run.py, which it builds on, changes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("janus") is None, reason="janus not installed"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the loopback shim"),
]


@pytest.mark.timeout(600)
def test_side_by_side_run_forwards_on_both_servers(tmp_path: Path) -> None:
    out = tmp_path / "janus.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.sfu.janus",
            "--rounds", "1", "--scenarios", "1x20", "--out-rate", "3600",
            "--warmup", "1", "--seconds", "2", "--no-latency", "--no-python",
            "--json", str(out),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    entry = result["throughput"]["1x20"]
    for who in ("wadud", "janus"):
        assert entry[who]["runs"][0] > 0, entry
        assert entry[who]["loss_pct"][0] < 5, entry
    assert entry["wadud/janus"]["per_round"]
    assert result["rss"]["janus"]["rss_mb_with_40_subscribers"] > 0
    assert "wadud/janus" in proc.stdout
