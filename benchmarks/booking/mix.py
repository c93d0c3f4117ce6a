"""The mixed-payments mode of the booking benchmark (``run.py --mix``):
bank transfer's two steps as a client and finance staff take them, finance
accounts for the run, and the figures of sandbox-only against mixed phases.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import uuid
from typing import Any

import aiohttp
import asyncpg

from benchmarks.common import pct

__all__ = ["MIX", "Finance", "bank_transfer", "mix_results", "staff_tokens"]


class Finance:
    """A clinic's finance staff reconciling bank transfers: credits collect
    per clinic and are imported as one CSV statement of ``lines`` credits
    (banks hand statements out by the day, not by the transfer; ``lines=1``
    is the worst case, a statement per booking). ``unmatched`` counts
    credits a statement did not match to their transfer."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, tokens: dict[str, str], lines: int
    ) -> None:
        self.session = session
        self.base = base
        self.tokens = tokens
        self.lines = max(1, lines)
        self.pending: dict[str, list[str]] = {}
        self.statements = 0
        self.unmatched = 0

    async def credit(self, clinic_id: str, reference: str, amount_minor: int) -> None:
        major, minor = divmod(amount_minor, 100)
        line = f"{dt.date.today().isoformat()},{major}.{minor:02d},IBFT {reference}"
        waiting = self.pending.setdefault(clinic_id, [])
        waiting.append(line)
        if len(waiting) >= self.lines:
            self.pending[clinic_id] = []
            await self._import(clinic_id, waiting)

    async def flush(self) -> None:
        """Import every credit still waiting (the end of a phase)."""
        waiting, self.pending = self.pending, {}
        for clinic_id, lines in waiting.items():
            if lines:
                await self._import(clinic_id, lines)

    async def _import(self, clinic_id: str, lines: list[str]) -> None:
        statement = "Date,Amount,Description\r\n" + "".join(f"{x}\r\n" for x in lines)
        async with self.session.post(
            self.base + f"/api/v1/clinics/{clinic_id}/bank-statements",
            data=statement.encode(),
            headers={
                "Authorization": f"Bearer {self.tokens[clinic_id]}",
                "Content-Type": "text/csv",
            },
        ) as r:
            matched = len(json.loads(await r.read())["matched"]) if r.status == 201 else 0
        self.statements += 1
        self.unmatched += len(lines) - matched


async def bank_transfer(
    session: aiohttp.ClientSession, base: str, token: str, finance: Finance, booking_id: str
) -> bool:
    """The patient pays by bank transfer; the money reaches the platform's
    account and goes on finance's next statement, whose import confirms the
    booking."""
    async with session.post(
        base + f"/api/v1/bookings/{booking_id}/bank-transfer",
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        if r.status not in (200, 201):
            return False
        transfer = json.loads(await r.read())
    await finance.credit(
        transfer["clinic_id"], transfer["reference"], int(transfer["amount_minor"])
    )
    return True


async def staff_tokens(
    session: aiohttp.ClientSession, base: str, db_url: str, clinics: list[tuple[str, str]]
) -> dict[str, str]:
    """A finance account per clinic, made as ``wadud user add`` does, signed in."""
    from wadud.principal import Role
    from wadud.web import accounts

    tokens = {}
    conn = await asyncpg.connect(db_url)
    try:
        for clinic_id, region in clinics:
            email = f"finance-{region.lower()}-{uuid.uuid4().hex[:6]}@bench.test"
            await accounts.create_user(
                conn,
                email=email,
                password=BENCH_PASSWORD,
                role=Role.CLINIC_STAFF,
                clinic_id=uuid.UUID(clinic_id),
            )
            async with session.post(
                base + "/api/v1/auth/login", json={"email": email, "password": BENCH_PASSWORD}
            ) as r:
                if r.status != 200:
                    raise SystemExit(f"finance login: {r.status} {await r.text()}")
                tokens[clinic_id] = (await r.json())["access_token"]
    finally:
        await conn.close()
    return tokens


#: What the finance accounts of a --mix run sign in with (a throwaway server).
BENCH_PASSWORD = "bench finance password"
#: The mixed phases' ways to pay, taken in turn.
MIX = ("sandbox", "easypaisa", "bank_transfer")


def mode_figures(phases: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """One mode's phases summed: bookings per second, CPU per booking, latency."""
    mine = [ph for ph in phases if ph["mode"] == mode]
    done = sum(ph["completed"] for ph in mine)
    wall = sum(ph["wall"] for ph in mine)
    cpu = sum(ph["server_cpu"] for ph in mine)
    pg = sum(ph["postgres_cpu"] for ph in mine)
    sim = sum(ph.get("easypaisa_simulator_cpu", 0.0) for ph in mine)
    times = [t for ph in mine for _, t in ph["latencies"]]
    return {
        "completed": done,
        "failed": sum(ph["failed"] for ph in mine),
        "wall_seconds": round(wall, 2),
        "per_second": round(done / wall, 1) if wall else None,
        "server_cpu_ms_per_booking": round(cpu / done * 1000, 2) if done else None,
        "postgres_cpu_ms_per_booking": round(pg / done * 1000, 2) if done else None,
        "cpu_ms_per_booking": round((cpu + pg) / done * 1000, 2) if done else None,
        # EasyPaisa's side, when the simulator runs apart: in no ratio.
        "easypaisa_simulator_cpu_ms_per_booking": round(sim / done * 1000, 2) if done else None,
        "latency_p50_ms": round(statistics.median(times) * 1000, 1) if times else None,
        "latency_p95_ms": round(pct(times, 95) * 1000, 1) if times else None,
    }


def mix_results(phases: list[dict[str, Any]]) -> dict[str, Any]:
    sandbox, mixed = mode_figures(phases, "sandbox"), mode_figures(phases, "mix")
    ways: dict[str, list[float]] = {}
    for ph in phases:
        if ph["mode"] == "mix":
            for way, t in ph["latencies"]:
                ways.setdefault(way, []).append(t)

    def ratio(key: str) -> float | None:
        a, b = mixed[key], sandbox[key]
        return round(a / b, 3) if a and b else None

    # Each ABBA round on its own: its two modes met the same moment's load.
    by_round = []
    for r in range(0, len(phases) - 3, 4):
        four = phases[r : r + 4]
        one, other = mode_figures(four, "mix"), mode_figures(four, "sandbox")
        if one["cpu_ms_per_booking"] and other["cpu_ms_per_booking"]:
            by_round.append(round(one["cpu_ms_per_booking"] / other["cpu_ms_per_booking"], 3))

    return {
        "phases": [
            {
                k: (round(v, 2) if isinstance(v, float) else v)
                for k, v in ph.items()
                if k != "latencies"
            }
            for ph in phases
        ],
        "sandbox_only": sandbox,
        "mixed": mixed,
        "mixed_by_way": {
            way: {
                "completed": len(times),
                "latency_p50_ms": round(statistics.median(times) * 1000, 1),
                "latency_p95_ms": round(pct(times, 95) * 1000, 1),
            }
            for way, times in sorted(ways.items())
        },
        # Mixed over sandbox-only, per booking: above 1, a mixed booking costs more.
        "ratio_cpu_per_booking": ratio("cpu_ms_per_booking"),
        "ratio_cpu_per_booking_by_round": by_round,
        "ratio_cpu_per_booking_median_of_rounds": round(statistics.median(by_round), 3)
        if by_round
        else None,
        "ratio_latency_p50": ratio("latency_p50_ms"),
        "ratio_seconds_per_booking": round(sandbox["per_second"] / mixed["per_second"], 3)
        if sandbox["per_second"] and mixed["per_second"]
        else None,
    }
