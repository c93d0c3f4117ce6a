"""A suite whose worker dies mid-test leaves no process running (tests/reaper.py).

A session of its own runs one test on a pytest-xdist worker. The test starts
a process in a group of its own and a daemon that detaches (a double fork
and ``setsid``, as PostgreSQL and a daemonised Redis do), then kills its own
worker with SIGKILL, so no fixture or ``finally`` of it runs. When that
session has ended, neither process may be running.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import psutil

from tests.inner import inner_session

CRASHING = '''
import os, signal, subprocess, sys

def test_starts_processes_then_its_worker_dies():
    pids = os.environ["REAPER_PIDS"]
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    # The daemon: fork, setsid, fork again; the grandchild is adopted by
    # whoever reaps orphans, outside any process group of the test's.
    subprocess.run([sys.executable, "-c", """
import os, sys, time
if os.fork():
    sys.exit(0)
os.setsid()
if os.fork():
    sys.exit(0)
with open(sys.argv[1], "a") as f:
    f.write(f"daemon {os.getpid()}\\\\n")
time.sleep(300)
""", pids], check=True)
    with open(pids, "a") as f:
        f.write(f"child {child.pid}\\n")
    while sum(1 for _ in open(pids)) < 2:
        pass
    os.kill(os.getpid(), signal.SIGKILL)
'''


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_nothing_a_crashed_worker_started_outlives_the_session(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.reaper"]\n')
    (tmp_path / "test_crash.py").write_text(textwrap.dedent(CRASHING))
    pids = tmp_path / "pids"
    pids.touch()
    run = inner_session(
        tmp_path, "-n", "1", "--max-worker-restart", "0", env={"REAPER_PIDS": str(pids)}
    )
    out = run.stdout + run.stderr
    assert "crashed" in out, out  # the worker really died mid-test
    started = dict(line.split() for line in pids.read_text().splitlines())
    assert set(started) == {"child", "daemon"}, out
    # A killed process may stay a zombie a moment, until its new parent reaps it.
    deadline = time.monotonic() + 10
    while any(_alive(int(pid)) for pid in started.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = {name: pid for name, pid in started.items() if _alive(int(pid))}
    if "reaper: cgroup" in out:
        assert not alive, out
    else:
        # Without a cgroup the fallback reaches only the session's own
        # descendants: the child, adopted by nothing else, but not the
        # daemon, which detached to init.
        assert "child" not in alive, out
        for pid in alive.values():
            psutil.Process(int(pid)).kill()
    assert "reaper: stopped" in out, out
