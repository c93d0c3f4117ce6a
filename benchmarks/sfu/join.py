"""Join to first frame, on one peer connection and on two (issue 40).

A participant who joins a visit in progress waits for the doctor's picture:
signalling (``join``, ``joined``), then one ICE and DTLS handshake on a
single connection, or two on the pair of publish and subscribe connections,
and the offers and answers that set up what it receives. This benchmark
times that wait, join after join, alternating the two modes, against one
``wadud serve`` process (its embedded PostgreSQL is the pgserver wheel's):

* a publisher (aiortc, the Python client, 320x240 at 15 fps and a tone)
  holds the room throughout;
* ``aiortc``: each join is a new :class:`wadud_client.call.CallClient` that
  also publishes a microphone, as a patient does; the time runs from just
  before ``join()`` to the first decoded frame of the publisher's video, on
  the client's own monotonic clock;
* ``chromium``: each join is a new headless Chromium on the call page (its
  device check done, camera and microphone fake); the time runs from the
  click on "Join now" to the first decoded frame of the publisher's video,
  as the page's ``getStats`` sees it every 20 ms, on the page's own
  ``performance.now()``.

For each mode it prints p50/p90 over the joins, the peer connections and the
DTLS handshakes each participant made (ports it holds: one per connection),
and writes ``benchmarks/results/sfu-join.json``.

    .venv/bin/python -m benchmarks.sfu.join [--joins 20] [--clients aiortc,chromium]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import (
    ROOT,
    answers_ready,
    command_line,
    commit_of,
    pct,
    write_results,
)

MODES = ("single", "pair")
#: Joins in one room before the next room (see run()).
ROOM_JOINS = 10
SECRET = "served-secret-" + "z" * 40

# Click "Join now" and resolve with the milliseconds from the click to the
# first decoded frame of `peer`'s video, by the page's own clock.
FIRST_FRAME = """(async (peer) => {
  const t0 = performance.now();
  document.getElementById('join').click();
  for (;;) {
    await new Promise((r) => setTimeout(r, 20));
    const call = window.wadudCall;
    if (!call || call.state !== 'joined') continue;
    const s = (await call.stats()).participants[peer];
    if (s && s.framesDecoded > 0) return performance.now() - t0;
  }
})"""

# The page's peer connections, each once, and those connected.
CONNECTIONS = """(() => {
  const call = window.wadudCall;
  const pcs = [...new Set([call.publishPc, call.subscribePc])].filter(Boolean);
  const up = pcs.filter((pc) => pc.connectionState === 'connected');
  return {pcs: pcs.length, connected: up.length};
})()"""


def _link(settings: Any, base: str, room: str, identity: str, role: str) -> str:
    from wadud.web.auth import RoomGrant, issue_room_token

    now = dt.datetime.now(dt.UTC)
    grant = RoomGrant(room, identity, identity.title(), role, True, True, role == "doctor")
    token = issue_room_token(
        settings,
        grant,
        not_before=now - dt.timedelta(seconds=5),
        expires=now + dt.timedelta(hours=1),
    )
    return f"{base}/call/{room}?token={token}"


async def _aiortc_join(base: str, link: str, mode: str, publisher: str) -> dict[str, Any]:
    from wadud_client.call import CallClient
    from wadud_client.network import ws_url
    from wadud_client.sources import ToneAudio

    url, token, room = ws_url(link)
    assert token
    client = CallClient(url, token, room=room, label=f"join-{mode}", connection=mode)  # type: ignore[arg-type]
    try:
        t0 = time.monotonic()
        await client.join()
        await client.publish({"microphone": ToneAudio()})

        def first() -> float | None:
            for r in client.received.values():
                if r.participant == publisher and r.kind == "video" and r.first_frame_at:
                    return r.first_frame_at
            return None

        await client.wait_until(lambda: first() is not None, 30)
        at = first()
        assert at is not None
        pcs = {id(pc): pc for pc in (client.publish_pc, client.subscribe_pc) if pc is not None}
        return {
            "ms": round((at - t0) * 1000, 1),
            "pcs": len(pcs),
            "connected": sum(1 for pc in pcs.values() if pc.connectionState == "connected"),
        }
    finally:
        # Gone for good, not kept for a resume: the room holds 16.
        with contextlib.suppress(Exception):
            await client.leave()
        await client.close()


async def _chromium_join(
    work: Path, link: str, mode: str, publisher: str, n: int
) -> dict[str, Any]:
    from tests.browser import Browsers

    browsers = Browsers(work / f"chromium-{mode}-{n}")
    try:
        page = await browsers.open("joiner", link + ("&connection=pair" if mode == "pair" else ""))
        await page.wait_for(
            "document.body.dataset.screen === 'prejoin'"
            " && typeof document.getElementById('join').onclick === 'function'",
            "the device check",
            within=30,
        )
        try:
            ms = await asyncio.wait_for(page.eval(f"({FIRST_FRAME})({publisher!r})"), 30)
        except TimeoutError:
            raise TimeoutError(f"{mode} join {n}: {await page.snapshot()}") from None
        seen = await page.eval(CONNECTIONS)
        await page.eval("window.wadudCall.leave().then(() => true)")
        return {"ms": round(float(ms), 1), **seen}
    finally:
        await browsers.close()


async def run(joins: int, clients: list[str], work: Path) -> dict[str, Any]:
    from pgserver.postgres_server import get_server

    from tests.wadud.processes import serve_on_free_ports
    from wadud.config import sources
    from wadud_client.call import CallClient
    from wadud_client.network import ws_url
    from wadud_client.sources import TestPatternVideo, ToneAudio

    pg = get_server(work / "pg", cleanup_mode="delete")
    data = work / "data"
    data.mkdir()
    base, proc = serve_on_free_ports(str(pg.get_uri("postgres")), data, WADUD_SECRET_KEY=SECRET)
    settings = sources.load(
        env={"WADUD_SECRET_KEY": SECRET}, overrides={"data_dir": str(data)}
    ).with_secret()
    results: dict[str, Any] = {"joins": joins, "clients": {}}
    host: Any = None
    try:
        async with aiohttp.ClientSession() as s:
            assert await answers_ready(s, base, 60), "wadud serve did not become ready"

        async def open_host(room: str) -> Any:
            url, token, _ = ws_url(_link(settings, base, room, "dr-host", "doctor"))
            assert token
            client = CallClient(url, token, room=room, label="host", consume=False)
            await client.join()
            await client.room_settings(require_admission=False)
            await client.publish(
                {"camera": TestPatternVideo(320, 240, fps=15), "microphone": ToneAudio()}
            )
            return client

        for kind in clients:
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
            for i in range(joins * len(MODES)):
                mode = MODES[i % len(MODES)]  # alternating, join by join
                if i % ROOM_JOINS == 0:
                    # A fresh room (and host) every ROOM_JOINS joins: each
                    # joiner's tracks that came and went stay in the host's
                    # descriptions as spent sections (aiortc's offers and
                    # answers keep every one), past the 64 KiB frame limit
                    # after some sixty.
                    if host is not None:
                        await host.leave()
                        await host.close()
                    room = f"join-bench-{kind}-{i // ROOM_JOINS}"
                    host = await open_host(room)
                publisher = str(host.participant_id)
                link = _link(settings, base, room, f"pt-{kind}-{i}", "patient")
                if kind == "aiortc":
                    one = await _aiortc_join(base, link, mode, publisher)
                else:
                    one = await _chromium_join(work, link, mode, publisher, i)
                runs[mode].append(one)
                print(
                    f"{kind:8} {mode:6} join {i // 2 + 1:2}: {one['ms']:7.1f} ms, {one['pcs']} pc"
                )
            results["clients"][kind] = {
                mode: {
                    "p50_ms": round(statistics.median(r["ms"] for r in rs), 1),
                    "p90_ms": round(pct([r["ms"] for r in rs], 90), 1),
                    "min_ms": min(r["ms"] for r in rs),
                    "max_ms": max(r["ms"] for r in rs),
                    "peer_connections": max(r["pcs"] for r in rs),
                    "dtls_handshakes": max(r["connected"] for r in rs),
                    "runs": rs,
                }
                for mode, rs in runs.items()
            }
    finally:
        if host is not None:
            await host.close()
        # Ours alone, by its pid (serve_on_free_ports gives it no group).
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        pg.cleanup()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, default=20, help="per mode and client")
    parser.add_argument("--clients", default="aiortc,chromium")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/sfu-join.json")
    args = parser.parse_args()
    clients = [c for c in args.clients.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="wadud-join-") as tmp:
        results = asyncio.run(run(args.joins, clients, Path(tmp)))
    results["command"] = command_line("benchmarks.sfu.join")
    results["commit"] = commit_of(ROOT)
    print()
    print(f"{'client':9} {'mode':7} {'p50 ms':>8} {'p90 ms':>8} {'pcs':>4} {'DTLS':>5}")
    for kind, modes in results["clients"].items():
        for mode, r in modes.items():
            print(
                f"{kind:9} {mode:7} {r['p50_ms']:8.1f} {r['p90_ms']:8.1f}"
                f" {r['peer_connections']:4} {r['dtls_handshakes']:5}"
            )
        single, pair = modes["single"]["p50_ms"], modes["pair"]["p50_ms"]
        print(f"{kind:9} single/pair p50: {single / pair:.2f}")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
