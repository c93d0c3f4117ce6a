"""The ground imports no floor above it (STYLE.md, "Structure: floors that only look down").

``wadud/`` is plumbing every feature stands on; a feature registers itself
with the roles' assembly (``bin/assembly.py``) instead of being named here.
Every import counts, at module level or inside a function, under
``TYPE_CHECKING`` or through ``importlib``: the check reads the source, it
does not import it.
"""

from __future__ import annotations

import ast
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

GROUND = Path(__file__).resolve().parents[2] / "wadud"
ABOVE = frozenset({"booking", "chat", "rtc", "sfu", "signalling", "turn", "bin"})


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import anywhere in ``tree``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def upward(tree: ast.AST) -> list[tuple[int, str]]:
    return [(line, name) for line, name in imported(tree) if name.split(".")[0] in ABOVE]


def _parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), str(path))


def _parse_source(source: str) -> ast.AST:
    with ThreadPoolExecutor(1) as pool:  # see below: a fresh thread's counter
        return pool.submit(ast.parse, source).result()


def test_the_ground_imports_no_feature_and_no_assembly() -> None:
    files = sorted(GROUND.rglob("*.py"))
    assert len(files) > 10, "the ground's modules were not found"
    # Parsed on a thread of its own: CPython 3.11's AST builder checks a
    # per-thread recursion counter that earlier tests in this process can
    # leave off balance ("AST constructor recursion depth mismatch", seen
    # once in a full run); a fresh thread starts from zero.
    with ThreadPoolExecutor(1) as pool:
        trees = list(pool.map(_parse, files))
    offences = [
        f"{path.relative_to(GROUND.parent)}:{line} imports {name}"
        for path, tree in zip(files, trees, strict=True)
        for line, name in upward(tree)
    ]
    assert offences == []


@pytest.mark.parametrize(
    "source",
    [
        "import sfu.control",
        "from turn.config import TurnConfig",
        "def f():\n    import booking.http\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sfu.control import X\n",
        "import importlib\nimportlib.import_module('signalling.http')\n",
        "class A:\n    def m(self):\n        from bin import assembly\n",
        "import rtc as r, chat",
    ],
)
def test_the_check_sees_every_kind_of_import(source: str) -> None:
    assert upward(_parse_source(source))


@pytest.mark.parametrize(
    "source",
    ["from wadud import keys", "from . import keys", "import sfuzzy", "import turnstile.x"],
)
def test_the_check_leaves_the_ground_and_lookalikes_alone(source: str) -> None:
    assert upward(_parse_source(source)) == []
