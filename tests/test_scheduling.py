"""A run whose worker crashes after finishing other groups still ends (tests/scheduling.py).

A session of its own, on two pytest-xdist workers with ``--dist loadgroup`` as
``make test`` runs: four groups of quick tests, then a group whose one test
ends its worker the first time it runs (as a test past its timeout does).
The worker that takes it has finished groups before, which pytest-xdist 3.8
put back on the queue as empty units; without tests/scheduling.py such a
session hangs after its last test (pytest-dev/pytest-xdist#1378). It must
end within the helper's 90 s, report the crash as a failure, and run every
other test.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.inner import inner_session

GROUPS = """
import pytest

pytestmark = pytest.mark.xdist_group("{group}")


def test_first():
    pass


def test_second():
    pass
"""

CRASHING = """
import os
import pathlib

import pytest


@pytest.mark.xdist_group("crash")
def test_ends_its_worker_once():
    marker = pathlib.Path(os.environ["CRASHED_ONCE"])
    if not marker.exists():
        marker.touch()
        os._exit(1)
"""


def test_a_crashed_worker_that_had_finished_groups_does_not_hang_the_run(
    tmp_path: Path,
) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.scheduling"]\n')
    for n in range(1, 5):
        (tmp_path / f"test_g{n}.py").write_text(textwrap.dedent(GROUPS.format(group=f"g{n}")))
    (tmp_path / "test_z_crash.py").write_text(textwrap.dedent(CRASHING))
    marker = tmp_path / "crashed"
    run = inner_session(
        tmp_path,
        "-n",
        "2",
        "--dist",
        "loadgroup",
        "--no-loadscope-reorder",
        env={"CRASHED_ONCE": str(marker)},
    )
    out = run.stdout + run.stderr
    assert marker.exists(), out  # the crash really happened
    assert "node down" in out, out
    # The crashed test fails; the replacement worker runs it again and the rest.
    assert "1 failed, 9 passed" in out, out
