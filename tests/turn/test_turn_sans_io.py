"""The sans-I/O modules never import asyncio, socket, time or other clocks (STYLE.md).

ruff's banned-api (TID251) is repository-wide; until it is scoped to the
cores, this test holds the line for ``turn``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.syntax import parse_files

TURN = Path(__file__).resolve().parents[2] / "turn"
CORE_MODULES = [
    "allocation",
    "allocator",
    "config",
    "core",
    "credentials",
    "datapath",
    "errors",
    "metrics",
    "policy",
    "timers",
]
# The STUN codec the relay parses with is rtc/stun.py: ruff holds rtc/*.py to the same line.
BANNED = {"asyncio", "socket", "time", "datetime", "selectors", "ssl", "uvloop", "threading"}


@pytest.mark.parametrize("name", CORE_MODULES)
def test_core_module_has_no_io_imports(name: str) -> None:
    (tree,) = parse_files([TURN / f"{name}.py"])
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & BANNED, f"turn/{name}.py imports {sorted(imported & BANNED)}"
    # A core module may import turn.* only from the cores, never the adapter.
    assert "turn.aio" not in ast.dump(tree)
