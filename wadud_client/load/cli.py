"""``wadud load``: load-test a Wadud deployment by its URL (docs/load-testing.md).

Exit codes: 0 the run completed; 2 bad arguments; 3 the deployment cannot be
reached; 4 the API key or secret was refused; 5 the run failed (no
subscriber received media, or the server failed it); 130 interrupted
(Ctrl-C). Whatever the exit, ``--json`` is written with what was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvloop

from wadud_client.load import media
from wadud_client.load.report import merge, progress_line, table, table_of, to_json
from wadud_client.load.run import LoadError, Result, Shape, run

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wadud load",
        description="Load-test a Wadud deployment by its URL, as browsers would join it.",
    )
    p.add_argument(
        "--url", required=True, help="the deployment's public URL, e.g. https://calls.example"
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("WADUD_API_KEY"),
        help="a load API key's id (or $WADUD_API_KEY)",
    )
    p.add_argument(
        "--api-secret",
        default=os.environ.get("WADUD_API_SECRET"),
        help="its secret (or $WADUD_API_SECRET)",
    )
    p.add_argument("--rooms", type=int, default=1)
    p.add_argument("--publishers", type=int, default=1, help="per room")
    p.add_argument("--subscribers", type=int, default=5, help="per room")
    p.add_argument("--duration", type=float, default=30.0, help="seconds held once everyone joined")
    p.add_argument(
        "--video-resolution", dest="resolution", choices=sorted(media.RESOLUTIONS), default="medium"
    )
    only = p.add_mutually_exclusive_group()
    only.add_argument("--audio-only", action="store_true", help="publishers send Opus only")
    only.add_argument("--video-only", action="store_true", help="publishers send VP8 only")
    p.add_argument(
        "--region",
        dest="regions",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="a region's replicas (repeat per region): each room's publisher and subscribers"
        " join through the regions in turn; tokens are still minted at --url",
    )
    p.add_argument(
        "--simulcast",
        action="store_true",
        help="publishers send the camera as simulcast layers, one per resolution up to"
        " --video-resolution (q, h, f), as Chromium does",
    )
    p.add_argument(
        "--ramp", type=float, default=20.0, help="subscriber joins per second (0: all at once)"
    )
    p.add_argument("--seed", type=int, help="the same seed names the same rooms and identities")
    p.add_argument(
        "--sampled",
        type=int,
        default=5,
        help="subscribers per room that unprotect every packet to time it (latency, exact loss);"
        " the rest count headers only, which costs the generator far less",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="run the load from this many processes (one a core), each its share of the rooms,"
        " merged at the end",
    )
    p.add_argument(
        "--shard",
        help="I/N: run the I-th of N generators' share of the rooms (every one with one --seed);"
        " wadud load merge joins their JSON",
    )
    p.add_argument(
        "--metrics-url",
        dest="metrics",
        action="append",
        default=[],
        help="a server process's private /metrics URL, for its cost (repeat per process)",
    )
    p.add_argument(
        "--metrics-token",
        default=os.environ.get("WADUD_METRICS_TOKEN"),
        help="the metrics listeners' bearer token (or $WADUD_METRICS_TOKEN)",
    )
    p.add_argument(
        "--json", type=Path, help="write the summary and the records here (-: to stdout, alone)"
    )
    p.add_argument(
        "--plot",
        type=Path,
        help="draw the latency CDF, bitrate and joins over time into this PNG (matplotlib)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument(
        "--find-max",
        action="store_true",
        help="step the subscribers per room up until a limit is crossed (docs/load-testing.md)",
    )
    p.add_argument(
        "--step", type=int, help="subscribers per room added each step (default: --subscribers)"
    )
    p.add_argument(
        "--max-subscribers", type=int, default=1000, help="stop here if nothing crosses first"
    )
    p.add_argument("--max-latency", type=float, default=150.0, help="p95 one-way latency limit, ms")
    p.add_argument("--max-loss", type=float, default=2.0, help="loss limit, %%")
    return p  # fmt: skip


def _check(args: argparse.Namespace) -> str | None:
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "--url must be an http or https address"
    if not args.api_key or not args.api_secret:
        return (
            "an API key and secret are needed: --api-key and --api-secret, or"
            " WADUD_API_KEY and WADUD_API_SECRET (wadud key create --scope load)"
        )
    for name in ("rooms", "publishers", "subscribers"):
        if not 0 < getattr(args, name) <= 10_000:
            return f"--{name} must be 1 to 10000"
    if args.duration <= 0 or args.ramp < 0:
        return "--duration must be positive and --ramp not negative"
    if args.sampled < 0:
        return "--sampled must not be negative"
    for region in args.regions:
        name, _, url = region.partition("=")
        if not name or urlsplit(url).scheme not in ("http", "https"):
            return f"--region is NAME=URL with an http or https URL, not {region!r}"
    if args.simulcast and (args.audio_only or args.resolution == "low"):
        return "--simulcast needs video above --video-resolution low (layers below it)"
    if args.shard is not None:
        shard = _shard(args.shard)
        if shard is None:
            return "--shard is I/N with 1 <= I <= N, e.g. 2/3"
        if args.seed is None:
            return "--shard needs --seed, the same on every generator, so they name the same rooms"
        if shard[1] > args.rooms:
            return "--shard N must not be more than --rooms (each generator runs whole rooms)"
    if args.processes < 1 or args.processes > args.rooms:
        return "--processes must be 1 to --rooms (each process runs whole rooms)"
    if args.processes > 1 and (args.shard or args.find_max):
        return "--processes splits one run; it does not go with --shard or --find-max"
    if args.step is not None and args.step <= 0:
        return "--step must be positive"
    if args.find_max and args.max_subscribers < args.subscribers:
        return "--max-subscribers must be at least --subscribers"
    return None


def _shard(text: str) -> tuple[int, int] | None:
    i, _, n = text.partition("/")
    if not (i.isdigit() and n.isdigit()) or not 1 <= int(i) <= int(n):
        return None
    return int(i), int(n)


def merge_main(argv: Sequence[str]) -> int:
    """``wadud load merge RUN.json... --json OUT``."""
    p = argparse.ArgumentParser(
        prog="wadud load merge",
        description="Join the --json of several generators (--shard I/N) into one run.",
    )
    p.add_argument("runs", nargs="+", type=Path, help="each generator's --json")
    p.add_argument("--json", type=Path, required=True, help="write the merged run here")
    args = p.parse_args(argv)
    runs = []
    for path in args.runs:
        try:
            body = json.loads(path.read_text())
            runs.append(body)
            if not {"summary", "run", "subscribers", "intervals"} <= set(body):
                raise ValueError("not the --json of a wadud load run")
        except (OSError, ValueError) as exc:
            print(f"wadud load merge: {path}: {exc}", file=sys.stderr)
            return 2
    seeds = {r["run"]["shape"].get("seed") for r in runs}
    if len(seeds) != 1 or None in seeds:
        print("wadud load merge: the runs are not shards of one load (their --seed differ)",
              file=sys.stderr)  # fmt: skip
        return 2
    merged = merge(runs)
    _write_json(args.json, merged)
    s = merged["summary"]
    print(f"merged {len(runs)} run(s): {s['subscribers']} of {s['subscribers_asked']} subscribers"
          f" receiving, latency {s['latency_ms']}, loss {s['loss_pct']}%")  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    args = parser().parse_args(argv)
    problem = _check(args)
    if problem:
        print(f"wadud load: {problem}", file=sys.stderr)
        return 2
    shape = Shape(
        rooms=args.rooms,
        publishers=args.publishers,
        subscribers=args.subscribers,
        duration=args.duration,
        resolution=args.resolution,
        audio_only=args.audio_only,
        video_only=args.video_only,
        simulcast=args.simulcast,
        regions=tuple(_region(r) for r in args.regions),
        ramp=args.ramp,
        seed=args.seed,
        sampled=args.sampled,
        shard=_shard(args.shard) or (1, 1) if args.shard else (1, 1),
    )
    if args.find_max:
        return _find_max(args, shape)
    if args.processes > 1:
        return _processes(args, list(argv))
    import datetime as dt

    result = Result(
        args.url.rstrip("/"), shape, dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
    # On a terminal one line redrawn each second; else (a log, a test) one
    # line a second.
    tty = sys.stderr.isatty()
    live = not args.quiet
    code = 0

    async def go() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        # Ctrl-C or SIGTERM ends the run as a cancellation: the peers close
        # and what was measured is kept.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await run(
            args.url,
            args.api_key,
            args.api_secret,
            shape,
            result=result,
            metrics=args.metrics,
            metrics_token=args.metrics_token,
            progress=(
                lambda i, n: print(
                    progress_line(i, n, tty), end="" if tty else "\n", file=sys.stderr, flush=True
                )
            )
            if live
            else (lambda i, n: None),
        )

    try:
        uvloop.run(go())
    except (asyncio.CancelledError, KeyboardInterrupt):
        result.ended = "interrupted"
        code = 130
    except LoadError as exc:
        result.ended = f"failed: {exc}"
        code = exc.exit_code
        print(f"wadud load: {exc}", file=sys.stderr)
    if live and tty:
        print(file=sys.stderr)
    body = to_json(result)
    if code == 0 and body["summary"]["subscribers"] == 0:
        result.ended = "failed: no subscriber received media"
        body = to_json(result)
        print("wadud load: no subscriber received media", file=sys.stderr)
        code = 5
    to_stdout = _write_json(args.json, body)
    if args.plot is not None and result.intervals:
        from wadud_client.load.plot import plot

        plot(result, args.plot)
    if code in (0, 5, 130) and result.subscribers and not to_stdout:
        print(table(result))
    elif code == 130:
        print("wadud load: interrupted before anyone joined", file=sys.stderr)
    return code


def _region(value: str) -> tuple[str, str]:
    name, _, url = value.partition("=")
    return name, url.rstrip("/")


def _write_json(path: Path | None, body: dict[str, Any]) -> bool:
    """``--json``'s file; ``-`` is standard output, and then the JSON is all
    that goes there (a Kubernetes Job's log is its result). Whether it was."""
    if path is None:
        return False
    if str(path) == "-":
        print(json.dumps(body, indent=1), flush=True)
        return True
    path.write_text(json.dumps(body, indent=1))
    return False


def _find_max(args: argparse.Namespace, shape: Shape) -> int:
    from wadud_client.load.findmax import Limits, find_max, outcome

    limits = Limits(latency_p95_ms=args.max_latency, loss_pct=args.max_loss)
    steps: list[dict[str, Any]] = []
    code = 0
    stopped = "interrupted"

    def said(step: dict[str, Any]) -> None:
        s = step["summary"]
        latency = s["latency_ms"] or {}
        print(
            f"{step['subscribers_per_room']:>6} per room: receiving {s['subscribers']}"
            f"/{s['subscribers_asked']}, p95 latency {latency.get('p95', '-')} ms,"
            f" loss {s['loss_pct']}%  {step['crossed'] or 'within the limits'}",
            flush=True,
        )

    async def go() -> None:
        nonlocal stopped
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        found = await find_max(
            args.url, args.api_key, args.api_secret, shape, limits,
            step=args.step or shape.subscribers, ceiling=args.max_subscribers,
            steps=steps, on_step=said, metrics=args.metrics, metrics_token=args.metrics_token,
        )  # fmt: skip
        stopped = found["stopped"]

    try:
        uvloop.run(go())
    except (asyncio.CancelledError, KeyboardInterrupt):
        code = 130
    except LoadError as exc:
        stopped = f"failed: {exc}"
        code = exc.exit_code
        print(f"wadud load: {exc}", file=sys.stderr)
    found = outcome(steps, limits, shape, stopped)
    if _write_json(args.json, {"find_max": found}):
        return code
    print(
        f"a room held {found['room_held']} subscriber(s) within p95 {limits.latency_p95_ms:g} ms"
        f" and {limits.loss_pct:g}% loss ({shape.rooms} room(s), {shape.publishers}"
        f" publisher(s) each); stopped: {stopped}"
    )
    return code


def _processes(args: argparse.Namespace, argv: list[str]) -> int:
    """The run split over ``--processes`` children, each ``--shard i/N`` of
    one seed, and their JSON merged: one generator machine's cores."""
    import random
    import subprocess
    import tempfile

    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    n = args.processes
    # What each child is given: this command line without what the parent
    # does itself (the JSON, the plot, the count of processes).
    keep = _without(argv, "--processes", "--json", "--plot", "--seed")
    with tempfile.TemporaryDirectory(prefix="wadud-load-") as work:
        outs = [Path(work) / f"shard-{i}.json" for i in range(1, n + 1)]
        children = []

        def shard_of(i: int, out: Path) -> list[str]:
            return ["--seed", str(seed), "--shard", f"{i}/{n}", "--json", str(out), "--quiet"]

        for i, out in enumerate(outs, start=1):
            # The server's cost is read once, by the first child.
            child = keep if i == 1 else _without(keep, "--metrics-url")
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "wadud_client.load.cli", *child, *shard_of(i, out)],
                    stdout=subprocess.DEVNULL,
                )
            )
        codes = []
        try:
            codes = [c.wait() for c in children]
        except KeyboardInterrupt:
            # Ctrl-C reached every child too (one process group): they write
            # what they measured and end.
            codes = [c.wait() for c in children]
        runs = [json.loads(out.read_text()) for out in outs if out.exists()]
    if not runs:
        print("wadud load: no process wrote its results", file=sys.stderr)
        return max(codes, default=5) or 5
    merged = merge(runs)
    s = merged["summary"]
    if not _write_json(args.json, merged):
        print(
            table_of(
                s,
                f"{args.url}: {args.rooms} room(s) x {args.publishers} publisher(s) x"
                f" {args.subscribers} subscriber(s), in {n} processes",
            )
        )
    worst = max(codes, default=0)
    if worst == 0 and s["subscribers"] == 0:
        return 5
    return worst


def _without(argv: list[str], *options: str) -> list[str]:
    """``argv`` less each of ``options`` (all of them take a value), given
    as ``--name value`` or ``--name=value``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        name, eq, _ = arg.partition("=")
        if skip:
            skip = False
        elif name in options:
            skip = not eq
        else:
            out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())
