"""Syntax trees of source files, parsed in a fresh interpreter.

CPython 3.11 (before 3.11.8) keeps the AST builder's recursion counter in
interpreter-wide state, and a test process with other threads (aiortc's
codec threads, executors) can leave it off balance while ``ast.parse``
runs. The next ``compile`` of a tree in that process, such as pytest's
assertion rewriting on an import, then fails with "AST constructor
recursion depth mismatch": seen in CI runs, and once as the crash of a
whole session at its end. So the suite never builds a tree in its own
process: a child parses, and the trees come back pickled, which rebuilds
them without that builder.
"""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

_PARSE = (
    "import ast, pickle, sys\n"
    "sources = pickle.load(sys.stdin.buffer)\n"
    "sys.stdout.buffer.write(pickle.dumps([ast.parse(text, name) for name, text in sources]))\n"
)


def parse_all(sources: list[tuple[str, str]]) -> list[ast.AST]:
    """The trees of ``(file name, source text)`` pairs, in their order."""
    done = subprocess.run(
        [sys.executable, "-c", _PARSE],
        input=pickle.dumps(sources),
        capture_output=True,
        check=True,
        timeout=60,
    )
    trees: list[ast.AST] = pickle.loads(done.stdout)
    return trees


def parse_source(source: str) -> ast.AST:
    return parse_all([("<test>", source)])[0]


def parse_files(paths: list[Path]) -> list[ast.AST]:
    return parse_all([(str(path), path.read_text()) for path in paths])
