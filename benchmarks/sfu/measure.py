"""What a scenario run measured, and the ways the benchmark reads it.

:class:`ScenarioResult` is one run's figures (the JSON output's ``results``);
:func:`percentiles` and :func:`switch_times` reduce samples; :func:`others_cpu`
is what the rest of the machine used, against which :func:`undisturbed`
judges a run; :func:`profile` and :func:`top_functions` sample the server with
py-spy.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]


@dataclass
class ScenarioResult:
    scenario: str
    purpose: str
    rooms: int
    publishers: int
    subscriber_transports: int
    fanout: int
    pps_per_publisher: float
    offered_in_pps: float
    forwarded_out_pps: float
    window_seconds: float
    forwarded_window: int
    worker_cpu_seconds: float
    worker_cpu_share: float
    worker_user_seconds: float
    worker_system_seconds: float
    forwarded_per_cpu_second: float
    load_cpu_seconds: float
    others_cpu_seconds: float
    loss_pct: float
    loss_pct_window: float
    probe_packets: int
    probe_loss_pct: float
    latency_us: dict[str, float]
    added_latency_us: dict[str, float]
    latency_p99_us_by_second: list[float]
    latency_read_us: dict[str, float]
    late_send_p99_us: float
    auth_failures: int
    rcvbuf_errors: int
    machine_load_1min: float
    srtp_profile: str
    setup_seconds: float
    waited_for_quiet_seconds: float
    rtcp_to_publishers: dict[str, int] = field(default_factory=dict)
    # Where packets went missing over the run: the worker's own counters.
    sent_total: int = 0
    worker_received: int = 0
    worker_forwarded: int = 0
    delivered_total: int = 0
    # The subscribers' own count of the window's packets, at its edges.
    received_window: int = 0
    worker_counters: dict[str, int] = field(default_factory=dict)
    # Collections over 2 ms in the server during the window (only with --gc-log).
    gc_pauses: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # Simulcast: the probes' packets in the window by layer (RID), keyframes
    # the publishers sent because the worker asked, and in a switch run the
    # time from each track_view to the new layer's first packet (ms).
    probe_packets_by_layer: dict[str, int] = field(default_factory=dict)
    keyframes_on_request: int = 0
    switch_ms: dict[str, Any] = field(default_factory=dict)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    xs = sorted(values)
    n = len(xs)

    def at(p: float) -> float:
        return round(xs[min(n - 1, int(p * n))], 1)

    return {
        "count": n,
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": round(xs[-1], 1),
        "mean": round(statistics.fmean(xs), 1),
    }


def switch_times(views: list[tuple[int, int, int]], transitions: list[list[int]]) -> dict[str, Any]:
    """Each view change's switch time: from sending ``track_view`` to the
    first packet of the layer it asks for at that receiver, if that came
    before the receiver's next change (else it counts as ``not_switched``)."""
    by_receiver: dict[int, list[tuple[int, int]]] = {}
    for i, at, number in transitions:
        by_receiver.setdefault(int(i), []).append((int(at), int(number)))
    changes: dict[int, list[tuple[int, int]]] = {}
    for i, sent, number in views:
        changes.setdefault(i, []).append((sent, number))
    took: list[float] = []
    missed = 0
    for i, seq in changes.items():
        seen = by_receiver.get(i, [])
        for k, (sent, number) in enumerate(seq):
            until = seq[k + 1][0] if k + 1 < len(seq) else math.inf
            first = next((at for at, n in seen if n == number and sent <= at < until), None)
            if first is None:
                missed += 1
            else:
                took.append((first - sent) / 1e6)
    out: dict[str, Any] = {"views_sent": len(views), "not_switched": missed}
    out.update(percentiles(took))
    return out


def others_cpu(ours: set[int]) -> dict[int, tuple[float, float]]:
    """``{pid: (start time, CPU-seconds)}`` of every process on the machine but ours."""
    found: dict[int, tuple[float, float]] = {}
    for proc in psutil.process_iter(["create_time", "cpu_times"]):
        if proc.pid in ours:
            continue
        info = proc.info
        t = info.get("cpu_times")
        if t is not None:
            found[proc.pid] = (float(info.get("create_time") or 0.0), float(t.user + t.system))
    return found


QUIET = 0.3  # others' CPU share under which a run counts as undisturbed


def lossless(r: ScenarioResult) -> bool:
    """Every packet arrived (under 0.1 % lost): the worker kept up."""
    return r.loss_pct < 0.1


def undisturbed(r: ScenarioResult) -> bool:
    """The rest of the machine left the worker its core: no one else above QUIET."""
    return r.others_cpu_seconds / r.window_seconds < QUIET


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


async def profile(pid: int, seconds: float, out: Path) -> None:
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy not found (.venv/bin/pip install py-spy)")
    proc = await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
        "--rate", "250", "--format", "raw", "--nonblocking", "--output", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")


def top_functions(raw: Path, limit: int = 20) -> dict[str, Any]:
    """Self and inclusive shares of the samples, per function and per line (self).

    py-spy's raw format is one collapsed stack per line, ``frame;frame;... count``,
    each frame ``function (file:line)``. Time in C (a ``sendto``, libsrtp under
    cffi) counts for the Python line that called it.
    """
    own: Counter[str] = Counter()
    own_line: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for text in raw.read_text().splitlines():
        stack, _, count_text = text.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        functions = [re.sub(r":\d+\)$", ")", f) for f in frames]
        own[functions[-1]] += count
        own_line[frames[-1]] += count
        for name in set(functions):
            inclusive[name] += count

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / max(1, total), 1)) for name, n in c.most_common(limit)]

    return {
        "samples": total,
        "self_pct": share(own),
        "inclusive_pct": share(inclusive),
        "self_pct_by_line": share(own_line),
    }
