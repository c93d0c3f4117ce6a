"""Calls between headless Chromium pages through our own SFU, with nothing
else on the network.

Each test re-executes this module as a driver inside a fresh network
namespace that has only loopback (``unshare --net``, then ``ip link set lo
up``): the driver runs the app (real media worker, signalling and pages; the
test's PostgreSQL is reached over its Unix socket, which no namespace hides),
starts one Chromium per participant, and drives the call page through the
DevTools protocol, the way a user would: wait for the device check, press
"Join now", admit from the waiting room. It reads what each page receives
from ``window.wadudCall.stats()`` (``getStats()``: inbound video
``framesDecoded``, inbound audio ``packetsReceived`` and
``totalSamplesReceived``) twice, a moment apart, and prints one JSON line;
the test asserts on it. Media "flows" when every number rose between the two
readings. The driver's ``--help`` says how to run one scenario by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import struct
import wave
from pathlib import Path
from typing import Any

import pytest

from tests.browser import (
    Page,
    assert_flowing,
    captions,
    click,
    flow,
    frame_of,
    join,
    participant_id,
    receiving,
    run_scenario,
    until_flowing,
)
from tests.signalling.call_world import HTTP_PORT, Scenario, World, embedder, serve_scenarios

DRIVER = "tests.signalling.test_browser_call"
PROXY_PORT = 8081


# -- the pytest side -----------------------------------------------------------


@pytest.mark.timeout(120)
async def test_device_check_top_level_and_in_a_frame(database_url: str, tmp_path: Path) -> None:
    """Before joining: camera preview, device pickers and a moving
    microphone meter, on the page itself and framed by another site with
    ``allow``; a frame without ``allow`` gets no devices and says so."""
    result = await run_scenario(DRIVER, "devices", database_url, tmp_path, 60)
    print(json.dumps(result))
    for where in ("top", "allowed"):
        check = result[where]
        assert check["screen"] == "prejoin", check
        assert check["preview"], check
        assert check["cameras"] >= 1 and check["mics"] >= 1, check
        assert check["heard"], check
        assert check["error"] is None, check
    refused = result["refused"]
    assert not refused["preview"], refused
    assert "unavailable" in refused["error"], refused


@pytest.mark.timeout(120)
async def test_links_that_cannot_join_say_why(database_url: str, tmp_path: Path) -> None:
    """An expired link says so as the page opens, before any device check
    or join (issue 25: it says which it is and what to do); a link opened
    under another room's URL is refused on joining; each end screen says
    why in plain words, with no "Join again"."""
    result = await run_scenario(DRIVER, "refusals", database_url, tmp_path, 60)
    print(json.dumps(result))
    expired = result["expired"]
    assert expired["screen"] == "ended", expired
    assert expired["title"] == "This link has expired", expired
    assert "ask the clinic for a new appointment" in expired["reason"], expired
    assert not expired["rejoin"], expired
    other = result["other_room"]
    assert other["code"] == "forbidden", other
    assert other["title"] == "This link is for another call", other
    assert not other["rejoin"], other


@pytest.mark.timeout(240)
async def test_three_pages_hold_a_call_through_the_sfu(database_url: str, tmp_path: Path) -> None:
    """The must-show: two pages decode each other's video and receive each
    other's audio; a third joins and sees and hears both, and they it."""
    result = await run_scenario(DRIVER, "three", database_url, tmp_path, 150)
    names = ["doctor", "patient", "relative"]
    assert {(p["to"], p["frm"]) for p in result["two"]} == {
        ("doctor", "patient"),
        ("patient", "doctor"),
    }
    # Once the third is in, all six directions (the first two again too).
    assert {(p["to"], p["frm"]) for p in result["three"]} == {
        (a, b) for a in names for b in names if a != b
    }
    assert_flowing(result["two"] + result["three"])
    # The page shows it too: three tiles each, named.
    for name in names:
        captions = result["captions"][name]
        assert len(captions) == 3, captions
    # Sana talks (her fake microphone plays a voice-like sound): every page
    # outlines her.
    assert result["speaking"] == dict.fromkeys(names, result["ids"]["relative"])
    assert "Dr Amina (you)" in result["captions"]["doctor"]
    assert "Bilal" in result["captions"]["doctor"]
    print(json.dumps(result))


@pytest.mark.timeout(200)
async def test_call_page_controls(database_url: str, tmp_path: Path) -> None:
    """Each button does what it says, as the other participant sees it:
    mute, camera off and on, screen share, the doctor's mute and remove,
    a dropped socket resumed without renegotiating, end."""
    result = await run_scenario(DRIVER, "controls", database_url, tmp_path, 150)
    print(json.dumps(result))
    assert result["start"]["framesDecoded"] > 0 and result["start"]["audioPackets"] > 0
    # Muted audio is not forwarded (a packet or two may be in flight).
    assert result["mic_muted"]["audioPackets"] <= 3, result["mic_muted"]
    assert result["mic_muted"]["framesDecoded"] > 0, result["mic_muted"]
    assert result["mic_unmuted"]["audioPackets"] > 10, result["mic_unmuted"]
    assert result["camera_light"] is True
    assert result["camera_off"]["framesDecoded"] <= 2, result["camera_off"]
    assert result["camera_on"]["framesDecoded"] > 0, result["camera_on"]
    assert result["screen_caption"] == "Bilal (screen)"
    assert result["screen_frames"] > 0
    assert result["admin_muted"] == "Unmute"
    resume = result["resume"]
    assert resume["same_participant"] and resume["same_pc"] == "kept", resume
    assert resume["doctor_tiles"] == 2, resume
    assert resume["flow"]["framesDecoded"] > 0, resume
    assert result["removed_title"] == "You were removed from the call"


@pytest.mark.timeout(200)
async def test_leave_and_join_again(database_url: str, tmp_path: Path) -> None:
    """After leaving, "Join again" makes a new participant whom the one who
    stayed sees and hears (their subscribe connection had every section
    stopped in between)."""
    result = await run_scenario(DRIVER, "rejoin", database_url, tmp_path, 120)
    print(json.dumps(result))
    assert result["new_participant"]
    assert "Bilal" in result["doctor_captions"]
    assert_flowing(result["pairs"])


@pytest.mark.timeout(200)
async def test_demo_links_hold_a_call(database_url: str, tmp_path: Path) -> None:
    """A newcomer's path: /demo makes a room; the patient's link waits until
    the doctor, on the other link, admits them; then they hold a call."""
    result = await run_scenario(DRIVER, "demo", database_url, tmp_path, 120)
    print(json.dumps(result))
    assert result["patient_screen_before_doctor"] == "waiting"
    assert result["doctor_saw_waiting"] == ["Patient"]
    assert_flowing(result["pairs"])
    assert len(result["pairs"]) == 2


@pytest.mark.timeout(200)
async def test_call_page_in_another_sites_iframe(database_url: str, tmp_path: Path) -> None:
    """A clinic's page on another origin frames the call page with
    ``allow="camera; microphone; display-capture"``: the framed page gets
    the devices, joins, and media flows both ways."""
    result = await run_scenario(DRIVER, "iframe", database_url, tmp_path, 120)
    print(json.dumps(result))
    assert result["embedder_origin"] != result["call_origin"]
    assert "joined" in result["embedder_saw"]
    assert_flowing(result["pairs"])
    assert len(result["pairs"]) == 2


# -- the driver: runs inside the namespace ------------------------------------


def talking(path: Path) -> Path:
    """Four seconds (Chromium loops it) of something like a voice for a fake
    microphone: a gliding tone whose loudness rises and falls three times a
    second, well above the worker's speaking threshold."""
    rate = 48_000
    samples = bytearray()
    for i in range(rate * 4):
        t = i / rate
        envelope = 0.5 + 0.5 * math.sin(2 * math.pi * 3 * t)
        pitch = 220 + 80 * math.sin(2 * math.pi * 0.5 * t)
        samples += struct.pack("<h", int(12_000 * envelope * math.sin(2 * math.pi * pitch * t)))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(samples))
    return path


async def scenario_three(world: World) -> dict[str, Any]:
    doctor = await world.browsers.open(
        "doctor", world.link("dr-amina", "Dr Amina", "doctor", admin=True)
    )
    await join(doctor)
    world.mark("doctor joined")
    patient = await world.browsers.open("patient", world.link("pt-991", "Bilal", "patient"))
    await join(patient)
    world.mark("patient joined")
    two = await receiving(world, [doctor, patient])
    # The others' fake microphones only beep now and then; Sana talks.
    relative = await world.browsers.open(
        "relative",
        world.link("rel-17", "Sana", "family"),
        f"--use-file-for-fake-audio-capture={talking(world.browsers.work / 'talk.wav')}",
    )
    await join(relative)
    world.mark("relative joined")
    three = await receiving(world, [doctor, patient, relative])
    # The worker finds her the active speaker, and every page outlines her
    # tile, and only hers.
    outlined = "(() => { const s = document.querySelectorAll('#grid .tile.speaking');"
    outlined += " return s.length === 1 && s[0].dataset.key; })()"
    speaking = {}
    for page in (doctor, patient, relative):
        speaking[page.name] = await page.wait_for(outlined, "an outlined speaker")
    return {
        "speaking": speaking,
        "ids": {p.name: await participant_id(p) for p in (doctor, patient, relative)},
        "two": two,
        "three": three,
        "captions": {p.name: await captions(p) for p in (doctor, patient, relative)},
        "timings": world.timings,
    }


async def scenario_demo(world: World) -> dict[str, Any]:
    demo = await world.browsers.open("demo", f"{world.base}/demo")
    await demo.wait_for("typeof document.getElementById('create').onclick === 'function'", "demo")
    await demo.eval("document.getElementById('create').click(), true")
    links = await demo.wait_for(
        "!document.getElementById('links').hidden && {"
        "doctor: document.getElementById('doctor').href,"
        " patient: document.getElementById('patient').href}",
        "the demo links",
    )
    world.mark("demo links")
    # The patient comes first: no doctor yet, so the waiting room.
    patient = await world.browsers.open("patient", links["patient"])
    await join(patient, expect="waiting")
    screen = await patient.eval("document.body.dataset.screen")
    doctor = await world.browsers.open("doctor", links["doctor"])
    await join(doctor)
    world.mark("doctor joined")
    waiting = await doctor.wait_for(
        "[...document.querySelectorAll('#waiting-list li span')].map(s => s.textContent)"
        ".filter(Boolean)",
        "the patient in the doctor's waiting list",
    )
    await doctor.eval(
        "[...document.querySelectorAll('#waiting-list button')]"
        ".find(b => b.textContent === 'Admit').click(), true"
    )
    await patient.wait_for("document.body.dataset.state === 'joined'", "admission")
    world.mark("patient admitted")
    pairs = await receiving(world, [doctor, patient])
    return {
        "patient_screen_before_doctor": screen,
        "doctor_saw_waiting": waiting,
        "pairs": pairs,
        "timings": world.timings,
    }


EMBEDDER = """<!doctype html><html><head><title>Clinic</title></head><body>
<h1>Example Clinic: your consultation</h1>
<iframe id="call" src="{src}" allow="camera; microphone; display-capture"
        style="width: 900px; height: 560px; border: 0"></iframe>
<script>
  window.seen = [];
  window.addEventListener('message', (e) => {{
    if (e.data && e.data.source === 'wadud-call') window.seen.push(e.data.state);
  }});
</script></body></html>"""


async def scenario_iframe(world: World) -> dict[str, Any]:
    # Another site: localhost against the call server's 127.0.0.1.
    call_url = world.link("pt-991", "Bilal", "patient")

    async with embedder(EMBEDDER.format(src=call_url)) as clinic_url:
        doctor = await world.browsers.open(
            "doctor", world.link("dr-amina", "Dr Amina", "doctor", admin=True)
        )
        await join(doctor)
        clinic = await world.browsers.open("clinic", clinic_url)
        framed = await frame_of(clinic, world.base)
        await join(framed)
        world.mark("framed patient joined")
        pairs = await receiving(world, [doctor, framed])
        seen = await clinic.eval("window.seen")
        origin = await clinic.eval("location.origin")
    return {
        "pairs": pairs,
        "embedder_saw": seen,
        "embedder_origin": origin,
        "call_origin": world.base,
        "timings": world.timings,
    }


class CuttableProxy:
    """A TCP proxy in front of the server whose connections the test can cut,
    as a network change on a phone would: the page's WebSocket breaks without
    a closing handshake (1006), while its UDP media goes on directly."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    def cut(self) -> int:
        cut = len(self.writers)
        for w in self.writers:
            w.transport.abort()
        return cut

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def scenario_controls(world: World) -> dict[str, Any]:
    """The buttons of the call page, each checked on the other side."""
    doctor = await world.browsers.open(
        "doctor", world.link("dr-amina", "Dr Amina", "doctor", admin=True)
    )
    await join(doctor)
    # The patient reaches the server through a proxy, to lose the socket later.
    proxy = CuttableProxy(HTTP_PORT)
    await proxy.start(PROXY_PORT)
    try:
        return await _controls(world, doctor, proxy)
    finally:
        await proxy.close()


async def _controls(world: World, doctor: Page, proxy: CuttableProxy) -> dict[str, Any]:
    link = world.link("pt-991", "Bilal", "patient").replace(f":{HTTP_PORT}/", f":{PROXY_PORT}/")
    patient = await world.browsers.open("patient", link)
    await join(patient)
    await receiving(world, [doctor, patient])
    pid = await participant_id(patient)
    tile = f"#grid .tile[data-key='{pid}']"
    out: dict[str, Any] = {"start": await flow(doctor, pid)}

    # Microphone: the others see the mute and stop getting audio.
    await click(patient, "#mic")
    await doctor.wait_for(f"document.querySelector(\"{tile}\").classList.contains('audio-off')",
                          "the patient's mute on the doctor's page")  # fmt: skip
    await asyncio.sleep(0.3)  # packets already on their way
    out["mic_muted"] = await flow(doctor, pid)
    await click(patient, "#mic")
    await doctor.wait_for(f"!document.querySelector(\"{tile}\").classList.contains('audio-off')",
                          "the patient's unmute")  # fmt: skip
    out["mic_unmuted"] = await until_flowing(doctor, pid, "audioPackets")
    world.mark("microphone")

    # Camera: off stops the device and the video; on again starts both.
    await click(patient, "#cam")
    await doctor.wait_for(f"document.querySelector(\"{tile}\").classList.contains('video-off')",
                          "the patient's camera off")  # fmt: skip
    out["camera_light"] = await patient.eval(
        "window.wadudCall.localTracks.get('camera').track === null"
    )
    await asyncio.sleep(0.3)
    out["camera_off"] = await flow(doctor, pid)
    await click(patient, "#cam")
    out["camera_on"] = await until_flowing(doctor, pid, "framesDecoded")
    world.mark("camera")

    # Screen share: a new publish offer; the doctor gets a second tile.
    screen_tile = f"#grid .tile[data-key='{pid}:screen']"
    await click(patient, "#screen")
    out["screen_caption"] = await doctor.wait_for(
        f'document.querySelector("{screen_tile} figcaption")?.textContent',
        "the patient's screen on the doctor's page",
    )
    out["screen_frames"] = await doctor.wait_for(
        f'(() => {{ const v = document.querySelector("{screen_tile} video");'
        " return v && v.videoWidth > 0 && v.videoWidth; })()",
        "frames of the shared screen",
    )
    await click(patient, "#screen")
    await doctor.wait_for(f'!document.querySelector("{screen_tile}")', "the screen tile going")
    world.mark("screen")

    # The doctor mutes the patient from the admin panel.
    await doctor.wait_for(
        "[...document.querySelectorAll('#people-list button')].some(b => b.textContent === 'Mute')",
        "a Mute button for the patient",
    )
    await doctor.eval(
        "[...document.querySelectorAll('#people-list button')]"
        ".find(b => b.textContent === 'Mute').click(), true"
    )
    out["admin_muted"] = await patient.wait_for(
        "document.getElementById('mic').getAttribute('aria-pressed') === 'false'"
        " && document.getElementById('mic').textContent",
        "the patient's page showing the mute",
    )
    await click(patient, "#mic")  # and unmutes themselves
    world.mark("admin mute")

    # The patient's socket drops: the page resumes, same participant, and
    # media never stopped (no renegotiation).
    pc_before = await patient.eval("window.wadudCall.publishPc.__marker = 'kept', true")
    # The page's states as it passes them: 'reconnecting' can last less than
    # one poll (ci77 polled for it 30 s after the page had resumed).
    await patient.eval(
        "window.__states = [], window.wadudCall.addEventListener("
        "'state', e => window.__states.push(e.detail.state)), true"
    )
    assert proxy.cut() > 0
    # In whole-suite runs the page took past 10 s to notice (ci26, beside the
    # Sentinel test's four pages; the proxy resets both sides at once, so it
    # is the page's own turn that comes late). What matters is the resume.
    await patient.wait_for("window.__states.includes('reconnecting')", "reconnecting", 30)
    await patient.wait_for("document.body.dataset.state === 'joined'", "the resume")
    out["resume"] = {
        "same_participant": await patient.eval("window.wadudCall.me.id") == pid,
        "same_pc": pc_before and await patient.eval("window.wadudCall.publishPc.__marker"),
        "doctor_tiles": len(await captions(doctor)),
        "flow": await flow(doctor, pid),
    }
    world.mark("resume")

    # Removed by the doctor.
    await doctor.eval(
        "[...document.querySelectorAll('#people-list button')]"
        ".find(b => b.textContent === 'Remove').click(), true"
    )
    await patient.wait_for("document.body.dataset.state === 'removed'", "removal")
    out["removed_title"] = await patient.eval("document.getElementById('ended-title').textContent")
    await doctor.wait_for(f'!document.querySelector("{tile}")', "the patient's tile going")
    world.mark("remove")

    await doctor.eval("window.confirm = () => true")
    await click(doctor, "#end")
    await doctor.wait_for("document.body.dataset.state === 'ended'", "the end")
    out["timings"] = world.timings
    return out


async def scenario_rejoin(world: World) -> dict[str, Any]:
    """Leave, then "Join again" from the end screen: a new participant, seen
    and heard again by the one who stayed."""
    doctor = await world.browsers.open(
        "doctor", world.link("dr-amina", "Dr Amina", "doctor", admin=True)
    )
    await join(doctor)
    patient = await world.browsers.open("patient", world.link("pt-991", "Bilal", "patient"))
    await join(patient)
    first = await participant_id(patient)
    await receiving(world, [doctor, patient])
    await click(patient, "#leave")
    await patient.wait_for("document.body.dataset.state === 'left'", "leaving")
    await doctor.wait_for("document.querySelectorAll('#grid .tile').length === 1", "an empty room")
    world.mark("left")
    await click(patient, "#rejoin")
    await join(patient)
    world.mark("back")
    second = await participant_id(patient)
    pairs = await receiving(world, [doctor, patient])
    return {
        "new_participant": first != second,
        "pairs": pairs,
        "doctor_captions": await captions(doctor),
        "timings": world.timings,
    }


async def refused(page: Page) -> dict[str, Any]:
    await join(page, expect="failed")
    return {
        "who": await page.eval("document.getElementById('who').textContent"),
        "title": await page.eval("document.getElementById('ended-title').textContent"),
        "code": await page.eval("window.wadudCall.refusal?.code"),
        "rejoin": not await page.eval("document.getElementById('rejoin').hidden"),
    }


async def scenario_refusals(world: World) -> dict[str, Any]:
    """Links that cannot join: expired, and for another room."""
    expired = world.link("pt-991", "Bilal", "patient", expires_in=-dt.timedelta(minutes=5))
    page = await world.browsers.open("patient", expired)
    await page.wait_for("document.body.dataset.screen === 'ended'", "the expired link's end screen")
    out = {
        "expired": {
            "screen": await page.eval("document.body.dataset.screen"),
            "title": await page.eval("document.getElementById('ended-title').textContent"),
            "reason": await page.eval("document.getElementById('ended-reason').textContent"),
            "rejoin": not await page.eval("document.getElementById('rejoin').hidden"),
        }
    }
    elsewhere = world.link("pt-991", "Bilal", "patient").replace(world.room, "another-room")
    await page.cdp.send("Page.navigate", url=elsewhere)
    await page.wait_for("document.body.dataset.screen !== 'ended'", "the new page")
    out["other_room"] = await refused(page)
    return out


DEVICE_CHECK = """(() => {
  const v = document.getElementById('preview');
  return {screen: document.body.dataset.screen,
          preview: v.videoWidth > 0 && !v.paused,
          cameras: document.getElementById('camera-select').options.length,
          mics: document.getElementById('mic-select').options.length,
          level: parseFloat(document.getElementById('level').style.width) || 0,
          hint: !document.getElementById('meter-hint').hidden,
          error: document.getElementById('device-error').hidden ? null
                 : document.getElementById('device-error').textContent};
})()"""
MIC_HEARD = (
    "document.body.dispatchEvent(new PointerEvent('pointerdown')),"
    " parseFloat(document.getElementById('level').style.width) > 0"
)


async def device_check(page: Page, *, expect_devices: bool = True) -> dict[str, Any]:
    """The device check as the user sees it: a live preview, pickers, and a
    level meter that moves once the user has touched the page."""
    ready = "document.body.dataset.screen === 'prejoin'"
    if expect_devices:
        # What DEVICE_CHECK calls a live preview: an autoplaying <video> knows
        # its size (metadata) a moment before it starts playing (enough data),
        # and under load a single reading can fall between the two.
        ready += (
            " && document.getElementById('preview').videoWidth > 0"
            " && !document.getElementById('preview').paused"
        )
    else:
        ready += " && !document.getElementById('device-error').hidden"
    await page.wait_for(ready, "the device check")
    state = dict(await page.eval(DEVICE_CHECK))
    if expect_devices:
        state["heard"] = bool(await page.wait_for(MIC_HEARD, "the microphone level", within=10))
    return state


EMBED_TWO = """<!doctype html><html><body>
<iframe src="{allowed}" allow="camera; microphone; display-capture"></iframe>
<iframe src="{refused}"></iframe></body></html>"""


async def scenario_devices(world: World) -> dict[str, Any]:
    """No call: the device check, top level and framed by another site
    with and without ``allow``."""
    top = await world.browsers.open("top", world.link("pt-991", "Bilal", "patient"))
    result: dict[str, Any] = {"top": await device_check(top)}
    allowed = world.link("pt-992", "Amal", "patient").replace(world.room, "allowed")
    refused = world.link("pt-993", "Omar", "patient").replace(world.room, "refused")
    async with embedder(EMBED_TWO.format(allowed=allowed, refused=refused)) as clinic_url:
        clinic = await world.browsers.open("clinic", clinic_url)
        result["allowed"] = await device_check(await frame_of(clinic, world.base + "/call/allowed"))
        result["refused"] = await device_check(
            await frame_of(clinic, world.base + "/call/refused"), expect_devices=False
        )
    result["timings"] = world.timings
    return result


SCENARIOS: dict[str, Scenario] = {
    "three": scenario_three,
    "demo": scenario_demo,
    "iframe": scenario_iframe,
    "devices": scenario_devices,
    "controls": scenario_controls,
    "rejoin": scenario_rejoin,
    "refusals": scenario_refusals,
}


if __name__ == "__main__":
    serve_scenarios(__doc__, SCENARIOS, 120)
