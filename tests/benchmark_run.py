"""A benchmark script (``benchmarks/...``) run as its smoke test runs it: as a
module in a child interpreter at the repository's root, with its quickest
flags, writing its JSON where the test says, bounded in time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(
    module: str, out: Path, timeout: float, *flags: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run ``python -m benchmarks.<module>`` with ``--quick --json out`` and ``flags``;
    what it printed, and the JSON it wrote. Fails the test, with the end of
    its output, if it did not exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--quick", "--json", str(out), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return proc, result
