"""Run one fuzz target under atheris: ``python -m fuzz.run TARGET [libFuzzer flags]``.

With ``WADUD_FUZZ_NATIVE`` naming a build folder (fuzz/all.py makes one with
AddressSanitizer and UBSan), ``sfu.forward._fanout`` and ``turn._relay`` are loaded
from there rather than from the in-place build that .venv uses. The
product's modules are imported under atheris's instrumentation, so its
coverage guides the fuzzer.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from fuzz import check_of

PACKAGES = ("rtc", "sfu", "turn", "signalling", "chat", "sip", "wadud", "fuzz")


def use_native_build(folder: Path) -> None:
    """Make ``sfu.forward._fanout`` and ``turn._relay`` load from ``folder`` (a build_ext
    --build-lib).
    """
    import sfu.forward
    import turn

    for package in (sfu.forward, turn):
        package.__path__.insert(0, str(folder.joinpath(*package.__name__.split("."))))


def _check_native_build(folder: Path) -> None:
    from sfu.forward import _fanout  # type: ignore[attr-defined]
    from turn import _relay  # type: ignore[attr-defined]

    for module in (_fanout, _relay):
        if not Path(module.__file__).resolve().is_relative_to(folder.resolve()):
            raise SystemExit(f"{module.__name__} came from {module.__file__}, not {folder}")


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m fuzz.run TARGET [libFuzzer flags and corpus folders]")
    target = argv[1]
    native = os.environ.get("WADUD_FUZZ_NATIVE")
    if native:
        use_native_build(Path(native))
    import atheris

    # Our packages only: instrumenting every library they import (pydantic,
    # prometheus_client, email...) costs minutes of start-up and a share of
    # each run, and their branches are not what is under test.
    with atheris.instrument_imports(include=list(PACKAGES)):
        check = check_of(target)
    if native:
        _check_native_build(Path(native))
    # libFuzzer re-runs its argv[0] through the shell for -merge=1 (and
    # -fork); this module is not an executable, so argv[0] is the command.
    command = f"{shlex.quote(sys.executable)} -m fuzz.run {shlex.quote(target)}"
    atheris.Setup([command, *argv[2:]], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
