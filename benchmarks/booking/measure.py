"""What the booking benchmark measures with: CPU of the server, PostgreSQL
and the machine, SQL statements from PostgreSQL's log, transactions, and
when the server has caught up with the bookings so far."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import asyncpg

from benchmarks.common import postmaster_pid, tree_cpu_seconds

__all__ = [
    "BEHIND",
    "XACTS",
    "busy_between",
    "caught_up",
    "count_statements",
    "cpu_ticks",
    "machine_busy",
    "postgres_cpu_seconds",
]


#: Transactions committed or rolled back in the server's databases so far
#: (the statistics lag by at most a second, so the run sleeps before reading).
XACTS = """SELECT sum(xact_commit + xact_rollback)::bigint FROM pg_stat_database, pg_sleep(1.1)"""
#: Work a phase's bookings leave behind them: outbox events not yet relayed,
#: relayed events the notifier has not planned yet.
BEHIND = """SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL)
                 + (SELECT count(*) FROM notify_inbox)"""


async def caught_up(conn: asyncpg.Connection, within: float = 10.0) -> float:
    """Wait (``within`` seconds at most) until the server has done what the
    bookings so far left for its background rounds, so each phase's CPU is
    its own bookings' and not partly the phase before's; the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < within:
        if not await conn.fetchval(BEHIND):
            break
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


def count_statements(log: bytes) -> dict[str, tuple[int, float]]:
    """Statements in a PostgreSQL log written with
    ``log_min_duration_statement = 0``: per statement (its first words, simple
    and extended protocol alike) how many ran and the milliseconds the server
    spent on them, parse and bind steps included. ``total`` sums them."""
    found: dict[str, list[float]] = {}
    lines = log.decode(errors="replace").splitlines()
    step = re.compile(r"duration: ([0-9.]+) ms  (statement|execute|parse|bind) ?[^:]*: ?(.*)")
    for i, line in enumerate(lines):
        m = step.search(line)
        if m is None:
            continue
        ms, kind, sql = float(m.group(1)), m.group(2), m.group(3)
        if not sql.strip() and i + 1 < len(lines) and lines[i + 1].startswith("\t"):
            sql = lines[i + 1]  # the statement's text starts on the next line
        sql = re.sub(r"__asyncpg_savepoint_\w+__", "sp", sql)
        key = " ".join(sql.split()[:6])[:70] or "?"
        entry = found.setdefault(key, [0, 0.0])
        if kind in ("statement", "execute"):
            entry[0] += 1
        entry[1] += ms
    out = {k: (int(v[0]), v[1]) for k, v in found.items()}
    out["total"] = (sum(v[0] for v in out.values()), sum(v[1] for v in out.values()))
    return out


def cpu_ticks() -> tuple[int, int]:
    """(all, idle) jiffies of all cores so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]


def busy_between(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Share of all cores busy between two :func:`cpu_ticks` readings."""
    return 1 - (b[1] - a[1]) / max(1, b[0] - a[0])


def machine_busy(seconds: float = 2.0) -> float:
    """Share of all cores busy over ``seconds``, whoever uses them."""
    before = cpu_ticks()
    time.sleep(seconds)
    return busy_between(before, cpu_ticks())


def postgres_cpu_seconds(data_dir: Path) -> float:
    """CPU seconds of the cluster's postmaster and its live backends."""
    pm = postmaster_pid(data_dir)
    if pm is None:
        return 0.0
    return tree_cpu_seconds(pm)
