"""Smoke test: the side-by-side benchmark runs end to end in --quick mode."""

from __future__ import annotations

from pathlib import Path

from tests.benchmark_run import run_benchmark
from tests.turn.conftest import need_binary


def test_benchmark_quick_mode(tmp_path: Path) -> None:
    need_binary("turnserver")
    need_binary("turnutils_uclient")
    proc, result = run_benchmark("turn.run", tmp_path / "turn.json", 60)
    assert "ours/coturn per CPU-second" in proc.stdout
    servers = {r["server"] for r in result["loads"]}
    assert servers == {"coturn", "wadud"}
    assert all(r["received"] > 0 for r in result["loads"])
