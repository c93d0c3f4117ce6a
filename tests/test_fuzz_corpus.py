"""Every fuzz corpus and crash file, replayed through its target (fuzz/, issue 35).

The corpora are the inputs that reach each parser's code, grown by `make
fuzz`; a crash file is an input that once broke a target, kept so that the
bug stays fixed. No atheris here: each target's ``check`` is a plain
function, so this runs in the default suite in a few seconds.
"""

from __future__ import annotations

import pytest

from fuzz import ROOT, TARGETS, check_of, inputs


@pytest.mark.parametrize("target", TARGETS)
def test_corpus_and_crashes_replay_cleanly(target: str) -> None:
    files = inputs(target)
    assert files, f"fuzz/corpus/{target}/ is empty"
    check = check_of(target)
    for path in files:
        try:
            check(path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"{target}: fuzz/{path.relative_to(ROOT)} fails") from exc


def test_every_target_has_a_corpus_folder_and_nothing_else() -> None:
    from fuzz import CORPUS, CRASHES

    for root in (CORPUS, CRASHES):
        if root.is_dir():
            assert {p.name for p in root.iterdir() if p.is_dir()} <= set(TARGETS)
