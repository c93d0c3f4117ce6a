"""The control plane benchmark (benchmarks/control/run.py) in its quick mode:
real PostgreSQL, Redis and two ``wadud api`` replicas, a few dozen of each
operation. Checks the JSON it writes has every figure the sizing table in
docs/operations.md is built from, and that each is there and positive."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmark_run import run_benchmark


@pytest.mark.timeout(160)
def test_benchmark_quick_mode(tmp_path: Path) -> None:
    # About 45 s in a full suite run; over 80 s once (ci21) beside two
    # browser clusters. A bound on finishing, not a figure checked.
    proc, result = run_benchmark("control.run", tmp_path / "control.json", 150)
    for op in ("joins", "leaves", "resumes", "forwarded_frames"):
        figures = result[op]
        assert figures["count"] > 0, op
        assert figures["failed"] == 0, (op, proc.stdout[-2000:])
        assert figures["per_second"] > 0, op
        assert figures["redis_commands_per_op"] > 0, op
        assert figures["latency_ms"]["p50"] > 0, op
        assert all(v >= 0 for v in figures["replica_cpu_ms_per_op"].values()), op
    assert set(result["forwarded_frames"]["replica_cpu_ms_per_op"]) == {"A", "B"}
    assert set(result["placement"]) == {"1", "100", "1000"}
    for workers, figures in result["placement"].items():
        place = figures["place"]
        assert place["count"] > 0 and place["placed"] == place["count"], workers
        assert place["latency_ms"]["p99"] >= place["latency_ms"]["p50"] > 0, workers
        assert place["redis_commands_per_op"] > 0, workers
        assert figures["join_through_a"]["count"] > 0, workers
    held = result["held_rooms"]
    assert held["rooms"] > 0
    assert held["redis_commands_per_second"] > 0
    assert held["redis_memory_bytes_per_room"] > 0
    machine = result["machine"]
    assert machine["nproc"] > 0 and machine["ram_gib"] > 0
    assert result["command"].startswith(".venv/bin/python -m benchmarks.control.run")
