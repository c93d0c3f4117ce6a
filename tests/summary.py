"""What a run says loudly at its end: every rerun, and every test over 30 s.

A rerun that passed hides whether the product or the test was at fault, and
a test that creeps past half a minute is how a 10-minute suite became a
22-minute one; both are easy to miss in pytest's own summary. The figures
are each test's setup, call and teardown together, as the controller
received them (pytest-xdist forwards every worker's reports).

Loaded by tests/conftest.py.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

#: A test that takes longer than this is named at the end of the run.
SLOW = 30.0

_seconds: dict[str, float] = defaultdict(float)
_reruns: dict[str, int] = defaultdict(int)
#: Why each rerun failed, as pytest put it in one line (its crash message).
_why: dict[str, list[str]] = defaultdict(list)
#: A reason longer than this is cut: enough for an assertion's first values.
WHY_CHARS = 600
#: What a failed try printed, its last this many characters: the scenario's
#: figures that say why, which the passing try's report does not keep.
OUT_CHARS = 4000
#: What each rerun's failed try printed (stdout, cut to OUT_CHARS).
_out: dict[str, list[str]] = defaultdict(list)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seconds[report.nodeid] += report.duration
    if report.outcome == "rerun":
        _reruns[report.nodeid] += 1
        _why[report.nodeid].append(_reason(report))
        _out[report.nodeid].append(report.capstdout[-OUT_CHARS:])


def _reason(report: pytest.TestReport) -> str:
    """The failure's own line (``path:line: message``), which pytest's
    rerun summary leaves out: a rerun that passed says nothing else."""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        text = f"{crash.path}:{crash.lineno}: {crash.message}"
    else:
        lines = str(report.longrepr).strip().splitlines()
        text = lines[-1] if lines else ""
    text = " ".join(text.split())
    return text if len(text) <= WHY_CHARS else text[: WHY_CHARS - 3] + "..."


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if hasattr(terminalreporter.config, "workerinput"):
        return
    write = terminalreporter.write_sep
    slow = sorted(((s, n) for n, s in _seconds.items() if s > SLOW), reverse=True)
    write("!", f"{len(slow)} test(s) over {SLOW:.0f} s", yellow=bool(slow), bold=True)
    for seconds, nodeid in slow:
        terminalreporter.write_line(f"{seconds:7.1f} s  {nodeid}")
    write("!", f"{sum(_reruns.values())} rerun(s)", red=bool(_reruns), bold=True)
    for nodeid, count in sorted(_reruns.items()):
        terminalreporter.write_line(f"  {count} x  {nodeid}")
        for why, out in zip(_why[nodeid], _out[nodeid], strict=True):
            terminalreporter.write_line(f"      {why}")
            for line in out.strip().splitlines():
                terminalreporter.write_line(f"      | {line}")
