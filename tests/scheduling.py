"""pytest-xdist's ``--dist loadgroup`` scheduler, made to finish after a worker crash.

``make test`` runs the suite on four workers with ``--dist loadgroup``, and a
test that overruns its timeout ends its worker (pytest-timeout's thread
method), which pytest-xdist then replaces. pytest-xdist 3.8's
``LoadScopeScheduling.remove_node`` puts the dead worker's whole workload
back on the queue, the groups it had already finished included (upstream
issue pytest-dev/pytest-xdist#1378). Each finished group is later handed to
a worker as a unit with nothing left to run; a worker is only given more
work when it completes a test, so once those empty units outnumber the
completions left, every worker waits for work that never comes and the run
hangs after its last test, with no summary, until CI's limit ends it.

:class:`LoadGroupAfterCrash` drops the finished groups before the workload
goes back; what was not finished is scheduled as before. The hook is
pytest-xdist's own extension point for a scheduler.
"""

from __future__ import annotations

from typing import Any


def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    """Our scheduler for ``--dist loadgroup``; pytest-xdist's for any other."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling  # type: ignore[import-untyped]

    class LoadGroupAfterCrash(LoadGroupScheduling):  # type: ignore[misc]
        def remove_node(self, node: Any) -> str | None:
            workload = self.assigned_work.get(node, {})
            for group in [group for group, tests in workload.items() if all(tests.values())]:
                del workload[group]
            crashed: str | None = super().remove_node(node)
            return crashed

    return LoadGroupAfterCrash(config, log)
