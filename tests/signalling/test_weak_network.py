"""Simulcast and weak links with real browsers (issue 11's must-shows).

Like test_browser_call.py, each test re-executes this module as a driver in
a fresh network namespace that has only loopback (Firefox: a namespace with
a veth interface too, since Firefox gathers nothing on loopback alone). The
driver runs the app (real media worker, signalling and pages), headless
Chromium pages publishing simulcast (``?simulcast=1``, 1280x720 capture),
and a real coturn relay; a weak page is forced through it with
``iceTransportPolicy: 'relay'`` (a script injected before the page's own,
so the page itself is unchanged).

The cap: coturn's ``--max-bps`` is fixed for a session's life, and moving a
page to another TURN server needs an ICE restart the worker does not offer
(tried: Chromium moved its subscribe connection to a second, uncapped TURN
server's pair, the worker sent nothing there, and the publish connection
failed). So the weak link is a :class:`CappedPath` in front of coturn: a
UDP relay that shapes each TURN session to a rate (a drop-tail queue of
250 ms, as a mobile link's buffer) and can change it live, as a phone's
link gets worse or better.

Figures come from ``getStats()`` (``window.wadudCall.stats()``): inbound
video ``framesDecoded``, ``frameWidth``, ``freezeCount``,
``totalFreezesDuration``; outbound ``packetsSent`` per rid.
The driver's ``--help`` says how to run one scenario by hand.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import (
    DriverError,
    Page,
    click,
    driver_main,
    join,
    participant_id,
    play,
)
from tests.chromium import FULL_RATE_CAMERA
from tests.firefox import VETH_ADDRESS, FirefoxPage, veth_namespace_command
from tests.polling import wait_until
from tests.signalling.call_world import Scenario, World, serving
from tests.signalling.weak_paths import (
    CAPPED_PORT,
    TURN_PORT,
    PathProcess,
    Turn,
    relay_only,
    run_with_turn,
)

ROOT = Path(__file__).resolve().parents[2]


# -- the pytest side -----------------------------------------------------------


async def run_weak(
    scenario: str, database_url: str, work: Path, budget: float, *, veth: bool = False
) -> dict[str, Any]:
    """Run the driver in its own loopback-only namespace (``veth``: with a
    veth interface too, for Firefox); its JSON result."""
    return await run_with_turn(
        "tests.signalling.test_weak_network",
        scenario,
        database_url,
        work,
        budget,
        namespace=veth_namespace_command() if veth else None,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_capped_subscriber_gets_a_lower_layer_smoothly(
    database_url: str, tmp_path: Path
) -> None:
    """A publisher and two subscribers, one through a TURN relay capped at
    500 kbit/s each way: over 15 s after a 30 s warm-up the capped one
    decodes the publisher at >= 10 fps with < 2 s of freezes, at a lower
    resolution than the clean one; once the cap lifts it is back on the top
    layer within 10 s."""
    result = await run_weak("capped", database_url, tmp_path, 240)
    print(json.dumps(result))
    clean, capped = result["clean"], result["capped"]
    assert clean["fps"] >= 10, result
    assert capped["fps"] >= 10, result
    assert capped["freezes_s"] < 2, result
    assert capped["width"] < clean["width"], result
    assert clean["width"] == 1280, result
    assert result["lifted"]["width"] == 1280, result
    assert result["lifted"]["seconds"] <= 10, result


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("scenario", ["policed", "queued"])
async def test_weak_patient_in_a_three_person_visit(
    database_url: str, tmp_path: Path, scenario: str
) -> None:
    """Issue 20: the patient relay-only through a 500 kbit/s cap each way
    that polices (drops above the rate) or queues; every page publishes
    simulcast. After 30 s the capped patient decodes both others at >= 15
    fps with < 1 s of freezes per 15 s, and the clean participant gets a
    higher layer of the doctor than the capped one does.

    Out of the default run for its length and its sensitivity to a busy
    machine (two minutes of three Chromium pages and coturn). On a quiet
    machine, policed: four runs of four with the estimator of 2026-11-24
    (seven of seven before it; about 20 fps, no freeze). Queued: seven of
    seven with it (20 fps, no freeze, the patient's estimate steady at
    440-453k); three of four with its probe fix alone (the miss, 13 fps,
    was a loss capacity the slowed sender understated, fixed since); two of
    four before, when every probe's own queue cut the estimate to 0.85
    times the media's rate and paused a video. On a machine loaded by other
    test runs, misses come back (the trendline reads scheduling jitter as
    overuse). See issue 20's closing notes."""
    result = await run_weak(scenario, database_url, tmp_path, 200)
    print(json.dumps({k: v for k, v in result.items() if k != "trace"}))
    assert "error" not in result, result
    for key in ("capped_from_doctor", "capped_from_clean"):
        assert result[key]["fps"] >= 15, result
        assert result[key]["freezes_s"] < 1, result
    assert result["clean_from_doctor"]["width"] > result["capped_from_doctor"]["width"], result


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_starved_subscriber_gets_audio_only(database_url: str, tmp_path: Path) -> None:
    """Capped at 80 kbit/s each way: no video reaches the page, audio goes
    on, the tile says "Video paused: weak connection"; lifting the cap
    brings video back."""
    result = await run_weak("starved", database_url, tmp_path, 180)
    print(json.dumps(result))
    starved = result["starved"]
    assert result["note"] == "Video paused: weak connection", result
    assert result["note_during"] == "Video paused: weak connection", result
    # No frames; what video packets come are the worker's padding (RTX)
    # looking for room to resume: probes, a few a second, and on this
    # policed-looking link a ramp's padding now and then (about 20 a second
    # for a second or two, then a wait of 4 s or more).
    assert starved["fps"] == 0, result
    assert starved["video_packets"] <= 8 * 10, result
    assert starved["audio_packets"] >= 8 * 40, result  # 50 packets/s, some lost
    assert result["after"]["fps"] >= 10, result
    assert result["note_after"] is None, result


@pytest.mark.timeout(180)
async def test_tile_size_and_visibility_pick_layers(database_url: str, tmp_path: Path) -> None:
    """A 160x90 tile on a fast link gets the low layer (320x180); then the
    publisher's top encoding stops (its packets stop rising); a hidden tile
    gets no video packets while audio goes on."""
    result = await run_weak("views", database_url, tmp_path, 120)
    print(json.dumps(result))
    assert result["small"]["width"] == 320 and result["small"]["fps"] >= 10, result
    assert result["top_rise"] == 0, result
    # The low layer goes on: still active at the encoder and sending. Its
    # rate is the encoder's frame rate, which a busy machine's Chromium
    # lowers, so a few frames a second count, not a camera's thirty.
    assert result["encodings"]["q"] is True and result["low_rise"] > 10, result
    assert result["encodings"]["f"] is False, result
    # Hidden: the worker sent the viewer no video from its pause on, by its
    # own count; the page got no more than what was on its way before it
    # (on a busy machine the page reads its RTP after the pause's frame)
    # and the bandwidth probes the worker sent on that video's RTX stream.
    assert result["hidden_sent"] == 0, result
    assert (
        result["hidden"]["video_packets"] <= max(3, result["in_flight"]) + result["hidden_padded"]
    ), result
    assert result["hidden"]["audio_packets"] > 100, result
    # The viewer's camera is off: its tile on the doctor's page says "Camera
    # off", and the video was paused as "off", never for bandwidth.
    assert result["camera_off"]["note"] == "Camera off", result["camera_off"]
    reasons = {reason for _, _, reason in result["camera_off"]["paused"]}
    assert reasons == {"off"}, result["camera_off"]


@pytest.mark.timeout(240)
async def test_connection_quality_drops_with_loss_and_recovers(
    database_url: str, tmp_path: Path
) -> None:
    """10 % loss each way on one participant's leg: every page (the others'
    and its own) gets connection_quality poor for it and its tile's bars
    say so; once the loss stops, good or excellent again (33 s here, in
    the default run)."""
    result = await run_weak("lossy", database_url, tmp_path, 180)
    print(json.dumps({k: v for k, v in result.items() if k != "worker_lossy"}))
    who = result["who"]
    for name in ("doctor", "clean", "lossy"):
        assert result["before"][name]["frame"] in ("excellent", "good"), result["before"]
        assert result["poor"][name]["frame"] == "poor", result["poor"]
        assert result["poor"][name]["bars"] == "poor", result["poor"]
        assert result["poor"][name]["label"] == "Connection: poor", result["poor"]
        assert result["back"][name]["bars"] in ("excellent", "good"), result["back"]
        # The frames themselves, in order: fine, then poor, then fine again.
        seen = [q for _, p, q in result["logs"][name] if p == who]
        assert "poor" in seen and seen[-1] in ("excellent", "good"), (name, seen)
    # Loss really happened on that leg while it lasted: about 10 %.
    assert 0.07 < result["lost_share"] < 0.13, result
    assert result["poor_s"] <= 15, result
    assert result["back_s"] <= 20, result


@pytest.mark.timeout(240)
async def test_firefox_and_chromium_decode_each_other_with_simulcast(
    database_url: str, tmp_path: Path
) -> None:
    """A headless Firefox ESR page and a Chromium page, both publishing
    their camera with the page's simulcast encodings: each decodes the
    other's video and hears its audio; the worker learnt Firefox's rid
    layers."""
    result = await run_weak("firefox", database_url, tmp_path, 150, veth=True)
    print(json.dumps(result))
    for pair in ("firefox_from_chromium", "chromium_from_firefox"):
        got = result[pair]
        assert got["fps"] >= 5 and got["width"] > 0, (pair, result)
        assert got["audio_packets"] > 50, (pair, result)
    # Both sent simulcast: more than one rid each, and the worker knows them.
    sent = [rid for rid, x in result["firefox_sent"].items() if x["packets"] and x["width"]]
    assert len(sent) >= 2, result["firefox_sent"]
    assert len(result["chromium_sent"]) == 3, result["chromium_sent"]
    assert result["tracks"]["firefox"]["rids"] == ["q", "h", "f"], result["tracks"]
    assert sum(result["tracks"]["firefox"]["learnt"]) >= 2, result["tracks"]


# -- the driver: runs inside the namespace ------------------------------------


# A grid tile of a 960x640 window at twice the pixels: wide enough
# (> 640 x 1.15 device pixels) to want the top layer.
SHARP = "--force-device-scale-factor=2"


async def open_page(world: World, name: str, link: str, *flags: str, script: str = "") -> Page:
    """A Chromium on ``link`` (with ``script`` run before the page's own),
    its camera at Chromium's own rate: these tests measure frame rates."""
    flags = (FULL_RATE_CAMERA, *flags)
    if not script:
        return await world.browsers.open(name, link, *flags)
    page = await world.browsers.open(name, "about:blank", *flags)
    await page.cdp.send("Page.enable")
    await page.cdp.send("Page.addScriptToEvaluateOnNewDocument", source=script)
    await page.cdp.send("Page.navigate", url=link)
    return page


def simulcast(link: str) -> str:
    return link + "&simulcast=1"


async def camera_off(page: Page) -> None:
    """A subscriber only: its camera off (its microphone stays)."""
    await click(page, "#cam")
    await page.wait_for("window.wadudCall.localTracks.get('camera').track === null", "camera off")


async def joined_page(
    world: World, name: str, link: str, *flags: str, script: str = "", camera: bool = True
) -> Page:
    """:func:`open_page`, joined to the call; without ``camera``, a
    subscriber only (:func:`camera_off`)."""
    page = await open_page(world, name, link, *flags, script=script)
    await join(page)
    if not camera:
        await camera_off(page)
    return page


async def from_peer(page: Page, peer: str) -> dict[str, Any]:
    stats = await page.eval(f"window.wadudCall.stats().then(s => s.participants['{peer}'])")
    return dict(stats or {})


async def window(page: Page, peer: str, seconds: float) -> dict[str, Any]:
    """What ``page`` decoded from ``peer`` over ``seconds``."""
    a = await from_peer(page, peer)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    b = await from_peer(page, peer)
    dt = time.monotonic() - t0
    return {
        "fps": round((b["framesDecoded"] - a["framesDecoded"]) / dt, 1),
        "freezes": b["freezeCount"] - a["freezeCount"],
        "freezes_s": round(b["totalFreezesDuration"] - a["totalFreezesDuration"], 2),
        "width": b["frameWidth"],
        "height": b["frameHeight"],
        "audio_packets": b["audioPackets"] - a["audioPackets"],
        "video_packets": b["videoPackets"] - a["videoPackets"],
    }


OUTBOUND = """(async () => {
  const out = {};
  (await window.wadudCall.publishPc.getStats()).forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'video')
      out[s.rid || '-'] = {packets: s.packetsSent, width: s.frameWidth, fps: s.framesPerSecond,
                           active: s.active, limit: s.qualityLimitationReason,
                           bps: s.targetBitrate};
  });
  return out;
})()"""


#: Whether the page's camera goes out in at least N simulcast layers
#: (``SENDING % n``): packets sent on each, by its own stats.
SENDING = f"{OUTBOUND}.then((o) => Object.values(o).filter((x) => x.packets > 0).length >= %d)"
#: The same, counting only layers that sent frames. Firefox sends padding on
#: an encoding its uplink estimate has not allowed yet (width 0, a few
#: packets), and those carry no RID a worker could learn the layer from.
FRAMES_SENDING = (
    f"{OUTBOUND}.then((o) => Object.values(o)"
    ".filter((x) => x.packets > 0 && x.width > 0).length >= %d)"
)


PATHS = """(async () => {
  const out = [];
  for (const pc of [window.wadudCall.publishPc, window.wadudCall.subscribePc]) {
    const stats = await pc.getStats();
    const pairs = [];
    stats.forEach((s) => {
      if (s.type !== 'candidate-pair') return;
      const l = stats.get(s.localCandidateId);
      pairs.push([s.state, s.nominated, l && l.relayProtocol, l && l.port, s.bytesReceived]);
    });
    out.push({state: pc.connectionState, ice: pc.iceConnectionState, pairs});
  }
  return out;
})()"""


async def outbound(page: Page) -> dict[str, Any]:
    """The video a page sends, per rid: packets, width, frame rate, and why
    the encoder holds back (cpu, bandwidth)."""
    return dict(await page.eval(OUTBOUND))


async def width_of(page: Page, peer: str) -> int:
    return int((await from_peer(page, peer)).get("frameWidth", 0))


async def decoding(page: Page, peer: str, within: float = 40) -> None:
    await page.wait_for(
        f"window.wadudCall.stats().then(s => (s.participants['{peer}'] || {{}}).framesDecoded > 0)",
        f"{page.name} decoding {peer}",
        within,
    )


async def three(world: World, capped_script: str) -> tuple[Page, Page, Page, str]:
    """The doctor publishes simulcast; two subscribers (cameras off), the
    second through ``capped_script``'s relays."""
    doctor = await joined_page(
        world, "doctor", simulcast(world.link("dr-amina", "Dr Amina", "doctor", admin=True))
    )
    clean = await joined_page(
        world, "clean", simulcast(world.link("pt-1", "Bilal", "patient")), SHARP, camera=False
    )
    capped = await joined_page(
        world,
        "capped",
        simulcast(world.link("rel-2", "Sana", "family")),
        SHARP,
        script=capped_script,
        camera=False,
    )
    pub = await participant_id(doctor)
    await decoding(clean, pub)
    await decoding(capped, pub)
    world.mark("decoding")
    return doctor, clean, capped, pub


async def capped_call(
    world: World, rate: float | None
) -> tuple[Turn, PathProcess, Page, Page, Page, str]:
    """coturn, a path to it capped at ``rate`` bytes/s each way, and the
    three pages (the capped one forced through that path)."""
    work = world.browsers.work
    turn = Turn(work, TURN_PORT, 50000)
    await turn.start()
    path = PathProcess(("127.0.0.1", TURN_PORT), rate)
    await path.start(CAPPED_PORT)
    try:
        doctor, clean, capped, pub = await three(
            world, relay_only(f"turn:127.0.0.1:{CAPPED_PORT}?transport=udp")
        )
    except BaseException:
        # Else the driver's exit waits for the path's process for good.
        path.close()
        await turn.stop()
        raise
    return turn, path, doctor, clean, capped, pub


async def scenario_capped(world: World) -> dict[str, Any]:
    turn, path, doctor, clean, capped, pub = await capped_call(world, 500_000 / 8)
    try:
        trace: list[Any] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            await asyncio.sleep(3)
            trace.append([round(time.monotonic() - t0), await width_of(clean, pub),
                          await width_of(capped, pub), worker_view(world)])  # fmt: skip
        world.mark("warm")
        clean_w, capped_w = await asyncio.gather(window(clean, pub, 15), window(capped, pub, 15))
        world.mark("measured")
        sent = await outbound(doctor)
        path.set_rate(None)
        lifted_at = time.monotonic()
        world.mark("cap lifted")
        lifted: dict[str, Any] = {"width": 0, "seconds": None}
        while time.monotonic() - lifted_at < 30:
            w = await width_of(capped, pub)
            lifted["width"] = w
            if w >= 1280:
                lifted["seconds"] = round(time.monotonic() - lifted_at, 1)
                break
            await asyncio.sleep(0.25)
        lifted["after"] = await window(capped, pub, 3)
        lifted["worker"] = worker_view(world)
        return {
            "clean": clean_w,
            "capped": capped_w,
            "lifted": lifted,
            "trace": trace,
            "sent_by_rid": sent,
            "path": path.stats(),
            "timings": world.timings,
        }
    finally:
        path.close()
        await turn.stop()


async def weak_visit(world: World, *, police: bool) -> dict[str, Any]:
    """Three people in 1280x800 windows, each publishing simulcast; the
    patient relay-only through a TURN relay that caps 500 kbit/s each way.
    ``police``: coturn's own ``--max-bps`` drops what exceeds the rate, as a
    carrier's policer does; else a drop-tail queue of 250 ms shapes it (a
    :class:`CappedPath` in front of an uncapped coturn). After 30 s, what
    each page decodes of each other over 15 s."""
    work = world.browsers.work
    rate = 500_000 // 8
    turn = Turn(work, TURN_PORT, 50000, max_bps=rate if police else None)
    await turn.start()
    path: PathProcess | None = None
    port = TURN_PORT
    if not police:
        path = PathProcess(("127.0.0.1", TURN_PORT), rate)
        await path.start(CAPPED_PORT)
        port = CAPPED_PORT
    big = "--window-size=1280,800"
    try:
        doctor = await joined_page(
            world,
            "doctor",
            simulcast(world.link("dr-amina", "Dr Amina", "doctor", admin=True)),
            big,
        )
        clean = await joined_page(
            world, "clean", simulcast(world.link("fam-1", "Bilal", "family")), big
        )
        capped = await joined_page(
            world,
            "capped",
            simulcast(world.link("pt-2", "Sana", "patient")),
            big,
            script=relay_only(f"turn:127.0.0.1:{port}?transport=udp"),
        )
        pages = {"doctor": doctor, "clean": clean, "capped": capped}
        pids = {name: await participant_id(page) for name, page in pages.items()}
        for name, page in pages.items():
            for other, pid in pids.items():
                if other != name:
                    await decoding(page, pid)
        world.mark("decoding")
        trace: list[Any] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            await asyncio.sleep(5)
            trace.append([round(time.monotonic() - t0), worker_view(world)])
        world.mark("warm")
        measured = await asyncio.gather(
            window(capped, pids["doctor"], 15),
            window(capped, pids["clean"], 15),
            window(clean, pids["doctor"], 15),
            window(clean, pids["capped"], 15),
        )
        world.mark("measured")
        return {
            "capped_from_doctor": measured[0],
            "capped_from_clean": measured[1],
            "clean_from_doctor": measured[2],
            "clean_from_capped": measured[3],
            "capped_sends": await outbound(capped),
            "worker": worker_view(world),
            "trace": trace,
            "path": path.stats() if path is not None else None,
            "timings": world.timings,
        }
    finally:
        if path is not None:
            path.close()
        await turn.stop()


async def scenario_policed(world: World) -> dict[str, Any]:
    return await weak_visit(world, police=True)


async def scenario_queued(world: World) -> dict[str, Any]:
    return await weak_visit(world, police=False)


NOTE = """(() => {
  const t = document.querySelector("#grid .tile[data-key='%s']");
  const n = t && t.querySelector('.note');
  return n && !n.hidden ? n.textContent : null;
})()"""


async def scenario_starved(world: World) -> dict[str, Any]:
    """80 kbit/s: audio only, said on the tile; lifting the cap brings
    video back."""
    turn, path, _doctor, clean, capped, pub = await capped_call(world, 80_000 / 8)
    try:
        # Only the doctor speaks: one voice (~40-50 kbit/s) fits in 80.
        await click(clean, "#mic")
        note = await capped.wait_for(NOTE % pub, "the weak-connection note", within=40)
        world.mark("paused")
        await asyncio.sleep(3)
        starved = await window(capped, pub, 8)
        note_during = await capped.eval(NOTE % pub)
        worker = worker_view(world)
        shots = await screenshots(world, {"weak": capped, "clean": clean})
        path.set_rate(None)
        lifted_at = time.monotonic()
        await capped.wait_for(
            f"window.wadudCall.stats().then(s => s.participants['{pub}'].frameWidth > 0)"
            f" && {NOTE % pub} === null",
            "video back",
            within=30,
        )
        back = round(time.monotonic() - lifted_at, 1)
        world.mark("video back")
        return {
            "note": note,
            "note_during": note_during,
            "starved": starved,
            "worker": worker,
            "back_seconds": back,
            "after": await window(capped, pub, 3),
            "note_after": await capped.eval(NOTE % pub),
            "shots": shots,
            "path": path.stats(),
            "timings": world.timings,
        }
    finally:
        path.close()
        await turn.stop()


# What a page shows of one participant's connection: the last
# connection_quality frame for them and the bars on their tile; and every
# such frame the page got since :data:`LISTEN` (time, participant, quality).
QUALITY = """(() => {
  const t = document.querySelector("#grid .tile[data-key='%s']");
  return {frame: window.wadudCall.quality.get('%s') || null,
          bars: t ? t.querySelector('.bars').dataset.quality : null,
          label: t ? t.querySelector('.bars').getAttribute('aria-label') : null,
          log: window.qualityLog || []};
})()"""
LISTEN = """(() => {
  window.qualityLog = [];
  window.wadudCall.addEventListener('quality', (e) => window.qualityLog.push(
    [Date.now(), e.detail.participant_id, e.detail.quality]));
  return true;
})()"""


async def quality_on(pages: dict[str, Page], pid: str) -> dict[str, Any]:
    return {name: await page.eval(QUALITY % (pid, pid)) for name, page in pages.items()}


async def until_quality(
    pages: dict[str, Page], pid: str, levels: set[str], within: float
) -> tuple[float, dict[str, Any]]:
    """Wait until every page's frame and bars for ``pid`` are one of
    ``levels``; how long it took and what the pages showed."""
    t0 = time.monotonic()
    while True:
        seen = await quality_on(pages, pid)
        if all(v["frame"] in levels and v["bars"] in levels for v in seen.values()):
            return round(time.monotonic() - t0, 1), seen
        if time.monotonic() - t0 > within:
            raise DriverError(f"{pid} not {sorted(levels)} on every page in {within:.0f} s: {seen}")
        await asyncio.sleep(0.25)


async def scenario_lossy(world: World) -> dict[str, Any]:
    """10 % loss each way on one participant's leg (the path to its TURN
    relay): the others' pages and its own get connection_quality poor and
    their bars show it; with the loss gone, good or excellent again."""
    turn, path, doctor, clean, lossy, pub = await capped_call(world, None)
    try:
        who = await participant_id(lossy)
        pages = {"doctor": doctor, "clean": clean, "lossy": lossy}
        for page in pages.values():
            await page.eval(LISTEN)
        fine = {"excellent", "good"}
        out: dict[str, Any] = {}
        out["before_s"], out["before"] = await until_quality(pages, who, fine, within=20)
        world.mark("quality fine")
        await asyncio.sleep(2)
        out["decoding_before"] = await window(lossy, pub, 2)
        counted = path.stats()
        path.set_loss(0.10)
        lossy_at = time.monotonic()
        world.mark("loss on")
        out["poor_s"], out["poor"] = await until_quality(pages, who, {"poor"}, within=25)
        world.mark("poor")
        out["decoding_lossy"] = await window(lossy, pub, 3)
        out["worker_lossy"] = worker_view(world)
        out["lossy_for"] = round(time.monotonic() - lossy_at, 1)
        now = path.stats()
        lost = sum(v[2] - counted.get(k, [0, 0, 0])[2] for k, v in now.items())
        sent = sum(v[0] - counted.get(k, [0, 0, 0])[0] for k, v in now.items())
        out["lost_share"] = round(lost / max(1, lost + sent), 3)
        path.set_loss(0.0)
        world.mark("loss off")
        out["back_s"], out["back"] = await until_quality(pages, who, fine, within=30)
        world.mark("fine again")
        # Only the lossy one's quality went down: the others' stayed.
        out["others"] = {
            name: {p: (await quality_on({"x": page}, p))["x"]["frame"] for p in (pub,)}
            for name, page in pages.items()
        }
        out["logs"] = {name: v["log"] for name, v in (await quality_on(pages, who)).items()}
        out["who"], out["pub"] = who, pub
        out["path"] = path.stats()
        out["timings"] = world.timings
        return out
    finally:
        path.close()
        await turn.stop()


# Every track_paused a page gets from now on: [track_id, paused, reason].
PAUSES = """(() => {
  window.pausedLog = [];
  window.wadudCall.addEventListener('trackpaused', (e) => window.pausedLog.push(
    [e.detail.track_id, e.detail.paused, e.detail.reason]));
  return true;
})()"""


DESKTOP, PHONE = (1280, 800), (390, 844)


def save_png(folder: Path, name: str, data: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(base64.b64decode(data))
    return str(folder / name)


async def screenshots(world: World, pages: dict[str, Page]) -> list[str]:
    """Each page at desktop (1280x800) and phone (390x844, upright) size, as
    PNGs named call-<page>-<size>.png in ``WADUD_SCREENSHOTS`` (else under
    the work folder); the pages go back to their own size after."""
    folder = Path(os.environ.get("WADUD_SCREENSHOTS") or world.browsers.work / "shots")
    saved = []
    for name, page in pages.items():
        for size, (w, h) in (("desktop", DESKTOP), ("phone", PHONE)):
            await page.cdp.send("Emulation.setDeviceMetricsOverride", width=w, height=h,
                                deviceScaleFactor=1, mobile=size == "phone")  # fmt: skip
            await asyncio.sleep(1.0)  # layout and a fresh frame
            shot = await page.cdp.send("Page.captureScreenshot", format="png")
            saved.append(save_png(folder, f"call-{name}-{size}.png", shot["data"]))
        await page.cdp.send("Emulation.clearDeviceMetricsOverride")
    return saved


SHRINK = """(() => {
  const t = document.querySelector("#grid .tile[data-key='%s']");
  t.style.cssText = '%s';
  window.wadudCall._emit('views', {});  // the page re-reports what it shows
  return true;
})()"""


async def scenario_views(world: World) -> dict[str, Any]:
    """What the page shows picks the layer: a 160x90 tile gets the low
    layer on a fast link, a hidden tile no video, and the top layer nobody
    wants stops at the publisher (dynacast)."""
    doctor = await joined_page(
        world, "doctor", simulcast(world.link("dr-amina", "Dr Amina", "doctor", admin=True))
    )
    await doctor.eval(PAUSES)
    viewer = await joined_page(
        world, "viewer", simulcast(world.link("pt-1", "Bilal", "patient")), camera=False
    )
    pub = await participant_id(doctor)
    await decoding(viewer, pub)
    # The viewer's camera is off: the doctor's page says so, not "weak connection".
    vid = await participant_id(viewer)
    await doctor.wait_for(f"{NOTE % vid} === 'Camera off'", "'Camera off' on the viewer's tile")
    out: dict[str, Any] = {"start_width": await width_of(viewer, pub)}
    await viewer.eval(SHRINK % (pub, "position:fixed;left:0;top:0;width:160px;height:90px"))
    await viewer.wait_for(
        f"window.wadudCall.stats().then(s => s.participants['{pub}'].frameWidth === 320)",
        "the low layer",
        within=20,
    )
    world.mark("low layer")
    out["small"] = await window(viewer, pub, 3)
    out["worker_small"] = worker_view(world)
    # Dynacast: the top layer nobody wants stops once unwanted for
    # sfu.layers.choice.DYNACAST_DELAY; waited for as the publisher's own encoder
    # says it (active false), then its packets watched for 3 s. The worker
    # stops only a layer it has learnt (one never seen may be on its way),
    # and Chromium starts its top layer when its own uplink estimate
    # allows, later on a busy machine: so first the doctor's stats show
    # three layers going out, and the worker learns the top one.
    await doctor.wait_for(SENDING % 3, "the doctor sending three layers", within=40)
    await learns(world, pub, 3)
    world.mark("three layers learnt")
    # Stopped means the encoder says so (active false) and its packets have
    # ceased: what it encoded before goes out after through Chromium's pacer
    # (five packets in one busy run), so the count is watched from when two
    # reads half a second apart agree. Then it must stay still for 3 s.
    stopped = f"""{OUTBOUND}.then(async (a) => {{
      await new Promise((r) => setTimeout(r, 500));
      const b = await {OUTBOUND};
      return a.f && b.f && b.f.active === false && b.f.packets === a.f.packets;
    }})"""
    try:
        await doctor.wait_for(stopped, "the top layer stopped at the publisher", within=30)
    except DriverError as exc:
        raise DriverError(f"{exc}; worker: {video_layers(world, pub)}") from exc
    world.mark("top layer stopped")
    a = await outbound(doctor)
    await asyncio.sleep(3)
    b = await outbound(doctor)
    out["top_rise"] = b["f"]["packets"] - a["f"]["packets"]
    out["low_rise"] = b["q"]["packets"] - a["q"]["packets"]
    out["encodings"] = {rid: x.get("active") for rid, x in b.items()}
    # Hidden: counted from when the worker paused the video for it (the
    # page's track_paused "hidden"), not from when the page hid the tile:
    # the page reports views after a 300 ms debounce, and a busy machine
    # takes its time to pass them on.
    await viewer.eval(PAUSES)
    await viewer.eval(SHRINK % (pub, "display:none"))
    await viewer.wait_for(
        "window.pausedLog.some((p) => p[1] && p[2] === 'hidden')", "the hidden pause", within=20
    )
    world.mark("hidden")
    sent, resent, padded = video_sent(world, pub, vid)
    got = (await from_peer(viewer, pub))["videoPackets"]
    out["hidden"] = await window(viewer, pub, 3)
    after = video_sent(world, pub, vid)
    out["hidden_sent"] = after[0] - sent
    # Bandwidth probes go on as the worker's estimator wants them, on the
    # paused video's RTX stream, and a page may count them as that video's
    # packets (ci55: 5 in the window, none of them media).
    out["hidden_padded"] = after[2] - padded
    out["in_flight"] = sent + resent + padded - got
    out["worker_hidden"] = worker_view(world)
    out["camera_off"] = {"note": await doctor.eval(NOTE % vid), "paused": await doctor.eval(
        "window.pausedLog")}  # fmt: skip
    out["timings"] = world.timings
    return out


async def scenario_firefox(world: World) -> dict[str, Any]:
    """Chromium (the doctor) and Firefox (the patient), both on the page's
    default: simulcast."""
    doctor = await joined_page(
        world, "doctor", world.link("dr-amina", "Dr Amina", "doctor", admin=True)
    )
    firefox = await FirefoxPage.open(
        world.browsers.work, "firefox", world.link("pt-1", "Bilal", "patient"), 9222
    )
    try:
        ff: Any = firefox  # eval and wait_for as a Chromium Page has them
        ffid = ""
        await join(ff)
        world.mark("firefox joined")
        pub, ffid = await participant_id(doctor), await participant_id(ff)
        await decoding(ff, pub, within=40)
        world.mark("firefox decoding")
        await decoding(doctor, ffid, within=40)
        world.mark("chromium decoding")
        # Firefox starts an upper encoding once its own uplink estimate
        # allows (a floor in the profile, tests/firefox.py, keeps a starved
        # machine's from holding it back): its stats say when a second
        # layer's frames go out, and the worker learns that layer from them.
        await ff.wait_for(FRAMES_SENDING % 2, "Firefox sending two layers", within=40)
        world.mark("firefox sends two layers")
        await learns(world, ffid, 2)
        a, b = await asyncio.gather(window(ff, pub, 4), window(doctor, ffid, 4))
        tracks = video_tracks(world, ffid)
        return {
            "firefox_from_chromium": a,
            "chromium_from_firefox": b,
            "firefox_sent": await ff.eval(OUTBOUND),
            "chromium_sent": await outbound(doctor),
            "tracks": tracks,
            "user_agent": await ff.eval("navigator.userAgent"),
            "timings": world.timings,
        }
    except DriverError as exc:
        # What Firefox sent per rid (its width, rate and limits) and which
        # layers the worker asked it for: a layer held back by Firefox's
        # estimate or its CPU reads differently from one the worker paused.
        sent = await ff.eval(OUTBOUND)
        layers = video_layers(world, ffid) if ffid else []
        snapshot = json.dumps(await firefox.snapshot())[:3000]
        raise DriverError(
            f"{exc}; firefox sent {json.dumps(sent)}; the worker's layers of it "
            f"{json.dumps(layers)}; firefox: {snapshot}"
        ) from exc
    finally:
        await firefox.close()


def worker_videos(world: World) -> Iterator[tuple[Any, Any]]:
    """The in-process media worker's video tracks, each with its room
    (:class:`sfu.rooms.records.MediaRoom`, :class:`sfu.rooms.records.Track`)."""
    import sfu.node.http

    worker = world.app[sfu.node.http.WORKER]
    for room in worker.tables.rooms.values():
        for track in room.tracks.values():
            if track.info.kind == "video":
                yield room, track


def video_tracks(world: World, firefox: str) -> dict[str, Any]:
    """The worker's video tracks, by browser: each one's rids, which of them
    it learnt an SSRC for, and their measured bitrates."""
    tracks: dict[str, Any] = {"firefox": {"rids": [], "learnt": [], "bitrates": []}}
    for _room, track in worker_videos(world):
        who = "firefox" if track.info.participant == firefox else "chromium"
        tracks[who] = {
            "rids": list(track.info.rids),
            "learnt": [bool(x.ssrc) for x in track.layers],
            "bitrates": [int(x.bitrate) for x in track.layers],
        }
    return tracks


def video_layers(world: World, participant: str) -> list[dict[str, Any]]:
    """The worker's simulcast layers of ``participant``'s video: each one's
    rid, whether it learnt its SSRC, whether it asks the publisher for it,
    and how long ago a subscriber last wanted it."""
    now = asyncio.get_running_loop().time()  # the worker's clock: it runs in this loop
    for _room, track in worker_videos(world):
        if track.info.participant == participant:
            return [
                {
                    "rid": x.rid,
                    "learnt": bool(x.ssrc),
                    "active": x.active,
                    "unwanted_s": round(now - x.wanted_at, 1),
                }
                for x in track.layers
            ]
    return []


async def learns(world: World, participant: str, layers: int, within: float = 10) -> None:
    """Until the worker has learnt ``layers`` of ``participant``'s simulcast
    layers from their packets, or ``within`` seconds (then the test's own
    checks say what it learnt)."""
    with contextlib.suppress(TimeoutError):
        await wait_until(
            lambda: sum(x["learnt"] for x in video_layers(world, participant)) >= layers,
            within=within,
        )


def video_sent(world: World, publisher: str, subscriber: str) -> tuple[int, int, int]:
    """The packets of ``publisher``'s simulcast video the worker has sent
    ``subscriber``, those it resent, and the padding-only probes it sent on
    that video's RTX stream, by its own counts
    (:class:`sfu.forward.table.Subscription`)."""
    sent = resent = padded = 0
    for room, track in worker_videos(world):
        if track.info.participant != publisher:
            continue
        group = room.forwarder.simulcast.group(track.ssrc) if track.layers else None
        for sub in group.subscriptions if group is not None else []:
            if getattr(sub.key, "participant", None) == subscriber:
                sent += sub.packets_sent
                resent += sub.retransmitted
                padded += sub.padded
    return sent, resent, padded


def worker_view(world: World) -> dict[str, Any]:
    """What the media worker thinks of each subscriber: its estimate, what
    it would want, paused tracks, and the layer each video is on."""
    import sfu.node.http

    worker = world.app[sfu.node.http.WORKER]
    out: dict[str, Any] = {}
    for peer, state in list(worker.layers.subscribers.by_peer.items()):
        est = state.estimator
        out[str(peer.participant)[-6:]] = {
            "estimate": int(est.estimate) if est else None,
            "loss": round(est.loss, 3) if est else None,
            "remb": state.remb,
            "wanted": state.wanted,
            "paused": dict(state.paused),
            "policed": est.policed if est else None,
            "acked": int(est.acked_bitrate) if est else None,
            "follows": est.loss_follows_rate if est else None,
            "audio": [int(a.bitrate) for a in state.audio.values()],
            "padding": int(state.padding),
            "capacity": int(est.loss_capacity or 0) if est else None,
            "ramps_failed": est.ramps_failed if est else None,
        }
    for room in worker.tables.rooms.values():
        for track in room.tracks.values():
            rates = [int(layer.bitrate) for layer in track.layers or []]
            if track.measured is not None:
                rates.append(int(track.measured.bitrate))
            key = f"{track.info.kind}:{str(track.info.participant)[-6:]}"
            out.setdefault("rates", {})[key] = rates
        for (who, tid), v in room.views.items():
            out.setdefault("views", {})[f"{who[-6:]}:{tid[-4:]}"] = [v.width, v.height, v.visible]
    return out


SCENARIOS: dict[str, Scenario] = {
    "capped": scenario_capped,
    "starved": scenario_starved,
    "views": scenario_views,
    "lossy": scenario_lossy,
    "firefox": scenario_firefox,
    "policed": scenario_policed,
    "queued": scenario_queued,
}


async def drive(scenario: str, database_url: str, work: Path, budget: float) -> dict[str, Any]:
    # Firefox pairs none of its candidates with a worker on 127.0.0.1 (its
    # checks never nominated one): the worker takes the veth address.
    overrides = {"media_host": VETH_ADDRESS} if scenario == "firefox" else {}
    async with serving(database_url, work, **overrides) as world:
        also = lambda: {"worker": worker_view(world)}  # noqa: E731
        return await play(SCENARIOS[scenario](world), world.browsers, world.timings, budget, also)


if __name__ == "__main__":
    driver_main(__doc__, SCENARIOS, drive, 120)
