"""How long a doctor's free slots over fourteen days take to compute.

The calendar page and the booking hold both ask ``free_slots`` for a range of
days; this times the range the patient's page shows first (fourteen days),
for a doctor who sees video patients 08:00 to 20:00 every day in New York,
20-minute slots with 5-minute buffers, and a busy interval every 7 hours. The
range crosses the spring-forward day, so the zone's transition is paid for
too. Pure computation, no server: each of ``--rounds`` rounds times
``--runs`` calls, and the script prints the median and spread of the per-call
means and writes JSON. Figures, not assertions (a shared machine is noisy):

    .venv/bin/python -m benchmarks.booking.slots [--rounds 7] [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from zoneinfo import ZoneInfo

from benchmarks.common import ROOT, command_line, commit_of, write_results
from booking.schedule.availability import Availability, ConsultationType, WeeklyRule
from booking.schedule.free_time import free_slots

VIDEO = ConsultationType.VIDEO


def doctor() -> Availability:
    """Video 08:00-20:00 every day in New York, 20-minute slots, 5-minute
    buffers either side, two hours' notice, sixty days ahead."""
    days = tuple(WeeklyRule(d, clock_time(8), clock_time(20), frozenset({VIDEO})) for d in range(7))
    return Availability(
        time_zone=ZoneInfo("America/New_York"),
        weekly=days,
        slot_minutes={VIDEO: 20, ConsultationType.IN_PERSON: 20},
        overrides=(),
        buffer_before_minutes=5,
        buffer_after_minutes=5,
        min_notice_minutes=120,
        horizon_days=60,
        slot_step_minutes=None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=50, help="calls per round")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/slots.json"))
    args = ap.parse_args()
    av = doctor()
    now = datetime(2024, 3, 1, 15, tzinfo=UTC)  # the range crosses the spring-forward day
    busy = [
        (now + timedelta(hours=h), now + timedelta(hours=h, minutes=20))
        for h in range(0, 14 * 24, 7)
    ]
    end = now + timedelta(days=14)
    means: list[float] = []
    count = 0
    for _ in range(args.rounds):
        began = time.perf_counter()
        for _ in range(args.runs):
            count = len(free_slots(av, VIDEO, now, end, now, busy))
        means.append((time.perf_counter() - began) / args.runs)
    ms = sorted(m * 1000 for m in means)
    print(f"fourteen days, {count} slots: median {statistics.median(ms):.3f} ms per call")
    print(f"  rounds of {args.runs} calls: {', '.join(f'{m:.3f}' for m in ms)} ms")
    write_results(
        args.out,
        {
            "command": command_line("benchmarks.booking.slots"),
            "commit": commit_of(ROOT),
            "slots": count,
            "runs_per_round": args.runs,
            "ms_per_call_median": round(statistics.median(ms), 4),
            "ms_per_call_rounds": [round(m, 4) for m in ms],
        },
    )


if __name__ == "__main__":
    main()
