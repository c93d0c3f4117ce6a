"""The visit as a patient lives it, in real Chromium pages (issue 25):

* ``early``: a patient opens their link two minutes before it becomes valid.
  The page says when the visit opens and counts down while the device check
  runs, then joins by itself when the link is valid: no click, no reload.
* ``pay-en``, ``pay-ur``, ``pay-ar``: an anonymous patient whose language
  is English, Urdu or Arabic holds a slot and pays on the sandbox checkout
  with no ``return_url``: the checkout and the confirmation are pages in
  that language (right to left for Urdu and Arabic), never JSON, while a
  program asking ``Accept: application/json`` at the same return still gets
  JSON. The doctor accepts; the patient's video link opens the call page in
  their language: the waiting room, then the call with the doctor (the
  doctor's tile with connection bars), a chat message both ways, and a
  leave. Nothing in the pages' consoles: no uncaught error, no unhandled
  rejection.
* ``onward``: the same payment made with a ``return_url``: the browser
  still lands on the confirmation, which links on to the client's page with
  the parameters the redirect carries (a program still gets the redirect);
  once the doctor accepts, the page shows the patient's video link, which
  opens the call page.
* ``manage-en``, ``manage-ur``, ``manage-ar``: the patient opens their
  manage link in a browser: a page in their language, right to left for
  Urdu and Arabic, with the booking (doctor, time in their zone, status) and
  what the link may do; in English they move the visit to another free
  time, in Arabic they cancel it (refunded in full, two days ahead). A
  program still gets the booking as JSON from the same URL.

Screenshots (phone 390x844 and desktop 1280x800) go to ``WADUD_SCREENSHOTS``
(docs/img) when set, else under the test's folder. Like
test_browser_call.py, the driver runs in a loopback-only namespace; its
``--help`` says how to run one scenario by hand.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from yarl import URL

from tests.browser import Page, click, join, run_scenario
from tests.signalling.call_world import Scenario, World, serve_scenarios
from tests.signalling.test_browser_chat import _Session, chat_ready, say
from tests.signalling.test_page_layout import DESKTOP, PHONE, size

#: How long before its link becomes valid the early patient opens it: long
#: enough for a slow page to show the waiting screen before, short enough
#: that the test does not spend a minute waiting for the clock.
EARLY = 30.0
#: How long a busy machine may take to open the page and run its device
#: check before the countdown is read.
PAGE_START = 20.0
DRIVER = "tests.signalling.test_visit_journey"


@pytest.mark.timeout(260)
async def test_an_early_patient_waits_then_joins_by_itself(
    database_url: str, tmp_path: Path
) -> None:
    result = await run_scenario(DRIVER, "early", database_url, tmp_path, 200)
    print(json.dumps(result))
    first = result["first"]
    # The waiting screen says when, and counts down; Join is not offered.
    assert first["early"] and first["joinHidden"], first
    assert first["opens"].startswith("It opens on "), first
    # The page reads the server's clock from a whole-second Date header, so
    # its countdown may run up to a second (rounded up: two) past EARLY.
    left = re.fullmatch(r"Opens in (\d+):(\d\d)", first["left"])
    assert left, first
    assert EARLY - PAGE_START <= int(left[1]) * 60 + int(left[2]) <= EARLY + 2, first
    assert first["state"] is None and first["preview"] > 0, first  # the device check runs
    later = result["later"]
    assert later["left"] != first["left"], later  # it counts down
    # Then it joined, by itself, after the link became valid, in the same page.
    assert result["joined"]["state"] == "joined" and result["joined"]["same_page"], result
    assert result["joined"]["clicks"] == 0, result
    assert result["joined_after_valid"] >= 0, result
    assert result["errors"] == [], result["errors"]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("lang", ["en", "ur", "ar"])
async def test_paying_and_joining_in_the_patient_s_language(
    database_url: str, tmp_path: Path, lang: str
) -> None:
    result = await run_scenario(DRIVER, f"pay-{lang}", database_url, tmp_path, 150)
    print(json.dumps(result)[:6000])
    words = WORDS[lang]
    for page in ("checkout", "confirmation", "waiting", "call"):
        assert_in_language(result[page], lang, page)
    checkout = result["checkout"]
    assert checkout["h1"] == words["checkout"], checkout
    assert checkout["amount"].replace("\xa0", " ") == words["amount"], checkout
    # The hold's end in the patient's zone and words, no raw UTC.
    assert not re.search(r"\d{4}-\d\d-\d\dT|\+00:00", checkout["expires"]), checkout
    assert checkout["expires"].endswith(words["zone"]), checkout
    # After paying: the confirmation, a page, not JSON.
    done = result["confirmation"]
    assert done["path"].endswith("/return") and done["contentType"] == "text/html", done
    assert done["h1"] == words["paid"], done
    assert done["doctor"] == "Dr. Test" and done["when"], done
    # A program asking for JSON at the same return still gets it.
    assert result["json"]["type"].startswith("application/json"), result["json"]
    assert result["json"]["body"]["status"] == "succeeded", result["json"]
    assert result["waiting"]["h1"] == words["waiting"], result["waiting"]
    # In the call: the doctor's tile has connection bars on the patient's page.
    assert result["call"]["bars"] in ("excellent", "good", "poor", "lost"), result["call"]
    # Chat in both directions, each message laid out by its own text.
    assert result["chat"]["dirs"] and set(result["chat"]["dirs"]) == {"auto"}, result["chat"]
    assert result["left"] == "left", result
    assert result["errors"] == {"patient": [], "doctor": []}, result["errors"]


def assert_in_language(seen: dict[str, Any], lang: str, page: str) -> None:
    """What a driver read of ``page``: in the patient's language, right to
    left for Urdu and Arabic, and nothing sideways on a phone."""
    assert seen["lang"] == lang and seen["dir"] == ("ltr" if lang == "en" else "rtl"), (page, seen)
    assert seen["scrollWidth"] <= PHONE[0], (page, seen)


WORDS = {
    "en": {
        "checkout": "Pay for your visit",
        "paid": "Payment received",
        "waiting": "Waiting for the doctor",
        "amount": "PKR 1,500",
        "zone": "GMT+5",
    },
    "ur": {
        "checkout": "اپنی ملاقات کی ادائیگی کریں",
        "paid": "ادائیگی موصول ہو گئی",
        "waiting": "ڈاکٹر کا انتظار",
        "amount": "Rs 1,500",
        "zone": "GMT +5",
    },
    "ar": {
        "checkout": "ادفع لزيارتك",
        "paid": "تم استلام الدفع",
        "waiting": "بانتظار الطبيب",
        "amount": "\u200f1,500 PKR",
        "zone": "غرينتش+5",
    },
}


@pytest.mark.timeout(200)
async def test_paying_with_a_return_url_shows_the_way_on_and_then_the_visit(
    database_url: str, tmp_path: Path
) -> None:
    result = await run_scenario(DRIVER, "onward", database_url, tmp_path, 150)
    print(json.dumps(result)[:6000])
    # A browser lands on our confirmation, not on the client's page...
    done = result["confirmation"]
    assert done["path"].endswith("/return") and done["contentType"] == "text/html", done
    assert done["h1"] == "Payment received" and done["join"] is None, done
    # ...which links there with what the redirect carried.
    onward = urlsplit(done["continue"]["href"])
    assert (onward.scheme, onward.netloc, onward.path) == ("https", "clinic.example", "/after")
    assert dict(parse_qsl(onward.query)) == {
        "visit": "7",
        "payment_id": result["payment_id"],
        "status": "succeeded",
    }
    assert done["continue"]["text"] == "Continue to \u2068clinic.example\u2069", done
    # A program at the same return still gets the redirect, to the same place.
    assert result["program"] == {"status": 303, "location": done["continue"]["href"]}
    # Once the doctor accepts, the page has the patient's own video link.
    later = result["accepted"]
    join = urlsplit(later["join"])
    assert join.path == f"/call/booking-{result['booking_id']}", later
    query = dict(parse_qsl(join.query))
    assert query["token"] and query["lang"] == "en", later
    assert later["continue"]["href"] == done["continue"]["href"], later
    # It opens the call page for this visit (two days early: the countdown).
    assert result["call"]["early"], result["call"]
    assert result["errors"] == [], result["errors"]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("lang", ["en", "ur", "ar"])
async def test_the_manage_link_opens_a_page_in_the_patient_s_language(
    database_url: str, tmp_path: Path, lang: str
) -> None:
    result = await run_scenario(DRIVER, f"manage-{lang}", database_url, tmp_path, 150)
    print(json.dumps(result)[:6000])
    seen = result["page"]
    assert_in_language(seen, lang, "manage")
    assert seen["contentType"] == "text/html", seen
    words = MANAGE_WORDS[lang]
    assert seen["h1"] == words["title"], seen
    assert seen["doctor"] == "Dr. Test" and seen["when"].endswith(WORDS[lang]["zone"]), seen
    assert seen["status"] == words["accepted"], seen
    # The accepted visit's way in, and both things the link may do.
    assert seen["join"].split("?")[0].endswith(f"/call/booking-{result['booking_id']}"), seen
    assert seen["actions"] == ["reschedule-open", "cancel-open"], seen
    # A program asking for JSON (or anything) at the same URL gets the booking.
    for answer in result["json"]:
        assert answer["type"].startswith("application/json"), answer
        assert answer["body"]["id"] == result["booking_id"], answer
        assert answer["body"]["status"] == "accepted", answer
    # A link that names no booking says so, as a page.
    assert result["gone"]["status"] == 404 and "text/html" in result["gone"]["type"]
    if lang == "en":
        moved = result["moved"]
        assert moved["booking"]["starts_at"] == moved["picked"], moved
        assert moved["booking"]["status"] == "accepted", moved
        assert moved["page"]["notice"] == f"Your visit is moved to {moved['page']['when']}."
        assert moved["page"]["join"] != seen["join"], moved  # the new slot's link
    if lang == "ar":
        cancelled = result["cancelled"]
        assert cancelled["booking"]["status"] == "cancelled", cancelled
        assert cancelled["booking"]["cancel_reason"] == "تعارض مع موعد آخر", cancelled
        assert cancelled["booking"]["refund_minor"] == 150_000, cancelled
        assert cancelled["page"]["status"] == words["cancelled"], cancelled
        assert cancelled["page"]["notice"].startswith("أُلغيت زيارتك."), cancelled
        assert cancelled["page"]["join"] is None and cancelled["page"]["actions"] == []
    assert result["errors"] == [], result["errors"]


MANAGE_WORDS = {
    "en": {"title": "Your visit", "accepted": "Confirmed by the doctor"},
    "ur": {"title": "آپ کی ملاقات", "accepted": "ڈاکٹر نے تصدیق کر دی"},
    "ar": {"title": "زيارتك", "accepted": "أكّدها الطبيب", "cancelled": "ملغاة"},
}


# -- the driver ----------------------------------------------------------------

#: What every page of the journey is: its language, direction and heading.
PAGE = """(() => ({
  lang: document.documentElement.lang, dir: document.documentElement.dir,
  h1: [...document.querySelectorAll('h1')].find(h => h.offsetParent !== null)?.textContent.trim(),
  title: document.title, path: location.pathname, contentType: document.contentType,
  scrollWidth: document.documentElement.scrollWidth,
  amount: document.querySelector('[data-fill=amount]')?.textContent,
  expires: document.querySelector('[data-fill=expires]')?.textContent,
  doctor: document.querySelector('[data-fill=doctor]')?.textContent,
  when: document.querySelector('[data-fill=starts]')?.textContent,
  join: document.getElementById('join-visit')?.href ?? null,
  continue: (a => a ? {href: a.href, text: a.textContent} : null)(
    document.getElementById('continue')),
  status: document.getElementById('status')?.textContent ?? null,
  notice: (n => n && !n.hidden ? n.textContent : null)(document.getElementById('notice')),
  actions: [...document.querySelectorAll('#actions button')].filter(b => !b.hidden).map(b => b.id),
}))()"""


class Shots:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def take(
        self, page: Page, name: str, then: Callable[[Page], Awaitable[object]] | None = None
    ) -> None:
        """``name``-phone.png and ``name``-desktop.png; ``then``: what to do
        to the page after each resize (a panel the narrow layout closed)."""
        for dims, suffix in ((PHONE, "phone"), (DESKTOP, "desktop")):
            await size(page, dims, mobile=dims == PHONE)
            if then is not None:
                await then(page)
            shot = await page.cdp.send("Page.captureScreenshot", format="png")
            (self.folder / f"{name}-{suffix}.png").write_bytes(base64.b64decode(shot["data"]))
        await size(page, PHONE, mobile=True)


def _shots(work: Path) -> Shots:
    return Shots(Path(os.environ.get("WADUD_SCREENSHOTS") or work / "shots"))


async def scenario_early(world: World) -> dict[str, Any]:
    shots = _shots(world.browsers.work)
    valid_at = time.time() + EARLY
    link = world.link("pt-77", "Bilal Ahmed", "patient", opens_in=dt.timedelta(seconds=EARLY))
    patient = await world.browsers.open("patient", link)
    await size(patient, PHONE, mobile=True)
    state = """(() => ({early: document.body.dataset.early === '1',
      joinHidden: document.getElementById('join').hidden,
      opens: document.getElementById('early-opens').textContent,
      left: document.getElementById('early-left').textContent,
      state: document.body.dataset.state || null,
      preview: document.getElementById('preview').videoWidth}))()"""
    await patient.wait_for(
        "document.body.dataset.early === '1' && document.getElementById('preview').videoWidth > 0",
        "the early screen with the device check",
    )
    # Clicks would be counted: none is made from here on.
    await patient.eval(
        "window.__samePage = true; window.__clicks = 0;"
        " document.addEventListener('click', () => { window.__clicks += 1; }, true); true"
    )
    out: dict[str, Any] = {"first": await patient.eval(state)}
    await shots.take(patient, "call-early")
    await patient.wait_for(
        f"document.getElementById('early-left').textContent !== {json.dumps(out['first']['left'])}",
        "the countdown to move",
    )
    out["later"] = await patient.eval(state)
    # The doctor comes in before it opens.
    doctor = await world.browsers.open(
        "doctor", world.link("dr-amina", "Dr Amina Rahman", "doctor", admin=True)
    )
    await join(doctor)
    world.mark("doctor in")
    await patient.wait_for(
        "document.body.dataset.state === 'joined'", "the patient joining by itself", within=60
    )
    out["joined_after_valid"] = round(time.time() - valid_at, 2)
    out["joined"] = await patient.eval(
        "({state: document.body.dataset.state, same_page: window.__samePage === true,"
        " clicks: window.__clicks})"
    )
    out["errors"] = patient.cdp.errors
    out["timings"] = world.timings
    return out


async def _json_return(url: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, headers={"Accept": "application/json"}) as r,
    ):
        return {"status": r.status, "type": r.headers["Content-Type"], "body": await r.json()}


async def _patient_holding(api: Any, lang: str) -> tuple[Any, str, dict[str, Any]]:
    """A doctor, and an anonymous patient in ``lang`` and Karachi's time
    who holds a video slot two days ahead: (doctor, patient token, booking)."""
    from tests.booking.bookings.test_bookings import anon, hold, local
    from tests.booking.factories import make_clinic, make_doctor

    doctor = await make_doctor(api, await make_clinic(api))
    patient = await anon(api)
    await api.put(
        "/api/v1/me/notifications",
        {"locale": lang, "time_zone": "Asia/Karachi"},
        token=patient,
        expect=200,
    )
    return doctor, patient, await hold(api, patient, doctor, local(2, "10:00"))


def _api(world: World) -> tuple[_Session, Any]:
    from tests.conftest import Api

    client = _Session(world.base)
    return client, Api(client, world.app)  # type: ignore[arg-type]


async def scenario_pay(world: World, lang: str) -> dict[str, Any]:
    from tests.booking.bookings.test_bookings import shift

    shots = _shots(world.browsers.work)
    client, api = _api(world)
    out: dict[str, Any] = {}
    try:
        doctor, patient, booking = await _patient_holding(api, lang)
        # No return_url: the patient's browser ends on our own pages.
        payment = await api.post(
            f"/api/v1/bookings/{booking['id']}/payments", {}, token=patient, expect=201
        )
        page = await world.browsers.open("patient", payment["checkout"]["url"])
        await size(page, PHONE, mobile=True)
        await page.wait_for("document.body.dataset.ready === '1'", "the checkout")
        out["checkout"] = await page.eval(PAGE)
        await shots.take(page, f"pay-checkout-{lang}")
        await click(page, "button[value=pay]")
        await page.wait_for(
            "location.pathname.endsWith('/return') && document.body.dataset.ready === '1'",
            "the confirmation",
        )
        world.mark("paid")
        out["confirmation"] = await page.eval(PAGE)
        await shots.take(page, f"pay-done-{lang}")
        out["json"] = await _json_return(await page.eval("location.href"))

        # The doctor accepts; the visit is in five minutes.
        await api.post(f"/api/v1/bookings/{booking['id']}/accept", token=doctor.token, expect=200)
        await shift(api, booking["id"], dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
        mine = await api.get(
            f"/api/v1/bookings/{booking['id']}/video-link", token=patient, expect=200
        )
        theirs = await api.get(
            f"/api/v1/bookings/{booking['id']}/video-link", token=doctor.token, expect=200
        )
        await page.eval("window.__gone = 1; true")
        await page.cdp.send("Page.navigate", url=mine["url"])
        await page.wait_for(
            "!window.__gone && document.body.dataset.screen === 'prejoin'", "the call page"
        )
        page.cdp.errors.clear()  # the join, the call and the leave from here
        if await page.eval("!document.getElementById('name-form').hidden"):
            await page.eval(
                "(() => { const i = document.getElementById('display-name');"
                " i.value = 'Bilal Ahmed'; i.dispatchEvent(new Event('input')); return true; })()"
            )
        await join(page, expect="waiting")
        out["waiting"] = await page.eval(PAGE)
        await shots.take(page, f"call-waiting-{lang}")

        doc = await world.browsers.open("doctor", theirs["url"])
        await size(doc, DESKTOP, mobile=False)
        await join(doc)
        # A booking's room: the doctor lets the waiting patient in.
        await doc.wait_for("!document.getElementById('alert').hidden", "the waiting alert")
        await click(doc, "#alert-admit")
        await page.wait_for("document.body.dataset.state === 'joined'", "the patient let in")
        world.mark("both in")
        # The doctor's tile on the patient's page: its bars come from the server.
        await page.wait_for(
            "[...document.querySelectorAll('#grid .tile:not(.self) .bars')]"
            ".some(b => b.dataset.quality !== 'unknown')",
            "bars on the doctor's tile",
            within=30,
        )
        out["call"] = await page.eval(PAGE)
        out["call"]["bars"] = await page.eval(
            "document.querySelector('#grid .tile:not(.self) .bars').dataset.quality"
        )
        await chat_ready(page)
        await chat_ready(doc)
        await page.eval(say("سر درد ہے، Paracetamol 500mg لے لی؟"))
        await doc.wait_for("document.querySelectorAll('#chat-log li').length >= 1", "chat")
        await doc.eval(say("Yes, twice a day."))
        await click(page, "#open-chat")
        await page.wait_for("document.querySelectorAll('#chat-log li').length >= 2", "reply")
        await asyncio.sleep(0.5)
        await shots.take(page, f"call-chat-{lang}")
        out["chat"] = {
            "dirs": await page.eval(
                "[...document.querySelectorAll('#chat-log li .text')].map(t => t.dir)"
            )
        }
        await click(page, "#leave")
        await page.wait_for("document.body.dataset.state === 'left'", "left")
        out["left"] = await page.eval("document.body.dataset.state")
        await asyncio.sleep(1)
        out["errors"] = {"patient": page.cdp.errors, "doctor": doc.cdp.errors}
        out["timings"] = world.timings
        return out
    finally:
        await client.session.close()


async def scenario_onward(world: World) -> dict[str, Any]:
    shots = _shots(world.browsers.work)
    client, api = _api(world)
    try:
        doctor, patient, booking = await _patient_holding(api, "en")
        payment = await api.post(
            f"/api/v1/bookings/{booking['id']}/payments",
            {"return_url": "https://clinic.example/after?visit=7"},
            token=patient,
            expect=201,
        )
        page = await world.browsers.open("patient", payment["checkout"]["url"])
        await size(page, PHONE, mobile=True)
        await page.wait_for("document.body.dataset.ready === '1'", "the checkout")
        await click(page, "button[value=pay]")
        await page.wait_for(
            "location.pathname.endsWith('/return') && document.body.dataset.ready === '1'",
            "the confirmation",
        )
        out: dict[str, Any] = {"payment_id": payment["id"], "booking_id": booking["id"]}
        out["confirmation"] = await page.eval(PAGE)
        here = URL(await page.eval("location.href"))
        async with client.session.get(
            here.path_qs, headers={"Accept": "application/json"}, allow_redirects=False
        ) as r:
            out["program"] = {"status": r.status, "location": r.headers.get("Location")}
        await api.post(f"/api/v1/bookings/{booking['id']}/accept", token=doctor.token, expect=200)
        await page.eval("window.__gone = 1; location.reload(); true")
        await page.wait_for(
            "!window.__gone && document.body.dataset.ready === '1'", "the page again"
        )
        out["accepted"] = await page.eval(PAGE)
        await shots.take(page, "pay-onward-en")
        await page.eval("window.__gone = 1; true")
        await click(page, "#join-visit")
        await page.wait_for(
            "!window.__gone && document.body.dataset.early === '1'", "the visit's call page"
        )
        out["call"] = {"early": True, "path": await page.eval("location.pathname")}
        out["errors"] = page.cdp.errors
        return out
    finally:
        await client.session.close()


async def _manage_page(page: Page) -> dict[str, Any]:
    await page.wait_for(
        "document.body.dataset.ready === '1' && document.body.dataset.manage === 'ready'",
        "the manage page",
    )
    seen: dict[str, Any] = await page.eval(PAGE)
    return seen


async def scenario_manage(world: World, lang: str) -> dict[str, Any]:
    shots = _shots(world.browsers.work)
    client, api = _api(world)
    try:
        doctor, patient, booking = await _patient_holding(api, lang)
        bid = booking["id"]
        # Paid on the sandbox (over HTTP here: the browser's part is
        # test_paying_...), and accepted.
        payment = await api.post(f"/api/v1/bookings/{bid}/payments", {}, token=patient, expect=201)
        async with client.session.post(
            URL(payment["checkout"]["url"]).path, data={"action": "pay"}, allow_redirects=False
        ) as r:
            landing = URL(r.headers["Location"]).path_qs
        await api.get(landing, headers={"Accept": "application/json"}, expect=200)
        await api.post(f"/api/v1/bookings/{bid}/accept", token=doctor.token, expect=200)
        link = await api.post(f"/api/v1/bookings/{bid}/manage-link", token=patient, expect=200)
        out: dict[str, Any] = {"booking_id": bid}
        path = URL(link["url"]).path
        out["json"] = []
        for accept in ("application/json", "*/*"):
            async with client.session.get(path, headers={"Accept": accept}) as r:
                out["json"].append({"type": r.headers["Content-Type"], "body": await r.json()})
        async with client.session.get(
            "/api/v1/manage/no-such-link", headers={"Accept": "text/html"}
        ) as r:
            out["gone"] = {"status": r.status, "type": r.headers["Content-Type"]}

        page = await world.browsers.open("patient", link["url"])
        await size(page, PHONE, mobile=True)
        out["page"] = await _manage_page(page)
        await shots.take(page, f"manage-{lang}")
        if lang == "en":
            await click(page, "#reschedule-open")
            await page.wait_for("!!document.querySelector('#slots button')", "free times")
            # The second day offered, its first time.
            await page.eval(
                "(() => { const d = document.getElementById('day');"
                " d.selectedIndex = 1; d.dispatchEvent(new Event('change')); return true; })()"
            )
            picked = await page.eval(
                "(() => { const b = document.querySelector('#slots button');"
                " b.click(); return b.dataset.start; })()"
            )
            await shots.take(page, "manage-pick-en")
            await page.eval("window.__gone = 1; true")
            await click(page, "#reschedule-confirm")
            seen = await _manage_wait_done(page, "moved")
            after = await api.get(f"/api/v1/bookings/{bid}", token=patient, expect=200)
            out["moved"] = {"picked": picked, "page": seen, "booking": after}
        if lang == "ar":
            await click(page, "#cancel-open")
            await page.eval(
                "(() => { document.getElementById('cancel-reason').value ="
                " 'تعارض مع موعد آخر'; return true; })()"
            )
            await shots.take(page, "manage-cancel-ar")
            await page.eval("window.__gone = 1; true")
            await click(page, "#cancel-confirm")
            seen = await _manage_wait_done(page, "cancelled")
            after = await api.get(f"/api/v1/bookings/{bid}", token=patient, expect=200)
            out["cancelled"] = {"page": seen, "booking": after}
            await shots.take(page, "manage-cancelled-ar")
        out["errors"] = page.cdp.errors
        return out
    finally:
        await client.session.close()


async def _manage_wait_done(page: Page, done: str) -> dict[str, Any]:
    await page.wait_for(
        f"!window.__gone && location.search.includes('done={done}')", f"the page, {done}"
    )
    return await _manage_page(page)


SCENARIOS: dict[str, Scenario] = {
    "early": scenario_early,
    **{f"pay-{lang}": partial(scenario_pay, lang=lang) for lang in ("en", "ur", "ar")},
    "onward": scenario_onward,
    **{f"manage-{lang}": partial(scenario_manage, lang=lang) for lang in ("en", "ur", "ar")},
}


if __name__ == "__main__":
    serve_scenarios(__doc__, SCENARIOS, 150)
