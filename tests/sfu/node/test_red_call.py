"""Opus RED through real browsers: audio that rides out 20% loss on a subscriber's downlink.

The test re-executes this module as a driver inside a loopback-only network
namespace (tests/browser.py). The driver runs two media workers, one with RED
and one without (``MediaWorker(red=False)``, what ``media_red = false``
configures), and a small page server in front of them: one Chromium page
publishes its fake microphone to both workers (two peer connections), a
second Chromium page subscribes to it on both (and once more on the worker
without RED, a leg left clean), and an aiortc client (no RED)
subscribes on the RED worker. Then iptables drops 20% of the datagrams
arriving at the subscriber page's two media ports, at random (its downlink
only: the publisher's leg is clean), for 20 s, and the page reads getStats()
inbound-rtp audio of each connection before and after: the share of samples
Chromium had to conceal (``concealedSamples / totalSamplesReceived``), less
the clean leg's over the same seconds, is the measure. The aiortc client
counts the Opus frames it decodes.

Run it by hand (as root, from the repository):

    unshare --net -- sh -c 'ip link set lo up && exec .venv/bin/python -m \\
        tests.sfu.node.test_red_call --work /tmp/red'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.browser import Browsers, DriverError, run_driver

LOSS = 0.2
SECONDS = 20.0
HTTP_PORT = 8080  # the namespace is ours alone
ROOM = "consult-red"


@pytest.mark.timeout(180)
async def test_red_rides_out_loss_and_aiortc_gets_plain_opus(tmp_path: Path) -> None:
    """The must-show: with RED at most 3% of the samples concealed through 20%
    downlink loss, and at least three times that without; an aiortc
    subscriber (no RED) decodes the same publisher's audio as plain Opus."""
    result = await run_driver(
        "tests.sfu.node.test_red_call", ["--work", str(tmp_path)], tmp_path, budget=100
    )
    print(json.dumps(result))
    red, plain, clean = result["red"], result["plain"], result["clean"]
    # The page's answers: RED kept from the worker that offers it only.
    assert result["negotiated"] == [True, False, False], result
    for leg in (red, plain):
        # The loss was there, on both lossy legs: about a fifth of the packets.
        assert 0.12 <= leg["lost"] <= 0.3, leg
    for leg in (red, plain, clean):
        assert leg["samples"] > 0.8 * 48000 * SECONDS, leg
    assert clean["lost"] < 0.02, result
    # What the loss made the page conceal: beyond what it concealed on the
    # clean leg over the same seconds, which is what a starved page's audio
    # thread conceals whatever the network does (ci126: 0.03 more on both
    # lossy legs than on an idle machine).
    red_loss = red["concealed"] - clean["concealed"]
    plain_loss = plain["concealed"] - clean["concealed"]
    assert red_loss <= 0.03, result
    assert plain_loss >= 3 * max(red_loss, 0.0), result
    assert plain_loss > 0.05, result
    # 50 Opus frames a second, decoded by aiortc, from a cut RED stream.
    assert result["aiortc"]["frames"] >= 0.8 * 50 * SECONDS, result
    assert result["red_stripped"] >= result["aiortc"]["frames"], result


# -- the driver: runs inside the namespace ------------------------------------------------

PUBLISH_PAGE = """<!doctype html><html><body><script>
async function main() {
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  const [track] = stream.getAudioTracks();
  window.pcs = [];
  for (const w of [0, 1]) {
    const pc = new RTCPeerConnection();
    pc.addTransceiver(track, {direction: 'sendonly', streams: [stream]});
    await pc.setLocalDescription(await pc.createOffer());
    const r = await fetch('/publish/' + w, {method: 'POST', body: pc.localDescription.sdp});
    await pc.setRemoteDescription({type: 'answer', sdp: await r.text()});
    window.pcs.push(pc);
  }
  window.published = true;
}
main().catch(e => { window.failed = String(e); });
</script></body></html>"""

SUBSCRIBE_PAGE = """<!doctype html><html><body><script>
async function main() {
  window.pcs = [];
  for (const [w, who] of [[0, 'patient'], [1, 'patient'], [1, 'clean']]) {
    const pc = new RTCPeerConnection();
    pc.ontrack = (e) => {
      // Chromium pulls received audio (and counts its samples) only while it plays.
      const audio = new Audio();
      audio.srcObject = new MediaStream([e.track]);
      audio.play();
      document.body.append(audio);
    };
    const r = await fetch(`/subscribe/${w}/${who}`, {method: 'POST'});
    await pc.setRemoteDescription({type: 'offer', sdp: await r.text()});
    await pc.setLocalDescription(await pc.createAnswer());
    await fetch(`/answer/${w}/${who}`, {method: 'POST', body: pc.localDescription.sdp});
    window.pcs.push(pc);
  }
}
window.audioStats = () => Promise.all(window.pcs.map(async (pc) => {
  const stats = await pc.getStats();
  let inbound = null, pair = null;
  stats.forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') inbound = r;
    if (r.type === 'transport' && r.selectedCandidatePairId) {
      pair = stats.get(r.selectedCandidatePairId);
    }
  });
  const local = pair && stats.get(pair.localCandidateId);
  return {port: local ? local.port : null,
          packets: inbound ? inbound.packetsReceived : 0,
          lost: inbound ? inbound.packetsLost : 0,
          samples: inbound ? inbound.totalSamplesReceived : 0,
          concealed: inbound ? inbound.concealedSamples : 0};
}));
main().catch(e => { window.failed = String(e); });
</script></body></html>"""


def _redundant_blocks(worker: Any, track_id: str) -> dict[int, int]:
    """How many redundant blocks the publisher's last RED packets carried (count of each)."""
    from rtc.red import RedPayload
    from rtc.rtp.packet import RtpPacket

    room = worker.tables.rooms[ROOM]
    track = room.forwarder.track(room.tracks[track_id].ssrc)
    counts: dict[int, int] = {}
    for seq in range(track.highest - 200, track.highest + 1):
        packet = track.history.get(seq & 0xFFFF, worker._now())
        if packet is not None and packet[1] & 0x7F == track.red_pt:
            n = len(RedPayload.parse(RtpPacket.parse(packet).payload).redundant)
            counts[n] = counts.get(n, 0) + 1
    return counts


def _red_state(worker: Any, at: float) -> list[Any]:
    """Seconds into the loss, then per subscriber of ``worker``: whether its
    audio goes as RED now, the loss its estimator sees, and whether that loss
    follows the rate (sfu.layers.choice ``_red_next`` decides from these)."""
    now = {}
    for peer, state in worker.layers.subscribers.by_peer.items():
        estimator = state.estimator
        now[peer.participant] = (
            state.red,
            None if estimator is None else round(estimator.loss, 3),
            None if estimator is None else estimator.loss_follows_rate,
        )
    return [round(at, 1), now]


def drop_at_random(port: int) -> None:
    """Lose ``LOSS`` of what arrives at ``port`` (this namespace's tables only)."""
    rule = ["INPUT", "-p", "udp", "--dport", str(port), "-m", "statistic"]
    rule += ["--mode", "random", "--probability", str(LOSS), "-j", "DROP"]
    subprocess.run(["iptables", "-A", *rule], check=True, capture_output=True)


async def drive(work: Path) -> dict[str, Any]:
    import aioice.ice

    from sfu.node.worker import MediaWorker
    from tests.sfu.conftest import Subscriber

    # aioice leaves loopback out of its host candidates; here there is nothing else.
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    workers = [MediaWorker(host="127.0.0.1", red=True), MediaWorker(host="127.0.0.1", red=False)]
    tracks: dict[int, str] = {}

    async def page(html: str) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    async def publish(request: web.Request) -> web.Response:
        w = int(request.match_info["w"])
        result = await workers[w].publish(ROOM, "doctor", await request.text(), {})
        tracks[w] = result.added[0].track_id
        return web.Response(text=result.answer)

    async def subscribe(request: web.Request) -> web.Response:
        w = int(request.match_info["w"])
        who = request.match_info["who"]
        return web.Response(text=await workers[w].subscribe(ROOM, who, [tracks[w]]) or "")

    async def answer(request: web.Request) -> web.Response:
        w = int(request.match_info["w"])
        await workers[w].answer(ROOM, request.match_info["who"], await request.text())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/pub", lambda _: page(PUBLISH_PAGE))
    app.router.add_get("/sub", lambda _: page(SUBSCRIBE_PAGE))
    app.router.add_post("/publish/{w}", publish)
    app.router.add_post("/subscribe/{w}/{who}", subscribe)
    app.router.add_post("/answer/{w}/{who}", answer)
    runner = web.AppRunner(app, access_log=None)
    browsers = Browsers(work)
    aiortc: Subscriber | None = None
    for worker in workers:
        await worker.start()
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", HTTP_PORT).start()
    base = f"http://127.0.0.1:{HTTP_PORT}"
    try:
        publisher = await browsers.open("publisher", f"{base}/pub")
        await publisher.wait_for("window.published || window.failed", "publishing")
        failed = await publisher.eval("window.failed || ''")
        if failed:
            raise DriverError(f"publisher: {failed}")
        subscriber = await browsers.open(
            "subscriber", f"{base}/sub", "--autoplay-policy=no-user-gesture-required"
        )
        await subscriber.wait_for(
            "window.pcs && window.pcs.length === 3"
            " && window.audioStats().then(s => s.every(x => x.samples > 0 && x.port))",
            "audio at the subscriber page",
        )
        aiortc = Subscriber(workers[0], ROOM, "aiortc")
        await aiortc.update([tracks[0]])
        before = await subscriber.eval("window.audioStats()")
        frames = aiortc.frames["audio"]
        for leg in before[:2]:  # the third, plain, stays clean
            drop_at_random(leg["port"])
        started = time.monotonic()
        # Whether the RED worker sent RED all along, read each second: a
        # starved run once concealed 0.034 through RED, where independent
        # loss leaves about 0.008 (ci186), and did not say why.
        red_on = []
        while (at := time.monotonic() - started) < SECONDS:
            await asyncio.sleep(min(1.0, SECONDS - at))
            red_on.append(_red_state(workers[0], time.monotonic() - started))
        after = await subscriber.eval("window.audioStats()")
        frames = aiortc.frames["audio"] - frames
        elapsed = time.monotonic() - started
        legs = []
        for old, new in zip(before, after, strict=True):
            samples = new["samples"] - old["samples"]
            lost = new["lost"] - old["lost"]
            received = new["packets"] - old["packets"]
            legs.append(
                {
                    "samples": samples,
                    "concealed": (new["concealed"] - old["concealed"]) / max(samples, 1),
                    "lost": lost / max(lost + received, 1),
                    "packets": received,
                }
            )
        totals = workers[0].snapshot()["totals"]
        negotiated = await subscriber.eval(
            "window.pcs.map(pc => pc.currentLocalDescription.sdp.includes(' red/48000/2'))"
        )
        return {
            "negotiated": negotiated,
            "blocks": _redundant_blocks(workers[0], tracks[0]),
            "red": legs[0],
            "plain": legs[1],
            "clean": legs[2],
            "aiortc": {"frames": frames},
            "red_stripped": totals["red_stripped"],
            "red_on": red_on,
            "seconds": round(elapsed, 1),
        }
    except DriverError as exc:
        pages = {p.name: await p.snapshot() for p in browsers.pages}
        return {"error": str(exc), "pages": pages}
    finally:
        if aiortc is not None:
            await aiortc.close()
        await browsers.close()
        await runner.cleanup()
        for worker in workers:
            await worker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=args.work / "server.log", level=logging.INFO)
    import uvloop

    print(json.dumps(uvloop.run(drive(args.work))), flush=True)


if __name__ == "__main__":
    main()
