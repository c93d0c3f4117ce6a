"""The end of a run names every rerun and why it failed (tests/summary.py).

pytest-rerunfailures' own summary says only that a test was rerun; a rerun
that then passed leaves no trace of what went wrong, and CI keeps only the
end of its output. A session of its own, on a pytest-xdist worker as
``make test`` runs, reruns a test that fails once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAILS_ONCE = """
import os

def test_fails_the_first_time():
    mark = os.environ["SUMMARY_MARK"]
    if not os.path.exists(mark):
        open(mark, "w").close()
        assert 6 * 7 == 41, "the answer moved"
"""


def test_a_rerun_is_named_with_its_failure(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.summary"]\n')
    (tmp_path / "test_once.py").write_text(textwrap.dedent(FAILS_ONCE))
    env = {"PYTHONPATH": str(ROOT), "SUMMARY_MARK": str(tmp_path / "mark"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "1",
            "--reruns",
            "1",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "--rootdir",
            str(tmp_path),
            # A temp root of its own (see tests/test_reaper.py).
            "--basetemp",
            str(tmp_path / "inner"),
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    lines = out.splitlines()
    named = next(i for i, line in enumerate(lines) if "1 x  test_once.py::" in line)
    why = lines[named + 1]
    assert "test_once.py:8: AssertionError: the answer moved" in why, out
