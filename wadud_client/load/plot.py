"""``--plot FILE.png``: a run on one page, drawn with matplotlib.

Three panels, left to right: the one-way latency's distribution (a CDF,
with p50, p95 and p99 marked), the bitrate all subscribers received each
second, and how many had joined and how many received media each second.
"""

from __future__ import annotations

from pathlib import Path

from wadud_client.load.run import Result
from wadud_client.load.stats import percentiles

__all__ = ["plot"]


def plot(result: Result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: a file
    from matplotlib import pyplot

    shape = result.shape
    figure, (cdf, rate, people) = pyplot.subplots(1, 3, figsize=(15, 4.5), layout="constrained")
    figure.suptitle(
        f"{result.url}: {shape.rooms} room(s) x {shape.publishers} publisher(s) x"
        f" {shape.subscribers} subscriber(s), {shape.resolution}, {result.held:.0f} s"
        f" ({result.ended})"
    )
    latencies = sorted(result.latencies_ms)
    if latencies:
        n = len(latencies)
        cdf.plot(latencies, [(i + 1) / n for i in range(n)], color="tab:blue")
        marks = percentiles(latencies) or {}
        for name, value in marks.items():
            cdf.axvline(value, color="grey", linestyle=":", linewidth=1)
            cdf.annotate(f"{name} {value:g}", (value, 0.05), rotation=90, fontsize=8)
        cdf.set_xscale("log")
    else:
        cdf.text(0.5, 0.5, "no media received", ha="center", transform=cdf.transAxes)
    cdf.set_title("one-way latency")
    cdf.set_xlabel("ms (log)")
    cdf.set_ylabel("share of packets at or below")
    cdf.grid(True, alpha=0.3)

    seconds = [i.at for i in result.intervals]
    rate.plot(seconds, [i.kbps / 1000 for i in result.intervals], color="tab:green")
    rate.set_title("received by all subscribers")
    rate.set_xlabel("s since the first subscriber joined")
    rate.set_ylabel("Mbit/s")
    rate.set_ylim(bottom=0)
    rate.grid(True, alpha=0.3)

    total = len(result.subscribers) or shape.rooms * shape.subscribers
    people.plot(seconds, [i.joined for i in result.intervals], label="joined", color="tab:blue")
    people.plot(seconds, [i.receiving for i in result.intervals], label="receiving media",
                color="tab:orange", linestyle="--")  # fmt: skip
    people.axhline(total, color="grey", linestyle=":", linewidth=1)
    people.set_title("subscribers")
    people.set_xlabel("s since the first subscriber joined")
    people.set_ylim(0, total * 1.1 + 1)
    people.legend(loc="lower right")
    people.grid(True, alpha=0.3)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
