"""Nothing the suite starts outlives it.

Every process of a test session (pytest-xdist's workers and all they start:
roles, browsers, Redis, PostgreSQL, and the daemons among them that leave
their process group with ``setsid`` or a double fork) lives in one cgroup v2
made for the session. When the session ends the cgroup is emptied whole:
each process left gets SIGTERM, and what is still there a moment later is
killed (``cgroup.kill``). So a worker that crashed mid-test, or a fixture
that never reached its teardown, leaves nothing running, and the session
says which processes it had to stop.

A process group is not enough: PostgreSQL and a daemonised Redis leave the
group of whoever started them. Where no cgroup v2 can be made (not root, or
no cgroup2 mount), the session falls back to stopping its own descendants,
which misses processes that detached; the header says which mode is on.

Loaded by tests/conftest.py, and by name (``-p tests.reaper``) in a session
of its own (tests/test_reaper.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

#: How long the processes left get to stop on SIGTERM before the cgroup is killed.
GRACE = 2.0


def _cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted, if it is."""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    return None


def _own_cgroup() -> str | None:
    """This process's path in the cgroup v2 hierarchy (``0::/path``)."""
    with open("/proc/self/cgroup") as cgroups:
        for line in cgroups:
            if line.startswith("0::"):
                return line.strip()[3:]
    return None


class Reaper:
    """The session's cgroup, or, without one, the session's own process tree."""

    def __init__(self) -> None:
        self.cgroup: Path | None = None
        self.parent: Path | None = None
        root, own = _cgroup2_root(), _own_cgroup()
        if root is None or own is None:
            return
        parent = root / own.lstrip("/")
        cgroup = parent / f"wadud-tests-{os.getpid()}"
        try:
            cgroup.mkdir()
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            with contextlib.suppress(OSError):
                cgroup.rmdir()
            return
        self.cgroup, self.parent = cgroup, parent

    @property
    def mode(self) -> str:
        return f"cgroup {self.cgroup}" if self.cgroup else "descendants only (no cgroup v2 here)"

    def _left(self) -> list[psutil.Process]:
        """The processes of the session still running, this one aside."""
        me = os.getpid()
        if self.cgroup is None:
            return [p for p in psutil.Process(me).children(recursive=True) if _running(p)]
        pids: set[int] = set()
        for procs in self.cgroup.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(pid) for pid in procs.read_text().split())
        pids.discard(me)
        left = []
        for pid in sorted(pids):
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if _running(process):
                    left.append(process)
        return left

    def reap(self) -> list[str]:
        """Stop every process the session left; a line about each."""
        if self.cgroup is not None and self.parent is not None:
            # Out of the cgroup first, so killing it spares this process.
            with contextlib.suppress(OSError):
                (self.parent / "cgroup.procs").write_text(str(os.getpid()))
        left = self._left()
        said = []
        for process in left:
            with contextlib.suppress(psutil.Error):
                said.append(f"{process.pid} {' '.join(' '.join(process.cmdline()).split())[:160]}")
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self._left()
        if self.cgroup is not None:
            kill = self.cgroup / "cgroup.kill"
            if left and kill.exists():
                kill.write_text("1")
            else:
                for process in left:
                    with contextlib.suppress(psutil.Error):
                        process.kill()
            deadline = time.monotonic() + GRACE
            while self._left() and time.monotonic() < deadline:
                time.sleep(0.05)
            for cgroup in sorted(self.cgroup.rglob("*/"), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    cgroup.rmdir()
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()
        else:
            for process in left:
                with contextlib.suppress(psutil.Error):
                    process.kill()
        return said


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


_REAPER: list[Reaper] = []


def pytest_configure(config: pytest.Config) -> None:
    # The controller only: xdist starts its workers after this, inside the cgroup.
    if not hasattr(config, "workerinput"):
        _REAPER.append(Reaper())


def pytest_report_header(config: pytest.Config) -> str | None:
    return f"reaper: {_REAPER[0].mode}" if _REAPER else None


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if not _REAPER:
        return
    said = _REAPER.pop().reap()
    if said:
        # Loud on purpose: a fixture that leaves a process running is a defect.
        print(f"\nreaper: stopped {len(said)} process(es) the session left:", file=sys.stderr)
        for line in said:
            print(f"reaper:   {line}", file=sys.stderr)
