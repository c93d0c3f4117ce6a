"""The end of a run names every rerun and why it failed (tests/summary.py).

pytest-rerunfailures' own summary says only that a test was rerun; a rerun
that then passed leaves no trace of what went wrong, and CI keeps only the
end of its output. A session of its own, on a pytest-xdist worker as
``make test`` runs, reruns a test that fails once.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.inner import inner_session

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
    run = inner_session(
        tmp_path, "-n", "1", "--reruns", "1", env={"SUMMARY_MARK": str(tmp_path / "mark")}
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    lines = out.splitlines()
    named = next(i for i, line in enumerate(lines) if "1 x  test_once.py::" in line)
    why = lines[named + 1]
    assert "test_once.py:8: AssertionError: the answer moved" in why, out
