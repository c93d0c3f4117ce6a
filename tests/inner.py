"""A pytest session of its own, for the tests of the suite's own plugins
(tests/reaper.py, tests/summary.py): run in a child process on a folder that
holds its conftest and test files, on pytest-xdist workers as ``make test``
runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: The repository, on the child's PYTHONPATH so its conftest loads our plugins.
ROOT = Path(__file__).resolve().parent.parent


def inner_session(
    folder: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run pytest on ``folder`` with ``args`` (``-n 1`` and the like) and
    ``env`` added to a bare environment; its output, stdout and stderr."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *args,
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "--rootdir",
            str(folder),
            # A temp root of its own: pytest makes the shared one
            # (/tmp/pytest-of-USER) private again when a session starts, and
            # the suite's PostgreSQL, run as user pgserver under it, lost its
            # data folder (PANIC: pg_control: Permission denied).
            "--basetemp",
            str(folder / "inner"),
            str(folder),
        ],
        cwd=folder,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=90,
    )
