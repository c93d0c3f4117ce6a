"""benchmarks/load/run.py's smoke run: ``wadud serve`` and ``wadud load`` as
real processes, each on its own core where there are two, and the figures the
benchmark draws from the load's JSON."""

from __future__ import annotations

from pathlib import Path

from tests.benchmark_run import run_benchmark


def test_the_generator_capacity_benchmark_runs_and_tells_its_loss_from_the_servers(
    tmp_path: Path,
) -> None:
    done, out = run_benchmark("load.run", tmp_path / "load.json", 240, "--kinds", "video")
    (run,) = out["runs"]
    assert run["kind"] == "video" and run["subscribers"] == run["asked"] == 30, run
    assert 0 < run["generator_cpu_pct"] < 100 and run["generator_us_per_packet"] > 0, run
    assert run["generator_loss_pct"] == 0.0 and run["generator_socket_drops"] == 0, run
    assert run["server_us_per_forwarded_packet"] > 0, run
    assert out["medians"]["video"]["subscribers"] == 30
    assert "streams per generator core" in done.stdout
