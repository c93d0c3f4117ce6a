"""The ground imports no floor above it (STYLE.md, "Structure: floors that only look down").

``wadud/`` is plumbing every feature stands on; a feature registers itself
with the roles' assembly (``bin/assembly.py``) instead of being named here.
Every import counts, at module level or inside a function, under
``TYPE_CHECKING`` or through ``importlib``: the check reads the source, it
does not import it.
"""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

GROUND = Path(__file__).resolve().parents[2] / "wadud"
ABOVE = frozenset(
    {"booking", "chat", "hooks", "notify", "privacy", "rtc", "sfu", "signalling", "turn", "bin"}
)


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


_PARSE = (
    "import ast, pickle, sys\n"
    "sources = pickle.load(sys.stdin.buffer)\n"
    "sys.stdout.buffer.write(pickle.dumps([ast.parse(text, name) for name, text in sources]))\n"
)


def _parse_all(sources: list[tuple[str, str]]) -> list[ast.AST]:
    """ast.parse in a fresh interpreter. CPython 3.11 keeps the AST builder's
    recursion counter in interpreter-wide state, and a full test run (other
    threads, other parsers) can leave it off balance: "AST constructor
    recursion depth mismatch", seen twice in CI runs. The trees come back
    pickled, which rebuilds them without that builder."""
    done = subprocess.run(
        [sys.executable, "-c", _PARSE],
        input=pickle.dumps(sources),
        capture_output=True,
        check=True,
        timeout=60,
    )
    trees: list[ast.AST] = pickle.loads(done.stdout)
    return trees


def _parse_source(source: str) -> ast.AST:
    return _parse_all([("<test>", source)])[0]


def test_the_ground_imports_no_feature_and_no_assembly() -> None:
    files = sorted(GROUND.rglob("*.py"))
    assert len(files) > 10, "the ground's modules were not found"
    trees = _parse_all([(str(path), path.read_text()) for path in files])
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


PRIVACY = GROUND.parent / "privacy"
PRIVACY_ABOVE = frozenset({"booking", "chat", "sfu", "signalling", "turn", "bin"})


def test_privacy_imports_no_feature_above_it() -> None:
    """privacy/ stands below booking, chat and signalling: they import it, never
    the other way (export and erasure reach features through providers the
    assembly registers)."""
    files = sorted(PRIVACY.rglob("*.py"))
    assert files, "privacy/ was not found"
    trees = _parse_all([(str(path), path.read_text()) for path in files])
    offences = [
        f"{path.relative_to(GROUND.parent)}:{line} imports {name}"
        for path, tree in zip(files, trees, strict=True)
        for line, name in imported(tree)
        if name.split(".")[0] in PRIVACY_ABOVE
    ]
    assert offences == []


NOTIFY = GROUND.parent / "notify"
NOTIFY_ABOVE = frozenset({"booking", "chat", "sfu", "signalling", "turn", "bin"})


def test_notify_imports_no_feature() -> None:
    """notify/ stands beside booking and chat: it reads their events as plain
    data (and a few of their tables in SQL), never their code."""
    files = sorted(NOTIFY.rglob("*.py"))
    assert files, "notify/ was not found"
    trees = _parse_all([(str(path), path.read_text()) for path in files])
    offences = [
        f"{path.relative_to(GROUND.parent)}:{line} imports {name}"
        for path, tree in zip(files, trees, strict=True)
        for line, name in imported(tree)
        if name.split(".")[0] in NOTIFY_ABOVE
    ]
    assert offences == []


HOOKS = GROUND.parent / "hooks"
HOOKS_ABOVE = frozenset({"booking", "chat", "notify", "sfu", "signalling", "bin"})


def test_hooks_imports_no_feature_but_the_turn_peer_rules() -> None:
    """hooks/ stands beside notify: room events reach it as outbox rows;
    signalling imports it (to write them), never the other way. Of turn/ it
    uses only the pure peer rules (turn.policy), which its endpoints share."""
    files = sorted(HOOKS.rglob("*.py"))
    assert files, "hooks/ was not found"
    trees = _parse_all([(str(path), path.read_text()) for path in files])
    offences = [
        f"{path.relative_to(GROUND.parent)}:{line} imports {name}"
        for path, tree in zip(files, trees, strict=True)
        for line, name in imported(tree)
        if name.split(".")[0] in HOOKS_ABOVE
        or (name.split(".")[0] == "turn" and name != "turn.policy")
    ]
    assert offences == []
