"""A call between a Chromium page and GStreamer's webrtcbin, a client whose
media stack no one here wrote, through our SFU.

webrtcbin keeps its defaults: an RSA-2048 DTLS certificate and offers with
``a=setup:actpass``, so on its publish connection we are the DTLS client and
must offer an ECDHE-RSA suite (RFC 8827 section 6.5). The peer
(tests/signalling/gst_peer.py, written from docs/protocol.md) runs under the
system Python, which has GStreamer's ``gi``; the venv does not.

Like test_browser_call.py, the test re-executes this module as a driver in a
loopback-only network namespace. The driver serves the app, opens the
doctor's call page in Chromium, starts the GStreamer peer as the patient,
waits until each decodes the other, and then reads both sides every 2 s for
10 s: the page's ``window.wadudCall.stats()`` for the GStreamer participant
(video frames decoded, audio packets and samples) and the peer's own counts
(video frames and audio buffers out of its decoders).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser import ROOT, DriverError, Page, from_peer, join, participant_id, run_scenario
from tests.signalling.call_world import HTTP_PORT, Scenario, World, serve_scenarios

DRIVER = "tests.signalling.test_gstreamer"
SYSTEM_PYTHON = "/usr/bin/python3"
PEER = ROOT / "tests" / "signalling" / "gst_peer.py"
#: The measurement: readings every STEP seconds over WINDOW seconds.
WINDOW, STEP = 10.0, 2.0
#: 15 fps sent, 10 s: at least a third of it, on a busy two-core machine.
MIN_FRAMES = 50
#: The peer's two connections, as it reports their states.
PCS = ("publish", "subscribe")


def gstreamer_missing() -> str | None:
    """Why the system Python cannot run the peer, or None when it can."""
    probe = (
        "import gi, websockets; gi.require_version('Gst', '1.0');"
        " gi.require_version('GstWebRTC', '1.0'); gi.require_version('GstSdp', '1.0');"
        " from gi.repository import Gst; Gst.init(None);"
        " missing = [e for e in ('webrtcbin', 'nicesrc', 'dtlssrtpenc', 'vp8enc', 'vp8dec',"
        " 'opusenc', 'opusdec') if Gst.ElementFactory.find(e) is None];"
        " print(' '.join(missing))"
    )
    if not os.path.exists(SYSTEM_PYTHON):
        return f"no {SYSTEM_PYTHON}"
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return done.stderr.strip().splitlines()[-1]
    if done.stdout.strip():
        return f"GStreamer elements missing: {done.stdout.strip()}"
    return None


def peer_groups(work: Path) -> list[int]:
    path = work / "gst-groups"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


# -- the pytest side -----------------------------------------------------------


@pytest.mark.timeout(120)
async def test_gstreamer_webrtcbin_and_chromium_hold_a_call(
    database_url: str, tmp_path: Path
) -> None:
    """Both directions flow for 10 s: the page decodes the GStreamer
    participant's video and plays its audio, and webrtcbin decodes the
    page's; both of webrtcbin's connections (its publish one is where we are
    the DTLS client of its RSA certificate) connect."""
    if (why := gstreamer_missing()) is not None:
        pytest.skip(f"needs GStreamer's webrtcbin under {SYSTEM_PYTHON}: {why}")
    result = await run_scenario(
        DRIVER, "gstreamer", database_url, tmp_path, 60, also_kill=peer_groups
    )
    print(json.dumps(result))
    readings = result["readings"]
    assert len(readings) == int(WINDOW / STEP) + 1, readings
    assert readings[-1]["at"] - readings[0]["at"] >= WINDOW, readings
    last = result["peer"]
    assert [last[pc] for pc in PCS] == ["connected", "connected"], last
    assert last["errors"] == [], last["errors"]
    assert last["published"] == ["audio", "video"], last
    # Every step of the window, each counter rose on both sides.
    for before, after in itertools.pairwise(readings):
        for side, keys in (
            ("page", ("framesDecoded", "audioPackets", "totalSamplesReceived")),
            ("gst", ("video_frames", "audio_buffers")),
        ):
            for key in keys:
                assert after[side][key] > before[side][key], (side, key, before, after)
    rise = result["rise"]
    assert rise["page"]["framesDecoded"] >= MIN_FRAMES, rise
    assert rise["gst"]["video_frames"] >= MIN_FRAMES, rise


# -- the driver side -----------------------------------------------------------


class GstPeer:
    """The GStreamer peer process (gst_peer.py under the system Python), in
    its own process group; its latest JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.joined: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.counts: dict[str, Any] = {}
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            try:
                message = json.loads(line)
            except ValueError:
                self.lines.append(line)
                continue
            if message.get("event") == "joined" and not self.joined.done():
                self.joined.set_result(message["participant"])
            elif message.get("event") == "counts":
                self.counts = message
            else:
                self.lines.append(line)
        if not self.joined.done():
            self.joined.set_exception(DriverError(f"the GStreamer peer ended: {self.lines[-5:]}"))

    async def leave(self) -> dict[str, Any]:
        """Close its stdin (it leaves the call) and give its last counts."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 10)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reader, 5)
        return self.counts


@contextlib.asynccontextmanager
async def gst_peer(world: World, token: str) -> AsyncIterator[GstPeer]:
    work = world.browsers.work
    log = os.open(work / "gst-peer.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(PEER),
        "--url", f"ws://127.0.0.1:{HTTP_PORT}/ws?room={world.room}",
        "--token", token, "--max-seconds", "90", "--local-address", "127.0.0.1",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        start_new_session=True,
        # GStreamer's own warnings go to the log, for a failure's report.
        env={**os.environ, "GST_DEBUG": "webrtcbin:3,dtls*:3,nice*:2"},
    )  # fmt: skip
    os.close(log)
    with (work / "gst-groups").open("a") as f:
        f.write(f"{proc.pid}\n")
    peer = GstPeer(proc)
    try:
        yield peer
    finally:
        if proc.returncode is None:
            await peer.leave()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)


async def reading(page: Page, peer: GstPeer, pid: str) -> dict[str, Any]:
    page_side = await from_peer(page, pid)
    return {"at": round(time.monotonic(), 2), "page": page_side, "gst": dict(peer.counts)}


async def scenario_gstreamer(world: World) -> dict[str, Any]:
    doctor = await world.browsers.open(
        "doctor", world.link("dr-amina", "Dr Amina", "doctor", admin=True)
    )
    await join(doctor)
    await participant_id(doctor)
    world.mark("doctor joined")
    link = world.link("gst-1", "GStreamer", "patient")
    token = parse_qs(urlsplit(link).query)["token"][0]
    async with gst_peer(world, token) as peer:
        try:
            pid = await asyncio.wait_for(asyncio.shield(peer.joined), 20)
        except TimeoutError:
            raise DriverError(f"the GStreamer peer did not join: {peer.lines[-5:]}") from None
        world.mark("gstreamer joined")

        def both_decode(r: dict[str, Any]) -> bool:
            page, gst = r["page"], r["gst"]
            return bool(
                page["framesDecoded"] > 0
                and page["audioPackets"] > 0
                and gst.get("video_frames", 0) > 0
                and gst.get("audio_buffers", 0) > 0
            )

        deadline = time.monotonic() + 25
        while not both_decode(first := await reading(doctor, peer, pid)):
            # A DTLS handshake webrtcbin gave up on does not come back.
            if time.monotonic() > deadline or "failed" in (first["gst"].get(k) for k in PCS):
                raise DriverError(f"media did not flow both ways: {first}, {peer.lines[-5:]}")
            await asyncio.sleep(0.3)
        world.mark("both decode")
        readings = [first]
        # A measurement window, not a wait for an event: read every STEP s.
        for _ in range(int(WINDOW / STEP)):
            await asyncio.sleep(STEP)
            readings.append(await reading(doctor, peer, pid))
        world.mark("window read")
        last = await peer.leave()
    a, b = readings[0], readings[-1]
    return {
        "readings": readings,
        "rise": {
            side: {k: b[side][k] - a[side][k] for k in b[side] if isinstance(b[side][k], int)}
            for side in ("page", "gst")
        },
        "peer": last,
        "timings": world.timings,
    }


SCENARIOS: dict[str, Scenario] = {"gstreamer": scenario_gstreamer}


if __name__ == "__main__":
    serve_scenarios(__doc__, SCENARIOS, 60)
