"""The consultation's chat beside the video, between two real browsers.

A booking's doctor and patient open their video links (the links the
booking API gives) in two headless Chromium pages, in a loopback-only
namespace like test_browser_call.py's. They write to each other in the
call page's chat panel; the test then reads the consultation's history
through the chat API (``GET /api/v1/chat/conversations/{id}/events``) and
checks both messages are there, in order, from the right senders, and that
the page whose chat panel is closed shows an unread badge until it opens
the panel. The driver's ``--help`` says how to run it by hand.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.browser import (
    Page,
    click,
    join,
    run_scenario,
)
from tests.signalling.call_world import Scenario, World, serve_scenarios

ROOT = Path(__file__).resolve().parents[2]


DOCTOR_SAYS = "Please take Paracetamol 500 mg twice a day"
PATIENT_SAYS = "دوا کا نام: Paracetamol 500mg — شکریہ"


@pytest.mark.timeout(180)
async def test_in_call_chat_persists_and_shows_unread(database_url: str, tmp_path: Path) -> None:
    result = await run_scenario(
        "tests.signalling.test_browser_chat", "chat", database_url, tmp_path, 120
    )
    print(json.dumps(result))
    # The patient's panel was closed: the doctor's message made a badge.
    assert result["patient_badge"] == {"text": "1", "hidden": False, "label": "Chat, 1 unread"}
    assert result["patient_badge_after_open"]["hidden"] is True, result
    # The doctor's panel was open: no badge, and the reply shows in the log.
    assert result["doctor_badge"]["hidden"] is True, result
    assert PATIENT_SAYS in result["doctor_log"][-1], result["doctor_log"]
    assert DOCTOR_SAYS in result["patient_log"][0], result["patient_log"]
    # Both persisted, in order, from the right senders, as the chat API serves them.
    history = result["history"]
    assert [e["body"] for e in history] == [DOCTOR_SAYS, PATIENT_SAYS], history
    assert history[0]["sender_id"] == result["doctor_user"], history
    assert history[1]["sender_id"] == result["patient_user"], history
    assert result["doctor_user"] != result["patient_user"]


# -- the driver: runs inside the namespace ------------------------------------


class _Session:
    """What tests.conftest.Api needs of its client, over the served app."""

    def __init__(self, base: str) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(base_url=base)

    def request(self, method: str, path: str, **kw: Any) -> Any:
        return self.session.request(method, path, **kw)


async def live_booking(app: Any, base: str) -> dict[str, Any]:
    """A clinic, a doctor and an accepted video booking starting in five
    minutes, made through the API as test_video_calls does."""
    from tests.booking.factories import make_clinic, make_doctor
    from tests.booking.test_video_calls import _live_booking
    from tests.conftest import Api

    client = _Session(base)
    api = Api(client, app)  # type: ignore[arg-type]
    try:
        clinic = await make_clinic(api)
        doctor = await make_doctor(api, clinic)
        bid, patient, pt_token, dr_token = await _live_booking(api, doctor)
        link = await api.get(f"/api/v1/bookings/{bid}/video-link", token=patient, expect=200)
        chat_pt = await api.post("/api/v1/calls/chat", {"token": pt_token}, expect=200)
        chat_dr = await api.post("/api/v1/calls/chat", {"token": dr_token}, expect=200)
        return {
            "booking": bid,
            "patient_token": patient,
            "room": link["room"],
            "patient_link": f"{base}/call/{link['room']}?token={pt_token}",
            "doctor_link": f"{base}/call/{link['room']}?token={dr_token}",
            "conversation": chat_pt["conversation_id"],
            "patient_user": chat_pt["user_id"],
            "doctor_user": chat_dr["user_id"],
            "history": lambda: api.get(
                f"/api/v1/chat/conversations/{chat_pt['conversation_id']}/events?after=0",
                token=patient,
                expect=200,
            ),
            "close": client.session.close,
        }
    except BaseException:
        await client.session.close()
        raise


BADGE = """(() => { const b = document.getElementById('unread');
  return {text: b.textContent, hidden: b.hidden,
          label: document.getElementById('open-chat').getAttribute('aria-label')}; })()"""
LOG = "[...document.querySelectorAll('#chat-log li')].map(li => li.textContent)"


def say(text: str) -> str:
    return (
        "(() => { const i = document.getElementById('chat-input');"
        f" i.value = {json.dumps(text)};"
        " document.getElementById('chat-form').requestSubmit(); return true; })()"
    )


async def chat_ready(page: Page) -> None:
    await page.wait_for(
        "window.wadudChat && window.wadudChat.ws && window.wadudChat.ws.readyState === 1"
        " && window.wadudChat.conversation !== null",
        f"{page.name}'s chat",
    )


async def scenario_chat(world: World) -> dict[str, Any]:
    booking = await live_booking(world.app, world.base)
    try:
        doctor = await world.browsers.open("doctor", booking["doctor_link"])
        await join(doctor)
        patient = await world.browsers.open("patient", booking["patient_link"])
        await patient.wait_for(
            "document.body.dataset.screen === 'prejoin'"
            " && typeof document.getElementById('join').onclick === 'function'",
            "the device check",
        )
        # An anonymous patient's link: the page asks for a name first.
        if await patient.eval("!document.getElementById('name-form').hidden"):
            await patient.eval(
                "(() => { const i = document.getElementById('display-name');"
                " i.value = 'Bilal Ahmed'; i.dispatchEvent(new Event('input')); return true; })()"
            )
        await click(patient, "#join")
        state = await patient.wait_for(
            "['joined', 'waiting'].includes(document.body.dataset.state)"
            " && document.body.dataset.state",
            "joined or waiting",
        )
        if state == "waiting":
            await doctor.wait_for("!document.getElementById('alert').hidden", "the alert")
            await click(doctor, "#alert-admit")
            await patient.wait_for("document.body.dataset.state === 'joined'", "admitted")
        world.mark("both in")
        await chat_ready(doctor)
        await chat_ready(patient)
        # Wide pages open the chat beside the video: the patient closes it.
        await patient.wait_for("!document.getElementById('side').hidden", "the chat panel")
        await click(patient, "#side-close")
        await patient.wait_for("document.getElementById('side').hidden", "the panel closed")
        out: dict[str, Any] = {}
        await doctor.eval(say(DOCTOR_SAYS))
        await patient.wait_for("!document.getElementById('unread').hidden", "the unread badge")
        out["patient_badge"] = await patient.eval(BADGE)
        world.mark("badge")
        await click(patient, "#open-chat")
        await patient.wait_for(f"{LOG}.length >= 1", "the doctor's message in the log")
        out["patient_log"] = await patient.eval(LOG)
        out["patient_badge_after_open"] = await patient.eval(BADGE)
        await patient.eval(say(PATIENT_SAYS))
        await doctor.wait_for(f"{LOG}.length >= 2", "the patient's reply in the doctor's log")
        out["doctor_log"] = await doctor.eval(LOG)
        out["doctor_badge"] = await doctor.eval(BADGE)
        await asyncio.sleep(0.5)
        out["history"] = await booking["history"]()
        out["patient_user"] = booking["patient_user"]
        out["doctor_user"] = booking["doctor_user"]
        out["timings"] = world.timings
        return out
    finally:
        await booking["close"]()


SCENARIOS: dict[str, Scenario] = {"chat": scenario_chat}


if __name__ == "__main__":
    serve_scenarios(__doc__, SCENARIOS, 120)
