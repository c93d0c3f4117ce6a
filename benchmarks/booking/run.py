"""Booking API benchmark against a real ``wadud serve``.

Starts ``wadud serve`` on a fresh data folder (its embedded PostgreSQL),
seeds N doctors (10,000 by default) straight into the database, then
measures, with C concurrent HTTP clients:

* end-to-end bookings per second: hold a slot, create a payment, pay on the
  sandbox's hosted checkout (which delivers the signed webhook that confirms
  the booking); after the run the database must hold exactly that many
  ``requested`` bookings with succeeded payments;
* doctor search latency p50/p95/p99 over mixed filters and sorts.

``--easypaisa 0.5`` pays half the bookings of PKR doctors through the
EasyPaisa simulator's hosted checkout instead (what ``wadud serve`` offers
with no EasyPaisa store configured) and reports latency per gateway, with
the ratio of their medians, from the same run.

``--mix`` compares a mix of ways to pay with sandbox-only bookings on the
same run: after the warm-up, four phases of ``--seconds``/2 each, sandbox
only, mixed, mixed, sandbox only (ABBA, so the database's growth and the
machine's drift weigh on both alike); ``--rounds N`` repeats the four N
times in shorter phases, which shares a busy machine's bursts more evenly,
and reports each round's ratio and their median. Each phase ends once the
server has relayed its outbox events and planned their notifications, so
no phase pays for the one before. Mixed phases pay in turn by the
sandbox, by the EasyPaisa simulator's hosted checkout and by bank transfer
(the patient starts the transfer; clinic finance imports the credits as CSV
statements of ``--statement-lines`` lines, 20 by default, matched by
reference and amount, the last one at the end of each phase so the phase
pays for its own confirmations; ``--statement-lines 1`` is the worst case).
All bookings go to PKR doctors then, so every way is open to every booking.
It reports bookings per second, server and PostgreSQL CPU per booking and
latency for each mode, per way to pay, and the ratios mixed / sandbox-only
per booking (CPU, seconds and median latency; above 1 is slower).

Per-booking CPU includes what the server and PostgreSQL spend each second
whatever the load (measured idle first, ``--idle-seconds``), so a phase whose
bookings take longer to complete pays more of it per booking. ``--rate R``
starts R bookings a second in every phase (open loop, at most ``--clients``
under way), so sandbox-only and mixed phases carry the same load and their
CPU per booking compares their work alone; set R below what the mixed phases
carry (the closed-loop run's mixed bookings per second).

It prints a table and writes JSON (``--out``, default
``benchmarks/results/booking.json``). Figures, not assertions: these machines
are shared and noisy, so quote medians and ratios.

    .venv/bin/python -m benchmarks.booking.run [--quick] [--clients 32]

By default the server requires consent (telehealth_consultation and
data_processing, every region) and each patient accepts it before the booking
phase, so every hold pays for the consent check (``--no-consent`` to leave it
out). The booking phase waits (``--wait-quiet``, 60 s at most) until other
work on the machine leaves it mostly idle, and the JSON says how busy it was.
``--count-statements`` logs every SQL statement of the booking phase and
reports them per booking (a profile; it slows the run).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import asyncpg
import uvloop

from benchmarks.booking.measure import (
    XACTS,
    busy_between,
    caught_up,
    count_statements,
    cpu_ticks,
    machine_busy,
    postgres_cpu_seconds,
)
from benchmarks.booking.mix import (
    MIX,
    Finance,
    bank_transfer,
    mix_results,
    staff_tokens,
)
from benchmarks.common import (
    ROOT,
    answers_ready,
    cpu_seconds,
    free_port,
    pct,
    postmaster_pid,
    wait_stopped,
    write_results,
)

BIN = Path(sys.executable).parent
SPECIALTIES = ["general", "cardiology", "dermatology", "pediatrics", "psychiatry", "gynecology"]
LANGS = ["en", "ur", "ar", "pa", "hi"]
REGIONS = {"PK": "PKR", "AE": "AED", "QA": "QAR", "SA": "SAR"}


#: The EasyPaisa store both the server and ``wadud easypaisa-sim`` are
#: configured with (as a real store is known to EasyPaisa and to us).
EASYPAISA_STORE = {
    "WADUD_PAYMENTS_EASYPAISA_STORE_ID": "90001",
    "WADUD_PAYMENTS_EASYPAISA_HASH_KEY": "0123456789abcdef0123456789abcdef",
    "WADUD_PAYMENTS_EASYPAISA_USERNAME": "bench",
    "WADUD_PAYMENTS_EASYPAISA_PASSWORD": "bench-password",
    "WADUD_PAYMENTS_EASYPAISA_ACCOUNT_NUM": "654123987",
}


#: What the server requires before a booking when the run checks consent.
CONSENTS = ["telehealth_consultation", "data_processing"]


async def consent_texts(db_url: str) -> list[str]:
    """Publish version 1 of each required consent in every region (as an
    admin would); return their ids."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            """INSERT INTO consent_texts (region, purpose, language, version, title, body)
               SELECT r, p, 'en', 1, 'Bench ' || p, 'I agree to ' || p || '.'
               FROM unnest($1::text[]) AS r, unnest($2::text[]) AS p
               RETURNING id""",
            list(REGIONS),
            CONSENTS,
        )
        return [str(r["id"]) for r in rows]
    finally:
        await conn.close()


def database_url(data_dir: Path) -> str:
    """The URL of the server's embedded PostgreSQL, read from its pid file.
    Not pgserver's ``get_server``: that would count this process as one of the
    cluster's users (it used to keep the cluster running after the run)."""
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir / "postgres")
    if info is None:
        raise SystemExit("wadud serve is ready but its PostgreSQL has no pid file")
    return str(info.get_uri())


def stop_server(server: subprocess.Popen[bytes], data_dir: Path) -> dict[str, Any]:
    """SIGTERM ``wadud serve`` and check it stopped its PostgreSQL; whatever
    is left (it should be nothing) is killed and reported."""
    pm = postmaster_pid(data_dir)
    t0 = time.perf_counter()
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    report: dict[str, Any] = {
        "serve_exit_code": server.returncode,
        "serve_stop_seconds": round(time.perf_counter() - t0, 2),
        "postgres_left_running": False,
    }
    if not wait_stopped(pm, 5):
        report["postgres_left_running"] = True
        os.kill(pm, signal.SIGINT)  # fast shutdown of the cluster this run started
        print(f"wadud serve left its PostgreSQL (pid {pm}) running; stopped it", file=sys.stderr)
        # Its folder goes with the run: not while the shutdown still writes.
        wait_stopped(pm)
    return report


async def seed(db_url: str, doctors: int) -> list[tuple[str, str]]:
    """Clinics in every region and ``doctors`` published doctors with a
    09:00-17:00 week, inserted with set-based SQL. Returns (clinic id, region)."""
    conn = await asyncpg.connect(db_url)
    try:
        clinics = []
        for region, currency in REGIONS.items():
            cid = await conn.fetchval(
                "INSERT INTO clinics (name, region, currency) VALUES ($1, $2, $3) RETURNING id",
                f"Bench {region}",
                region,
                currency,
            )
            clinics.append((str(cid), region))
        await conn.execute(
            """
            INSERT INTO doctors (clinic_id, display_name, specialty, languages, fee_minor,
                                 currency, region, status, published_at, time_zone,
                                 min_notice_min, rating_count, rating_sum)
            SELECT c.id, 'Dr. Bench ' || g, ($2::text[])[1 + g % array_length($2, 1)],
                   ARRAY[($3::text[])[1 + g % 5], ($3::text[])[1 + (g / 5) % 5]],
                   50000 + (g % 40) * 2500, c.currency, c.region, 'published', now(),
                   'Asia/Karachi', 0, g % 7, (g % 7) * (1 + g % 5)
            FROM generate_series(1, $1) AS g
            JOIN LATERAL (SELECT id, currency, region FROM clinics
                          WHERE name LIKE 'Bench %' ORDER BY name
                          OFFSET g % 4 LIMIT 1) c ON true
            """,
            doctors,
            SPECIALTIES,
            LANGS,
        )
        await conn.execute(
            """
            INSERT INTO availability_rules (doctor_id, clinic_id, weekday, start_local,
                                            end_local, types)
            SELECT d.id, d.clinic_id, w, '09:00', '17:00', '{video,in_person}'
            FROM doctors d CROSS JOIN generate_series(0, 6) AS w
            """
        )
        # next_free_at as the periodic refresher would set it: spread over the
        # coming days so sorting and available_before filters have work to do.
        await conn.execute(
            """UPDATE doctors SET next_free_at =
                   date_trunc('hour', now()) + make_interval(hours => 1 + (key % 96)::int)"""
        )
        await conn.execute("ANALYZE")
        return clinics
    finally:
        await conn.close()


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def booking_flow(
    session: aiohttp.ClientSession,
    base: str,
    token: str,
    doctor_id: str,
    starts_at: str,
    gateway: str = "sandbox",
    finance: Finance | None = None,
    simulator: str = "",
) -> bool:
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    # Bodies go as ready bytes: the load generator shares the server's two
    # cores, and aiohttp's payload machinery for json= and form data= costs
    # it more than the server spends on some of these requests.
    body = json.dumps({"doctor_id": doctor_id, "type": "video", "starts_at": starts_at})
    async with session.post(base + "/api/v1/bookings", data=body.encode(), headers=h) as r:
        if r.status != 201:
            return False
        booking = json.loads(await r.read())
    if gateway == "bank_transfer" and finance is not None:
        return await bank_transfer(session, base, token, finance, booking["id"])
    pay = b"{}" if gateway == "sandbox" else json.dumps({"gateway": gateway}).encode()
    async with session.post(
        base + f"/api/v1/bookings/{booking['id']}/payments", data=pay, headers=h
    ) as r:
        if r.status not in (200, 201):
            return False
        payment = json.loads(await r.read())
    if gateway == "easypaisa":
        return await easypaisa_checkout(session, simulator, payment["checkout"])
    checkout = payment["checkout"]["url"]
    async with session.post(
        checkout, data=b"action=pay", headers=_FORM, allow_redirects=False
    ) as r:
        # The sandbox delivered its signed webhook before redirecting; the
        # outcome is checked in the database after the run, not per booking.
        return r.status == 303


async def easypaisa_checkout(
    session: aiohttp.ClientSession, simulator: str, checkout: dict[str, Any]
) -> bool:
    """What a browser does through EasyPaisa's hosted checkout, against the
    simulator at ``simulator`` (``wadud easypaisa-sim``, or the one ``wadud
    serve`` runs with no store configured): post the hashed form to
    Index.jsf, load our postback page with the auth_token, post the token on
    to Confirm.jsf and pay (the simulator calls our IPN handler, which
    fetches the record back from it, before redirecting)."""
    form = urlencode(checkout["fields"]).encode()
    async with session.post(checkout["url"], data=form, headers=_FORM, allow_redirects=False) as r:
        if r.status != 303:
            return False
        postback = r.headers["Location"]
    async with session.get(postback) as r:
        if r.status != 200:
            return False
        await r.read()
    token = parse_qs(urlsplit(postback).query)["auth_token"][0]
    confirm = urlencode(
        {"auth_token": token, "postBackURL": postback.split("?", 1)[0], "action": "pay"}
    ).encode()
    async with session.post(
        simulator + "/easypay/Confirm.jsf",
        data=confirm,
        headers=_FORM,
        allow_redirects=False,
    ) as r:
        return r.status == 303


async def run(
    args: argparse.Namespace,
    server: subprocess.Popen[bytes],
    base: str,
    data_dir: Path,
    simulator: subprocess.Popen[bytes] | None,
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "doctors": args.doctors,
        "clients": args.clients,
        "rate": args.rate or None,
        "machine": {"cpus": os.cpu_count()},
    }
    conn = aiohttp.TCPConnector(limit=args.clients * 2)
    # No cookies to keep (every call carries its token).
    jar = aiohttp.DummyCookieJar()
    async with aiohttp.ClientSession(connector=conn, cookie_jar=jar) as session:
        if not await answers_ready(session, base, 30):
            raise SystemExit("wadud serve did not become ready")
        db_url = database_url(data_dir)
        t0 = time.perf_counter()
        clinics = await seed(db_url, args.doctors)
        results["seed_seconds"] = round(time.perf_counter() - t0, 2)

        # -- search ---------------------------------------------------
        rnd = random.Random(7)
        horizon = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
        queries = []
        for _ in range(args.searches):
            q: dict[str, str] = {"limit": "20"}
            if rnd.random() < 0.8:
                q["specialty"] = rnd.choice(SPECIALTIES)
            if rnd.random() < 0.5:
                q["region"] = rnd.choice(list(REGIONS))
            if rnd.random() < 0.4:
                q["language"] = rnd.choice(LANGS)
            if rnd.random() < 0.3:
                q["max_fee"] = str(rnd.choice([80000, 100000, 120000]))
            if rnd.random() < 0.2:
                q["min_rating"] = "3"
            if rnd.random() < 0.2:
                q["available_before"] = horizon.isoformat()
            q["sort"] = rnd.choice(["next_free", "price", "rating"])
            queries.append(q)
        latencies: list[float] = []
        errors = 0
        sem = asyncio.Semaphore(args.search_concurrency)

        async def one_search(q: dict[str, str]) -> None:
            nonlocal errors
            async with sem:
                start = time.perf_counter()
                async with session.get(base + "/api/v1/doctors", params=q) as r:
                    await r.read()
                    ok = r.status == 200
                latencies.append(time.perf_counter() - start)
                errors += not ok

        await asyncio.gather(*(one_search(q) for q in queries[:20]))  # warm up
        latencies.clear()
        await asyncio.gather(*(one_search(q) for q in queries))
        results["search"] = {
            "requests": len(latencies),
            "concurrency": args.search_concurrency,
            "errors": errors,
            "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p95_ms": round(pct(latencies, 95) * 1000, 2),
            "p99_ms": round(pct(latencies, 99) * 1000, 2),
        }

        # -- bookings -------------------------------------------------
        tokens = []
        for _ in range(args.clients):
            async with session.post(base + "/api/v1/auth/anonymous", json={}) as r:
                tokens.append((await r.json())["access_token"])
        if args.consent:
            # The server requires CONSENTS in every region (see main); each
            # patient accepts the current texts first, as the app would make
            # them, so every hold pays for the consent check.
            texts = await consent_texts(db_url)
            for token in tokens:
                for text_id in texts:
                    async with session.post(
                        base + "/api/v1/me/consents/accept",
                        json={"text_id": text_id},
                        headers={"Authorization": f"Bearer {token}"},
                    ) as r:
                        if r.status != 200:
                            raise SystemExit(f"consent accept: {r.status} {await r.text()}")
        results["consent_required"] = CONSENTS if args.consent else []
        pool = await asyncpg.connect(db_url)
        doctor_rows = await pool.fetch(
            """SELECT id, currency FROM doctors WHERE NOT $2 OR currency = 'PKR'
               ORDER BY key LIMIT $1""",
            args.clients * 8,
            args.mix,
        )
        doctor_ids = [str(r["id"]) for r in doctor_rows]
        # EasyPaisa takes rupees only: its share is drawn from PKR doctors.
        rupees = {str(r["id"]) for r in doctor_rows if r["currency"] == "PKR"}
        mix = random.Random(7)
        await pool.close()
        finance = (
            Finance(
                session,
                base,
                await staff_tokens(session, base, db_url, clinics),
                args.statement_lines,
            )
            if args.mix
            else None
        )
        # --mix: what the clients do now ("sandbox" or "mix"), and the turn of
        # the mixed phases' ways to pay.
        mode = "mix" if args.mix else ""
        turn = 0
        ways: list[tuple[str, float]] = []
        # Each client books its own doctors, so clients never race for a
        # slot: this measures throughput, not the 409 path.
        work: list[list[tuple[str, str]]] = [[] for _ in range(args.clients)]
        day_from = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        for i, doctor in enumerate(doctor_ids):
            async with session.get(
                base + f"/api/v1/doctors/{doctor}/slots",
                params={
                    "type": "video",
                    "from": day_from.isoformat(),
                    "to": (day_from + dt.timedelta(days=3)).isoformat(),
                },
            ) as r:
                slots = (await r.json())["slots"]
            work[i % args.clients].extend((doctor, s["start"]) for s in slots)

        done = 0
        failed = 0
        per_booking: list[float] = []
        by_gateway: dict[str, list[float]] = {}
        deadline = time.perf_counter() + args.warmup
        # One iterator per client, so the measured phase goes on where the
        # warm-up stopped.
        queues = [iter(w) for w in work]

        async def book(token: str, doctor: str, start: str) -> None:
            nonlocal done, failed, turn
            gateway = "sandbox"
            if mode == "mix":
                gateway = args.mix_ways[turn % len(args.mix_ways)]
                turn += 1
            elif not mode and doctor in rupees and mix.random() < args.easypaisa:
                gateway = "easypaisa"
            t = time.perf_counter()
            if await booking_flow(
                session, base, token, doctor, start, gateway, finance, args.easypaisa_url
            ):
                done += 1
                per_booking.append(time.perf_counter() - t)
                by_gateway.setdefault(gateway, []).append(per_booking[-1])
                ways.append((gateway, per_booking[-1]))
            else:
                failed += 1

        async def client(token: str, items: Iterator[tuple[str, str]]) -> None:
            """A patient booking one visit after another (closed loop)."""
            for doctor, start in items:
                if time.perf_counter() >= deadline or done >= args.max_bookings:
                    return
                await book(token, doctor, start)

        async def paced() -> None:
            """``--rate``: a booking starts every 1/rate seconds, each by a
            patient with none under way (open loop), so every phase gets the
            same load whatever its flows' latency. Behind schedule (every
            patient busy) it starts the next one when a patient is free and
            does not burst to catch up."""
            free: asyncio.Queue[int] = asyncio.Queue()
            for i in range(len(tokens)):
                free.put_nowait(i)
            running: set[asyncio.Task[None]] = set()

            async def one(i: int, doctor: str, start: str) -> None:
                try:
                    await book(tokens[i], doctor, start)
                finally:
                    free.put_nowait(i)

            next_at = time.perf_counter()
            while time.perf_counter() < deadline and done + len(running) < args.max_bookings:
                try:
                    async with asyncio.timeout(deadline - time.perf_counter()):
                        i = await free.get()
                except TimeoutError:
                    break
                item = next(queues[i], None)
                if item is None:
                    continue  # this patient's slots are all booked
                task = asyncio.create_task(one(i, *item))
                running.add(task)
                task.add_done_callback(running.discard)
                next_at += 1 / args.rate
                behind = time.perf_counter() - next_at
                if behind < 0:
                    await asyncio.sleep(-behind)
                elif behind > 0.5:
                    next_at = time.perf_counter()
            if running:
                await asyncio.gather(*running)

        conn = await asyncpg.connect(db_url)
        if args.warmup > 0:
            # A server that has run for a minute: its tables hold bookings,
            # payments and ledger rows, and autovacuum has analyzed them.
            # Without this the measurement is of a brand-new database, whose
            # empty tables' statistics make PostgreSQL plan sequential scans
            # (cheap while the tables are empty), keep those plans in every
            # pooled connection, and pay for them more with each booking.
            await asyncio.gather(*(client(tok, q) for tok, q in zip(tokens, queues, strict=True)))
            if finance is not None:
                await finance.flush()
            results["warmup"] = {"seconds": args.warmup, "bookings": done, "failed": failed}
            # VACUUM as well: the warm-up's rows would have autovacuum visit
            # every table it wrote during the first measured phase.
            await conn.execute("VACUUM ANALYZE")
            done = failed = 0
            per_booking.clear()
            by_gateway.clear()
            ways.clear()
        log_file = data_dir / "postgres" / "log"
        if args.count_statements:
            # Profiling only: every statement the server runs goes to the
            # log with its duration, which slows the run; the figures then
            # count and weigh statements, not time the flow.
            await conn.execute("ALTER SYSTEM SET log_min_duration_statement = 0")
            await conn.execute("SELECT pg_reload_conf()")
            await asyncio.sleep(0.5)
        log_at = log_file.stat().st_size
        xact0 = await conn.fetchval(XACTS)
        # Other people's work shares these cores: wait (a while) for a quiet
        # moment, and say how busy the machine was.
        waited = time.perf_counter()
        busy = await asyncio.to_thread(machine_busy)
        while busy > args.quiet and time.perf_counter() - waited < args.wait_quiet:
            busy = await asyncio.to_thread(machine_busy)
        results["machine"]["busy_before"] = round(busy, 2)
        results["machine"]["waited_for_quiet_seconds"] = round(time.perf_counter() - waited, 1)
        # What the server and PostgreSQL spend with no booking under way (the
        # notifier's, deliverers' and sweeper's rounds, autovacuum): a phase
        # pays it per second, so a slower phase pays more of it per booking.
        idle0 = (cpu_seconds(server.pid), postgres_cpu_seconds(data_dir), time.perf_counter())
        await asyncio.sleep(args.idle_seconds)
        idle_wall = time.perf_counter() - idle0[2]
        results["idle"] = {
            "seconds": round(idle_wall, 2),
            "server_cpu_ms_per_second": round(
                (cpu_seconds(server.pid) - idle0[0]) / idle_wall * 1000, 2
            ),
            "postgres_cpu_ms_per_second": round(
                (postgres_cpu_seconds(data_dir) - idle0[1]) / idle_wall * 1000, 2
            ),
        }
        cpu0 = cpu_seconds(server.pid)
        pg0 = postgres_cpu_seconds(data_dir)
        client0 = time.process_time()
        ticks0 = cpu_ticks()
        t0 = time.perf_counter()
        phases: list[dict[str, Any]] = []
        for mode in ("sandbox", "mix", "mix", "sandbox") * args.rounds if args.mix else ("",):
            before = (done, failed, len(ways), cpu_seconds(server.pid))
            sim_before = cpu_seconds(simulator.pid) if simulator is not None else 0.0
            pg_before = postgres_cpu_seconds(data_dir)
            started = time.perf_counter()
            deadline = started + (args.seconds / 2 / args.rounds if args.mix else args.seconds)
            if args.rate:
                await paced()
            else:
                await asyncio.gather(
                    *(client(tok, q) for tok, q in zip(tokens, queues, strict=True))
                )
            if finance is not None:
                # The phase's transfers are confirmed within it, on its CPU.
                await finance.flush()
            if args.mix:
                await caught_up(conn)
            phases.append(
                {
                    "mode": mode,
                    "completed": done - before[0],
                    "failed": failed - before[1],
                    "wall": time.perf_counter() - started,
                    "server_cpu": cpu_seconds(server.pid) - before[3],
                    "postgres_cpu": postgres_cpu_seconds(data_dir) - pg_before,
                    # EasyPaisa's side (``wadud easypaisa-sim``): not ours,
                    # so in no ratio.
                    "easypaisa_simulator_cpu": (
                        cpu_seconds(simulator.pid) - sim_before if simulator is not None else 0.0
                    ),
                    "latencies": ways[before[2] :],
                }
            )
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(server.pid) - cpu0
        pg_cpu = postgres_cpu_seconds(data_dir) - pg0
        client_cpu = time.process_time() - client0
        results["machine"]["busy_during"] = round(busy_between(ticks0, cpu_ticks()), 2)
        results["machine"]["load_1min_after"] = round(os.getloadavg()[0], 2)
        xacts = await conn.fetchval(XACTS) - xact0 - 1
        statements = None
        if args.count_statements:
            await conn.execute("ALTER SYSTEM RESET log_min_duration_statement")
            await conn.execute("SELECT pg_reload_conf()")
            with log_file.open("rb") as f:
                f.seek(log_at)
                statements = count_statements(f.read())
        confirmed = await conn.fetchval(
            """SELECT count(*) FROM bookings b JOIN payment_intents p ON p.booking_id = b.id
               WHERE b.status = 'requested' AND p.status = 'succeeded'"""
        )
        await conn.close()
        warmed = results.get("warmup", {}).get("bookings", 0)
        results["bookings"] = {
            "completed": done,
            # Warm-up bookings are in the database too.
            "expected_in_database": done + warmed,
            "confirmed_in_database": confirmed,
            "failed": failed,
            "wall_seconds": round(wall, 2),
            "per_second": round(done / wall, 1),
            "server_cpu_seconds": round(cpu, 2),
            "per_server_cpu_second": round(done / cpu, 1) if cpu else None,
            "postgres_cpu_seconds": round(pg_cpu, 2),
            "per_cpu_second_server_and_postgres": round(done / (cpu + pg_cpu), 1)
            if cpu + pg_cpu
            else None,
            # The load generator shares the cores: its CPU is part of what
            # bounds the wall figure on one machine.
            "client_cpu_seconds": round(client_cpu, 2),
            "cpu_ms_per_booking": {
                "server": round(cpu / done * 1000, 2),
                "postgres": round(pg_cpu / done * 1000, 2),
                "client": round(client_cpu / done * 1000, 2),
            }
            if done
            else None,
            "latency_p50_ms": round(statistics.median(per_booking) * 1000, 1)
            if per_booking
            else None,
            "latency_p95_ms": round(pct(per_booking, 95) * 1000, 1) if per_booking else None,
            "transactions_per_booking": round(xacts / done, 2) if done else None,
        }
        if args.easypaisa:
            # Per gateway on the same run: the same server, load and moment.
            results["bookings"]["by_gateway"] = {
                name: {
                    "completed": len(times),
                    "latency_p50_ms": round(statistics.median(times) * 1000, 1),
                    "latency_p95_ms": round(pct(times, 95) * 1000, 1),
                }
                for name, times in sorted(by_gateway.items())
            }
            gw = results["bookings"]["by_gateway"]
            if "sandbox" in gw and "easypaisa" in gw:
                results["bookings"]["easypaisa_to_sandbox_p50"] = round(
                    gw["easypaisa"]["latency_p50_ms"] / gw["sandbox"]["latency_p50_ms"], 2
                )
        if finance is not None:
            results["mix"] = mix_results(phases)
            results["mix"]["ways"] = list(args.mix_ways)
            results["mix"]["statement_lines"] = finance.lines
            results["mix"]["statements_imported"] = finance.statements
            results["mix"]["transfers_unmatched"] = finance.unmatched
        if statements is not None:
            ranked = sorted(statements.items(), key=lambda kv: -kv[1][1])
            results["bookings"]["statements_per_booking"] = (
                {k: round(n / done, 2) for k, (n, _) in ranked} if done else {}
            )
            results["bookings"]["statement_ms_per_booking"] = (
                {k: round(ms / done, 3) for k, (_, ms) in ranked} if done else {}
            )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--doctors", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20.0, help="booking phase length")
    p.add_argument("--max-bookings", type=int, default=20_000)
    p.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds of bookings before the measured phase, then ANALYZE (0: measure a "
        "brand-new database)",
    )
    p.add_argument("--searches", type=int, default=2000)
    p.add_argument("--search-concurrency", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="small run for a smoke test")
    p.add_argument("--keep-data", action="store_true", help="keep the server's data folder")
    p.add_argument(
        "--no-consent",
        dest="consent",
        action="store_false",
        help="do not require consents (default: required, and accepted by every patient)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        help="seconds to wait at most for the machine to be quiet before the booking phase",
    )
    p.add_argument(
        "--quiet", type=float, default=0.25, help="share of all cores busy that counts as quiet"
    )
    p.add_argument(
        "--count-statements",
        action="store_true",
        help="log every SQL statement of the booking phase and count them per booking "
        "(profiling: slows the run)",
    )
    p.add_argument(
        "--easypaisa",
        type=float,
        default=0.0,
        help="share (0 to 1) of the bookings of PKR doctors paid through the EasyPaisa"
        " simulator's hosted checkout instead of the sandbox; latencies then per gateway",
    )
    p.add_argument(
        "--easypaisa-sim",
        choices=("process", "inline"),
        default="process",
        help="where the EasyPaisa simulator runs: its own process (`wadud easypaisa-sim`, as"
        " EasyPaisa is another party's servers; its CPU is counted apart), or inside `wadud"
        " serve` (its CPU then counts as the server's)",
    )
    p.add_argument(
        "--mix",
        action="store_true",
        help="sandbox-only against mixed (sandbox, EasyPaisa simulator, bank transfer) bookings"
        " on the same run, in ABBA phases of --seconds/2; per-booking ratios",
    )
    p.add_argument(
        "--mix-ways",
        type=lambda text: tuple(text.split(",")),
        default=MIX,
        help=f"--mix: the ways to pay the mixed phases take in turn (default {','.join(MIX)});"
        " one way alone against the sandbox gives that way's own ratio",
    )
    p.add_argument(
        "--statement-lines",
        type=int,
        default=20,
        help="--mix: bank-transfer credits per imported statement (1: a statement per booking)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="--mix: ABBA rounds the phases take (each phase --seconds/2/rounds); more, shorter"
        " rounds share the machine's drift more evenly, and each round's ratio is reported",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="bookings started per second, at most --clients under way (open loop: every"
        " phase gets the same load; with --mix, set it below what the mixed phases carry)."
        " Default 0: each client books one visit after another (closed loop)",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=3.0,
        help="seconds the server and PostgreSQL are measured idle before the booking phase",
    )
    p.add_argument("--port", type=int, default=0, help="the server's port (default: any free)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "booking.json")
    args = p.parse_args()
    if not args.mix_ways or set(args.mix_ways) - set(MIX):
        p.error(f"--mix-ways takes some of {','.join(MIX)}")
    if args.quick:
        args.doctors, args.clients, args.seconds, args.searches = 500, 4, 3.0, 100
    data_dir = Path(tempfile.mkdtemp(prefix="wadud-bench-"))
    port = args.port or free_port()
    env = {
        **os.environ,
        "WADUD_LOG_LEVEL": "warning",
        "WADUD_DATABASE_POOL_MAX": "20",
        # Every client signs in anonymously from 127.0.0.1.
        "WADUD_LIMITS_ANONYMOUS_BURST": "0",
    }
    if args.consent:
        env["WADUD_CONSENT_REQUIRED"] = ",".join(CONSENTS)
    if args.rounds < 1:
        p.error("--rounds takes a whole number from 1")
    if args.mix:
        # Bank transfer is offered once the platform has an account to pay into.
        env["WADUD_PAYMENTS_BANK_TRANSFER_IBAN"] = "PK36SCBL0000001123456702"
        env["WADUD_PAYMENTS_BANK_TRANSFER_ACCOUNT_TITLE"] = "Wadud Bench"
        env["WADUD_PAYMENTS_BANK_TRANSFER_BANK_NAME"] = "Bench Bank"
    simulator: subprocess.Popen[bytes] | None = None
    base = f"http://127.0.0.1:{port}"
    args.easypaisa_url = base + "/easypaisa-sim"
    if (args.mix or args.easypaisa) and args.easypaisa_sim == "process":
        # EasyPaisa as it is in production: another party's servers, which
        # call our IPN handler over HTTP. Its work is not ours, so its CPU
        # is reported apart and counted in no ratio.
        sim_port = free_port()
        env.update(EASYPAISA_STORE)
        env["WADUD_PAYMENTS_EASYPAISA_ENDPOINT"] = f"http://127.0.0.1:{sim_port}/easypaisa-sim"
        args.easypaisa_url = env["WADUD_PAYMENTS_EASYPAISA_ENDPOINT"]
        simulator = subprocess.Popen(
            [str(BIN / "wadud"), "easypaisa-sim", "--port", str(sim_port), "--merchant", base],
            env=env,
            stdout=subprocess.DEVNULL,
        )
    server = subprocess.Popen(
        [str(BIN / "wadud"), "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        # uvloop, as the server runs on: the load generator's own event loop
        # is CPU taken from the server on these two cores.
        results = uvloop.run(run(args, server, base, data_dir, simulator))
    finally:
        stopped = stop_server(server, data_dir)
        if simulator is not None:
            simulator.terminate()
            simulator.wait(10)
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    results["shutdown"] = stopped
    results["run_id"] = uuid.uuid4().hex[:8]
    results["at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    s, b = results["search"], results["bookings"]
    print(f"doctors seeded:       {results['doctors']} in {results['seed_seconds']} s")
    print(
        f"search ({s['requests']} requests, {s['concurrency']} concurrent): "
        f"p50 {s['p50_ms']} ms  p95 {s['p95_ms']} ms  p99 {s['p99_ms']} ms  errors {s['errors']}"
    )
    print(
        f"bookings ({results['clients']} clients, hold+pay+confirm): {b['completed']} in "
        f"{b['wall_seconds']} s = {b['per_second']}/s; {b['per_server_cpu_second']} per server "
        f"CPU-second ({b['per_cpu_second_server_and_postgres']} per CPU-second of server and "
        f"PostgreSQL); p50 {b['latency_p50_ms']} ms p95 {b['latency_p95_ms']} ms; "
        f"failed {b['failed']}; confirmed in the database {b['confirmed_in_database']} "
        f"of {b['expected_in_database']} (with the warm-up's)"
    )
    idle = results["idle"]
    print(
        f"idle before the booking phase: server {idle['server_cpu_ms_per_second']} ms,"
        f" PostgreSQL {idle['postgres_cpu_ms_per_second']} ms of CPU a second"
        + (f"; bookings started at {args.rate}/s (open loop)" if args.rate else "")
    )
    if b["cpu_ms_per_booking"]:
        ms = b["cpu_ms_per_booking"]
        print(
            f"CPU per booking: server {ms['server']} ms, PostgreSQL {ms['postgres']} ms, "
            f"this load generator {ms['client']} ms"
        )
    for name, g in b.get("by_gateway", {}).items():
        print(
            f"  {name}: {g['completed']} bookings, p50 {g['latency_p50_ms']} ms"
            f" p95 {g['latency_p95_ms']} ms"
        )
    if "easypaisa_to_sandbox_p50" in b:
        print(f"  EasyPaisa / sandbox median latency: {b['easypaisa_to_sandbox_p50']}")
    if "mix" in results:
        mx = results["mix"]
        for name in ("sandbox_only", "mixed"):
            f = mx[name]
            print(
                f"  {name}: {f['completed']} bookings in {f['wall_seconds']} s ="
                f" {f['per_second']}/s; server+PostgreSQL CPU {f['cpu_ms_per_booking']} ms"
                f" per booking; p50 {f['latency_p50_ms']} ms p95 {f['latency_p95_ms']} ms;"
                f" failed {f['failed']}"
                + (
                    f"; EasyPaisa simulator (not ours) {sim} ms per booking"
                    if (sim := f["easypaisa_simulator_cpu_ms_per_booking"])
                    else ""
                )
            )
        for way, g in mx["mixed_by_way"].items():
            print(
                f"    mixed, {way}: {g['completed']} bookings, p50 {g['latency_p50_ms']} ms"
                f" p95 {g['latency_p95_ms']} ms"
            )
        print(
            f"    bank statements imported: {mx['statements_imported']}, up to"
            f" {mx['statement_lines']} credits each; transfers left unmatched:"
            f" {mx['transfers_unmatched']}"
        )
        if len(mx["ratio_cpu_per_booking_by_round"]) > 1:
            print(
                "  mixed / sandbox-only CPU per booking, round by round:"
                f" {mx['ratio_cpu_per_booking_by_round']}, median"
                f" {mx['ratio_cpu_per_booking_median_of_rounds']}"
            )
        print(
            f"  mixed / sandbox-only per booking: CPU {mx['ratio_cpu_per_booking']},"
            f" seconds {mx['ratio_seconds_per_booking']}, median latency"
            f" {mx['ratio_latency_p50']}"
        )
    write_results(args.out, results)
    m = results["machine"]
    print(
        f"consent required: {results['consent_required'] or 'none'}; machine busy before the "
        f"booking phase: {m['busy_before']:.0%} (waited {m['waited_for_quiet_seconds']} s), "
        f"during it: {m['busy_during']:.0%}, "
        f"load after: {m['load_1min_after']}"
    )
    print(
        f"shutdown: wadud serve exited {stopped['serve_exit_code']} in "
        f"{stopped['serve_stop_seconds']} s; PostgreSQL left running: "
        f"{stopped['postgres_left_running']}"
    )


if __name__ == "__main__":
    main()
