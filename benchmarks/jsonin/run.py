"""What :mod:`wadud.jsonin`'s depth limit costs on 1 MiB bodies.

For each body shape: the standard library's ``json.loads`` alone (what every
reader did before), ``wadud.jsonin.loads`` (depth check, then the same
parse), and the check alone. CPU time of this process, best of several runs,
so other load on a shared machine moves the figures less than wall time
would. Figures, not assertions.

    .venv/bin/python -m benchmarks.jsonin.run [--runs 7]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from wadud import jsonin

MIB = 1 << 20


def bodies() -> dict[str, bytes]:
    record = {"name": "x[" * 10, "tags": ["a", "b"], "n": {"k": 1}}
    rows = json.dumps([{"id": i, **record} for i in range(12_000)]).encode()
    rows = rows[: rows.rindex(b"},", 0, MIB) + 1] + b"]"
    return {
        "records, 3 deep": rows,
        "[[],[],...]": b"[" + b",".join([b"[]"] * (MIB // 3 - 1)) + b"]",
        "one long string": json.dumps({"s": "y" * (MIB - 20)}).encode(),
        'a string of \\"': json.dumps({"s": '"\\' * (MIB // 5)}).encode(),
        "chains 64 deep": b"[" + b",".join([b"[" * 63 + b"]" * 63] * (MIB // 128 - 1)) + b"]",
        "100,000 deep": b"[" * 100_000 + b"]" * 100_000,
        "1 MiB of [": b"[" * MIB,
    }


def best_ms(call: Callable[[], Any], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        with contextlib.suppress(ValueError, RecursionError):
            call()
        best = min(best, time.process_time() - start)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"{'body':18} {'bytes':>9} {'json.loads':>11} {'jsonin.loads':>13} {'check only':>11}")
    for name, body in bodies().items():
        std = best_ms(lambda b=body: json.loads(b), args.runs)
        ours = best_ms(lambda b=body: jsonin.loads(b), args.runs)
        check = best_ms(lambda b=body: jsonin.check(b), args.runs)
        print(f"{name:18} {len(body):9} {std:9.1f}ms {ours:11.1f}ms {check:9.1f}ms")


if __name__ == "__main__":
    main()
