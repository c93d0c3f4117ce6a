"""Concurrent one-to-one phone visits per bridge core (issue 38).

Starts ``wadud serve`` (its embedded PostgreSQL, the SFU and signalling) and
``wadud sip`` as a process of its own, each pinned to one core (``taskset``),
and seeds N video visits with their PINs straight into the database. Each
visit then gets what a real one has:

* in the room, the doctor: the load tool's audio-only publisher (the
  pre-encoded Opus a browser sends, wadud_client/load), joined before the call;
* on the phone, SIPp: it calls in (INVITE, ACK), keys the PIN and # as SIP
  INFO, plays a tone as G.711 µ-law RTP for the whole call
  (``rtp_stream``), and hangs up after ``--hold`` seconds.

Once every phone is in its room (the bridge's ``wadud_sip_calls_in_rooms``)
it measures, over ``--seconds``, from the bridge's own process and metrics:
its CPU per call (share of a core), the delay its jitter buffer adds
(``wadud_sip_jitter_delay_seconds``: p50 and p95 of the frames in the
window) and the share of the phones' frames concealed or late. It steps N
(``--calls 10,20,40,60``), each step a fresh set of calls, and says what
limits the bridge: the first step over 90% of its core, or over 1%
concealed, or whose phones do not all get in. Figures, not assertions; the
machine is shared, so each step runs ``--runs`` times and the medians are
quoted.

    .venv/bin/python -m benchmarks.sip.capacity [--calls 10,20,40] [--runs 3]

JSON goes to ``--json`` (``benchmarks/results/sip-capacity.json``). Needs
``sipp`` (Debian's sip-tester) and ``espeak-ng``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import secrets
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from benchmarks.booking.run import database_url, seed, stop_server
from benchmarks.common import (
    ROOT,
    answers_ready,
    command_line,
    cpu_seconds,
    free_port,
    start_group,
    stop_group,
    write_results,
)

WADUD = str(Path(sys.executable).parent / "wadud")
SECRET = "sip-capacity-" + "s" * 40
SIP_HOST = "127.0.0.1"
KEYS = 9  # eight digits and #


def tone_wav(path: Path) -> Path:
    """A 1 kHz tone, 8 kHz mono 16-bit: what SIPp's rtp_stream sends as PCMU."""
    rate = 8000
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(
            b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * 1000 * i / rate)))
                for i in range(rate * 2)
            )
        )
    return path


def scenario(tone: Path) -> str:
    """SIPp's call: INVITE with a PCMU offer on its rtp_stream port, ACK,
    the tone looping, the PIN keyed as INFO ([field0] to [field8] of the
    injection file), the call held ``-d`` milliseconds, BYE."""
    dialog = (
        "From: <sip:+92300[call_number]@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]\n"
        "To: <sip:visit@[remote_ip]:[remote_port]>[peer_tag_param]\n"
        "Call-ID: [call_id]\n"
    )
    infos = "".join(
        f"""  <send retrans="500"><![CDATA[
INFO [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
{dialog}CSeq: {n + 2} INFO
Max-Forwards: 70
Content-Type: application/dtmf-relay
Content-Length: [len]

Signal=[field{n}]
Duration=160
]]></send>
  <recv response="200"/>
"""
        for n in range(KEYS)
    )
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="phone visit">
  <send retrans="500"><![CDATA[
INVITE sip:visit@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
{dialog.replace("[peer_tag_param]", "")}CSeq: 1 INVITE
Contact: <sip:sipp@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=trunk 1 1 IN IP4 [local_ip]
s=-
c=IN IP4 [local_ip]
t=0 0
m=audio [rtpstream_audio_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=ptime:20
]]></send>
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
{dialog}CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <nop><action><exec rtp_stream="{tone},-1,0"/></action></nop>
{infos}  <pause/>
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
{dialog}CSeq: 20 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""


async def seed_visits(db_url: str, count: int) -> list[tuple[str, str]]:
    """``count`` accepted video visits under way now, each with its PIN:
    (booking id, PIN). Made once, for every step (a PIN opens its visit
    again and again)."""
    conn = await asyncpg.connect(db_url)
    try:
        # One doctor each: a doctor's visits may not overlap.
        doctors = await conn.fetch(
            "SELECT id, key, clinic_id, currency FROM doctors ORDER BY key LIMIT $1", count
        )
        rows = []
        now = dt.datetime.now(dt.UTC)
        for k in range(count):
            patient = await conn.fetchval(
                """INSERT INTO users (email, password_hash, role, display_name)
                   VALUES ($1, 'x', 'patient', $2) RETURNING id""",
                f"phone-bench-{k}-{secrets.token_hex(3)}@example.org",
                f"Patient {k}",
            )
            doctor = doctors[k]
            starts = now - dt.timedelta(minutes=1)
            row = await conn.fetchrow(
                """INSERT INTO bookings (clinic_id, doctor_id, doctor_key, patient_id, type,
                       starts_at, ends_at, blocked, status, price_minor, currency)
                   VALUES ($1, $2, $3, $4, 'video', $5, $6, tstzrange($5, $6),
                           'accepted', 0, $7)
                   RETURNING id, phone_pin""",
                doctor["clinic_id"],
                doctor["id"],
                doctor["key"],
                patient,
                starts,
                starts + dt.timedelta(hours=3),
                doctor["currency"],
            )
            rows.append((str(row["id"]), str(row["phone_pin"])))
        return rows
    finally:
        await conn.close()


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The bridge's metrics as ``name{labels}`` -> value."""
    async with http.get(url) as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def delay_quantiles(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """p50 and p95 of the jitter delay histogram's frames between two scrapes, ms."""
    prefix = "wadud_sip_jitter_delay_seconds_bucket{le="
    buckets = sorted(
        (
            float(k[len(prefix) + 1 : -2]) if "Inf" not in k else math.inf,
            after[k] - before.get(k, 0),
        )
        for k in after
        if k.startswith(prefix)
    )
    total = buckets[-1][1] if buckets else 0
    out = {}
    for q in (0.5, 0.95):
        out[f"p{int(q * 100)}_ms"] = next(
            (le * 1000 for le, n in buckets if n >= q * total), math.inf
        ) if total else math.nan  # fmt: skip
    out["frames"] = total
    return out


async def room_publishers(
    base: str, visits: list[tuple[str, str]], settings: Any, http: aiohttp.ClientSession
) -> list[Any]:
    """One doctor per visit, in its room, sending the load tool's Opus."""
    from wadud.web.auth import RoomGrant, issue_room_token
    from wadud_client.load.media import clip
    from wadud_client.load.peers import Publisher
    from wadud_client.load.wire.link import Certificate

    audio = clip("low", video=False)
    certificate = Certificate()
    now = dt.datetime.now(dt.UTC)
    pubs = []
    for booking, _ in visits:
        token = issue_room_token(
            settings,
            RoomGrant(f"booking-{booking}", "doctor", "Doctor", "doctor", admin=True),
            not_before=now - dt.timedelta(minutes=1),
            expires=now + dt.timedelta(hours=3),
        )
        pub = Publisher(
            base.replace("http", "ws") + "/ws", token, http, f"doctor-{booking[:8]}",
            certificate, audio, audio=True, video=False,
        )  # fmt: skip
        await pub.join()
        await pub.publish()
        pubs.append(pub)
    return pubs


async def one_step(
    work: Path, calls: int, visits: list[tuple[str, str]], sip_port: int, metrics: str,
    sip_pid: int, seconds: float, tone: Path,
) -> dict[str, Any]:  # fmt: skip
    folder = work / f"step-{calls}-{time.monotonic_ns()}"
    folder.mkdir()
    (folder / "scenario.xml").write_text(scenario(tone))
    lines = ["SEQUENTIAL"] + [";".join(pin) + ";#;" for _, pin in visits[:calls]]
    (folder / "pins.csv").write_text("\n".join(lines) + "\n")
    hold_ms = int((calls / 5 + 20 + seconds + 10) * 1000)
    sipp = start_group(
        [
            "sipp", "-sf", "scenario.xml", "-inf", "pins.csv", "-i", SIP_HOST,
            "-p", str(free_port(kind=2)), "-t", "u1", "-m", str(calls), "-l", str(calls),
            "-r", "5", "-d", str(hold_ms), "-mi", SIP_HOST, "-mp", "30000",
            "-nostdin", "-trace_err", f"{SIP_HOST}:{sip_port}",
        ],
        folder / "sipp.log",
        cwd=folder,
    )  # fmt: skip
    result: dict[str, Any] = {"calls": calls}
    async with aiohttp.ClientSession() as http:
        try:
            deadline = time.monotonic() + calls / 5 + 60
            while True:
                now = await scrape(http, metrics)
                if now.get("wadud_sip_calls_in_rooms", 0) >= calls:
                    break
                if time.monotonic() > deadline or sipp.poll() is not None:
                    result["in_rooms"] = now.get("wadud_sip_calls_in_rooms", 0)
                    result["error"] = "not every phone got into its room"
                    return result
                await asyncio.sleep(0.5)
            before, cpu0, t0 = await scrape(http, metrics), cpu_seconds(sip_pid), time.monotonic()
            await asyncio.sleep(seconds)
            after, cpu1, t1 = await scrape(http, metrics), cpu_seconds(sip_pid), time.monotonic()
        finally:
            # SIPp hangs up by itself after its hold; the next step must not
            # start before the bridge let these calls go.
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(sipp.wait, hold_ms / 1000 + 30)
            stop_group(sipp)
    share = (cpu1 - cpu0) / (t1 - t0)

    def diff(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    received = diff('wadud_sip_frames_total{kind="received"}')
    result.update(
        core_share=round(share, 3),
        core_share_per_call=round(share / calls, 4),
        calls_per_core=round(calls / share, 1) if share else None,
        delay=delay_quantiles(before, after),
        concealed_share=(
            diff('wadud_sip_frames_total{kind="concealed"}') / received if received else None
        ),
    )
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from wadud.config import Settings

    steps = [int(n) for n in args.calls.split(",")]
    work = Path(tempfile.mkdtemp(prefix="sip-capacity-"))
    data = work / "serve"
    port, media = free_port(), free_port(kind=2)
    env = {
        **os.environ,
        "WADUD_SECRET_KEY": SECRET,
        "WADUD_DATA_DIR": str(data),
        "WADUD_PORT": str(port),
        "WADUD_MEDIA_PORT": str(media),
        "WADUD_LOG_FORMAT": "text",
        "WADUD_LOG_LEVEL": "warning",
        "XDG_CACHE_HOME": str(work / "cache"),
    }
    serve = start_group(["taskset", "-c", "0", WADUD, "serve"], work / "serve.log", env=env)
    bridge = None
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            if not await answers_ready(http, base, 60, serve):
                raise SystemExit(f"wadud serve did not start: {work / 'serve.log'}")
        db = database_url(data)
        await seed(db, max(steps))
        visits = await seed_visits(db, max(steps))
        sip_port, metrics_port = free_port(kind=2), free_port()
        config = work / "sip.toml"
        config.write_text(
            f'[sip]\nlisten = "{SIP_HOST}:{sip_port}"\nrtp_ports = "20000-29999"\n'
            f'room_url = "{base}/ws"\n[sip.trunks.bench]\nnetworks = ["127.0.0.0/8"]\n'
            'language = "en"\nmax_calls = 1000\n'
        )
        bridge = start_group(
            ["taskset", "-c", "1", WADUD, "sip", "--config", str(config)],
            work / "sip.log",
            env={
                **env,
                "WADUD_DATABASE_URL": db,
                "WADUD_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            },
        )
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        async with aiohttp.ClientSession() as http:
            if not await answers_ready(http, f"http://127.0.0.1:{metrics_port}", 60, bridge):
                raise SystemExit(f"wadud sip did not start: {work / 'sip.log'}")
        settings = Settings(secret_key=SECRET)
        tone = tone_wav(work / "tone.wav")
        results: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as http:
            peers = await room_publishers(base, visits, settings, http)
            try:
                for calls in steps:
                    for r in range(args.runs):
                        step = await one_step(
                            work, calls, visits, sip_port, metrics, bridge.pid, args.seconds, tone
                        )
                        step["run"] = r + 1
                        print(json.dumps(step), flush=True)
                        results.append(step)
            finally:
                for peer in peers:
                    with contextlib.suppress(Exception):
                        await peer.close()
        return {"command": command_line("benchmarks.sip.capacity"), "steps": results}
    finally:
        if bridge is not None:
            stop_group(bridge)
        stop_server(serve, data)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


def summary(results: dict[str, Any]) -> None:
    by: dict[int, list[dict[str, Any]]] = {}
    for step in results["steps"]:
        by.setdefault(step["calls"], []).append(step)
    print(
        f"{'calls':>5} {'core':>6} {'calls/core':>10} {'p50 ms':>7} {'p95 ms':>7} {'concealed':>9}"
    )
    for calls, runs in sorted(by.items()):
        ok = [s for s in runs if "error" not in s]
        if not ok:
            print(f"{calls:>5} {runs[0].get('error')}")
            continue
        share = statistics.median(s["core_share"] for s in ok)
        per_core = statistics.median(s["calls_per_core"] for s in ok)
        concealed = statistics.median(s["concealed_share"] or 0.0 for s in ok)
        print(
            f"{calls:>5} {share:>6.2f} {per_core:>10.1f}"
            f" {statistics.median(s['delay']['p50_ms'] for s in ok):>7.0f}"
            f" {statistics.median(s['delay']['p95_ms'] for s in ok):>7.0f}"
            f" {100 * concealed:>8.2f}%"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="10,20,40", help="concurrent calls per step")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured per step")
    parser.add_argument(
        "--json", default=str(ROOT / "benchmarks" / "results" / "sip-capacity.json")
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("needs sipp (apt-get install sip-tester)")
    results = asyncio.run(run(args))
    summary(results)
    write_results(args.json, results)


if __name__ == "__main__":
    main()
