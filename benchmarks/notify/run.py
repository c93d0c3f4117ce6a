"""Notifier benchmark: how fast events become emails, and what the outbox
trigger costs the transactions that emit events.

Starts its own PostgreSQL (pgserver, in a temporary folder) and a local SMTP
server (aiosmtpd), then:

* ``trigger``: emits N ``booking.requested`` outbox events, one transaction
  each, with the ``outbox_to_notify`` trigger on and off (alternating rounds),
  and reports events per second and the cost per event;
* ``throughput``: N payment receipts to N users, one notifier (or
  ``--replicas`` of them in this process, each with ``notify_concurrency``
  senders); reports emails per second from the first emit to the last
  accepted message, and checks that each went exactly once.

Figures, not assertions; the machine is shared.

    .venv/bin/python -m benchmarks.notify.run [--events 2000] [--emails 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pgserver.postgres_server import get_server

from aiosmtpd.controller import Controller

from notify import channels as ch
from notify.service import Notifier
from wadud.config import Settings
from wadud.messaging import outbox
from wadud.state import db, migrate


class Sink:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.last = 0.0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for line in envelope.content.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                self.ids.append(line.split(b":", 1)[1].strip().decode())
                break
        self.last = time.perf_counter()
        return "250 OK"


async def trigger_cost(pool: Any, events: int, rounds: int) -> dict[str, Any]:
    payload = {"booking_id": str(uuid.uuid4()), "status": "requested", "event": "x"}

    async def one_round() -> float:
        t0 = time.perf_counter()
        async with pool.acquire() as conn:
            for _ in range(events):
                async with conn.transaction():
                    await outbox.emit(conn, "booking.requested", payload)
        return events / (time.perf_counter() - t0)

    on: list[float] = []
    off: list[float] = []
    for _ in range(rounds):
        await pool.execute("ALTER TABLE outbox DISABLE TRIGGER outbox_to_notify")
        off.append(await one_round())
        await pool.execute("ALTER TABLE outbox ENABLE TRIGGER outbox_to_notify")
        on.append(await one_round())
        await pool.execute("TRUNCATE notify_inbox")
        await pool.execute("TRUNCATE outbox")
    med_on, med_off = statistics.median(on), statistics.median(off)
    return {
        "events_per_round": events,
        "rounds": rounds,
        "per_s_trigger_on": round(med_on),
        "per_s_trigger_off": round(med_off),
        "cost_us_per_event": round((1 / med_on - 1 / med_off) * 1e6, 1),
    }


async def throughput(pool: Any, settings: Settings, sink: Sink, emails: int, replicas: int
                     ) -> dict[str, Any]:  # fmt: skip
    users = [uuid.uuid4() for _ in range(emails)]
    await pool.executemany(
        """INSERT INTO users (id, email, password_hash, role, display_name, locale, time_zone)
           VALUES ($1, $2, 'x', 'patient', 'Bench', 'ur', 'Asia/Karachi')""",
        [(u, f"b-{u.hex[:12]}@example.test") for u in users],
    )
    opened = [await ch.open_channels(settings) for _ in range(replicas)]
    notifiers = [Notifier(pool, settings, o.senders) for o in opened]
    for n in notifiers:
        await n.start()
    t0 = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction():
        for u in users:
            await outbox.emit(
                conn,
                "payment.succeeded",
                {"payment_id": str(uuid.uuid4()), "patient_id": str(u),
                 "amount_minor": 150000, "currency": "PKR"},
            )  # fmt: skip
    # The SMTP sink runs in aiosmtpd's own thread and loop: poll it.
    while len(sink.ids) < emails and time.perf_counter() - t0 < 300:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    took = sink.last - t0
    await asyncio.sleep(1.0)
    for n in notifiers:
        await n.close()
    for o in opened:
        await o.close()
    return {
        "emails": emails,
        "replicas": replicas,
        "concurrency_each": settings.notify_concurrency,
        "seconds": round(took, 2),
        "emails_per_s": round(emails / took, 1),
        "sent": len(sink.ids),
        "distinct_message_ids": len(set(sink.ids)),
        "per_replica": [n.sent for n in notifiers],
    }


async def measure(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    server = get_server(Path(tmp) / "pg", cleanup_mode="delete")
    sink = Sink()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        smtp_port = probe.getsockname()[1]
    smtp = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    try:
        url = server.get_uri()
        conn = await db.connect(url)
        await migrate.migrate(conn)
        await conn.close()
        settings = Settings(
            data_dir=Path(tmp),
            database_url=url,
            database_pool_max=20,
            notify_smtp_host="127.0.0.1",
            notify_smtp_port=smtp_port,
            notify_smtp_tls="none",
            notify_poll_interval=0.2,
            notify_concurrency=args.concurrency,
        )
        async with db.pool(settings, url) as pool:
            return {
                "trigger": await trigger_cost(pool, args.events, args.rounds),
                "throughput": await throughput(pool, settings, sink, args.emails, args.replicas),
            }
    finally:
        smtp.stop()
        server.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--emails", type=int, default=500)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/notify.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="wadud-notify-bench-") as tmp:
        result = asyncio.run(measure(args, tmp))
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
