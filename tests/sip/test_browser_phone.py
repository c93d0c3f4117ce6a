"""A phone caller and two Chromium call pages in one visit (issue 38's
must-show): the doctor's page hears the phone's 1 kHz, measured in the page
with WebAudio; the phone hears the doctor's 440 Hz and the other page's
660 Hz, measured by FFT of what its RTP socket received, and never its own
1 kHz.

The test books the visit (its PIN) through the API on the test's database;
the driver, in a loopback-only namespace as the other browser tests' are,
serves the app with the phone bridge inside (as ``wadud serve`` runs it),
opens the two pages with tones for fake microphones, and calls in with
SIPp (INFO digits) and its own RTP socket as the phone.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import uuid
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.booking.bookings.test_bookings import pool_of
from tests.booking.factories import Doctor
from tests.browser import DriverError, Page, driver_main, join, play, run_scenario
from tests.conftest import Api
from tests.sip.node.test_pins import visit
from wadud.state import keys

DRIVER = "tests.sip.test_browser_phone"
SIP_PORT = 5060
#: Where the patient's phone (SIPp) takes the bridge's call.
PATIENT_PORT = 5070


async def book_visit(api: Api, doctor: Doctor) -> tuple[str, str]:
    """A visit booked through the test's app (its id and PIN), which then
    stops relaying its outbox (``Api.stop_relaying``): the driver's app
    serves the call on the same database with no Redis, and a phone call's
    steps reach the page through the outbox, so a step the test's relay won
    was a step the page never heard (ci150's "joined", twice)."""
    bid, pin = await visit(api, doctor)
    await api.stop_relaying()
    return bid, pin


@pytest.mark.timeout(200)
async def test_pages_hear_the_phone_and_the_phone_hears_both_pages_but_itself(
    api: Api, doctor: Doctor, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bid, pin = await book_visit(api, doctor)
    (tmp_path / "visit.json").write_text(json.dumps({"booking": bid, "pin": pin}))
    # The driver speaks the prompts into the test's own cache, not the home folder.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = await run_scenario(DRIVER, "hear", database_url, tmp_path, 120)
    print(json.dumps(result))
    # The doctor's page: the loudest frequency of the phone's tile's audio.
    assert abs(result["doctor_hears"] - 1000) < 15, result
    assert result["glyphs"] == [["\u260e", "On the phone"]], result
    phone = {int(f): level for f, level in result["phone_hears"].items()}
    assert phone[440] > 0.3 and phone[660] > 0.3, phone
    # No 1 kHz in what the phone hears: only the noise floor either side.
    assert phone[1000] < max(1.5 * (phone[900] + phone[1100]) / 2, 0.01), phone


@pytest.mark.timeout(200)
async def test_the_doctor_calls_the_patients_phone_from_the_page(
    api: Api, doctor: Doctor, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bid, pin = await book_visit(api, doctor)
    row = await pool_of(api).fetchrow(
        """UPDATE users SET phone = '+923001234534'
           WHERE id = (SELECT patient_id FROM bookings WHERE id = $1)
           RETURNING (SELECT starts_at FROM bookings WHERE id = $1) AS slot""",
        uuid.UUID(bid),
    )
    assert row is not None
    (tmp_path / "visit.json").write_text(
        json.dumps({"booking": bid, "pin": pin, "slot": row["slot"].isoformat()})
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = await run_scenario(DRIVER, "dial", database_url, tmp_path, 120)
    print(json.dumps(result))
    # The button, then each step under it, as the patient's phone (SIPp) rang
    # and answered; the phone's tile came into the doctor's grid.
    assert result["button"] == "Call the patient's phone", result
    assert result["said"][-1] == "The patient's phone is in the call", result
    # While the phone is in the call the button waits: a second call would be busy.
    assert result["disabled"] is True, result
    for shot in ("doctor-calls-phone-phone", "doctor-calls-phone-desktop"):
        assert (tmp_path / "shots" / f"{shot}.png").stat().st_size > 10_000


# -- the driver: runs inside the namespace ------------------------------------


def tone_wav(path: Path, frequency: int) -> Path:
    """Four seconds of ``frequency`` Hz for a fake microphone (Chromium loops it)."""
    rate = 48_000
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(
            b"".join(
                struct.pack("<h", int(9000 * math.sin(2 * math.pi * frequency * i / rate)))
                for i in range(rate * 4)
            )
        )
    return path


#: The loudest frequency, over 1.5 s, of the audio of the tile named ``Phone ••34``.
#: The loudest frequency of the phone's tile's audio, from the highest level
#: each frequency reached over 2 s of snapshots 100 ms apart: one snapshot
#: reads the last 0.37 s only, and a starved run once caught silence there
#: (all bins -Infinity, "2.69 Hz": ci165).
MEASURE = """(async () => {
  const tile = [...document.querySelectorAll('#grid .tile')]
    .find(t => t.textContent.includes('Phone ••34') && t.dataset.audioTrack);
  const track = tile.querySelector('video').srcObject.getAudioTracks()[0];
  const ctx = new AudioContext();
  await ctx.resume();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 16384;
  ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const data = new Float32Array(analyser.frequencyBinCount);
  const most = new Float32Array(analyser.frequencyBinCount).fill(-Infinity);
  for (let n = 0; n < 20; n++) {
    await new Promise(r => setTimeout(r, 100));
    analyser.getFloatFrequencyData(data);
    for (let i = 0; i < data.length; i++) if (data[i] > most[i]) most[i] = data[i];
  }
  let best = 1;
  for (let i = 2; i < most.length; i++) if (most[i] > most[best]) best = i;
  ctx.close();
  return best * ctx.sampleRate / analyser.fftSize;
})()"""

PHONE_TILE = (
    "[...document.querySelectorAll('#grid .tile')]"
    ".some(t => t.textContent.includes('Phone ••34') && t.dataset.audioTrack)"
)
#: The phone's tile shows a telephone, not initials.
PHONE_GLYPH = (
    "[...document.querySelectorAll('#grid .tile.phone .placeholder')]"
    ".map(p => [p.textContent, p.getAttribute('aria-label')])"
)


def level_at(pcm: np.ndarray, frequency: float) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.shape[0])))
    freqs = np.fft.rfftfreq(pcm.shape[0], 1 / 8000)
    band = (freqs > frequency - 30) & (freqs < frequency + 30)
    return float(spectrum[band].max() / spectrum.max())


async def scenario_hear(world: Any, pin: str) -> dict[str, Any]:
    from tests.polling import wait_until
    from tests.signalling.test_visit_journey import Shots
    from tests.sip.phone import RATE, Sipp, invite_scenario, phone, sine

    work = world.browsers.work
    doctor: Page = await world.browsers.open(
        "doctor",
        world.link("dr-amina", "Dr Amina", "doctor", admin=True),
        f"--use-file-for-fake-audio-capture={tone_wav(work / 'a440.wav', 440)}",
        "--autoplay-policy=no-user-gesture-required",
    )
    await join(doctor)
    sister: Page = await world.browsers.open(
        "sister",
        world.link("sis-2", "Sana", "patient"),
        f"--use-file-for-fake-audio-capture={tone_wav(work / 'a660.wav', 660)}",
    )
    await join(sister)
    world.mark("pages joined")
    line = await phone()
    sipp = Sipp(work / "sipp", invite_scenario(line.port, dtmf=True, info_keys=pin + "#"), SIP_PORT)
    await sipp.start()
    try:
        await line.first_audio()
        speaking = asyncio.create_task(line.speak(sine(1000, 30 * RATE)))
        await doctor.wait_for(PHONE_TILE, "the phone's tile with audio", within=40)
        world.mark("phone in the room")
        glyphs = await doctor.eval(PHONE_GLYPH)
        await Shots(work / "shots").take(doctor, "doctor-with-phone")
        # Once the prompt "you are in the visit" has played, the phone
        # hears the room: both directions are measured from then on.
        await wait_until(
            lambda: min(level_at(line.heard_pcm(0.5), f) for f in (440, 660)) > 0.3,
            within=20,
            every=0.1,
        )
        world.mark("phone hears the room")
        doctor_hears = await doctor.eval(MEASURE)
        heard = line.heard_pcm(1.0)
        speaking.cancel()
    finally:
        await sipp.stop()
        line.transport.close()
    return {
        "doctor_hears": doctor_hears,
        "glyphs": glyphs,
        "phone_hears": {f: level_at(heard, f) for f in (440, 660, 900, 1000, 1100)},
        "timings": world.timings,
    }


#: What the status line under the call button said, each time it changed.
WATCH_STEPS = """(() => {
  window.__said = [];
  const line = document.getElementById('phone-state');
  new MutationObserver(() => {
    const t = line.textContent;
    if (t && window.__said[window.__said.length - 1] !== t) window.__said.push(t);
  }).observe(line, {childList: true, characterData: true, subtree: true});
  return true;
})()"""


async def people(page: Page) -> None:
    """The People panel open (a narrow window closes it), the call button in view."""
    await page.eval(
        "(document.getElementById('side').hidden || document.getElementById('admin').hidden)"
        " && document.getElementById('open-people').click(),"
        " document.getElementById('call-phone').scrollIntoView(), true"
    )
    await page.wait_for(
        "!document.getElementById('side').hidden && !document.getElementById('admin').hidden",
        "the People panel",
    )


async def scenario_dial(world: Any, booked: dict[str, str]) -> dict[str, Any]:
    from tests.signalling.test_visit_journey import Shots
    from tests.sip.node.test_dial_out import ANSWER_XML
    from tests.sip.phone import Sipp

    work = world.browsers.work
    doctor: Page = await world.browsers.open(
        "doctor",
        world.link(
            "dr-amina", "Dr Amina", "doctor", admin=True,
            booking=booked["booking"], slot=booked["slot"],
        ),
    )  # fmt: skip
    await join(doctor)
    await people(doctor)
    await doctor.wait_for("!document.getElementById('call-phone').hidden", "the call button")
    button = await doctor.eval("document.getElementById('call-phone').textContent")
    await doctor.eval(WATCH_STEPS)
    patient = Sipp.callee(work / "patient", ANSWER_XML, PATIENT_PORT)
    await patient.start()
    try:
        await doctor.eval("document.getElementById('call-phone').click(), true")
        await doctor.wait_for(
            PHONE_TILE.replace(" && t.dataset.audioTrack", ""), "the phone's tile", within=40
        )
        try:
            await doctor.wait_for(
                "document.getElementById('phone-state').textContent"
                ' === "The patient\'s phone is in the call"',
                "the joined step",
            )
        except DriverError as exc:
            # Which steps the page was told, and the bridge's own record of
            # the call: a step written late tells from one never sent.
            said = await doctor.eval("window.__said")
            rows = await world.app[keys.DB].fetch(
                "SELECT state, reason, updated_at FROM phone_calls ORDER BY created_at"
            )
            raise DriverError(
                f"{exc}; the page said {said}; phone_calls {[dict(r) for r in rows]}"
            ) from exc
        world.mark("phone called in")
        await Shots(work / "shots").take(doctor, "doctor-calls-phone", then=people)
        said = await doctor.eval("window.__said")
        disabled = await doctor.eval("document.getElementById('call-phone').disabled")
    finally:
        await patient.stop()
    return {"button": button, "said": said, "disabled": disabled, "timings": world.timings}


async def drive(name: str, database_url: str, work: Path, budget: float) -> dict[str, Any]:
    import aioice.ice

    import sip.role

    # The bridge's seat is an aiortc peer, and aioice leaves loopback out of
    # its host candidates: in a namespace with only loopback it has none.
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    from tests.signalling.call_world import HTTP_PORT, serving

    booked = json.loads((work / "visit.json").read_text())
    async with serving(
        database_url,
        work,
        also=[sip.role.install_worker],
        sip_listen=f"127.0.0.1:{SIP_PORT}",
        sip_rtp_ports="20000-20099",
        sip_trunks={
            "clinic": {
                "networks": ["127.0.0.1/32"],
                "language": "en",
                "outbound": f"127.0.0.1:{PATIENT_PORT}",
            }
        },
        sip_room_url=f"http://127.0.0.1:{HTTP_PORT}/ws",
    ) as world:
        world.room = f"booking-{booked['booking']}"
        scenario = (
            scenario_hear(world, booked["pin"]) if name == "hear" else scenario_dial(world, booked)
        )
        return await play(scenario, world.browsers, world.timings, budget)


if __name__ == "__main__":
    driver_main(__doc__, ["hear", "dial"], drive, 120)
