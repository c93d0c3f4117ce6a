"""The call page as a telehealth visit, judged by looking at it: real
Chromium pages in a real call through our SFU, at desktop (1280x800) and
phone (390x844, held upright) sizes, with screenshots saved for people to
look at (docs/img/call-*.png when ``WADUD_SCREENSHOTS`` names a folder, else
under the test's own folder) and the layout measured in the page:

* 1:1: the other person fills the stage, your own preview is small in a
  corner, nothing scrolls sideways and every control is on screen;
* three people: a grid, every tile on screen;
* video letterboxed (``object-fit: contain``), never cropped;
* a link without a name asks for one; nobody is shown by identity;
* the doctor gets a tone, the count in the title and a toast with Admit and
  Deny when someone waits, and admits from the toast;
* button text at least 4.5:1 against its background (WCAG AA), icons and
  connection bars at least 3:1;
* the page reports each remote video's rendered size (``track_view``) and
  hides video on "Audio only".

Like test_browser_call.py, the driver runs in a loopback-only namespace; its
``--help`` says how to run it by hand.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.browser import (
    DriverError,
    Page,
    driver_main,
    join,
    participant_id,
    play,
    receiving,
    run_scenario,
)
from tests.signalling.call_world import World, serving

ROOT = Path(__file__).resolve().parents[2]
DESKTOP = (1280, 800)
PHONE = (390, 844)


def luminance(rgb: tuple[float, float, float]) -> float:
    """WCAG 2.x relative luminance of an sRGB colour (0-255 channels)."""

    def channel(c: float) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_contrast_matches_the_wcag_examples() -> None:
    assert contrast((0, 0, 0), (255, 255, 255)) == pytest.approx(21)
    assert contrast((255, 255, 255), (255, 255, 255)) == pytest.approx(1)
    # WebAIM's reference: #777 on white is 4.48:1, just under AA.
    assert contrast((0x77, 0x77, 0x77), (255, 255, 255)) == pytest.approx(4.48, abs=0.01)


def check_layout(shot: dict[str, Any], *, mode: str) -> None:
    """What every screen of the call must be at its size."""
    what = json.dumps(shot)[:3000]
    width = shot["viewport"][0]
    assert shot["layout"] == mode, what
    assert shot["scrollWidth"] <= width, what  # nothing scrolls sideways
    assert shot["fits"] == [], what  # every tile and visible control on screen
    assert set(shot["objectFit"]) == {"contain"}, what
    if mode == "focus":
        main, pip = shot["main"], shot["pip"]
        # The other person large...
        assert main["width"] >= 0.9 * shot["stage"]["width"], what
        assert main["height"] >= 0.9 * shot["stage"]["height"], what
        # ...and your own preview small, in a corner, inside the stage.
        assert pip["width"] <= 0.35 * width, what
        assert pip["width"] * pip["height"] <= 0.12 * main["width"] * main["height"], what


def check_contrast(colors: list[dict[str, Any]]) -> list[str]:
    bad = []
    for c in colors:
        ratio = contrast(tuple(c["fg"]), tuple(c["bg"]))
        need = 3.0 if c["kind"] in ("icon", "bar") else 4.5
        if ratio < need:
            bad.append(f"{c['what']}: {ratio:.2f} < {need}")
    return bad


@pytest.mark.timeout(240)
async def test_the_call_page_as_a_visit(database_url: str, tmp_path: Path) -> None:
    result = await run_scenario(
        "tests.signalling.test_page_layout", "visit", database_url, tmp_path, 170
    )
    print(json.dumps({k: v for k, v in result.items() if k != "shots"}))
    shots = result["shots"]

    # Before joining: an anonymous patient's link asks for a name.
    assert shots["prejoin-phone"]["nameAsked"], shots["prejoin-phone"]
    assert shots["prejoin-phone"]["scrollWidth"] <= PHONE[0]
    assert result["join_needs_name"] is True

    # The doctor's alert: tone, title, toast with Admit and Deny.
    alert = result["alert"]
    assert alert["title"].startswith("(1) waiting - "), alert
    assert alert["beeps"] >= 1, alert
    assert alert["toast"].endswith("is waiting to join"), alert
    assert alert["buttons"] == ["Admit", "Deny"], alert
    for name in ("alert-desktop", "alert-phone"):
        assert shots[name]["alertOnScreen"], shots[name]
    assert result["admitted_from_toast"] is True
    assert result["title_after"] == "Video consultation · Wadud"

    # 1:1 and three people, at both sizes.
    for name in ("one-desktop", "one-phone", "patient-phone"):
        check_layout(shots[name], mode="focus")
    for name in ("three-desktop", "three-phone"):
        check_layout(shots[name], mode="grid")
        assert shots[name]["tiles"] == 3, shots[name]

    # Names, never identities: the anonymous patient by the name typed (once
    # the server carries join.name) or by role, never "anon-...".
    for page, names in result["captions"].items():
        assert not [n for n in names if "anon" in n or "rel-" in n or "dr-" in n], (page, names)
    assert result["patient_caption"] == "Bilal Ahmed", result["patient_caption"]

    # WCAG AA on every control that shows.
    assert result["contrast_checked"] >= 10
    assert check_contrast(result["colors"]) == []

    # The page reports what it shows, and hides video on "Audio only".
    view = result["view"]
    assert view["visible"] and view["width"] >= 900 and view["height"] >= 500, view
    assert result["audio_only"]["views_hidden"], result["audio_only"]
    assert result["audio_only"]["camera_off"], result["audio_only"]
    assert result["audio_only"]["note"] == "Audio only", result["audio_only"]
    # Server events render: bars and the weak-connection note.
    assert result["events"]["bars"] == "poor", result["events"]
    assert result["events"]["note"] == "Video paused: weak connection", result["events"]


# -- the driver ----------------------------------------------------------------

MEASURE = """(() => {
  const r = (el) => { const b = el.getBoundingClientRect();
    return {left: b.left, top: b.top, width: b.width, height: b.height,
            right: b.right, bottom: b.bottom}; };
  const W = innerWidth, H = innerHeight;
  const onScreen = (b) => b.left >= -1 && b.top >= -1 && b.right <= W + 1 && b.bottom <= H + 1;
  const fits = [];
  const visible = (el) => el.offsetParent !== null && getComputedStyle(el).visibility !== 'hidden';
  const tiles = [...document.querySelectorAll('#grid .tile')];
  for (const t of tiles) if (!onScreen(r(t))) fits.push('tile ' + t.dataset.key);
  for (const b of document.querySelectorAll('#controls button')) {
    if (visible(b) && !onScreen(r(b))) fits.push('button ' + b.id);
  }
  const alert = document.getElementById('alert');
  const main = document.querySelector('#grid .tile.main');
  const pip = document.querySelector('#grid .tile.pip');
  const stage = document.querySelector('.stage');
  return {
    viewport: [W, H],
    layout: document.body.dataset.layout,
    scrollWidth: document.documentElement.scrollWidth,
    fits,
    tiles: tiles.length,
    objectFit: [...new Set(tiles.map(t => getComputedStyle(t.querySelector('video')).objectFit))],
    main: main && r(main), pip: pip && r(pip), stage: stage && r(stage),
    alertOnScreen: !alert.hidden && onScreen(r(alert)),
    nameAsked: !document.getElementById('name-form').hidden,
  };
})()"""

# Every visible button's text (and icon) colour against what is behind it.
COLORS = """(() => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).slice(0, 4).map(Number);
  const behind = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] === 1)) return c.slice(0, 3);
      if (c.length === 4 && c[3] > 0) {  // translucent over black (video, backdrop)
        return c.slice(0, 3).map(v => v * c[3]);
      }
    }
    return rgb(getComputedStyle(document.body).backgroundColor).slice(0, 3);
  };
  const out = [];
  const seen = document.querySelectorAll(
    'button, figcaption, .note, .badge, #alert p, label, h1, .muted');
  for (const el of seen) {
    if (el.offsetParent === null && getComputedStyle(el).position !== 'fixed') continue;
    if (el.closest('[hidden]')) continue;
    const cs = getComputedStyle(el);
    if (!el.textContent.trim()) continue;
    const what = (el.id || el.className || el.tagName) + ': ' + el.textContent.trim().slice(0, 20);
    out.push({what, kind: 'text', fg: rgb(cs.color).slice(0, 3), bg: behind(el)});
    const svg = el.querySelector(':scope > svg');
    if (svg) out.push({what: 'icon of ' + (el.id || el.textContent.trim()), kind: 'icon',
                       fg: rgb(getComputedStyle(svg).stroke).slice(0, 3), bg: behind(el)});
  }
  for (const bar of document.querySelectorAll('.bars:not([data-quality=unknown]) i')) {
    const c = rgb(getComputedStyle(bar).backgroundColor).slice(0, 3);
    if (c.join() === '91,102,112') continue;  // an unlit bar
    out.push({what: 'bar ' + bar.parentElement.dataset.quality, kind: 'bar', fg: c,
              bg: behind(bar.parentElement)});
  }
  return out;
})()"""


PREVIEWING = (
    "document.body.dataset.screen === 'prejoin'"
    " && document.getElementById('preview').videoWidth > 0"
)


def video_of(pid: str) -> str:
    return (
        "[...window.wadudCall.remoteTracks.values()]"
        f".find(r => r.kind === 'video' && r.participant === '{pid}')"
    )


#: The start of a script that finds a part of a tile of the call's grid by
#: the tile's key: the caller ends the selector (' .bars")').
TILE = "document.querySelector(\"#grid .tile[data-key='%s']"


def server_frame(**frame: Any) -> str:
    """Script that hands the page's client a frame as if the server sent it."""
    return f"window.wadudCall._onFrame({json.dumps(json.dumps(frame))});"


async def size(page: Page, dims: tuple[int, int], *, mobile: bool) -> None:
    await page.cdp.send(
        "Emulation.setDeviceMetricsOverride",
        width=dims[0],
        height=dims[1],
        deviceScaleFactor=1,
        mobile=mobile,
    )
    await asyncio.sleep(0.8)  # layout, the debounced track_view, a new frame


class Shots:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.measured: dict[str, Any] = {}

    async def take(self, page: Page, name: str, dims: tuple[int, int]) -> None:
        await size(page, dims, mobile=dims == PHONE)
        self.measured[name] = await page.eval(MEASURE)
        shot = await page.cdp.send("Page.captureScreenshot", format="png")
        (self.folder / f"call-{name}.png").write_bytes(base64.b64decode(shot["data"]))


async def scenario(world: World, shots: Shots) -> dict[str, Any]:
    out: dict[str, Any] = {}
    doctor = await world.browsers.open(
        "doctor", world.link("dr-amina", "Dr Amina Rahman", "doctor", admin=True)
    )
    patient = await world.browsers.open("patient", world.link("anon-5521", "", "patient"))
    await size(patient, PHONE, mobile=True)
    await patient.wait_for(PREVIEWING, "the patient's device check")
    out["join_needs_name"] = await patient.eval("document.getElementById('join').disabled")
    await shots.take(patient, "prejoin-phone", PHONE)
    await size(doctor, DESKTOP, mobile=False)
    await doctor.wait_for(PREVIEWING, "the doctor's device check")
    await shots.take(doctor, "prejoin-desktop", DESKTOP)
    await join(doctor)
    # Let people in by hand, so the patient waits even with the doctor here.
    await doctor.eval("document.getElementById('require-admission').click(), true")
    await asyncio.sleep(0.5)

    await patient.eval(
        "(() => { const i = document.getElementById('display-name'); i.value = 'Bilal Ahmed';"
        " i.dispatchEvent(new Event('input')); return true; })()"
    )
    await join(patient, expect="waiting")
    await doctor.wait_for("!document.getElementById('alert').hidden", "the waiting alert")
    out["alert"] = await doctor.eval(
        "({title: document.title, beeps: Number(document.body.dataset.beeps || 0),"
        " toast: document.getElementById('alert-text').textContent,"
        " buttons: [...document.querySelectorAll('#alert button')].map(b => b.textContent)})"
    )
    await shots.take(doctor, "alert-desktop", DESKTOP)
    await shots.take(doctor, "alert-phone", PHONE)
    await size(doctor, DESKTOP, mobile=False)
    await doctor.eval("document.getElementById('alert-admit').click(), true")
    await patient.wait_for("document.body.dataset.state === 'joined'", "admission from the toast")
    out["admitted_from_toast"] = True
    # The doctor's title clears when the doctor's own page hears the lobby is
    # empty: a frame of its own, which a busy machine delivers after the
    # patient's page says joined (ci60 read "(1) waiting" there).
    with contextlib.suppress(DriverError):
        await doctor.wait_for("!document.title.startsWith('(')", "the title without a count")
    out["title_after"] = await doctor.eval("document.title")
    world.mark("admitted")

    await receiving(world, [doctor, patient])
    pid = await participant_id(patient)
    await asyncio.sleep(1)
    await shots.take(doctor, "one-desktop", DESKTOP)
    out["view"] = await doctor.wait_for(
        f"""(() => {{ const t = {video_of(pid)};
          const v = t && window.wadudCall._views.get(t.track_id);
          return v && JSON.parse(v); }})()""",
        "a track_view for the patient's video",
    )
    out["patient_caption"] = await doctor.eval(
        f"document.querySelector(\"#grid .tile[data-key='{pid}'] figcaption\").textContent"
    )
    await shots.take(doctor, "one-phone", PHONE)
    await shots.take(patient, "patient-phone", PHONE)
    await size(doctor, DESKTOP, mobile=False)

    # A third person: a family member on a laptop.
    relative = await world.browsers.open("relative", world.link("rel-17", "Sana Ahmed", "family"))
    await size(relative, DESKTOP, mobile=False)
    await join(relative, expect="waiting")
    await doctor.wait_for("!document.getElementById('alert').hidden", "the second alert")
    await doctor.eval("document.getElementById('alert-admit').click(), true")
    await relative.wait_for("document.body.dataset.state === 'joined'", "the relative admitted")
    await receiving(world, [doctor, patient, relative])
    rid = await participant_id(relative)
    # The server's weak-network events as the page will get them (the
    # worker's side lands with the lead's work): bars on a tile, and the
    # note on a tile whose video the server paused.
    rtrack = await doctor.eval(f"{video_of(rid)}.track_id")
    me = await participant_id(doctor)
    # Given and read in one evaluation: the real server's own quality
    # frames (every second) would otherwise replace the given ones between
    # two evaluations.
    out["events"] = await doctor.eval(
        server_frame(type="connection_quality", participant_id=pid, quality="poor")
        + server_frame(type="connection_quality", participant_id=rid, quality="excellent")
        + server_frame(type="connection_quality", participant_id=me, quality="good")
        + server_frame(type="track_paused", track_id=rtrack, paused=True, reason="bandwidth")
        + f'({{bars: {TILE % pid} .bars").dataset.quality,'
        f' note: {TILE % rid} .note").textContent}})'
    )
    await shots.take(doctor, "three-desktop", DESKTOP)
    await shots.take(patient, "three-phone", PHONE)
    out["colors"] = await doctor.eval(COLORS) + await patient.eval(COLORS)
    await size(doctor, PHONE, mobile=True)
    out["colors"] += await doctor.eval(COLORS)
    out["contrast_checked"] = len(out["colors"])
    out["captions"] = {
        p.name: await p.eval(
            "[...document.querySelectorAll('#grid .tile figcaption')].map(c => c.textContent)"
        )
        for p in (doctor, patient, relative)
    }

    # Audio only on the patient's phone: the camera stops, and every remote
    # video is reported hidden.
    await patient.eval("document.getElementById('audio-only').click(), true")
    await asyncio.sleep(1)
    out["audio_only"] = await patient.eval(
        """(() => { const c = window.wadudCall;
          const views = [...c.remoteTracks.values()].filter(r => r.kind === 'video')
            .map(r => c._views.get(r.track_id)).filter(Boolean).map(v => JSON.parse(v));
          const other = document.querySelector('#grid .tile:not(.self) .note');
          return {views_hidden: views.length > 0 && views.every(v => !v.visible),
                  camera_off: c.localTracks.get('camera').track === null,
                  note: other && other.textContent}; })()"""
    )
    world.mark("done")
    out["timings"] = world.timings
    out["shots"] = shots.measured
    return out


async def drive(name: str, database_url: str, work: Path, budget: float) -> dict[str, Any]:
    folder = Path(os.environ.get("WADUD_SCREENSHOTS") or work / "shots")
    async with serving(database_url, work) as world:
        return await play(scenario(world, Shots(folder)), world.browsers, world.timings, budget)


if __name__ == "__main__":
    driver_main(__doc__, ["visit"], drive, 150)
