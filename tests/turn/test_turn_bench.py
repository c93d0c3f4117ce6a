"""Smoke test: the side-by-side benchmark runs end to end in --quick mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.turn.conftest import need_binary

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_quick_mode(tmp_path: Path) -> None:
    need_binary("turnserver")
    need_binary("turnutils_uclient")
    out = tmp_path / "turn.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/turn/run.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ours/coturn per CPU-second" in proc.stdout
    result = json.loads(out.read_text())
    servers = {r["server"] for r in result["loads"]}
    assert servers == {"coturn", "wadud"}
    assert all(r["received"] > 0 for r in result["loads"])
