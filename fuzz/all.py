"""`make fuzz`: every target for a set time, the native extensions sanitized.

``python -m fuzz.all [--seconds N] [TARGET ...]``

1. Builds ``sfu.forward._fanout`` and ``turn._relay`` with clang, AddressSanitizer,
   UBSan and libFuzzer's coverage counters (``WADUD_SANITIZE=fuzzer`` in
   setup.py) into ``build/fuzz``, apart from the in-place build .venv loads,
   and links clang's ASan runtime and libFuzzer into one library,
   ``build/fuzz/asan_with_fuzzer.so``. Preloaded into Python, it is the
   sanitizer runtime of the extensions and the libFuzzer atheris drives:
   with two libraries (the compiler's ASan runtime and atheris's own
   libFuzzer) the runtime's stand-in coverage hooks would win and blind the
   fuzzer.
2. Runs each target (fuzz/run.py) for N seconds, one after the other, with
   Python's allocator set to plain malloc so that ASan sees every object's
   bounds, and an input that runs over 10 seconds reported as a hang. A
   crash, a sanitizer report, an uncaught exception or a hang is saved by
   libFuzzer in ``fuzz/crashes/<target>/``, where the default suite replays
   it (tests/test_fuzz_corpus.py).
3. Merges what each run found into ``fuzz/corpus/<target>/``, keeping only
   inputs that add coverage, so the corpus stays small.

It prints a line per target (executions per second, coverage and features as
libFuzzer counts them: Python's branches and the C extensions' edges) and
exits non-zero if any target found something. Logs and working corpora are
in ``var/fuzz/``. It needs clang and its runtimes (Debian: clang-14,
libclang-rt-14-dev); ``CC`` names another clang.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fuzz import CORPUS, CRASHES, TARGETS

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "fuzz"
WORK = REPO / "var" / "fuzz"

# Inputs past these sizes test nothing a datagram or a frame of that kind can be.
MAX_LEN = {
    "rtp": 1500,
    "rtcp": 1500,
    "stun": 1500,
    "turn": 1500,
    "relay": 4096,
    "fanout": 1300,
    "sdp": 8192,
    "dtls": 2048,
    "signalling": 8192,
    "chat": 4096,
    # A trunk's UDP datagram rarely passes 1,500 bytes; an INVITE with a
    # long SDP over TCP can reach a few thousand.
    "sip": 4096,
}

# A sanitizer report aborts, so that libFuzzer's signal handler saves the input.
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:symbolize=1:allocator_may_return_null=1",
    "UBSAN_OPTIONS": "halt_on_error=1:abort_on_error=1:print_stacktrace=1",
}
# The targets that drive the C extensions. Their Python objects (the bytes
# the C code reads) come from plain malloc, so ASan puts a red zone around
# each; pymalloc would pack small ones into arenas where an overrun reads the
# next object unseen. The pure-Python targets keep pymalloc, at several times
# the speed: no instrumented code touches their objects.
NATIVE_TARGETS = frozenset({"relay", "fanout"})

_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)", re.MULTILINE)
_FINDINGS = (
    "ERROR: AddressSanitizer",
    "runtime error:",
    "Uncaught Python exception",
    "ERROR: libFuzzer",
    "deadly signal",
)


@dataclass
class Result:
    target: str
    seconds: float
    runs: int
    execs_per_sec: int
    cov: int
    ft: int
    finding: str | None


def find_clang() -> str:
    for name in (os.environ.get("CC", ""), "clang", "clang-14", "clang-15", "clang-16"):
        if name and "clang" in name and shutil.which(name):
            return name
    raise SystemExit("make fuzz needs clang and its runtimes (Debian: clang-14 libclang-rt-14-dev)")


def fuzzer_runtime(cc: str) -> Path:
    """clang's ASan runtime (its preinit object left out: a library may not
    have one) and libFuzzer, in one library to preload."""
    out = BUILD / "asan_with_fuzzer.so"
    archives = {}
    for name in ("asan", "asan_cxx", "fuzzer_no_main"):
        path = subprocess.run(
            [cc, f"-print-file-name=libclang_rt.{name}-x86_64.a"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        if not os.path.isabs(path):
            raise SystemExit(f"{cc} has no libclang_rt.{name} (Debian: libclang-rt-14-dev)")
        archives[name] = path
    BUILD.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BUILD) as tmp:
        subprocess.run(["ar", "x", archives["asan"]], cwd=tmp, check=True)
        objects = sorted(p.name for p in Path(tmp).glob("*.o") if "preinit" not in p.name)
        subprocess.run(["ar", "rcs", "asan.a", *objects], cwd=tmp, check=True)
        subprocess.run(
            [cc, "-shared", "-o", str(out), "-Wl,--whole-archive", f"{tmp}/asan.a",
             archives["asan_cxx"], archives["fuzzer_no_main"], "-Wl,--no-whole-archive",
             "-lstdc++", "-lpthread", "-ldl", "-lrt", "-lm"],
            check=True,
        )  # fmt: skip
    return out


def build_sanitized(cc: str) -> Path:
    """``build_ext`` with WADUD_SANITIZE=fuzzer into build/fuzz; the folder of the packages."""
    lib = BUILD / "lib"
    env = {**os.environ, "WADUD_SANITIZE": "fuzzer", "CC": cc, "LDSHARED": f"{cc} -shared"}
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--force",
         "--build-lib", str(lib), "--build-temp", str(BUILD / "tmp")],
        cwd=REPO, env=env, check=True,
    )  # fmt: skip
    for name in ("sfu/forward/_fanout", "turn/_relay"):
        if not list(lib.glob(f"{name}.*.so")):
            raise SystemExit(f"the sanitized build of {name} failed (see the compiler's output)")
    return lib


def fuzz_env(runtime: Path, lib: Path) -> dict[str, str]:
    return {
        **os.environ,
        **SANITIZER_ENV,
        "LD_PRELOAD": str(runtime),
        "WADUD_FUZZ_NATIVE": str(lib),
    }


def run_target(target: str, seconds: int, env: dict[str, str]) -> Result:
    work = WORK / target
    found = work / "corpus"
    found.mkdir(parents=True, exist_ok=True)
    seeds, crashes = CORPUS / target, CRASHES / target
    seeds.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    command = [
        sys.executable, "-m", "fuzz.run", target, str(found), str(seeds),
        f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=4096",
        f"-max_len={MAX_LEN[target]}", f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
    ]  # fmt: skip
    started = time.monotonic()
    if target in NATIVE_TARGETS:
        env = {**env, "PYTHONMALLOC": "malloc"}
    with log.open("w") as out:
        code = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - started
    text = log.read_text(errors="replace")
    statuses = _STATUS.findall(text)
    runs, cov, ft = (int(x) for x in statuses[-1]) if statuses else (0, 0, 0)
    speed = re.search(r"stat::average_exec_per_sec:\s+(\d+)", text)
    finding = next((f for f in _FINDINGS if f in text), None)
    if finding is None and code.returncode != 0:
        finding = f"exit status {code.returncode}"
    if finding is None:
        merge = [sys.executable, "-m", "fuzz.run", target, "-merge=1", str(seeds), str(found),
                 f"-max_len={MAX_LEN[target]}"]  # fmt: skip
        with (work / "merge.txt").open("w") as out:
            subprocess.run(
                merge, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=True
            )
    return Result(target, elapsed, runs, int(speed.group(1)) if speed else 0, cov, ft, finding)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.all", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=600, help="per target (default 600)")
    parser.add_argument("targets", nargs="*", help=f"some of {', '.join(TARGETS)} (default all)")
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"no such target: {', '.join(sorted(unknown))}")
    cc = find_clang()
    env = fuzz_env(fuzzer_runtime(cc), build_sanitized(cc))
    results = []
    for target in args.targets or TARGETS:
        result = run_target(target, args.seconds, env)
        results.append(result)
        print(
            f"{result.target:<11} {result.seconds:6.0f} s {result.runs:>10} runs "
            f"{result.execs_per_sec:>6} exec/s  cov {result.cov:>5}  ft {result.ft:>6}  "
            f"{result.finding or 'ok'}",
            flush=True,
        )
    summary = WORK / "summary.txt"
    summary.write_text("".join(f"{r}\n" for r in results))
    failed = [r.target for r in results if r.finding]
    if failed:
        print(f"findings in {', '.join(failed)}: see var/fuzz/<target>/log.txt and fuzz/crashes/")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
