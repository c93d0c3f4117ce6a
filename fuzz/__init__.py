"""Coverage-guided fuzzing of the parsers that read what peers send (issue 35).

Each module of :mod:`fuzz.targets` has one ``check(data: bytes) -> None``
that feeds ``data`` to a parser through the entry point the server uses. The
parser's typed errors (the ``ValueError`` family a malformed packet raises)
are the expected outcome for junk and are swallowed; anything else, a broken
round trip, a native leaf that disagrees with its Python twin, or a
sanitizer report is a finding and propagates.

``fuzz/corpus/<target>/`` holds the inputs that reach the target's code
(seeded from real packets, grown and minimised by the fuzz runs) and
``fuzz/crashes/<target>/`` every input that ever broke it. The default test
suite replays both (tests/test_fuzz_corpus.py) without atheris; `make fuzz`
runs each target under atheris with the native extensions built with
AddressSanitizer and UBSan (fuzz/all.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
CRASHES = ROOT / "crashes"

TARGETS = (
    "rtp",
    "rtcp",
    "stun",
    "turn",
    "relay",
    "fanout",
    "sdp",
    "dtls",
    "signalling",
    "chat",
    "sip",
)


class Finding(AssertionError):
    """A parser broke a promise it makes (a round trip, a twin's answer); not a parse error."""


def check_of(target: str) -> Callable[[bytes], None]:
    """The ``check`` function of ``fuzz.targets.<target>``."""
    if target not in TARGETS:
        raise KeyError(f"no fuzz target {target!r}; the targets are {', '.join(TARGETS)}")
    module = importlib.import_module(f"fuzz.targets.{target}")
    check: Callable[[bytes], None] = module.check
    return check


def inputs(target: str) -> list[Path]:
    """The corpus and crash files of ``target``, in a stable order."""
    files: list[Path] = []
    for folder in (CORPUS / target, CRASHES / target):
        if folder.is_dir():
            files.extend(
                sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
            )
    return files
