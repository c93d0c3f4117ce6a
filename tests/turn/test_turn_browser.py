"""Headless Chromium holds a call with an aiortc peer through our relay only.

Chromium is told ``iceTransportPolicy: 'relay'``, so every packet it sends or
receives crosses our TURN server; the test checks that the selected candidate
pair is a relay one, that Chromium decodes aiortc's video and that aiortc
receives Chromium's. Skips when ``chromium`` is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.chromium import FLAGS, reporting_site
from tests.turn.conftest import need_binary
from turn.aio import TurnServer

PAGE = """<!doctype html><html><body><script>
async function main() {
  const cfg = await (await fetch('/config')).json();
  const pc = new RTCPeerConnection({
    iceServers: [{urls: cfg.urls, username: cfg.username, credential: cfg.credential}],
    iceTransportPolicy: 'relay'});
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: 320, height: 240}});
  stream.getTracks().forEach(t => pc.addTrack(t, stream));
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(r => { if (pc.iceGatheringState === 'complete') r();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); });
  const answer = await (await fetch('/offer', {method: 'POST',
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: pc.localDescription.type})})).json();
  await pc.setRemoteDescription(answer);
  for (let i = 0; i < 150; i++) {
    await new Promise(r => setTimeout(r, 100));
    const stats = await pc.getStats();
    let frames = 0, localType = null, pairOk = false;
    stats.forEach(s => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') frames = s.framesDecoded || 0;
      if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) {
        pairOk = true; localType = stats.get(s.localCandidateId).candidateType; }
    });
    if (frames > 5 && pairOk) {
      await fetch('/result', {method: 'POST', body: JSON.stringify({frames, localType})});
      return;
    }
  }
  await fetch('/result', {method: 'POST', body: JSON.stringify({frames: 0, localType: null,
    error: 'timeout ' + pc.iceConnectionState})});
}
main().catch(e => fetch('/result', {method: 'POST', body: JSON.stringify({error: String(e)})}));
</script></body></html>"""


@pytest.fixture
def loopback_aiortc(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice leaves loopback out of its host candidates; a loopback call needs it."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    path = need_binary("chromium")
    procs: list[asyncio.subprocess.Process] = []

    async def launch(url: str, profile: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            path, *FLAGS, f"--user-data-dir={profile}", url,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        procs.append(proc)

    try:
        yield launch
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_chromium_call_through_relay(
    turn_server: TurnServer, chromium: Any, loopback_aiortc: None, transport: str, tmp_path: Path
) -> None:
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaBlackhole
    from aiortc.mediastreams import VideoStreamTrack

    username, credential = turn_server.credentials("browser", 600)
    urls = [u for u in turn_server.urls() if u.endswith(f"transport={transport}")]
    peers: list[RTCPeerConnection] = []
    received = {"frames": 0}
    tasks: set[asyncio.Future[None]] = set()

    async def config(_: web.Request) -> web.Response:
        return web.json_response({"urls": urls, "username": username, "credential": credential})

    async def offer(request: web.Request) -> web.Response:
        body = await request.json()
        pc = RTCPeerConnection()
        peers.append(pc)

        @pc.on("track")
        def on_track(track: Any) -> None:
            async def count() -> None:
                with contextlib.suppress(Exception):
                    while True:
                        await track.recv()
                        received["frames"] += 1

            tasks.add(asyncio.ensure_future(count()))

        await pc.setRemoteDescription(RTCSessionDescription(**body))
        pc.addTrack(VideoStreamTrack())
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    routes = [web.get("/config", config), web.post("/offer", offer)]
    blackhole = MediaBlackhole()
    try:
        async with reporting_site(PAGE, routes) as site:
            # Under the test's own folder, not a TemporaryDirectory: the
            # browser runs until the fixture's teardown, and removing its
            # profile under it failed ("Directory not empty: 'Default'").
            profile = tmp_path / "profile"
            profile.mkdir()
            await chromium(site.url, str(profile))
            outcome = await asyncio.wait_for(site.result, 40)
        assert outcome.get("error") is None, outcome
        assert outcome["localType"] == "relay"
        assert outcome["frames"] > 5
        for _ in range(50):
            if received["frames"] > 5:
                break
            await asyncio.sleep(0.1)
        assert received["frames"] > 5
        snap = turn_server.core.snapshot()
        # Media crossed the relay both ways (a few packets per small frame).
        assert snap["to_peer_pkts"] > 10
        assert snap["from_peer_pkts"] > 10
    finally:
        for pc in peers:
            await pc.close()
        for task in tasks:
            task.cancel()
        await blackhole.stop()
